"""`m2f-hf predict-video`: a folder of frames or a video file → per-frame overlays, an animated GIF and a
JSON summary, each instance drawn in one colour on every frame."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from .ecosystem_visualization import distinct_colors

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def read_frames(source: str | Path, max_frames: int | None = None) -> list[Image.Image]:
    """RGB frames of a folder (image files in name order) or of a video file (needs PyAV: pip install av)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        if not files:
            raise ValueError(f"{source}: no frame images ({', '.join(FRAME_SUFFIXES)})")
        frames = [Image.open(p).convert("RGB") for p in files[:max_frames]]
    elif source.is_file():
        try:
            import av
        except ImportError as error:
            raise RuntimeError(
                f"reading the video file {source} needs PyAV (pip install av); or pass a folder of frames"
            ) from error
        frames = []
        with av.open(str(source)) as container:
            for frame in container.decode(video=0):
                frames.append(frame.to_image().convert("RGB"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    else:
        raise FileNotFoundError(f"{source} is neither a folder of frames nor a video file")
    if not frames:
        raise ValueError(f"{source}: no frames")
    return frames


def predict_video(
    source: str | Path,
    model_path: str | Path,
    output: str | Path,
    threshold: float = 0.5,
    top_k: int | None = None,
    window: int | None = None,
    alpha: float = 0.5,
    fps: float = 10.0,
    max_frames: int | None = None,
) -> dict:
    import torch

    from .modeling_video_m2f import Mask2FormerForVideoInstanceSegmentation
    from .modeling_video_windowed import windowed_video_inference
    from .processing_video_m2f import M2fHfVideoProcessor

    frames = read_frames(source, max_frames)
    model = Mask2FormerForVideoInstanceSegmentation.from_pretrained(model_path).eval()
    processor = M2fHfVideoProcessor.from_pretrained(model_path)
    inputs = processor(videos=[frames], return_tensors="pt")
    with torch.no_grad():
        if window:
            outputs = windowed_video_inference(model, inputs["pixel_values_videos"], window=window)
        else:
            outputs = model(inputs["pixel_values_videos"], output_auxiliary_logits=False)
    found = processor.post_process_video_instance_segmentation(
        outputs, target_sizes=inputs["original_sizes"], top_k=top_k
    )[0]
    kept = [r for r in found if r["score"] >= threshold]
    colors = distinct_colors(len(kept))
    names = model.config.id2label
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    overlays = []
    for t, frame in enumerate(frames):
        image = np.asarray(frame, dtype=np.float32)
        for instance, color in zip(kept, colors):
            mask = instance["masks"][t].numpy()
            image[mask] = (1 - alpha) * image[mask] + alpha * np.asarray(color, dtype=np.float32)
        overlay = Image.fromarray(np.clip(image + 0.5, 0, 255).astype(np.uint8))
        overlay.save(output / f"frame_{t:05d}.png")
        overlays.append(overlay)
    overlays[0].save(
        output / "overlay.gif", save_all=True, append_images=overlays[1:], duration=int(1000 / fps), loop=0
    )
    summary = {
        "source": str(source),
        "num_frames": len(frames),
        "instances": [
            {
                "id": i + 1,
                "score": r["score"],
                "label_id": r["label_id"],
                "label": names.get(r["label_id"], str(r["label_id"])),
                "color": list(color),
                "area_per_frame": r["masks"].flatten(1).sum(1).tolist(),
            }
            for i, (r, color) in enumerate(zip(kept, colors))
        ],
    }
    (output / "instances.json").write_text(json.dumps(summary, indent=2))
    return summary


def add_predict_video_parser(commands) -> None:
    """The `predict-video` sub-command (hooked into `m2f-hf` by ecosystem_cli)."""
    p = commands.add_parser("predict-video", help="segment a video: per-frame overlays, a GIF and JSON")
    p.add_argument("input", help="folder of frames (name order) or a video file (needs PyAV)")
    p.add_argument("--model", required=True, help="video model folder or Hub id")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--threshold", type=float, default=0.5, help="minimum score of a drawn instance")
    p.add_argument("--top-k", type=int, default=None, help="predictions kept (default: the model's, 10)")
    p.add_argument("--window", type=int, default=None, help="windowed inference with this many frames")
    p.add_argument("--fps", type=float, default=10.0, help="GIF frame rate")
    p.add_argument("--max-frames", type=int, default=None)
    p.set_defaults(run=_cmd_predict_video)


def _cmd_predict_video(args: argparse.Namespace) -> int:
    summary = predict_video(
        args.input,
        args.model,
        args.output,
        threshold=args.threshold,
        top_k=args.top_k,
        window=args.window,
        fps=args.fps,
        max_frames=args.max_frames,
    )
    print(
        f"{len(summary['instances'])} instance(s) over {summary['num_frames']} frames, written to "
        f"{args.output}"
    )
    return 0


__all__ = ["add_predict_video_parser", "predict_video", "read_frames"]
