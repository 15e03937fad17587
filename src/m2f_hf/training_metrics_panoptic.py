"""Panoptic quality (PQ / SQ / RQ) with the algorithm of the COCO panoptic API (``panopticapi.pq_compute``).

Mask2Former's panoptic numbers come from detectron2's ``COCOPanopticEvaluator``, which writes the predictions
to PNG files and runs panopticapi on them. This module applies the same per-image rules directly to in-memory
id maps, so no files are needed:

* segment id 0 is VOID (unlabelled ground truth / no prediction);
* a ground-truth and a predicted segment of the same category match when their IoU is strictly above 0.5, the
  union leaving out the predicted pixels that fall on ground-truth VOID; crowd ground truth never matches;
* unmatched non-crowd ground-truth segments are false negatives;
* an unmatched predicted segment is a false positive unless more than half of its area lies on VOID plus the
  crowd region of its category (when an image lists several crowd regions of one category, the last one listed
  is the one used, as in panopticapi).

Per category the state is (sum of matched IoUs, TP, FP, FN), summed over images; evaluators from several
processes merge by adding these arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray
VOID = 0


def _as_id_map(x: ArrayLike, name: str) -> np.ndarray:
    """(H, W) non-negative integer segment-id map as an int64 numpy array."""
    if isinstance(x, torch.Tensor):
        if x.is_floating_point() or x.is_complex():
            raise TypeError(f"{name} must hold integer segment ids, got torch dtype {x.dtype}")
        x = x.detach().cpu().numpy()
    elif not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"{name} must hold integer segment ids, got numpy dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be a (H, W) id map, got shape {x.shape}")
    x = x.astype(np.int64, copy=False)
    if x.size and int(x.min()) < 0:
        raise ValueError(f"{name} holds negative segment ids; use 0 for VOID")
    return x


def _segments_by_id(segments: Sequence[Mapping[str, Any]], name: str, need_crowd: bool) -> dict[int, dict]:
    """Index a segments_info list by id, checking the fields panopticapi reads."""
    out: dict[int, dict] = {}
    for seg in segments:
        try:
            seg_id = int(seg["id"])
            cat = int(seg["category_id"])
        except KeyError as e:
            raise ValueError(f"every entry of {name} needs 'id' and 'category_id', missing {e}") from None
        if seg_id == VOID:
            raise ValueError(f"{name} lists a segment with id 0, which is reserved for VOID")
        if seg_id in out:
            raise ValueError(f"{name} lists segment id {seg_id} twice")
        crowd = bool(int(seg.get("iscrowd", 0))) if need_crowd else False
        out[seg_id] = {"category_id": cat, "iscrowd": crowd}
    return out


class PanopticQualityEvaluator:
    """Accumulates panopticapi's per-category PQ statistics over images.

    Args:
        categories: category id -> info with an ``"isthing"`` flag (bool or 0/1), in the order panopticapi's
            ground-truth JSON would list them. Every category id used by a segment must be here.
    """

    def __init__(self, categories: Mapping[int, Mapping[str, Any]]) -> None:
        if not categories:
            raise ValueError("categories is empty")
        self.category_ids: list[int] = []
        self.isthing: list[bool] = []
        for cat_id, info in categories.items():
            if "isthing" not in info:
                raise ValueError(f"category {cat_id} has no 'isthing' flag")
            self.category_ids.append(int(cat_id))
            self.isthing.append(int(info["isthing"]) == 1)
        self._index = {c: i for i, c in enumerate(self.category_ids)}
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        n = len(self.category_ids)
        self.iou_sum = np.zeros(n, dtype=np.float64)
        self.tp = np.zeros(n, dtype=np.int64)
        self.fp = np.zeros(n, dtype=np.int64)
        self.fn = np.zeros(n, dtype=np.int64)

    def _cat_index(self, cat: int, what: str) -> int:
        if cat not in self._index:
            raise ValueError(f"{what} has category_id {cat}, which is not in categories")
        return self._index[cat]

    def update(
        self,
        pred_panoptic: ArrayLike,
        pred_segments: Sequence[Mapping[str, Any]],
        gt_panoptic: ArrayLike,
        gt_segments: Sequence[Mapping[str, Any]],
    ) -> None:
        """Add one image.

        Args:
            pred_panoptic: (H, W) predicted segment ids, 0 = no segment.
            pred_segments: ``{"id", "category_id"}`` for every non-zero id of ``pred_panoptic`` (extra keys
                such as ``"isthing"`` are ignored). Like panopticapi, a listed segment with no pixel is an
                error.
            gt_panoptic: (H, W) ground-truth segment ids at the same resolution, 0 = VOID.
            gt_segments: ``{"id", "category_id", "iscrowd"}`` for every non-zero id of ``gt_panoptic``.
        """
        pred = _as_id_map(pred_panoptic, "pred_panoptic")
        gt = _as_id_map(gt_panoptic, "gt_panoptic")
        if pred.shape != gt.shape:
            raise ValueError(f"pred_panoptic shape {pred.shape} differs from gt_panoptic shape {gt.shape}")
        pred_info = _segments_by_id(pred_segments, "pred_segments", need_crowd=False)
        gt_info = _segments_by_id(gt_segments, "gt_segments", need_crowd=True)
        pred_cat = {
            sid: self._cat_index(s["category_id"], f"predicted segment {sid}") for sid, s in pred_info.items()
        }
        gt_cat = {
            sid: self._cat_index(s["category_id"], f"ground-truth segment {sid}")
            for sid, s in gt_info.items()
        }

        pred_ids, pred_inv = np.unique(pred.reshape(-1), return_inverse=True)
        gt_ids, gt_inv = np.unique(gt.reshape(-1), return_inverse=True)
        for ids, info, what, hint in (
            (pred_ids, pred_info, "pred_panoptic", "pred_segments"),
            (gt_ids, gt_info, "gt_panoptic", "gt_segments (set unlabelled pixels to 0 = VOID)"),
        ):
            unknown = [int(i) for i in ids if i != VOID and int(i) not in info]
            if unknown:
                raise ValueError(f"{what} holds segment ids {unknown[:10]} that are not listed in {hint}")
        missing = sorted(set(pred_info) - {int(i) for i in pred_ids})
        if missing:
            raise ValueError(f"pred_segments lists ids {missing[:10]} that have no pixel in pred_panoptic")

        # Intersection of every (gt id, pred id) pair present in the image.
        n_pred = len(pred_ids)
        inter = np.bincount(
            gt_inv.reshape(-1) * n_pred + pred_inv.reshape(-1), minlength=len(gt_ids) * n_pred
        )
        inter = inter.reshape(len(gt_ids), n_pred)
        pred_area = inter.sum(axis=0)
        gt_area = inter.sum(axis=1)
        gt_row = {int(g): r for r, g in enumerate(gt_ids)}
        void_row = inter[gt_row[VOID]] if VOID in gt_row else np.zeros(n_pred, dtype=np.int64)

        matched_gt: set[int] = set()
        matched_pred: set[int] = set()
        for r, c in zip(*np.nonzero(inter), strict=True):
            g, p = int(gt_ids[r]), int(pred_ids[c])
            if g == VOID or p == VOID or gt_info[g]["iscrowd"] or pred_cat[p] != gt_cat[g]:
                continue
            union = pred_area[c] + gt_area[r] - inter[r, c] - void_row[c]
            iou = inter[r, c] / union
            if iou > 0.5:
                k = gt_cat[g]
                self.tp[k] += 1
                self.iou_sum[k] += iou
                matched_gt.add(g)
                matched_pred.add(p)

        crowd_of_cat: dict[int, int] = {}
        for g, info in gt_info.items():
            if g in matched_gt:
                continue
            if info["iscrowd"]:
                crowd_of_cat[gt_cat[g]] = g
                continue
            self.fn[gt_cat[g]] += 1

        for c, p in enumerate(pred_ids):
            p = int(p)
            if p == VOID or p in matched_pred:
                continue
            k = pred_cat[p]
            ignored = int(void_row[c])
            crowd = crowd_of_cat.get(k)
            if crowd is not None and crowd in gt_row:
                ignored += int(inter[gt_row[crowd], c])
            if ignored / pred_area[c] > 0.5:
                continue
            self.fp[k] += 1

    def merge(self, other: PanopticQualityEvaluator) -> None:
        """Add the statistics of an evaluator from another process (same categories)."""
        if not isinstance(other, PanopticQualityEvaluator):
            raise TypeError(f"can only merge a PanopticQualityEvaluator, got {type(other).__name__}")
        if other.category_ids != self.category_ids or other.isthing != self.isthing:
            raise ValueError("cannot merge evaluators built with different categories")
        self.iou_sum += other.iou_sum
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn

    def _average(self, select: np.ndarray) -> tuple[float, float, float, int]:
        """Mean PQ/SQ/RQ (fractions) over the selected categories that have any TP, FP or FN."""
        pq = sq = rq = 0.0
        n = 0
        for k in np.flatnonzero(select):
            tp, fp, fn = int(self.tp[k]), int(self.fp[k]), int(self.fn[k])
            if tp + fp + fn == 0:
                continue
            n += 1
            denom = tp + 0.5 * fp + 0.5 * fn
            pq += self.iou_sum[k] / denom
            sq += self.iou_sum[k] / tp if tp else 0.0
            rq += tp / denom
        if n == 0:
            return float("nan"), float("nan"), float("nan"), 0
        return float(pq / n), float(sq / n), float(rq / n), n

    def compute(self) -> dict[str, Any]:
        """PQ, SQ, RQ in percent over all, thing (``_th``) and stuff (``_st``) categories (detectron2 keys).

        A category with no TP, FP or FN anywhere does not enter the means (panopticapi's rule); a group
        with no such category gets NaN (panopticapi would divide by zero). ``per_class`` maps each category
        id to its PQ / SQ / RQ in percent (0 for a category that never occurred, as panopticapi reports)
        and its counts.
        """
        thing = np.array(self.isthing, dtype=bool)
        res: dict[str, Any] = {}
        for suffix, select in (("", np.ones_like(thing)), ("_th", thing), ("_st", ~thing)):
            pq, sq, rq, n = self._average(select)
            res[f"PQ{suffix}"] = 100.0 * pq
            res[f"SQ{suffix}"] = 100.0 * sq
            res[f"RQ{suffix}"] = 100.0 * rq
            res[f"n{suffix}"] = n
        per_class: dict[int, dict[str, float | int]] = {}
        for k, cat in enumerate(self.category_ids):
            tp, fp, fn = int(self.tp[k]), int(self.fp[k]), int(self.fn[k])
            if tp + fp + fn == 0:
                pq = sq = rq = 0.0
            else:
                denom = tp + 0.5 * fp + 0.5 * fn
                pq = float(self.iou_sum[k] / denom)
                sq = float(self.iou_sum[k] / tp) if tp else 0.0
                rq = tp / denom
            per_class[cat] = {
                "PQ": 100.0 * pq,
                "SQ": 100.0 * sq,
                "RQ": 100.0 * rq,
                "TP": tp,
                "FP": fp,
                "FN": fn,
            }
        res["per_class"] = per_class
        return res
