"""Where post-processing time goes, per task, at a real size: torch.profiler over our processor's
semantic, instance and panoptic post-processing of one 800x1333 image (100 queries, 133 classes; class
logits peaked as in benchmarks/benchmark.py so that queries pass the 0.8 thresholds).

    python benchmarks/postprocess_profile.py [--size 800 1333] [--target 600 1000] [--masks demo]
                                             [--threads 2] [--top 8]

`--masks noise` (default) gives every low-resolution mask logit independent noise (N(0, 16)): no pixel
is clearly owned, the worst case for the semantic rule's settled pixels. `--masks demo` takes the class
and mask logits of a trained model instead: the bundled demo model (16 queries, 7 classes) run on the demo
scene drawn at the image size. `--target` is the size the results are resized to (default: the image
size; the resize is then the identity).

Prints, per task, the wall time (median of 5) and the operators with the most self CPU time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from m2f_hf import M2fHfImageProcessor
from m2f_hf.image_processing_m2f import resized_shape


def demo_logits(resized: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Class and mask logits of the bundled demo model on the demo scene at `resized` (the model's input
    size), and its thing ids."""
    from m2f_hf import Mask2FormerForUniversalSegmentation
    from m2f_hf.ecosystem_cli import DEMO_MODEL
    from m2f_hf.ecosystem_demo import demo_scene

    model = Mask2FormerForUniversalSegmentation.from_pretrained(DEMO_MODEL).eval()
    processor = M2fHfImageProcessor.from_pretrained(DEMO_MODEL)
    image = demo_scene(max(resized)).resize((resized[1], resized[0]))
    size = {"shortest_edge": min(resized), "longest_edge": max(resized)}
    with torch.no_grad():
        outputs = model(**processor(image, return_tensors="pt", size=size))
    return outputs.class_queries_logits, outputs.masks_queries_logits, list(model.config.thing_ids or [])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--target", type=int, nargs=2, default=None, metavar=("H", "W"))
    parser.add_argument("--masks", choices=("noise", "demo"), default="noise")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    height, width = args.size
    resized = resized_shape(height, width, 800, 1333)
    padded = tuple(-(-s // 32) * 32 for s in resized)
    if args.masks == "demo":
        class_logits, mask_logits, thing_ids = demo_logits(resized)
    else:
        generator = torch.Generator().manual_seed(0)
        queries, classes = 100, 133
        class_logits = torch.randn(1, queries, classes + 1, generator=generator)
        peak = torch.randint(0, classes + 1, (queries,), generator=generator)
        class_logits[0, torch.arange(queries), peak] += 10.0
        mask_logits = torch.randn(1, queries, padded[0] // 4, padded[1] // 4, generator=generator) * 4
        thing_ids = list(range(80))
    outputs = {
        "class_queries_logits": class_logits,
        "masks_queries_logits": mask_logits,
        "image_sizes": torch.tensor([resized]),
    }
    processor = M2fHfImageProcessor(thing_ids=thing_ids)
    sizes = [tuple(args.target) if args.target else (height, width)]
    tasks = {
        "semantic": lambda: processor.post_process_semantic_segmentation(outputs, target_sizes=sizes),
        "instance": lambda: processor.post_process_instance_segmentation(outputs, target_sizes=sizes),
        "panoptic": lambda: processor.post_process_panoptic_segmentation(outputs, target_sizes=sizes),
    }
    print(
        f"{height}x{width} image, padded input {padded}, results at {sizes[0]}, {args.masks} masks, "
        f"{args.threads} threads"
    )
    for name, fn in tasks.items():
        fn()  # warm-up
        times = []
        for _ in range(5):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fn()
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        print(f"\n{name}: {1000 * statistics.median(times):.1f} ms (median of 5); self CPU time by operator:")
        for event in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[: args.top]:
            share = 100 * event.self_cpu_time_total / max(total, 1)
            print(
                f"  {event.key:38s} {event.self_cpu_time_total / 1000:8.1f} ms {share:5.1f} %  x{event.count}"
            )


if __name__ == "__main__":
    main()
