"""Overlay rendering of segmentation results: one colour per segment, optional contours and label text.

Works on an (H, W) segment-id map (0 = no segment) and the segments' ids and captions, which is what
every task reduces to (semantic: one segment per class present; instance: overlapping pixels shown for
the higher-scoring detection), so one renderer serves all three tasks.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

__all__ = [
    "add_legend",
    "class_colors",
    "class_palette",
    "class_shade",
    "default_font",
    "distinct_colors",
    "label_anchor",
    "render_overlay",
    "segment_boundaries",
]

_GOLDEN = 0.618033988749895


def distinct_colors(count: int) -> list[tuple[int, int, int]]:
    """`count` pairwise different, saturated RGB colours; hues spread by the golden ratio so neighbours in
    the sequence (often neighbouring segments) differ strongly. Deterministic."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    colors: list[tuple[int, int, int]] = []
    seen: set[tuple[int, int, int]] = set()
    step = 0
    while len(colors) < count:
        hue = (step * _GOLDEN) % 1.0
        saturation = (0.95, 0.7, 0.5)[(step // 7) % 3]
        value = (0.95, 0.8)[(step // 21) % 2]
        rgb = tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, saturation, value))
        step += 1
        if rgb not in seen:
            seen.add(rgb)
            colors.append(rgb)  # type: ignore[arg-type]
    return colors


# lightness offsets of the 2nd, 3rd, ... segment of one class: same hue, alternately lighter and darker
_SHADE_STEPS = (0.16, -0.16, 0.28, -0.28, 0.08, -0.08, 0.22, -0.22)


def class_shade(color: tuple[int, int, int], index: int) -> tuple[int, int, int]:
    """The `index`-th shade of a class colour (0: the colour itself): same hue and saturation, another
    lightness, so the segments of one class read as one colour family."""
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    if index == 0:
        return tuple(int(c) for c in color)  # type: ignore[return-value]
    hue, lightness, saturation = colorsys.rgb_to_hls(*(c / 255.0 for c in color))
    step = _SHADE_STEPS[(index - 1) % len(_SHADE_STEPS)] * (1 + (index - 1) // len(_SHADE_STEPS))
    lightness = min(0.85, max(0.18, lightness + step))
    return tuple(int(round(255 * c)) for c in colorsys.hls_to_rgb(hue, lightness, saturation))  # type: ignore


def class_palette(count: int) -> list[tuple[int, int, int]]:
    """Base colour of each of `count` classes. Up to 12 classes: hues evenly spaced around the circle,
    handed out with a stride of about 0.38 of a turn so classes with neighbouring ids get far-apart hues;
    more classes: `distinct_colors` (which also varies saturation and brightness)."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if count > 12:
        return distinct_colors(count)
    stride = max(1, round(count * 0.382))
    while math.gcd(stride, count) != 1:
        stride += 1
    return [
        tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb((k * stride % count) / count, 0.9, 0.95))
        for k in range(count)
    ]  # type: ignore[misc]


def class_colors(label_ids: Sequence[int], num_labels: int = 0) -> list[tuple[int, int, int]]:
    """One colour per segment, taken from its class: class k has the base colour `class_palette(n)[k]`
    (n = max(num_labels, largest id + 1), so a model's classes keep their colours across images and tasks);
    the first segment of a class gets it, later ones its shades (`class_shade`)."""
    ids = [int(i) for i in label_ids]
    if any(i < 0 for i in ids):
        raise ValueError(f"label ids must be >= 0, got {ids}")
    palette = class_palette(max([num_labels, *(i + 1 for i in ids)]))
    seen: dict[int, int] = {}
    colors = []
    for label in ids:
        colors.append(class_shade(palette[label], seen.get(label, 0)))
        seen[label] = seen.get(label, 0) + 1
    return colors


def default_font(size: int) -> PIL.ImageFont.ImageFont | PIL.ImageFont.FreeTypeFont:
    """Pillow's bundled font at `size` pixels (its fixed bitmap font where FreeType is unavailable)."""
    try:
        return PIL.ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType
        return PIL.ImageFont.load_default()


def _auto_font_size(height: int, width: int) -> int:
    return max(11, min(height, width) // 32)


def add_legend(
    image: PIL.Image.Image,
    entries: Sequence[tuple[str, tuple[int, int, int]]],
    title: str | None = None,
    font_size: int | None = None,
) -> PIL.Image.Image:
    """`image` with a legend panel on its right: a colour swatch and a caption per entry (label, colour).

    The panel is as tall as the image (taller if the entries need it) and as wide as the longest caption.
    """
    base = image.convert("RGB")
    size = font_size or _auto_font_size(base.height, base.width)
    font = default_font(size)
    probe = PIL.ImageDraw.Draw(base)
    lines = ([title] if title else []) + [caption for caption, _ in entries]
    text_width = max((probe.textbbox((0, 0), line, font=font)[2] for line in lines), default=0)
    pad, swatch, row = size // 2 + 2, size, int(size * 1.6)
    width = pad * 3 + swatch + text_width
    height = max(base.height, pad * 2 + row * len(lines))
    out = PIL.Image.new("RGB", (base.width + width, height), (32, 32, 32))
    out.paste(base, (0, 0))
    draw = PIL.ImageDraw.Draw(out)
    x, y = base.width + pad, pad
    if title:
        draw.text((x, y), title, fill=(255, 255, 255), font=font)
        y += row
    for caption, color in entries:
        fill = tuple(int(c) for c in color)
        draw.rectangle((x, y, x + swatch, y + swatch), fill=fill, outline=(255, 255, 255))
        draw.text((x + swatch + pad, y), caption, fill=(255, 255, 255), font=font)
        y += row
    return out


def segment_boundaries(segmentation: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose right or lower neighbour belongs to another segment (or to none)."""
    edges = np.zeros(segmentation.shape, dtype=bool)
    horizontal = segmentation[:, 1:] != segmentation[:, :-1]
    vertical = segmentation[1:, :] != segmentation[:-1, :]
    edges[:, :-1] |= horizontal
    edges[:, 1:] |= horizontal
    edges[:-1, :] |= vertical
    edges[1:, :] |= vertical
    return edges & (segmentation != 0)


def label_anchor(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the mask pixel farthest from the mask's border: inside the segment even when it is
    not convex, where a centroid could fall outside."""
    from scipy.ndimage import distance_transform_edt

    if not mask.any():
        raise ValueError("cannot place a label on an empty mask")
    distance = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x), int(y)


def render_overlay(
    image: PIL.Image.Image | np.ndarray,
    segmentation: np.ndarray,
    segment_ids: Sequence[int],
    captions: Sequence[str] | None = None,
    colors: Sequence[tuple[int, int, int]] | None = None,
    alpha: float = 0.55,
    contours: bool = False,
    draw_labels: bool = True,
    font_size: int | None = None,
) -> PIL.Image.Image:
    """RGB overlay of `segmentation` on `image` (same size).

    segment_ids: the ids to draw (others are left uncoloured); colors: one per id (default
    `distinct_colors`; `class_colors` gives colours by class); captions: text per id, drawn with PIL's
    default font (`font_size` pixels, default 1/32 of the shorter side, at least 11) on a dark box at
    `label_anchor`; alpha: colour weight (1 = opaque); contours: white segment borders.
    """
    base = np.asarray(image.convert("RGB") if isinstance(image, PIL.Image.Image) else image)
    if base.ndim != 3 or base.shape[2] != 3 or base.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 (H, W, 3), got {base.dtype} {tuple(base.shape)}")
    segmentation = np.asarray(segmentation)
    if segmentation.shape != base.shape[:2]:
        raise ValueError(
            f"segmentation {tuple(segmentation.shape)} does not match image {tuple(base.shape[:2])}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    ids = [int(i) for i in segment_ids]
    colors = list(colors) if colors is not None else distinct_colors(len(ids))
    if len(colors) != len(ids) or (captions is not None and len(captions) != len(ids)):
        raise ValueError("segment_ids, colors and captions must have the same length")

    out = base.astype(np.float32)
    for seg_id, color in zip(ids, colors, strict=True):
        inside = segmentation == seg_id
        out[inside] = (1.0 - alpha) * out[inside] + alpha * np.asarray(color, dtype=np.float32)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if contours:
        out[segment_boundaries(segmentation)] = 255
    result = PIL.Image.fromarray(out)
    if draw_labels and captions is not None:
        draw = PIL.ImageDraw.Draw(result)
        font = default_font(font_size or _auto_font_size(*base.shape[:2]))
        for seg_id, caption in zip(ids, captions, strict=True):
            mask = segmentation == seg_id
            if not caption or not mask.any():
                continue
            x, y = label_anchor(mask)
            # centre the text on the anchor (bitmap fonts support only the default top-left anchor)
            left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
            origin = (x - (left + right) // 2, y - (top + bottom) // 2)
            draw.rectangle(
                (origin[0] + left - 2, origin[1] + top - 1, origin[0] + right + 2, origin[1] + bottom + 1),
                fill=(0, 0, 0),
            )
            draw.text(origin, caption, fill=(255, 255, 255), font=font)
    return result
