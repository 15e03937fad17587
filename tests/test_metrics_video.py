"""YouTube-VIS mask AP: a hand-computed case and an independent computation through pycocotools' COCOeval."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from m2f_hf.training_metrics_video import (
    AREA_RANGES,
    VideoInstanceSegmentationEvaluator,
    evaluate_ytvis,
)


def block(t, h, w, cells):
    m = np.zeros((t, h, w), dtype=bool)
    for f, (r0, r1, c0, c1) in cells.items():
        m[f, r0:r1, c0:c1] = True
    return m


def test_hand_computed_case():
    # ground truth: a 3x3 block in frames 0 and 1, absent in frame 2
    gt = block(3, 8, 8, {0: (0, 3, 0, 3), 1: (0, 3, 0, 3)})
    # dt1: frame 0 exact, frame 1 two pixels inside:          IoU = (9 + 2) / (9 + 9) = 11/18 = 0.611
    dt1 = block(3, 8, 8, {0: (0, 3, 0, 3), 1: (0, 1, 0, 2)})
    # dt2: frames 0 and 1 exact, 4 pixels in frame 2 (gt absent): IoU = 18 / (18 + 4) = 0.818
    dt2 = block(3, 8, 8, {0: (0, 3, 0, 3), 1: (0, 3, 0, 3), 2: (4, 6, 4, 6)})
    ev = VideoInstanceSegmentationEvaluator([1, 2], ["a", "b"])
    ev.update(np.stack([dt1, dt2]), [0.9, 0.8], [1, 1], gt[None], [1])
    res = ev.compute()
    # thresholds .50 .55 .60: dt1 (first by score) matches -> AP 1; .65-.80: dt1 misses, dt2 matches at
    # rank 2 -> precision 1/2 at every recall -> AP .5; .85-.95: nothing -> 0. AP = (3 + 4 * .5) / 10.
    assert res["AP"] == pytest.approx(50.0, abs=1e-12)
    assert res["AP50"] == pytest.approx(100.0) and res["AP75"] == pytest.approx(50.0)
    assert res["AR1"] == pytest.approx(30.0)  # only dt1: recall 1 at 3 of 10 thresholds
    assert res["AR10"] == pytest.approx(70.0)  # dt2 reaches .80: 7 of 10
    assert res["APs"] == res["AP"]  # average area 9 px: small
    assert np.isnan(res["APm"]) and np.isnan(res["APl"])
    assert res["AP-a"] == res["AP"] and np.isnan(res["AP-b"])  # no ground truth of category 2

    # the per-frame mean IoU would differ: frame-wise IoUs of dt2 are 1, 1, 0 (mean .67 < .8)
    ev2 = VideoInstanceSegmentationEvaluator([1])
    ev2.update(dt2[None], [0.8], [1], gt[None], [1])
    assert ev2.compute()["AP"] == pytest.approx(70.0)  # matched up to .80 (7 thresholds), precision 1


def random_video(rng, t, h, w, num_gt, cats):
    gts, labels = [], []
    for _ in range(num_gt):
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        vy, vx = rng.integers(-2, 3, 2)
        sh, sw = rng.integers(3, h // 2), rng.integers(3, w // 2)
        m = np.zeros((t, h, w), dtype=bool)
        for f in range(t):
            if rng.uniform() < 0.2:
                continue  # absent in this frame
            yy, xx = y + vy * f, x + vx * f
            m[f, max(yy, 0) : max(yy + sh, 0), max(xx, 0) : max(xx + sw, 0)] = True
        gts.append(m)
        labels.append(int(rng.choice(cats)))
    dts, scores, dlabels = [], [], []
    for g, c in zip(gts, labels, strict=True):
        for _ in range(rng.integers(0, 3)):
            noisy = g ^ (rng.uniform(size=g.shape) < rng.uniform(0.0, 0.08)) & np.roll(g, 1, axis=2)
            dts.append(noisy | np.roll(g, int(rng.integers(-2, 3)), axis=1))
            scores.append(float(rng.uniform()))
            dlabels.append(c if rng.uniform() < 0.8 else int(rng.choice(cats)))
    for _ in range(rng.integers(0, 3)):  # false positives
        dts.append(rng.uniform(size=(t, h, w)) < 0.05)
        scores.append(float(rng.uniform()))
        dlabels.append(int(rng.choice(cats)))
    return (
        np.array(gts).reshape(-1, t, h, w),
        labels,
        np.array(dts).reshape(-1, t, h, w),
        scores,
        dlabels,
    )


def straightforward_iou(d, g):
    inter = union = 0
    for df, gf in zip(d, g, strict=True):
        if not df.any() and not gf.any():
            continue
        inter += int(np.logical_and(df, gf).sum())
        union += int(np.logical_or(df, gf).sum())
    return inter / union if union > 0 else 0.0


def avg_area(track):
    areas = [int(f.sum()) for f in track if f.any()]
    return float(np.mean(areas)) if areas else 0.0


class SpatioTemporalCOCOeval(COCOeval):
    """pycocotools' own matching and accumulation with the track IoU computed by plain loops."""

    def __init__(self, gt, dt, masks):
        super().__init__(gt, dt, "segm")
        self.masks = masks
        self.params.areaRng = [list(a) for a in AREA_RANGES]

    def computeIoU(self, imgId, catId):  # noqa: N802 - pycocotools' name
        gt = self._gts[imgId, catId]
        dt = self._dts[imgId, catId]
        if len(gt) == 0 and len(dt) == 0:
            return []
        order = np.argsort([-d["score"] for d in dt], kind="mergesort")
        dt = [dt[i] for i in order][: self.params.maxDets[-1]]
        ious = np.zeros((len(dt), len(gt)))
        for i, d in enumerate(dt):
            for j, g in enumerate(gt):
                ious[i, j] = straightforward_iou(self.masks["dt", d["id"]], self.masks["gt", g["id"]])
        return ious


def reference_stats(videos, cats):
    dummy = mask_utils.encode(np.zeros((1, 1, 1), dtype=np.uint8, order="F"))[0]
    gt = {"images": [], "annotations": [], "categories": [{"id": c} for c in cats]}
    dt = {"images": [], "annotations": [], "categories": [{"id": c} for c in cats]}
    masks = {}
    for vid, (g_masks, g_labels, d_masks, d_scores, d_labels) in enumerate(videos, start=1):
        gt["images"].append({"id": vid, "height": 1, "width": 1})
        dt["images"].append({"id": vid, "height": 1, "width": 1})
        for m, c in zip(g_masks, g_labels, strict=True):
            ann_id = len(gt["annotations"]) + 1
            masks["gt", ann_id] = m
            gt["annotations"].append(
                {"id": ann_id, "image_id": vid, "category_id": c, "iscrowd": 0, "area": avg_area(m)}
            )
        for m, s, c in zip(d_masks, d_scores, d_labels, strict=True):
            ann_id = len(dt["annotations"]) + 1
            masks["dt", ann_id] = m
            dt["annotations"].append(
                {"id": ann_id, "image_id": vid, "category_id": c, "score": s, "area": avg_area(m)}
            )
    for ann in gt["annotations"] + dt["annotations"]:
        ann["segmentation"] = dummy
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset, coco_dt.dataset = gt, dt
        coco_gt.createIndex()
        coco_dt.createIndex()
        e = SpatioTemporalCOCOeval(coco_gt, coco_dt, masks)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_exactly_with_independent_computation(seed):
    rng = np.random.default_rng(seed)
    cats = [1, 2, 3]
    videos = [
        random_video(rng, int(rng.integers(1, 5)), 24, 32, int(rng.integers(0, 5)), cats) for _ in range(6)
    ]
    ev = VideoInstanceSegmentationEvaluator(cats)
    for g, gl, d, ds, dl in videos:
        ev.update(d, ds, dl, g, gl)
    ours = ev.evaluate()
    ref = reference_stats(videos, cats)
    np.testing.assert_array_equal(ours.precision, ref.eval["precision"])
    np.testing.assert_array_equal(ours.recall, ref.eval["recall"])
    np.testing.assert_array_equal(ours.stats, np.asarray(ref.stats))
    assert ours.stats[0] > 0  # a non-trivial case


def test_json_input_rle_polygons_and_null_frames():
    height, width = 10, 12
    gt_mask = block(2, height, width, {0: (2, 6, 2, 6), 1: (3, 7, 3, 7)})
    rle0 = mask_utils.encode(np.asfortranarray(gt_mask[0].astype(np.uint8)))
    rle0["counts"] = rle0["counts"].decode()
    # the same square as a polygon: pycocotools rasterises (x, y) corners of the pixel grid
    poly1 = [[3, 3, 7, 3, 7, 7, 3, 7]]
    gt = {
        "videos": [{"id": 7, "height": height, "width": width, "length": 3, "file_names": ["a", "b", "c"]}],
        "categories": [{"id": 4, "name": "x"}],
        "annotations": [
            {"id": 1, "video_id": 7, "category_id": 4, "iscrowd": 0, "segmentations": [rle0, poly1, None]}
        ],
    }
    poly_mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(poly1, height, width))).astype(bool)
    pred = np.stack([gt_mask[0], poly_mask, np.zeros((height, width), bool)])
    segms = []
    for f in pred:
        r = mask_utils.encode(np.asfortranarray(f.astype(np.uint8)))
        r["counts"] = r["counts"].decode()
        segms.append(r)
    result = evaluate_ytvis(gt, [{"video_id": 7, "category_id": 4, "score": 0.5, "segmentations": segms}])
    assert result.stats[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="annotation 1: segmentations must be a list of 3 frames"):
        bad = {**gt, "annotations": [{**gt["annotations"][0], "segmentations": [rle0]}]}
        evaluate_ytvis(bad, [])
    with pytest.raises(ValueError, match="video_id 8 is not a video"):
        evaluate_ytvis(gt, [{"video_id": 8, "category_id": 4, "score": 0.5, "segmentations": segms}])


def test_no_predictions_and_bad_inputs():
    ev = VideoInstanceSegmentationEvaluator([1])
    ev.update(np.zeros((0, 2, 4, 4), bool), [], [], np.ones((1, 2, 4, 4), bool), [1])
    assert all(np.isnan(v) for v in ev.compute().values())
    with pytest.raises(ValueError, match=r"\(N, T, H, W\)"):
        ev.update(np.zeros((1, 4, 4), bool), [0.5], [1], np.ones((1, 2, 4, 4), bool), [1])
    with pytest.raises(ValueError, match="not in category_ids"):
        ev.update(np.zeros((1, 2, 4, 4), bool), [0.5], [9], np.ones((1, 2, 4, 4), bool), [1])


def test_synthetic_ground_truth_scores_itself_perfectly_and_a_shift_scores_less():
    from m2f_hf.training_synthetic_video import make_synthetic_video_dataset

    dataset, _ = make_synthetic_video_dataset(4, num_frames=5, size=(40, 56), seed=3)
    perfect = [
        {
            "video_id": a["video_id"],
            "category_id": a["category_id"],
            "score": 0.9,
            "segmentations": a["segmentations"],
        }
        for a in dataset["annotations"]
    ]
    assert evaluate_ytvis(dataset, perfect).stats[0] == pytest.approx(1.0)
    shifted = []
    for r in perfect:
        segms = []
        for s in r["segmentations"]:
            if s is None:
                segms.append(None)
                continue
            m = np.roll(
                mask_utils.decode([{"size": s["size"], "counts": s["counts"].encode()}])[:, :, 0], 3, axis=1
            )
            e = mask_utils.encode(np.asfortranarray(m))
            e["counts"] = e["counts"].decode()
            segms.append(e)
        shifted.append({**r, "segmentations": segms})
    assert 0 < evaluate_ytvis(dataset, shifted).stats[0] < 1
