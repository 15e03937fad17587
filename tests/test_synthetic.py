"""Synthetic shapes-on-backgrounds dataset (m2f_hf.training_synthetic)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from m2f_hf.processing_targets import instance_to_targets, panoptic_to_targets, rgb_to_id, semantic_to_targets
from m2f_hf.training_synthetic import (
    CATEGORY_ID_TO_CONTIGUOUS,
    ID2LABEL,
    STUFF_IDS,
    SYNTHETIC_CATEGORIES,
    THING_IDS,
    load_coco_panoptic,
    make_synthetic_dataset,
    make_synthetic_sample,
    to_hf_dataset,
    write_coco_panoptic,
)


@pytest.fixture(scope="module")
def samples():
    return make_synthetic_dataset(6, size=(96, 112), seed=5)


def test_class_constants():
    assert ID2LABEL == {
        0: "circle",
        1: "rectangle",
        2: "triangle",
        3: "ellipse",
        4: "sky",
        5: "grass",
        6: "wall",
    }
    assert THING_IDS == (0, 1, 2, 3) and STUFF_IDS == (4, 5, 6)
    assert [c["isthing"] for c in SYNTHETIC_CATEGORIES] == [1, 1, 1, 1, 0, 0, 0]
    assert CATEGORY_ID_TO_CONTIGUOUS == {c["id"]: i for i, c in enumerate(SYNTHETIC_CATEGORIES)}


def test_deterministic_from_seed(samples):
    again = make_synthetic_dataset(6, size=(96, 112), seed=5)
    for a, b in zip(samples, again, strict=True):
        for key in ("image", "semantic_map", "instance_map", "panoptic_map", "panoptic_png"):
            assert np.array_equal(a[key], b[key]), key
        assert a["segments_info"] == b["segments_info"]
        assert a["instance_id_to_semantic_id"] == b["instance_id_to_semantic_id"]
    # image i does not depend on how many images are made, and other seeds differ
    assert np.array_equal(make_synthetic_sample(5, 3, (96, 112))["image"], samples[3]["image"])
    other = make_synthetic_dataset(2, size=(96, 112), seed=6)
    assert not np.array_equal(other[0]["image"], samples[0]["image"])


def test_views_are_consistent(samples):
    for s in samples:
        sem, inst, pan = s["semantic_map"], s["instance_map"], s["panoptic_map"]
        assert s["image"].shape == (96, 112, 3) and s["image"].dtype == np.uint8
        assert sem.dtype == np.uint8 and inst.dtype == np.int32
        assert np.array_equal(rgb_to_id(s["panoptic_png"]), pan)
        assert (pan > 0).all()  # every pixel belongs to a segment, no VOID
        ids = [seg["id"] for seg in s["segments_info"]]
        assert sorted(ids) == sorted(np.unique(pan).tolist())
        things = stuff = 0
        for seg in s["segments_info"]:
            region = pan == seg["id"]
            contiguous = CATEGORY_ID_TO_CONTIGUOUS[seg["category_id"]]
            # each panoptic segment = exactly the pixels of one instance (things) or of one class (stuff)
            if contiguous in THING_IDS:
                things += 1
                instance_ids = np.unique(inst[region])
                assert instance_ids.size == 1 and instance_ids[0] > 0
                assert np.array_equal(region, inst == instance_ids[0])
                assert s["instance_id_to_semantic_id"][int(instance_ids[0])] == contiguous
            else:
                stuff += 1
                assert np.array_equal(region, (sem == contiguous) & (inst == 0))
            assert (sem[region] == contiguous).all()
            assert seg["area"] == int(region.sum()) and seg["iscrowd"] == 0
            x, y, w, h = seg["bbox"]
            rows, cols = np.nonzero(region)
            assert (x, y, w, h) == (
                cols.min(),
                rows.min(),
                cols.max() - cols.min() + 1,
                rows.max() - rows.min() + 1,
            )
        assert things >= 1 and stuff >= 1  # non-empty things and stuff
        assert things == len(s["instance_id_to_semantic_id"])
        # instance ids are 1..n, thing pixels carry thing classes, the rest stuff classes
        assert sorted(s["instance_id_to_semantic_id"]) == list(range(1, things + 1))
        assert np.isin(sem[inst > 0], THING_IDS).all() and np.isin(sem[inst == 0], STUFF_IDS).all()


def test_targets_agree_across_views(samples):
    for s in samples:
        sem_masks, sem_labels = semantic_to_targets(s["semantic_map"])
        inst_masks, inst_labels = instance_to_targets(
            s["instance_map"], s["instance_id_to_semantic_id"], ignore_index=0
        )
        pan_masks, pan_labels = panoptic_to_targets(
            s["panoptic_png"], s["segments_info"], CATEGORY_ID_TO_CONTIGUOUS
        )
        thing = torch.isin(pan_labels, torch.tensor(THING_IDS))
        # thing segments = instances, in the same order (segments_info lists instances 1..n first)
        assert torch.equal(pan_masks[thing], inst_masks) and torch.equal(pan_labels[thing], inst_labels)
        # the union of each class's panoptic segments = that class's semantic mask
        for mask, label in zip(sem_masks, sem_labels, strict=True):
            union = pan_masks[pan_labels == label].any(0)
            assert torch.equal(union, mask)


def test_written_files_roundtrip(samples, tmp_path):
    json_path = write_coco_panoptic(samples, tmp_path)
    payload = json.loads(json_path.read_text())
    assert {c["name"]: c["isthing"] for c in payload["categories"]}["wall"] == 0
    assert len(payload["images"]) == len(payload["annotations"]) == len(samples)
    for sub in ("images", "panoptic", "semantic"):
        assert len(list((tmp_path / sub).glob("*.png"))) == len(samples)
    loaded, categories = load_coco_panoptic(tmp_path)
    assert categories == SYNTHETIC_CATEGORIES
    for original, back in zip(samples, loaded, strict=True):
        assert np.array_equal(back["image"], original["image"])
        assert np.array_equal(back["panoptic_map"], original["panoptic_map"])
        assert np.array_equal(back["semantic_map"], original["semantic_map"])
        masks, labels = panoptic_to_targets(
            back["panoptic_png"], back["segments_info"], CATEGORY_ID_TO_CONTIGUOUS
        )
        ref_masks, ref_labels = panoptic_to_targets(
            original["panoptic_map"], original["segments_info"], CATEGORY_ID_TO_CONTIGUOUS
        )
        assert torch.equal(masks, ref_masks) and torch.equal(labels, ref_labels)
        assert masks.shape[0] == len(original["segments_info"]) and masks.any(dim=(1, 2)).all()
    with pytest.raises(FileNotFoundError, match="panoptic.json"):
        load_coco_panoptic(tmp_path / "missing")


def test_hf_dataset(samples):
    pytest.importorskip("datasets")
    dataset = to_hf_dataset(samples[:3])
    assert len(dataset) == 3
    row = dataset[1]
    assert np.array_equal(np.asarray(row["image"]), samples[1]["image"])
    assert np.array_equal(np.asarray(row["semantic_map"]), samples[1]["semantic_map"])
    assert np.array_equal(rgb_to_id(np.asarray(row["panoptic"].convert("RGB"))), samples[1]["panoptic_map"])
    assert np.array_equal(np.asarray(row["instance_map"]), samples[1]["instance_map"])
    mapping = samples[1]["instance_id_to_semantic_id"]
    assert row["instance_classes"] == [mapping[k] for k in sorted(mapping)]
    assert row["segments_info"] == samples[1]["segments_info"]
    with pytest.raises(ValueError, match="at least one"):
        to_hf_dataset([])


def test_invalid_arguments():
    with pytest.raises(ValueError, match="16x16"):
        make_synthetic_sample(size=(8, 64))
    with pytest.raises(ValueError, match="max_objects"):
        make_synthetic_sample(max_objects=0)
    with pytest.raises(ValueError, match="num_images"):
        make_synthetic_dataset(-1)
    assert make_synthetic_dataset(0) == []


def test_by_class_palette_colours_shapes_by_class_and_keeps_the_layout():
    import colorsys

    from m2f_hf.training_synthetic import ID2LABEL, THING_HUES

    for index in range(4):
        plain = make_synthetic_sample(7, index)
        coloured = make_synthetic_sample(7, index, palette="by_class")
        # same scene, labels and ids: only the shape colours differ
        assert np.array_equal(plain["panoptic_map"], coloured["panoptic_map"])
        assert plain["segments_info"] == coloured["segments_info"]
        for instance_id, class_id in coloured["instance_id_to_semantic_id"].items():
            pixels = coloured["image"][coloured["instance_map"] == instance_id].astype(float) / 255
            hue = colorsys.rgb_to_hsv(*np.median(pixels, axis=0))[0] * 360
            distance = min(
                abs(hue - THING_HUES[ID2LABEL[class_id]]) % 360,
                360 - abs(hue - THING_HUES[ID2LABEL[class_id]]) % 360,
            )
            assert distance < 25, (index, instance_id, hue)
    with pytest.raises(ValueError, match="palette"):
        make_synthetic_sample(palette="pastel")
