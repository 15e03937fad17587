"""Seeded fuzz of the processor, the post-processing and the pipeline (> 1,000 cases, well under a minute).

Each generated case knows whether it is valid. Valid cases must succeed with the right output sizes;
invalid ones (bool / NaN / out-of-range values, unsupported channel counts, empty images, bad target
sizes) must raise the package's ValueError / TypeError with a one-line message. Any other exception type,
or a wrong size, fails the test with the case's description.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from tiny_m2f import save_tiny
from transformers import pipeline

from m2f_hf import M2fHfImageProcessor
from m2f_hf.image_processing_m2f import resized_shape
from m2f_hf.modeling_m2f import Mask2FormerForUniversalSegmentationOutput

EXPECTED_ERRORS = (ValueError, TypeError)
# fixed by default (reproducible CI); set M2F_FUZZ_SEED to explore other cases
SEED = int(os.environ.get("M2F_FUZZ_SEED", "0"))
PIL_MODES = ("RGB", "L", "LA", "RGBA", "P", "CMYK", "1", "I;16", "I", "F", "YCbCr")


def _side(rng: np.random.Generator) -> int:
    return int(rng.choice([1, 2, 3, 4, 5, int(rng.integers(6, 80)), int(rng.integers(80, 400))]))


def _array_case(rng: np.random.Generator) -> tuple[object, tuple[int, int], dict, bool, str]:
    """(image, true (H, W), call kwargs, valid, description) for a numpy / torch input."""
    h, w = _side(rng), _side(rng)
    if rng.random() < 0.03:
        h = 0  # empty
    channels = int(rng.choice([0, 1, 2, 3, 3, 4, 5]))  # 0: a 2-d (H, W) array
    dtype = rng.choice(["uint8", "uint16", "int32", "int64", "float32", "float64", "float16", "bool", "int8"])
    shape = (h, w) if channels == 0 else (h, w, channels)
    valid = h > 0 and channels != 5 and dtype != "bool"
    if dtype == "bool":
        array = rng.random(shape) < 0.5
    elif dtype.startswith("float"):
        array = rng.random(shape).astype(dtype)
        if rng.random() < 0.1:  # 0..255 floats or NaN: rejected
            array = (array * 255).astype(dtype) + 2
            valid = False
        elif rng.random() < 0.05 and array.size:
            array.flat[0] = np.nan
            valid = False
    else:
        info = np.iinfo(dtype)
        high = {"uint16": 65536, "int8": 128}.get(dtype, 256)
        array = rng.integers(0, high, shape).astype(dtype)
        if dtype not in ("uint8", "uint16") and rng.random() < 0.1 and array.size:
            array.flat[0] = info.min if dtype == "int8" else 1000  # outside 0..255: rejected
            valid = False
    kwargs: dict = {}
    layout = "last"
    if channels and rng.random() < 0.5:
        array = np.moveaxis(array, -1, 0)
        layout = "first"
    ambiguous = array.ndim == 3 and array.shape[0] in (1, 2, 3, 4) and array.shape[-1] in (1, 2, 3, 4)
    # 5 channels: told explicitly (a (2, 4, 5) array is otherwise a valid 2-channel CHW image)
    if array.ndim == 3 and (ambiguous or channels == 5 or rng.random() < 0.3):
        kwargs["input_data_format"] = f"channels_{layout}"
    if array.ndim == 3 and array.shape[0] not in (1, 2, 3, 4) and array.shape[-1] not in (1, 2, 3, 4):
        valid = valid and "input_data_format" in kwargs and channels != 5
    if rng.random() < 0.3 and dtype not in ("uint16", "float16"):
        array = torch.from_numpy(np.ascontiguousarray(array))
    return array, (h, w), kwargs, valid, f"{type(array).__name__} {dtype} shape {tuple(array.shape)} {kwargs}"


def _pil_case(rng: np.random.Generator) -> tuple[object, tuple[int, int], dict, bool, str]:
    h, w = _side(rng), _side(rng)
    mode = str(rng.choice(PIL_MODES))
    base = PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if mode == "I;16":
        image = PIL.Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16))
    elif mode == "I":
        image = PIL.Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.int32))
    elif mode == "F":
        image = PIL.Image.fromarray(rng.random((h, w)).astype(np.float32))
    else:
        image = base.convert(mode)
    return image, (h, w), {}, True, f"PIL {mode} {w}x{h}"


def _size_kwargs(rng: np.random.Generator) -> tuple[dict, int, int | None, int]:
    shortest = int(rng.choice([1, 7, 32, 64, int(rng.integers(2, 200))]))
    longest = None if rng.random() < 0.3 else shortest + int(rng.integers(0, 300))
    divisor = int(rng.choice([0, 1, 4, 32]))
    size = (
        {"shortest_edge": shortest}
        if longest is None
        else {"shortest_edge": shortest, "longest_edge": longest}
    )
    return {"size": size, "size_divisibility": divisor}, shortest, longest, divisor


def _check_one_line(exc: BaseException, description: str) -> None:
    message = str(exc)
    assert message and "\n" not in message, f"{description}: unclear error {exc!r}"


def test_fuzz_processor():
    rng = np.random.default_rng(20261205 + SEED)
    processor = M2fHfImageProcessor()
    failures = []
    for case in range(700):
        batch = [
            (_pil_case if rng.random() < 0.35 else _array_case)(rng) for _ in range(int(rng.integers(1, 3)))
        ]
        # a batch shares the call kwargs: use those of the first image and only same-format images
        kwargs = dict(batch[0][2])
        batch = [item for item in batch if item[2] == batch[0][2]]
        size_kwargs, shortest, longest, divisor = _size_kwargs(rng)
        description = f"case {case}: " + "; ".join(item[4] for item in batch) + f" {size_kwargs}"
        valid = all(item[3] for item in batch)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                encoded = processor(
                    images=[item[0] for item in batch], return_tensors="pt", **kwargs, **size_kwargs
                )
        except EXPECTED_ERRORS as exc:
            if valid:
                failures.append(f"{description}: valid input rejected: {exc!r}")
            else:
                _check_one_line(exc, description)
            continue
        except Exception as exc:  # noqa: BLE001  (the point of the test)
            failures.append(f"{description}: unexpected {type(exc).__name__}: {exc}")
            continue
        if not valid:
            failures.append(f"{description}: invalid input accepted")
            continue
        sizes = [resized_shape(h, w, shortest, longest) for _, (h, w), *_ in batch]
        if encoded["original_sizes"].tolist() != [list(item[1]) for item in batch]:
            failures.append(f"{description}: original_sizes {encoded['original_sizes'].tolist()}")
        if encoded["image_sizes"].tolist() != [list(s) for s in sizes] or min(min(s) for s in sizes) < 1:
            failures.append(f"{description}: image_sizes {encoded['image_sizes'].tolist()} != {sizes}")
        height, width = max(s[0] for s in sizes), max(s[1] for s in sizes)
        if divisor > 1:
            height, width = math.ceil(height / divisor) * divisor, math.ceil(width / divisor) * divisor
        if tuple(encoded["pixel_values"].shape) != (len(batch), 3, height, width):
            failures.append(f"{description}: pixel_values {tuple(encoded['pixel_values'].shape)}")
        if not torch.isfinite(encoded["pixel_values"]).all():
            failures.append(f"{description}: non-finite pixel values")
        for i, (h, w) in enumerate(sizes):
            if int(encoded["pixel_mask"][i].sum()) != h * w:
                failures.append(f"{description}: pixel_mask of image {i}")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:20])


def _target(rng: np.random.Generator) -> tuple[object, bool]:
    choice = rng.random()
    if choice < 0.08:
        return (int(rng.integers(-5, 1)), int(rng.integers(1, 40))), False
    if choice < 0.11:
        return (int(rng.integers(1, 40)),), False
    return (int(rng.integers(1, 60)), int(rng.integers(1, 60))), True


def test_fuzz_post_processing():
    rng = np.random.default_rng(7 + SEED)
    torch.manual_seed(7 + SEED)
    failures = []
    for case in range(450):
        batch, queries, classes = int(rng.integers(1, 4)), int(rng.integers(1, 12)), int(rng.integers(1, 7))
        h, w = int(rng.integers(1, 12)), int(rng.integers(1, 12))
        scale = float(rng.choice([0.1, 1.0, 5.0, 30.0]))
        outputs = Mask2FormerForUniversalSegmentationOutput(
            class_queries_logits=torch.randn(batch, queries, classes + 1) * scale,
            masks_queries_logits=torch.randn(batch, queries, h, w) * scale,
        )
        if rng.random() < 0.5:
            sizes = [[int(rng.integers(1, 4 * h + 1)), int(rng.integers(1, 4 * w + 1))] for _ in range(batch)]
            outputs.image_sizes = torch.tensor(sizes)
        else:
            sizes = [[4 * h, 4 * w]] * batch
        targets, valid = None, True
        if rng.random() < 0.8:
            drawn = [_target(rng) for _ in range(batch)]
            targets = [t for t, _ in drawn]
            valid = all(ok for _, ok in drawn)
            if valid and rng.random() < 0.3:
                targets = torch.tensor(targets)
        expected = sizes if targets is None else [list(t) for t in targets] if valid else None
        processor = M2fHfImageProcessor(
            thing_ids=None
            if rng.random() < 0.3
            else sorted(rng.choice(classes, rng.integers(0, classes + 1), False)),
            sem_seg_postprocess_before_inference=bool(rng.random() < 0.5),
            test_topk_per_image=int(rng.integers(1, 2 * queries * classes + 2)),
        )
        task = str(rng.choice(["semantic", "panoptic", "instance"]))
        threshold = float(rng.choice([0.0, 0.3, 0.8, 1.0, rng.random()]))
        mask_threshold = float(rng.choice([0.0, 0.5, 1.0, rng.random()]))
        if task == "instance" and not 0.0 < mask_threshold < 1.0:
            valid = False  # documented: instance mask thresholds lie strictly between 0 and 1
        description = (
            f"case {case}: {task} B={batch} Q={queries} K={classes} {h}x{w} sizes={sizes} targets={targets}"
        )
        try:
            if task == "semantic":
                results = processor.post_process_semantic_segmentation(
                    outputs, target_sizes=targets, return_segmentation_scores=bool(rng.random() < 0.2)
                )
                maps = [r["segmentation"] if hasattr(r, "keys") else r for r in results]
            elif task == "panoptic":
                fuse = None if rng.random() < 0.5 else set(rng.choice(classes + 2, 2).tolist())
                results = processor.post_process_panoptic_segmentation(
                    outputs,
                    threshold=threshold,
                    mask_threshold=mask_threshold,
                    overlap_mask_area_threshold=float(rng.random()),
                    label_ids_to_fuse=fuse,
                    target_sizes=targets,
                )
                maps = [r["segmentation"] for r in results]
            else:
                flags = rng.choice(["map", "binary", "coco"])
                results = processor.post_process_instance_segmentation(
                    outputs,
                    threshold=None if rng.random() < 0.3 else threshold,
                    mask_threshold=mask_threshold,
                    target_sizes=targets,
                    return_binary_maps=flags == "binary",
                    return_coco_annotation=flags == "coco",
                )
                maps = [r["segmentation"] for r in results] if flags == "map" else None
                if flags == "binary":
                    for r, size in zip(results, expected or [], strict=False):
                        shape = tuple(r["segmentation"].shape)
                        # transformers' convention: no detection at all gives the (H, W) -1 map
                        empty_map = not r["segments_info"] and shape == tuple(size)
                        if shape != (len(r["segments_info"]), *size) and not empty_map:
                            failures.append(f"{description}: binary maps {shape}")
                if flags == "coco":
                    for r, size in zip(results, expected or [], strict=False):
                        if any(list(rle["size"]) != size for rle in r["segmentation"]):
                            failures.append(f"{description}: RLE sizes")
        except EXPECTED_ERRORS as exc:
            if valid:
                failures.append(f"{description}: valid input rejected: {exc!r}")
            else:
                _check_one_line(exc, description)
            continue
        except Exception as exc:  # noqa: BLE001
            failures.append(f"{description}: unexpected {type(exc).__name__}: {exc}")
            continue
        if not valid:
            failures.append(f"{description}: invalid target sizes accepted")
            continue
        if len(results) != batch:
            failures.append(f"{description}: {len(results)} results")
        for i, segmentation in enumerate(maps or []):
            if list(segmentation.shape) != list(expected[i]):
                failures.append(f"{description}: image {i} map {tuple(segmentation.shape)} != {expected[i]}")
            if (
                task == "semantic"
                and segmentation.numel()
                and not 0 <= int(segmentation.min()) <= int(segmentation.max()) < classes
            ):
                failures.append(f"{description}: semantic labels outside [0, {classes})")
            if task != "semantic":
                # none: 0 (panoptic), -1 (transformers' instance map, or its map without any candidate)
                ids = set(torch.unique(segmentation).tolist()) - {0, -1}
                listed = {s["id"] for s in results[i]["segments_info"]}
                if not ids <= listed:
                    failures.append(f"{description}: map ids {ids} not in segments_info {listed}")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:20])


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    folder = save_tiny(tmp_path_factory.mktemp("fuzz_model") / "panoptic", "panoptic")
    return pipeline("image-segmentation", model=str(folder))


def test_fuzz_pipeline(segmenter):
    rng = np.random.default_rng(11 + SEED)
    failures = []
    for case in range(40):
        images = [_pil_case(rng)[0] for _ in range(int(rng.integers(1, 4)))]
        if rng.random() < 0.2:  # extreme aspect ratios
            images[0] = PIL.Image.new("RGB", (int(rng.integers(1, 4)), int(rng.integers(300, 1200))))
        subtask = str(rng.choice(["semantic", "panoptic", "instance"]))
        threshold = float(rng.choice([0.0, 0.5, rng.random()]))
        description = f"case {case}: {subtask} {[(im.mode, im.size) for im in images]} threshold={threshold}"
        try:
            results = segmenter(
                images, subtask=subtask, threshold=threshold, batch_size=int(rng.integers(1, 4))
            )
        except Exception as exc:  # noqa: BLE001
            failures.append(f"{description}: {type(exc).__name__}: {exc}")
            continue
        for image, result in zip(images, results, strict=True):
            for segment in result:
                if segment["mask"].size != image.size:
                    failures.append(f"{description}: mask {segment['mask'].size} for image {image.size}")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:20])
