"""`m2f-hf` command line: predict (overlays + JSON), convert (original / transformers checkpoints), demo,
calibrate (post-processing thresholds).

    m2f-hf predict IMAGE_OR_FOLDER... --model DIR_OR_REPO [--task panoptic|instance|semantic] --output out/
    m2f-hf convert original --checkpoint model_final.pkl --config cfg.yaml --output DIR
    m2f-hf convert transformers --model facebook/mask2former-... --output DIR
    m2f-hf demo --output DIR
    m2f-hf calibrate --model DIR (--dataset COCO_PANOPTIC_DIR | --synthetic N) [--write]

`predict` writes, per image, `<name>_<task>.png` (the overlay: colours by class, label text,
optional contours) and `<name>_<task>.json` (input folders are mirrored): image size, task, model, the
overlay's path relative to the output folder and one record per segment (id, label_id, label, score,
area, bbox [x, y, w, h], colour, COCO RLE of its mask). The ids of the
overlay's segments are the JSON ids; instance masks may overlap (the overlay shows the higher score).
Inputs whose names would give the same output name are told apart (`a.png` + `a.jpg` → `a_png_*`,
`a_jpg_*`; otherwise `_2`, `_3` ...). A file that cannot be read or segmented is skipped with a warning;
the rest are finished, a summary is printed and the exit status is 1. Each image runs through the model
alone (`--batch-size` batches the reading), so its result does not depend on the other inputs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from .processing_postprocess import mask_bbox

__all__ = ["IMAGE_SUFFIXES", "main", "predict", "build_parser"]

ASSETS = Path(__file__).resolve().parent / "assets"
DEMO_MODEL = ASSETS / "demo_model"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# the original demo (demo/demo.py --confidence-threshold) draws instances scoring at least 0.5
INSTANCE_DISPLAY_THRESHOLD = 0.5


class CliError(Exception):
    """A user-facing error: printed as `error: ...`, exit status 1."""


class PredictReport(list):
    """The JSON paths `predict` wrote (a list), and in `failed` the (image, one-line reason) it skipped."""

    def __init__(self) -> None:
        super().__init__()
        self.failed: list[tuple[Path, str]] = []


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0] if text.splitlines() else text


def check_device(device: str) -> torch.device:
    """`device` as a torch device, or a CliError saying why it cannot be used here."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CliError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from exc
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise CliError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise CliError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise CliError(f"--device {device}: MPS is not available on this machine (use --device cpu)")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise CliError(f"--device {device}: unsupported device type {parsed.type!r} (use cpu, cuda or mps)")
    return parsed


def _unit_interval(text: str) -> float:
    """argparse type of the thresholds and --alpha: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1]")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return value


# ---------------------------------------------------------------------------------------------- inputs
def collect_images(inputs: Sequence[str]) -> list[tuple[Path, Path]]:
    """(image path, output stem relative to the output folder) for files and, recursively, folders."""
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise CliError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            found += [(p, p.relative_to(path).with_suffix("")) for p in files]
        elif path.is_file():
            found.append((path, Path(path.stem)))
        else:
            raise CliError(f"input not found: {path}")
    return unique_stems(found)


def unique_stems(found: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """Output stems that never collide (compared case-insensitively, for case-insensitive file systems):
    inputs sharing a stem but not a suffix keep the suffix in their name (a.png, a.jpg → a_png, a_jpg);
    remaining clashes, and clashes with those new names, get _2, _3 ..."""
    by_stem: dict[str, set[str]] = {}
    for path, stem in found:
        by_stem.setdefault(stem.as_posix().lower(), set()).add(path.suffix.lower())
    taken: set[str] = set()
    unique = []
    for path, stem in found:
        if len(by_stem[stem.as_posix().lower()]) > 1:
            stem = stem.with_name(f"{stem.name}_{path.suffix.lstrip('.').lower()}")
        candidate, count = stem, 1
        while candidate.as_posix().lower() in taken:
            count += 1
            candidate = stem.with_name(f"{stem.name}_{count}")
        taken.add(candidate.as_posix().lower())
        unique.append((path, candidate))
    return unique


def open_image(path: Path) -> PIL.Image.Image:
    """The image as the original reads it: EXIF orientation applied (detectron2's `read_image`), pixel
    mode kept (16-bit files are scaled to 8 bits by the processor's rule, not clipped)."""
    from .processing_image_io import open_image as read

    try:
        return read(path)
    except ValueError as exc:
        raise CliError(_one_line(exc)) from exc


@contextlib.contextmanager
def _quiet_loading():
    """No transformers / Hub progress bars ("Loading weights") while a model loads."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


# ----------------------------------------------------------------------------------------------- model
def load_model(model_ref: str, device: str, dtype: str | None) -> tuple[Any, Any]:
    """m2f_hf model (eval) and processor from an m2f_hf folder / Hub id, or a transformers Mask2Former
    checkpoint (converted on the fly, with the original preprocessing of its dataset)."""
    from transformers import PreTrainedConfig

    from .conversion_transformers import TRANSFORMERS_MODEL_TYPE, processor_for_transformers_checkpoint
    from .image_processing_m2f import M2fHfImageProcessor
    from .modeling_m2f import Mask2FormerForUniversalSegmentation

    try:
        config_dict, _ = PreTrainedConfig.get_config_dict(model_ref)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot load model {model_ref!r}: {exc}") from exc
    kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
    try:
        with _quiet_loading():
            model = Mask2FormerForUniversalSegmentation.from_pretrained(model_ref, **kwargs)
            if config_dict.get("model_type") == TRANSFORMERS_MODEL_TYPE:
                processor = processor_for_transformers_checkpoint(model_ref)
            else:
                processor = M2fHfImageProcessor.from_pretrained(model_ref)
    except CliError:
        raise
    except Exception as exc:  # corrupt weights surface as safetensors / torch / OS errors of many types
        raise CliError(f"cannot load model {model_ref!r}: {_one_line(exc)}") from exc
    return model.eval().to(device), processor


def segments_of(
    result: Any, task: str, id2label: dict[int, str]
) -> tuple[np.ndarray, list[dict[str, Any]], list[np.ndarray]]:
    """One post-processed result → (H, W) segment-id map, segment records, full binary mask per segment."""
    if task == "semantic":
        classes = result.cpu().numpy()
        labels = np.unique(classes).tolist()
        segmentation = np.zeros(classes.shape, dtype=np.int32)
        records, masks = [], []
        for index, label in enumerate(labels, start=1):
            mask = classes == label
            segmentation[mask] = index
            records.append({"id": index, "label_id": int(label), "score": None})
            masks.append(mask)
    elif task == "panoptic":
        segmentation = result["segmentation"].cpu().numpy().astype(np.int32)
        records = [dict(s) for s in result["segments_info"]]
        masks = [segmentation == s["id"] for s in records]
    else:  # instance: full, possibly overlapping masks; the map shows the higher-scoring one (sorted first)
        binary = result["segmentation"].cpu().numpy().astype(bool)
        records = [dict(s) for s in result["segments_info"]]
        masks = list(binary)
        segmentation = np.zeros(binary.shape[1:], dtype=np.int32)
        for record, mask in reversed(list(zip(records, masks, strict=True))):
            segmentation[mask] = record["id"]
    for record, mask in zip(records, masks, strict=True):
        record["label"] = str(id2label.get(record["label_id"], record["label_id"]))
        record["area"] = int(mask.sum())
        record["bbox"] = mask_bbox(mask)
    return segmentation, records, masks


def legend_entries(
    records: Sequence[dict[str, Any]], colors: Sequence[tuple[int, int, int]]
) -> list[tuple[str, tuple[int, int, int]]]:
    """(caption, colour) per class present, in label-id order: the class name, with the number of its
    segments when there are several, and its base colour (its first segment's)."""
    first: dict[int, tuple[str, tuple[int, int, int]]] = {}
    counts: dict[int, int] = {}
    for record, color in zip(records, colors, strict=True):
        first.setdefault(record["label_id"], (record["label"], tuple(color)))
        counts[record["label_id"]] = counts.get(record["label_id"], 0) + 1
    return [
        (name if counts[label] == 1 else f"{name} x{counts[label]}", color)
        for label, (name, color) in sorted(first.items())
    ]


def _caption(record: dict[str, Any]) -> str:
    return record["label"] if record["score"] is None else f"{record['label']} {record['score']:.2f}"


def predict(
    inputs: Sequence[str],
    model_ref: str,
    output: str | Path,
    task: str | None = None,
    threshold: float | None = None,
    mask_threshold: float = 0.5,
    overlap_threshold: float | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    batch_size: int = 1,
    alpha: float = 0.55,
    contours: bool = False,
    draw_labels: bool = True,
    progress: bool = True,
    cpu_mode: str | None = None,
    legend: bool = False,
) -> PredictReport:
    """Segment every image of `inputs` (files or folders) and write overlays and JSON into `output`.

    cpu_mode: an opt-in CPU fast mode ("bf16", "int8" or "compile"; see `ecosystem_fast.optimize_for_cpu`
    and docs/performance.md for its measured speed and accuracy cost).

    threshold: panoptic query score threshold (default: the processor's, the original's 0.8) or the
    instance score filter (default: the processor's calibrated `instance_score_threshold`, else 0.5 as
    the original demo draws; 0 keeps the full top-k). Segments are coloured by class (`class_colors`:
    one colour family per class, the same in every task); `legend` adds a panel naming the classes.
    Each image is preprocessed and run through the model alone (batch-invariant results; `batch_size`
    images are read at a time). A file that cannot be read or segmented is skipped with a warning.
    Returns the JSON paths written (a list), with the skipped files in its `failed`.
    """
    from tqdm.auto import tqdm

    from .pipeline_m2f import SUBTASKS, default_subtask, forward_by_size, post_process

    if batch_size < 1:
        raise CliError(f"--batch-size must be >= 1, got {batch_size}")
    if task is not None and task not in SUBTASKS:
        raise CliError(f"--task must be one of {SUBTASKS}, got {task!r}")
    for name, value in (
        ("threshold", threshold),
        ("mask threshold", mask_threshold),
        ("overlap threshold", overlap_threshold),
        ("alpha", alpha),
    ):
        if value is not None and not 0.0 <= float(value) <= 1.0:
            raise CliError(f"the {name} must lie in [0, 1], got {value}")
    device = str(check_device(device))
    images = collect_images(inputs)
    model, processor = load_model(model_ref, device, dtype)
    if cpu_mode:
        from .ecosystem_fast import optimize_for_cpu

        if torch.device(device).type != "cpu" or (dtype not in (None, "float32")):
            raise CliError(f"--cpu-mode {cpu_mode} needs --device cpu and a float32 model")
        model = optimize_for_cpu(model, cpu_mode)
    task = task or default_subtask(model.config)
    if task == "instance" and threshold is None:  # a calibrated threshold, else what the original draws
        calibrated = getattr(processor, "instance_score_threshold", None)
        threshold = INSTANCE_DISPLAY_THRESHOLD if calibrated is None else calibrated
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    written = PredictReport()
    bar = tqdm(total=len(images), desc="segmenting", unit="image", disable=not progress or len(images) < 2)

    def skip(path: Path, exc: BaseException) -> None:
        reason = _one_line(exc)
        written.failed.append((path, reason))
        bar.write(f"warning: skipped {path}: {reason}", file=sys.stderr)
        bar.update()

    try:
        for start in range(0, len(images), batch_size):
            chunk, pictures, encoded = [], [], []
            for path, stem in images[start : start + batch_size]:
                try:
                    picture = open_image(path)
                    encoded.append(processor(images=[picture], return_tensors="pt"))
                except (CliError, ValueError, TypeError, OSError) as exc:
                    skip(path, exc)
                    continue
                chunk.append((path, stem))
                pictures.append(picture)
            if not chunk:
                continue
            with torch.no_grad():
                groups = forward_by_size(
                    model,
                    [e["pixel_values"].to(device=device, dtype=model.dtype) for e in encoded],
                    [e["pixel_mask"].to(device) for e in encoded],
                )
            for indices, outputs in groups:
                results = post_process(
                    processor,
                    outputs,
                    task,
                    target_sizes=torch.cat([encoded[i]["original_sizes"] for i in indices]),
                    threshold=threshold,
                    mask_threshold=mask_threshold,
                    overlap_mask_area_threshold=overlap_threshold,
                )
                for i, result in zip(indices, results, strict=True):
                    path, stem = chunk[i]
                    json_path = _write_result(
                        path, stem, pictures[i], result, task, model.config.id2label, str(model_ref), output,
                        dict(alpha=alpha, contours=contours, draw_labels=draw_labels), legend,
                    )  # fmt: skip
                    written.append(json_path)
                    bar.update()
    finally:
        bar.close()
    return written


def _write_result(
    path: Path,
    stem: Path,
    picture: PIL.Image.Image,
    result: Any,
    task: str,
    id2label: dict[int, str],
    model_ref: str,
    output: Path,
    style: dict[str, Any],
    legend: bool = False,
) -> Path:
    """One image's overlay PNG and JSON; returns the JSON path."""
    from .ecosystem_visualization import add_legend, class_colors, render_overlay
    from .processing_image_io import to_rgb_uint8
    from .processing_postprocess import rle_encode

    segmentation, records, masks = segments_of(result, task, id2label)
    colors = class_colors([r["label_id"] for r in records], len(id2label))
    rles = rle_encode(torch.from_numpy(np.stack(masks))) if masks else []
    for record, color, rle in zip(records, colors, rles, strict=True):
        record["color"] = list(color)
        record["rle"] = rle
    overlay = render_overlay(
        PIL.Image.fromarray(to_rgb_uint8(picture, 0)),  # 16-bit inputs scaled as the model saw them
        segmentation,
        [r["id"] for r in records],
        captions=[_caption(r) for r in records],
        colors=colors,
        **style,
    )
    if legend:
        overlay = add_legend(overlay, legend_entries(records, colors), title=task)
    base = output / stem
    base.parent.mkdir(parents=True, exist_ok=True)
    overlay_path = base.with_name(f"{base.name}_{task}.png")
    json_path = base.with_name(f"{base.name}_{task}.json")
    overlay.save(overlay_path)
    report = {
        "image": str(path),
        "width": picture.width,
        "height": picture.height,
        "task": task,
        "model": model_ref,
        "overlay": overlay_path.relative_to(output).as_posix(),
        "segments": records,
    }
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    return json_path


# ------------------------------------------------------------------------------------------- commands
def _cmd_predict(args: argparse.Namespace) -> int:
    written = predict(
        args.inputs,
        args.model,
        args.output,
        task=args.task,
        threshold=args.threshold,
        mask_threshold=args.mask_threshold,
        overlap_threshold=args.overlap_threshold,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        alpha=args.alpha,
        contours=args.contours,
        draw_labels=not args.no_labels,
        progress=not args.quiet,
        cpu_mode=args.cpu_mode,
        legend=args.legend,
    )
    print(f"wrote {len(written)} overlay(s) and JSON file(s) to {args.output}")
    if written.failed:
        print(
            f"error: {len(written.failed)} of {len(written) + len(written.failed)} image(s) failed:",
            file=sys.stderr,
        )
        for path, reason in written.failed:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .ecosystem_demo import DEMO_TASKS, run_demo

    if not (DEMO_MODEL / "config.json").is_file():
        raise CliError(
            f"the bundled demo model is missing ({DEMO_MODEL}); this installation ships no default model. "
            "Run `m2f-hf predict IMAGE --model DIR_OR_HUB_ID --output DIR` with a converted or trained model."
        )
    check_device(args.device)
    if args.image is not None and not Path(args.image).is_file():
        raise CliError(f"input not found: {args.image}")
    run_demo(
        DEMO_MODEL,
        args.output,
        tasks=[args.task] if args.task else DEMO_TASKS,
        image=args.image,
        device=args.device,
        contours=args.contours,
        predict=predict,
    )
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    """Sweep the post-processing thresholds on a validation set; print a table per task; --write stores
    the best setting in the model folder's preprocessor_config.json (see training_calibration)."""
    from .training_calibration import calibrate, validation_samples, write_thresholds

    if args.write and not (Path(args.model) / "preprocessor_config.json").is_file():
        raise CliError(
            f"--write needs a local model folder with a preprocessor_config.json, got {args.model}"
        )
    samples, mapping = validation_samples(
        args.dataset,
        args.synthetic,
        args.synthetic_seed,
        args.synthetic_size,
        args.max_images,
        palette=args.synthetic_palette,
    )
    model, processor = load_model(args.model, args.device, None)
    results = calibrate(
        model,
        processor,
        samples,
        tasks=args.task,
        object_mask_thresholds=args.object_mask_thresholds,
        overlap_thresholds=args.overlap_thresholds,
        score_thresholds=args.score_thresholds,
        category_id_to_contiguous=mapping,
    )
    for result in results.values():
        print(f"\n{result.task} ({len(samples)} validation images; * best, = current)")
        print(result.table())
    print()
    for result in results.values():
        print(result.summary())
    if args.output:
        payload = {task: result.to_dict() for task, result in results.items()}
        Path(args.output).write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.output}")
    if args.write:
        print(f"wrote the best thresholds into {write_thresholds(args.model, results)}")
    return 0


def _add_calibrate_parser(commands: Any) -> None:
    from .training_calibration import CALIBRATION_TASKS

    p = commands.add_parser(
        "calibrate",
        help="sweep the panoptic / instance thresholds on a validation set (see docs/training.md)",
    )
    p.add_argument("--model", required=True, help="m2f_hf model folder (or Hub id without --write)")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--dataset", help="validation folder in COCO-panoptic layout")
    data.add_argument("--synthetic", type=int, default=0, help="use N generated synthetic images")
    p.add_argument("--synthetic-seed", type=int, default=2, help="seed of the synthetic images (2)")
    p.add_argument("--synthetic-size", type=int, default=128)
    p.add_argument("--synthetic-palette", choices=("random", "by_class"), default="random")
    p.add_argument("--max-images", type=int, help="use only the first N validation images")
    p.add_argument("--task", nargs="+", choices=CALIBRATION_TASKS, default=list(CALIBRATION_TASKS))
    p.add_argument("--object-mask-thresholds", type=float, nargs="+", help="panoptic score thresholds")
    p.add_argument("--overlap-thresholds", type=float, nargs="+", help="panoptic overlap thresholds")
    p.add_argument("--score-thresholds", type=float, nargs="+", help="instance score thresholds")
    p.add_argument("--write", action="store_true", help="store the best setting in preprocessor_config.json")
    p.add_argument("--output", help="also write every row as JSON here")
    p.add_argument("--device", default="cpu")
    p.set_defaults(run=_cmd_calibrate)


def _cmd_export(args: argparse.Namespace) -> int:
    from .ecosystem_export import main as export_main

    export_main(args.export_args)
    return 0


def _export_argv(argv: Sequence[str]) -> list[str] | None:
    """The arguments after `export`, forwarded untouched (sub-parsers can't pass options through)."""
    return list(argv[1:]) if argv[:1] == ["export"] else None


def _cmd_convert(args: argparse.Namespace) -> int:
    if args.source == "original":
        from .ecosystem_convert import convert_checkpoint

        report = convert_checkpoint(
            args.checkpoint,
            args.output,
            config_path=args.config,
            dataset=args.dataset,
            dtype=args.dtype,
            push_to_hub=args.push_to_hub,
            strict=not args.no_strict,
            progress=not args.quiet,
        )
        print(report.summary())
    else:
        from .ecosystem_convert import convert_transformers_checkpoint

        convert_transformers_checkpoint(
            args.model, args.output, dataset=args.dataset, dtype=args.dtype, push_to_hub=args.push_to_hub
        )
        print(f"wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .conversion_settings import TORCH_DTYPES
    from .pipeline_m2f import SUBTASKS

    parser = argparse.ArgumentParser(
        prog="m2f-hf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    predict_p = commands.add_parser("predict", help="segment images: overlay PNGs and JSON results")
    predict_p.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    predict_p.add_argument(
        "--model", required=True, help="m2f_hf (or transformers Mask2Former) folder or Hub id"
    )
    predict_p.add_argument("--output", required=True, help="folder for the overlays and JSON files")
    predict_p.add_argument("--task", choices=SUBTASKS, help="default: the task the model was configured for")
    predict_p.add_argument(
        "--threshold",
        type=_unit_interval,
        help="panoptic: query score threshold (default: the model's, 0.8 in the original); instance: "
        f"minimum score (default {INSTANCE_DISPLAY_THRESHOLD}; 0 keeps every top-k detection)",
    )
    predict_p.add_argument(
        "--mask-threshold", type=_unit_interval, default=0.5, help="mask probability threshold in [0, 1]"
    )
    predict_p.add_argument(
        "--overlap-threshold",
        type=_unit_interval,
        help="panoptic overlap threshold in [0, 1] (model default)",
    )
    predict_p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    predict_p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="model dtype")
    predict_p.add_argument(
        "--batch-size", type=_positive_int, default=1, help="images read at a time (results do not change)"
    )
    predict_p.add_argument(
        "--alpha", type=_unit_interval, default=0.55, help="overlay colour weight in [0, 1]"
    )
    predict_p.add_argument(
        "--cpu-mode",
        choices=["bf16", "int8", "compile"],
        help="opt-in CPU fast mode (docs/performance.md: speed and accuracy cost of each)",
    )
    predict_p.add_argument("--contours", action="store_true", help="draw segment borders")
    predict_p.add_argument("--no-labels", action="store_true", help="do not draw the label text")
    predict_p.add_argument("--legend", action="store_true", help="add a legend panel (classes, colours)")
    predict_p.add_argument("--quiet", action="store_true", help="no progress bar")
    predict_p.set_defaults(run=_cmd_predict)

    from .ecosystem_video import add_predict_video_parser

    add_predict_video_parser(commands)

    demo_p = commands.add_parser(
        "demo",
        help="the bundled demo model on a generated synthetic scene: panoptic, instance, semantic overlays",
    )
    demo_p.add_argument("--output", required=True, help="folder for the scene, overlays and JSON")
    demo_p.add_argument("--task", choices=SUBTASKS, help="only this task (default: all three)")
    demo_p.add_argument("--image", help="segment this image instead (the model knows only synthetic shapes)")
    demo_p.add_argument("--device", default="cpu")
    demo_p.add_argument("--contours", action="store_true")
    demo_p.set_defaults(run=_cmd_demo)

    _add_calibrate_parser(commands)

    convert_p = commands.add_parser("convert", help="convert a checkpoint into an m2f_hf model folder")
    sources = convert_p.add_subparsers(dest="source", required=True)
    original = sources.add_parser("original", help="original detectron2 checkpoint (.pkl/.pth)")
    original.add_argument("--checkpoint", required=True, help="model_final_*.pkl (or .pth / .safetensors)")
    original.add_argument("--config", help="the original yaml (its _BASE_ files are read next to it)")
    original.add_argument(
        "--dataset",
        help="label set (e.g. coco_panoptic) for the class names / thing classes; needed without --config, "
        "otherwise read from DATASETS.TRAIN",
    )
    original.add_argument(
        "--no-strict", action="store_true", help="list unused/missing keys instead of failing"
    )
    original.add_argument("--quiet", action="store_true")
    transformers_p = sources.add_parser("transformers", help="transformers Mask2Former checkpoint")
    transformers_p.add_argument("--model", required=True, help="folder or Hub id (facebook/mask2former-...)")
    transformers_p.add_argument("--dataset", help="dataset (default: inferred from the checkpoint)")
    for sub in (original, transformers_p):
        sub.add_argument("--output", required=True, help="folder to write")
        sub.add_argument("--dtype", choices=sorted(TORCH_DTYPES), default="float32")
        sub.add_argument(
            "--push-to-hub", metavar="REPO", help="also upload the folder to this Hub repository"
        )
    convert_p.set_defaults(run=_cmd_convert)

    export_p = commands.add_parser(
        "export",
        help="export to ONNX (*.onnx) or a torch.export program (*.pt2); see docs/export.md",
        add_help=False,
    )
    export_p.add_argument(
        "export_args", nargs=argparse.REMAINDER, help="arguments of `python -m m2f_hf.ecosystem_export`"
    )
    export_p.set_defaults(run=_cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    export_args = _export_argv(argv)
    if export_args is not None:
        args = argparse.Namespace(run=_cmd_export, export_args=export_args)
    else:
        args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (CliError, ValueError, OSError) as exc:
        sys.stderr.flush()
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
