"""A small seeded synthetic segmentation dataset: coloured shapes (things) on textured backgrounds (stuff).

It gives semantic, instance and COCO-panoptic views of the same scene, so training, targets, augmentation and
evaluation code can be exercised end to end without downloading a real dataset. Every image is a pure
function of (seed, index).

Classes (contiguous training ids): things 0-3 = circle, rectangle, triangle, ellipse; stuff 4-6 = sky,
grass, wall. The COCO-style files use category ids = contiguous id + 1 (`CATEGORY_ID_TO_CONTIGUOUS`).

`palette` chooses the colour of the shapes: "random" (the default) paints each shape in a uniformly random
colour, so only its outline tells its class; "by_class" draws it from a hue band of its class (circle
yellow, rectangle magenta, triangle cyan, ellipse violet, `THING_HUES`; random saturation and brightness),
so colour is a cue as well, as it is for the stuff classes. The bundled demo model is trained on
"by_class" (see its model card).
"""

from __future__ import annotations

import colorsys
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .processing_postprocess import mask_bbox
from .processing_targets import id_to_rgb, rgb_to_id

__all__ = [
    "CATEGORY_ID_TO_CONTIGUOUS",
    "ID2LABEL",
    "LABEL2ID",
    "STUFF_CLASSES",
    "PALETTES",
    "STUFF_IDS",
    "SYNTHETIC_CATEGORIES",
    "THING_CLASSES",
    "THING_HUES",
    "THING_IDS",
    "load_coco_panoptic",
    "make_synthetic_dataset",
    "make_synthetic_sample",
    "to_hf_dataset",
    "write_coco_panoptic",
]

THING_CLASSES: tuple[str, ...] = ("circle", "rectangle", "triangle", "ellipse")
STUFF_CLASSES: tuple[str, ...] = ("sky", "grass", "wall")
ID2LABEL: dict[int, str] = dict(enumerate(THING_CLASSES + STUFF_CLASSES))
LABEL2ID: dict[str, int] = {name: i for i, name in ID2LABEL.items()}
THING_IDS: tuple[int, ...] = tuple(range(len(THING_CLASSES)))
STUFF_IDS: tuple[int, ...] = tuple(range(len(THING_CLASSES), len(ID2LABEL)))
_SKY, _GRASS, _WALL = STUFF_IDS
PALETTES = ("random", "by_class")
# palette "by_class": centre of each thing class's hue band in degrees (away from sky blue, grass green and
# the brick wall)
THING_HUES: dict[str, float] = {"circle": 55.0, "rectangle": 320.0, "triangle": 175.0, "ellipse": 270.0}

_CATEGORY_COLORS = [
    (220, 20, 60),
    (0, 0, 142),
    (250, 170, 30),
    (119, 11, 32),
    (70, 130, 180),
    (107, 142, 35),
    (102, 102, 156),
]
SYNTHETIC_CATEGORIES: list[dict[str, Any]] = [
    {
        "id": i + 1,
        "name": name,
        "isthing": int(i in THING_IDS),
        "color": list(_CATEGORY_COLORS[i]),
        "supercategory": "shape" if i in THING_IDS else "background",
    }
    for i, name in ID2LABEL.items()
]
CATEGORY_ID_TO_CONTIGUOUS: dict[int, int] = {c["id"]: i for i, c in enumerate(SYNTHETIC_CATEGORIES)}


# ------------------------------------------------------------------------------------------------ drawing
def stuff_layout(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Sky above a wavy horizon, grass below, and sometimes a wall block standing on the horizon."""
    xs = np.arange(width)
    horizon = rng.uniform(0.3, 0.6) * height + rng.uniform(0.0, 0.06) * height * np.sin(
        xs * rng.uniform(0.02, 0.12) + rng.uniform(0, 2 * np.pi)
    )
    rows = np.arange(height)[:, None]
    layout = np.where(rows < horizon[None, :], _SKY, _GRASS).astype(np.uint8)
    if rng.uniform() < 0.7:
        x0 = int(rng.uniform(0.0, 0.6) * width)
        x1 = min(width, x0 + max(4, int(rng.uniform(0.2, 0.4) * width)))
        top = int(rng.uniform(0.05, 0.25) * height)
        wall = (rows >= top) & (rows < horizon[None, :]) & (xs[None, :] >= x0) & (xs[None, :] < x1)
        layout[wall] = _WALL
    return layout


def stuff_texture(rng: np.random.Generator, layout: np.ndarray) -> np.ndarray:
    """Gradient sky, noisy grass, striped brick wall."""
    height, width = layout.shape
    rows = np.arange(height, dtype=np.float32)[:, None] / max(height - 1, 1)
    cols = np.arange(width, dtype=np.float32)[None, :]
    image = np.zeros((height, width, 3), dtype=np.float32)
    sky_top, sky_bottom = np.array([40, 90, 200], np.float32), np.array([170, 210, 250], np.float32)
    sky = sky_top + (sky_bottom - sky_top) * rows[..., None]
    grass = np.array([50, 140, 40], np.float32) + rng.normal(0.0, 18.0, (height, width, 1)) * [0.6, 1.0, 0.5]
    bricks = ((np.arange(height)[:, None] % 8) == 0) | (
        ((cols + 8 * (np.arange(height)[:, None] // 8 % 2)) % 16) == 0
    )
    wall = np.where(bricks[..., None], [90, 80, 75], [170, 90, 70]).astype(np.float32)
    wall = wall + rng.normal(0.0, 6.0, (height, width, 1))
    for class_id, texture in ((_SKY, sky), (_GRASS, grass), (_WALL, wall)):
        region = layout == class_id
        image[region] = np.broadcast_to(texture, (height, width, 3))[region]
    return image


@dataclass(frozen=True)
class ShapeParams:
    """Geometry of one thing shape: class, centre, size, orientation and the class-specific extras
    (rectangle aspect, ellipse aspect, triangle vertex jitter)."""

    class_id: int
    cy: float
    cx: float
    size: float
    angle: float
    extra: tuple[float, ...] = ()

    def moved(self, dy: float, dx: float, dangle: float = 0.0) -> ShapeParams:
        return replace(self, cy=self.cy + dy, cx=self.cx + dx, angle=self.angle + dangle)


def shape_params(rng: np.random.Generator, class_id: int, height: int, width: int) -> ShapeParams:
    """Random geometry of a shape of the given thing class (the draws of the image generator, in order)."""
    scale = min(height, width)
    cy, cx = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
    size = rng.uniform(0.08, 0.22) * scale
    angle = rng.uniform(0.0, np.pi)
    name = ID2LABEL[class_id]
    extra: tuple[float, ...] = ()
    if name == "rectangle":
        extra = (float(rng.uniform(0.4, 1.0)),)
    elif name == "ellipse":
        extra = (float(rng.uniform(0.35, 0.7)),)
    elif name == "triangle":
        extra = tuple(float(v) for v in rng.uniform(-0.3, 0.3, 3))
    return ShapeParams(class_id, float(cy), float(cx), float(size), float(angle), extra)


def draw_shape(shape: ShapeParams, height: int, width: int) -> np.ndarray:
    """Boolean (height, width) mask of a shape (it may lie partly or wholly outside the frame)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx, size, angle = shape.cy, shape.cx, shape.size, shape.angle
    cos, sin = np.cos(angle), np.sin(angle)
    u = (xs - cx) * cos + (ys - cy) * sin  # shape-aligned coordinates
    v = -(xs - cx) * sin + (ys - cy) * cos
    name = ID2LABEL[shape.class_id]
    if name == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= size**2
    if name == "rectangle":
        return (np.abs(u) <= size) & (np.abs(v) <= size * shape.extra[0])
    if name == "ellipse":
        return (u / size) ** 2 + (v / (size * shape.extra[0])) ** 2 <= 1.0
    # triangle: three vertices at spread-out angles around the centre
    angles = angle + np.array([0.0, 2.0, 4.0]) * np.pi / 3 + np.array(shape.extra)
    px, py = cx + size * 1.3 * np.cos(angles), cy + size * 1.3 * np.sin(angles)
    inside = np.ones((height, width), dtype=bool)
    orientation = np.sign((px[1] - px[0]) * (py[2] - py[0]) - (py[1] - py[0]) * (px[2] - px[0]))
    for i in range(3):
        j = (i + 1) % 3
        edge = (px[j] - px[i]) * (ys - py[i]) - (py[j] - py[i]) * (xs - px[i])
        inside &= edge * orientation >= 0
    return inside


def _shape_mask(rng: np.random.Generator, class_id: int, height: int, width: int) -> np.ndarray:
    """Boolean mask of one random shape of the given thing class."""
    return draw_shape(shape_params(rng, class_id, height, width), height, width)


def _shape_color(rng: np.random.Generator, class_id: int, palette: str) -> np.ndarray:
    """Base RGB colour (float32, 0-255) of one shape."""
    if palette == "random":
        return rng.uniform(20, 235, 3).astype(np.float32)
    hue = (THING_HUES[ID2LABEL[class_id]] + rng.uniform(-10.0, 10.0)) % 360.0 / 360.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 0.95), rng.uniform(0.55, 0.95))
    return np.asarray(rgb, dtype=np.float32) * 255.0


def _unique_segment_ids(rng: np.random.Generator, count: int) -> list[int]:
    """Distinct random panoptic ids in [1, 2**24), so the PNG colour uses all three channels."""
    ids: list[int] = []
    while len(ids) < count:
        candidate = int(rng.integers(1, 256**3))
        if candidate not in ids:
            ids.append(candidate)
    return ids


def make_synthetic_sample(
    seed: int = 0,
    index: int = 0,
    size: tuple[int, int] = (128, 128),
    max_objects: int = 6,
    min_area: int = 30,
    palette: str = "random",
) -> dict[str, Any]:
    """One synthetic scene, a pure function of (seed, index) (and of `palette`, see the module docstring).

    Returns a dict with:
        image (H, W, 3) uint8; semantic_map (H, W) uint8 contiguous class ids (no ignore pixels);
        instance_map (H, W) int32, 0 where no thing, things numbered 1..n; instance_id_to_semantic_id;
        panoptic_map (H, W) int64 segment ids, panoptic_png its COCO RGB encoding, segments_info (COCO:
        id, category_id = contiguous + 1, iscrowd, area, bbox); image_id, file_name, height, width.
    """
    height, width = (int(s) for s in size)
    if height < 16 or width < 16:
        raise ValueError(f"size must be at least 16x16, got {size}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    if palette not in PALETTES:
        raise ValueError(f"palette must be one of {PALETTES}, got {palette!r}")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))

    layout = stuff_layout(rng, height, width)
    image = stuff_texture(rng, layout)

    # Paint shapes back to front: later shapes occlude earlier ones.
    painted = np.zeros((height, width), dtype=np.int32)
    shape_classes: list[int] = []
    for k in range(int(rng.integers(1, max_objects + 1))):
        class_id = int(rng.choice(THING_IDS))
        mask = _shape_mask(rng, class_id, height, width)
        base = _shape_color(rng, class_id, palette)
        shade = np.linspace(-25, 25, height, dtype=np.float32)[:, None, None] + rng.normal(
            0.0, 4.0, (height, width, 1)
        ).astype(np.float32)
        image[mask] = (base + shade)[mask]
        painted[mask] = k + 1
        shape_classes.append(class_id)

    # Keep instances still visible enough after occlusion; renumber them 1..n.
    instance_map = np.zeros((height, width), dtype=np.int32)
    instance_id_to_semantic_id: dict[int, int] = {}
    areas = np.bincount(painted.reshape(-1), minlength=len(shape_classes) + 1)
    for k, class_id in enumerate(shape_classes, start=1):
        if areas[k] >= min_area:
            new_id = len(instance_id_to_semantic_id) + 1
            instance_map[painted == k] = new_id
            instance_id_to_semantic_id[new_id] = class_id
    # Pixels of dropped shapes fall back to the stuff below (labels and texture alike).
    dropped = (painted > 0) & (instance_map == 0)
    if dropped.any():
        image[dropped] = stuff_texture(np.random.default_rng(0), layout)[dropped]

    semantic_map = layout.copy()
    for instance_id, class_id in instance_id_to_semantic_id.items():
        semantic_map[instance_map == instance_id] = class_id

    stuff_present = [c for c in STUFF_IDS if np.any((layout == c) & (instance_map == 0))]
    segment_ids = _unique_segment_ids(rng, len(instance_id_to_semantic_id) + len(stuff_present))
    panoptic_map = np.zeros((height, width), dtype=np.int64)
    segments_info: list[dict[str, Any]] = []
    regions = [(instance_map == i, c) for i, c in instance_id_to_semantic_id.items()]
    regions += [((layout == c) & (instance_map == 0), c) for c in stuff_present]
    for segment_id, (region, class_id) in zip(segment_ids, regions, strict=True):
        panoptic_map[region] = segment_id
        segments_info.append(
            {
                "id": segment_id,
                "category_id": class_id + 1,
                "iscrowd": 0,
                "area": int(region.sum()),
                "bbox": mask_bbox(region),
            }
        )

    image_id = int(index)
    return {
        "image_id": image_id,
        "file_name": f"{image_id:06d}.png",
        "height": height,
        "width": width,
        "image": np.clip(np.rint(image), 0, 255).astype(np.uint8),
        "semantic_map": semantic_map,
        "instance_map": instance_map,
        "instance_id_to_semantic_id": instance_id_to_semantic_id,
        "panoptic_map": panoptic_map,
        "panoptic_png": id_to_rgb(panoptic_map),
        "segments_info": segments_info,
    }


def make_synthetic_dataset(
    num_images: int,
    size: tuple[int, int] = (128, 128),
    seed: int = 0,
    max_objects: int = 6,
    min_area: int = 30,
    palette: str = "random",
) -> list[dict[str, Any]]:
    """`num_images` synthetic scenes (see `make_synthetic_sample`); image i is the same for any num_images."""
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    return [make_synthetic_sample(seed, i, size, max_objects, min_area, palette) for i in range(num_images)]


# ------------------------------------------------------------------------------------------------ files
def write_coco_panoptic(samples: Sequence[dict[str, Any]], root: str | Path) -> Path:
    """Write samples in COCO panoptic layout; returns the annotation json path.

    root/images/*.png, root/panoptic/*.png (RGB-encoded ids), root/semantic/*.png (uint8 class maps),
    root/annotations/panoptic.json with "images", "annotations" (segments_info) and "categories".
    """
    root = Path(root)
    for sub in ("images", "panoptic", "semantic", "annotations"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for sample in samples:
        name = sample["file_name"]
        Image.fromarray(sample["image"]).save(root / "images" / name)
        Image.fromarray(sample["panoptic_png"]).save(root / "panoptic" / name)
        Image.fromarray(sample["semantic_map"]).save(root / "semantic" / name)
        images.append(
            {
                "id": sample["image_id"],
                "file_name": name,
                "height": sample["height"],
                "width": sample["width"],
            }
        )
        annotations.append(
            {"image_id": sample["image_id"], "file_name": name, "segments_info": sample["segments_info"]}
        )
    path = root / "annotations" / "panoptic.json"
    payload = {"images": images, "annotations": annotations, "categories": SYNTHETIC_CATEGORIES}
    path.write_text(json.dumps(payload, indent=1))
    return path


def load_coco_panoptic(root: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Read back a folder written by `write_coco_panoptic`: (samples, categories).

    Each sample has image_id, file_name, image, panoptic_png, panoptic_map (decoded ids), semantic_map and
    segments_info.
    """
    root = Path(root)
    path = root / "annotations" / "panoptic.json"
    if not path.is_file():
        raise FileNotFoundError(f"no COCO panoptic annotation file at {path}")
    payload = json.loads(path.read_text())
    by_image = {a["image_id"]: a for a in payload["annotations"]}
    samples = []
    for info in payload["images"]:
        name = info["file_name"]
        panoptic_png = np.asarray(Image.open(root / "panoptic" / name).convert("RGB"))
        semantic_path = root / "semantic" / name
        samples.append(
            {
                "image_id": info["id"],
                "file_name": name,
                "height": info["height"],
                "width": info["width"],
                "image": np.asarray(Image.open(root / "images" / name).convert("RGB")),
                "panoptic_png": panoptic_png,
                "panoptic_map": rgb_to_id(panoptic_png),
                "semantic_map": np.asarray(Image.open(semantic_path)) if semantic_path.is_file() else None,
                "segments_info": by_image[info["id"]]["segments_info"],
            }
        )
    return samples, payload["categories"]


def to_hf_dataset(samples: Sequence[dict[str, Any]]) -> Any:
    """A `datasets.Dataset` of the samples (needs the `datasets` package, the `train` extra).

    Columns: image_id, image, semantic_map and panoptic (PIL images), instance_map (int32 array),
    instance_classes (class of instance id k at position k - 1) and segments_info.
    """
    try:
        import datasets
    except ImportError as exc:
        raise ImportError("to_hf_dataset needs the `datasets` package: pip install 'm2f_hf[train]'") from exc
    if not samples:
        raise ValueError("to_hf_dataset needs at least one sample")
    height, width = samples[0]["height"], samples[0]["width"]
    if any((s["height"], s["width"]) != (height, width) for s in samples):
        raise ValueError("to_hf_dataset needs samples of one size (instance_map is a fixed-shape array)")
    features = datasets.Features(
        {
            "image_id": datasets.Value("int64"),
            "image": datasets.Image(),
            "semantic_map": datasets.Image(),
            "panoptic": datasets.Image(),
            "instance_map": datasets.Array2D(shape=(height, width), dtype="int32"),
            "instance_classes": datasets.List(datasets.Value("int64")),
            "segments_info": datasets.List(
                {
                    "id": datasets.Value("int64"),
                    "category_id": datasets.Value("int64"),
                    "iscrowd": datasets.Value("int64"),
                    "area": datasets.Value("int64"),
                    "bbox": datasets.List(datasets.Value("int64")),
                }
            ),
        }
    )
    rows = []
    for s in samples:
        mapping = s["instance_id_to_semantic_id"]
        rows.append(
            {
                "image_id": s["image_id"],
                "image": Image.fromarray(s["image"]),
                "semantic_map": Image.fromarray(s["semantic_map"]),
                "panoptic": Image.fromarray(s["panoptic_png"]),
                "instance_map": s["instance_map"],
                "instance_classes": [mapping[k] for k in range(1, len(mapping) + 1)],
                "segments_info": s["segments_info"],
            }
        )
    return datasets.Dataset.from_list(rows, features=features)
