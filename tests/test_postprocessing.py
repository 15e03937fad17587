"""Post-processing parity with the original (oracle fixtures) and behaviour of the options."""

from __future__ import annotations

import functools
import json
from types import SimpleNamespace

import numpy as np
import oracle
import pytest
import torch
from oracle import FIXTURES, NAMES
from PIL import Image

from m2f_hf import processing_postprocess as pp
from m2f_hf.image_processing_m2f import M2fHfImageProcessor


def unpack(packed: np.ndarray, width: int) -> np.ndarray:
    return np.unpackbits(packed, axis=-1)[..., :width].astype(bool)


@functools.cache
def end_to_end_outputs(name: str):
    """PNG files → converted checkpoint's processor → model: the whole path, from the original's files."""
    from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation

    folder = FIXTURES / name
    out = oracle.converted(name)
    processor = AutoImageProcessor.from_pretrained(out)
    processor.segment_ids = "original"  # these tests compare with the original's maps (0 = none, ids from 1)
    model = AutoModelForUniversalSegmentation.from_pretrained(out).eval()
    images = [Image.open(folder / f"input_image{j}.png") for j in range(2)]
    inputs = processor(images, return_tensors="pt")
    with torch.no_grad():
        outputs = model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
    return processor, outputs, [tuple(s) for s in inputs["original_sizes"].tolist()]


def load_case(name: str, source: str):
    """Processor, model outputs and oracle results for synthetic ("probe") or stored ("real") head outputs,
    or for the whole path from the PNG files ("e2e")."""
    folder = FIXTURES / name
    meta = oracle.meta(name)
    inputs = np.load(folder / "inputs.npz")
    flags = meta["task_flags"]
    processor = M2fHfImageProcessor(
        size={"shortest_edge": meta["min_size_test"], "longest_edge": meta["max_size_test"]},
        thing_ids=meta["thing_contiguous_ids"] if flags["panoptic_on"] else None,
        object_mask_threshold=meta["object_mask_threshold"],
        overlap_threshold=meta["overlap_threshold"],
        test_topk_per_image=meta["test_topk_per_image"],
        sem_seg_postprocess_before_inference=flags["sem_seg_postprocess_before_inference"],
        segment_ids="original",  # the original's maps: 0 = none, ids from 1, bool binary masks
    )
    image_sizes = inputs["image_sizes"].astype(np.int64)
    orig_sizes = inputs["orig_sizes"].astype(np.int64)
    if source == "probe":
        data = np.load(folder / "postproc_probe.npz")
        info = json.loads((folder / "postproc_probe.json").read_text())
        logits = torch.from_numpy(data["syn_pred_logits"].astype(np.float32))
        masks = torch.from_numpy(data["syn_pred_masks"].astype(np.float32))
        order = [0, 1, 0]  # image0, image1, image0 again (README)
        image_sizes, orig_sizes = image_sizes[order], orig_sizes[order]
    else:
        raw = np.load(folder / "raw_outputs.npz")
        data = np.load(folder / "postprocessed.npz")
        info = json.loads((folder / "postprocessed.json").read_text())
        logits = torch.from_numpy(raw["pred_logits"])
        masks = torch.from_numpy(raw["pred_masks"])
    outputs = SimpleNamespace(
        class_queries_logits=logits, masks_queries_logits=masks, image_sizes=torch.from_numpy(image_sizes)
    )
    target_sizes = [tuple(s) for s in orig_sizes.tolist()]
    if source == "e2e":
        saved_processor, outputs, e2e_sizes = end_to_end_outputs(name)
        assert e2e_sizes == target_sizes
        assert outputs.image_sizes.tolist() == image_sizes.tolist()
        assert list(saved_processor.thing_ids) == list(meta["thing_contiguous_ids"])
        for key in (
            "size",
            "object_mask_threshold",
            "overlap_threshold",
            "test_topk_per_image",
            "sem_seg_postprocess_before_inference",
            "image_mean",
            "image_std",
        ):
            assert getattr(saved_processor, key) == getattr(processor, key), key
        processor = saved_processor
    return processor, outputs, target_sizes, data, info, meta


def cases(task_flag: str) -> list[tuple[str, str]]:
    """(fixture, source) pairs for the fixtures whose original config runs this post-processing task."""
    return [
        (name, source)
        for name in NAMES
        if oracle.meta(name)["task_flags"][task_flag]
        for source in ("probe", "real", "e2e")
    ]


@pytest.mark.parametrize("name,source", cases("semantic_on"))
def test_semantic_matches_original(name, source):
    processor, outputs, target_sizes, data, info, meta = load_case(name, source)
    results = processor.post_process_semantic_segmentation(outputs, target_sizes=target_sizes)
    for j, result in enumerate(results):
        ref = data[f"img{j}_sem_seg_argmax"].astype(np.int64)
        margin = data[f"img{j}_sem_seg_margin"].astype(np.float32)
        assert result.shape == ref.shape and result.dtype == torch.long
        stable = margin >= 1e-3
        assert stable.sum() > 0
        mismatch = (result.numpy() != ref) & stable
        assert mismatch.sum() == 0, f"img{j}: {mismatch.sum()} stable pixels differ"


@pytest.mark.parametrize("name,source", cases("semantic_on"))
def test_semantic_scores_match_original_max(name, source):
    processor, outputs, target_sizes, data, info, meta = load_case(name, source)
    results = processor.post_process_semantic_segmentation(
        outputs, target_sizes=target_sizes, return_segmentation_scores=True
    )
    chunked = processor.post_process_semantic_segmentation(outputs, target_sizes=target_sizes)
    for j, result in enumerate(results):
        ref_max = data[f"img{j}_sem_seg_max"].astype(np.float32)
        scores = result["segmentation_scores"]
        assert scores.shape[0] == meta["num_classes"]
        np.testing.assert_allclose(scores.max(dim=0).values.numpy(), ref_max, rtol=1e-3, atol=1e-3)
        margin = data[f"img{j}_sem_seg_margin"].astype(np.float32) >= 1e-3
        same = (result["segmentation"] == chunked[j]).numpy()
        assert same[margin].all()


@pytest.mark.parametrize("name,source", cases("panoptic_on"))
def test_panoptic_matches_original(name, source):
    processor, outputs, target_sizes, data, info, meta = load_case(name, source)
    thing = set(meta["thing_contiguous_ids"])
    results = processor.post_process_panoptic_segmentation(outputs, target_sizes=target_sizes)
    for j, result in enumerate(results):
        ref = data[f"img{j}_panoptic_seg"]
        seg = result["segmentation"]
        assert seg.dtype == torch.int32 and tuple(seg.shape) == ref.shape
        key = f"img{j}_panoptic_fragile_packed"
        fragile = unpack(data[key], ref.shape[1]) if key in data else np.zeros(ref.shape, dtype=bool)
        mismatch = (seg.numpy() != ref) & ~fragile
        assert mismatch.sum() == 0, f"img{j}: {mismatch.sum()} non-fragile pixels differ"
        ref_info = info["images"][j]["segments_info"]
        got = [(s["id"], s["label_id"], not s["was_fused"]) for s in result["segments_info"]]
        assert got == [(s["id"], s["category_id"], s["isthing"]) for s in ref_info]
        for s in result["segments_info"]:
            assert (s["label_id"] in thing) == (not s["was_fused"])
            assert s["score"] > meta["object_mask_threshold"]
        for s in ref_info:  # areas (the README's addition) agree up to the fragile pixels
            assert abs(int((seg == s["id"]).sum()) - s["area"]) <= int(fragile.sum())
    if source == "probe":  # the third entry predicts no-object everywhere: the empty result
        assert results[2]["segments_info"] == [] and int(results[2]["segmentation"].abs().sum()) == 0


@pytest.mark.parametrize("name,source", cases("instance_on"))
def test_instances_match_original(name, source):
    processor, outputs, target_sizes, data, info, meta = load_case(name, source)
    results = processor.post_process_instance_segmentation(
        outputs, target_sizes=target_sizes, return_binary_maps=True
    )
    for j, result in enumerate(results):
        ref_scores = data[f"img{j}_inst_scores"]
        height, width = target_sizes[j]
        ref_masks = unpack(data[f"img{j}_inst_pred_masks_packed"], width)
        key = f"img{j}_inst_fragile_packed"
        fragile = unpack(data[key], width) if key in data else np.zeros(ref_masks.shape, dtype=bool)
        order = np.argsort(-ref_scores, kind="stable")
        scores = np.array([s["score"] for s in result["segments_info"]], dtype=np.float32)
        labels = np.array([s["label_id"] for s in result["segments_info"]])
        assert len(scores) == len(ref_scores) == info["images"][j]["num_instances"]
        assert np.all(np.diff(scores) <= 0)
        assert np.abs(scores - ref_scores[order]).max() <= 1e-5
        np.testing.assert_array_equal(labels, data[f"img{j}_inst_pred_classes"][order])
        masks = result["segmentation"].numpy()
        assert masks.shape == (len(scores), height, width) and masks.dtype == bool
        mismatch = (masks != ref_masks[order]) & ~fragile[order]
        assert mismatch.sum() == 0, f"img{j}: {mismatch.sum()} non-fragile mask pixels differ"


def test_instance_maps_and_rle_agree_with_binary_masks():
    processor, outputs, target_sizes, *_ = load_case("A1_coco_panoptic_r50", "real")
    binary = processor.post_process_instance_segmentation(
        outputs, target_sizes=target_sizes, return_binary_maps=True
    )
    rle = processor.post_process_instance_segmentation(
        outputs, target_sizes=target_sizes, return_coco_annotation=True
    )
    plain = processor.post_process_instance_segmentation(outputs, target_sizes=target_sizes)
    for b, r, p in zip(binary, rle, plain, strict=True):
        masks = b["segmentation"]
        assert len(r["segmentation"]) == masks.shape[0]
        for mask, encoded in zip(masks, r["segmentation"], strict=True):
            assert encoded["size"] == list(mask.shape)
            assert torch.equal(pp.rle_decode(encoded), mask)
        # the single map gives each pixel to the best-scoring instance covering it
        expected = torch.zeros(masks.shape[1:], dtype=torch.int32)
        for i in reversed(range(masks.shape[0])):
            expected[masks[i]] = i + 1
        assert torch.equal(p["segmentation"], expected)
        assert [s["id"] for s in p["segments_info"]] == list(range(1, masks.shape[0] + 1))


def test_rle_roundtrip_and_pycocotools_format():
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 37, 23, generator=generator) > 0.6
    masks[0] = False
    masks[1] = True
    masks[2, :, :5] = True  # long runs need several 5-bit groups
    masks[2, :, 5:] = False
    big = torch.zeros(1, 300, 400, dtype=torch.bool)
    big[0, 10:290, 7:390] = True
    for stack in (masks, big):
        encoded = pp.rle_encode(stack)
        for mask, rle in zip(stack, encoded, strict=True):
            assert torch.equal(pp.rle_decode(rle), mask)
    mask_util = pytest.importorskip("pycocotools.mask")
    for stack in (masks, big):
        ours = pp.rle_encode(stack)
        theirs = mask_util.encode(np.asfortranarray(stack.permute(1, 2, 0).numpy().astype(np.uint8)))
        assert [r["counts"] for r in ours] == [t["counts"].decode() for t in theirs]
        assert [r["size"] for r in ours] == [list(t["size"]) for t in theirs]
    assert pp.rle_encode(torch.zeros(0, 4, 5, dtype=torch.bool)) == []
    with pytest.raises(ValueError, match="sum to"):
        pp.rle_decode({"size": [2, 2], "counts": [1, 2]})


def test_empty_results():
    processor = M2fHfImageProcessor(thing_ids=[0, 1], segment_ids="original")
    logits = torch.zeros(2, 5, 4)
    logits[..., -1] = 20.0  # every query predicts no-object
    outputs = SimpleNamespace(
        class_queries_logits=logits, masks_queries_logits=torch.randn(2, 5, 8, 8), image_sizes=None
    )
    pan = processor.post_process_panoptic_segmentation(outputs, target_sizes=[(20, 30), (32, 32)])
    assert [tuple(r["segmentation"].shape) for r in pan] == [(20, 30), (32, 32)]
    assert all(r["segments_info"] == [] and int(r["segmentation"].abs().sum()) == 0 for r in pan)
    inst = processor.post_process_instance_segmentation(outputs, threshold=0.5, return_binary_maps=True)
    assert [tuple(r["segmentation"].shape) for r in inst] == [(0, 32, 32)] * 2
    assert all(r["segments_info"] == [] for r in inst)
    inst = processor.post_process_instance_segmentation(outputs, threshold=0.5)
    assert all(int(r["segmentation"].abs().sum()) == 0 for r in inst)
    assert (
        processor.post_process_instance_segmentation(outputs, threshold=0.5, return_coco_annotation=True)[0][
            "segmentation"
        ]
        == []
    )


def test_thresholds_are_honoured():
    processor, outputs, target_sizes, *_ = load_case("A1_coco_panoptic_r50", "probe")
    base = processor.post_process_panoptic_segmentation(outputs, target_sizes=target_sizes)[0]
    strict = processor.post_process_panoptic_segmentation(outputs, threshold=0.95, target_sizes=target_sizes)[
        0
    ]
    assert all(s["score"] > 0.95 for s in strict["segments_info"])
    assert len(strict["segments_info"]) < len(base["segments_info"])
    loose = processor.post_process_panoptic_segmentation(
        outputs, overlap_mask_area_threshold=0.0, target_sizes=target_sizes
    )[0]
    assert len(loose["segments_info"]) > len(base["segments_info"])  # the probe has skip_overlap events
    wide = processor.post_process_panoptic_segmentation(
        outputs, mask_threshold=0.2, target_sizes=target_sizes
    )[0]
    assert not torch.equal(wide["segmentation"], base["segmentation"])
    fused_none = processor.post_process_panoptic_segmentation(
        outputs, label_ids_to_fuse=set(), target_sizes=target_sizes
    )[0]
    assert not any(s["was_fused"] for s in fused_none["segments_info"])
    assert len(fused_none["segments_info"]) > len(base["segments_info"])  # the probe merges stuff

    all_inst = processor.post_process_instance_segmentation(
        outputs, target_sizes=target_sizes, return_binary_maps=True
    )
    kept = processor.post_process_instance_segmentation(
        outputs, threshold=0.5, target_sizes=target_sizes, return_binary_maps=True
    )
    for a, k in zip(all_inst, kept, strict=True):
        expected = [s["score"] for s in a["segments_info"] if s["score"] >= 0.5]
        assert [s["score"] for s in k["segments_info"]] == expected
    assert len(kept[0]["segments_info"]) < len(all_inst[0]["segments_info"])
    tight = processor.post_process_instance_segmentation(
        outputs, mask_threshold=0.9, target_sizes=target_sizes, return_binary_maps=True
    )
    assert tight[0]["segmentation"].sum() < all_inst[0]["segmentation"].sum()
    with pytest.raises(ValueError, match="mask_threshold"):
        processor.post_process_instance_segmentation(outputs, mask_threshold=1.0)


def test_results_stay_on_output_device_and_default_size():
    processor, outputs, _, *_ = load_case("A1_coco_panoptic_r50", "real")
    device = outputs.masks_queries_logits.device
    sem = processor.post_process_semantic_segmentation(outputs)
    pan = processor.post_process_panoptic_segmentation(outputs)
    inst = processor.post_process_instance_segmentation(outputs, return_binary_maps=True)
    sizes = outputs.image_sizes.tolist()
    for j, size in enumerate(
        sizes
    ):  # no target size: the resized image, as the original without height/width
        assert tuple(sem[j].shape) == tuple(size) and sem[j].device == device
        assert tuple(pan[j]["segmentation"].shape) == tuple(size) and pan[j]["segmentation"].device == device
        assert tuple(inst[j]["segmentation"].shape[1:]) == tuple(size)
    half = SimpleNamespace(**{k: v.half() if v.is_floating_point() else v for k, v in vars(outputs).items()})
    assert processor.post_process_semantic_segmentation(half)[0].shape == sem[0].shape
    if torch.cuda.is_available():
        cuda = SimpleNamespace(**{k: v.cuda() for k, v in vars(outputs).items()})
        assert processor.post_process_semantic_segmentation(cuda)[0].device.type == "cuda"
        assert processor.post_process_panoptic_segmentation(cuda)[0]["segmentation"].device.type == "cuda"


def test_bad_outputs_are_rejected():
    processor = M2fHfImageProcessor(segment_ids="original")
    outputs = SimpleNamespace(
        class_queries_logits=torch.zeros(1, 3, 4),
        masks_queries_logits=torch.zeros(1, 3, 8, 8),
        image_sizes=None,
    )
    with pytest.raises(ValueError, match="target sizes"):
        processor.post_process_semantic_segmentation(outputs, target_sizes=[(4, 4), (4, 4)])
    with pytest.raises(ValueError, match="masks_queries_logits"):
        processor.post_process_semantic_segmentation(SimpleNamespace(class_queries_logits=None))
    outputs.image_sizes = torch.tensor([[40, 8]])
    with pytest.raises(ValueError, match="does not fit"):
        processor.post_process_semantic_segmentation(outputs)
    with pytest.raises(ValueError, match="both"):
        processor.post_process_instance_segmentation(
            outputs, return_binary_maps=True, return_coco_annotation=True
        )


def test_chunked_semantic_argmax_equals_full_argmax():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(7, 71, generator=generator) * 3
    mask_logits = torch.randn(7, 9, 11, generator=generator) * 4
    scores = pp.semantic_inference(logits, mask_logits.sigmoid())
    top2 = scores.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-5  # float summation order may differ, ties aside
    full = scores.argmax(dim=0)
    for block in (1, 10, 1000):
        assert torch.equal(pp.semantic_argmax(logits, mask_logits, pixel_block=block)[clear], full[clear])
    resized = pp.crop_and_resize(scores, (7, 10), (13, 17))
    for chunk in (1, 5, 32, 100):
        got = pp.semantic_argmax(logits, mask_logits, (7, 10), (13, 17), chunk=chunk)
        assert torch.equal(got, resized.argmax(dim=0))
    # ties go to the lowest class, like torch.argmax
    tie = torch.zeros(2, 5)
    zeros = torch.zeros(3, 3, dtype=torch.long)
    assert torch.equal(pp.semantic_argmax(tie, torch.ones(2, 3, 3), pixel_block=4), zeros)
    assert torch.equal(pp.semantic_argmax(tie, torch.ones(2, 3, 3), (3, 3), chunk=2), zeros)
