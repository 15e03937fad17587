"""YouTube-VIS training data: json reading, the original clip sampling, clip-consistent augmentation and
per-clip targets, as the original `YTVISDatasetMapper` + `VideoMaskFormer.prepare_targets` build them.

* **Annotations** (`load_ytvis`): ``videos`` (id, file_names, height, width, length), ``annotations`` (id,
  video_id, category_id, optional iscrowd, ``segmentations`` with one entry per frame: compressed RLE,
  uncompressed RLE, polygons, or null where the instance is absent) and ``categories``. Category ids are
  mapped to contiguous ids in the order of the sorted dataset ids (the original's mapping). As in the
  original loader, polygons with fewer than 3 points or an odd number of coordinates are dropped, and a
  frame with no valid polygon left counts as absent. (The original also requires a non-null ``bboxes``
  entry for a frame to count; boxes are not used here, they are recomputed from the masks there too.)
* **Clip sampling** (`sample_clip_frames`, SAMPLING_FRAME_NUM / _RANGE / _SHUFFLE): a reference frame is
  drawn uniformly, the other `num_frames - 1` frames are drawn *with replacement* from the frames within
  `frame_range` of it (reference excluded), the indices are sorted, and shuffled when asked.
* **Augmentation** (`ClipAugmentation`): the YouTube-VIS configs' ResizeShortestEdge
  ("choice_by_clip" over MIN_SIZE_TRAIN) and RandomFlip ("flip_by_clip"), drawn once per clip and applied
  to every frame; per-frame flips ("horizontal" / "vertical") draw once per frame as in the original.
  Images are resized with Pillow bilinear, RLE masks with Pillow nearest, and polygons are transformed as
  coordinates and rasterised at the new size (detectron2's `transform_instance_annotations`).
* **Targets** (`clip_targets`): the instances present in at least one sampled frame (sorted by annotation
  id; crowd annotations are skipped), ``masks`` (N, T, H, W) bool, ``ids`` (N, T) with the annotation id
  where the instance has a non-empty mask after augmentation and -1 elsewhere, and ``labels`` (N,);
  instances whose masks all vanish are dropped. The original takes each instance's label from the *last*
  sampled frame, where an instance absent from that frame carries the placeholder class `num_classes`
  (i.e. no-object); ``label_source="last_frame"`` reproduces that, the default ``"track"`` uses the
  annotation's own category.

Random draws come from one numpy Generator (or anything `training_augmentation` accepts): same
distributions as the original, not the same stream.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .training_augmentation import (
    FlipTransform,
    Random,
    RandomFlip,
    ResizeShortestEdge,
    ResizeTransform,
    Transform,
)

Segmentation = dict[str, Any] | list[list[float]]


@dataclass
class VideoInstance:
    """One annotated instance track: per frame a compressed RLE, a polygon list or None (absent)."""

    id: int
    category_id: int  # dataset id
    label: int  # contiguous id
    iscrowd: int
    segmentations: list[Segmentation | None]


@dataclass
class VideoRecord:
    video_id: int
    file_names: list[str]
    height: int
    width: int
    length: int
    instances: list[VideoInstance] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- reading
def _mask_utils():
    from pycocotools import mask as mask_utils

    return mask_utils


def _frame_segmentation(segm: Any, height: int, width: int, where: str) -> Segmentation | None:
    if segm is None:
        return None
    if isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            raise ValueError(f"{where}: an RLE segmentation needs 'counts' and 'size'")
        if [int(s) for s in segm["size"]] != [height, width]:
            raise ValueError(f"{where}: RLE size {list(segm['size'])} but the video is {[height, width]}")
        counts = segm["counts"]
        if isinstance(counts, list):
            if sum(counts) != height * width:
                raise ValueError(
                    f"{where}: uncompressed RLE counts sum to {sum(counts)}, not H*W = {height * width}"
                )
            return _mask_utils().frPyObjects(segm, height, width)
        if not isinstance(counts, (str, bytes)):
            raise ValueError(f"{where}: RLE counts must be a list or a string, got {type(counts).__name__}")
        return {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
    if isinstance(segm, list):
        if not all(isinstance(p, list) and all(isinstance(v, (int, float)) for v in p) for p in segm):
            raise ValueError(f"{where}: polygons must be lists of numbers")
        polygons = [[float(v) for v in p] for p in segm if len(p) % 2 == 0 and len(p) >= 6]
        return polygons or None
    raise ValueError(
        f"{where}: segmentation must be null, an RLE dict or polygons, got {type(segm).__name__}"
    )


def load_ytvis(source: dict[str, Any] | str | Path) -> tuple[list[VideoRecord], list[dict[str, Any]]]:
    """Read a YouTube-VIS json (path or dict): (videos sorted by id, categories sorted by id)."""
    data = source if isinstance(source, dict) else json.loads(Path(source).read_text())
    for key in ("videos", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"YouTube-VIS json: '{key}' must be a list")
    categories = sorted(data["categories"], key=lambda c: int(c["id"]))
    to_label = {int(c["id"]): i for i, c in enumerate(categories)}
    records: dict[int, VideoRecord] = {}
    for v in data["videos"]:
        missing = {"id", "file_names", "height", "width"} - set(v)
        if missing:
            raise ValueError(f"video {v.get('id', '?')}: missing {sorted(missing)}")
        length = int(v.get("length", len(v["file_names"])))
        if len(v["file_names"]) != length:
            raise ValueError(f"video {v['id']}: {len(v['file_names'])} file_names but length {length}")
        if int(v["id"]) in records:
            raise ValueError(f"video {v['id']}: duplicate video id")
        records[int(v["id"])] = VideoRecord(
            int(v["id"]), list(v["file_names"]), int(v["height"]), int(v["width"]), length
        )
    seen: set[int] = set()
    for ann in data["annotations"]:
        missing = {"id", "video_id", "category_id", "segmentations"} - set(ann)
        if missing:
            raise ValueError(f"annotation {ann.get('id', '?')}: missing {sorted(missing)}")
        where = f"annotation {ann['id']}"
        if int(ann["id"]) in seen:
            raise ValueError(f"{where}: duplicate annotation id")
        seen.add(int(ann["id"]))
        record = records.get(int(ann["video_id"]))
        if record is None:
            raise ValueError(f"{where}: video_id {ann['video_id']} is not in 'videos'")
        if int(ann["category_id"]) not in to_label:
            raise ValueError(f"{where}: category_id {ann['category_id']} is not in 'categories'")
        segms = ann["segmentations"]
        if not isinstance(segms, list) or len(segms) != record.length:
            got = len(segms) if isinstance(segms, list) else type(segms).__name__
            raise ValueError(
                f"{where}: 'segmentations' must hold one entry per frame ({record.length}), got {got}"
            )
        frames = [
            _frame_segmentation(s, record.height, record.width, f"{where} frame {f}")
            for f, s in enumerate(segms)
        ]
        record.instances.append(
            VideoInstance(
                int(ann["id"]),
                int(ann["category_id"]),
                to_label[int(ann["category_id"])],
                int(ann.get("iscrowd", 0)),
                frames,
            )
        )
    return [records[k] for k in sorted(records)], categories


def decode_segmentation(segm: Segmentation | None, height: int, width: int) -> np.ndarray:
    """(height, width) bool mask of one frame's segmentation (all False when absent)."""
    if segm is None:
        return np.zeros((height, width), dtype=bool)
    mask_utils = _mask_utils()
    rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width)) if isinstance(segm, list) else segm
    return mask_utils.decode([rle])[:, :, 0].astype(bool)


# ------------------------------------------------------------------------------------------ sampling
def sample_clip_frames(
    length: int, num_frames: int = 2, frame_range: int = 20, shuffle: bool = False, rng: Any = None
) -> list[int]:
    """The original training clip sampling (INPUT.SAMPLING_FRAME_NUM / _RANGE / _SHUFFLE).

    A one-frame video repeats its only frame (the original fails there).
    """
    if length < 1:
        raise ValueError(f"video length must be >= 1, got {length}")
    if num_frames < 1 or frame_range < 0:
        raise ValueError(f"need num_frames >= 1 and frame_range >= 0, got {num_frames}, {frame_range}")
    random = Random(rng)
    ref = random.integer(length)
    candidates = list(range(max(0, ref - frame_range), ref)) + list(
        range(ref + 1, min(length, ref + frame_range + 1))
    )
    if not candidates:
        candidates = [ref]
    others = [candidates[random.integer(len(candidates))] for _ in range(num_frames - 1)]
    selected = sorted([*others, ref])
    if shuffle:
        for i in range(len(selected) - 1, 0, -1):
            j = random.integer(i + 1)
            selected[i], selected[j] = selected[j], selected[i]
    return selected


# ------------------------------------------------------------------------------------- augmentation
class ClipAugmentation:
    """ResizeShortestEdge + RandomFlip with the video configs' per-clip sampling.

    Args:
        min_size_train: short-side lengths (INPUT.MIN_SIZE_TRAIN; YouTube-VIS: (360, 480)).
        max_size_train: cap of the long side (INPUT.MAX_SIZE_TRAIN).
        sampling: "choice_by_clip" / "range_by_clip" (one draw per clip); per-frame "choice" / "range"
            would give frames of different sizes and is refused.
        random_flip: "flip_by_clip" (one horizontal-flip draw per clip), "horizontal" / "vertical" (one
            draw per frame), or "none".
    """

    def __init__(
        self,
        min_size_train: Sequence[int] | int = (360, 480),
        max_size_train: int = 2**63 - 1,
        sampling: str = "choice_by_clip",
        random_flip: str = "flip_by_clip",
    ) -> None:
        if sampling not in ("choice_by_clip", "range_by_clip"):
            raise ValueError(
                f"sampling must be 'choice_by_clip' or 'range_by_clip' (one size per clip), got {sampling!r}"
            )
        if random_flip not in ("flip_by_clip", "horizontal", "vertical", "none"):
            raise ValueError(
                f"random_flip must be flip_by_clip, horizontal, vertical or none, got {random_flip!r}"
            )
        sizes = (min_size_train,) if isinstance(min_size_train, int) else tuple(min_size_train)
        self.resize = ResizeShortestEdge(sizes, max_size_train, sampling.replace("_by_clip", ""))
        self.flip = (
            None
            if random_flip == "none"
            else RandomFlip(horizontal=random_flip != "vertical", vertical=random_flip == "vertical")
        )
        self.flip_by_clip = random_flip == "flip_by_clip"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.resize!r}, {self.flip!r}, flip_by_clip={self.flip_by_clip})"

    def draw(self, height: int, width: int, num_frames: int, rng: Any = None) -> list[list[Transform]]:
        """The transforms of every frame of a clip of (height, width) frames, in the original draw order
        (resize then flip for the first frame, then a flip per later frame unless it is drawn per clip)."""
        random = Random(rng)
        probe = np.zeros((height, width, 1), dtype=np.uint8)  # the draws only look at the size
        resize: list[Transform] = []
        flip: list[Transform] = []
        out = []
        for f in range(num_frames):
            if f == 0:
                resize = self.resize.get_transforms(probe, None, random)
            if self.flip is not None and (f == 0 or not self.flip_by_clip):
                flip = self.flip.get_transforms(probe, None, random)
            out.append([*resize, *flip])
        return out


def _transform_polygons(
    polygons: list[list[float]], transforms: Sequence[Transform], height: int, width: int
):
    h, w = height, width
    out = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons]
    for t in transforms:
        if isinstance(t, ResizeTransform):
            out = [p * [t.new_w / t.w, t.new_h / t.h] for p in out]
            h, w = t.new_h, t.new_w
        elif isinstance(t, FlipTransform):
            out = [
                np.column_stack([w - p[:, 0], p[:, 1]])
                if t.horizontal
                else np.column_stack([p[:, 0], h - p[:, 1]])
                for p in out
            ]
        else:
            raise TypeError(f"polygons cannot follow a {type(t).__name__}")
    return [p.reshape(-1).tolist() for p in out], h, w


def transform_frame_mask(
    segm: Segmentation | None, height: int, width: int, transforms: Sequence[Transform]
) -> np.ndarray:
    """One frame's mask after the frame's transforms (polygons as coordinates, RLE as a mask)."""
    if isinstance(segm, list):
        polygons, h, w = _transform_polygons(segm, transforms, height, width)
        return decode_segmentation(polygons, h, w)
    mask = decode_segmentation(segm, height, width)
    for t in transforms:
        mask = t.apply_segmentation(mask, False, "pil")
    return mask


# ------------------------------------------------------------------------------------------- targets
def clip_targets(
    record: VideoRecord,
    frame_indices: Sequence[int],
    transforms: Sequence[Sequence[Transform]] | None = None,
    label_source: str = "track",
    num_classes: int | None = None,
) -> dict[str, np.ndarray]:
    """Targets of one clip: labels (N,), masks (N, T, H, W) bool, ids (N, T) (-1 where absent).

    Args:
        transforms: per frame the transforms it went through (`ClipAugmentation.draw`); None: none.
        label_source: "track" (the annotation's category) or "last_frame" (the original's rule, which needs
            `num_classes` for the no-object placeholder).
    """
    if label_source not in ("track", "last_frame"):
        raise ValueError(f"label_source must be 'track' or 'last_frame', got {label_source!r}")
    if label_source == "last_frame" and num_classes is None:
        raise ValueError(
            "label_source='last_frame' needs num_classes (the placeholder class of absent instances)"
        )
    if not frame_indices:
        raise ValueError("a clip needs at least one frame")
    bad = [f for f in frame_indices if not 0 <= f < record.length]
    if bad:
        raise ValueError(f"video {record.video_id}: frame indices {bad} outside [0, {record.length})")
    if transforms is not None and len(transforms) != len(frame_indices):
        raise ValueError(f"{len(transforms)} transform lists for {len(frame_indices)} frames")
    per_frame = transforms if transforms is not None else [[] for _ in frame_indices]
    instances = sorted(
        (
            inst
            for inst in record.instances
            if not inst.iscrowd and any(inst.segmentations[f] is not None for f in frame_indices)
        ),
        key=lambda inst: inst.id,
    )
    height, width = record.height, record.width
    for t in per_frame[0]:
        if isinstance(t, ResizeTransform):
            height, width = t.new_h, t.new_w
    masks = np.zeros((len(instances), len(frame_indices), height, width), dtype=bool)
    ids = np.full((len(instances), len(frame_indices)), -1, dtype=np.int64)
    for n, inst in enumerate(instances):
        for i, (f, ts) in enumerate(zip(frame_indices, per_frame, strict=True)):
            segm = inst.segmentations[f]
            if segm is None:
                continue
            mask = transform_frame_mask(segm, record.height, record.width, ts)
            if mask.shape != (height, width):
                raise ValueError(f"frame {f}: transformed to {mask.shape}, other frames to {(height, width)}")
            masks[n, i] = mask
            if mask.any():
                ids[n, i] = inst.id
    if label_source == "track":
        labels = np.array([inst.label for inst in instances], dtype=np.int64)
    else:
        labels = np.where(ids[:, -1] != -1, [inst.label for inst in instances], num_classes).astype(np.int64)
    valid = (ids != -1).any(axis=1)
    return {"labels": labels[valid].reshape(-1), "masks": masks[valid], "ids": ids[valid]}


def _read_frame(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


class YouTubeVISClipDataset:
    """Training clips of a YouTube-VIS dataset: item i samples a clip of video i, augments it, builds targets.

    Args:
        source: json path or dict. image_root: folder the ``file_names`` are relative to, or
        frame_loader: callable (record, frame index) -> (H, W, 3) uint8 (e.g. in-memory synthetic frames).
        num_frames / frame_range / shuffle: the clip sampling (the original's defaults: 2, 20, False).
        augmentation: a `ClipAugmentation` (None: frames at their own size).
        seed: clips are drawn from a generator seeded by (seed, epoch, index); `set_epoch` changes it.
    """

    def __init__(
        self,
        source: dict[str, Any] | str | Path,
        image_root: str | Path | None = None,
        frame_loader: Callable[[VideoRecord, int], np.ndarray] | None = None,
        num_frames: int = 2,
        frame_range: int = 20,
        shuffle: bool = False,
        augmentation: ClipAugmentation | None = None,
        label_source: str = "track",
        seed: int = 0,
    ) -> None:
        if (image_root is None) == (frame_loader is None):
            raise ValueError("give exactly one of image_root and frame_loader")
        self.records, self.categories = load_ytvis(source)
        self.image_root = None if image_root is None else Path(image_root)
        self.frame_loader = frame_loader
        self.num_frames, self.frame_range, self.shuffle = num_frames, frame_range, shuffle
        self.augmentation = augmentation
        self.label_source = label_source
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def load_frame(self, record: VideoRecord, index: int) -> np.ndarray:
        if self.frame_loader is not None:
            frame = np.asarray(self.frame_loader(record, index))
        else:
            assert self.image_root is not None
            frame = _read_frame(self.image_root / record.file_names[index])
        if frame.shape[:2] != (record.height, record.width):
            raise ValueError(
                f"video {record.video_id} frame {index}: image is {frame.shape[:2]}, the json says "
                f"{(record.height, record.width)}"
            )
        return frame

    def __getitem__(self, i: int) -> dict[str, Any]:
        """frames (T, H, W, 3) uint8, labels, masks (N, T, H, W), ids (N, T), video_id, frame_indices."""
        record = self.records[i]
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(self.epoch, i)))
        indices = sample_clip_frames(record.length, self.num_frames, self.frame_range, self.shuffle, rng)
        transforms = (
            self.augmentation.draw(record.height, record.width, len(indices), rng)
            if self.augmentation is not None
            else [[] for _ in indices]
        )
        frames = []
        for f, ts in zip(indices, transforms, strict=True):
            image = self.load_frame(record, f)
            for t in ts:
                image = t.apply_image(image)
            frames.append(image)
        targets = clip_targets(record, indices, transforms, self.label_source, len(self.categories))
        return {"frames": np.stack(frames), **targets, "video_id": record.video_id, "frame_indices": indices}


__all__ = [
    "ClipAugmentation",
    "VideoInstance",
    "VideoRecord",
    "YouTubeVISClipDataset",
    "clip_targets",
    "decode_segmentation",
    "load_ytvis",
    "sample_clip_frames",
    "transform_frame_mask",
]
