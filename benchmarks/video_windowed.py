"""Windowed vs all-at-once video inference on a synthetic 200-frame clip (tiny random-weight model, CPU).

Each mode runs in its own subprocess so the peak resident memory (ru_maxrss) is that mode's alone.
Agreement: of the all-at-once top-10 (query, class) predictions, how many the windowed run also keeps, and
the mean IoU of their (T, H, W) mask tubes (windowed track vs all-at-once query, after the top-10 rule).
Usage: python benchmarks/video_windowed.py [--frames 200] [--windows 8 25 50]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

SIZE = 96


def moving_shapes(frames: int) -> torch.Tensor:
    """(T, 3, SIZE, SIZE) normalised frames: a square and a disc moving across a gradient background."""
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    clip = torch.empty(frames, 3, SIZE, SIZE)
    for t in range(frames):
        image = torch.stack([xx / SIZE, yy / SIZE, torch.full_like(xx, 0.3, dtype=torch.float32)]) * 0.5
        cx = 10 + (t * 0.4) % (SIZE - 30)
        image[0, 20:40, int(cx) : int(cx) + 20] = 1.0
        cy = 60 + 15 * torch.sin(torch.tensor(t / 20.0))
        disc = (yy - cy) ** 2 + (xx - (SIZE - 20 - cx / 2)) ** 2 < 100
        image[1][disc] = 1.0
        clip[t] = (image - 0.45) / 0.25
    return clip


def tiny_model():
    from m2f_hf.configuration_m2f import Mask2FormerConfig
    from m2f_hf.modeling_video_m2f import Mask2FormerForVideoInstanceSegmentation

    torch.manual_seed(0)
    config = Mask2FormerConfig(
        backbone_type="swin",
        backbone_config={
            "embed_dim": 16,
            "depths": [1, 1, 1, 1],
            "num_heads": [1, 2, 4, 8],
            "window_size": 4,
        },
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        dim_feedforward=64,
        num_queries=20,
        decoder_layers=4,
        encoder_layers=1,
        num_labels=5,
        video=True,
    )
    return Mask2FormerForVideoInstanceSegmentation(config).eval()


def run_mode(frames: int, window: int, out: str) -> None:
    import resource

    from m2f_hf.modeling_video_windowed import windowed_video_inference
    from m2f_hf.processing_video_postprocess import video_instance_inference

    torch.set_num_threads(1)
    model, clip = tiny_model(), moving_shapes(frames)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        if window == 0:
            result = model(clip[None])
        else:
            result = windowed_video_inference(model, clip, window=window)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    found = video_instance_inference(result.class_queries_logits[0], result.masks_queries_logits[0])
    torch.save({"found": found, "peak_mib": peak / 1024, "base_mib": base / 1024}, out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--windows", type=int, nargs="+", default=[8, 25, 50])
    parser.add_argument("--mode", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode is not None:
        return run_mode(args.frames, args.mode, args.out)
    import tempfile
    from pathlib import Path

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for window in [0, *args.windows]:
            out = str(Path(tmp) / f"{window}.pt")
            cmd = [
                sys.executable,
                __file__,
                "--frames",
                str(args.frames),
                "--mode",
                str(window),
                "--out",
                out,
            ]
            subprocess.run(cmd, check=True)
            results[window] = torch.load(out, weights_only=False)
    full = results[0]["found"]
    pairs = list(zip(full["query_index"].tolist(), full["labels"].tolist()))
    rows = [f"| all at once | {results[0]['peak_mib'] - results[0]['base_mib']:.0f} | - | - |"]
    for window in args.windows:
        got = results[window]["found"]
        mine = list(zip(got["query_index"].tolist(), got["labels"].tolist()))
        shared = [p for p in pairs if p in mine]
        ious = []
        for p in shared:
            a, b = full["masks"][pairs.index(p)], got["masks"][mine.index(p)]
            union = (a | b).sum().item()
            ious.append((a & b).sum().item() / union if union else 1.0)
        mean_iou = sum(ious) / len(ious) if ious else float("nan")
        extra = results[window]["peak_mib"] - results[window]["base_mib"]
        rows.append(f"| window {window} | {extra:.0f} | {len(shared)}/{len(pairs)} | {mean_iou:.3f} |")
    print(f"{args.frames} frames of {SIZE}x{SIZE}, tiny Swin model (20 queries), CPU, 1 thread")
    print("| mode | peak memory above the loaded model (MiB) | top-10 pairs kept | mean mask IoU |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    print(json.dumps({str(k): v["peak_mib"] for k, v in results.items()}))


if __name__ == "__main__":
    main()
