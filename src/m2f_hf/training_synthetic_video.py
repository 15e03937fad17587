"""Seeded synthetic moving-shapes videos with YouTube-VIS annotations, for tests, training and the demo.

Each video is a static sky / grass / wall background (the image generator's stuff layout and textures)
with 1..max_objects thing shapes (circle, rectangle, triangle, ellipse: the image generator's shapes)
moving with a constant velocity and spin. Shapes are painted back to front, so later ones occlude earlier
ones; a shape may enter late, leave early or drift out of the frame. A frame where an instance shows
fewer than `min_area` pixels is annotated null (its remaining pixels are repainted with background),
an instance visible in no frame is dropped. Everything is a pure function of (seed, index).

Annotations follow the YouTube-VIS json layout: ``videos`` (id, file_names, height, width, length),
``annotations`` (id, video_id, category_id, iscrowd, per-frame ``segmentations`` as compressed RLE or
null, ``bboxes`` [x, y, w, h] or null, ``areas`` or null) and ``categories`` (ids 1..4, the image
generator's thing categories).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .processing_postprocess import mask_bbox
from .training_synthetic import (
    ID2LABEL,
    THING_CLASSES,
    THING_IDS,
    draw_shape,
    shape_params,
    stuff_layout,
    stuff_texture,
)

VIDEO_CATEGORIES: list[dict[str, Any]] = [
    {"id": i + 1, "name": name, "isthing": 1} for i, name in enumerate(THING_CLASSES)
]
VIDEO_ID2LABEL: dict[int, str] = {i: ID2LABEL[i] for i in THING_IDS}


def _rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def make_synthetic_video(
    seed: int = 0,
    index: int = 0,
    num_frames: int = 8,
    size: tuple[int, int] = (96, 128),
    max_objects: int = 4,
    min_area: int = 20,
    speed: float = 0.04,
    first_annotation_id: int = 1,
) -> dict[str, Any]:
    """One synthetic video.

    Args:
        seed, index: the video is a pure function of both (index i is the same in any dataset size).
        num_frames: T. size: (H, W). max_objects: at most this many shapes (at least one).
        min_area: visible pixels below which an instance counts as absent from a frame.
        speed: largest per-frame displacement as a fraction of min(H, W).
        first_annotation_id: id of the first annotation (ids count up from it).

    Returns:
        dict with ``frames`` (T, H, W, 3) uint8, ``video`` and ``annotations`` (YouTube-VIS entries, video
        id = index), ``masks`` (N, T, H, W) bool, ``labels`` (N,) contiguous class ids (0..3).
    """
    height, width = (int(s) for s in size)
    if height < 16 or width < 16:
        raise ValueError(f"size must be at least 16x16, got {size}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, 1)))
    layout = stuff_layout(rng, height, width)
    background = stuff_texture(rng, layout)
    scale = min(height, width)

    objects = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        class_id = int(rng.choice(THING_IDS))
        shape = shape_params(rng, class_id, height, width)
        velocity = rng.uniform(-1.0, 1.0, 2) * speed * scale
        spin = float(rng.uniform(-0.1, 0.1))
        color = rng.uniform(20, 235, 3).astype(np.float32)
        start, stop = 0, num_frames
        if num_frames > 2 and rng.uniform() < 0.3:
            start = int(rng.integers(0, num_frames // 2))
        if num_frames > 2 and rng.uniform() < 0.3:
            stop = int(rng.integers(num_frames // 2 + 1, num_frames + 1))
        objects.append((class_id, shape, velocity, spin, color, start, stop))

    frames = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    visible = np.zeros((len(objects), num_frames, height, width), dtype=bool)
    shade = np.linspace(-25, 25, height, dtype=np.float32)[:, None, None]
    for f in range(num_frames):
        image = background + rng.normal(0.0, 3.0, (height, width, 1)).astype(np.float32)
        painted = np.zeros((height, width), dtype=np.int32)
        for k, (_, shape, velocity, spin, color, start, stop) in enumerate(objects):
            if not start <= f < stop:
                continue
            mask = draw_shape(shape.moved(velocity[0] * f, velocity[1] * f, spin * f), height, width)
            image[mask] = np.broadcast_to(color + shade, (height, width, 3))[mask]
            painted[mask] = k + 1
        for k in range(len(objects)):
            region = painted == k + 1
            if region.sum() >= min_area:
                visible[k, f] = region
            elif region.any():
                image[region] = background[region]  # too small to annotate: not drawn either
        frames[f] = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    keep = [k for k in range(len(objects)) if visible[k].any()]
    video_id = int(index)
    annotations = []
    for n, k in enumerate(keep):
        segms, boxes, areas = [], [], []
        for f in range(num_frames):
            m = visible[k, f]
            segms.append(_rle(m) if m.any() else None)
            boxes.append(mask_bbox(m) if m.any() else None)
            areas.append(int(m.sum()) if m.any() else None)
        annotations.append(
            {
                "id": first_annotation_id + n,
                "video_id": video_id,
                "category_id": objects[k][0] + 1,
                "iscrowd": 0,
                "segmentations": segms,
                "bboxes": boxes,
                "areas": areas,
            }
        )
    return {
        "frames": frames,
        "video": {
            "id": video_id,
            "file_names": [f"{video_id:05d}/{f:05d}.png" for f in range(num_frames)],
            "height": height,
            "width": width,
            "length": num_frames,
        },
        "annotations": annotations,
        "masks": visible[keep],
        "labels": np.array([objects[k][0] for k in keep], dtype=np.int64),
    }


def make_synthetic_video_dataset(
    num_videos: int,
    num_frames: int = 8,
    size: tuple[int, int] = (96, 128),
    seed: int = 0,
    max_objects: int = 4,
    min_area: int = 20,
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """`num_videos` videos as (YouTube-VIS json dict, list of (T, H, W, 3) frame arrays); annotation ids
    are unique over the dataset."""
    if num_videos < 0:
        raise ValueError(f"num_videos must be >= 0, got {num_videos}")
    dataset: dict[str, Any] = {"videos": [], "annotations": [], "categories": VIDEO_CATEGORIES}
    frames = []
    for i in range(num_videos):
        video = make_synthetic_video(
            seed,
            i,
            num_frames,
            size,
            max_objects,
            min_area,
            first_annotation_id=len(dataset["annotations"]) + 1,
        )
        dataset["videos"].append(video["video"])
        dataset["annotations"].extend(video["annotations"])
        frames.append(video["frames"])
    return dataset, frames


def write_ytvis(dataset: dict[str, Any], frames: list[np.ndarray], root: str | Path) -> Path:
    """Write frames as root/JPEGImages/<file_name> PNGs and the json as root/annotations.json; returns it."""
    root = Path(root)
    for video, clip in zip(dataset["videos"], frames, strict=True):
        for name, frame in zip(video["file_names"], clip, strict=True):
            path = root / "JPEGImages" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame).save(path)
    path = root / "annotations.json"
    path.write_text(json.dumps(dataset))
    return path


__all__ = [
    "VIDEO_CATEGORIES",
    "VIDEO_ID2LABEL",
    "make_synthetic_video",
    "make_synthetic_video_dataset",
    "write_ytvis",
]
