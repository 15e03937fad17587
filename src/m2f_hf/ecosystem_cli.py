"""`m2f-hf` command line: predict (overlays + JSON), convert (original / transformers checkpoints), demo.

    m2f-hf predict IMAGE_OR_FOLDER... --model DIR_OR_REPO [--task panoptic|instance|semantic] --output out/
    m2f-hf convert original --checkpoint model_final.pkl --config cfg.yaml --output DIR
    m2f-hf convert transformers --model facebook/mask2former-... --output DIR
    m2f-hf demo --output DIR

`predict` writes, per image, `<name>_<task>.png` (the overlay: one colour per segment, label text,
optional contours) and `<name>_<task>.json` (input folders are mirrored): image size, task, model, the
overlay's path relative to the output folder and one record per segment (id, label_id, label, score,
area, bbox [x, y, w, h], colour, COCO RLE of its mask). The ids of the
overlay's segments are the JSON ids; instance masks may overlap (the overlay shows the higher score).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

__all__ = ["IMAGE_SUFFIXES", "main", "predict", "build_parser"]

ASSETS = Path(__file__).resolve().parent / "assets"
DEMO_MODEL = ASSETS / "demo_model"
# the demo image: a held-out image of the synthetic data the demo model was trained on (the model knows only
# those shapes and backgrounds), else the bundled photo
DEMO_IMAGES = (ASSETS / "synthetic_heldout_0.png", ASSETS / "demo_photo.png")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# the original demo (demo/demo.py --confidence-threshold) draws instances scoring at least 0.5
INSTANCE_DISPLAY_THRESHOLD = 0.5


class CliError(Exception):
    """A user-facing error: printed as `error: ...`, exit status 1."""


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
    stems: dict[Path, int] = {}
    unique = []
    for path, stem in found:  # two inputs with one name get _2, _3 ... instead of overwriting
        count = stems.get(stem, 0) + 1
        stems[stem] = count
        unique.append((path, stem if count == 1 else stem.with_name(f"{stem.name}_{count}")))
    return unique


def open_image(path: Path) -> PIL.Image.Image:
    """The image as the original reads it: EXIF orientation applied (detectron2's `read_image`)."""
    try:
        with PIL.Image.open(path) as image:
            image.load()
            return PIL.ImageOps.exif_transpose(image)
    except (OSError, PIL.UnidentifiedImageError) as exc:
        raise CliError(f"cannot read image {path}: {exc}") from exc


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
    model = Mask2FormerForUniversalSegmentation.from_pretrained(model_ref, **kwargs).eval().to(device)
    if config_dict.get("model_type") == TRANSFORMERS_MODEL_TYPE:
        processor = processor_for_transformers_checkpoint(model_ref)
    else:
        processor = M2fHfImageProcessor.from_pretrained(model_ref)
    return model, processor


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


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
        record["bbox"] = _bbox(mask)
    return segmentation, records, masks


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
) -> list[Path]:
    """Segment every image of `inputs` (files or folders) and write overlays and JSON into `output`.

    threshold: panoptic query score threshold (default: the processor's, the original's 0.8) or the
    instance score filter (default 0.5, as the original demo draws; 0 keeps the full top-k).
    Returns the JSON paths written.
    """
    from tqdm.auto import tqdm

    from .ecosystem_visualization import distinct_colors, render_overlay
    from .pipeline_m2f import SUBTASKS, default_subtask, post_process
    from .processing_postprocess import rle_encode

    if batch_size < 1:
        raise CliError(f"--batch-size must be >= 1, got {batch_size}")
    if task is not None and task not in SUBTASKS:
        raise CliError(f"--task must be one of {SUBTASKS}, got {task!r}")
    images = collect_images(inputs)
    model, processor = load_model(model_ref, device, dtype)
    task = task or default_subtask(model.config)
    if task == "instance" and threshold is None:
        threshold = INSTANCE_DISPLAY_THRESHOLD
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    bar = tqdm(total=len(images), desc="segmenting", unit="image", disable=not progress or len(images) < 2)
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pictures = [open_image(path) for path, _ in chunk]
        batch = processor(images=pictures, return_tensors="pt")
        with torch.no_grad():
            outputs = model(
                pixel_values=batch["pixel_values"].to(device=device, dtype=model.dtype),
                pixel_mask=batch["pixel_mask"].to(device),
            )
        results = post_process(
            processor,
            outputs,
            task,
            target_sizes=batch["original_sizes"],
            threshold=threshold,
            mask_threshold=mask_threshold,
            overlap_mask_area_threshold=overlap_threshold,
        )
        for (path, stem), picture, result in zip(chunk, pictures, results, strict=True):
            segmentation, records, masks = segments_of(result, task, model.config.id2label)
            colors = distinct_colors(len(records))
            rles = rle_encode(torch.from_numpy(np.stack(masks))) if masks else []
            for record, color, rle in zip(records, colors, rles, strict=True):
                record["color"] = list(color)
                record["rle"] = rle
            overlay = render_overlay(
                picture.convert("RGB"),
                segmentation,
                [r["id"] for r in records],
                captions=[_caption(r) for r in records],
                colors=colors,
                alpha=alpha,
                contours=contours,
                draw_labels=draw_labels,
            )
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
                "model": str(model_ref),
                "overlay": overlay_path.relative_to(output).as_posix(),
                "segments": records,
            }
            json_path.write_text(json.dumps(report, indent=1) + "\n")
            written.append(json_path)
            bar.update()
    bar.close()
    return written


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
    )
    print(f"wrote {len(written)} overlay(s) and JSON file(s) to {args.output}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    if not (DEMO_MODEL / "config.json").is_file():
        raise CliError(
            f"the bundled demo model is missing ({DEMO_MODEL}); this installation ships no default model. "
            "Run `m2f-hf predict IMAGE --model DIR_OR_HUB_ID --output DIR` with a converted or trained model."
        )
    image = next((p for p in DEMO_IMAGES if p.is_file()), None)
    if image is None:
        raise CliError(f"no bundled demo image found (looked for {', '.join(str(p) for p in DEMO_IMAGES)})")
    written = predict(
        [str(image)],
        str(DEMO_MODEL),
        args.output,
        task=args.task,
        device=args.device,
        contours=args.contours,
        progress=False,
    )
    print(
        f"segmented {image.name} with the bundled demo model: {written[0].with_suffix('.png')}, {written[0]}"
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .ecosystem_export import main as export_main

    export_main(args.export_args)
    return 0


def _export_argv(argv: Sequence[str]) -> list[str] | None:
    """The arguments after `export`, forwarded untouched (sub-parsers can't pass options through)."""
    return list(argv[1:]) if argv[:1] == ["export"] else None


def _cmd_convert(args: argparse.Namespace) -> int:
    if args.source == "original":
        from .conversion_original import convert_checkpoint

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
        from .conversion_transformers import convert_transformers_checkpoint

        convert_transformers_checkpoint(
            args.model, args.output, dataset=args.dataset, dtype=args.dtype, push_to_hub=args.push_to_hub
        )
        print(f"wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .conversion_original import TORCH_DTYPES
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
        type=float,
        help="panoptic: query score threshold (default: the model's, 0.8 in the original); instance: "
        f"minimum score (default {INSTANCE_DISPLAY_THRESHOLD}; 0 keeps every top-k detection)",
    )
    predict_p.add_argument("--mask-threshold", type=float, default=0.5, help="mask probability threshold")
    predict_p.add_argument(
        "--overlap-threshold", type=float, help="panoptic overlap threshold (model default)"
    )
    predict_p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    predict_p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="model dtype")
    predict_p.add_argument("--batch-size", type=int, default=1)
    predict_p.add_argument("--alpha", type=float, default=0.55, help="overlay colour weight in [0, 1]")
    predict_p.add_argument("--contours", action="store_true", help="draw segment borders")
    predict_p.add_argument("--no-labels", action="store_true", help="do not draw the label text")
    predict_p.add_argument("--quiet", action="store_true", help="no progress bar")
    predict_p.set_defaults(run=_cmd_predict)

    from .ecosystem_video import add_predict_video_parser

    add_predict_video_parser(commands)

    demo_p = commands.add_parser("demo", help="segment the bundled demo image with the bundled demo model")
    demo_p.add_argument("--output", required=True, help="folder for the overlay and JSON")
    demo_p.add_argument("--task", choices=SUBTASKS)
    demo_p.add_argument("--device", default="cpu")
    demo_p.add_argument("--contours", action="store_true")
    demo_p.set_defaults(run=_cmd_demo)

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
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
