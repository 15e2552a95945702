"""The explorer's text panels: the gallery of influential training examples and the detail panel.

Every number is also written into a ``data-`` attribute at full precision, so that tests and
scripts read the values shown without parsing rounded text.
"""

from __future__ import annotations

import html

import bqplot as bq
import ipywidgets as widgets
import numpy as np

from hessview.widgets import words
from hessview.widgets.plots import EXTRAPOLATION, IN_DISTRIBUTION
from hessview.widgets.renderers import THUMBNAIL_LAYOUT, HtmlRenderer, Renderer
from hessview.widgets.results import STABILITY_K, STABLE, ExplorerResults

#: 1 - p below this: the loss (~ 1 - p) and its gradient are within a thousand float64 roundoffs of zero
SATURATED = 1e-13


def label_text(label, class_names: list[str] | None) -> str:
    """Return a label as text, by class name when one is known.

    >>> label_text(1, ["LL", "CDW"]), label_text(2.5, None)
    ('CDW', '2.5')
    """
    if label is None:
        return "unknown"
    if class_names is not None and float(label).is_integer() and 0 <= int(label) < len(class_names):
        return class_names[int(label)]
    return f"{label:.4g}" if isinstance(label, (float, np.floating)) else str(label)


class GalleryView:
    """Thumbnails of the ``k`` most helpful and ``k`` most harmful training points.

    With an :class:`~hessview.widgets.renderers.HtmlRenderer` (the built-in ones) each row is one
    HTML widget (``rows``), rewritten in one message per click. Any other renderer gets ``max_k``
    widget cards per row (``cards``: (card, caption, thumbnail) tuples), made once; a selection fills
    the first ``k`` and hides the rest.
    """

    ROLES = ("helpful", "harmful")

    def __init__(
        self,
        results: ExplorerResults,
        X_train,
        renderer: Renderer,
        *,
        max_k: int,
        train_x_label: str,
        class_names: list[str] | None,
    ):
        self.results = results
        self.X_train = X_train
        self.renderer = renderer
        self.train_x_label = train_x_label
        self.class_names = class_names
        self.headings = {role: widgets.HTML() for role in self.ROLES}
        self.intro = widgets.HTML()
        if isinstance(renderer, HtmlRenderer):
            self.rows, self.cards = {role: widgets.HTML() for role in self.ROLES}, None
        else:
            self.cards = {role: [self._card() for _ in range(max_k)] for role in self.ROLES}
            self.rows = {
                role: widgets.HBox(
                    [card for card, _, _ in self.cards[role]], layout=widgets.Layout(flex_flow="row wrap")
                )
                for role in self.ROLES
            }
        children = [self.intro]
        for role in self.ROLES:
            self.rows[role].add_class(f"hv-gallery-{role}")
            children += [self.headings[role], self.rows[role]]
        self.widget = widgets.VBox(children)
        self.widget.add_class("hv-gallery")

    def _card(self) -> tuple[widgets.VBox, widgets.HTML, widgets.Widget]:
        caption = widgets.HTML()
        view = self.renderer.create()
        card = widgets.VBox([view, caption], layout=widgets.Layout(margin="2px 6px", width="160px"))
        card.add_class("hv-card")
        return card, caption, view

    def _example(self, index: int) -> np.ndarray:
        example = self.X_train[index]
        return example.detach().cpu().numpy() if hasattr(example, "detach") else np.asarray(example)

    def show(self, index: int, k: int, kind: str) -> None:
        """Fill the rows for test point ``index``; re-raise the first renderer error at the end."""
        name = "influence" if kind == "influence" else "RelatIF"
        scores = self.results.scores(kind)[index]
        errors = []
        self.intro.value = (
            '<div class="hv-explain">The training points that most helped and most worked against the '
            f"selected prediction, {self.renderer.describe()}; under each: its index, label, "
            f"{html.escape(self.train_x_label)} and {name} score.</div>"
        )
        r = self.results
        predicted = None
        if r.is_classification:
            predicted = words.class_name(np.argmax(r.prediction[index]), self.class_names)
        for role, chosen in zip(self.ROLES, self.results.top_k(index, k, kind), strict=True):
            if kind == "influence":
                effect = words.removal_effect(r, 1.0 if role == "helpful" else -1.0, predicted)
                meaning = f"removing one {effect.replace(' by 1', '')} by the number under it"
            else:
                meaning = "RelatIF scores have no unit: compare them with each other"
            heading = (
                f"<b>{len(chosen)} most {role} training points</b> for test point #{index} (by {name}): "
                f"{meaning}."
                if len(chosen)
                else f"<b>No {role} training point</b> for test point #{index}: every {name} score is "
                f"{'&le;' if role == 'helpful' else '&ge;'} 0"
            )
            self.headings[role].value = f'<span data-test-index="{index}">{heading}</span>'
            captions = [self._caption(index, int(j), scores[j], role, name) for j in chosen]
            if self.cards is None:
                self.rows[role].value = self._row_html(chosen, captions, errors)
            else:
                self._fill_cards(self.cards[role], chosen, captions, errors)
        if errors:
            raise errors[0]

    def _row_html(self, chosen: np.ndarray, captions: list[str], errors: list) -> str:
        cards = []
        for train, caption in zip(chosen.tolist(), captions, strict=True):
            try:
                thumbnail = self.renderer.html(self._example(train))
            except Exception as error:  # shown in the status line by the explorer
                errors.append(error)
                thumbnail = '<div style="color:#b00020">could not draw this example</div>'
            cards.append(
                '<div class="hv-card" style="margin:2px 6px;width:160px">'
                f'<div style="width:{THUMBNAIL_LAYOUT["width"]};height:{THUMBNAIL_LAYOUT["height"]}">'
                f"{thumbnail}</div>{caption}</div>"
            )
        return f'<div style="display:flex;flex-flow:row wrap">{"".join(cards)}</div>'

    def _fill_cards(self, cards, chosen: np.ndarray, captions: list[str], errors: list) -> None:
        for slot, (card, caption, view) in enumerate(cards):
            if slot >= len(chosen):
                card.layout.display = "none"
                continue
            card.layout.display = None
            caption.value = captions[slot]
            try:
                self.renderer.update(view, self._example(int(chosen[slot])))
            except Exception as error:  # shown in the status line by the explorer
                errors.append(error)

    def _caption(self, test: int, train: int, score: float, role: str, name: str) -> str:
        label = None if self.results.y_train is None else self.results.y_train[train]
        return (
            f'<div class="hv-card-caption" data-test-index="{test}" data-train-index="{train}" '
            f'data-score="{float(score)!r}" data-role="{role}" style="font-size:12px;line-height:1.3">'
            f"<b>#{train}</b> &middot; {html.escape(label_text(label, self.class_names))}<br>"
            f"{html.escape(self.train_x_label)} = {self.results.train_x[train]:.4g}<br>"
            f"{name} {score:+.3g}</div>"
        )


class DetailView:
    """Prediction, per-class RUE intervals and the extrapolation badge of the selected test point."""

    def __init__(self, results: ExplorerResults, *, x_label: str, class_names: list[str] | None):
        self.results = results
        self.x_label = x_label
        self.class_names = class_names
        self.summary = widgets.HTML()
        self.summary.add_class("hv-detail")
        n_rows = results.n_classes or 1
        self.row_names = (
            list(class_names or [f"class {c}" for c in range(n_rows)])
            if results.is_classification
            else ["value"]
        )
        self.interval_scale = (
            bq.LinearScale(min=0.0, max=1.0) if results.is_classification else bq.LinearScale()
        )
        xy = {"x": bq.LinearScale(min=-0.5, max=n_rows - 0.5), "y": self.interval_scale}
        self.interval_lines = bq.Lines(
            x=np.zeros((n_rows, 2)), y=np.zeros((n_rows, 2)), scales=xy, colors=["#555555"], stroke_width=3
        )
        self.means = bq.Scatter(
            x=np.arange(n_rows, dtype=np.float64),
            y=np.zeros(n_rows),
            scales=xy,
            colors=["black"],
            default_size=40,
        )
        axes = [
            bq.Axis(
                scale=xy["x"],
                tick_values=np.arange(n_rows),
                tick_labels={str(c): name for c, name in enumerate(self.row_names)},
            ),
            bq.Axis(scale=self.interval_scale, side="left", tick_format=".2f"),
        ]
        self.interval_figure = bq.Figure(
            marks=[self.interval_lines, self.means],
            axes=axes,
            title=f"Resampling uncertainty (RUE, {results.level:.0%} interval)",
            fig_margin={"top": 35, "bottom": 30, "left": 45, "right": 10},
            layout=widgets.Layout(width="100%", height="200px"),
        )
        self.interval_table = widgets.HTML()
        self.uncertainty_words = widgets.HTML()
        self.uncertainty = widgets.VBox([self.interval_figure, self.interval_table, self.uncertainty_words])
        self.uncertainty.add_class("hv-uncertainty")
        self.badge = widgets.HTML()
        self.badge.add_class("hv-extrapolation")
        self.widget = widgets.VBox([self.summary, self.uncertainty, self.badge])

    def _rows(self, index: int) -> tuple[np.ndarray, ...]:
        r = self.results
        return tuple(
            np.atleast_1d(a[index])
            for a in (
                r.prediction,
                r.uncertainty_mean,
                r.uncertainty_std,
                r.uncertainty_lower,
                r.uncertainty_upper,
            )
        )

    def show(self, index: int) -> None:
        """Fill the panel for test point ``index``."""
        r = self.results
        prediction, mean, std, lower, upper = self._rows(index)
        self.summary.value = self._summary(index, prediction)
        with self.interval_lines.hold_sync():
            positions = np.arange(len(mean), dtype=np.float64)
            self.interval_lines.x = np.stack([positions, positions], axis=1)
            self.interval_lines.y = np.stack([lower, upper], axis=1)
        self.means.y = mean
        cells = "".join(
            f'<tr data-row="{c}" data-mean="{float(mean[c])!r}" data-std="{float(std[c])!r}" '
            f'data-lower="{float(lower[c])!r}" data-upper="{float(upper[c])!r}">'
            f"<td>{html.escape(name)}</td><td>{mean[c]:.3f} &plusmn; {std[c]:.3f}</td>"
            f"<td>[{lower[c]:.3f}, {upper[c]:.3f}]</td></tr>"
            for c, name in enumerate(self.row_names)
        )
        self.interval_table.value = (
            f'<table class="hv-interval-table" data-test-index="{index}" style="font-size:12px">'
            f"<tr><th></th><th>mean &plusmn; std</th><th>{r.level:.0%} interval</th></tr>"
            f"{cells}</table>"
        )
        self.uncertainty_words.value = (
            f'<div class="hv-explain" data-test-index="{index}">'
            f"{words.uncertainty_sentence(r, index, self.row_names)}</div>"
        )
        self.badge.value = self._badge(index)

    def _summary(self, index: int, prediction: np.ndarray) -> str:
        r = self.results
        truth = (
            ""
            if r.y_test is None
            else (
                f"true label: <b>{html.escape(label_text(r.y_test[index], self.class_names))}</b> &middot; "
            )
        )
        if r.is_classification:
            predicted = int(np.argmax(prediction))
            name = label_text(predicted, self.class_names or [f"class {c}" for c in range(len(prediction))])
            p = float(prediction[predicted])
            margin = np.log(p) - np.log1p(-p) if p < 1 else np.inf
            shown = f"= {margin:.3g}" if np.isfinite(margin) else "&gt; 36 (p rounds to 1)"
            guess = (
                f"predicted: <b>{html.escape(name)}</b> (p = {p:.3f}, "
                f"margin m = log p &minus; log(1 &minus; p) {shown})"
            )
        else:
            guess = f"predicted value: <b>{prediction[0]:.4g}</b>"
        return (
            f'<div data-test-index="{index}"><span style="font-size:16px"><b>Test point #{index}</b>'
            f"</span> &middot; {html.escape(self.x_label)} = {r.x[index]:.4g}<br>{truth}{guess}"
            f"{self._saturation(prediction)}{self._stability(index)}</div>"
        )

    def _saturation(self, prediction: np.ndarray) -> str:
        """A sentence when the predicted label's loss is below what float64 can resolve."""
        if not self.results.is_classification:
            return ""
        rest = 1.0 - float(np.max(prediction))
        if rest >= SATURATED:
            return ""
        shown = "the margin, which does not saturate" if self.results.measurement == "margin" else "the loss"
        return (
            f'<div class="hv-saturated" style="font-size:12px">The loss of this prediction is saturated '
            f"(1 &minus; p = {rest:.1e}): its gradient, and any influence on it, is scaled by that factor "
            f"and soon by rounding noise; the influence shown here is on {shown}.</div>"
        )

    def _stability(self, index: int) -> str:
        """Whether the top-k influential points survive other dampings (``influence_stability``)."""
        stability = self.results.stability
        if stability is None:
            return ""
        value = float(stability[index])
        stable = value >= STABLE
        verdict = "stable" if stable else "depends on damping"
        return (
            f'<div class="hv-stability" data-stability="{value!r}" data-stable="{str(stable).lower()}" '
            f'style="font-size:12px">Ranking <b>{verdict}</b>: {value:.0%} of the top-{STABILITY_K} helpful '
            "and harmful training points stay in the top when the damping changes tenfold either way"
            f"{'' if stable else '; compare rankings before trusting them'}.</div>"
        )

    def _badge(self, index: int) -> str:
        r = self.results
        score, threshold = r.extrapolation_score[index], r.extrapolation_threshold
        flagged = bool(r.extrapolation_flag[index])
        if flagged:
            verdict = (
                "Extrapolation: the training data do not constrain the model's prediction here (an input "
                "unlike the training data, or one the model is unsure about), so do not trust it without "
                "checking."
            )
            colour = EXTRAPOLATION
        else:
            verdict = "Within the training data: the model is interpolating here."
            colour = IN_DISTRIBUTION
        comparison = "&gt;" if score > threshold else "&le;"
        return (
            f'<div class="hv-badge" data-test-index="{index}" data-flag="{str(flagged).lower()}" '
            f'data-score="{float(score)!r}" '
            f'data-threshold="{float(threshold)!r}" style="border-left:6px solid {colour};'
            f'padding:4px 8px;background:#f7f7f7"><b style="color:{colour}">'
            f"{'EXTRAPOLATION' if flagged else 'IN DISTRIBUTION'}</b><br>{verdict}<br>"
            f"score {score:.3g} {comparison} threshold {threshold:.3g}"
            f'<div class="hv-explain" style="font-size:12px">{words.extrapolation_sentence(r)}</div></div>'
        )
