"""Evaluation metrics against their reference tools on generated cases (and a few hand-computed ones).

* mIoU & co: an independent per-class numpy reference that spells out detectron2's SemSegEvaluator formulas.
* PQ: an independent file-based reference of the COCO panoptic API's rules (``reference_pq.py``), fed with
  the generated cases written as rgb-encoded PNG + JSON files, as detectron2's evaluator writes them; where
  ``panopticapi`` (PyPI ``panopticapi-lite``) is installed, its ``pq_compute`` is checked against it too.
* mask AP: pycocotools' COCOeval run directly on COCO json built here from the same masks.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import reference_pq
import torch
from PIL import Image

from m2f_hf.training_metrics_instance import InstanceSegmentationEvaluator, masks_to_rle
from m2f_hf.training_metrics_panoptic import PanopticQualityEvaluator
from m2f_hf.training_metrics_semantic import SemanticSegmentationEvaluator

TOL = 1e-6


def assert_close(a: float, b: float, what: str) -> None:
    if isinstance(a, float) and math.isnan(a) or isinstance(b, float) and math.isnan(b):
        assert math.isnan(a) and math.isnan(b), f"{what}: {a} vs {b}"
    else:
        assert abs(a - b) <= TOL, f"{what}: {a} vs {b} (diff {abs(a - b)})"


def blocky(rng: np.random.Generator, h: int, w: int, values, block: int) -> np.ndarray:
    """Piecewise-constant label map: random labels on a coarse grid, upsampled by pixel repetition."""
    coarse = rng.choice(np.asarray(values), size=(-(-h // block), -(-w // block)))
    return np.kron(coarse, np.ones((block, block), dtype=coarse.dtype))[:h, :w]


# --------------------------------------------------------------------------------------------------- semantic


def reference_semseg(preds, gts, num_classes: int, ignore: int | None, denominator: str) -> dict:
    """Straightforward per-class loops implementing detectron2's SemSegEvaluator definitions."""
    tp = np.zeros(num_classes)
    gt_px = np.zeros(num_classes)
    pred_px = np.zeros(num_classes)
    for p, g in zip(preds, gts, strict=True):
        valid = np.ones(g.shape, bool) if ignore is None else g != ignore
        for c in range(num_classes):
            tp[c] += np.sum((p == c) & (g == c) & valid)
            gt_px[c] += np.sum((g == c) & valid)
            pred_px[c] += np.sum((p == c) & valid)
    iou, acc = [], []
    for c in range(num_classes):
        if gt_px[c] > 0:
            iou.append(tp[c] / (gt_px[c] + pred_px[c] - tp[c]))
            acc.append(tp[c] / gt_px[c])
        else:
            iou.append(float("nan"))
            acc.append(float("nan"))
    present = [c for c in range(num_classes) if gt_px[c] > 0]
    if denominator == "gt_or_pred":
        count = sum(1 for c in range(num_classes) if gt_px[c] + pred_px[c] > 0)
    else:
        count = len(present)
    total = gt_px.sum()
    return {
        "mIoU": 100 * sum(iou[c] for c in present) / count if count else float("nan"),
        "fwIoU": 100 * sum(iou[c] * gt_px[c] / total for c in present),
        "mACC": 100 * sum(acc[c] for c in present) / len(present) if present else float("nan"),
        "pACC": 100 * tp.sum() / total if total else float("nan"),
        "IoU": [100 * v for v in iou],
        "ACC": [100 * v for v in acc],
    }


def compare_semseg(ours: dict, ref: dict) -> float:
    worst = 0.0
    for key in ("mIoU", "fwIoU", "mACC", "pACC"):
        assert_close(ours[key], ref[key], key)
        if not math.isnan(ref[key]):
            worst = max(worst, abs(ours[key] - ref[key]))
    for key in ("IoU", "ACC"):
        assert len(ours[key]) == len(ref[key])
        for c, (a, b) in enumerate(zip(ours[key], ref[key], strict=True)):
            assert_close(a, b, f"{key}[{c}]")
    return worst


def semseg_dataset(seed: int, num_classes: int = 12, ignore: int = 255):
    """Images of several sizes; GT uses a subset of classes, predictions a different overlapping subset."""
    rng = np.random.default_rng(seed)
    gt_classes = rng.choice(num_classes, size=num_classes - 3, replace=False)
    preds, gts = [], []
    for _ in range(5):
        h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        gt = blocky(rng, h, w, gt_classes, int(rng.integers(3, 9))).astype(np.int64)
        pred = np.roll(gt, shift=(int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), axis=(0, 1))
        noise = blocky(rng, h, w, np.arange(num_classes), 4)  # may use classes absent from the GT
        flip = blocky(rng, h, w, [False, False, False, True], 5)
        pred = np.where(flip, noise, pred)
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        gt[y0 : y0 + h // 3, x0 : x0 + w // 4] = ignore
        gt[rng.random((h, w)) < 0.02] = ignore
        preds.append(pred)
        gts.append(gt.astype(np.uint8))
    return preds, gts


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("denominator", ["gt_or_pred", "gt"])
def test_semseg_matches_reference_on_generated_cases(seed: int, denominator: str) -> None:
    preds, gts = semseg_dataset(seed)
    ev = SemanticSegmentationEvaluator(12, ignore_index=255, miou_denominator=denominator)
    for p, g in zip(preds, gts, strict=True):
        ev.update(p, g)
    compare_semseg(ev.compute(), reference_semseg(preds, gts, 12, 255, denominator))


def test_semseg_denominators_differ_when_a_class_is_only_predicted() -> None:
    gt = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 2, 1, 1]])
    legacy = SemanticSegmentationEvaluator(3, miou_denominator="gt_or_pred")
    modern = SemanticSegmentationEvaluator(3, miou_denominator="gt")
    legacy.update(pred, gt)
    modern.update(pred, gt)
    # class 0: IoU 1/2, class 1: IoU 1, class 2 predicted once but absent from the GT.
    assert legacy.compute()["mIoU"] == pytest.approx(100 * 1.5 / 3, abs=TOL)
    assert modern.compute()["mIoU"] == pytest.approx(100 * 1.5 / 2, abs=TOL)


def test_semseg_hand_computed() -> None:
    gt = np.array([[0, 0, 1, 255], [2, 2, 1, 255]])
    pred = np.array([[0, 1, 1, 2], [2, 0, 1, 2]])
    ev = SemanticSegmentationEvaluator(4, ignore_index=255, class_names=["a", "b", "c", "d"])
    ev.update(pred, gt)
    r = ev.compute()
    # Non-ignored pixels: 6. class 0: tp 1, gt 2, pred 2 -> IoU 1/3, acc 1/2; class 1: tp 2, gt 2, pred 3 ->
    # IoU 2/3, acc 1; class 2: tp 1, gt 2, pred 1 -> IoU 1/2, acc 1/2; class 3 absent everywhere.
    assert r["IoU-a"] == pytest.approx(100 / 3, abs=TOL)
    assert r["IoU-b"] == pytest.approx(200 / 3, abs=TOL)
    assert r["IoU-c"] == pytest.approx(50, abs=TOL)
    assert math.isnan(r["IoU-d"]) and math.isnan(r["ACC-d"])
    assert r["mIoU"] == pytest.approx(100 * (1 / 3 + 2 / 3 + 1 / 2) / 3, abs=TOL)
    assert r["fwIoU"] == pytest.approx(100 * (2 / 6 * 1 / 3 + 2 / 6 * 2 / 3 + 2 / 6 * 1 / 2), abs=TOL)
    assert r["mACC"] == pytest.approx(100 * 2 / 3, abs=TOL)
    assert r["pACC"] == pytest.approx(100 * 4 / 6, abs=TOL)


def test_semseg_all_ignored_and_empty_cases() -> None:
    ev = SemanticSegmentationEvaluator(3, ignore_index=255)
    gt = np.full((4, 5), 255, dtype=np.uint8)
    pred = np.ones((4, 5), dtype=np.int64)
    ev.update(pred, gt)
    r = ev.compute()
    ref = reference_semseg([pred], [gt], 3, 255, "gt_or_pred")
    compare_semseg(r, ref)
    assert math.isnan(r["mIoU"]) and math.isnan(r["pACC"]) and r["fwIoU"] == 0.0
    ev.update(np.zeros((0, 7), dtype=np.int64), np.zeros((0, 7), dtype=np.int64))  # empty image: no-op
    assert int(ev.conf_matrix.sum()) == 20


def test_semseg_no_ignore_index_and_torch_inputs_and_merge() -> None:
    preds, gts = semseg_dataset(7)
    gts = [np.where(g == 255, 0, g) for g in gts]
    whole = SemanticSegmentationEvaluator(12, ignore_index=None)
    part_a = SemanticSegmentationEvaluator(12, ignore_index=None)
    part_b = SemanticSegmentationEvaluator(12, ignore_index=None)
    for i, (p, g) in enumerate(zip(preds, gts, strict=True)):
        whole.update(torch.from_numpy(p), torch.from_numpy(g))
        (part_a if i % 2 else part_b).update(p.astype(np.int32), g)
    part_a.merge(part_b)
    assert torch.equal(whole.conf_matrix, part_a.conf_matrix)
    compare_semseg(whole.compute(), reference_semseg(preds, gts, 12, None, "gt_or_pred"))


def test_semseg_bad_input_errors() -> None:
    ev = SemanticSegmentationEvaluator(3)
    with pytest.raises(ValueError, match="differs from gt shape"):
        ev.update(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="pred holds class ids"):
        ev.update(np.full((2, 2), 3), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="neither classes"):
        ev.update(np.zeros((2, 2), int), np.full((2, 2), 7))
    with pytest.raises(TypeError, match="integer class ids"):
        ev.update(np.zeros((2, 2), np.float32), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="must be a \\(H, W\\)"):
        ev.update(np.zeros((1, 2, 2), int), np.zeros((1, 2, 2), int))
    with pytest.raises(ValueError, match="ignore_index"):
        SemanticSegmentationEvaluator(3, ignore_index=2)
    with pytest.raises(ValueError, match="num_classes"):
        SemanticSegmentationEvaluator(0)


# --------------------------------------------------------------------------------------------------- panoptic

THING_CATS = [1, 2, 3, 7]
STUFF_CATS = [10, 11, 12, 40]
CATEGORIES = {c: {"isthing": 1} for c in THING_CATS} | {c: {"isthing": 0} for c in STUFF_CATS}
CATEGORIES[99] = {"isthing": 1}  # never used: must be left out of every mean


def fresh_ids(rng: np.random.Generator, n: int) -> list[int]:
    """Distinct segment ids spread over the full 24-bit range panopticapi's PNG encoding allows."""
    return [int(v) for v in rng.choice(np.arange(1, 2**24, 9973), size=n, replace=False)]


def make_gt(rng: np.random.Generator, h: int, w: int, crowd_prob: float, void_rects: int):
    sem = blocky(rng, h, w, STUFF_CATS[:3] if rng.random() < 0.5 else STUFF_CATS, int(rng.integers(6, 14)))
    seg_map = np.zeros((h, w), np.int64)
    infos = []
    n_things = int(rng.integers(2, 8))
    all_ids = fresh_ids(rng, len(STUFF_CATS) + n_things)
    for sid, cat in zip(all_ids, STUFF_CATS, strict=False):
        seg_map[sem == cat] = sid
        infos.append({"id": sid, "category_id": cat, "iscrowd": 0})
    yy, xx = np.mgrid[:h, :w]
    for tid in all_ids[len(STUFF_CATS) :]:
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        ry, rx = rng.integers(3, max(4, h // 3)), rng.integers(3, max(4, w // 3))
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        seg_map[mask] = tid
        infos.append(
            {"id": tid, "category_id": int(rng.choice(THING_CATS)), "iscrowd": int(rng.random() < crowd_prob)}
        )
    for _ in range(void_rects):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        seg_map[y0 : y0 + rng.integers(2, h // 3), x0 : x0 + rng.integers(2, w // 3)] = 0
    present = set(np.unique(seg_map).tolist())
    infos = [s for s in infos if s["id"] in present]
    rng.shuffle(infos)
    return seg_map, infos


def make_pred(rng: np.random.Generator, gt_map: np.ndarray, gt_infos: list[dict]):
    h, w = gt_map.shape
    pred = np.zeros((h, w), np.int64)
    cats = {}
    ids = iter(fresh_ids(rng, 3 * len(gt_infos) + 20))
    for seg in gt_infos:
        u = rng.random()
        if u < 0.12:
            continue  # missed segment
        mask = np.roll(gt_map == seg["id"], (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), axis=(0, 1))
        cat = seg["category_id"]
        if u > 0.85:  # wrong category of the same kind
            cat = int(rng.choice(THING_CATS if cat in THING_CATS else STUFF_CATS))
        if 0.75 < u <= 0.85:  # split in two halves
            left = mask & (np.arange(w)[None, :] < w // 2)
            sid = next(ids)
            pred[left] = sid
            cats[sid] = cat
            mask = mask & ~left
        sid = next(ids)
        pred[mask] = sid
        cats[sid] = cat
    for _ in range(int(rng.integers(0, 4))):  # spurious segments, some of them on VOID / crowd pixels
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        sid = next(ids)
        pred[y0 : y0 + rng.integers(2, 10), x0 : x0 + rng.integers(2, 10)] = sid
        cats[sid] = int(rng.choice(THING_CATS + STUFF_CATS))
    if rng.random() < 0.3:
        pred[: h // 4] = 0  # unpredicted band
    present = set(np.unique(pred).tolist())
    infos = [
        {"id": sid, "category_id": cat, "isthing": cat in THING_CATS}
        for sid, cat in cats.items()
        if sid in present
    ]
    rng.shuffle(infos)
    return pred, infos


def panoptic_dataset(seed: int, n_images: int = 6, crowd_prob: float = 0.25):
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n_images):
        h, w = int(rng.integers(24, 56)), int(rng.integers(24, 56))
        gt, gt_infos = make_gt(rng, h, w, crowd_prob, int(rng.integers(0, 4)))
        pred, pred_infos = make_pred(rng, gt, gt_infos)
        images.append((pred, pred_infos, gt, gt_infos))
    return images


def id2rgb(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def run_panopticapi(images, categories, tmp: Path) -> dict:
    """Write the case as the COCO panoptic files detectron2 would write and score them with the independent
    file-based reference (`reference_pq.py`); where panopticapi is installed, also with its pq_compute,
    which must agree with the reference."""
    (tmp / "gt").mkdir()
    (tmp / "pred").mkdir()
    gt_anns, pred_anns = [], []
    for i, (pred, pred_infos, gt, gt_infos) in enumerate(images):
        name = f"{i:04d}.png"
        Image.fromarray(id2rgb(gt)).save(tmp / "gt" / name)
        Image.fromarray(id2rgb(pred)).save(tmp / "pred" / name)
        areas = dict(zip(*np.unique(gt, return_counts=True), strict=True))
        gt_segs = [dict(s, area=int(areas.get(s["id"], 0))) for s in gt_infos]
        gt_anns.append({"image_id": i, "file_name": name, "segments_info": gt_segs})
        pred_segs = [{"id": s["id"], "category_id": s["category_id"]} for s in pred_infos]
        pred_anns.append({"image_id": i, "file_name": name, "segments_info": pred_segs})
    cats = [{"id": c, "name": str(c), "isthing": int(info["isthing"])} for c, info in categories.items()]
    (tmp / "gt.json").write_text(json.dumps({"annotations": gt_anns, "categories": cats}))
    (tmp / "pred.json").write_text(json.dumps({"annotations": pred_anns, "categories": cats}))
    files = (str(tmp / "gt.json"), str(tmp / "pred.json"), str(tmp / "gt"), str(tmp / "pred"))
    reference = reference_pq.pq_compute(*files)
    try:
        from panopticapi import evaluation
    except ImportError:
        return reference
    with contextlib.redirect_stdout(io.StringIO()):
        official = evaluation.pq_compute(*files)
    for group in ("All", "Things", "Stuff"):
        assert official[group]["n"] == reference[group]["n"]
        for m in ("pq", "sq", "rq"):
            assert_close(official[group][m], reference[group][m], f"reference {group} {m}")
    for cat, vals in official["per_class"].items():
        for m in ("pq", "sq", "rq"):
            assert_close(vals[m], reference["per_class"][cat][m], f"reference class {cat} {m}")
    return reference


def evaluate_panoptic(images, categories) -> dict:
    ev = PanopticQualityEvaluator(categories)
    for pred, pred_infos, gt, gt_infos in images:
        ev.update(pred, pred_infos, gt, gt_infos)
    return ev.compute()


def compare_panoptic(ours: dict, ref: dict) -> float:
    worst = 0.0
    for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        assert ours[f"n{suffix}"] == ref[group]["n"], group
        for m in ("pq", "sq", "rq"):
            a, b = ours[f"{m.upper()}{suffix}"], 100 * ref[group][m]
            assert_close(a, b, f"{group} {m}")
            worst = max(worst, abs(a - b))
    assert set(ours["per_class"]) == set(ref["per_class"])
    for cat, vals in ref["per_class"].items():
        for m in ("pq", "sq", "rq"):
            a, b = ours["per_class"][cat][m.upper()], 100 * vals[m]
            assert_close(a, b, f"class {cat} {m}")
            worst = max(worst, abs(a - b))
    return worst


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_pq_matches_panopticapi_on_generated_cases(seed: int, tmp_path: Path) -> None:
    images = panoptic_dataset(seed)
    ours = evaluate_panoptic(images, CATEGORIES)
    ref = run_panopticapi(images, CATEGORIES, tmp_path)
    compare_panoptic(ours, ref)
    assert ours["n"] > 0 and ours["per_class"][99]["TP"] + ours["per_class"][99]["FP"] == 0


def test_pq_matches_panopticapi_with_empty_images_and_heavy_crowd(tmp_path: Path) -> None:
    images = panoptic_dataset(11, n_images=5, crowd_prob=0.7)
    pred, pred_infos, gt, gt_infos = images[0]
    images.append((np.zeros_like(gt), [], gt, gt_infos))  # no prediction at all
    pred_b, pred_infos_b, gt_b, _ = images[1]
    images.append((pred_b, pred_infos_b, np.zeros_like(gt_b), []))  # all-VOID ground truth
    # Two crowd regions of one category in one image.
    h, w = 30, 40
    gt_c = np.zeros((h, w), np.int64)
    gt_c[:, :10], gt_c[:, 10:20], gt_c[:, 20:] = 5, 6, 8
    gt_c_infos = [
        {"id": 5, "category_id": 2, "iscrowd": 1},
        {"id": 6, "category_id": 2, "iscrowd": 1},
        {"id": 8, "category_id": 10, "iscrowd": 0},
    ]
    pred_c = np.zeros((h, w), np.int64)
    # Only the crowd listed last counts for the FP rule: segment 1 (on the first crowd) stays a FP.
    pred_c[:, 2:10], pred_c[:, 12:20], pred_c[:5, 20:] = 1, 2, 3
    pred_c_infos = [{"id": 1, "category_id": 2}, {"id": 2, "category_id": 3}, {"id": 3, "category_id": 10}]
    images.append((pred_c, pred_c_infos, gt_c, gt_c_infos))
    ours = evaluate_panoptic(images, CATEGORIES)
    compare_panoptic(ours, run_panopticapi(images, CATEGORIES, tmp_path))


def test_pq_matches_panopticapi_on_original_model_outputs(tmp_path: Path) -> None:
    """Real Mask2Former panoptic outputs (fixture A1) scored against the probe panoptic maps as GT."""
    fixture = Path(__file__).parent / "fixtures" / "A1_coco_panoptic_r50"
    meta = json.loads((fixture / "meta.json").read_text())
    categories = {c: {"isthing": 1} for c in meta["thing_contiguous_ids"]}
    categories |= {c: {"isthing": 0} for c in meta["stuff_contiguous_ids"]}
    post, post_json = (
        np.load(fixture / "postprocessed.npz"),
        json.loads((fixture / "postprocessed.json").read_text()),
    )
    probe, probe_json = (
        np.load(fixture / "postproc_probe.npz"),
        json.loads((fixture / "postproc_probe.json").read_text()),
    )

    def segments(js: dict, j: int, crowd_every: int = 0) -> list[dict]:
        out = []
        for i, s in enumerate(js["images"][j]["segments_info"]):
            crowd = int(crowd_every > 0 and s["isthing"] and i % crowd_every == 0)
            out.append({"id": s["id"], "category_id": s["category_id"], "iscrowd": crowd})
        return out

    images = [
        (
            post["img0_panoptic_seg"],
            segments(post_json, 0),
            probe["img0_panoptic_seg"],
            segments(probe_json, 0),
        ),
        (
            post["img1_panoptic_seg"],
            segments(post_json, 1),
            probe["img1_panoptic_seg"],
            segments(probe_json, 1),
        ),
        (
            post["img0_panoptic_seg"],
            segments(post_json, 0),
            probe["img2_panoptic_seg"],
            segments(probe_json, 2),
        ),
        (
            probe["img0_panoptic_seg"],
            segments(probe_json, 0),
            probe["img0_panoptic_seg"],
            segments(probe_json, 0, 3),
        ),
    ]
    ours = evaluate_panoptic(images, categories)
    compare_panoptic(ours, run_panopticapi(images, categories, tmp_path))
    assert ours["n"] > 0 and sum(v["TP"] for v in ours["per_class"].values()) > 0


def test_pq_all_empty_is_nan_where_panopticapi_divides_by_zero(tmp_path: Path) -> None:
    gt = np.zeros((8, 8), np.int64)
    images = [(np.zeros_like(gt), [], gt, [])]
    ours = evaluate_panoptic(images, CATEGORIES)
    assert math.isnan(ours["PQ"]) and math.isnan(ours["SQ_th"]) and ours["n"] == 0
    with pytest.raises(ZeroDivisionError):
        run_panopticapi(images, CATEGORIES, tmp_path)


def test_pq_hand_computed_void_and_crowd_rules() -> None:
    cats = {1: {"isthing": 1}, 2: {"isthing": 0}}
    gt = np.zeros((10, 10), np.int64)
    gt[:, :4] = 10  # thing, 40 px
    gt[:, 4:8] = 20  # crowd of class 1, 40 px
    # columns 8..9 are VOID
    gt_infos = [{"id": 10, "category_id": 1, "iscrowd": 0}, {"id": 20, "category_id": 1, "iscrowd": 1}]
    pred = np.zeros((10, 10), np.int64)
    pred[:, 1:4] = 1  # 30 px inside the thing ...
    pred[:2, 8:] = 1  # ... plus 4 px on VOID: IoU = 30 / (34 + 40 - 30 - 4) = 0.75
    pred[:, 4:7] = 2  # class 1 on the crowd region: ignored
    pred[5:, 7:] = 3  # class 2: 15 px, 5 on the crowd (not its class), 10 on VOID -> 10/15 > 0.5, ignored
    pred[2:5, 7:] = 4  # class 2: 9 px, 3 on crowd, 6 on VOID -> 6/9 > 0.5, ignored
    pred[:2, 7] = 5  # class 1: 2 px on the crowd -> ignored
    pred_infos = [{"id": i, "category_id": c} for i, c in ((1, 1), (2, 1), (3, 2), (4, 2), (5, 1))]
    ev = PanopticQualityEvaluator(cats)
    ev.update(pred, pred_infos, gt, gt_infos)
    r = ev.compute()
    assert (r["per_class"][1]["TP"], r["per_class"][1]["FP"], r["per_class"][1]["FN"]) == (1, 0, 0)
    assert r["per_class"][1]["PQ"] == pytest.approx(75.0, abs=TOL)
    assert (r["per_class"][2]["TP"], r["per_class"][2]["FP"], r["per_class"][2]["FN"]) == (0, 0, 0)
    assert r["n"] == 1 and r["PQ"] == pytest.approx(75.0, abs=TOL) and math.isnan(r["PQ_st"])
    # A second image: a stuff prediction mostly on real ground truth is a FP; the missed thing a FN.
    gt2 = np.full((4, 4), 7, np.int64)
    pred2 = np.full((4, 4), 9, np.int64)
    ev.update(pred2, [{"id": 9, "category_id": 2}], gt2, [{"id": 7, "category_id": 1, "iscrowd": 0}])
    r = ev.compute()
    assert (r["per_class"][1]["TP"], r["per_class"][1]["FN"], r["per_class"][2]["FP"]) == (1, 1, 1)
    # class 1: PQ = 0.75 / (1 + 0.5); class 2: PQ = 0 -> mean 0.25; SQ mean (0.75 + 0) / 2; RQ (2/3 + 0) / 2.
    assert r["PQ"] == pytest.approx(25.0, abs=TOL)
    assert r["SQ"] == pytest.approx(37.5, abs=TOL)
    assert r["RQ"] == pytest.approx(100 / 3, abs=TOL)


def test_pq_exact_halves_are_not_enough() -> None:
    cats = {1: {"isthing": 1}, 2: {"isthing": 1}}
    ev = PanopticQualityEvaluator(cats)
    gt = np.array([[1, 1, 0, 0]])
    pred = np.array([[0, 2, 0, 0]])  # 1 px inside a 2 px segment: IoU exactly 1/2 is no match
    ev.update(pred, [{"id": 2, "category_id": 1}], gt, [{"id": 1, "category_id": 1, "iscrowd": 0}])
    gt = np.array([[5, 0]])
    pred = np.array([[6, 6]])  # other category, exactly half of it on VOID: still a false positive
    ev.update(pred, [{"id": 6, "category_id": 2}], gt, [{"id": 5, "category_id": 1, "iscrowd": 0}])
    pc = ev.compute()["per_class"]
    assert (pc[1]["TP"], pc[1]["FP"], pc[1]["FN"]) == (0, 1, 2)
    assert (pc[2]["TP"], pc[2]["FP"], pc[2]["FN"]) == (0, 1, 0)


def test_pq_merge_and_torch_inputs() -> None:
    images = panoptic_dataset(5)
    whole = evaluate_panoptic(images, CATEGORIES)
    a, b = PanopticQualityEvaluator(CATEGORIES), PanopticQualityEvaluator(CATEGORIES)
    for i, (pred, pi, gt, gi) in enumerate(images):
        (a if i % 2 else b).update(torch.from_numpy(pred).int(), pi, torch.from_numpy(gt), gi)
    a.merge(b)
    merged = a.compute()
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "n"):
        assert_close(float(merged[key]), float(whole[key]), key)


def test_pq_bad_input_errors() -> None:
    cats = {1: {"isthing": 1}}
    gt = np.array([[1, 0]])
    gi = [{"id": 1, "category_id": 1, "iscrowd": 0}]
    ev = PanopticQualityEvaluator(cats)
    with pytest.raises(ValueError, match="not listed in pred_segments"):
        ev.update(np.array([[3, 0]]), [], gt, gi)
    with pytest.raises(ValueError, match="no pixel"):
        ev.update(np.array([[3, 0]]), [{"id": 3, "category_id": 1}, {"id": 4, "category_id": 1}], gt, gi)
    with pytest.raises(ValueError, match="not in categories"):
        ev.update(np.array([[3, 0]]), [{"id": 3, "category_id": 5}], gt, gi)
    with pytest.raises(ValueError, match="not listed in gt_segments"):
        ev.update(np.array([[0, 0]]), [], np.array([[1, 2]]), gi)
    with pytest.raises(ValueError, match="twice"):
        ev.update(np.array([[0, 0]]), [], gt, gi + gi)
    with pytest.raises(ValueError, match="reserved for VOID"):
        ev.update(np.array([[0, 0]]), [{"id": 0, "category_id": 1}], gt, gi)
    with pytest.raises(ValueError, match="shape"):
        ev.update(np.array([[0, 0, 0]]), [], gt, gi)
    with pytest.raises(TypeError, match="integer segment ids"):
        ev.update(np.array([[0.0, 0.0]]), [], gt, gi)
    with pytest.raises(ValueError, match="isthing"):
        PanopticQualityEvaluator({1: {}})
    assert int(ev.tp.sum() + ev.fp.sum() + ev.fn.sum()) == 0  # failed updates left no partial counts


# --------------------------------------------------------------------------------------------------- instance

INST_CATS = [1, 3, 4, 9]


def stack_masks(masks: list[np.ndarray], h: int, w: int) -> np.ndarray:
    return np.stack(masks) if masks else np.zeros((0, h, w), bool)


def instance_dataset(seed: int):
    """Images with ellipse / rectangle instances of small, medium and large sizes, crowds, FPs, misses."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(6):
        h, w = int(rng.integers(110, 200)), int(rng.integers(110, 200))
        yy, xx = np.mgrid[:h, :w]
        gt_masks, gt_labels, crowd = [], [], []
        for _ in range(int(rng.integers(0 if i == 0 else 1, 7))):
            cy, cx = rng.integers(0, h), rng.integers(0, w)
            ry, rx = rng.integers(2, h // 2), rng.integers(2, w // 2)
            m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            if m.sum() == 0:
                continue
            gt_masks.append(m)
            gt_labels.append(int(rng.choice(INST_CATS[:3])))  # category 9 never has ground truth
            crowd.append(int(rng.random() < 0.15))
        pred_masks, scores, labels = [], [], []
        if i != 1:  # image 1 has no prediction
            for m, c in zip(gt_masks, gt_labels, strict=True):
                if rng.random() < 0.15:
                    continue
                shifted = np.roll(m, (int(rng.integers(-4, 5)), int(rng.integers(-4, 5))), axis=(0, 1))
                pred_masks.append(shifted)
                labels.append(c if rng.random() < 0.85 else int(rng.choice(INST_CATS)))
                scores.append(float(rng.random()))
            for _ in range(int(rng.integers(0, 4))):
                m = np.zeros((h, w), bool)
                y0, x0 = rng.integers(0, h), rng.integers(0, w)
                m[y0 : y0 + rng.integers(1, 40), x0 : x0 + rng.integers(1, 40)] = True
                pred_masks.append(m)
                labels.append(int(rng.choice(INST_CATS)))
                scores.append(float(rng.random()))
        pm, gm = stack_masks(pred_masks, h, w), stack_masks(gt_masks, h, w)
        images.append((pm, np.array(scores), np.array(labels, int), gm, gt_labels, crowd))
    return images


def run_pycocotools(images) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """COCO json built here from the masks, then COCOeval(segm) exactly as detectron2 calls it."""
    mask_utils = pytest.importorskip("pycocotools.mask")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    imgs, anns, results = [], [], []
    for img_id, (pm, ps, pl, gm, gl, gc) in enumerate(images, start=100):
        imgs.append({"id": img_id, "height": gm.shape[1], "width": gm.shape[2], "file_name": f"{img_id}.png"})
        for m, c, k in zip(gm, gl, gc, strict=True):
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            anns.append(
                {
                    "id": 1000 + len(anns),
                    "image_id": img_id,
                    "category_id": c,
                    "iscrowd": k,
                    "segmentation": rle,
                    "area": float(m.sum()),
                }
            )
        for m, s, c in zip(pm, ps, pl, strict=True):
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            results.append(
                {"image_id": img_id, "category_id": int(c), "score": float(s), "segmentation": rle}
            )
    cats = [{"id": c, "name": f"c{c}"} for c in INST_CATS]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = json.loads(json.dumps({"images": imgs, "annotations": anns, "categories": cats}))
        gt.createIndex()
        dt = gt.loadRes(json.loads(json.dumps(results)))
        ev = COCOeval(gt, dt, "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats, ev.eval["precision"], list(ev.params.catIds)


def evaluate_instances(images) -> dict:
    ev = InstanceSegmentationEvaluator(INST_CATS)
    for pm, ps, pl, gm, gl, gc in images:
        ev.update(pm, ps, pl, gm, gl, gc)
    return ev.compute()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_ap_matches_pycocotools_on_generated_cases(seed: int) -> None:
    images = instance_dataset(seed)
    ours = evaluate_instances(images)
    stats, precision, cat_ids = run_pycocotools(images)
    for i, key in enumerate(("AP", "AP50", "AP75", "APs", "APm", "APl")):
        assert_close(ours[key], 100 * stats[i] if stats[i] >= 0 else float("nan"), key)
    for k, cat in enumerate(cat_ids):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        assert_close(ours[f"AP-{cat}"], 100 * float(p.mean()) if p.size else float("nan"), f"AP-{cat}")
    assert math.isnan(ours["AP-9"]) and not math.isnan(ours["AP"])


def test_mask_ap_torch_inputs_and_merge() -> None:
    images = instance_dataset(4)
    whole = evaluate_instances(images)
    a, b = InstanceSegmentationEvaluator(INST_CATS), InstanceSegmentationEvaluator(INST_CATS)
    for i, (pm, ps, pl, gm, gl, gc) in enumerate(images):
        target = a if i < 3 else b
        target.update(
            torch.from_numpy(pm),
            torch.from_numpy(ps).float(),
            torch.from_numpy(pl),
            torch.from_numpy(gm),
            torch.tensor(gl, dtype=torch.long),
            torch.tensor(gc),
        )
    a.merge(b)
    merged = a.compute()
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert_close(merged[key], whole[key], key)


def test_rle_conversion_hand_computed() -> None:
    mask_utils = pytest.importorskip("pycocotools.mask")
    m = np.array([[0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=bool)
    # Column-major runs: 3 background, 2 foreground, 1 bg, 1 fg, 4 bg, 1 fg.
    expected = mask_utils.frPyObjects({"size": [3, 4], "counts": [3, 2, 1, 1, 4, 1]}, 3, 4)
    (rle,) = masks_to_rle(torch.from_numpy(m)[None])
    assert rle["size"] == [3, 4]
    assert isinstance(rle["counts"], str) and rle["counts"].encode() == expected["counts"]
    assert np.array_equal(mask_utils.decode(rle), m.astype(np.uint8))
    assert int(mask_utils.area(rle)) == 4
    assert masks_to_rle(np.zeros((0, 3, 4), bool)) == []
    full = masks_to_rle(np.ones((2, 2, 3), np.uint8))
    assert [r["counts"].encode() for r in full] == [
        mask_utils.frPyObjects({"size": [2, 3], "counts": [0, 6]}, 2, 3)["counts"]
    ] * 2


def test_mask_ap_hand_computed() -> None:
    pytest.importorskip("pycocotools")
    gt = np.zeros((1, 20, 20), bool)
    gt[0, 2:12, 2:12] = True  # 100 px, a "small" object
    pred = np.zeros((1, 20, 20), bool)
    pred[0, 2:12, 2:10] = True
    pred[0, 12:14, 2:4] = True  # 84 px, intersection 80, union 104 -> IoU 0.769...
    ev = InstanceSegmentationEvaluator([5])
    ev.update(pred, [0.9], [5], gt, [5])
    r = ev.compute()
    # Matched at IoU thresholds 0.50 .. 0.75 (6 of 10), each with precision 1 at every recall point.
    assert r["AP"] == pytest.approx(60.0, abs=TOL)
    assert r["AP50"] == pytest.approx(100.0, abs=TOL) and r["AP75"] == pytest.approx(100.0, abs=TOL)
    assert r["APs"] == pytest.approx(60.0, abs=TOL) and math.isnan(r["APm"]) and math.isnan(r["APl"])
    # A detection on a crowd region is neither a hit nor a false positive; the crowd is no miss.
    ev2 = InstanceSegmentationEvaluator([5])
    ev2.update(np.concatenate([gt, gt]), [0.9, 0.95], [5, 5], np.concatenate([gt, gt]), [5, 5], [0, 1])
    assert ev2.compute()["AP"] == pytest.approx(100.0, abs=TOL)


def test_mask_ap_without_predictions_is_nan() -> None:
    ev = InstanceSegmentationEvaluator([1, 2])
    gt = np.ones((1, 5, 5), bool)
    ev.update(np.zeros((0, 5, 5), bool), [], [], gt, [1])
    r = ev.compute()
    assert all(math.isnan(v) for v in r.values()) and set(r) >= {"AP", "AP50", "APl", "AP-1", "AP-2"}


def test_mask_ap_bad_input_errors() -> None:
    ev = InstanceSegmentationEvaluator([1])
    m = np.ones((1, 4, 4), bool)
    with pytest.raises(ValueError, match="binary"):
        ev.update(np.full((1, 4, 4), 0.7), [0.5], [1], m, [1])
    with pytest.raises(ValueError, match="not in category_ids"):
        ev.update(m, [0.5], [2], m, [1])
    with pytest.raises(ValueError, match="scores"):
        ev.update(m, [0.5, 0.1], [1], m, [1])
    with pytest.raises(ValueError, match="per mask"):
        ev.update(np.ones((1, 4, 5), bool), [0.5], [1], m, [1])
    with pytest.raises(ValueError, match="iscrowd"):
        ev.update(m, [0.5], [1], m, [1], gt_iscrowd=[0, 1])
    with pytest.raises(ValueError, match="\\(N, H, W\\)"):
        ev.update(np.ones((4, 4), bool), [0.5], [1], m, [1])
    assert ev.images == []
