"""Semantic segmentation metrics (mIoU, fwIoU, mACC, pACC) with the conventions of detectron2's evaluator.

The original Mask2Former numbers come from detectron2's ``SemSegEvaluator``: a (K+1) x (K+1) confusion matrix
(rows = predicted class, columns = ground-truth class, the extra column collects ignored ground-truth pixels)
accumulated over the whole dataset at the original image resolution, from which every metric is derived once
at the end. This module reproduces that accumulation and those formulas; the state is a single integer matrix,
so evaluators running in different processes are merged by adding their matrices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray
MIoUDenominator = Literal["gt_or_pred", "gt"]


def _as_label_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    """Turn a (H, W) integer label map (numpy or torch, any device) into an int64 tensor, rejecting floats."""
    if isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_):
            raise TypeError(f"{name} must hold integer class ids, got numpy dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x).astype(np.int64, copy=False))
    elif isinstance(x, torch.Tensor):
        if x.is_floating_point() or x.is_complex():
            raise TypeError(f"{name} must hold integer class ids, got torch dtype {x.dtype}")
        x = x.long()
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be a (H, W) label map, got shape {tuple(x.shape)}")
    return x


class SemanticSegmentationEvaluator:
    """Accumulates detectron2's semantic-segmentation confusion matrix and derives its metrics.

    Args:
        num_classes: number of classes K; predictions must lie in [0, K).
        ignore_index: ground-truth value that is not evaluated (255 for ADE20K / COCO-stuff / Cityscapes), or
            None when every ground-truth pixel is labelled.
        class_names: optional names; when given, :meth:`compute` also reports ``IoU-<name>`` / ``ACC-<name>``
            keys named as detectron2 names them.
        miou_denominator: detectron2 0.5/0.6 (what Mask2Former's published numbers were computed with)
            sums the IoUs of the classes present in the ground truth but divides by the number of classes
            present in the ground truth *or* the predictions (``"gt_or_pred"``, the default: a class predicted
            but absent from the ground truth counts as IoU 0). detectron2 from July 2022 on divides by the
            number of classes present in the ground truth (``"gt"``). The two agree whenever every predicted
            class occurs in the ground truth, as on full ADE20K / COCO validation sets.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        class_names: Sequence[str] | None = None,
        miou_denominator: MIoUDenominator = "gt_or_pred",
    ) -> None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(
                f"ignore_index={ignore_index} is a real class id (classes are 0..{num_classes - 1})"
            )
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        if miou_denominator not in ("gt_or_pred", "gt"):
            raise ValueError(f"miou_denominator must be 'gt_or_pred' or 'gt', got {miou_denominator!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else None
        self.miou_denominator = miou_denominator
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        k = self.num_classes + 1
        self.conf_matrix = torch.zeros((k, k), dtype=torch.int64)
        self._updated = False

    @torch.no_grad()
    def update(self, pred: ArrayLike, gt: ArrayLike) -> None:
        """Add one image: ``pred`` and ``gt`` are (H, W) class-id maps at the original image resolution."""
        pred_t = _as_label_tensor(pred, "pred")
        gt_t = _as_label_tensor(gt, "gt").to(pred_t.device)
        if pred_t.shape != gt_t.shape:
            raise ValueError(
                f"pred shape {tuple(pred_t.shape)} differs from gt shape {tuple(gt_t.shape)}; "
                "evaluate at the original image resolution"
            )
        k = self.num_classes
        if pred_t.numel() == 0:
            return
        if int(pred_t.min()) < 0 or int(pred_t.max()) >= k:
            raise ValueError(
                f"pred holds class ids in [{int(pred_t.min())}, {int(pred_t.max())}], expected [0, {k - 1}]"
            )
        if self.ignore_index is not None:
            gt_t = torch.where(gt_t == self.ignore_index, torch.full_like(gt_t, k), gt_t)
            valid_max = k
        else:
            valid_max = k - 1
        if int(gt_t.min()) < 0 or int(gt_t.max()) > valid_max:
            bad = gt_t[(gt_t < 0) | (gt_t > valid_max)].unique()[:10].tolist()
            raise ValueError(
                f"gt holds ids {bad} that are neither classes 0..{k - 1} nor ignore_index={self.ignore_index}"
            )
        counts = torch.bincount((pred_t * (k + 1) + gt_t).reshape(-1), minlength=(k + 1) ** 2)
        if not self._updated:
            self.conf_matrix = self.conf_matrix.to(counts.device)
            self._updated = True
        self.conf_matrix += counts.reshape(k + 1, k + 1).to(self.conf_matrix.device)

    def merge(self, other: SemanticSegmentationEvaluator) -> None:
        """Add the counts of an evaluator from another process (e.g. gathered with accelerate)."""
        if not isinstance(other, SemanticSegmentationEvaluator):
            raise TypeError(f"can only merge a SemanticSegmentationEvaluator, got {type(other).__name__}")
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.conf_matrix += other.conf_matrix.to(self.conf_matrix.device)
        self._updated = self._updated or other._updated

    def compute(self) -> dict[str, Any]:
        """Metrics in percent, as detectron2 reports them.

        Per-class IoU / ACC are NaN for classes absent from the (non-ignored) ground truth; mACC averages the
        classes present in the ground truth; fwIoU weights each class's IoU by its ground-truth pixel share;
        pACC is the fraction of non-ignored pixels predicted right. With no non-ignored pixel at all, mIoU,
        mACC and pACC are NaN and fwIoU is 0, as in detectron2.
        """
        conf = self.conf_matrix.cpu().numpy()
        core = conf[:-1, :-1].astype(np.float64)
        tp = np.diag(core).copy()
        gt_pixels = core.sum(axis=0)
        pred_pixels = core.sum(axis=1)
        union = gt_pixels + pred_pixels - tp
        in_gt = gt_pixels > 0
        iou = np.full(self.num_classes, np.nan)
        acc = np.full(self.num_classes, np.nan)
        iou[in_gt] = tp[in_gt] / union[in_gt]
        acc[in_gt] = tp[in_gt] / gt_pixels[in_gt]
        if self.miou_denominator == "gt_or_pred":
            n_miou = int(np.count_nonzero((gt_pixels + pred_pixels) > 0))
        else:
            n_miou = int(np.count_nonzero(in_gt))
        total_gt = gt_pixels.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            miou = iou[in_gt].sum() / n_miou if n_miou else float("nan")
            macc = acc[in_gt].sum() / in_gt.sum() if in_gt.any() else float("nan")
            fwiou = float(np.sum(iou[in_gt] * gt_pixels[in_gt] / total_gt)) if in_gt.any() else 0.0
            pacc = tp.sum() / total_gt if total_gt > 0 else float("nan")
        res: dict[str, Any] = {
            "mIoU": 100.0 * float(miou),
            "fwIoU": 100.0 * float(fwiou),
            "mACC": 100.0 * float(macc),
            "pACC": 100.0 * float(pacc),
            "IoU": (100.0 * iou).tolist(),
            "ACC": (100.0 * acc).tolist(),
        }
        if self.class_names is not None:
            for i, name in enumerate(self.class_names):
                res[f"IoU-{name}"] = 100.0 * float(iou[i])
                res[f"ACC-{name}"] = 100.0 * float(acc[i])
        return res
