"""YouTube-VIS mask AP, computed as the official youtubevos cocoapi evaluation (``YTVOSeval``) computes it.

The differences from image COCO mask AP are all in what a "segment" is:

* a detection or ground truth is a track: one mask (or nothing) per frame of the video;
* the IoU of two tracks is spatio-temporal: the sum over frames of the intersections divided by the sum
  over frames of the unions (a frame where neither has a mask adds nothing; a frame where only one has a
  mask adds its area to the union); 0 when the union is empty;
* the area of a track (for the small / medium / large split) is the mean of its non-zero per-frame areas,
  and the split is at 128^2 and 256^2 pixels (COCO: 32^2 and 96^2).

The rest is COCOeval: per (video, category), detections sorted by score (stable), at most 100 kept, matched
greedily to the best unmatched ground truth with IoU >= threshold (crowd ground truth is ignored and may be
matched repeatedly), IoU thresholds 0.50:0.05:0.95, 101-point interpolated precision, maxDets 1 / 10 / 100,
AP averaged over the categories that have ground truth. The twelve summary numbers keep COCOeval's order
(AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl); `compute` reports them in percent, NaN
where the official tool gives -1, like detectron2's evaluator.

Ground-truth track ids used for matching are 1..G internally (the official tool marks "unmatched" with id 0,
so a ground truth with annotation id 0 would be mishandled there; YouTube-VIS ids start at 1).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .training_metrics_instance import as_masks, load_mask_utils, to_numpy

ArrayLike = torch.Tensor | np.ndarray
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETS = (1, 10, 100)
AREA_RANGES = ((0.0, 1e5**2), (0.0, 128.0**2), (128.0**2, 256.0**2), (256.0**2, 1e5**2))
AREA_LABELS = ("all", "small", "medium", "large")

RLE = dict[str, Any]


@dataclass
class Track:
    """One ground-truth or predicted instance over a video: a compressed RLE or None per frame."""

    category_id: int
    frames: list[RLE | None]
    score: float = 1.0
    iscrowd: int = 0
    avg_area: float | None = None  # default: mean of the non-zero per-frame mask areas

    def __post_init__(self) -> None:
        if self.avg_area is None:
            areas = [float(a) for a in (_rle_area(r) for r in self.frames) if a]
            self.avg_area = float(np.mean(areas)) if areas else 0.0


@dataclass
class VideoTracks:
    height: int
    width: int
    length: int
    gt: list[Track] = field(default_factory=list)
    dt: list[Track] = field(default_factory=list)


def _rle_area(rle: RLE | None) -> int:
    return 0 if rle is None else int(load_mask_utils().area(rle))


def _decode(rle: RLE | None, height: int, width: int) -> np.ndarray:
    if rle is None:
        return np.zeros(height * width, dtype=bool)
    return load_mask_utils().decode([rle])[:, :, 0].astype(bool).reshape(-1, order="F")


def spatio_temporal_iou(video: VideoTracks, dts: Sequence[Track], gts: Sequence[Track]) -> np.ndarray:
    """(D, G) IoU of tracks: sum over frames of intersections / sum over frames of unions (0 if empty)."""
    inter = np.zeros((len(dts), len(gts)), dtype=np.int64)
    union = np.zeros((len(dts), len(gts)), dtype=np.int64)
    if not dts or not gts:
        return np.zeros((len(dts), len(gts)))
    for f in range(video.length):
        d = np.stack([_decode(t.frames[f], video.height, video.width) for t in dts]).astype(np.int64)
        g = np.stack([_decode(t.frames[f], video.height, video.width) for t in gts]).astype(np.int64)
        i = d @ g.T
        inter += i
        union += d.sum(1)[:, None] + g.sum(1)[None, :] - i
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


@dataclass
class YTVISEvalResult:
    """precision (T, R, K, A, M) and recall (T, K, A, M) with -1 where undefined; `stats` the 12 numbers."""

    precision: np.ndarray
    recall: np.ndarray
    stats: np.ndarray
    category_ids: list[int]

    def metrics(self, class_names: Sequence[str] | None = None) -> dict[str, float]:
        """Summary numbers in percent (NaN where undefined) plus per-category ``AP-<name>``."""
        res = {name: float(v * 100) if v >= 0 else float("nan") for name, v in zip(STATS, self.stats)}
        names = list(class_names) if class_names is not None else [str(c) for c in self.category_ids]
        for k, name in enumerate(names):
            p = self.precision[:, :, k, 0, -1]
            p = p[p > -1]
            res[f"AP-{name}"] = float(np.mean(p) * 100) if p.size else float("nan")
        return res


def _evaluate_video(
    ious: np.ndarray, gts: list[Track], dts: list[Track], area: tuple[float, float], max_det: int
) -> dict[str, Any] | None:
    """COCOeval.evaluateImg for one (video, category, area range): greedy matching at every threshold."""
    if not gts and not dts:
        return None
    gt_ignore_flags = [int(g.iscrowd or g.avg_area < area[0] or g.avg_area > area[1]) for g in gts]
    gt_order = np.argsort(gt_ignore_flags, kind="mergesort")
    gts = [gts[i] for i in gt_order]
    gt_ignore = np.array([gt_ignore_flags[i] for i in gt_order])
    dts = dts[:max_det]  # already sorted by score
    crowd = [g.iscrowd for g in gts]
    ious = ious[:, gt_order] if ious.size else ious
    num_thr = len(IOU_THRESHOLDS)
    gt_matched = np.zeros((num_thr, len(gts)))
    dt_matched = np.zeros((num_thr, len(dts)))
    dt_ignore = np.zeros((num_thr, len(dts)))
    if ious.size:
        for t, thr in enumerate(IOU_THRESHOLDS):
            for d in range(len(dts)):
                best = min(thr, 1 - 1e-10)
                m = -1
                for g in range(len(gts)):
                    if gt_matched[t, g] > 0 and not crowd[g]:
                        continue
                    if m > -1 and gt_ignore[m] == 0 and gt_ignore[g] == 1:
                        break
                    if ious[d, g] < best:
                        continue
                    best = ious[d, g]
                    m = g
                if m == -1:
                    continue
                dt_ignore[t, d] = gt_ignore[m]
                dt_matched[t, d] = m + 1
                gt_matched[t, m] = d + 1
    outside = np.array([d.avg_area < area[0] or d.avg_area > area[1] for d in dts]).reshape(1, len(dts))
    dt_ignore = np.logical_or(dt_ignore, np.logical_and(dt_matched == 0, np.repeat(outside, num_thr, 0)))
    return {
        "scores": np.array([d.score for d in dts]),
        "dt_matched": dt_matched,
        "dt_ignore": dt_ignore,
        "gt_ignore": gt_ignore,
    }


def evaluate_tracks(videos: Sequence[VideoTracks], category_ids: Sequence[int]) -> YTVISEvalResult:
    """The official evaluate + accumulate + summarize on in-memory tracks (category ids as given)."""
    cats = sorted({int(c) for c in category_ids})
    num_thr, num_rec = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)
    precision = -np.ones((num_thr, num_rec, len(cats), len(AREA_RANGES), len(MAX_DETS)))
    recall = -np.ones((num_thr, len(cats), len(AREA_RANGES), len(MAX_DETS)))
    for k, cat in enumerate(cats):
        per_area: list[list[dict[str, Any]]] = [[] for _ in AREA_RANGES]
        for video in videos:
            gts = [g for g in video.gt if g.category_id == cat]
            dts = [d for d in video.dt if d.category_id == cat]
            order = np.argsort([-d.score for d in dts], kind="mergesort")
            dts = [dts[i] for i in order][: MAX_DETS[-1]]
            ious = spatio_temporal_iou(video, dts, gts)
            for a, area in enumerate(AREA_RANGES):
                e = _evaluate_video(ious, gts, dts, area, MAX_DETS[-1])
                if e is not None:
                    per_area[a].append(e)
        for a, evals in enumerate(per_area):
            for m, max_det in enumerate(MAX_DETS):
                if not evals:
                    continue
                scores = np.concatenate([e["scores"][:max_det] for e in evals])
                inds = np.argsort(-scores, kind="mergesort")
                dtm = np.concatenate([e["dt_matched"][:, :max_det] for e in evals], axis=1)[:, inds]
                dtig = np.concatenate([e["dt_ignore"][:, :max_det] for e in evals], axis=1)[:, inds]
                gtig = np.concatenate([e["gt_ignore"] for e in evals])
                num_gt = np.count_nonzero(gtig == 0)
                if num_gt == 0:
                    continue
                tps = np.logical_and(dtm, np.logical_not(dtig))
                fps = np.logical_and(np.logical_not(dtm), np.logical_not(dtig))
                tp_sum = np.cumsum(tps, axis=1).astype(np.float64)
                fp_sum = np.cumsum(fps, axis=1).astype(np.float64)
                for t, (tp, fp) in enumerate(zip(tp_sum, fp_sum, strict=True)):
                    nd = len(tp)
                    rc = tp / num_gt
                    pr = (tp / (fp + tp + np.spacing(1))).tolist()
                    recall[t, k, a, m] = rc[-1] if nd else 0
                    for i in range(nd - 1, 0, -1):
                        if pr[i] > pr[i - 1]:
                            pr[i - 1] = pr[i]
                    q = np.zeros(num_rec)
                    for ri, pi in enumerate(np.searchsorted(rc, RECALL_THRESHOLDS, side="left")):
                        if pi >= nd:
                            break
                        q[ri] = pr[pi]
                    precision[t, :, k, a, m] = q
    return YTVISEvalResult(precision, recall, _summarize(precision, recall), cats)


def _summarize(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    def mean(ap: bool, iou: float | None = None, area: str = "all", max_det: int = 100) -> float:
        a = AREA_LABELS.index(area)
        m = MAX_DETS.index(max_det)
        s = precision[..., a, m] if ap else recall[..., a, m]
        if iou is not None:
            s = s[np.where(iou == IOU_THRESHOLDS)[0]]
        s = s[s > -1]
        return float(np.mean(s)) if s.size else -1.0

    return np.array(
        [
            mean(True),
            mean(True, iou=0.5),
            mean(True, iou=0.75),
            mean(True, area="small"),
            mean(True, area="medium"),
            mean(True, area="large"),
            mean(False, max_det=1),
            mean(False, max_det=10),
            mean(False, max_det=100),
            mean(False, area="small"),
            mean(False, area="medium"),
            mean(False, area="large"),
        ]
    )


# ------------------------------------------------------------------------------------------ json input
def _segmentation_to_rle(segm: Any, height: int, width: int, where: str) -> RLE | None:
    """A YouTube-VIS per-frame segmentation (None, polygons, compressed or uncompressed RLE) as RLE."""
    mask_utils = load_mask_utils()
    if segm is None or (isinstance(segm, list) and not segm):
        return None
    if isinstance(segm, list):
        if not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segm):
            raise ValueError(f"{where}: polygons must be lists of >= 3 (x, y) pairs")
        return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if list(segm["size"]) != [height, width]:
            raise ValueError(f"{where}: RLE size {segm['size']} but the video is {[height, width]}")
        if isinstance(segm["counts"], list):
            return mask_utils.frPyObjects(segm, height, width)
        counts = segm["counts"]
        return {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
    raise ValueError(
        f"{where}: segmentation must be null, polygons or an RLE dict, got {type(segm).__name__}"
    )


def evaluate_ytvis(gt: dict[str, Any] | str | Path, results: Sequence[dict[str, Any]]) -> YTVISEvalResult:
    """Evaluate YouTube-VIS results (``video_id``, ``category_id``, ``score``, ``segmentations``) against
    a YouTube-VIS ground-truth json (dict or path). Ground-truth ``areas`` are used when present (as the
    official tool does), otherwise computed from the masks."""
    if not isinstance(gt, dict):
        gt = json.loads(Path(gt).read_text())
    videos: dict[int, VideoTracks] = {}
    for v in gt.get("videos", []):
        length = int(v.get("length", len(v.get("file_names", []))))
        videos[int(v["id"])] = VideoTracks(int(v["height"]), int(v["width"]), length)
    cat_ids = [int(c["id"]) for c in gt.get("categories", [])]

    def track(ann: dict[str, Any], where: str, is_gt: bool) -> tuple[int, Track]:
        vid = int(ann["video_id"])
        if vid not in videos:
            raise ValueError(f"{where}: video_id {vid} is not a video of the ground truth")
        video = videos[vid]
        segms = ann.get("segmentations")
        if not isinstance(segms, list) or len(segms) != video.length:
            raise ValueError(f"{where}: segmentations must be a list of {video.length} frames (video {vid})")
        frames = [
            _segmentation_to_rle(s, video.height, video.width, f"{where} frame {f}")
            for f, s in enumerate(segms)
        ]
        avg = None
        if is_gt and ann.get("areas") is not None:
            areas = [a for a in ann["areas"] if a]
            avg = float(np.mean(areas)) if areas else 0.0
        t = Track(
            int(ann["category_id"]),
            frames,
            score=float(ann.get("score", 1.0)),
            iscrowd=int(ann.get("iscrowd", 0)) if is_gt else 0,
            avg_area=avg,
        )
        return vid, t

    for i, ann in enumerate(gt.get("annotations", [])):
        vid, t = track(ann, f"annotation {ann.get('id', i)}", True)
        videos[vid].gt.append(t)
    for i, res in enumerate(results):
        vid, t = track(res, f"result {i}", False)
        videos[vid].dt.append(t)
    return evaluate_tracks(list(videos.values()), cat_ids)


# ---------------------------------------------------------------------------------------- evaluator
def _video_masks(x: ArrayLike, name: str) -> np.ndarray:
    m = to_numpy(x, name)
    if m.ndim != 4:
        raise ValueError(f"{name} must be (N, T, H, W) binary masks, got shape {m.shape}")
    return as_masks(m.reshape(-1, *m.shape[2:]), name).reshape(m.shape)


def _encode_track(masks: np.ndarray, present: np.ndarray | None = None) -> list[RLE | None]:
    rles = load_mask_utils().encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    return [None if present is not None and not present[f] else r for f, r in enumerate(rles)]


class VideoInstanceSegmentationEvaluator:
    """Collects per-video predictions and ground truth, then computes YouTube-VIS mask AP over all.

    Args:
        category_ids: the dataset's category ids; AP averages over those with ground truth.
        class_names: optional names for the ``AP-<name>`` keys.
    """

    def __init__(self, category_ids: Sequence[int], class_names: Sequence[str] | None = None) -> None:
        ids = [int(c) for c in category_ids]
        if not ids or len(set(ids)) != len(ids):
            raise ValueError("category_ids must be a non-empty list without duplicates")
        if class_names is not None and len(class_names) != len(ids):
            raise ValueError(f"class_names has {len(class_names)} names for {len(ids)} categories")
        self.category_ids = ids
        self.class_names = list(class_names) if class_names is not None else [str(c) for c in ids]
        self.videos: list[VideoTracks] = []

    def reset(self) -> None:
        self.videos = []

    def update(
        self,
        pred_masks: ArrayLike,
        pred_scores: ArrayLike | Sequence[float],
        pred_labels: ArrayLike | Sequence[int],
        gt_masks: ArrayLike,
        gt_labels: ArrayLike | Sequence[int],
        gt_present: ArrayLike | None = None,
        gt_iscrowd: ArrayLike | Sequence[int] | None = None,
    ) -> None:
        """Add one video at its original resolution.

        Args:
            pred_masks: (N, T, H, W) binary predicted masks (N may be 0).
            pred_scores, pred_labels: (N,) score and category id per prediction.
            gt_masks: (M, T, H, W) binary ground-truth masks.
            gt_labels: (M,) category ids.
            gt_present: (M, T) bool, False where the annotation of a frame is null (default: the frames
                with a non-empty mask). Only the area average sees the difference.
            gt_iscrowd: (M,) crowd flags (default 0).
        """
        pm = _video_masks(pred_masks, "pred_masks")
        gm = _video_masks(gt_masks, "gt_masks")
        if pm.shape[1:] != gm.shape[1:]:
            raise ValueError(f"pred_masks are {pm.shape[1:]} per track but gt_masks are {gm.shape[1:]}")
        scores = to_numpy(pred_scores, "pred_scores").astype(np.float64).reshape(-1)
        labels = to_numpy(pred_labels, "pred_labels").reshape(-1)
        g_labels = to_numpy(gt_labels, "gt_labels").reshape(-1)
        n, m = pm.shape[0], gm.shape[0]
        if scores.shape[0] != n or labels.shape[0] != n:
            raise ValueError(
                f"{n} predicted tracks but {scores.shape[0]} scores and {labels.shape[0]} labels"
            )
        if g_labels.shape[0] != m:
            raise ValueError(f"{m} ground-truth tracks but {g_labels.shape[0]} labels")
        if not np.isfinite(scores).all():
            raise ValueError("pred_scores holds NaN or infinite values")
        known = set(self.category_ids)
        for what, arr in (("pred_labels", labels), ("gt_labels", g_labels)):
            unknown = sorted({int(v) for v in arr} - known)
            if unknown:
                raise ValueError(f"{what} holds category ids {unknown[:10]} that are not in category_ids")
        present = (
            gm.reshape(m, gm.shape[1], gm.shape[2] * gm.shape[3]).any(-1)
            if gt_present is None
            else to_numpy(gt_present, "gt_present").astype(bool)
        )
        if present.shape != (m, gm.shape[1]):
            raise ValueError(f"gt_present must be (M, T) = {(m, gm.shape[1])}, got {present.shape}")
        crowd = (
            np.zeros(m, np.int64) if gt_iscrowd is None else to_numpy(gt_iscrowd, "gt_iscrowd").reshape(-1)
        )
        if crowd.shape[0] != m:
            raise ValueError(f"{m} ground-truth tracks but {crowd.shape[0]} iscrowd flags")
        _, t, h, w = gm.shape
        video = VideoTracks(h, w, t)
        for j in range(m):
            video.gt.append(Track(int(g_labels[j]), _encode_track(gm[j], present[j]), iscrowd=int(crowd[j])))
        for i in range(n):
            video.dt.append(Track(int(labels[i]), _encode_track(pm[i]), score=float(scores[i])))
        self.videos.append(video)

    def merge(self, other: VideoInstanceSegmentationEvaluator) -> None:
        """Append the videos collected by an evaluator from another process (same categories)."""
        if other.category_ids != self.category_ids:
            raise ValueError("cannot merge evaluators built with different category_ids")
        self.videos.extend(other.videos)

    def evaluate(self) -> YTVISEvalResult:
        return evaluate_tracks(self.videos, self.category_ids)

    def compute(self) -> dict[str, float]:
        """AP, AP50, AP75, APs, APm, APl, AR1, AR10, ... in percent (NaN where undefined; all NaN when
        there is no prediction at all, as detectron2) and ``AP-<name>`` per category."""
        if not any(v.dt for v in self.videos):
            res = dict.fromkeys(STATS, float("nan"))
            res.update({f"AP-{n}": float("nan") for n in self.class_names})
            return res
        result = self.evaluate()
        order = {c: i for i, c in enumerate(result.category_ids)}
        names = [self.class_names[self.category_ids.index(c)] for c in sorted(order)]
        return result.metrics(names)


__all__ = [
    "AREA_RANGES",
    "IOU_THRESHOLDS",
    "MAX_DETS",
    "RECALL_THRESHOLDS",
    "STATS",
    "Track",
    "VideoInstanceSegmentationEvaluator",
    "VideoTracks",
    "YTVISEvalResult",
    "evaluate_tracks",
    "evaluate_ytvis",
    "spatio_temporal_iou",
]
