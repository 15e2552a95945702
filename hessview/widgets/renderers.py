"""Thumbnails of training examples for the gallery: 1D states, 2D lattices, or a user's own renderer.

A renderer makes a thumbnail widget once (:meth:`Renderer.create`) and redraws it for a new example
(:meth:`Renderer.update`), so a click only sends new data, never new widgets. The built-in renderers
are :class:`HtmlRenderer` subclasses: a thumbnail is a small HTML fragment (an inline SVG line, a PNG
image), so the gallery sends all its thumbnails in one message per row.
"""

from __future__ import annotations

import base64
import html
import math
import struct
import zlib
from collections.abc import Callable

import ipywidgets as widgets
import numpy as np

THUMBNAIL_LAYOUT = {"width": "150px", "height": "100px"}
LINE_GRID = 1000  # an SVG line's points sit on a LINE_GRID x LINE_GRID integer grid (0.1% steps)


class Renderer:
    """Base class: ``create()`` returns an empty thumbnail, ``update(view, example)`` redraws it.

    A renderer may draw an example in several ways: ``modes`` names them (the first is the default)
    and ``mode`` holds the current one; the explorer then offers a toggle.
    """

    modes: tuple[str, ...] = ()
    mode: str | None = None

    def describe(self) -> str:
        """How the thumbnails are drawn, as words for the page (HTML)."""
        return "each drawn by your renderer"

    def create(self) -> widgets.Widget:
        """Return a new, empty thumbnail widget."""
        raise NotImplementedError

    def update(self, view: widgets.Widget, example: np.ndarray) -> None:
        """Redraw ``view`` (made by :meth:`create`) to show ``example``."""
        raise NotImplementedError


class HtmlRenderer(Renderer):
    """Base class of renderers whose thumbnail is an HTML fragment, made by :meth:`html`.

    The gallery puts the fragments of all its thumbnails into one HTML widget per row, so that a
    click sends two messages instead of one or two per thumbnail.
    """

    def html(self, example: np.ndarray) -> str:
        """Return the thumbnail of ``example`` as an HTML fragment."""
        raise NotImplementedError

    def create(self) -> widgets.HTML:
        """Return an empty HTML widget of thumbnail size."""
        return widgets.HTML(layout=dict(THUMBNAIL_LAYOUT))

    def update(self, view: widgets.HTML, example: np.ndarray) -> None:
        """Show the example's fragment."""
        view.value = self.html(example)


def line_points(values: np.ndarray, grid: int = LINE_GRID, buckets: int | None = None) -> np.ndarray:
    """Integer SVG coordinates ``(m, 2)`` of a 1D state: position across, value up, spanning the grid.

    Column ``i * grid / (n - 1)``, row ``(max - v) * grid / (max - min)`` (row 0 at the top), rounded;
    a constant state is drawn half-way up. With ``buckets``, a long state keeps only both ends and
    the lowest and highest point of each of ``buckets`` equal runs: at a thumbnail's width in pixels
    the line looks the same with at most ``2 * buckets + 2`` points.

    >>> line_points(np.array([0.0, 2.0, 1.0]), grid=10).tolist()
    [[0, 10], [5, 0], [10, 5]]
    >>> line_points(np.array([0.0, 5.0, 1.0, 2.0, 3.0, 4.0, -5.0, 0.0]), grid=14, buckets=1).tolist()
    [[0, 7], [2, 0], [12, 14], [14, 7]]
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError("a 1D state to draw must be non-empty and finite")
    low, high = values.min(), values.max()
    rows = (high - values) / (high - low) * grid if high > low else np.full(values.size, grid / 2)
    columns = np.linspace(0, grid, values.size) if values.size > 1 else np.zeros(1)
    keep = np.arange(values.size)
    if buckets is not None and values.size > 2 * buckets + 2:
        starts = np.linspace(0, values.size, buckets + 1).astype(np.int64)[:-1]
        bucket = np.searchsorted(starts, keep, side="right") - 1
        extremes = [
            keep[values == np.repeat(reduce.reduceat(values, starts), np.diff(starts, append=values.size))]
            for reduce in (np.minimum, np.maximum)
        ]
        # first lowest and first highest point of each bucket, both ends, in order along the state
        firsts = [index[np.unique(bucket[index], return_index=True)[1]] for index in extremes]
        keep = np.unique(np.concatenate([[0, values.size - 1], *firsts]))
    return np.rint(np.stack([columns[keep], rows[keep]], axis=1)).astype(np.int64)


class LineRenderer(HtmlRenderer):
    """A 1D state (amplitudes, a density profile, a spectrum) drawn as one line (inline SVG)."""

    def describe(self) -> str:  # noqa: D102 (documented in Renderer)
        return "each drawn as a line of its input values from first to last, scaled to the thumbnail"

    def html(self, example: np.ndarray) -> str:
        """Return an SVG polyline of the flattened example against its position (see :func:`line_points`)."""
        width = int(THUMBNAIL_LAYOUT["width"].removesuffix("px"))
        points = " ".join(f"{c},{r}" for c, r in line_points(example, buckets=width).tolist())
        return (
            f'<svg class="hv-line" viewBox="-5 -5 {LINE_GRID + 10} {LINE_GRID + 10}" '
            f'preserveAspectRatio="none" width="{THUMBNAIL_LAYOUT["width"]}" '
            f'height="{THUMBNAIL_LAYOUT["height"]}"><polyline points="{points}" fill="none" '
            'stroke="#333333" stroke-width="1" vector-effect="non-scaling-stroke"/></svg>'
        )


def as_lattice(example: np.ndarray) -> np.ndarray:
    """Return an example as a 2D array: squeeze unit axes, square a flat vector of square length.

    >>> as_lattice(np.arange(4.0)).tolist()
    [[0.0, 1.0], [2.0, 3.0]]
    """
    values = np.squeeze(np.asarray(example, dtype=np.float64))
    if values.ndim == 1:
        side = math.isqrt(values.size)
        if side * side != values.size:
            raise ValueError(f"cannot draw a vector of {values.size} values as a square lattice")
        values = values.reshape(side, side)
    if values.ndim != 2:
        raise ValueError(f"a lattice example must be 2D after squeezing, got shape {values.shape}")
    return values


LOW_COLOUR = (0xD6, 0x27, 0x28)  # vmin (spin down): red
HIGH_COLOUR = (0x1F, 0x4E, 0x99)  # vmax (spin up): dark blue


def lattice_png(values: np.ndarray, vmin: float, vmax: float) -> bytes:
    """Encode a 2D array as an RGB PNG, one pixel per site, colours blended from vmin to vmax.

    A PNG is one image message to the browser, where a grid heat map of L x L cells would be
    L x L SVG elements to update (the thumbnails are upscaled with ``image-rendering: pixelated``).

    >>> lattice_png(np.array([[-1.0, 1.0]]), -1, 1)[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    """
    fraction = np.clip((np.asarray(values, dtype=np.float64) - vmin) / (vmax - vmin), 0, 1)[..., None]
    rgb = np.round((1 - fraction) * LOW_COLOUR + fraction * np.array(HIGH_COLOUR)).astype(np.uint8)
    height, width = rgb.shape[:2]
    rows = b"".join(b"\x00" + row.tobytes() for row in rgb)  # filter type 0 on every row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


class LatticeRenderer(HtmlRenderer):
    """A 2D lattice configuration (e.g. Ising spins) drawn as a small image, one pixel per site."""

    def __init__(self, vmin: float = -1.0, vmax: float = 1.0):
        if not vmax > vmin:
            raise ValueError(f"vmax must exceed vmin, got vmin={vmin}, vmax={vmax}")
        self.vmin, self.vmax = float(vmin), float(vmax)

    def describe(self) -> str:  # noqa: D102 (documented in Renderer)
        return "each drawn as its lattice, one pixel per site (blue = up, +1; red = down, &minus;1)"

    def html(self, example: np.ndarray) -> str:
        """Return the example's values as an inline PNG (:func:`lattice_png`), upscaled without blur."""
        payload = base64.b64encode(lattice_png(as_lattice(example), self.vmin, self.vmax)).decode()
        side = html.escape(THUMBNAIL_LAYOUT["height"])
        return (
            f'<img class="hv-lattice" src="data:image/png;base64,{payload}" '
            f'style="width:{side};height:{side};image-rendering:pixelated" alt="lattice">'
        )


def fock_occupations(L: int, N: int) -> np.ndarray:
    """Occupations ``n_i`` ``(C(L, N), L)`` of the Fock basis of ``N`` spinless fermions on ``L`` sites.

    The convention of :mod:`hessview.datasets.fermi_hubbard`: basis states are the integers with
    ``N`` of their ``L`` lowest bits set, in descending order, and site ``i`` is bit ``L - 1 - i``.

    >>> fock_occupations(3, 1).tolist()
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    states = np.arange(2**L, dtype=np.int64)
    bits = (states[:, None] >> (L - 1 - np.arange(L))) & 1
    return bits[bits.sum(axis=1) == N][::-1].astype(np.float64)


class FockRenderer(HtmlRenderer):
    """A many-body state given by its Fock-basis amplitudes: its density profile or the amplitudes.

    ``mode="density"`` draws the site occupations
    :math:`\\langle n_i \\rangle = \\sum_s |\\psi_s|^2 n_i(s) / \\sum_s |\\psi_s|^2` as bars from 0 to 1
    with a dashed line at 1/2 (a Luttinger liquid is flat there, a charge-density wave alternates);
    ``mode="amplitudes"`` draws the amplitudes as a line (:class:`LineRenderer`). Model inputs that
    were rescaled are mapped back first: :math:`\\psi = \\text{offset} + \\text{scale} \\cdot x`
    (for a global min-max scaler, offset = min and scale = max - min).

    Args:
        L: number of sites; N: number of fermions (the example has ``C(L, N)`` amplitudes).
        offset, scale: the inverse of the input scaling.
        mode: ``"density"`` or ``"amplitudes"``.
    """

    modes = ("density", "amplitudes")

    def __init__(self, L: int, N: int, *, offset: float = 0.0, scale: float = 1.0, mode: str = "density"):
        if not (isinstance(L, int) and isinstance(N, int) and 0 < N < L <= 20):
            raise ValueError(f"need integers 0 < N < L <= 20, got L={L!r}, N={N!r}")
        if not (np.isfinite(offset) and np.isfinite(scale) and scale != 0):
            raise ValueError(f"offset must be finite and scale finite and nonzero, got {offset}, {scale}")
        if mode not in self.modes:
            raise ValueError(f"mode must be one of {self.modes}, got {mode!r}")
        self.L, self.N, self.offset, self.scale, self.mode = L, N, float(offset), float(scale), mode
        self.occupation = fock_occupations(L, N)
        self._line = LineRenderer()

    def describe(self) -> str:  # noqa: D102 (documented in Renderer)
        if self.mode == "amplitudes":
            return f"each drawn as its {len(self.occupation)} Fock-basis amplitudes (a line)"
        return (
            f"each drawn as its density profile &lang;n<sub>i</sub>&rang;, the occupation of each of the "
            f"{self.L} sites (bars from 0 to 1; dashed line at 1/2: a Luttinger liquid is flat there, "
            "a charge-density wave alternates between full and empty sites), with its CDW order parameter "
            "O<sub>CDW</sub> = (1/L) &sum;<sub>i</sub> |n<sub>i</sub> &minus; n<sub>i+1</sub>| (0 to 1)"
        )

    def amplitudes(self, example: np.ndarray) -> np.ndarray:
        """The example's amplitudes, mapped back from the model's input scaling."""
        values = np.asarray(example, dtype=np.float64).reshape(-1)
        if values.size != len(self.occupation):
            raise ValueError(
                f"a state of {self.N} fermions on {self.L} sites has {len(self.occupation)} amplitudes, "
                f"got {values.size}"
            )
        return self.offset + self.scale * values

    def density(self, example: np.ndarray) -> np.ndarray:
        """The density profile :math:`\\langle n_i \\rangle` ``(L,)`` of one example."""
        weights = self.amplitudes(example) ** 2
        total = weights.sum()
        if not (np.isfinite(total) and total > 0):
            raise ValueError("the state's amplitudes are all zero or not finite")
        return weights @ self.occupation / total

    def html(self, example: np.ndarray) -> str:
        """Return the density bars (or the amplitudes' line) as inline SVG."""
        if self.mode == "amplitudes":
            return self._line.html(self.amplitudes(example))
        density = self.density(example)
        width, height = 100 * self.L, 1000
        bars = "".join(
            f'<rect x="{100 * i + 10}" y="{height - n * height:.1f}" width="80" height="{n * height:.1f}" '
            'fill="#1f4e99"/>'
            for i, n in enumerate(density.tolist())
        )
        values = " ".join(repr(float(n)) for n in density)
        title = ", ".join(f"{n:.2f}" for n in density)
        order = self.order_parameter(density)
        return (
            f'<svg class="hv-density" data-density="{values}" data-order="{order!r}" '
            f'viewBox="0 -20 {width} {height + 40}" preserveAspectRatio="none" '
            f'width="{THUMBNAIL_LAYOUT["width"]}" height="80px" style="display:block">'
            f"<title>&lt;n_i&gt; = {title}</title>"
            f'<rect x="0" y="0" width="{width}" height="{height}" fill="#f4f4f4"/>{bars}'
            f'<line x1="0" x2="{width}" y1="{height // 2}" y2="{height // 2}" stroke="#d62728" '
            'stroke-dasharray="6 4" vector-effect="non-scaling-stroke"/></svg>'
            '<div class="hv-order" style="font-size:11px;line-height:16px" title="CDW order parameter '
            f'(1/L) sum_i |n_i - n_(i+1)|: 0 in a Luttinger liquid, 1 in a perfect CDW">'
            f"O<sub>CDW</sub> = {order:.2g}</div>"
        )

    @staticmethod
    def order_parameter(density: np.ndarray) -> float:
        """The CDW order parameter :math:`\\frac1L \\sum_i |n_i - n_{i+1}|` on the ring.

        The definition of :func:`hessview.datasets.fermi_hubbard.order_parameter` (0 for a uniform
        density, 1 for a perfect charge-density wave).

        >>> FockRenderer.order_parameter(np.array([1.0, 0.0, 1.0, 0.0]))
        1.0
        """
        density = np.asarray(density, dtype=np.float64)
        return float(np.abs(density - np.roll(density, -1)).mean())


class CallableRenderer(Renderer):
    """Wrap a user's function ``example -> widget``; each update replaces the thumbnail's content."""

    def __init__(self, function: Callable[[np.ndarray], widgets.Widget]):
        self.function = function

    def create(self) -> widgets.Box:
        """Return an empty box that will hold the user's widget."""
        return widgets.Box(layout=dict(THUMBNAIL_LAYOUT))

    def update(self, view: widgets.Box, example: np.ndarray) -> None:
        """Call the user's function and show what it returns."""
        shown = self.function(example)
        if not isinstance(shown, widgets.Widget):
            raise TypeError(f"a user renderer must return an ipywidgets Widget, got {type(shown).__name__}")
        view.children = (shown,)


def make_renderer(render, example_shape: tuple[int, ...]) -> Renderer:
    """Choose a renderer: ``"1d"``, ``"2d"``, a :class:`Renderer`, a callable, or None (automatic).

    A dict ``{"kind": "fock", "L": ..., "N": ..., "offset": ..., "scale": ...}`` makes a
    :class:`FockRenderer` (what the Fermi-Hubbard demos store). None picks a lattice for examples
    that are 2D after squeezing unit axes, a line otherwise.

    >>> type(make_renderer(None, (1, 16, 16))).__name__
    'LatticeRenderer'
    >>> type(make_renderer(None, (1, 924))).__name__
    'LineRenderer'
    """
    if isinstance(render, dict):
        if render.get("kind") != "fock":
            raise ValueError(f"a render dict must have kind='fock', got {render!r}")
        options = {key: value for key, value in render.items() if key != "kind"}
        return FockRenderer(**options)
    if render is None:
        squeezed = [n for n in example_shape if n != 1]
        return LatticeRenderer() if len(squeezed) == 2 else LineRenderer()
    if isinstance(render, Renderer):
        return render
    if isinstance(render, str):
        if render == "1d":
            return LineRenderer()
        if render == "2d":
            return LatticeRenderer()
        raise ValueError(f"render must be '1d', '2d', a Renderer or a callable, got {render!r}")
    if callable(render):
        return CallableRenderer(render)
    raise TypeError(f"render must be '1d', '2d', a Renderer or a callable, got {type(render).__name__}")
