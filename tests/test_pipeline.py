"""pipeline("image-segmentation") on m2f_hf folders: the checkpoint's default task, thresholds reaching the
post-processing, batches, and unchanged stock behaviour for other models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_m2f import LABELS, PHOTO, PHOTO2, save_tiny
from transformers import pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.image_segmentation import ImageSegmentationPipeline

import m2f_hf  # noqa: F401  (registers the Auto classes and the pipeline)
from m2f_hf.pipeline_m2f import (
    M2fHfImageSegmentationPipeline,
    default_subtask,
    register_segmentation_pipeline,
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline_models")
    return {task: save_tiny(root / task, task) for task in ("panoptic", "instance", "semantic")}


@pytest.fixture(scope="module")
def segmenters(folders):
    return {task: pipeline("image-segmentation", model=str(folder)) for task, folder in folders.items()}


def _direct(segmenter, image: Image.Image):
    """Model outputs and target size as the pipeline computes them, for calling the processor directly."""
    inputs = segmenter.image_processor(images=[image], return_tensors="pt")
    with torch.no_grad():
        outputs = segmenter.model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
    return outputs, [(image.height, image.width)]


def _masks(result) -> list[np.ndarray]:
    return [np.asarray(r["mask"]) > 0 for r in result]


def test_registration_is_idempotent_and_used():
    register_segmentation_pipeline()
    register_segmentation_pipeline()
    assert PIPELINE_REGISTRY.supported_tasks["image-segmentation"]["impl"] is M2fHfImageSegmentationPipeline


def test_default_subtask_follows_config_flags(segmenters):
    for task, segmenter in segmenters.items():
        assert isinstance(segmenter, M2fHfImageSegmentationPipeline)
        assert default_subtask(segmenter.model.config) == task


def test_semantic_only_model_gives_semantic_output_by_default(segmenters):
    segmenter = segmenters["semantic"]
    image = Image.open(PHOTO)
    result = segmenter(image)
    outputs, target = _direct(segmenter, image)
    expected = segmenter.image_processor.post_process_semantic_segmentation(outputs, target_sizes=target)[0]
    labels = [LABELS[i] for i in torch.unique(expected).tolist()]
    assert [r["label"] for r in result] == labels and len(labels) >= 2
    assert all(r["score"] is None for r in result)
    for r, label_id in zip(result, torch.unique(expected).tolist(), strict=True):
        assert r["mask"].size == image.size
        assert np.array_equal(np.asarray(r["mask"]) > 0, (expected == label_id).numpy())


def test_panoptic_default_uses_the_processor_thresholds(segmenters):
    segmenter = segmenters["panoptic"]
    image = Image.open(PHOTO)
    result = segmenter(image)
    outputs, target = _direct(segmenter, image)
    processor = segmenter.image_processor
    expected = processor.post_process_panoptic_segmentation(outputs, target_sizes=target)[0]
    assert len(result) == len(expected["segments_info"]) >= 2
    assert [r["score"] for r in result] == [s["score"] for s in expected["segments_info"]]
    for mask, info in zip(_masks(result), expected["segments_info"], strict=True):
        assert np.array_equal(mask, (expected["segmentation"] == info["id"]).numpy())
    # the stock defaults (0.9 / 0.5) would give a different answer, so the defaults did matter
    stock = processor.post_process_panoptic_segmentation(
        outputs, threshold=0.9, overlap_mask_area_threshold=0.5, target_sizes=target
    )[0]
    assert len(stock["segments_info"]) != len(expected["segments_info"])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(threshold=0.0, overlap_mask_area_threshold=0.0),
        dict(threshold=0.7, overlap_mask_area_threshold=0.5, mask_threshold=0.3),
    ],
)
def test_thresholds_reach_panoptic_post_processing(segmenters, kwargs):
    segmenter = segmenters["panoptic"]
    image = Image.open(PHOTO)
    result = segmenter(image, subtask="panoptic", **kwargs)
    outputs, target = _direct(segmenter, image)
    expected = segmenter.image_processor.post_process_panoptic_segmentation(
        outputs, target_sizes=target, **kwargs
    )[0]
    assert [(r["label"], r["score"]) for r in result] == [
        (LABELS[s["label_id"]], s["score"]) for s in expected["segments_info"]
    ]


@pytest.mark.parametrize("threshold", [None, 0.6])
def test_instance_masks_and_threshold(segmenters, threshold):
    segmenter = segmenters["instance"]
    image = Image.open(PHOTO)
    kwargs = {} if threshold is None else {"threshold": threshold}
    result = segmenter(image, **kwargs)  # the instance model answers with instances by default
    outputs, target = _direct(segmenter, image)
    expected = segmenter.image_processor.post_process_instance_segmentation(
        outputs, threshold=threshold, target_sizes=target, return_binary_maps=True
    )[0]
    assert len(result) == len(expected["segments_info"]) > 0
    if threshold is not None:
        assert min(r["score"] for r in result) >= threshold
    for mask, binary in zip(_masks(result), expected["segmentation"], strict=True):
        assert np.array_equal(mask, binary.numpy())  # full (possibly overlapping) masks


def _exact(result) -> list[tuple]:
    return [(r["label"], r["score"], np.asarray(r["mask"]).tobytes()) for r in result]


def test_explicit_subtasks_and_batch_invariance(segmenters):
    """batch_size 3 gives every image exactly its batch_size 1 result, for images of different sizes
    (two of them with the same padded size, so they share a forward), although the model-level padded
    batch (the original's batched forward) gives the smaller image different results."""
    segmenter = segmenters["panoptic"]
    images = [
        Image.open(PHOTO),
        Image.open(PHOTO2).resize((160, 200)),
        Image.open(PHOTO2).resize((150, 225)).convert("L"),
    ]
    processor = segmenter.image_processor
    inputs = processor(images=images[:2], return_tensors="pt")  # the original's padded batch
    assert inputs["pixel_values"].shape[-2:] == (96, 96)
    assert inputs["pixel_mask"][0, -1].sum() == 0 and inputs["pixel_mask"][1, :, -1].sum() == 0
    with torch.no_grad():
        padded = segmenter.model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
    alone, _ = _direct(segmenter, images[0])
    assert not torch.allclose(padded.masks_queries_logits[0, :, :16, :24], alone.masks_queries_logits[0])
    for subtask in ("panoptic", "instance", "semantic"):
        one_by_one = [segmenter(image, subtask=subtask, threshold=0.0) for image in images]
        assert [_exact(r) for r in segmenter(images, subtask=subtask, threshold=0.0)] == [
            _exact(r) for r in one_by_one
        ]
        for batch_size in (2, 3):
            batched = segmenter(images, subtask=subtask, threshold=0.0, batch_size=batch_size)
            assert [_exact(r) for r in batched] == [_exact(r) for r in one_by_one]
        for result, image in zip(one_by_one, images, strict=True):
            assert result and all(r["mask"].size == image.size for r in result)
    with pytest.raises(ValueError, match="subtask"):
        segmenter(images[0], subtask="depth")


def test_other_models_keep_the_stock_behaviour(tmp_path):
    """A transformers Mask2Former gets exactly what the stock pipeline gives (its defaults 0.9 / 0.5)."""
    import transformers

    config = transformers.Mask2FormerConfig(
        backbone_config=transformers.SwinConfig(
            embed_dim=16,
            depths=[1, 1, 1, 1],
            num_heads=[1, 2, 4, 8],
            out_features=["stage1", "stage2", "stage3", "stage4"],
        ),
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        num_attention_heads=4,
        num_queries=6,
        decoder_layers=3,
        encoder_layers=1,
        dim_feedforward=32,
        encoder_feedforward_dim=32,
        num_labels=3,
    )
    torch.manual_seed(0)
    model = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    processor = transformers.Mask2FormerImageProcessor(size={"height": 64, "width": 64})
    ours = pipeline("image-segmentation", model=model, image_processor=processor)
    stock = ImageSegmentationPipeline(model=model, image_processor=processor)
    assert type(ours) is M2fHfImageSegmentationPipeline
    image = Image.open(PHOTO)
    for kwargs in ({}, {"threshold": 0.0, "overlap_mask_area_threshold": 0.0}, {"subtask": "semantic"}):
        a, b = ours(image, **kwargs), stock(image, **kwargs)
        assert [(r["label"], r["score"]) for r in a] == [(r["label"], r["score"]) for r in b]
        assert all(
            np.array_equal(np.asarray(x["mask"]), np.asarray(y["mask"])) for x, y in zip(a, b, strict=True)
        )
