"""Overlay rendering: colours, contours, label text, and input checks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from m2f_hf.ecosystem_visualization import distinct_colors, label_anchor, render_overlay, segment_boundaries


def _scene() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    segmentation = np.zeros((40, 60), dtype=np.int32)
    segmentation[5:20, 5:30] = 1
    segmentation[20:38, 10:55] = 2
    segmentation[0:10, 40:60] = 7
    return image, segmentation


def test_distinct_colors_are_distinct_and_deterministic():
    colors = distinct_colors(500)
    assert len(set(colors)) == 500 and colors == distinct_colors(500)
    assert all(0 <= c <= 255 for rgb in colors for c in rgb)
    assert distinct_colors(0) == []
    with pytest.raises(ValueError):
        distinct_colors(-1)


def test_opaque_overlay_paints_each_segment_in_its_colour():
    image, segmentation = _scene()
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    out = np.asarray(
        render_overlay(Image.fromarray(image), segmentation, [1, 2, 7], colors=colors, alpha=1.0)
    )
    assert out.shape == image.shape
    for seg_id, color in zip([1, 2, 7], colors, strict=True):
        assert (out[segmentation == seg_id] == color).all()
    assert (out[segmentation == 0] == image[segmentation == 0]).all()


def test_blend_contours_and_labels():
    image, segmentation = _scene()
    plain = np.asarray(render_overlay(image, segmentation, [1, 2], alpha=0.5, draw_labels=False))
    expected = np.rint(0.5 * image[segmentation == 1] + 0.5 * np.asarray(distinct_colors(2)[0]))
    assert np.abs(plain[segmentation == 1].astype(float) - expected).max() <= 1
    assert (plain[segmentation == 7] == image[segmentation == 7]).all()  # not listed: not drawn
    edges = segment_boundaries(segmentation)
    outlined = np.asarray(
        render_overlay(image, segmentation, [1, 2], alpha=0.5, contours=True, draw_labels=False)
    )
    assert (outlined[edges] == 255).all() and (outlined[~edges] == plain[~edges]).all()
    labelled = np.asarray(
        render_overlay(image, segmentation, [1, 2], captions=["cat 0.91", "grass"], alpha=0.5)
    )
    changed = (labelled != plain).any(axis=2)
    assert changed[segmentation == 2].sum() > 20  # text drawn inside segment 2
    x, y = label_anchor(segmentation == 2)
    assert segmentation[y, x] == 2


def test_boundaries_and_anchor():
    segmentation = np.zeros((6, 6), dtype=np.int32)
    segmentation[1:5, 1:5] = 3
    edges = segment_boundaries(segmentation)
    assert edges[1, 1:5].all() and not edges[2, 2] and not edges[0].any()
    mask = np.zeros((9, 9), dtype=bool)
    mask[:, :3] = True
    mask[6:, :] = True  # an L shape: its centroid lies outside, the anchor must not
    x, y = label_anchor(mask)
    assert mask[y, x]
    with pytest.raises(ValueError, match="empty"):
        label_anchor(np.zeros((3, 3), dtype=bool))


def test_bad_inputs():
    image, segmentation = _scene()
    with pytest.raises(ValueError, match="does not match"):
        render_overlay(image, segmentation[:-1], [1])
    with pytest.raises(ValueError, match="alpha"):
        render_overlay(image, segmentation, [1], alpha=1.5)
    with pytest.raises(ValueError, match="same length"):
        render_overlay(image, segmentation, [1, 2], colors=[(0, 0, 0)])
    with pytest.raises(ValueError, match="RGB uint8"):
        render_overlay(image.astype(np.float32), segmentation, [1])


def test_class_colors_follow_the_class_not_the_order():
    import colorsys

    from m2f_hf.ecosystem_visualization import class_colors, class_palette, class_shade

    labels = [4, 0, 0, 2, 0]
    colors = class_colors(labels, num_labels=7)
    palette = class_palette(7)
    # few classes: evenly spaced hues, all at least a seventh of the circle apart
    hues = sorted(colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] for rgb in palette)
    gaps = np.diff(hues + [hues[0] + 1])
    assert len(set(palette)) == 7 and gaps.min() > 1 / 7 - 0.01
    assert class_palette(30) == distinct_colors(30)
    assert colors[0] == palette[4] and colors[1] == palette[0] and colors[3] == palette[2]
    # further segments of a class: other shades of the same hue (one colour family), all different
    hues = [colorsys.rgb_to_hls(*(c / 255 for c in colors[i]))[0] for i in (1, 2, 4)]
    assert max(hues) - min(hues) < 0.02 and len({colors[1], colors[2], colors[4]}) == 3
    # a class keeps its colour whatever else is in the image (consistent across images and tasks)
    assert class_colors([2], num_labels=7) == [palette[2]]
    assert class_colors([0, 2], num_labels=7)[1] == colors[3]
    assert class_shade((10, 20, 30), 0) == (10, 20, 30)
    with pytest.raises(ValueError):
        class_colors([-1])


def test_legend_panel():
    from m2f_hf.ecosystem_visualization import add_legend

    image = Image.new("RGB", (64, 40), (0, 0, 0))
    entries = [("circle x2", (255, 0, 0)), ("sky", (0, 0, 255))]
    out = add_legend(image, entries, title="panoptic", font_size=12)
    assert out.height >= image.height
    assert out.width > image.width
    pixels = np.asarray(out)
    assert (pixels[:40, :64] == 0).all()  # the image is untouched
    panel = pixels[:, 64:]
    for _, color in entries:  # each swatch is drawn in its colour
        assert (panel == color).all(axis=2).sum() > 20
    assert (panel == 255).all(axis=2).any()  # text
