"""Preprocessing parity with the original (oracle fixtures), input modes, errors and serialisation."""

from __future__ import annotations

import json

import numpy as np
import oracle
import PIL.Image
import pytest
import torch
from oracle import FIXTURES, NAMES

from m2f_hf.image_processing_m2f import M2fHfImageProcessor, resized_shape


def fixture_processor(meta: dict, **kwargs) -> M2fHfImageProcessor:
    return M2fHfImageProcessor(
        size={"shortest_edge": meta["min_size_test"], "longest_edge": meta["max_size_test"]},
        image_mean=meta["pixel_mean"],
        image_std=meta["pixel_std"],
        size_divisibility=meta["size_divisibility"],
        **kwargs,
    )


def rgb_image(seed: int = 0, height: int = 50, width: int = 70) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", NAMES)
def test_preprocessing_matches_original(name):
    folder = FIXTURES / name
    meta = oracle.meta(name)
    ref = np.load(folder / "inputs.npz")
    processor = fixture_processor(meta)
    images = [PIL.Image.open(folder / f) for f in meta["input_files"]]
    out = processor(images, return_tensors="pt")

    assert out["pixel_values"].dtype == torch.float32 and out["pixel_mask"].dtype == torch.long
    diff = np.abs(out["pixel_values"].numpy() - ref["normalized_padded_batch"]).max()
    assert out["pixel_values"].shape == ref["normalized_padded_batch"].shape
    assert diff <= 1e-5, diff
    np.testing.assert_array_equal(out["image_sizes"].numpy(), ref["image_sizes"])
    np.testing.assert_array_equal(out["original_sizes"].numpy(), ref["orig_sizes"])
    assert list(out["pixel_values"].shape[-2:]) == meta["padded_batch_hw"]
    for j, (h, w) in enumerate(ref["image_sizes"]):
        expected_mask = np.zeros(out["pixel_mask"].shape[1:], dtype=np.int64)
        expected_mask[:h, :w] = 1
        np.testing.assert_array_equal(out["pixel_mask"][j].numpy(), expected_mask)
        assert (out["pixel_values"][j, :, h:, :] == 0).all() and (out["pixel_values"][j, :, :, w:] == 0).all()

    # without normalisation the pixels are the resized uint8 images of the original, bit for bit
    raw = processor(images, do_normalize=False, return_tensors="np")["pixel_values"]
    for j, (h, w) in enumerate(ref["image_sizes"]):
        np.testing.assert_array_equal(raw[j, :, :h, :w].transpose(1, 2, 0), ref[f"resized_image{j}"])


def test_resized_shape_rule():
    assert resized_shape(150, 225, 60, 100) == (60, 90)
    assert resized_shape(120, 178, 60, 100) == (60, 89)  # 88.99... rounds up with int(x + 0.5)
    assert resized_shape(100, 1000, 60, 100) == (10, 100)  # capped by the long side
    assert resized_shape(128, 128, 60, None) == (60, 60)


def process(image, **kwargs) -> np.ndarray:
    processor = M2fHfImageProcessor(size={"shortest_edge": 40, "longest_edge": 80}, **kwargs)
    return processor(image, return_tensors="np")["pixel_values"][0]


def test_input_types_and_layouts_agree():
    rgb = rgb_image()
    expected = process(PIL.Image.fromarray(rgb))
    np.testing.assert_array_equal(process(rgb), expected)  # numpy HWC
    np.testing.assert_array_equal(process(rgb.transpose(2, 0, 1).copy()), expected)  # numpy CHW
    np.testing.assert_array_equal(process(torch.from_numpy(rgb).permute(2, 0, 1)), expected)  # torch CHW
    np.testing.assert_array_equal(process(torch.from_numpy(rgb)), expected)  # torch HWC
    np.testing.assert_array_equal(process(rgb.astype(np.int64)), expected)  # integers in 0..255
    np.testing.assert_array_equal(process(rgb.astype(np.float32) / 255.0), expected)  # float [0, 1]
    np.testing.assert_array_equal(process(rgb.astype(np.uint16) * 257), expected)  # 16-bit
    np.testing.assert_array_equal(
        process(rgb[:, :, :1], input_data_format="channels_last"),
        process(np.repeat(rgb[:, :, :1], 3, axis=2)),
    )
    batch = M2fHfImageProcessor(size={"shortest_edge": 40, "longest_edge": 80})(
        np.stack([rgb, rgb[::-1]]), return_tensors="np"
    )["pixel_values"]
    np.testing.assert_array_equal(batch[0], expected)
    assert batch.shape[0] == 2


def test_pil_modes():
    rgb = rgb_image(1)
    gray = rgb[:, :, 0]
    replicated = process(np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(process(PIL.Image.fromarray(gray, mode="L")), replicated)
    np.testing.assert_array_equal(process(gray), replicated)  # 2-D array
    np.testing.assert_array_equal(process(gray[None]), replicated)  # (1, H, W)
    la = PIL.Image.fromarray(np.stack([gray, 255 - gray], axis=-1), mode="LA")
    np.testing.assert_array_equal(process(la), replicated)  # alpha dropped
    alpha = np.random.default_rng(2).integers(0, 256, size=gray.shape, dtype=np.uint8)
    rgba = np.concatenate([rgb, alpha[:, :, None]], axis=-1)
    np.testing.assert_array_equal(process(PIL.Image.fromarray(rgba, mode="RGBA")), process(rgb))
    np.testing.assert_array_equal(process(rgba), process(rgb))  # 4-channel array: alpha dropped
    palette = PIL.Image.fromarray(rgb).quantize(16)
    np.testing.assert_array_equal(process(palette), process(np.asarray(palette.convert("RGB"))))
    sixteen = PIL.Image.fromarray(gray.astype(np.uint16) * 257)
    assert sixteen.mode.startswith("I;16")
    np.testing.assert_array_equal(process(sixteen), replicated)
    deep = gray.astype(np.uint16) * 257 + 100  # not a multiple of 257: rounding of x / 257
    np.testing.assert_array_equal(
        process(deep), process(np.repeat(np.rint(deep / 257).astype(np.uint8)[:, :, None], 3, axis=2))
    )
    np.testing.assert_array_equal(
        process(PIL.Image.fromarray(gray.astype(np.int32) * 257, mode="I")), replicated
    )
    np.testing.assert_array_equal(
        process(PIL.Image.fromarray(gray.astype(np.float32) / 255, mode="F")), replicated
    )


@pytest.mark.parametrize(
    "image,message",
    [
        (np.zeros((20, 30, 5), dtype=np.uint8), "no channel axis"),
        (np.zeros((5, 20, 30, 6), dtype=np.uint8), "no channel axis"),
        (np.zeros((30,), dtype=np.uint8), "dimensions"),
        (np.zeros((0, 30, 3), dtype=np.uint8), "empty"),
        (np.full((20, 30, 3), 2.0, dtype=np.float32), r"\[0, 1\]"),
        (np.full((20, 30, 3), np.nan, dtype=np.float32), "NaN"),
        (np.zeros((20, 30, 3), dtype=bool), "boolean"),
        (np.full((20, 30, 3), 300, dtype=np.int32), "outside 0..255"),
        (PIL.Image.fromarray(np.full((20, 30), 70000, dtype=np.int32), mode="I"), "outside 0..65535"),
    ],
)
def test_bad_images_raise(image, message):
    with pytest.raises(ValueError, match=message):
        process(image)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="no images"):
        process([])
    with pytest.raises(TypeError, match="expected a PIL image"):
        process(3.5)
    with pytest.raises(ValueError, match="segmentation maps"):
        M2fHfImageProcessor()([rgb_image()], segmentation_maps=[np.zeros((50, 70)), np.zeros((50, 70))])


def test_padding_and_divisibility():
    processor = M2fHfImageProcessor(size={"shortest_edge": 40, "longest_edge": 80}, size_divisibility=32)
    out = processor([rgb_image(0, 50, 70), rgb_image(1, 70, 50)], return_tensors="pt")
    assert out["image_sizes"].tolist() == [[40, 56], [56, 40]]
    assert tuple(out["pixel_values"].shape) == (2, 3, 64, 64)
    out = processor([rgb_image(0, 50, 70)], size_divisibility=0, return_tensors="pt")
    assert tuple(out["pixel_values"].shape) == (1, 3, 40, 56)
    out = processor([rgb_image(0, 50, 70)], pad_size={"height": 100, "width": 60}, return_tensors="pt")
    assert tuple(out["pixel_values"].shape) == (1, 3, 100, 60) and int(out["pixel_mask"].sum()) == 40 * 56
    with pytest.raises(ValueError, match="pad_size"):
        processor([rgb_image(0, 50, 70)], pad_size={"height": 39, "width": 64})
    with pytest.raises(ValueError, match="channels-first"):
        processor([rgb_image(0, 50, 70)], data_format="channels_last")


def test_segmentation_maps_become_padded_targets():
    processor = M2fHfImageProcessor(size={"shortest_edge": 20, "longest_edge": 40})
    semantic = np.zeros((10, 15), dtype=np.uint8)
    semantic[:, 5:] = 3
    semantic[:2] = 255  # ignored
    out = processor([rgb_image(0, 10, 15)], segmentation_maps=[semantic], return_tensors="pt")
    assert out["pixel_values"].shape[-2:] == (32, 32)
    masks, classes = out["mask_labels"][0], out["class_labels"][0]
    assert classes.tolist() == [0, 3]
    assert tuple(masks.shape) == (2, 32, 32)
    assert not masks[:, 20:, :].any() and not masks[:, :, 30:].any()  # padding belongs to no mask
    resized = np.asarray(PIL.Image.fromarray(semantic).resize((30, 20), PIL.Image.NEAREST))
    np.testing.assert_array_equal(masks[1, :20, :30].numpy(), resized == 3)
    np.testing.assert_array_equal(masks[0, :20, :30].numpy(), resized == 0)

    instances = np.zeros((10, 15), dtype=np.int32)
    instances[2:6, 3:9] = 7
    instances[6:, 9:] = 9
    out = processor(
        [rgb_image(0, 10, 15)],
        segmentation_maps=[instances],
        instance_id_to_semantic_id={0: 4, 7: 1, 9: 2},
        return_tensors="pt",
    )
    assert out["class_labels"][0].tolist() == [4, 1, 2]
    assert out["mask_labels"][0].sum(dim=(1, 2)).sum() == 20 * 30
    with pytest.raises(ValueError, match="has size"):
        processor([rgb_image(0, 10, 15)], segmentation_maps=[np.zeros((9, 15), dtype=np.uint8)])


def test_save_and_load_roundtrip(tmp_path):
    processor = M2fHfImageProcessor(
        size={"shortest_edge": 60, "longest_edge": 100},
        thing_ids=[3, 1, 2],
        object_mask_threshold=0.7,
        overlap_threshold=0.6,
        test_topk_per_image=50,
        sem_seg_postprocess_before_inference=False,
        size_divisibility=16,
        ignore_index=0,
    )
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["thing_ids"] == [1, 2, 3] and saved["size"] == {"shortest_edge": 60, "longest_edge": 100}
    assert saved["image_mean"] == [123.675, 116.28, 103.53] and saved["do_rescale"] is False
    loaded = M2fHfImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    for key in (
        "thing_ids",
        "object_mask_threshold",
        "overlap_threshold",
        "test_topk_per_image",
        "sem_seg_postprocess_before_inference",
        "size_divisibility",
        "ignore_index",
    ):
        assert getattr(loaded, key) == getattr(processor, key)
    image = rgb_image()
    np.testing.assert_array_equal(
        loaded(image, return_tensors="np")["pixel_values"],
        processor(image, return_tensors="np")["pixel_values"],
    )


def test_auto_image_processor_resolves_to_this_class(tmp_path):
    from transformers import AutoImageProcessor

    import m2f_hf

    M2fHfImageProcessor(thing_ids=[0]).save_pretrained(tmp_path)
    m2f_hf.Mask2FormerConfig(num_labels=3).save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is M2fHfImageProcessor, type(loaded)


def test_works_inside_the_transformers_pipeline():
    from transformers import pipeline

    from m2f_hf import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

    config = Mask2FormerConfig(
        num_labels=5,
        backbone_config={"res2_out_channels": 32, "width_per_group": 8, "stem_out_channels": 16},
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        dim_feedforward=64,
        encoder_feedforward_dim=64,
        num_queries=10,
        decoder_layers=3,
        encoder_layers=1,
        thing_ids=[0, 1, 2],
    )
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    processor = M2fHfImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}, thing_ids=[0, 1, 2])
    image = PIL.Image.open(FIXTURES / "A1_coco_panoptic_r50" / "input_image0.png")
    segmenter = pipeline("image-segmentation", model=model, image_processor=processor)

    inputs = processor(image, return_tensors="pt")
    with torch.no_grad():
        outputs = model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
    target = inputs["original_sizes"]
    for subtask in ("panoptic", "instance", "semantic"):
        annotations = segmenter(image, subtask=subtask, threshold=0.0, overlap_mask_area_threshold=0.0)
        assert annotations and all(a["mask"].size == image.size for a in annotations)
        if subtask == "panoptic":
            direct = processor.post_process_panoptic_segmentation(
                outputs, threshold=0.0, overlap_mask_area_threshold=0.0, target_sizes=target
            )[0]
            assert [a["score"] for a in annotations] == [s["score"] for s in direct["segments_info"]]
            for a, s in zip(annotations, direct["segments_info"], strict=True):
                np.testing.assert_array_equal(
                    np.asarray(a["mask"]) > 0, (direct["segmentation"] == s["id"]).numpy()
                )
        elif subtask == "instance":
            assert {a["label"] for a in annotations} <= {config.id2label[i] for i in (0, 1, 2)}
        else:
            direct = processor.post_process_semantic_segmentation(outputs, target_sizes=target)[0]
            assert {a["label"] for a in annotations} == {config.id2label[int(i)] for i in direct.unique()}
