"""An independent, file-based reference for panoptic quality: the COCO panoptic API's `pq_compute` rules
written out from its documented algorithm (Kirillov et al., "Panoptic Segmentation", and the panopticapi
README), reading the same rgb-encoded PNG + JSON files. The metric tests use it as their reference PQ, so
they need no `panopticapi` install (whose metadata pins numpy < 2); when panopticapi is installed the tests
check this reference against it as well.

Rules: segment ids are R + 256 G + 256² B of the PNGs, 0 is VOID. A prediction and a non-crowd ground
truth segment of the same category match when IoU > 0.5, where the union leaves out the prediction's
pixels on VOID. Unmatched non-crowd ground truth segments are FN. An unmatched prediction is a FP unless
more than half of it lies on VOID plus the crowd region of its category (the crowd segment listed last
for that category in the image). Per category PQ = Σ IoU / (TP + FP/2 + FN/2), SQ = Σ IoU / TP,
RQ = TP / (TP + FP/2 + FN/2); the group means are over categories with any TP, FP or FN (a group with
none divides by zero, as panopticapi does); categories with none report 0.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image


def _ids(path: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def _image_stats(gt: np.ndarray, gt_infos: list[dict], pred: np.ndarray, pred_infos: list[dict], stats):
    gt_segments = {s["id"]: s for s in gt_infos}
    pred_segments = {s["id"]: dict(s) for s in pred_infos}
    pred_ids, pred_counts = np.unique(pred, return_counts=True)
    for segment_id, count in zip(pred_ids.tolist(), pred_counts.tolist(), strict=True):
        if segment_id == 0:
            continue
        if segment_id not in pred_segments:
            raise KeyError(f"segment {segment_id} is in the PNG but not in the JSON")
        pred_segments[segment_id]["area"] = count
    missing = [i for i, s in pred_segments.items() if "area" not in s]
    if missing:
        raise KeyError(f"segments {missing} are in the JSON but not in the PNG")
    # pixel counts of every (gt id, pred id) pair
    pairs: dict[tuple[int, int], int] = defaultdict(int)
    keys, counts = np.unique(np.stack([gt.ravel(), pred.ravel()], axis=1), axis=0, return_counts=True)
    for (g, p), count in zip(keys.tolist(), counts.tolist(), strict=True):
        pairs[(g, p)] = count

    matched_gt, matched_pred = set(), set()
    for (g, p), inter in pairs.items():
        if g not in gt_segments or p not in pred_segments:
            continue
        gs, ps = gt_segments[g], pred_segments[p]
        if gs["iscrowd"] == 1 or gs["category_id"] != ps["category_id"]:
            continue
        union = ps["area"] + gs["area"] - inter - pairs.get((0, p), 0)
        iou = inter / union
        if iou > 0.5:
            stat = stats[gs["category_id"]]
            stat["tp"] += 1
            stat["iou"] += iou
            matched_gt.add(g)
            matched_pred.add(p)
    crowd_of_category = {}
    for g, gs in gt_segments.items():
        if g in matched_gt:
            continue
        if gs["iscrowd"] == 1:
            crowd_of_category[gs["category_id"]] = g
            continue
        stats[gs["category_id"]]["fn"] += 1
    for p, ps in pred_segments.items():
        if p in matched_pred:
            continue
        ignored = pairs.get((0, p), 0)
        if ps["category_id"] in crowd_of_category:
            ignored += pairs.get((crowd_of_category[ps["category_id"]], p), 0)
        if ignored / ps["area"] > 0.5:
            continue
        stats[ps["category_id"]]["fp"] += 1


def _average(categories: list[dict], stats, isthing: bool | None):
    pq = sq = rq = 0.0
    n = 0
    per_class = {}
    for category in categories:
        cid = category["id"]
        if isthing is not None and bool(category["isthing"]) != isthing:
            continue
        s = stats[cid]
        tp, fp, fn, iou = s["tp"], s["fp"], s["fn"], s["iou"]
        if tp + fp + fn == 0:
            per_class[cid] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
            continue
        n += 1
        denominator = tp + 0.5 * fp + 0.5 * fn
        per_class[cid] = {"pq": iou / denominator, "sq": iou / tp if tp else 0.0, "rq": tp / denominator}
        pq, sq, rq = pq + per_class[cid]["pq"], sq + per_class[cid]["sq"], rq + per_class[cid]["rq"]
    return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class


def pq_compute(gt_json: str | Path, pred_json: str | Path, gt_folder: str | Path, pred_folder: str | Path):
    """{"All" / "Things" / "Stuff": {"pq", "sq", "rq", "n"}, "per_class": {id: {"pq", "sq", "rq"}}}, in
    [0, 1], from COCO panoptic files (the layout of panopticapi's `pq_compute`)."""
    gt_data = json.loads(Path(gt_json).read_text())
    pred_data = json.loads(Path(pred_json).read_text())
    predictions = {a["image_id"]: a for a in pred_data["annotations"]}
    categories = gt_data["categories"]
    stats = defaultdict(lambda: {"tp": 0, "fp": 0, "fn": 0, "iou": 0.0})
    for gt_ann in gt_data["annotations"]:
        pred_ann = predictions[gt_ann["image_id"]]
        _image_stats(
            _ids(Path(gt_folder) / gt_ann["file_name"]),
            gt_ann["segments_info"],
            _ids(Path(pred_folder) / pred_ann["file_name"]),
            pred_ann["segments_info"],
            stats,
        )
    results = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        results[name], per_class = _average(categories, stats, isthing)
        if name == "All":
            results["per_class"] = per_class
    return results
