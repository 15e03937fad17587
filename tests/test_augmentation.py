"""Training-time augmentation (m2f_hf.training_augmentation): geometry, padding, determinism, the original."""

from __future__ import annotations

import numpy as np
import oracle
import pytest
import torch
from oracle import FIXTURES
from oracle import NAMES as FIXTURE_NAMES
from PIL import Image
from scipy import ndimage

from m2f_hf.training_augmentation import (
    AugmentationPipeline,
    ColorAugSSD,
    ColorAugSSDTransform,
    CropTransform,
    FixedSizeCrop,
    FlipTransform,
    PadToSize,
    PadTransform,
    Random,
    RandomCropCategoryAreaConstraint,
    ResizeScale,
    ResizeShortestEdge,
    ResizeTransform,
    hsv_to_rgb_uint8,
    large_scale_jitter,
    rgb_to_hsv_uint8,
    semantic_segmentation_augmentation,
)


def _scene(height: int = 90, width: int = 140):
    """A dark image with one bright ellipse, and every label form of that ellipse."""
    ys, xs = np.mgrid[0:height, 0:width]
    shape = ((ys - 0.45 * height) / (0.25 * height)) ** 2 + ((xs - 0.6 * width) / (0.2 * width)) ** 2 <= 1
    image = np.full((height, width, 3), 20, np.uint8)
    image[shape] = (230, 200, 60)
    semantic = np.where(shape, 3, 1).astype(np.uint8)
    instance = np.where(shape, 2, 0).astype(np.int32)
    panoptic = np.where(shape, 70000, 12).astype(np.int64)
    return image, shape, semantic, instance, panoptic


def _scene_labels(height: int = 90, width: int = 140) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """`_scene`'s image and every label form of it, as the augmentation pipeline's keyword arguments."""
    image, shape, semantic, instance, panoptic = _scene(height, width)
    return image, dict(semantic_map=semantic, instance_map=instance, panoptic_map=panoptic, masks=shape[None])


def _check_alignment(out: dict, pad_region: np.ndarray) -> None:
    """Away from edges (bilinear blur), the bright pixels are exactly the shape pixels of every label."""
    shape = out["masks"][0]
    assert np.array_equal(out["instance_map"] == 2, shape)
    assert np.array_equal(out["panoptic_map"] == 70000, shape)
    inside = ndimage.binary_erosion(shape, iterations=2)
    outside = ndimage.binary_erosion(~shape & ~pad_region, iterations=2)
    # semantic maps follow the original's torch nearest, the others Pillow's: they agree off the boundary
    disagree = (out["semantic_map"] == 3) != shape
    assert not (disagree & (inside | outside)).any()
    assert (out["semantic_map"][inside] == 3).all() and (out["semantic_map"][outside] == 1).all()
    bright = out["image"][..., 0].astype(int)
    if inside.any():
        assert bright[inside].min() > 200
    if outside.any():
        assert bright[outside].max() < 50


# --------------------------------------------------------------------------------------------- resizing
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_resize_shortest_edge_matches_oracle_preprocessing(name):
    """The original's ResizeShortestEdge + Pillow bilinear on the fixture inputs, bit for bit."""
    meta = oracle.meta(name)
    inputs = np.load(FIXTURES / name / "inputs.npz")
    pipeline = AugmentationPipeline(
        [ResizeShortestEdge([meta["min_size_test"]], meta["max_size_test"], "choice")]
    )
    for j, resized_hw in enumerate(meta["resized_sizes_hw"]):
        image = np.asarray(Image.open(FIXTURES / name / f"input_image{j}.png").convert("RGB"))
        assert list(image.shape[:2]) == meta["orig_sizes_hw"][j]
        out = pipeline(image, rng=0)
        assert list(out["image"].shape[:2]) == resized_hw
        diff = np.abs(out["image"].astype(int) - inputs[f"resized_image{j}"].astype(int)).max()
        assert diff == 0, f"max abs diff {diff}"


@pytest.mark.parametrize(
    ("in_hw", "out_hw"), [((37, 53), (80, 111)), ((80, 111), (37, 53)), ((64, 64), (21, 90))]
)
def test_label_resize_follows_original_libraries(in_hw, out_hw):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 255, (*in_hw, 3), dtype=np.uint8)
    transform = ResizeTransform(*in_hw, *out_hw)
    # uint8 maps (panoptic PNG, masks) go through Pillow nearest in the original
    expected = np.asarray(Image.fromarray(labels).resize(out_hw[::-1], Image.NEAREST))
    assert np.array_equal(transform.apply_segmentation(labels, nearest="pil"), expected)
    # float64 semantic maps go through torch's legacy nearest in the original
    sem = labels[..., 0].astype(np.float64)
    expected = torch.nn.functional.interpolate(torch.from_numpy(sem)[None, None], size=out_hw, mode="nearest")
    assert np.array_equal(
        transform.apply_segmentation(labels[..., 0], nearest="torch"), expected[0, 0].numpy()
    )
    # images: Pillow bilinear
    expected = np.asarray(Image.fromarray(labels).resize(out_hw[::-1], Image.BILINEAR))
    assert np.array_equal(transform.apply_image(labels), expected)
    with pytest.raises(ValueError, match="nearest backend"):
        transform.apply_segmentation(labels, nearest="cubic")
    with pytest.raises(ValueError, match="uint8"):
        transform.apply_image(labels.astype(np.float32))


def test_resize_shortest_edge_sizes():
    assert ResizeShortestEdge.output_size(150, 225, 60, 100) == (60, 90)
    assert ResizeShortestEdge.output_size(120, 178, 60, 100) == (60, 89)
    assert ResizeShortestEdge.output_size(100, 400, 60, 100) == (25, 100)  # capped by max size
    assert ResizeShortestEdge.output_size(512, 683, 256, 2048) == (256, 342)


# ---------------------------------------------------------------------------------------- large-scale jitter
def test_lsj_draws_like_the_original():
    """Flip, scale and crop offset come from three uniforms in detectron2's order (flip, resize, crop)."""
    image = np.zeros((300, 200, 3), np.uint8)
    for seed in range(6):
        out = large_scale_jitter(image_size=256)(image, rng=np.random.RandomState(seed))
        draws = np.random.RandomState(seed)
        flip = draws.uniform(0.0, 1.0) < 0.5
        scale = draws.uniform(0.1, 2.0)
        factor = min(256 * scale / 300, 256 * scale / 200)
        new_h, new_w = int(np.round(300 * factor)), int(np.round(200 * factor))
        u = draws.uniform(0.0, 1.0)
        expected = ([FlipTransform(True)] if flip else []) + [
            ResizeTransform(300, 200, new_h, new_w),
            CropTransform(
                int(np.round(max(new_w - 256, 0) * u)), int(np.round(max(new_h - 256, 0) * u)), 256, 256
            ),
            PadTransform(max(256 - new_h, 0), max(256 - new_w, 0), 128),
        ]
        assert out["transforms"] == expected
        assert out["image"].shape == (256, 256, 3)


@pytest.mark.parametrize("seed", range(8))
def test_lsj_geometry_consistent(seed):
    image, labels = _scene_labels()
    out = large_scale_jitter(image_size=96, min_scale=0.5, max_scale=2.0)(image, **labels, rng=seed)
    assert out["image"].shape == (96, 96, 3)
    for key in ("semantic_map", "instance_map", "panoptic_map"):
        assert out[key].shape == (96, 96)
    assert out["masks"].shape == (1, 96, 96) and out["masks"].dtype == np.bool_
    assert out["semantic_map"].dtype == np.uint8 and out["panoptic_map"].dtype == np.int64
    pad = out["transforms"][-1]
    pad_region = np.zeros((96, 96), bool)
    pad_region[96 - pad.pad_bottom :] = True
    pad_region[:, 96 - pad.pad_right :] = True
    _check_alignment(out, pad_region)
    assert ndimage.binary_erosion(out["masks"][0], iterations=2).any()


def test_lsj_padding_values():
    image, labels = _scene_labels(60, 80)
    out = large_scale_jitter(image_size=128, min_scale=0.5, max_scale=0.5, random_flip="none")(
        image, **labels, rng=0
    )
    # 60x80 into a 64x64 box: 48x64, then padded to 128x128
    assert out["transforms"][0] == ResizeTransform(60, 80, 48, 64)
    assert (out["image"][48:] == 128).all() and (out["image"][:, 64:] == 128).all()
    assert (out["semantic_map"][48:] == 255).all() and (out["semantic_map"][:, 64:] == 255).all()
    assert (out["instance_map"][48:] == 0).all() and (out["panoptic_map"][:, 64:] == 0).all()
    assert not out["masks"][:, 48:].any() and not out["masks"][:, :, 64:].any()
    assert set(np.unique(out["semantic_map"][:48, :64])) == {1, 3}
    # the panoptic PNG form pads with colour 0 (VOID) too
    panoptic = labels["panoptic_map"]
    png = np.stack([panoptic % 256, panoptic // 256 % 256, panoptic // 65536], -1).astype(np.uint8)
    out_png = large_scale_jitter(image_size=128, min_scale=0.5, max_scale=0.5, random_flip="none")(
        image, panoptic_map=png, rng=0
    )["panoptic_map"]
    assert out_png.shape == (128, 128, 3) and (out_png[48:] == 0).all()


def test_determinism_and_generators():
    image, shape, semantic, instance, panoptic = _scene()
    lsj = large_scale_jitter(image_size=64)
    a = lsj(image, semantic_map=semantic, rng=np.random.default_rng(7))
    b = lsj(image, semantic_map=semantic, rng=np.random.default_rng(7))
    assert a["transforms"] == b["transforms"]
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["semantic_map"], b["semantic_map"])
    assert lsj(image, rng=3)["transforms"] == lsj(image, rng=3)["transforms"]
    t1 = lsj(image, rng=torch.Generator().manual_seed(5))
    t2 = lsj(image, rng=torch.Generator().manual_seed(5))
    assert t1["transforms"] == t2["transforms"] and np.array_equal(t1["image"], t2["image"])
    draws = {tuple(lsj(image, rng=s)["transforms"]) for s in range(10)}
    assert len(draws) == 10  # different seeds, different jitter
    with pytest.raises(TypeError, match="rng"):
        lsj(image, rng="seed")


# ------------------------------------------------------------------------------------------ semantic recipe
def _small_semantic_recipe(**kwargs):
    options = dict(min_size_train=(64, 80, 96), max_size_train=200, crop_size=(48, 48), size_divisibility=48)
    options.update(kwargs)
    return semantic_segmentation_augmentation(**options)


def test_semantic_recipe_geometry_and_padding():
    image, labels = _scene_labels(40, 120)  # short side 40 -> 64..96, crop 48
    pipeline = _small_semantic_recipe(color_aug_ssd=False)
    with_shape = 0
    for seed in range(12):
        out = pipeline(image, **labels, rng=seed)
        assert out["image"].shape == (48, 48, 3) and out["semantic_map"].shape == (48, 48)
        pad = out["transforms"][-1]
        assert isinstance(pad, PadTransform)
        pad_region = np.zeros((48, 48), bool)
        pad_region[48 - pad.pad_bottom :] = True
        pad_region[:, 48 - pad.pad_right :] = True
        assert (out["image"][pad_region] == 128).all() and (out["semantic_map"][pad_region] == 255).all()
        assert (out["instance_map"][pad_region] == 0).all() and not out["masks"][:, pad_region].any()
        _check_alignment(out, pad_region)
        with_shape += bool(ndimage.binary_erosion(out["masks"][0], iterations=2).any())
    assert with_shape >= 4  # the random crops keep the shape often enough for the check to bite


def test_semantic_recipe_short_image_is_padded():
    image, _, semantic, _, _ = _scene(40, 120)
    out = _small_semantic_recipe(min_size_train=(30,), color_aug_ssd=False, random_flip=False)(
        image, semantic_map=semantic, rng=0
    )
    # 40x120 -> 30x90, crop 30x48, padded to 48x48 with ignore
    assert out["transforms"][0] == ResizeTransform(40, 120, 30, 90)
    assert out["transforms"][-1] == PadTransform(18, 0, 128)
    assert (out["semantic_map"][30:] == 255).all() and (out["image"][30:] == 128).all()
    with pytest.raises(ValueError, match="larger than the pad size"):
        _small_semantic_recipe(crop_enabled=False)(image, semantic_map=semantic, rng=0)


def test_semantic_recipe_replays_recorded_transforms():
    """The recorded transforms reproduce the output; the colour jitter touches pixels, never labels."""
    image, shape, semantic, instance, panoptic = _scene(40, 120)
    rng = np.random.default_rng(0)
    image = np.clip(image.astype(int) + rng.integers(-15, 16, image.shape), 0, 255).astype(np.uint8)
    for seed in range(20):
        out = _small_semantic_recipe()(image, semantic_map=semantic, rng=seed)
        (colour,) = [t for t in out["transforms"] if isinstance(t, ColorAugSSDTransform)]
        img, sem, img_geometry_only = image, semantic, image
        for t in out["transforms"]:
            img = t.apply_image(img)
            sem = t.apply_segmentation(sem, 255, "torch")
            if not isinstance(t, ColorAugSSDTransform):
                img_geometry_only = t.apply_image(img_geometry_only)
        assert np.array_equal(out["image"], img) and np.array_equal(out["semantic_map"], sem)
        assert np.array_equal(colour.apply_segmentation(sem), sem)
        changes = (colour.brightness_beta, colour.contrast_alpha, colour.saturation_alpha, colour.hue_shift)
        if any(c is not None for c in changes):
            assert not np.array_equal(out["image"], img_geometry_only)


def test_category_area_constraint():
    # left 80% class 1, right 20% class 2: only windows that straddle the border are accepted
    semantic = np.ones((40, 200), np.uint8)
    semantic[:, 160:] = 2
    image = np.zeros((40, 200, 3), np.uint8)
    constraint = RandomCropCategoryAreaConstraint("absolute", (40, 60), 0.75, 255)
    accepted = 0
    for seed in range(20):
        (crop,) = constraint.get_transforms(image, semantic, _random(seed))
        window = semantic[crop.y0 : crop.y0 + crop.h, crop.x0 : crop.x0 + crop.w]
        counts = np.bincount(window.reshape(-1))
        accepted += counts.max() < 0.75 * counts.sum()
    # a random window is valid with probability ~15/141; ten tries make success very likely
    assert accepted >= 12
    with pytest.raises(ValueError, match="semantic_map"):
        constraint.get_transforms(image, None, _random(0))
    # max area 1.0 is a plain random crop (two integer draws as detectron2's RandomCrop)
    (crop,) = RandomCropCategoryAreaConstraint("absolute", (30, 50)).get_transforms(
        image, semantic, _random(np.random.RandomState(4))
    )
    draws = np.random.RandomState(4)
    assert (crop.y0, crop.x0) == (draws.randint(11), draws.randint(151))


def _random(rng):
    return Random(rng)


# --------------------------------------------------------------------------------------------- colour jitter
def test_hsv_roundtrip_is_exact_for_opencv_representable_colours():
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    hsv = rgb_to_hsv_uint8(rgb)
    assert hsv[..., 0].max() < 180
    back = hsv_to_rgb_uint8(hsv)
    # 8-bit HSV quantises hue; the roundtrip stays within a few levels
    assert np.abs(back.astype(int) - rgb.astype(int)).max() <= 6
    grey = np.full((2, 2, 3), 77, np.uint8)
    assert np.array_equal(hsv_to_rgb_uint8(rgb_to_hsv_uint8(grey)), grey)


def _reference_ssd(image, t, cv2):
    """The original ColorAugSSDTransform steps (BGR + OpenCV), with the random choices of `t`."""

    def convert(img, alpha=1, beta=0):
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    img = image[:, :, [2, 1, 0]]
    if t.brightness_beta is not None:
        img = convert(img, beta=t.brightness_beta)

    def contrast(img):
        return img if t.contrast_alpha is None else convert(img, alpha=t.contrast_alpha)

    def saturation(img):
        if t.saturation_alpha is None:
            return img
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[:, :, 1] = convert(hsv[:, :, 1], alpha=t.saturation_alpha)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)

    def hue(img):
        if t.hue_shift is None:
            return img
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + t.hue_shift) % 180
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)

    steps = [contrast, saturation, hue] if t.contrast_first else [saturation, hue, contrast]
    for step in steps:
        img = step(img)
    return img[:, :, [2, 1, 0]]


def test_colour_jitter_matches_opencv_reference():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    # 16 columns: OpenCV converts such narrow rows pixel by pixel (its wide-row vector path truncates)
    image = rng.integers(0, 256, (512, 16, 3), dtype=np.uint8)
    assert np.array_equal(rgb_to_hsv_uint8(image), cv2.cvtColor(image, cv2.COLOR_RGB2HSV))
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    assert np.array_equal(hsv_to_rgb_uint8(hsv), cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))
    fixed = [
        ColorAugSSDTransform(12.7, True, 1.31, 0.62, -11),
        ColorAugSSDTransform(None, False, 0.55, 1.45, 17),
        ColorAugSSDTransform(-30.2, False, None, None, 3),
    ]
    sampled = [ColorAugSSD().get_transforms(image, None, _random(seed))[0] for seed in range(12)]
    for t in fixed + sampled:
        ours = t.apply_image(image)
        ref = _reference_ssd(image, t, cv2)
        assert np.abs(ours.astype(int) - ref.astype(int)).max() == 0, t
    assert not np.array_equal(fixed[0].apply_image(image), image)
    with pytest.raises(ValueError, match="RGB uint8"):
        fixed[0].apply_image(image[..., 0])


def test_colour_jitter_parameter_ranges():
    image = np.zeros((4, 4, 3), np.uint8)
    seen_orders = set()
    for seed in range(200):
        (t,) = ColorAugSSD().get_transforms(image, None, _random(seed))
        seen_orders.add(t.contrast_first)
        assert t.brightness_beta is None or -32 <= t.brightness_beta <= 32
        assert t.contrast_alpha is None or 0.5 <= t.contrast_alpha <= 1.5
        assert t.saturation_alpha is None or 0.5 <= t.saturation_alpha <= 1.5
        assert t.hue_shift is None or -18 <= t.hue_shift <= 18
    assert seen_orders == {True, False}


# --------------------------------------------------------------------------------------------- validation
def test_invalid_inputs():
    image, shape, semantic, instance, panoptic = _scene(30, 40)
    lsj = large_scale_jitter(image_size=32)
    with pytest.raises(ValueError, match="uint8"):
        lsj(image.astype(np.float32))
    with pytest.raises(ValueError, match="semantic_map has size"):
        lsj(image, semantic_map=semantic[:, :-1])
    with pytest.raises(ValueError, match="integer labels"):
        lsj(image, semantic_map=semantic.astype(np.float64))
    with pytest.raises(ValueError, match="masks must be bool"):
        lsj(image, masks=shape[None].astype(np.uint8))
    with pytest.raises(ValueError, match="random_flip"):
        large_scale_jitter(random_flip="diagonal")
    with pytest.raises(ValueError, match="min_scale"):
        ResizeScale(2.0, 1.0, 64, 64)
    with pytest.raises(ValueError, match="larger than the pad size"):
        PadToSize(16).get_transforms(image, None, _random(0))
    assert FixedSizeCrop((8, 8)).get_transforms(image, None, _random(0))[-1] == PadTransform(0, 0, 128)
