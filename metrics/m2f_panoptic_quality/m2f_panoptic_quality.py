"""Panoptic quality (PQ, SQ, RQ) as an `evaluate` metric module, backed by m2f_hf's panopticapi-equal
`PanopticQualityEvaluator` (training_metrics_panoptic.py).

    metric = evaluate.load("metrics/m2f_panoptic_quality")   # a local path: no Hub access
    metric.add_batch(predictions=[pred, ...], references=[gt, ...])
    metric.compute(categories={0: {"isthing": 1}, 1: {"isthing": 0}, ...})

Each prediction / reference is one image in the COCO panoptic layout, as transformers'
`post_process_panoptic_segmentation` returns it: {"segmentation": (H, W) segment ids (0 = no segment),
"segments_info": [{"id", "category_id", "iscrowd"}, ...]} (`iscrowd` matters for references only).
Results are percentages under detectron2's keys (PQ, SQ, RQ and their _th / _st variants).
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

from m2f_hf.training_metrics_panoptic import PanopticQualityEvaluator

_DESCRIPTION = "Panoptic quality with panopticapi's matching and averaging (m2f_hf)."
_KWARGS = """
predictions / references: {"segmentation": (H, W) int segment ids, "segments_info": [{"id", "category_id",
"iscrowd"}]} per image; categories: category id -> {"isthing": 0/1} (or a list of {"id", "isthing"}), in the
order of the dataset's category list.
"""
_IMAGE = {
    "segmentation": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
    "segments_info": [
        {
            "id": datasets.Value("int64"),
            "category_id": datasets.Value("int64"),
            "iscrowd": datasets.Value("int64"),
        }
    ],
}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class M2fPanopticQuality(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": _IMAGE, "references": _IMAGE}),
        )

    def _compute(self, predictions, references, categories):
        if isinstance(categories, (list, tuple)):
            categories = {int(c["id"]): {"isthing": c["isthing"]} for c in categories}
        evaluator = PanopticQualityEvaluator({int(k): v for k, v in categories.items()})
        for pred, ref in zip(predictions, references, strict=True):
            evaluator.update(
                np.asarray(pred["segmentation"], dtype=np.int64),
                pred["segments_info"],
                np.asarray(ref["segmentation"], dtype=np.int64),
                ref["segments_info"],
            )
        res = evaluator.compute()
        return {k: float(v) for k, v in res.items() if k != "per_class"}
