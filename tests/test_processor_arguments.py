"""Every argument transformers' Mask2Former image processor takes is honoured or refused with a message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.models.mask2former.image_processing_mask2former import Mask2FormerImageProcessorKwargs

from m2f_hf import M2fHfImageProcessor

IMAGE = np.random.default_rng(0).integers(0, 256, (50, 77, 3), dtype=np.uint8)  # → 800x1232, not /32


def _shape(processor=None, image=IMAGE, **kwargs):
    processor = processor or M2fHfImageProcessor()
    return tuple(processor(image, return_tensors="pt", **kwargs)["pixel_values"].shape[-2:])


def test_size_divisor_is_honoured_at_call_and_init():
    assert _shape() == (800, 1248)  # default: padded to a multiple of 32
    assert _shape(size_divisor=0) == (800, 1232)
    assert _shape(size_divisor=64) == (832, 1280)
    assert _shape(M2fHfImageProcessor(size_divisor=0)) == (800, 1232)
    with pytest.raises(ValueError, match="size_divisor"):
        _shape(size_divisor=-1)


def test_max_size_caps_the_longest_edge():
    assert _shape(M2fHfImageProcessor(max_size=64)) == (64, 64)  # 42x64 padded to 64
    assert _shape(M2fHfImageProcessor(max_size=64, size_divisor=0)) == (42, 64)
    assert _shape(max_size=100, size_divisor=0) == (65, 100)
    assert M2fHfImageProcessor(max_size=64).size.longest_edge == 64


def test_reduce_labels_is_do_reduce_labels():
    label_map = np.zeros((50, 77), dtype=np.uint8)
    label_map[:, 40:] = 3
    with pytest.warns(FutureWarning, match="reduce_labels"):
        at_init = M2fHfImageProcessor(reduce_labels=True)
    assert at_init.do_reduce_labels is True
    assert at_init(IMAGE, segmentation_maps=label_map)["class_labels"][0].tolist() == [2]  # 0 ignored, 3 → 2
    with pytest.warns(FutureWarning, match="reduce_labels"):
        at_call = M2fHfImageProcessor()(IMAGE, segmentation_maps=label_map, reduce_labels=True)
    assert at_call["class_labels"][0].tolist() == [2]
    assert M2fHfImageProcessor()(IMAGE, segmentation_maps=label_map)["class_labels"][0].tolist() == [0, 3]


def test_num_labels_and_ignore_index_are_checked():
    label_map = np.full((50, 77), 4, dtype=np.uint8)
    processor = M2fHfImageProcessor()
    assert processor(IMAGE, segmentation_maps=label_map, num_labels=5)["class_labels"][0].tolist() == [4]
    with pytest.raises(ValueError, match="num_labels"):
        processor(IMAGE, segmentation_maps=label_map, num_labels=4)
    with pytest.raises(ValueError, match="ignore_index"):
        processor(IMAGE, segmentation_maps=label_map, do_reduce_labels=True, ignore_index=None)
    label_map[:10] = 7
    out = processor(IMAGE, segmentation_maps=label_map, ignore_index=7, return_tensors="pt")
    assert out["class_labels"][0].tolist() == [4]


def test_do_convert_rgb_false_refuses_non_rgb_with_a_message():
    rgba = np.concatenate([IMAGE, np.full((50, 77, 1), 255, np.uint8)], axis=2)
    processor = M2fHfImageProcessor()
    with pytest.raises(ValueError, match="do_convert_rgb=False but image 0 has 4 channels"):
        processor(rgba, do_convert_rgb=False, image_mean=[1.0, 2.0, 3.0, 4.0], image_std=[1.0] * 4)
    with pytest.raises(ValueError, match="do_convert_rgb=False but image 0 has 1 channels"):
        processor(IMAGE[..., 0], do_convert_rgb=False)
    same = processor(IMAGE, do_convert_rgb=False, return_tensors="pt")["pixel_values"]
    assert torch.equal(same, processor(IMAGE, return_tensors="pt")["pixel_values"])
    # with the conversion (default) the alpha channel is dropped, as the original does
    assert torch.equal(processor(rgba, return_tensors="pt")["pixel_values"], same)


def test_do_pad_center_crop_and_device():
    assert _shape(do_pad=False) == (800, 1232)
    with pytest.raises(ValueError, match="do_pad=False"):
        M2fHfImageProcessor()([IMAGE, IMAGE[:40]], do_pad=False)
    with pytest.raises(ValueError, match="do_center_crop"):
        _shape(do_center_crop=True, crop_size={"height": 10, "width": 10})
    out = M2fHfImageProcessor()(IMAGE, return_tensors="pt", device="cpu")
    assert out["pixel_values"].device.type == "cpu"
    with pytest.raises(ValueError, match="return_tensors"):
        M2fHfImageProcessor()(IMAGE, device="cpu")


def test_unknown_arguments_are_refused_as_transformers_does():
    with pytest.raises(TypeError, match="bogus"):
        M2fHfImageProcessor()(IMAGE, bogus=1)


def test_every_transformers_argument_is_known():
    """Each argument of transformers' processor kwargs is accepted by ours (honoured or refused by value)."""
    ours = set(M2fHfImageProcessor.valid_kwargs.__annotations__)
    missing = set(Mask2FormerImageProcessorKwargs.__annotations__) - ours
    assert not missing, missing
