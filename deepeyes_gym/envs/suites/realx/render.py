"""Drawing: large scenes with small markers, bar charts with small labels, price boards, emblems.

Scenes, charts and boards are drawn in palette ("P") mode: a few dozen flat colours and no
anti-aliasing, so they are fast to draw and to PNG-encode and their pixels are exact. Emblems are
RGB "photos" (JPEG in the corpus); image-search tasks show a distorted copy of one.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

__all__ = [
    "MARKER_RGB",
    "ZONE_RGB",
    "SceneSpec",
    "ChartSpec",
    "BoardSpec",
    "font",
    "layout_scene",
    "draw_scene",
    "draw_chart",
    "draw_board",
    "draw_emblem",
    "distort",
    "draw_card",
    "SHAPES",
]

SHAPES = ("triangle", "circle", "square")
# Saturated marker colours, far in hue from every background and from the zone outline.
MARKER_RGB = {
    "red": (222, 28, 36),
    "orange": (246, 138, 0),
    "yellow": (236, 204, 0),
    "purple": (138, 44, 196),
    "pink": (232, 40, 170),
}
ZONE_RGB = {"blue": (20, 88, 255)}

# Muted backgrounds and clutter per domain (saturation well below the markers').
_BACKGROUND = {
    "commerce": ((168, 164, 150), [(92, 92, 96), (196, 190, 176), (140, 138, 132), (120, 124, 118)]),
    "wildlife": ((126, 148, 112), [(110, 128, 136), (150, 160, 112), (98, 118, 92), (160, 150, 120)]),
    "travel": ((118, 136, 150), [(152, 142, 122), (170, 166, 142), (96, 108, 120), (200, 196, 184)]),
    "sports": ((146, 148, 152), [(128, 128, 134), (170, 170, 172), (110, 132, 104), (186, 180, 168)]),
    "culture": ((214, 204, 186), [(122, 112, 102), (198, 188, 168), (176, 170, 160), (226, 220, 206)]),
}
_N_SHADES = 16
_CLUTTER0 = 16
_ZONE_IDX = 24
_MARKER0 = 25


@lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """PIL's built-in font at ``size`` (the solvers render the same font to read labels)."""
    return ImageFont.load_default(size=size)


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, size: int, fill: int, anchor: str = "la") -> None:
    draw.fontmode = "1"  # no anti-aliasing: exact, palette-friendly glyphs
    draw.text(xy, text, fill=fill, font=font(size), anchor=anchor)


# ----------------------------------------------------------------------------- scenes


@dataclass
class SceneSpec:
    """Everything needed to draw one scene; ``markers`` are (x, y, shape, colour)."""

    width: int
    height: int
    domain: str
    seed: int
    zone: tuple[int, int, int, int]
    zone_colour: str
    markers: list[tuple[int, int, str, str]] = field(default_factory=list)
    bars: list[tuple[int, int, str]] = field(default_factory=list)  # elongated same-colour noise


def layout_scene(
    rng: np.random.Generator,
    domain: str,
    inside: dict[tuple[str, str], int],
    *,
    n_outside: int,
    colours: tuple[str, ...],
    size: tuple[int, int] | None = None,
) -> SceneSpec:
    """Place markers so that the zone holds exactly ``inside[(colour, shape)]`` of each kind.

    Markers keep 20 px between centres and 16 px from the zone outline, so every one is clearly
    in or out and none touch. Outside the zone, ``n_outside`` markers of random kinds are added.
    """
    w = int(size[0]) if size else int(rng.integers(2300, 2700))
    h = int(size[1]) if size else int(rng.integers(1700, 1950))
    zw, zh = int(rng.integers(520, 760)), int(rng.integers(400, 560))
    zx, zy = int(rng.integers(80, w - zw - 80)), int(rng.integers(80, h - zh - 80))
    zone = (zx, zy, zx + zw, zy + zh)
    pts: list[tuple[int, int]] = []
    cell = 20
    grid: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def free(x: int, y: int) -> bool:
        gx, gy = x // cell, y // cell
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for px, py in grid.get((gx + dx, gy + dy), ()):
                    if (px - x) ** 2 + (py - y) ** 2 < 20 * 20:
                        return False
        return True

    def add(x: int, y: int) -> None:
        pts.append((x, y))
        grid.setdefault((x // cell, y // cell), []).append((x, y))

    def sample(in_zone: bool) -> tuple[int, int]:
        m = 16
        for _ in range(5000):
            if in_zone:
                x = int(rng.integers(zone[0] + m, zone[2] - m))
                y = int(rng.integers(zone[1] + m, zone[3] - m))
            else:
                x, y = int(rng.integers(12, w - 12)), int(rng.integers(12, h - 12))
                if zone[0] - m <= x <= zone[2] + m and zone[1] - m <= y <= zone[3] + m:
                    continue
            if free(x, y):
                add(x, y)
                return x, y
        raise RuntimeError("scene too crowded to place a marker")

    markers: list[tuple[int, int, str, str]] = []
    for (colour, shape), n in sorted(inside.items()):
        for _ in range(int(n)):
            x, y = sample(True)
            markers.append((x, y, shape, colour))
    for _ in range(int(n_outside)):
        x, y = sample(False)
        markers.append((x, y, SHAPES[int(rng.integers(3))], colours[int(rng.integers(len(colours)))]))
    bars = []
    for _ in range(int(rng.integers(6, 14))):  # red/orange... streaks that are no marker at all
        x, y = sample(bool(rng.random() < 0.3))
        bars.append((x, y, colours[int(rng.integers(len(colours)))]))
    order = rng.permutation(len(markers))
    markers = [markers[i] for i in order]
    return SceneSpec(w, h, domain, int(rng.integers(2**31)), zone, "blue", markers, bars)


def _palette(bg: tuple[int, int, int], clutter: list[tuple[int, int, int]]) -> list[int]:
    pal: list[int] = []
    for i in range(_N_SHADES):
        f = 0.86 + 0.2 * i / (_N_SHADES - 1)
        pal += [min(255, int(c * f)) for c in bg]
    for c in clutter + [(0, 0, 0)] * (8 - len(clutter)):
        pal += list(c)
    pal += list(ZONE_RGB["blue"])
    for c in MARKER_RGB.values():
        pal += list(c)
    return pal + [0] * (768 - len(pal))


def _smooth_noise(rng: np.random.Generator, w: int, h: int, cell: int) -> np.ndarray:
    """Smooth random field in [0, 1): coarse noise upsampled bilinearly (8-bit: fast)."""
    small = (rng.random((h // cell + 2, w // cell + 2)) * 255).astype(np.uint8)
    big = Image.fromarray(small, mode="L").resize((w, h), Image.BILINEAR)
    return np.asarray(big, dtype=np.float32) / 256.0


def draw_scene(spec: SceneSpec) -> Image.Image:
    """Render a scene spec as a palette image."""
    rng = np.random.default_rng(spec.seed)
    w, h = spec.width, spec.height
    bg, clutter = _BACKGROUND[spec.domain]
    noise = _smooth_noise(rng, w, h, 160)
    idx = np.clip((noise * _N_SHADES).astype(np.int16), 0, _N_SHADES - 1).astype(np.uint8)
    img = Image.fromarray(idx, mode="P")
    img.putpalette(_palette(bg, clutter))
    d = ImageDraw.Draw(img)
    _draw_clutter(d, rng, spec.domain, w, h)
    x0, y0, x1, y1 = spec.zone
    _dashed_rect(d, spec.zone, _ZONE_IDX, width=4)
    mindex = {name: _MARKER0 + i for i, name in enumerate(MARKER_RGB)}
    for x, y, shape, colour in spec.markers:
        c = mindex[colour]
        if shape == "triangle":
            d.polygon([(x, y - 6), (x - 6, y + 5), (x + 6, y + 5)], fill=c)
        elif shape == "circle":
            d.ellipse((x - 5, y - 5, x + 5, y + 5), fill=c)
        else:
            d.rectangle((x - 4, y - 4, x + 4, y + 4), fill=c)
    for x, y, colour in spec.bars:
        if (x + y) % 2:
            d.rectangle((x - 8, y - 2, x + 8, y + 2), fill=mindex[colour])
        else:
            d.rectangle((x - 2, y - 8, x + 2, y + 8), fill=mindex[colour])
    return img


def _dashed_rect(d: ImageDraw.ImageDraw, box: tuple[int, int, int, int], fill: int, width: int) -> None:
    x0, y0, x1, y1 = box
    dash, gap = 18, 10
    for x in range(x0, x1, dash + gap):
        d.rectangle((x, y0, min(x + dash, x1), y0 + width - 1), fill=fill)
        d.rectangle((x, y1 - width + 1, min(x + dash, x1), y1), fill=fill)
    for y in range(y0, y1, dash + gap):
        d.rectangle((x0, y, x0 + width - 1, min(y + dash, y1)), fill=fill)
        d.rectangle((x1 - width + 1, y, x1, min(y + dash, y1)), fill=fill)


def _draw_clutter(d: ImageDraw.ImageDraw, rng: np.random.Generator, domain: str, w: int, h: int) -> None:
    c = [_CLUTTER0 + i for i in range(4)]
    if domain == "commerce":  # roads and buildings
        for _ in range(int(rng.integers(4, 8))):
            if rng.random() < 0.5:
                y = int(rng.integers(0, h))
                d.rectangle((0, y, w, y + int(rng.integers(16, 34))), fill=c[0])
            else:
                x = int(rng.integers(0, w))
                d.rectangle((x, 0, x + int(rng.integers(16, 34)), h), fill=c[0])
        for _ in range(int(rng.integers(25, 45))):
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            d.rectangle((x, y, x + int(rng.integers(60, 260)), y + int(rng.integers(40, 180))), fill=c[1 + int(rng.integers(3))])
    elif domain == "wildlife":  # ponds and reed beds
        for _ in range(int(rng.integers(10, 20))):
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            d.ellipse((x, y, x + int(rng.integers(120, 420)), y + int(rng.integers(80, 300))), fill=c[0])
        for _ in range(int(rng.integers(200, 400))):
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            d.ellipse((x, y, x + int(rng.integers(10, 40)), y + int(rng.integers(10, 40))), fill=c[1 + int(rng.integers(3))])
    elif domain == "travel":  # piers and quays
        for _ in range(int(rng.integers(3, 6))):
            x = int(rng.integers(0, w))
            d.rectangle((x, 0, x + int(rng.integers(200, 500)), int(rng.integers(100, 300))), fill=c[1])
        for _ in range(int(rng.integers(12, 24))):
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            if rng.random() < 0.5:
                d.rectangle((x, y, x + int(rng.integers(200, 600)), y + int(rng.integers(14, 26))), fill=c[0])
            else:
                d.rectangle((x, y, x + int(rng.integers(14, 26)), y + int(rng.integers(200, 600))), fill=c[0])
        for _ in range(int(rng.integers(20, 40))):
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            d.rectangle((x, y, x + int(rng.integers(20, 60)), y + int(rng.integers(8, 20))), fill=c[3])
    elif domain == "sports":  # rows of seats
        y = 0
        k = 0
        while y < h:
            hh = int(rng.integers(22, 40))
            d.rectangle((0, y, w, y + hh), fill=c[k % 2])
            y += hh + int(rng.integers(4, 10))
            k += 1
        for _ in range(int(rng.integers(3, 7))):
            x = int(rng.integers(0, w))
            d.rectangle((x, 0, x + int(rng.integers(20, 40)), h), fill=c[3])
    else:  # culture: rooms with walls
        for _ in range(int(rng.integers(8, 16))):
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            ww, hh = int(rng.integers(200, 700)), int(rng.integers(160, 500))
            d.rectangle((x, y, x + ww, y + hh), fill=c[1 + int(rng.integers(3))], outline=c[0], width=8)


# ----------------------------------------------------------------------------- charts


@dataclass
class ChartSpec:
    """A vertical bar chart: one bar per (label, value), tiny value and name labels."""

    title: str
    labels: list[str]
    values: list[int]
    seed: int
    width: int = 2400
    height: int = 1500
    value_size: int = 13
    label_size: int = 13
    bar_rgb: tuple[int, int, int] = (70, 120, 180)


def draw_chart(spec: ChartSpec) -> Image.Image:
    """Render a bar chart as a palette image."""
    w, h = spec.width, spec.height
    img = Image.new("P", (w, h), 0)
    pal = [255, 255, 255, 226, 226, 226, 70, 70, 70, 25, 25, 25] + list(spec.bar_rgb)
    img.putpalette(pal + [0] * (768 - len(pal)))
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 150, w - 60, 210, h - 170
    vmax = int(math.ceil(max(spec.values) * 1.12 / 250.0) * 250)  # ticks at multiples of 50
    for k in range(6):  # gridlines with tiny tick labels
        v = vmax * k / 5
        y = bottom - (bottom - top) * v / vmax
        d.line((left, y, right, y), fill=1, width=1)
        _text(d, (left - 12, y), f"{int(v)}", 12, 3, anchor="rm")
    d.line((left, top - 10, left, bottom), fill=2, width=2)
    d.line((left, bottom, right, bottom), fill=2, width=2)
    _text(d, (left, 70), spec.title, 30, 3)
    n = len(spec.values)
    slot = (right - left) / n
    bw = int(slot * 0.5)
    for i, (label, v) in enumerate(zip(spec.labels, spec.values)):
        cx = left + slot * (i + 0.5)
        y = bottom - (bottom - top) * v / vmax
        d.rectangle((int(cx - bw / 2), int(round(y)), int(cx + bw / 2), bottom - 1), fill=4)
        _text(d, (cx, round(y) - 6), str(v), spec.value_size, 3, anchor="ms")
        _text(d, (cx, bottom + 14), label, spec.label_size, 3, anchor="mt")
    return img


# ----------------------------------------------------------------------------- boards


@dataclass
class BoardSpec:
    """A legible price board: title plus (item, price) lines in a large font."""

    title: str
    items: list[tuple[str, int]]
    size: int = 48
    width: int = 1600
    height: int = 1000


def draw_board(spec: BoardSpec) -> Image.Image:
    img = Image.new("P", (spec.width, spec.height), 0)
    pal = [240, 232, 210, 30, 30, 30, 150, 60, 40]
    img.putpalette(pal + [0] * (768 - len(pal)))
    d = ImageDraw.Draw(img)
    d.rectangle((20, 20, spec.width - 20, spec.height - 20), outline=2, width=10)
    _text(d, (120, 70), spec.title, spec.size + 12, 1)
    y = 220
    step = (spec.height - 300) // max(len(spec.items), 1)
    for item, price in spec.items:
        _text(d, (120, y), item, spec.size, 1)
        _text(d, (spec.width - 150, y), str(price), spec.size, 1, anchor="ra")
        y += step
    return img


# ----------------------------------------------------------------------------- emblems

_OUTER = ("circle", "hexagon", "shield", "square", "diamond")


def _poly(cx: float, cy: float, r: float, n: int, rot: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(rot + 2 * math.pi * k / n), cy + r * math.sin(rot + 2 * math.pi * k / n)) for k in range(n)]


def draw_emblem(seed: int, group_seed: int, letter: str, size: int = 256) -> Image.Image:
    """A procedural emblem: the group fixes palette and outline (look-alikes), the seed the motif."""
    g = np.random.default_rng(group_seed)
    r = np.random.default_rng(seed)
    cols = [tuple(int(v) for v in g.integers(20, 236, 3)) for _ in range(3)]
    outer = _OUTER[int(g.integers(len(_OUTER)))]
    back = (245, 245, 240) if g.random() < 0.7 else (40, 40, 48)
    img = Image.new("RGB", (size, size), back)
    d = ImageDraw.Draw(img)
    s, c = size, size / 2
    if outer == "circle":
        d.ellipse((8, 8, s - 8, s - 8), fill=cols[0])
    elif outer == "hexagon":
        d.polygon(_poly(c, c, s / 2 - 6, 6, math.pi / 6), fill=cols[0])
    elif outer == "shield":
        d.polygon([(16, 12), (s - 16, 12), (s - 16, s * 0.55), (c, s - 8), (16, s * 0.55)], fill=cols[0])
    elif outer == "square":
        d.rounded_rectangle((12, 12, s - 12, s - 12), radius=28, fill=cols[0])
    else:
        d.polygon([(c, 6), (s - 6, c), (c, s - 6), (6, c)], fill=cols[0])
    # motif: a few large primitives at random places (they make the low frequencies unique)
    for _ in range(int(r.integers(3, 6))):
        kind = int(r.integers(5))
        col = cols[1 + int(r.integers(2))] if r.random() < 0.8 else tuple(int(v) for v in r.integers(0, 256, 3))
        x, y = float(r.uniform(0.2, 0.8) * s), float(r.uniform(0.2, 0.8) * s)
        rad = float(r.uniform(0.08, 0.22) * s)
        if kind == 0:
            pts = []
            for k in range(10):
                rr = rad if k % 2 == 0 else rad * 0.45
                a = -math.pi / 2 + math.pi * k / 5
                pts.append((x + rr * math.cos(a), y + rr * math.sin(a)))
            d.polygon(pts, fill=col)
        elif kind == 1:
            ang = float(r.uniform(0, math.pi))
            dx, dy = math.cos(ang) * rad * 1.6, math.sin(ang) * rad * 1.6
            d.line((x - dx, y - dy, x + dx, y + dy), fill=col, width=int(rad * 0.5) + 2)
        elif kind == 2:
            d.ellipse((x - rad, y - rad, x + rad, y + rad), fill=col)
        elif kind == 3:
            d.polygon(_poly(x, y, rad, 3, float(r.uniform(0, 2 * math.pi))), fill=col)
        else:
            d.line([(x - rad, y + rad * 0.5), (x, y - rad * 0.5), (x + rad, y + rad * 0.5)], fill=col, width=int(rad * 0.35) + 2)
    d.fontmode = "L"
    d.text((c + float(r.uniform(-30, 30)), c + float(r.uniform(-30, 30))), letter, fill=cols[2] if r.random() < 0.5 else back,
           font=font(int(r.integers(70, 110))), anchor="mm")
    return img


def draw_card(emblems: list[Image.Image], names: list[str]) -> Image.Image:
    """Emblems side by side, each captioned with its name in a large, legible font."""
    tile, pad = 300, 30
    img = Image.new("RGB", (len(emblems) * (tile + pad) + pad, tile + 2 * pad + 60), (250, 250, 246))
    d = ImageDraw.Draw(img)
    for i, (em, name) in enumerate(zip(emblems, names)):
        x = pad + i * (tile + pad)
        img.paste(em.resize((tile, tile), Image.BICUBIC), (x, pad))
        size = 26
        while size > 12 and font(size).getlength(name) > tile:
            size -= 2
        d.text((x + tile / 2, pad + tile + 18), name, fill=(30, 30, 30), font=font(size), anchor="mt")
    return img


def distort(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A 'photo of' the image: small crop, resize, brightness/contrast change, JPEG round trip."""
    w, h = img.size
    l, t = rng.uniform(0, 0.04, 2)
    r, b = rng.uniform(0, 0.04, 2)
    out = img.crop((int(l * w), int(t * h), int(w - r * w), int(h - b * h)))
    target = int(rng.integers(300, 560))
    out = out.resize((target, int(target * out.height / out.width)), Image.BICUBIC)
    out = ImageEnhance.Brightness(out).enhance(float(rng.uniform(0.85, 1.15)))
    out = ImageEnhance.Contrast(out).enhance(float(rng.uniform(0.9, 1.1)))
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=int(rng.integers(55, 90)))
    buf.seek(0)
    return Image.open(buf).convert("RGB")
