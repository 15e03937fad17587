"""YouTube-VIS reading, clip sampling, clip-consistent augmentation, per-clip targets; synthetic videos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from m2f_hf.configuration_m2f import Mask2FormerConfig
from m2f_hf.modeling_video_criterion import Mask2FormerVideoLoss
from m2f_hf.training_augmentation import FlipTransform, ResizeShortestEdge, ResizeTransform
from m2f_hf.training_synthetic_video import make_synthetic_video, make_synthetic_video_dataset, write_ytvis
from m2f_hf.training_video_data import (
    ClipAugmentation,
    YouTubeVISClipDataset,
    clip_targets,
    decode_segmentation,
    load_ytvis,
    sample_clip_frames,
)

H, W = 12, 16


def rle(mask, compressed=True):
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if compressed:
        r["counts"] = r["counts"].decode()
        return r
    # uncompressed: run lengths down the columns, alternating, starting with background
    counts, value, run = [], 0, 0
    for v in mask.reshape(-1, order="F"):
        if int(v) != value:
            counts.append(run)
            value, run = int(v), 0
        run += 1
    counts.append(run)
    return {"size": [H, W], "counts": counts}


def box(r0, r1, c0, c1):
    m = np.zeros((H, W), dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


def small_json():
    a, b = box(1, 5, 2, 6), box(6, 10, 8, 14)
    return {
        "videos": [{"id": 3, "height": H, "width": W, "length": 3, "file_names": ["f0", "f1", "f2"]}],
        "categories": [{"id": 7, "name": "seven"}, {"id": 2, "name": "two"}],
        "annotations": [
            {"id": 10, "video_id": 3, "category_id": 7, "segmentations": [rle(a), rle(a, False), None]},
            # polygon in frame 0; a degenerate polygon (2 points) in frame 1 counts as absent; RLE in frame 2
            {
                "id": 11,
                "video_id": 3,
                "category_id": 2,
                "segmentations": [[[8, 6, 14, 6, 14, 10, 8, 10]], [[1, 1, 2, 2]], rle(b)],
            },
        ],
    }


def test_load_ytvis_formats_and_category_mapping():
    records, cats = load_ytvis(small_json())
    assert [c["id"] for c in cats] == [2, 7]
    (rec,) = records
    first, second = rec.instances
    assert (first.label, second.label) == (1, 0)  # sorted dataset ids -> contiguous
    a = box(1, 5, 2, 6)
    assert np.array_equal(decode_segmentation(first.segmentations[0], H, W), a)
    assert np.array_equal(decode_segmentation(first.segmentations[1], H, W), a)  # uncompressed RLE
    assert first.segmentations[2] is None and second.segmentations[1] is None
    poly = decode_segmentation(second.segmentations[0], H, W)
    assert poly.sum() > 0 and poly[:, :7].sum() == 0 and poly[:5].sum() == 0


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["annotations"][0].pop("category_id"), r"annotation 10: missing \['category_id'\]"),
        (lambda d: d["annotations"][0].update(video_id=9), "annotation 10: video_id 9 is not in 'videos'"),
        (lambda d: d["annotations"][0].update(category_id=5), "annotation 10: category_id 5 is not in"),
        (
            lambda d: d["annotations"][1]["segmentations"].pop(),
            r"annotation 11: 'segmentations' must hold one",
        ),
        (
            lambda d: d["annotations"][0]["segmentations"][0].update(size=[4, 4]),
            "annotation 10 frame 0: RLE size",
        ),
        (
            lambda d: d["annotations"][0]["segmentations"].__setitem__(2, 5),
            "annotation 10 frame 2: segmentation",
        ),
        (lambda d: d["videos"][0]["file_names"].pop(), "video 3: 2 file_names but length 3"),
        (lambda d: d["annotations"][1].update(id=10), "annotation 10: duplicate annotation id"),
        (lambda d: d.pop("videos"), "'videos' must be a list"),
    ],
)
def test_malformed_annotations_give_one_line_errors(edit, message):
    data = small_json()
    edit(data)
    with pytest.raises(ValueError, match=message) as info:
        load_ytvis(data)
    assert "\n" not in str(info.value)


def test_clip_sampling_follows_the_original_rule():
    rng = np.random.default_rng(0)
    duplicates = shuffled = 0
    for _ in range(400):
        length = int(rng.integers(1, 30))
        clip = sample_clip_frames(length, num_frames=4, frame_range=3, rng=rng)
        assert len(clip) == 4 and clip == sorted(clip) and all(0 <= f < length for f in clip)
        # some frame (the reference) has every other frame within the range, itself excluded unless length 1
        assert any(all(abs(f - r) <= 3 for f in clip) for r in clip)
        duplicates += len(set(clip)) < 4
        mixed = sample_clip_frames(length, num_frames=4, frame_range=3, shuffle=True, rng=rng)
        shuffled += mixed != sorted(mixed)
    assert duplicates > 0 and shuffled > 0  # drawn with replacement, and shuffled when asked
    assert sample_clip_frames(1, 3, 5, rng=rng) == [0, 0, 0]
    # with a range of 1 the other frame is a neighbour of the reference, never the reference itself
    for _ in range(50):
        f0, f1 = sample_clip_frames(10, 2, 1, rng=rng)
        assert f1 - f0 == 1


def test_clip_augmentation_draws_once_per_clip():
    aug = ClipAugmentation((20, 24, 28), 1000, "choice_by_clip", "flip_by_clip")
    rng = np.random.default_rng(1)
    flips = set()
    for _ in range(40):
        per_frame = aug.draw(30, 50, 5, rng)
        assert all(ts == per_frame[0] for ts in per_frame)
        resize = per_frame[0][0]
        assert isinstance(resize, ResizeTransform)
        assert (resize.new_h, resize.new_w) in {
            ResizeShortestEdge.output_size(30, 50, s, 1000) for s in (20, 24, 28)
        }
        flips.add(any(isinstance(t, FlipTransform) for t in per_frame[0]))
    assert flips == {True, False}
    per_frame_flip = ClipAugmentation(24, random_flip="horizontal")
    patterns = {tuple(len(ts) for ts in per_frame_flip.draw(30, 50, 6, rng)) for _ in range(20)}
    assert len(patterns) > 1  # independent flips per frame
    with pytest.raises(ValueError, match="one size per clip"):
        ClipAugmentation(sampling="choice")


def test_clip_targets_ids_absent_frames_and_transforms():
    (rec,), _ = load_ytvis(small_json())
    t = clip_targets(rec, [0, 1, 2])
    assert t["labels"].tolist() == [1, 0]
    assert t["ids"].tolist() == [[10, 10, -1], [11, -1, 11]]
    assert t["masks"].shape == (2, 3, H, W) and not t["masks"][0, 2].any()
    # an instance absent from all sampled frames is not a target
    t = clip_targets(rec, [1, 1])
    assert t["ids"].tolist() == [[10, 10]] and t["labels"].tolist() == [1]
    # the original's label rule: absent from the last sampled frame -> placeholder class num_classes
    t = clip_targets(rec, [0, 2], label_source="last_frame", num_classes=2)
    assert t["labels"].tolist() == [2, 0]
    # one resize + flip for all frames: RLE masks resized with nearest, polygons rasterised at the new size
    ts = [ResizeTransform(H, W, 2 * H, 2 * W), FlipTransform()]
    t = clip_targets(rec, [0, 2], [ts, ts])
    a2 = np.kron(box(1, 5, 2, 6), np.ones((2, 2), bool))[:, ::-1]
    assert np.array_equal(t["masks"][0, 0], a2)
    b2 = np.kron(box(6, 10, 8, 14), np.ones((2, 2), bool))[:, ::-1]
    assert np.array_equal(t["masks"][1, 1], b2)
    # the polygon (rectangle corners 8..14 x 6..10) scaled by 2 and mirrored covers the mirrored box
    poly = t["masks"][1, 0]
    assert poly[12:20, 2 * W - 28 : 2 * W - 16].all() and poly.sum() <= (9 * 13)


def test_synthetic_video_is_deterministic_and_consistent():
    v = make_synthetic_video(seed=5, index=2, num_frames=6, size=(48, 64), max_objects=5)
    again = make_synthetic_video(seed=5, index=2, num_frames=6, size=(48, 64), max_objects=5)
    assert np.array_equal(v["frames"], again["frames"]) and v["annotations"] == again["annotations"]
    assert v["frames"].dtype == np.uint8 and v["frames"].shape == (6, 48, 64, 3)
    assert v["masks"].sum(0).max() <= 1  # occlusion: one instance per pixel
    for ann, masks in zip(v["annotations"], v["masks"], strict=True):
        for f, segm in enumerate(ann["segmentations"]):
            if segm is None:
                assert not masks[f].any() and ann["areas"][f] is None
            else:
                assert np.array_equal(decode_segmentation(segm, 48, 64), masks[f])
                assert ann["areas"][f] == masks[f].sum() >= 20
    dataset, frames = make_synthetic_video_dataset(12, num_frames=6, size=(48, 64), seed=5, max_objects=5)
    assert np.array_equal(frames[2], v["frames"])
    nulls = sum(s is None for a in dataset["annotations"] for s in a["segmentations"])
    assert nulls > 0 and len({a["id"] for a in dataset["annotations"]}) == len(dataset["annotations"])
    # shapes move: some instance's mask differs between the first and last frame
    assert any((m[0] != m[-1]).any() for m in v["masks"])


def test_clip_dataset_from_files_and_memory(tmp_path):
    dataset, frames = make_synthetic_video_dataset(3, num_frames=5, size=(40, 56), seed=1)
    path = write_ytvis(dataset, frames, tmp_path)
    aug = ClipAugmentation((32, 48), 100)
    on_disk = YouTubeVISClipDataset(
        path, image_root=tmp_path / "JPEGImages", num_frames=3, frame_range=2, augmentation=aug
    )
    in_memory = YouTubeVISClipDataset(
        dataset,
        frame_loader=lambda rec, f: frames[rec.video_id][f],
        num_frames=3,
        frame_range=2,
        augmentation=aug,
    )
    for i in range(3):
        a, b = on_disk[i], in_memory[i]
        assert a["frame_indices"] == b["frame_indices"] and np.array_equal(a["frames"], b["frames"])
        assert np.array_equal(a["masks"], b["masks"]) and np.array_equal(a["ids"], b["ids"])
        n, t, h, w = a["masks"].shape
        assert a["frames"].shape == (t, h, w, 3) and min(h, w) in (32, 48) and t == 3
        assert ((a["ids"] != -1) == a["masks"].reshape(n, t, -1).any(-1)).all()
    seen = set()
    for epoch in range(8):  # a new epoch draws new clips
        on_disk.set_epoch(epoch)
        seen.add(tuple(on_disk[0]["frame_indices"]))
    assert len(seen) > 1

    # the targets feed the video loss directly
    sample = in_memory[0]
    masks = torch.from_numpy(sample["masks"])
    _, t, h, w = masks.shape
    loss = Mask2FormerVideoLoss(
        Mask2FormerConfig(num_labels=4, train_num_points=32, use_auxiliary_loss=False)
    )
    logits = torch.randn(1, 6, t, h // 4, w // 4, requires_grad=True)
    out = loss(logits, torch.randn(1, 6, 5), [masks], [torch.from_numpy(sample["labels"])])
    loss.total_loss(out).backward()
    assert torch.isfinite(logits.grad).all()
