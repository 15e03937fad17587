"""Which side moves at large sizes: each implementation in float32 against a float64 run of itself.

At 800x1333 the class logits of ours and transformers' built-in Mask2Former (same weights) differed by
~1e-4 in the benchmark while at 384x384 they differ by ~1e-6. This script runs both models (the
benchmark's Swin-S-like pair with identical parameters, or `--tiny`) on the same input in float32 and in
float64 and prints, for class and mask logits of the final prediction:

    ours fp32 - ours fp64 | theirs fp32 - theirs fp64 | ours fp64 - theirs fp64 | ours fp32 - theirs fp32

The float64 runs are the "true" values of each implementation's arithmetic; their difference shows whether
the two compute the same function, and each fp32-vs-fp64 difference shows how much float32 rounding moves
each side at this size.

    python benchmarks/float64_drift.py --size 800 1333          # the benchmark's model (~2-3 min on 2 cores)
    python benchmarks/float64_drift.py --tiny --size 384 384
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import build_models  # noqa: E402


def final_logits(model, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = model(
            pixel_values=pixel_values, pixel_mask=torch.ones_like(pixel_values[:, 0], dtype=torch.long)
        )
    return out.class_queries_logits.double(), out.masks_queries_logits.double()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    height, width = (-(-s // 32) * 32 for s in args.size)  # padded as both processors pad
    with tempfile.TemporaryDirectory() as tmp:
        theirs, ours, _, _ = build_models(args.tiny, Path(tmp), torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(1, 3, height, width, generator=generator)
    results = {}
    logits = {}
    for name, model in (("ours", ours), ("theirs", theirs)):
        logits[name, "fp32"] = final_logits(model, pixel_values)
        wide = copy.deepcopy(model).double()
        logits[name, "fp64"] = final_logits(wide, pixel_values.double())
        del wide
    pairs = {
        "ours fp32 vs ours fp64": (("ours", "fp32"), ("ours", "fp64")),
        "theirs fp32 vs theirs fp64": (("theirs", "fp32"), ("theirs", "fp64")),
        "ours fp64 vs theirs fp64": (("ours", "fp64"), ("theirs", "fp64")),
        "ours fp32 vs theirs fp32": (("ours", "fp32"), ("theirs", "fp32")),
    }
    print(f"input {height}x{width}, {'tiny' if args.tiny else 'Swin-S-like'} model, max abs difference:")
    print(f"{'':32s} {'class logits':>14s} {'mask logits':>14s}")
    for label, (a, b) in pairs.items():
        class_diff = (logits[a][0] - logits[b][0]).abs().max().item()
        mask_diff = (logits[a][1] - logits[b][1]).abs().max().item()
        results[f"{label} class"], results[f"{label} mask"] = class_diff, mask_diff
        print(f"{label:32s} {class_diff:14.3e} {mask_diff:14.3e}")
    mask_scale = logits["ours", "fp64"][1].abs().max().item()
    class_scale = logits["ours", "fp64"][0].abs().max().item()
    print(f"(magnitudes: mask logits up to {mask_scale:.1f}, class logits up to {class_scale:.1f})")
    return results


if __name__ == "__main__":
    main()
