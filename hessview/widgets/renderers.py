"""Thumbnails of training examples for the gallery: 1D states, 2D lattices, or a user's own renderer.

A renderer makes a thumbnail widget once (:meth:`Renderer.create`) and redraws it for a new example
(:meth:`Renderer.update`), so a click only sends new data, never new widgets.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable

import bqplot as bq
import ipywidgets as widgets
import numpy as np

THUMBNAIL_LAYOUT = {"width": "150px", "height": "100px"}
_MARGIN = {"top": 2, "bottom": 2, "left": 2, "right": 2}


class Renderer:
    """Base class: ``create()`` returns an empty thumbnail, ``update(view, example)`` redraws it."""

    def create(self) -> widgets.Widget:
        """Return a new, empty thumbnail widget."""
        raise NotImplementedError

    def update(self, view: widgets.Widget, example: np.ndarray) -> None:
        """Redraw ``view`` (made by :meth:`create`) to show ``example``."""
        raise NotImplementedError


class LineRenderer(Renderer):
    """A 1D state (amplitudes, a density profile, a spectrum) drawn as one line."""

    def create(self) -> bq.Figure:
        """Return a small figure holding one empty line."""
        line = bq.Lines(
            x=np.zeros(0),
            y=np.zeros(0),
            scales={"x": bq.LinearScale(), "y": bq.LinearScale()},
            colors=["#333333"],
            stroke_width=1,
        )
        return bq.Figure(marks=[line], fig_margin=_MARGIN, layout=dict(THUMBNAIL_LAYOUT))

    def update(self, view: bq.Figure, example: np.ndarray) -> None:
        """Plot the flattened example against its position."""
        y = np.asarray(example, dtype=np.float64).reshape(-1)
        line = view.marks[0]
        with line.hold_sync():
            line.x = np.arange(y.size, dtype=np.float64)
            line.y = y


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


class LatticeRenderer(Renderer):
    """A 2D lattice configuration (e.g. Ising spins) drawn as a small image, one pixel per site."""

    def __init__(self, vmin: float = -1.0, vmax: float = 1.0):
        if not vmax > vmin:
            raise ValueError(f"vmax must exceed vmin, got vmin={vmin}, vmax={vmax}")
        self.vmin, self.vmax = float(vmin), float(vmax)

    def create(self) -> widgets.Image:
        """Return an empty square image."""
        side = THUMBNAIL_LAYOUT["height"]
        image = widgets.Image(format="png", layout=widgets.Layout(width=side, height=side))
        image.add_class("hv-lattice")
        return image

    def update(self, view: widgets.Image, example: np.ndarray) -> None:
        """Show the example's values as a PNG."""
        view.value = lattice_png(as_lattice(example), self.vmin, self.vmax)


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

    None picks a lattice for examples that are 2D after squeezing unit axes, a line otherwise.

    >>> type(make_renderer(None, (1, 16, 16))).__name__
    'LatticeRenderer'
    >>> type(make_renderer(None, (1, 924))).__name__
    'LineRenderer'
    """
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
