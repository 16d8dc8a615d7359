"""A procedural stand-in for GTSRB that the project draws itself.

Why it exists: the real dataset is a download of a few hundred MB that tests,
continuous integration and first-time users should not have to wait for (or
may not be allowed to fetch). This module renders all 43 GTSRB classes as
simplified but recognisable versions of the real German signs, so the whole
pipeline (data module, training, evaluation, explanations) runs offline in
seconds, and a small CNN learns it to high accuracy for demos.

What it draws: each class is a clean vector-style template built from the
real sign's parts -- red-ringed prohibitory discs with speed numbers, red
warning triangles with black glyphs, blue mandatory discs with white arrows,
the yield triangle, the stop octagon, the priority diamond and the grey
"end of" signs with their diagonal bars. Glyphs are deliberately simple
geometry; what matters is that every class differs from every other one, and
that the geometry obeys :func:`gtsrb.classes.gtsrb_hflip_map`: mirror-pair
classes (curve left/right, turn left/right, ...) are pixel-exact mirror images
of each other, and the classes listed as mirror-symmetric are drawn
symmetric, so flip augmentation relabels synthetic data as correctly as real
data.

Each sample then puts a template on a random scene the way a camera crop
would: a cluttered gradient background (sometimes with a pole), random
scale, position, small rotation, aspect and perspective distortion, blur,
lighting (white balance, saturation, contrast, brightness, gamma) and pixel
noise. That variation is what keeps the task from being trivial.

Reproducibility: everything is driven by local random generators. The same
``(seed, num_per_class, image_size, num_classes)`` gives bit-identical
tensors, and a class's images depend only on ``(seed, class_id,
image_size)``, so asking for more images per class or more classes extends a
dataset instead of reshuffling it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

from gtsrb.classes import NUM_GTSRB_CLASSES, gtsrb_hflip_map
from gtsrb.data.imageset import ImageSet
from gtsrb.errors import UserError

__all__ = ["make_synthetic", "render_sign", "sign_template"]

Colour = tuple[int, int, int]
Point = tuple[float, float]

RED: Colour = (200, 25, 35)
WHITE: Colour = (245, 245, 240)
BLACK: Colour = (25, 25, 25)
GREY: Colour = (120, 120, 120)
DARK_GREY: Colour = (85, 85, 85)
BLUE: Colour = (20, 75, 175)
YELLOW: Colour = (250, 190, 20)
AMBER: Colour = (245, 170, 0)
GREEN: Colour = (20, 160, 70)

# Templates are drawn this many times larger than they are used, then reduced:
# ImageDraw does not antialias, and the reduction gives smooth edges.
_SUPERSAMPLE = 4


# --------------------------------------------------------------------------
# Drawing primitives
# --------------------------------------------------------------------------


class _Pen:
    """ImageDraw in sign units: x and y run from -1 to 1 across the template, y down.

    Designing glyphs in units of the sign keeps every drawing independent of
    the pixel size it is rendered at.
    """

    def __init__(self, size: int) -> None:
        self.image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.image)
        self.half = size / 2

    def px(self, x: float, y: float) -> Point:
        return ((x + 1) * self.half, (y + 1) * self.half)

    def width(self, w: float) -> int:
        return max(1, round(w * self.half))

    def polygon(self, points: Sequence[Point], fill: Colour) -> None:
        self.draw.polygon([self.px(x, y) for x, y in points], fill=fill)

    def disc(self, cx: float, cy: float, r: float, fill: Colour, ry: float | None = None) -> None:
        ry = r if ry is None else ry
        self.draw.ellipse([self.px(cx - r, cy - ry), self.px(cx + r, cy + ry)], fill=fill)

    def circle(self, cx: float, cy: float, r: float, width: float, fill: Colour) -> None:
        self.draw.ellipse([self.px(cx - r, cy - r), self.px(cx + r, cy + r)], outline=fill, width=self.width(width))

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: Colour) -> None:
        self.draw.rectangle([self.px(x0, y0), self.px(x1, y1)], fill=fill)

    def line(self, points: Sequence[Point], width: float, fill: Colour) -> None:
        self.draw.line([self.px(x, y) for x, y in points], fill=fill, width=self.width(width), joint="curve")

    def text(self, text: str, cx: float, cy: float, height: float, max_width: float, fill: Colour) -> None:
        """Draw ``text`` with its ink box centred at (cx, cy), ``height`` tall.

        Text that would be wider than ``max_width`` is squeezed horizontally,
        as real signs use condensed digits for "100" and "120".
        """
        mask = _text_mask(text)
        h = height * self.half
        w = min(mask.width * h / mask.height, max_width * self.half)
        mask = mask.resize((max(1, round(w)), max(1, round(h))), Image.Resampling.LANCZOS)
        x, y = self.px(cx, cy)
        self.image.paste(fill, (round(x - mask.width / 2), round(y - mask.height / 2)), mask)


def _text_mask(text: str) -> Image.Image:
    """Bold text as an 8-bit mask cropped to its ink.

    Pillow >= 10.1 ships a scalable default font, so no font file is needed;
    older versions fall back to the tiny bitmap font, scaled up (blocky but
    still legible after downsampling).
    """
    try:
        font = ImageFont.load_default(size=160)
    except TypeError:  # Pillow < 10.1: no size argument
        font = ImageFont.load_default()
    stroke = 7 if isinstance(font, ImageFont.FreeTypeFont) else 0  # thickens to a sign-like bold
    x0, y0, x1, y1 = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font, stroke_width=stroke)
    mask = Image.new("L", (x1 - x0 + 4, y1 - y0 + 4), 0)
    ImageDraw.Draw(mask).text((2 - x0, 2 - y0), text, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    return mask.crop(mask.getbbox())


def _regular_polygon(n: int, radius: float, centre: Point = (0.0, 0.0), rotation: float = 0.0) -> list[Point]:
    """Vertices of a regular polygon; rotation 0 puts a vertex straight up."""
    cx, cy = centre
    return [
        (cx + radius * math.sin(rotation + 2 * math.pi * k / n), cy - radius * math.cos(rotation + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _rounded(vertices: Sequence[Point], centre: Point, corner: float, steps: int = 8) -> list[Point]:
    """A regular polygon with rounded corners, as sign plates are cut.

    The polygon is shrunk towards its centre by ``corner`` and each shrunken
    vertex is replaced by an arc of radius ``corner`` spanning the turn
    between its two edges (a Minkowski sum with a disc).
    """
    n = len(vertices)
    cx, cy = centre
    # Distance from the centre to an edge of a regular polygon.
    (ax, ay), (bx, by) = vertices[0], vertices[1]
    inradius = math.hypot((ax + bx) / 2 - cx, (ay + by) / 2 - cy)
    shrink = (inradius - corner) / inradius
    inner = [(cx + (x - cx) * shrink, cy + (y - cy) * shrink) for x, y in vertices]
    points: list[Point] = []
    for k in range(n):
        px_, py_ = inner[k - 1]
        x, y = inner[k]
        nx_, ny_ = inner[(k + 1) % n]
        # The arc turns from the outward normal of the incoming edge to that of the outgoing one.
        a0, a1 = _edge_normal_angle(px_, py_, x, y), _edge_normal_angle(x, y, nx_, ny_)
        while a1 < a0:
            a1 += 2 * math.pi
        for s in range(steps + 1):
            a = a0 + (a1 - a0) * s / steps
            points.append((x + corner * math.cos(a), y + corner * math.sin(a)))
    return points


def _edge_normal_angle(x0: float, y0: float, x1: float, y1: float) -> float:
    """Angle of the outward normal of a clockwise-on-screen polygon edge."""
    dx, dy = x1 - x0, y1 - y0
    return math.atan2(-dx, dy)


def _bezier(p0: Point, p1: Point, p2: Point, steps: int = 24) -> list[Point]:
    """Points on a quadratic Bezier curve; smooth road and arrow bends."""
    out = []
    for k in range(steps + 1):
        t = k / steps
        a, b, c = (1 - t) ** 2, 2 * (1 - t) * t, t * t
        out.append((a * p0[0] + b * p1[0] + c * p2[0], a * p0[1] + b * p1[1] + c * p2[1]))
    return out


def _arrow(pen: _Pen, path: Sequence[Point], width: float, head_length: float, head_width: float, fill: Colour) -> None:
    """A thick polyline ending in a triangular head that points along its last segment."""
    (x0, y0), (x1, y1) = path[-2], path[-1]
    length = math.hypot(x1 - x0, y1 - y0)
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    bx, by = x1 - ux * head_length, y1 - uy * head_length
    # Cut the shaft where the head starts (plus a little overlap so no seam shows).
    shaft = [p for p in path[:-1] if (p[0] - bx) * ux + (p[1] - by) * uy < 0]
    shaft.append((bx + ux * 0.02, by + uy * 0.02))
    pen.line(shaft, width, fill)
    hw = head_width / 2
    pen.polygon([(x1, y1), (bx - uy * hw, by + ux * hw), (bx + uy * hw, by - ux * hw)], fill)


def _transform(points: Sequence[Point], cx: float, cy: float, scale: float, angle: float = 0.0) -> list[Point]:
    """Place a glyph drawn in its own coordinates: scale, rotate (degrees, clockwise on screen), move."""
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return [(cx + scale * (x * c - y * s), cy + scale * (x * s + y * c)) for x, y in points]


# --------------------------------------------------------------------------
# Sign families: the plate, with a slot for a symbol
# --------------------------------------------------------------------------

Drawer = Callable[[_Pen], None]

# Warning triangle geometry, shared by the plate and the glyphs placed on it.
_TRI_TOP, _TRI_BOTTOM = -0.9, 0.832  # an equilateral triangle 2 units wide
_TRI_CENTRE = (0.0, _TRI_BOTTOM - (_TRI_BOTTOM - _TRI_TOP) / 3)


def _prohibitory(symbol: Drawer | None = None) -> Drawer:
    """White disc in a red ring: speed limits, no passing, no vehicles."""

    def draw(pen: _Pen) -> None:
        pen.disc(0, 0, 0.98, RED)
        pen.disc(0, 0, 0.76, WHITE)
        if symbol is not None:
            symbol(pen)

    return draw


def _derestriction(symbol: Drawer | None = None, stripes: int = 5) -> Drawer:
    """White disc with a thin grey rim, a greyed symbol and a band of black diagonal
    bars from top right to bottom left: the "end of ..." signs."""

    def draw(pen: _Pen) -> None:
        pen.disc(0, 0, 0.98, GREY)
        pen.disc(0, 0, 0.93, WHITE)
        if symbol is not None:
            symbol(pen)
        r = 0.93
        spacing = 0.075
        for k in range(stripes):
            offset = (k - (stripes - 1) / 2) * spacing
            half = math.sqrt(r * r - offset * offset)
            # Normal (1, 1)/sqrt2 sets the offset, direction (-1, 1)/sqrt2 runs the bar.
            ox, oy = offset / math.sqrt(2), offset / math.sqrt(2)
            dx, dy = -half / math.sqrt(2), half / math.sqrt(2)
            pen.line([(ox - dx, oy - dy), (ox + dx, oy + dy)], 0.035, BLACK)

    return draw


def _warning(symbol: Drawer) -> Drawer:
    """Red-bordered white triangle, point up, with a black symbol."""

    def draw(pen: _Pen) -> None:
        outer = [(0.0, _TRI_TOP), (1.0, _TRI_BOTTOM), (-1.0, _TRI_BOTTOM)]
        cx, cy = _TRI_CENTRE
        inner = [(cx + (x - cx) * 0.64, cy + (y - cy) * 0.64) for x, y in outer]
        pen.polygon(_rounded(outer, _TRI_CENTRE, 0.12), RED)
        pen.polygon(_rounded(inner, _TRI_CENTRE, 0.04), WHITE)
        symbol(pen)

    return draw


def _mandatory(symbol: Drawer) -> Drawer:
    """Blue disc with a thin white rim and a white arrow."""

    def draw(pen: _Pen) -> None:
        pen.disc(0, 0, 0.98, WHITE)
        pen.disc(0, 0, 0.93, BLUE)
        symbol(pen)

    return draw


# --------------------------------------------------------------------------
# Symbols
# --------------------------------------------------------------------------


def _number(text: str, colour: Colour = BLACK) -> Drawer:
    def draw(pen: _Pen) -> None:
        pen.text(text, 0.0, 0.0, 0.62, 1.15, colour)

    return draw


def _car(pen: _Pen, cx: float, cy: float, scale: float, colour: Colour, angle: float = 0.0) -> None:
    """A car seen from behind: body, cabin with a white rear window, wheels."""

    def shape(points: Sequence[Point], fill: Colour) -> None:
        pen.polygon(_transform(points, cx, cy, scale, angle), fill)

    shape([(-0.45, 0.3), (-0.45, 0.55), (-0.28, 0.55), (-0.28, 0.3)], colour)  # wheels
    shape([(0.45, 0.3), (0.45, 0.55), (0.28, 0.55), (0.28, 0.3)], colour)
    shape([(-0.5, -0.1), (0.5, -0.1), (0.5, 0.4), (-0.5, 0.4)], colour)  # body
    shape([(-0.38, -0.1), (0.38, -0.1), (0.27, -0.5), (-0.27, -0.5)], colour)  # cabin
    shape([(-0.27, -0.15), (0.27, -0.15), (0.2, -0.42), (-0.2, -0.42)], WHITE)  # window


def _truck_rear(pen: _Pen, cx: float, cy: float, scale: float, colour: Colour) -> None:
    """A lorry seen from behind: tall box on wide wheels."""
    pen.polygon(_transform([(-0.5, -0.6), (0.5, -0.6), (0.5, 0.4), (-0.5, 0.4)], cx, cy, scale), colour)
    pen.polygon(_transform([(-0.5, 0.3), (-0.2, 0.3), (-0.2, 0.6), (-0.5, 0.6)], cx, cy, scale), colour)
    pen.polygon(_transform([(0.5, 0.3), (0.2, 0.3), (0.2, 0.6), (0.5, 0.6)], cx, cy, scale), colour)
    pen.polygon(_transform([(-0.4, 0.12), (0.4, 0.12), (0.4, 0.2), (-0.4, 0.2)], cx, cy, scale), WHITE)


def _overtaking(left: str, left_colour: Colour, right_colour: Colour) -> Drawer:
    """Two vehicles side by side: no passing (and its 'end of' version in grey)."""

    def draw(pen: _Pen) -> None:
        if left == "truck":
            _truck_rear(pen, -0.3, 0.02, 0.5, left_colour)
        else:
            _car(pen, -0.3, 0.02, 0.5, left_colour)
        _car(pen, 0.3, 0.02, 0.5, right_colour)

    return draw


def _truck_side(pen: _Pen) -> None:
    """A lorry in profile, cab on the left: vehicles over 3.5 t prohibited."""
    pen.rect(-0.25, -0.35, 0.6, 0.2, BLACK)  # cargo box
    pen.polygon([(-0.62, 0.2), (-0.62, -0.1), (-0.5, -0.3), (-0.3, -0.3), (-0.3, 0.2)], BLACK)  # cab
    pen.polygon([(-0.56, -0.07), (-0.47, -0.24), (-0.36, -0.24), (-0.36, -0.07)], WHITE)  # cab window
    for x in (-0.42, 0.2, 0.42):
        pen.disc(x, 0.24, 0.11, BLACK)


def _no_entry(pen: _Pen) -> None:
    pen.disc(0, 0, 0.98, RED)
    pen.rect(-0.62, -0.15, 0.62, 0.15, WHITE)


def _priority_road(pen: _Pen) -> None:
    """White diamond with a thin dark edge and a yellow centre."""
    diamond = _regular_polygon(4, 0.98)
    pen.polygon(_rounded(diamond, (0, 0), 0.06), BLACK)
    pen.polygon(_rounded(_regular_polygon(4, 0.93), (0, 0), 0.05), WHITE)
    pen.polygon(_regular_polygon(4, 0.58), YELLOW)


def _yield(pen: _Pen) -> None:
    """Red-bordered white triangle standing on its point."""
    outer = [(-1.0, -_TRI_BOTTOM), (1.0, -_TRI_BOTTOM), (0.0, -_TRI_TOP)]
    centre = (0.0, -_TRI_CENTRE[1])
    inner = [(centre[0] + x * 0.6, centre[1] + (y - centre[1]) * 0.6) for x, y in outer]
    pen.polygon(_rounded(outer, centre, 0.12), RED)
    pen.polygon(_rounded(inner, centre, 0.04), WHITE)


def _stop(pen: _Pen) -> None:
    """Red octagon with a white rim and white STOP."""
    pen.polygon(_regular_polygon(8, 1.0, rotation=math.pi / 8), WHITE)
    pen.polygon(_regular_polygon(8, 0.93, rotation=math.pi / 8), RED)
    pen.text("STOP", 0.0, 0.0, 0.4, 1.45, WHITE)


# Warning-triangle glyphs. The usable area is roughly x in [-0.35, 0.35],
# y in [-0.2, 0.58], narrowing towards the top.


def _exclamation(pen: _Pen) -> None:
    pen.polygon([(-0.075, -0.22), (0.075, -0.22), (0.04, 0.3), (-0.04, 0.3)], BLACK)
    pen.disc(0, 0.44, 0.075, BLACK)


def _curve_left(pen: _Pen) -> None:
    """A road bending left: up from the bottom, then sweeping left, arrowhead last."""
    path = [(0.12, 0.58), (0.12, 0.2)] + _bezier((0.12, 0.2), (0.12, -0.1), (-0.3, -0.06))[1:]
    _arrow(pen, path, 0.12, 0.2, 0.3, BLACK)


def _double_curve(pen: _Pen) -> None:
    """First left, then right, as the German sign 105-10."""
    path = [(0.14 * -math.sin(2 * math.pi * t / 30), 0.58 - 0.72 * t / 30) for t in range(31)]
    _arrow(pen, path, 0.11, 0.18, 0.28, BLACK)


def _bumps(pen: _Pen) -> None:
    pen.rect(-0.42, 0.44, 0.42, 0.56, BLACK)
    for x in (-0.19, 0.19):
        pen.draw.pieslice([pen.px(x - 0.17, 0.28), pen.px(x + 0.17, 0.62)], 180, 360, fill=BLACK)


def _slippery(pen: _Pen) -> None:
    """A skidding car (tilted) above two crossing tyre tracks."""
    _car(pen, -0.02, 0.0, 0.36, BLACK, angle=-18)
    left = [(-0.22 + 0.07 * math.sin(3 * t / 10), 0.22 + 0.33 * t / 10) for t in range(11)]
    right = [(0.14 - 0.1 * math.sin(3 * t / 10), 0.22 + 0.33 * t / 10) for t in range(11)]
    pen.line(left, 0.05, BLACK)
    pen.line(right, 0.05, BLACK)


def _narrows_right(pen: _Pen) -> None:
    """Two road edges; the right one steps inwards."""
    pen.line([(-0.2, 0.58), (-0.2, -0.15)], 0.09, BLACK)
    pen.line([(0.24, 0.58), (0.24, 0.28), (0.06, 0.06), (0.06, -0.15)], 0.09, BLACK)


def _road_work(pen: _Pen) -> None:
    """A worker digging into a pile."""
    pen.disc(-0.02, -0.1, 0.075, BLACK)  # head
    pen.line([(-0.04, 0.0), (-0.14, 0.3)], 0.11, BLACK)  # body
    pen.line([(-0.14, 0.3), (-0.28, 0.56)], 0.07, BLACK)  # back leg
    pen.line([(-0.14, 0.3), (0.0, 0.42), (0.04, 0.56)], 0.07, BLACK)  # front leg
    pen.line([(-0.06, 0.06), (0.14, 0.18)], 0.06, BLACK)  # arms
    pen.line([(-0.02, -0.02), (0.3, 0.36)], 0.04, BLACK)  # shovel shaft
    pen.polygon([(0.26, 0.34), (0.36, 0.3), (0.4, 0.42)], BLACK)  # blade
    pen.polygon([(0.16, 0.58), (0.34, 0.42), (0.52, 0.58)], BLACK)  # pile


def _traffic_signals(pen: _Pen) -> None:
    pen.draw.rounded_rectangle([pen.px(-0.13, -0.2), pen.px(0.13, 0.58)], radius=pen.width(0.05), fill=BLACK)
    for y, colour in ((-0.07, RED), (0.19, AMBER), (0.45, GREEN)):
        pen.disc(0, y, 0.09, colour)


def _walker(pen: _Pen, x: float, feet: float, height: float, stride: float = 1.0) -> None:
    """A stick figure walking right, ``height`` from feet to the top of the head."""
    s = height
    head_r = 0.11 * s
    hip = (x, feet - 0.45 * s)
    neck = (x + 0.04 * s, feet - 0.75 * s)
    pen.disc(neck[0] + 0.02 * s, feet - s + head_r, head_r, BLACK)
    pen.line([neck, hip], 0.16 * s, BLACK)
    pen.line([hip, (x + 0.2 * s * stride, feet - 0.22 * s), (x + 0.28 * s * stride, feet)], 0.1 * s, BLACK)
    pen.line([hip, (x - 0.12 * s * stride, feet - 0.2 * s), (x - 0.28 * s * stride, feet - 0.02 * s)], 0.1 * s, BLACK)
    pen.line([(neck[0], neck[1] + 0.05 * s), (x + 0.22 * s, feet - 0.5 * s)], 0.08 * s, BLACK)
    pen.line([(neck[0], neck[1] + 0.05 * s), (x - 0.16 * s, feet - 0.5 * s)], 0.08 * s, BLACK)


def _pedestrian(pen: _Pen) -> None:
    _walker(pen, -0.02, 0.58, 0.8)


def _children(pen: _Pen) -> None:
    """An adult with a smaller child, both walking."""
    _walker(pen, 0.12, 0.58, 0.74)
    _walker(pen, -0.22, 0.58, 0.5)


def _bicycle(pen: _Pen) -> None:
    for x in (-0.22, 0.22):
        pen.circle(x, 0.4, 0.16, 0.055, BLACK)
    frame = [(-0.22, 0.4), (-0.08, 0.14), (0.0, 0.4), (-0.22, 0.4)]
    pen.line(frame, 0.055, BLACK)
    pen.line([(0.0, 0.4), (0.15, 0.14), (0.22, 0.4)], 0.055, BLACK)
    pen.line([(-0.08, 0.14), (0.15, 0.14)], 0.055, BLACK)
    pen.line([(-0.14, 0.1), (-0.02, 0.1)], 0.05, BLACK)  # saddle
    pen.line([(0.15, 0.14), (0.12, 0.02), (0.22, 0.0)], 0.055, BLACK)  # handlebar


def _snowflake(pen: _Pen) -> None:
    """Three crossed bars with V-shaped branches, symmetric in a mirror."""
    cx, cy, r = 0.0, 0.22, 0.32
    for k in range(6):
        a = math.pi / 2 + k * math.pi / 3
        ux, uy = math.cos(a), -math.sin(a)
        pen.line([(cx, cy), (cx + r * ux, cy + r * uy)], 0.055, BLACK)
        bx, by = cx + 0.6 * r * ux, cy + 0.6 * r * uy
        for turn in (-1, 1):
            b = a + turn * math.pi / 4
            pen.line([(bx, by), (bx + 0.14 * math.cos(b), by - 0.14 * math.sin(b))], 0.045, BLACK)


def _deer(pen: _Pen) -> None:
    """A leaping deer, facing right."""

    def stroke(points: Sequence[Point], width: float) -> None:
        pen.line(_transform(points, 0.0, 0.3, 0.8), width * 0.8, BLACK)

    stroke([(-0.25, 0.1), (0.2, -0.05)], 0.2)  # body, rising to the right
    stroke([(0.15, -0.05), (0.3, -0.28)], 0.1)  # neck
    x, y = _transform([(0.36, -0.3)], 0.0, 0.3, 0.8)[0]
    pen.disc(x, y, 0.06, BLACK, ry=0.045)  # head
    stroke([(0.3, -0.33), (0.24, -0.48), (0.15, -0.52)], 0.04)  # antlers
    stroke([(0.26, -0.43), (0.33, -0.52)], 0.04)
    stroke([(0.15, 0.0), (0.3, 0.12), (0.44, 0.06)], 0.06)  # front legs, tucked
    stroke([(-0.2, 0.12), (-0.36, 0.26), (-0.5, 0.36)], 0.065)  # hind legs, stretched back
    stroke([(-0.24, 0.08), (-0.4, 0.14), (-0.52, 0.24)], 0.055)
    stroke([(-0.27, 0.06), (-0.34, -0.02)], 0.04)  # tail


def _crossroads(pen: _Pen) -> None:
    """Right of way at the next junction: a thick upright bar crossed by a thinner one."""
    pen.polygon([(-0.075, -0.22), (0.075, -0.22), (0.075, 0.58), (-0.075, 0.58)], BLACK)
    pen.rect(-0.34, 0.14, 0.34, 0.22, BLACK)


# Mandatory-disc arrows. White, shaft 0.2 wide.

_SHAFT, _HEAD_LEN, _HEAD_W = 0.2, 0.3, 0.5


def _turn_right(pen: _Pen) -> None:
    path = [(-0.22, 0.66), (-0.22, 0.05)] + _bezier((-0.22, 0.05), (-0.22, -0.22), (0.05, -0.22))[1:] + [(0.62, -0.22)]
    _arrow(pen, path, _SHAFT, _HEAD_LEN, _HEAD_W, WHITE)


def _ahead(pen: _Pen) -> None:
    _arrow(pen, [(0.0, 0.68), (0.0, -0.66)], _SHAFT, _HEAD_LEN, _HEAD_W, WHITE)


def _straight_or_right(pen: _Pen) -> None:
    _arrow(pen, [(-0.18, 0.68), (-0.18, -0.66)], 0.18, 0.26, 0.44, WHITE)
    branch = _bezier((-0.18, 0.4), (-0.18, 0.05), (0.2, 0.05)) + [(0.64, 0.05)]
    _arrow(pen, branch, 0.18, 0.26, 0.44, WHITE)


def _keep_right(pen: _Pen) -> None:
    _arrow(pen, [(-0.42, -0.42), (0.5, 0.5)], _SHAFT, _HEAD_LEN, _HEAD_W, WHITE)


def _roundabout(pen: _Pen) -> None:
    """Three arrows chasing each other anticlockwise round the centre."""
    r = 0.46
    for k in range(3):
        start = math.radians(90 + 120 * k)
        arc = [
            (r * math.cos(start - math.radians(a)), r * math.sin(start - math.radians(a)))
            for a in range(0, 95, 5)
        ]
        _arrow(pen, arc, 0.15, 0.22, 0.36, WHITE)


# --------------------------------------------------------------------------
# The table: class id -> how to draw it
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mirror:
    """Draw as the exact mirror image of another class (the left/right twins)."""

    of: int


_SIGNS: dict[int, Drawer | _Mirror] = {
    0: _prohibitory(_number("20")),
    1: _prohibitory(_number("30")),
    2: _prohibitory(_number("50")),
    3: _prohibitory(_number("60")),
    4: _prohibitory(_number("70")),
    5: _prohibitory(_number("80")),
    6: _derestriction(_number("80", GREY)),
    7: _prohibitory(_number("100")),
    8: _prohibitory(_number("120")),
    9: _prohibitory(_overtaking("car", RED, BLACK)),
    10: _prohibitory(_overtaking("truck", RED, BLACK)),
    11: _warning(_crossroads),
    12: _priority_road,
    13: _yield,
    14: _stop,
    15: _prohibitory(),
    16: _prohibitory(_truck_side),
    17: _no_entry,
    18: _warning(_exclamation),
    19: _warning(_curve_left),
    20: _Mirror(19),
    21: _warning(_double_curve),
    22: _warning(_bumps),
    23: _warning(_slippery),
    24: _warning(_narrows_right),
    25: _warning(_road_work),
    26: _warning(_traffic_signals),
    27: _warning(_pedestrian),
    28: _warning(_children),
    29: _warning(_bicycle),
    30: _warning(_snowflake),
    31: _warning(_deer),
    32: _derestriction(stripes=7),
    33: _mandatory(_turn_right),
    34: _Mirror(33),
    35: _mandatory(_ahead),
    36: _mandatory(_straight_or_right),
    37: _Mirror(36),
    38: _mandatory(_keep_right),
    39: _Mirror(38),
    40: _mandatory(_roundabout),
    41: _derestriction(_overtaking("car", DARK_GREY, DARK_GREY)),
    42: _derestriction(_overtaking("truck", DARK_GREY, DARK_GREY)),
}
assert sorted(_SIGNS) == list(range(NUM_GTSRB_CLASSES))


@lru_cache(maxsize=None)
def _template(class_id: int, size: int) -> Image.Image:
    """The clean sign as an RGBA image filling ``size`` x ``size``, drawn once and reused.

    Drawing is the slow part of a sample; the per-sample variation (pose,
    scene, lighting) is all applied afterwards, so caching here makes
    rendering thousands of images cheap.
    """
    entry = _SIGNS[class_id]
    if isinstance(entry, _Mirror):
        # Mirroring the finished template (not redrawing) makes the twins pixel-exact.
        return ImageOps.mirror(_template(entry.of, size))
    pen = _Pen(size * _SUPERSAMPLE)
    entry(pen)
    image = pen.image.resize((size, size), Image.Resampling.LANCZOS)
    if gtsrb_hflip_map()[class_id] == class_id:
        # The drawing is symmetric, but rasterising can land an edge one pixel
        # off; copying the left half over the right makes the symmetry exact.
        half = size // 2
        image.paste(ImageOps.mirror(image.crop((0, 0, half, size))), (size - half, 0))
    return image


def _check_class(class_id: int) -> None:
    if not 0 <= class_id < NUM_GTSRB_CLASSES:
        raise ValueError(f"class_id must be in 0..{NUM_GTSRB_CLASSES - 1}, got {class_id}")


def sign_template(class_id: int, size: int = 128) -> np.ndarray:
    """The noise-free sign of a class as a ``size`` x ``size`` x 4 RGBA uint8 array.

    Useful for legends, docs and tests that need the sign without a scene.
    """
    _check_class(class_id)
    return np.array(_template(class_id, size))


# --------------------------------------------------------------------------
# Scene: background, pose, camera
# --------------------------------------------------------------------------

# Plausible roadside colours (sky, foliage, walls, asphalt) for half the scene
# colours; the other half are arbitrary, so that red or blue in the background
# happens often enough that a model cannot use colour alone to find the sign.
_SCENE_COLOURS = np.array(
    [
        (135, 170, 210), (180, 200, 225), (90, 120, 70), (60, 90, 50), (140, 130, 110),
        (100, 100, 105), (170, 160, 150), (200, 190, 170), (70, 60, 55), (40, 45, 50),
    ],
    dtype=np.float32,
)  # fmt: skip


def _work_size(image_size: int) -> int:
    """Internal canvas size: at least 2x the output (and >= 96 px) so that
    downsampling antialiases edges and thin glyph strokes."""
    return max(96, 2 * image_size)


def _scene_colour(rng: np.random.Generator) -> np.ndarray:
    """One float RGB colour for a background or clutter element."""
    if rng.random() < 0.5:
        return _SCENE_COLOURS[rng.integers(len(_SCENE_COLOURS))] + rng.normal(0, 15, 3).astype(np.float32)
    colour = rng.uniform(0, 255, 3).astype(np.float32)
    return colour.mean() + (colour - colour.mean()) * np.float32(rng.uniform(0.3, 1.0))  # rarely neon


def _background(rng: np.random.Generator, size: int, sign_box: tuple[float, float, float]) -> Image.Image:
    """A cluttered, smoothly shaded scene: gradient + blotches + random shapes (+ a pole)."""
    # Gradient and low-frequency blotches (sky, foliage, shadows) are both smooth,
    # so they are built on a coarse grid and upsampled in one cheap resize.
    c0, c1 = _scene_colour(rng), _scene_colour(rng)
    angle = rng.uniform(0, 2 * math.pi)
    k = int(rng.integers(2, 7))
    ramp = np.linspace(-0.5, 0.5, k, dtype=np.float32)
    t = np.clip(ramp[None, :] * math.cos(angle) + ramp[:, None] * math.sin(angle) + 0.5, 0, 1)
    shade = rng.normal(0, 30, (k, k, 1)) + rng.normal(0, 12, (k, k, 3))  # mostly light and shadow
    grid = c0 + t[..., None] * (c1 - c0) + shade.astype(np.float32)
    coarse = Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8))
    image = coarse.resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 6))):
        _clutter(draw, rng, size)
    cx, cy, d = sign_box
    if rng.random() < 0.5:  # the post the sign is mounted on
        w = d * rng.uniform(0.06, 0.12)
        shade = int(rng.integers(90, 200))
        draw.rectangle([cx - w / 2, cy, cx + w / 2, size], fill=(shade, shade, shade))
    return image


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    """One random shape in a random colour: buildings, branches, other signs' edges."""
    colour = tuple(int(v) for v in np.clip(_scene_colour(rng), 0, 255))
    x0, y0, x1, y1 = (float(v) for v in rng.uniform(-0.2, 1.2, 4) * size)
    box = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
    kind = rng.integers(4)
    if kind == 0:
        draw.rectangle(box, fill=colour)
    elif kind == 1:
        draw.ellipse(box, fill=colour)
    elif kind == 2:
        draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, max(2, size // 12))))
    else:
        points = [tuple(float(v) for v in p) for p in rng.uniform(-0.1, 1.1, (3, 2)) * size]
        draw.polygon(points, fill=colour)


def _homography(src: np.ndarray, dst: np.ndarray) -> tuple[float, ...]:
    """PIL PERSPECTIVE coefficients mapping output points ``dst`` back to input ``src``."""
    rows, rhs = [], []
    for (u, v), (x, y) in zip(src, dst):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs.extend([u, v])
    return tuple(np.linalg.solve(np.array(rows, dtype=np.float64), np.array(rhs, dtype=np.float64)))


def _pose(rng: np.random.Generator, size: int) -> tuple[float, float, float, float, float]:
    """Where the sign sits in the crop: centre, diameter, rotation, horizontal squeeze.

    Real GTSRB crops hold the sign at 50-90 % of the frame, roughly centred,
    seen slightly from the side; these ranges copy that.
    """
    d = size * rng.uniform(0.5, 0.9)
    slack = (size - d) / 2 + 0.05 * d  # may poke slightly out of frame
    cx = size / 2 + rng.uniform(-slack, slack)
    cy = size / 2 + rng.uniform(-slack, slack)
    return cx, cy, d, rng.uniform(-15, 15), rng.uniform(0.8, 1.05)


def _place(
    template: Image.Image, rng: np.random.Generator, size: int, pose: tuple[float, ...]
) -> tuple[Image.Image, tuple[int, int]]:
    """Warp the template with one perspective transform (pose + corner jitter).

    Returns the warped sign cut to its bounding box and where that box goes on
    the canvas: warping only the box instead of the whole canvas is the
    biggest single saving per sample.
    """
    cx, cy, d, angle, squeeze = pose
    t = template.width
    corners = np.array([(0, 0), (t, 0), (t, t), (0, t)], dtype=np.float64)
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    local = (corners - t / 2) * (d / t) * np.array([squeeze, 1.0])
    dst = local @ np.array([[c, s], [-s, c]]) + (cx, cy)
    dst += rng.uniform(-0.06, 0.06, (4, 2)) * d  # perspective / viewpoint
    x0, y0 = np.clip(np.floor(dst.min(axis=0)), 0, size - 1).astype(int)
    x1, y1 = np.clip(np.ceil(dst.max(axis=0)), x0 + 1, size).astype(int)
    coefficients = _homography(corners, dst - (x0, y0))
    warped = template.transform((x1 - x0, y1 - y0), Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BILINEAR)
    return warped, (int(x0), int(y0))


def _occlude(image: Image.Image, rng: np.random.Generator, size: int) -> None:
    """Now and then a twig or wire crosses the sign, as in real street scenes."""
    if rng.random() < 0.15:
        colour = tuple(int(v) for v in rng.integers(0, 200, 3))
        x0, x1 = rng.uniform(0, size, 2)
        ImageDraw.Draw(image).line([(x0, 0), (x1, size)], fill=colour, width=int(rng.integers(1, max(2, size // 24))))


def _photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera and weather: white balance, saturation, contrast, brightness, gamma, noise.

    Applied at output resolution because it is per-pixel arithmetic and the
    small image is many times cheaper.
    """
    x = image.astype(np.float32) / 255.0
    x *= rng.uniform(0.85, 1.15, 3).astype(np.float32)  # white balance
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * np.float32(rng.uniform(0.5, 1.3))  # saturation
    x = (x - x.mean()) * np.float32(rng.uniform(0.6, 1.3)) + x.mean() + np.float32(rng.uniform(-0.15, 0.15))
    x = np.clip(x, 0, 1) ** np.float32(math.exp(rng.uniform(math.log(0.6), math.log(2.2))))  # often dark, like GTSRB
    x += rng.normal(0, rng.uniform(0, 0.05), x.shape).astype(np.float32)
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def render_sign(class_id: int, rng: np.random.Generator, image_size: int) -> np.ndarray:
    """One random photo-like crop of a sign, ``image_size`` x ``image_size`` x 3 uint8.

    All randomness comes from ``rng``, so a seeded generator reproduces the
    image exactly.
    """
    _check_class(class_id)
    size = _work_size(image_size)
    pose = _pose(rng, size)
    canvas = _background(rng, size, pose[:3])
    sign, offset = _place(_template(class_id, size), rng, size, pose)
    canvas.paste(sign, offset, sign)  # the warped alpha is its own mask
    _occlude(canvas, rng, size)
    # Box averaging is the right antialiasing filter for an integer-ish reduction and is
    # several times cheaper than Lanczos; defocus is added at output size, where it is cheap too.
    small = canvas.resize((image_size, image_size), Image.Resampling.BOX)
    if rng.random() < 0.7:
        small = small.filter(ImageFilter.GaussianBlur(rng.uniform(0.1, 0.8) * image_size / 32))
    return _photometric(np.asarray(small), rng)


def make_synthetic(num_per_class: int, image_size: int, seed: int, num_classes: int = NUM_GTSRB_CLASSES) -> ImageSet:
    """A balanced synthetic dataset: ``num_per_class`` images of each of the first ``num_classes`` classes.

    Order: shuffled (with a permutation drawn from ``seed``), so that any
    prefix or naive head/tail split still holds every class. Class ``c``'s
    images come from a generator seeded by ``(seed, c)``, which makes them
    independent of ``num_classes`` and makes a larger ``num_per_class``
    extend the smaller set instead of replacing it. ``groups`` is ``None``:
    every image is an independent draw, so there are no tracks to keep
    together when splitting.
    """
    if num_per_class < 1:
        raise UserError(f"synthetic data needs num_per_class >= 1, got {num_per_class}")
    if image_size < 8:
        raise UserError(f"synthetic data needs image_size >= 8, got {image_size}")
    if not 1 <= num_classes <= NUM_GTSRB_CLASSES:
        raise UserError(f"synthetic data has 1..{NUM_GTSRB_CLASSES} classes, got num_classes={num_classes}")
    if seed < 0:
        raise UserError(f"synthetic data needs a non-negative seed, got {seed}")

    images = np.empty((num_classes * num_per_class, image_size, image_size, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), num_per_class)
    for c in range(num_classes):
        # Tags 1 (per class) and 2 (order) keep the streams apart.
        rng = np.random.default_rng([seed, 1, c])
        for k in range(num_per_class):
            images[c * num_per_class + k] = render_sign(c, rng, image_size)
    order = np.random.default_rng([seed, 2]).permutation(len(labels))
    return ImageSet(
        images=torch.from_numpy(np.ascontiguousarray(images[order].transpose(0, 3, 1, 2))),
        labels=torch.from_numpy(labels[order]),
        groups=None,
    )
