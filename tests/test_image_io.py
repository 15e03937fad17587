"""Image loading and validation (processing_image_io.py) through the processor, plus the entry-point checks
of post-processing (target_sizes) and of the config: right answers or one-line errors naming the problem."""

from __future__ import annotations

import io
import warnings

import numpy as np
import PIL.Image
import pytest
import torch

from m2f_hf import M2fHfImageProcessor, Mask2FormerConfig
from m2f_hf.image_processing_m2f import resized_shape
from m2f_hf.modeling_m2f import Mask2FormerForUniversalSegmentationOutput
from m2f_hf.processing_image_io import infer_channel_layout, to_rgb_uint8

SIZE = {"shortest_edge": 32, "longest_edge": 64}


@pytest.fixture(scope="module")
def processor():
    return M2fHfImageProcessor(size=SIZE)


def _gradient16(h: int = 24, w: int = 40) -> np.ndarray:
    return np.linspace(0, 65535, h * w).reshape(h, w).astype(np.uint16)


def _pixels(processor, image, **kwargs) -> torch.Tensor:
    return processor(images=image, return_tensors="pt", **kwargs)["pixel_values"]


def test_16bit_png_path_is_scaled_not_saturated(processor, tmp_path):
    data = _gradient16()
    path = tmp_path / "g16.png"
    PIL.Image.fromarray(data).save(path)
    assert PIL.Image.open(path).mode in ("I;16", "I")
    eight_bit = np.rint(data / 257.0).astype(np.uint8)
    expected = _pixels(processor, eight_bit)
    for given in (str(path), path, PIL.Image.open(path)):
        assert torch.equal(_pixels(processor, given), expected)
    # a saturating loader would turn every value >= 1/65535 white: the image would be nearly constant
    assert expected.std() > 0.5


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "1", "YCbCr", "I", "F", "I;16"])
def test_pil_modes(processor, mode):
    rng = np.random.default_rng(0)
    rgb = PIL.Image.fromarray(rng.integers(0, 256, (10, 14, 3), dtype=np.uint8))
    if mode == "I;16":
        image = PIL.Image.fromarray(_gradient16(10, 14))
        expected = np.repeat(np.rint(_gradient16(10, 14) / 257.0).astype(np.uint8)[..., None], 3, axis=2)
    elif mode == "I":
        image = PIL.Image.fromarray(_gradient16(10, 14).astype(np.int32))
        expected = np.repeat(np.rint(_gradient16(10, 14) / 257.0).astype(np.uint8)[..., None], 3, axis=2)
    elif mode == "F":
        values = rng.random((10, 14)).astype(np.float32)
        image = PIL.Image.fromarray(values)
        expected = np.repeat(np.rint(values.astype(np.float64) * 255).astype(np.uint8)[..., None], 3, axis=2)
    else:
        image = rgb.convert(mode)
        expected = np.asarray(image.convert("RGB"))
    assert np.array_equal(to_rgb_uint8(image, 0), expected)
    assert tuple(processor(images=image, return_tensors="pt")["original_sizes"][0]) == (10, 14)


@pytest.mark.parametrize(
    "shape, layout",
    [
        ((1, 1, 3), "last"),
        ((4, 451, 3), "last"),
        ((3, 5, 3), "last"),
        ((3, 7, 4), "first"),
        ((2, 9, 1), "last"),
    ],
)
def test_ambiguous_arrays_are_read_channels_last_with_a_warning(processor, shape, layout):
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, shape, dtype=np.uint8)
    with pytest.warns(UserWarning, match="input_data_format"):
        sizes = processor(images=array, return_tensors="pt")["original_sizes"][0].tolist()
    assert sizes == (list(shape[:2]) if layout == "last" else list(shape[1:]))
    explicit = "channels_last" if layout == "last" else "channels_first"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = _pixels(processor, array, input_data_format=explicit)
        other = "channels_first" if layout == "last" else "channels_last"
        flipped = processor(images=array, return_tensors="pt", input_data_format=other)["original_sizes"]
    with pytest.warns(UserWarning):
        assert torch.equal(_pixels(processor, array), same)
    assert flipped[0].tolist() == (list(shape[1:]) if layout == "last" else list(shape[:2]))


def test_unambiguous_layouts_do_not_warn(processor):
    rng = np.random.default_rng(2)
    hwc = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = processor(images=hwc, return_tensors="pt")
        b = processor(images=np.moveaxis(hwc, -1, 0), return_tensors="pt")  # CHW
        c = processor(images=torch.from_numpy(np.moveaxis(hwc, -1, 0).copy()), return_tensors="pt")
    assert a["original_sizes"][0].tolist() == [6, 9]
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(
        a["pixel_values"], c["pixel_values"]
    )


def test_tensors_guess_channels_first():
    with pytest.warns(UserWarning, match="channels-first"):
        assert infer_channel_layout((1, 5, 1), is_tensor=True) == "first"
    with pytest.warns(UserWarning, match="channels-last"):
        assert infer_channel_layout((1, 5, 1), is_tensor=False) == "last"
    with pytest.raises(ValueError, match="input_data_format"):
        infer_channel_layout((3, 5, 3), input_data_format="sideways")


def test_extreme_aspect_ratio_keeps_one_pixel(processor):
    assert resized_shape(1000, 2, 32, 64) == (64, 1)
    assert resized_shape(2, 1000, 32, 64) == (1, 64)
    encoded = processor(images=np.zeros((1000, 2, 3), np.uint8), return_tensors="pt")
    assert encoded["image_sizes"][0].tolist() == [64, 1]
    assert encoded["pixel_mask"][0].sum() == 64


def _truncated_png(path):
    buffer = io.BytesIO()
    rng = np.random.default_rng(3)
    PIL.Image.fromarray(rng.integers(0, 256, (120, 120, 3), dtype=np.uint8)).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def test_truncated_png_names_the_file(processor, tmp_path):
    path = _truncated_png(tmp_path / "broken.png")
    for given in (PIL.Image.open(path), str(path)):  # lazily opened, and by path
        with pytest.raises(ValueError, match="broken.png") as info:
            processor(images=given, return_tensors="pt")
        assert "\n" not in str(info.value) and "truncated" in str(info.value)


def test_not_an_image_and_missing_file(processor, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="notes.png"):
        processor(images=str(text), return_tensors="pt")
    with pytest.raises(ValueError, match="missing.png"):
        processor(images=tmp_path / "missing.png", return_tensors="pt")


def test_decompression_bomb_is_one_line(processor, tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    PIL.Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match="big.png.*MAX_IMAGE_PIXELS") as info:
        processor(images=str(path), return_tensors="pt")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "bad", [np.zeros((0, 5, 3), np.uint8), np.zeros((5, 5, 7), np.uint8), np.full((4, 4), np.nan), "x" * 3]
)
def test_bad_arrays_raise_value_errors(processor, bad):
    with pytest.raises(ValueError):
        processor(images=bad, return_tensors="pt")


def _outputs(batch=1, queries=4, classes=3, h=8, w=8):
    torch.manual_seed(0)
    return Mask2FormerForUniversalSegmentationOutput(
        class_queries_logits=torch.randn(batch, queries, classes + 1),
        masks_queries_logits=torch.randn(batch, queries, h, w),
    )


@pytest.mark.parametrize("target", [(-3, 5), (0, 5), (5, 0), (4, 5, 6), (2.5, 4), ("a", 3)])
def test_bad_target_sizes_are_clear_value_errors(processor, target):
    outputs = _outputs()
    calls = [
        lambda: processor.post_process_semantic_segmentation(outputs, target_sizes=[target]),
        lambda: processor.post_process_instance_segmentation(outputs, target_sizes=[target]),
        lambda: processor.post_process_panoptic_segmentation(outputs, target_sizes=[target]),  # nothing kept
        lambda: processor.post_process_panoptic_segmentation(outputs, threshold=0.0, target_sizes=[target]),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"target_sizes\[0\]"):
            call()


def test_good_target_sizes_give_those_sizes(processor):
    outputs = _outputs(batch=2)
    sizes = torch.tensor([[5, 9], [31, 2]])
    for result, size in zip(
        processor.post_process_semantic_segmentation(outputs, target_sizes=sizes), sizes.tolist(), strict=True
    ):
        assert list(result.shape) == size


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_queries", "sixteen", "num_queries must be an integer"),
        ("num_queries", 0, "num_queries must be positive"),
        ("num_queries", 2.5, "num_queries must be an integer"),
        ("hidden_dim", True, "hidden_dim must be an integer"),
        ("dropout", "none", "dropout must be a number"),
        ("dropout", 3.0, "dropout must lie in"),
        ("pre_norm", "yes", "pre_norm must be true or false"),
        ("thing_ids", [0, "car"], "thing_ids must be a list of integers"),
    ],
)
def test_config_fields_are_validated_at_construction(field, value, message):
    with pytest.raises(ValueError, match=message):
        Mask2FormerConfig(**{field: value})
    data = Mask2FormerConfig().to_dict()
    data[field] = value
    with pytest.raises(ValueError, match=field):  # as a config.json would give it
        Mask2FormerConfig.from_dict(data)


def test_semantic_map_when_no_object_takes_all_the_class_mass(processor):
    """Found by the fuzz: with every query's probability on "no object" no class is a candidate for the
    block-wise semantic argmax; the labels must still be the full rule's."""
    from m2f_hf import processing_postprocess as pp

    generator = torch.Generator().manual_seed(0)
    class_logits = torch.randn(1, 3, 5, generator=generator)
    class_logits[..., -1] = 40.0  # all mass on "no object"
    mask_logits = torch.randn(1, 3, 2, 9, generator=generator) * 10
    outputs = Mask2FormerForUniversalSegmentationOutput(
        class_queries_logits=class_logits, masks_queries_logits=mask_logits
    )
    for target in [(8, 36), (13, 50)]:
        labels = processor.post_process_semantic_segmentation(outputs, target_sizes=[target])[0]
        masks = pp.masks_at_target(mask_logits[0], (8, 36), target)
        assert torch.equal(labels, pp.semantic_argmax(class_logits[0], masks))
