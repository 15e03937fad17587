"""COCO mask AP for instance segmentation, computed by pycocotools' ``COCOeval`` (the reference tool).

detectron2's ``COCOEvaluator`` (which produced Mask2Former's instance numbers) encodes every predicted mask as
a COCO run-length encoding, drops the boxes so that the small / medium / large split uses the *mask* area, and
runs ``COCOeval(iouType="segm")`` with the default parameters (IoU 0.50:0.05:0.95, 100 detections per image).
This module does the same with in-memory ground truth: each image keeps its RLE-encoded ground truth and
detections, so evaluators of several processes merge by concatenating their image lists.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray
AP_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def load_mask_utils():
    try:
        from pycocotools import mask as mask_utils
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "COCO mask AP needs pycocotools (pip install pycocotools, or the m2f_hf 'train' extra)"
        ) from e
    return mask_utils


def to_numpy(x: ArrayLike | Sequence, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (list, tuple)):
        return np.asarray(x)
    raise TypeError(f"{name} must be a torch.Tensor, numpy.ndarray or sequence, got {type(x).__name__}")


def as_masks(x: ArrayLike, name: str) -> np.ndarray:
    """(N, H, W) binary masks as uint8; integer/bool 0/1 values only (threshold logits before calling)."""
    m = to_numpy(x, name)
    if m.ndim != 3:
        raise ValueError(f"{name} must be (N, H, W) binary masks, got shape {m.shape}")
    if m.dtype != np.bool_:
        if not np.issubdtype(m.dtype, np.integer) and not np.issubdtype(m.dtype, np.floating):
            raise TypeError(f"{name} must be boolean or 0/1 masks, got dtype {m.dtype}")
        if m.size and not np.isin(m, (0, 1)).all():
            raise ValueError(f"{name} must be binary (0/1); threshold mask logits or probabilities first")
    return m.astype(np.uint8)


def masks_to_rle(masks: ArrayLike) -> list[dict[str, Any]]:
    """Encode (N, H, W) binary masks as COCO compressed RLEs (``counts`` as a str, JSON-serialisable).

    COCO run lengths go down the columns (Fortran order), alternating background / foreground and
    starting with background, which is why the masks are handed to pycocotools as a Fortran-ordered
    (H, W, N) array.
    """
    m = as_masks(masks, "masks")
    rles = load_mask_utils().encode(np.asfortranarray(m.transpose(1, 2, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


class InstanceSegmentationEvaluator:
    """Collects per-image predictions and ground truth, then runs COCO mask AP over all of them.

    Args:
        category_ids: the dataset's category ids (those of the ground truth; predictions with any other label
            are an error). ``COCOeval`` averages over those with ground truth.
        class_names: optional names aligned with ``category_ids`` for ``AP-<name>`` keys; by default the keys
            are ``AP-<category id>``.
    """

    def __init__(self, category_ids: Sequence[int], class_names: Sequence[str] | None = None) -> None:
        ids = [int(c) for c in category_ids]
        if not ids:
            raise ValueError("category_ids is empty")
        if len(set(ids)) != len(ids):
            raise ValueError("category_ids holds duplicates")
        if class_names is not None and len(class_names) != len(ids):
            raise ValueError(f"class_names has {len(class_names)} names for {len(ids)} categories")
        self.category_ids = ids
        self.class_names = list(class_names) if class_names is not None else [str(c) for c in ids]
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.images: list[dict[str, Any]] = []

    def update(
        self,
        pred_masks: ArrayLike,
        pred_scores: ArrayLike | Sequence[float],
        pred_labels: ArrayLike | Sequence[int],
        gt_masks: ArrayLike,
        gt_labels: ArrayLike | Sequence[int],
        gt_iscrowd: ArrayLike | Sequence[int] | None = None,
        gt_areas: ArrayLike | Sequence[float] | None = None,
    ) -> None:
        """Add one image at its original resolution.

        Args:
            pred_masks: (N, H, W) binary predicted masks (N may be 0: pass a (0, H, W) array).
            pred_scores: (N,) confidence of each prediction.
            pred_labels: (N,) category id of each prediction.
            gt_masks: (M, H, W) binary ground-truth masks (M may be 0: pass a (0, H, W) array).
            gt_labels: (M,) category ids.
            gt_iscrowd: (M,) crowd flags (default all 0); crowd regions are matched as COCO does (never
                counted as misses, detections on them ignored).
            gt_areas: (M,) areas used for the small / medium / large split; default the mask pixel counts
                (COCO annotation files store the polygon area instead: pass it to reproduce them exactly).
        """
        mask_utils = load_mask_utils()
        pm = as_masks(pred_masks, "pred_masks")
        gm = as_masks(gt_masks, "gt_masks")
        if pm.shape[1:] != gm.shape[1:]:
            raise ValueError(
                f"pred_masks are {pm.shape[1:]} per mask but gt_masks are {gm.shape[1:]}; pass (0, H, W) "
                "arrays for images without predictions / ground truth"
            )
        height, width = gm.shape[1:]
        scores = to_numpy(pred_scores, "pred_scores").astype(np.float64).reshape(-1)
        labels = to_numpy(pred_labels, "pred_labels").reshape(-1)
        g_labels = to_numpy(gt_labels, "gt_labels").reshape(-1)
        n, m = pm.shape[0], gm.shape[0]
        if scores.shape[0] != n or labels.shape[0] != n:
            raise ValueError(f"{n} predicted masks but {scores.shape[0]} scores and {labels.shape[0]} labels")
        if g_labels.shape[0] != m:
            raise ValueError(f"{m} ground-truth masks but {g_labels.shape[0]} labels")
        if not np.isfinite(scores).all():
            raise ValueError("pred_scores holds NaN or infinite values")
        crowd = (
            np.zeros(m, dtype=np.int64)
            if gt_iscrowd is None
            else to_numpy(gt_iscrowd, "gt_iscrowd").astype(np.int64).reshape(-1)
        )
        if crowd.shape[0] != m:
            raise ValueError(f"{m} ground-truth masks but {crowd.shape[0]} iscrowd flags")
        known = set(self.category_ids)
        for what, arr in (("pred_labels", labels), ("gt_labels", g_labels)):
            unknown = sorted({int(v) for v in arr} - known)
            if unknown:
                raise ValueError(f"{what} holds category ids {unknown[:10]} that are not in category_ids")

        gt_rles = masks_to_rle(gm) if m else []
        if gt_areas is None:
            areas = [float(a) for a in mask_utils.area(gt_rles)] if m else []
        else:
            areas = [float(a) for a in to_numpy(gt_areas, "gt_areas").reshape(-1)]
            if len(areas) != m:
                raise ValueError(f"{m} ground-truth masks but {len(areas)} areas")
        dt_rles = masks_to_rle(pm) if n else []
        self.images.append(
            {
                "height": int(height),
                "width": int(width),
                "gt": [
                    {"segmentation": r, "category_id": int(c), "iscrowd": int(k), "area": a}
                    for r, c, k, a in zip(gt_rles, g_labels, crowd, areas, strict=True)
                ],
                "dt": [
                    {"segmentation": r, "category_id": int(c), "score": float(s)}
                    for r, c, s in zip(dt_rles, labels, scores, strict=True)
                ],
            }
        )

    def merge(self, other: InstanceSegmentationEvaluator) -> None:
        """Append the images collected by an evaluator from another process (same categories)."""
        if not isinstance(other, InstanceSegmentationEvaluator):
            raise TypeError(f"can only merge an InstanceSegmentationEvaluator, got {type(other).__name__}")
        if other.category_ids != self.category_ids:
            raise ValueError("cannot merge evaluators built with different category_ids")
        self.images.extend(other.images)

    def to_coco(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The collected data as a COCO ground-truth dataset dict and a COCO results list (image ids 1..N)."""
        images, annotations, results = [], [], []
        for image_id, img in enumerate(self.images, start=1):
            images.append({"id": image_id, "height": img["height"], "width": img["width"]})
            for ann in img["gt"]:
                # COCOeval marks matches with the ground-truth id, so ids must start at 1.
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
            for det in img["dt"]:
                results.append({"image_id": image_id, **det})
        categories = [{"id": c, "name": n} for c, n in zip(self.category_ids, self.class_names, strict=True)]
        return {"images": images, "annotations": annotations, "categories": categories}, results

    def compute(self) -> dict[str, float]:
        """AP, AP50, AP75, APs, APm, APl and per-category ``AP-<name>`` in percent (NaN where undefined).

        As in detectron2, every metric is NaN when there is no prediction at all, and a metric pycocotools
        reports as -1 (nothing to evaluate, e.g. no large object) is NaN.
        """
        if not any(img["dt"] for img in self.images):
            res = dict.fromkeys(AP_METRICS, float("nan"))
            res.update({f"AP-{n}": float("nan") for n in self.class_names})
            return res
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        dataset, results = self.to_coco()
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO()
            coco_gt.dataset = dataset
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes(results)
            coco_eval = COCOeval(coco_gt, coco_dt, "segm")
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        res = {
            name: float(coco_eval.stats[i] * 100) if coco_eval.stats[i] >= 0 else float("nan")
            for i, name in enumerate(AP_METRICS)
        }
        precision = coco_eval.eval["precision"]  # (iou thr, recall thr, category, area range, max dets)
        order = {c: i for i, c in enumerate(coco_eval.params.catIds)}
        for cat, name in zip(self.category_ids, self.class_names, strict=True):
            p = precision[:, :, order[cat], 0, -1]
            p = p[p > -1]
            res[f"AP-{name}"] = float(np.mean(p) * 100) if p.size else float("nan")
        return res
