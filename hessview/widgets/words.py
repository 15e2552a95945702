"""Plain words for the explorer's panels: what each number means, its units and its sign.

Every sentence here follows the README's conventions (Koh & Liang removal convention): a positive
influence is *helpful*, removing that training point would make the prediction worse, i.e. lower
the margin of the predicted label (``measurement="margin"``) or raise the test loss
(``measurement="loss"``), by the amount shown. All functions return HTML with every piece of text
that comes from outside (class names, labels of the control parameter) escaped.
"""

from __future__ import annotations

import html

import numpy as np

from hessview.widgets.results import ExplorerResults

MARGIN_UNITS = "m = log p &minus; log(1 &minus; p) in nats: m = 0 at p = 0.5, m &asymp; 2.2 at p = 0.9"


def class_name(label, class_names: list[str] | None) -> str:
    """A class index as its name (``class c`` when no names are known), not escaped."""
    if class_names is not None and 0 <= int(label) < len(class_names):
        return class_names[int(label)]
    return f"class {int(label)}"


def quantity(results: ExplorerResults) -> str:
    """What the influence measures, as a noun phrase (HTML)."""
    if results.measurement == "margin":
        return "the margin of the predicted label"
    return "the test loss" if results.is_classification else "the test loss (squared error)"


def units(results: ExplorerResults) -> str:
    """The units of the influence (HTML)."""
    if results.measurement == "margin":
        return MARGIN_UNITS
    if results.is_classification:
        return "cross-entropy in nats"
    return "squared error, in the squared units of the prediction"


def removal_effect(results: ExplorerResults, score: float, predicted: str | None = None) -> str:
    """What removing a training point with this influence ``score`` would do (HTML).

    >>> r = ExplorerResults.__new__(ExplorerResults)
    >>> object.__setattr__(r, "measurement", "margin")
    >>> removal_effect(r, 0.021, "CDW")
    'would lower the margin of the predicted label (CDW) by 0.021'
    >>> object.__setattr__(r, "measurement", "loss"); object.__setattr__(r, "prediction", np.ones((1, 2)))
    >>> removal_effect(r, -0.5)
    'would lower the test loss by 0.5'
    """
    size = f"{abs(score):.2g}"
    if results.measurement == "margin":
        label = f" ({html.escape(predicted)})" if predicted else ""
        verb = "lower" if score > 0 else "raise"
        return f"would {verb} the margin of the predicted label{label} by {size}"
    verb = "raise" if score > 0 else "lower"
    return f"would {verb} {quantity(results)} by {size}"


def influence_sentence(
    results: ExplorerResults,
    index: int,
    train: int,
    kind: str,
    *,
    class_names: list[str] | None,
    train_x_label: str,
) -> str:
    """One sentence about training point ``train``'s score on test point ``index`` (HTML)."""
    score = float(results.scores(kind)[index, train])
    where = f"{html.escape(train_x_label)} = {results.train_x[train]:.4g}"
    role = "helped" if score > 0 else "worked against"
    if kind == "influence":
        predicted = (
            class_name(np.argmax(results.prediction[index]), class_names)
            if results.is_classification
            else None
        )
        return (
            f"Removing training point #{train} ({where}) {removal_effect(results, score, predicted)}: "
            f"it {role} this prediction."
        )
    return (
        f"Training point #{train} ({where}) has RelatIF {score:+.3g}: it {role} this prediction, "
        "and it does so without moving the whole model much."
    )


def influence_caption(results: ExplorerResults, kind: str, k: int) -> str:
    """What the influence view's dots mean (HTML), for the score ``kind``."""
    if kind == "influence":
        meaning = (
            f"its height is its influence on {quantity(results)} of the selected test point "
            f"({units(results)}): above zero (blue) the point is helpful, removing it "
            f"{removal_effect(results, 1.0).replace(' by 1', ' by that amount')}; below zero (red) "
            "it is harmful, removing it would improve the prediction."
        )
    else:
        meaning = (
            "its height is its RelatIF score: the influence divided by the size of the parameter change "
            "that removing the point causes, &#8214;(H + &delta;I)<sup>&minus;1</sup> g<sub>j</sub>&#8214;. "
            "It ranks the points that matter for this prediction in particular rather than for the whole "
            "model; the sign means the same as for influence (blue helpful, red harmful), the scale has no "
            "unit: compare points with each other."
        )
    return f"Each dot is one training point; {meaning} Circled: the top {k} of each sign."


def main_caption(results: ExplorerResults, value_name: str, x_label: str) -> str:
    """What the main view shows (HTML)."""
    if results.is_classification:
        height = f"its height is the model's probability {html.escape(value_name)} (0 to 1)"
    else:
        height = "its height is the model's prediction"
    return (
        f"Each dot is one test point at its {html.escape(x_label)}; {height}; the grey bar is the "
        f"{results.level:.0%} resampling (RUE) interval of that value; orange dots are flagged "
        "extrapolations. Click a dot to explain its prediction."
    )


def uncertainty_sentence(results: ExplorerResults, index: int, row_names: list[str]) -> str:
    """What the RUE interval of the predicted class (or value) says (HTML)."""
    if results.is_classification:
        c = int(np.argmax(results.prediction[index]))
        what = f"the probability of {html.escape(row_names[c])}"
    else:
        c, what = 0, "the prediction"
    lower = float(np.atleast_1d(results.uncertainty_lower[index])[c])
    upper = float(np.atleast_1d(results.uncertainty_upper[index])[c])
    return (
        f"Trained on resampled training sets (bootstrap), the model would give {what} a value in "
        f"[{lower:.3g}, {upper:.3g}] {results.level:.0%} of the time (RUE). A wide interval means the "
        "training data do not pin this prediction down."
    )


def extrapolation_sentence(results: ExplorerResults) -> str:
    """What the extrapolation score and its threshold mean (HTML)."""
    return (
        "Score: the length of the part of the prediction's gradient (with respect to the weights) that the "
        "training data leave unconstrained, outside the Hessian's stiffest directions (local ensembles; "
        "0 = fully constrained). The threshold is the score that "
        f"{results.extrapolation_quantile:.0%} of the training inputs stay below."
    )


def spectrum_sentence(results: ExplorerResults) -> str:
    """What the Hessian spectrum shows (HTML)."""
    return (
        "How curved the training loss is along each direction in weight space (the Hessian's eigenvalues, "
        "loss per squared weight). Small or negative (red) eigenvalues are directions the data hardly fix; "
        f"the damping &delta; = {results.damping:.3g} added before inverting keeps them from dominating "
        "influence and uncertainty."
    )


def how_to_read(results: ExplorerResults, gallery_words: str) -> str:
    """A short guide a student can follow, as an HTML ordered list."""
    steps = [
        "<b>Pick a test point</b> in the top plot (the app opened on the most informative one, see the line "
        "above). Its prediction is on the right.",
        "<b>Can I trust it?</b> On the right: the resampling (RUE) interval says how much the prediction "
        "would change with another draw of the training data; an orange <i>EXTRAPOLATION</i> badge says the "
        "input lies where the training data do not constrain the model.",
        "<b>Why this prediction?</b> The middle plot gives every training point's influence on it: blue dots "
        f"above zero helped (removing one {removal_effect(results, 1.0).replace(' by 1', '')}), red dots "
        "below zero pushed the other way. Large |influence| = the model relies on that point.",
        f"<b>Look at the examples</b> at the bottom: the most helpful and most harmful training points, "
        f"{gallery_words}. Helpful ones usually resemble the test point; a harmful one that looks like "
        "the wrong phase for its label points to a labelling or data problem (except next to a phase "
        "transition, where states of both labels look alike).",
        "<b>Health check:</b> the Hessian spectrum. Many negative eigenvalues mean the model is not at a "
        "minimum, and every number here is then less reliable.",
    ]
    return "<ol style='margin:2px 0 2px 18px;padding:0'>" + "".join(f"<li>{s}</li>" for s in steps) + "</ol>"
