"""Pixel-analysis helpers the scripted solvers send to the Python tool.

This module is deliberately self-contained (numpy + PIL only, no package imports): the solvers
ship its source text inside a ``<code>`` block, exactly as a model would write helper functions
in the sandbox, and then call them on ``image_1``. Nothing here knows the answer: it measures
colours and shapes, and reads printed digits/labels by matching them against glyphs it renders
itself with PIL's built-in font (the font the charts are typeset in).
"""

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Hue ranges (degrees) of everyday colour names, for saturated, reasonably bright pixels.
HUES = {
    "red": (345.0, 12.0),
    "orange": (20.0, 42.0),
    "yellow": (45.0, 65.0),
    "green": (90.0, 150.0),
    "blue": (205.0, 235.0),
    "purple": (260.0, 292.0),
    "pink": (305.0, 335.0),
}


def to_rgb_array(img):
    """An HxWx3 uint8 array of a PIL image or array."""
    if isinstance(img, np.ndarray):
        arr = img
    else:
        arr = np.asarray(img.convert("RGB"))
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return arr[..., :3].astype(np.uint8)


def colour_mask(rgb, name, min_sat=0.55, min_val=0.45):
    """Boolean mask of pixels whose colour is ``name`` (one of HUES).

    Hue is only computed for the (few) saturated pixels, which keeps this fast on large images.
    """
    r8, g8, b8 = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx = np.maximum(np.maximum(r8, g8), b8)  # faster than a reduction over the last axis
    mn = np.minimum(np.minimum(r8, g8), b8)
    chroma = mx.astype(np.int16) - mn
    cand = (chroma >= min_sat * mx) & (mx >= min_val * 255) & (chroma > 0)
    ys, xs = np.nonzero(cand)
    out = np.zeros(mx.shape, dtype=bool)
    if len(ys) == 0:
        return out
    p = rgb[ys, xs].astype(np.float32)
    r, g, b = p[:, 0], p[:, 1], p[:, 2]
    top = mx[ys, xs].astype(np.float32)
    d = chroma[ys, xs].astype(np.float32)
    hue = np.where(top == r, ((g - b) / d) % 6.0, np.where(top == g, (b - r) / d + 2.0, (r - g) / d + 4.0)) * 60.0
    lo, hi = HUES[name]
    keep = ((hue >= lo) & (hue <= hi)) if lo <= hi else ((hue >= lo) | (hue <= hi))
    out[ys[keep], xs[keep]] = True
    return out


def ink_mask(rgb, max_val=110, max_chroma=50):
    """Dark, unsaturated pixels: printed text and axis lines."""
    r8, g8, b8 = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx = np.maximum(np.maximum(r8, g8), b8)
    mn = np.minimum(np.minimum(r8, g8), b8)
    return (mx <= max_val) & ((mx.astype(np.int16) - mn) <= max_chroma)


def runs(flags):
    """[start, end) index pairs of the True runs of a 1-D boolean array."""
    f = np.concatenate(([0], np.asarray(flags, dtype=np.int8), [0]))
    d = np.diff(f)
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def components(mask):
    """8-connected components of a boolean mask as dicts (x0, y0, x1, y1 inclusive, area)."""
    parent = []

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    records = []  # (y, start, end_exclusive, label) of every run
    prev = []
    last_y = -2
    for y in np.flatnonzero(mask.any(axis=1)).tolist():
        if y != last_y + 1:
            prev = []
        cur = []
        for s, e in runs(mask[y]):
            label = None
            for ps, pe, pl in prev:
                if ps <= e and pe >= s:  # touching, diagonals included
                    root = find(pl)
                    if label is None:
                        label = root
                    elif root != label:
                        parent[root] = label
            if label is None:
                label = len(parent)
                parent.append(label)
            cur.append((s, e, label))
            records.append((y, s, e, label))
        prev = cur
        last_y = y
    merged = {}
    for y, s, e, label in records:
        root = find(label)
        m = merged.get(root)
        if m is None:
            merged[root] = [s, y, e - 1, y, e - s]
        else:
            m[0], m[1], m[2], m[3] = min(m[0], s), min(m[1], y), max(m[2], e - 1), max(m[3], y)
            m[4] += e - s
    return [dict(x0=m[0], y0=m[1], x1=m[2], y1=m[3], area=m[4]) for m in merged.values()]


def shape_of(comp, min_area=25):
    """Classify a blob by how much of its bounding box it fills: triangle, circle or square."""
    w, h = comp["x1"] - comp["x0"] + 1, comp["y1"] - comp["y0"] + 1
    if comp["area"] < min_area or max(w, h) > 2.2 * min(w, h) or max(w, h) > 40:
        return "other"
    fill = comp["area"] / float(w * h)
    if fill < 0.62:
        return "triangle"
    if fill < 0.9:
        return "circle"
    return "square" if max(w, h) <= 1.3 * min(w, h) else "other"


def find_zone(rgb, colour):
    """Bounding box (x0, y0, x1, y1) of the outlined zone drawn in ``colour``."""
    ys, xs = np.nonzero(colour_mask(rgb, colour))
    if len(ys) < 50:
        raise ValueError(f"no {colour} outline found")
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def count_shapes(img, colour, zone_colour=None, zone=None, min_area=25):
    """Count blobs of ``colour`` by shape, inside the outlined zone when one is given.

    Returns a dict shape -> count (triangle, circle, square, other).
    """
    rgb = to_rgb_array(img)
    ox = oy = 0
    if zone is None and zone_colour is not None:
        zone = find_zone(rgb, zone_colour)
    if zone is not None:  # analyse the zone only (plus a margin for blobs on its edge)
        ox, oy = max(0, zone[0] - 20), max(0, zone[1] - 20)
        rgb = rgb[oy: zone[3] + 21, ox: zone[2] + 21]
    counts = {"triangle": 0, "circle": 0, "square": 0, "other": 0}
    for c in components(colour_mask(rgb, colour)):
        cx, cy = ox + (c["x0"] + c["x1"]) / 2.0, oy + (c["y0"] + c["y1"]) / 2.0
        if zone is not None and not (zone[0] < cx < zone[2] and zone[1] < cy < zone[3]):
            continue
        counts[shape_of(c, min_area)] += 1
    return counts


# ----------------------------------------------------------------------------- reading text

_FONTS = {}
_GLYPHS = {}


def _font(size):
    f = _FONTS.get(size)
    if f is None:
        f = _FONTS[size] = ImageFont.load_default(size=size)
    return f


def render_text_mask(text, size):
    """Binary mask (cropped to the ink) of ``text`` set in PIL's built-in font at ``size``."""
    key = (text, size)
    m = _GLYPHS.get(key)
    if m is None:
        font = _font(size)
        x0, y0, x1, y1 = font.getbbox(text)
        im = Image.new("L", (x1 + 8, y1 + 8), 0)
        d = ImageDraw.Draw(im)
        d.fontmode = "1"
        d.text((4, 4), text, fill=255, font=font)
        m = trim(np.asarray(im) > 127)
        _GLYPHS[key] = m
    return m


def trim(mask):
    """Crop a boolean mask to its True pixels (an empty mask stays empty)."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return mask[:0, :0]
    return mask[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]


def similarity(a, b):
    """Intersection over union of two masks placed at a common top-left corner."""
    if a.size == 0 or b.size == 0:
        return 0.0
    h, w = max(a.shape[0], b.shape[0]), max(a.shape[1], b.shape[1])
    pa = np.zeros((h, w), bool)
    pb = np.zeros((h, w), bool)
    pa[: a.shape[0], : a.shape[1]] = a
    pb[: b.shape[0], : b.shape[1]] = b
    union = np.logical_or(pa, pb).sum()
    return float(np.logical_and(pa, pb).sum()) / float(max(union, 1))


def split_glyphs(mask):
    """Split a one-line text mask into glyph masks at empty columns."""
    out = []
    for s, e in runs(mask.any(axis=0)):
        out.append(trim(mask[:, s:e]))
    return out


def read_number(mask, sizes=range(8, 80)):
    """Read a printed whole number (digits, optional thousands commas) from a text mask.

    Each glyph is matched against the digits rendered at every plausible font size; the size
    with the best total match wins. Returns (value or None, mean match score).
    """
    mask = trim(mask)
    if mask.size == 0:
        return None, 0.0
    glyphs = [g for g in split_glyphs(mask) if g.size]
    height = mask.shape[0]
    best = (None, 0.0)
    for size in sizes:
        h0 = render_text_mask("0", size).shape[0]
        if abs(h0 - height) > 2:
            continue
        text, total = "", 0.0
        for g in glyphs:
            if g.shape[0] <= max(3, height // 3) and g.shape[1] <= max(3, height // 3):
                text += ","  # a comma or dot: small, low blob
                total += 1.0
                continue
            scores = [(similarity(g, render_text_mask(ch, size)), ch) for ch in "0123456789"]
            s, ch = max(scores)
            text += ch
            total += s
        score = total / max(len(glyphs), 1)
        if score > best[1]:
            digits = text.replace(",", "")
            best = (int(digits) if digits else None, score)
    return best


def text_score(mask, text, sizes=range(8, 80)):
    """How well a text mask matches ``text`` in the built-in font (best over font sizes)."""
    mask = trim(mask)
    if mask.size == 0:
        return 0.0
    best = 0.0
    for size in sizes:
        t = render_text_mask(text, size)
        if abs(t.shape[0] - mask.shape[0]) > 3 or abs(t.shape[1] - mask.shape[1]) > 0.15 * mask.shape[1] + 3:
            continue
        best = max(best, similarity(mask, t))
    return best


def read_chart(img):
    """Find the bars of a bar chart and read the value printed above each.

    Returns a list of dicts (left to right): x0, x1, top, value, score, and ``label`` (the ink
    mask of the name printed under the bar).
    """
    rgb = to_rgb_array(img)
    r8, g8, b8 = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    chroma = np.maximum(np.maximum(r8, g8), b8).astype(np.int16) - np.minimum(np.minimum(r8, g8), b8)
    barmask = chroma > 60
    cols = barmask.sum(axis=0) > 30
    spans = [(s, e) for s, e in runs(cols) if e - s >= 12]
    ink = ink_mask(rgb)
    bars = []
    for s, e in spans:
        ys = np.flatnonzero(barmask[:, s:e].any(axis=1))
        bars.append(dict(x0=s, x1=e, top=int(ys.min()), bottom=int(ys.max())))
    if not bars:
        return []
    base = int(np.median([b["bottom"] for b in bars]))
    H, W = ink.shape
    gap = min([bars[i + 1]["x0"] - bars[i]["x1"] for i in range(len(bars) - 1)] or [bars[0]["x1"] - bars[0]["x0"]])
    for i, b in enumerate(bars):
        mid = (b["x0"] + b["x1"]) // 2
        # half the gap to each neighbour; at the ends stay clear of the axis line
        left = (bars[i - 1]["x1"] + b["x0"]) // 2 if i > 0 else max(0, b["x0"] - gap // 2 + 6)
        right = (b["x1"] + bars[i + 1]["x0"]) // 2 if i + 1 < len(bars) else min(W, b["x1"] + gap // 2 - 6)
        top_win = ink[max(0, b["top"] - 45): b["top"] - 1, left:right]
        # keep only the text line closest to the bar
        rws = runs(top_win.any(axis=1))
        if rws:
            s0, e0 = rws[-1]
            value, score = read_number(top_win[s0:e0])
        else:
            value, score = None, 0.0
        label_win = ink[base + 6: min(H, base + 60), left:right]
        rws = runs(label_win.any(axis=1))
        label = label_win[rws[0][0]: rws[0][1]] if rws else label_win[:0]
        b.update(value=value, score=round(score, 3), label=trim(label), mid=mid)
    return bars


def bar_for(bars, name):
    """The bar whose printed label best matches ``name``."""
    scored = [(text_score(b["label"], name), i) for i, b in enumerate(bars)]
    s, i = max(scored)
    return bars[i], s


def read_board(img):
    """Read a price board: a list of (label mask, number) for each printed line."""
    rgb = to_rgb_array(img)
    ink = ink_mask(rgb)
    lines = []
    for s, e in runs(ink.any(axis=1)):
        if e - s < 6:
            continue
        line = ink[s:e]
        height = e - s
        groups = []
        for cs, ce in runs(line.any(axis=0)):
            if groups and cs - groups[-1][1] <= 2 * height:
                groups[-1][1] = ce
            else:
                groups.append([cs, ce])
        if len(groups) < 2:
            continue
        label = trim(line[:, groups[0][0]: groups[0][1]])
        value, score = read_number(line[:, groups[-1][0]: groups[-1][1]])
        lines.append(dict(label=label, value=value, score=score))
    return lines


def row_for(lines, name):
    """The board line whose label best matches ``name``."""
    scored = [(text_score(ln["label"], name), i) for i, ln in enumerate(lines)]
    s, i = max(scored)
    return lines[i], s
