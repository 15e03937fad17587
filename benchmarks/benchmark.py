"""Side-by-side benchmark: m2f_hf vs transformers' built-in `Mask2FormerForUniversalSegmentation`.

Both models hold the same parameters: a transformers-format Mask2Former (Swin-S-like by default) is built
with random weights, saved, and converted with `m2f_hf.conversion_transformers` (its Swin runs as our native
Swin). Both see the same images and the same `pixel_values`. Timed per configuration (image size, batch):
preprocessing, forward, each post-processing task, end-to-end panoptic (each library's own processor,
model and post-processing) and one training step (forward + backward + AdamW step) with its peak memory.

Timing: A/B repetitions are interleaved (ours, theirs, ours, ...) after one warm-up each, and the median
wall-clock time is reported (other processes may share the CPU). Memory of a training step: the process
RSS is sampled every 2 ms in a thread during the step and the peak minus the RSS just before the step is
reported (tracemalloc does not see torch's allocations); on CUDA `torch.cuda.max_memory_allocated`.

    python benchmarks/benchmark.py                 # the default matrix, writes docs/benchmarks.md
    python benchmarks/benchmark.py --quick         # one repetition, fewer configurations
    python benchmarks/benchmark.py --tiny --output /tmp/b.md   # a tiny model, seconds (used by the tests)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import transformers  # noqa: E402
from transformers import SwinConfig  # noqa: E402

from m2f_hf import layers_config  # noqa: E402
from m2f_hf.ecosystem_convert import convert_transformers_checkpoint  # noqa: E402
from m2f_hf.ecosystem_fast import optimize_for_cpu  # noqa: E402
from m2f_hf.image_processing_m2f import M2fHfImageProcessor  # noqa: E402
from m2f_hf.layers_config import KERNEL_ENV  # noqa: E402
from m2f_hf.modeling_m2f import Mask2FormerForUniversalSegmentation  # noqa: E402

TASKS = ("preprocess", "forward", "semantic", "instance", "panoptic", "e2e", "train")
SWIN_S = dict(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24], window_size=7)
HEAD = dict(
    feature_size=256,
    mask_feature_size=256,
    hidden_dim=256,
    num_queries=100,
    num_labels=133,
    decoder_layers=10,
    encoder_layers=6,
)
TINY_SWIN = dict(embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], window_size=7)
TINY_HEAD = dict(
    feature_size=64,
    mask_feature_size=64,
    hidden_dim=64,
    num_queries=12,
    num_labels=133,
    decoder_layers=4,
    encoder_layers=1,
    dim_feedforward=128,
    encoder_feedforward_dim=128,
)
# post-processing thresholds used by both libraries (the original's COCO panoptic values)
THRESHOLD, OVERLAP = 0.8, 0.8
# random weights give flat class distributions: for post-processing, each query gets a confident class
# (+PEAK_LOGIT on one random class; about a third of them no-object), as a trained model's queries do
PEAK_LOGIT = 10.0


def peaked_class_logits(class_logits: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Class logits with one dominant class per query (same tensor for both libraries)."""
    gen = torch.Generator().manual_seed(seed)
    batch, queries, classes = class_logits.shape
    pick = torch.randint(0, classes - 1, (batch, queries), generator=gen)
    pick = torch.where(torch.rand(batch, queries, generator=gen) < 1 / 3, classes - 1, pick)
    peaked = class_logits.detach().cpu().clone()
    peaked.scatter_add_(-1, pick[..., None], torch.full((batch, queries, 1), PEAK_LOGIT))
    return peaked.to(class_logits.device)


TARGETS = {"e2e": 2.0, "post": 10.0, "train": 1.5, "train_memory": 0.7, "gemm_fraction": 0.5}


# ---------------------------------------------------------------- measurement helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], object]], reps: int, device: torch.device) -> dict[str, float]:
    """Median wall-clock seconds of each function, A/B repetitions interleaved after one warm-up each."""
    for fn in fns.values():
        fn()
        sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


class PeakRSS:
    """Peak resident-set size above the level at entry, sampled in a thread (CPU memory of torch)."""

    def __init__(self, interval: float = 0.002):
        import psutil

        self.process = psutil.Process()
        self.interval = interval

    def __enter__(self):
        self.base = self.process.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
        self.delta = self.peak - self.base


def peak_tensor_bytes(fn: Callable[[], object]) -> float | None:
    """Peak bytes of CPU tensors alive at once during `fn` that `fn` itself allocated (torch.profiler's
    memory timeline): what the step needs, without allocator caching or other threads' noise. None when
    this torch has no memory timeline (the caller then falls back to RSS sampling)."""
    from torch.profiler import ProfilerActivity, profile

    try:
        from torch.profiler._memory_profiler import Action

        with profile(
            activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
        ) as prof:
            fn()
        timeline = sorted(prof._memory_profile().timeline, key=lambda event: event[0])
    except Exception:  # private API: absent or changed in this torch version
        return None
    live = peak = 0
    for _, action, _, size in timeline:
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return float(peak)


def peak_memory(fn: Callable[[], object], device: torch.device) -> tuple[float, str]:
    """Peak memory (bytes) one call of `fn` adds, and how it was measured: the allocator's peak on CUDA,
    the profiler's live-tensor peak on CPU (RSS sampling where the profiler cannot say)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return float(torch.cuda.max_memory_allocated(device) - before), "CUDA max_memory_allocated"
    import gc

    gc.collect()
    peak = peak_tensor_bytes(fn)
    if peak is not None:
        return peak, "peak bytes of live tensors (torch.profiler memory timeline)"
    with PeakRSS() as rss:
        fn()
    return float(rss.delta), "peak RSS delta, sampled every 2 ms"


def row_with_memory(
    name: str, task: str, times: dict[str, float], fns: dict[str, Callable[[], object]], device
) -> Row:
    """A timing row with each library's peak memory for one more call of its function."""
    mem = {key: peak_memory(fn, device) for key, fn in fns.items()}
    return Row(
        name,
        task,
        times["ours"],
        times["theirs"],
        f"memory: {mem['ours'][1]}",
        ours_mem=mem["ours"][0],
        theirs_mem=mem["theirs"][0],
    )


def gemm_peak_gflops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 4096) -> float:
    """Measured matrix-multiply throughput (GFLOP/s) of one large square `torch.mm`, best of a few."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(3):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def forward_flops(model: torch.nn.Module, pixel_values: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    # parameters stop requiring grad meanwhile: the counter's module tracker hooks every grad-requiring input
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with torch.no_grad(), counter:
            model(pixel_values)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return counter.get_total_flops()


# ---------------------------------------------------------------- models, inputs, agreement


def build_models(tiny: bool, workdir: Path, device: torch.device):
    """(theirs, ours, our processor, their processor) with identical parameters."""
    torch.manual_seed(0)
    swin, head = (TINY_SWIN, TINY_HEAD) if tiny else (SWIN_S, HEAD)
    config = transformers.Mask2FormerConfig(
        backbone_config=SwinConfig(**swin, out_features=["stage1", "stage2", "stage3", "stage4"]), **head
    )
    theirs = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    theirs.save_pretrained(workdir / "transformers")
    convert_transformers_checkpoint(workdir / "transformers", workdir / "m2f_hf")
    ours = Mask2FormerForUniversalSegmentation.from_pretrained(workdir / "m2f_hf").eval()
    ours_processor = M2fHfImageProcessor.from_pretrained(workdir / "m2f_hf")
    theirs_processor = transformers.Mask2FormerImageProcessor(
        size={"shortest_edge": 800, "longest_edge": 1333}, size_divisor=32
    )
    return theirs.to(device), ours.to(device), ours_processor, theirs_processor


def make_images(height: int, width: int, batch: int, seed: int) -> list[np.ndarray]:
    """Smooth random RGB images at 3/4 of the model input size (so the processors really resize)."""
    gen = np.random.default_rng(seed)
    h, w = max(1, round(height * 0.75)), max(1, round(width * 0.75))
    images = []
    for _ in range(batch):
        coarse = gen.integers(0, 256, size=(max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
        from PIL import Image

        images.append(np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR)))
    return images


def set_processor_size(ours_processor, theirs_processor, height: int, width: int) -> None:
    short, long = min(height, width), max(height, width)
    ours_processor.size = (
        type(ours_processor.size)(shortest_edge=short, longest_edge=long)
        if not isinstance(ours_processor.size, dict)
        else {"shortest_edge": short, "longest_edge": long}
    )
    theirs_processor.size = (
        type(theirs_processor.size)(shortest_edge=short, longest_edge=long)
        if not isinstance(theirs_processor.size, dict)
        else {"shortest_edge": short, "longest_edge": long}
    )


def segments_signature(result: dict) -> list[tuple[int, int]]:
    """Panoptic result → sorted (label, pixel count) per segment, independent of segment id order."""
    seg = result["segmentation"]
    out = []
    for info in result["segments_info"]:
        out.append((int(info["label_id"]), int((seg == info["id"]).sum())))
    return sorted(out)


# ---------------------------------------------------------------- the benchmark


@dataclass
class Row:
    config: str
    task: str
    ours: float
    theirs: float
    note: str = ""
    ours_mem: float | None = None
    theirs_mem: float | None = None

    @property
    def ratio(self) -> float:
        return self.theirs / self.ours if self.ours > 0 else float("nan")


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    agreement: list[str] = field(default_factory=list)
    flops: list[str] = field(default_factory=list)
    flops_raw: list[tuple[str, int, float, float]] = field(default_factory=list)

    def format_flops(self, peak: float) -> None:
        for name, flops, ours, theirs in self.flops_raw:
            achieved = flops / ours / 1e9
            self.flops.append(
                f"{name}: our forward {flops / 1e9:.1f} GFLOP (FlopCounterMode) in {ours:.3f} s = "
                f"{achieved:.1f} GFLOP/s = {100 * achieved / peak:.0f}% of the measured fp32 GEMM peak "
                f"({peak:.1f} GFLOP/s); transformers: {flops / theirs / 1e9:.1f} GFLOP/s"
            )

    notes: list[str] = field(default_factory=list)
    mode_pq: dict[str, float] = field(default_factory=dict)


def parse_configs(text: str) -> list[tuple[int, int, int]]:
    """ "384x384:1,800x1333:4" → [(384, 384, 1), (800, 1333, 4)]."""
    configs = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        size, _, batch = item.partition(":")
        h, _, w = size.lower().partition("x")
        try:
            configs.append((int(h), int(w), int(batch or 1)))
        except ValueError:
            raise SystemExit(f"bad configuration {item!r}: expected HxW:batch, e.g. 800x1333:1") from None
    return configs


def run_config(args, report: Report, models, height: int, width: int, batch: int, device, peak: float):
    theirs, ours, ours_proc, theirs_proc = models
    name = f"{height}×{width}, batch {batch}"
    print(f"== {name}", flush=True)
    images = make_images(height, width, batch, seed=height * 7 + batch)
    orig_sizes = [img.shape[:2] for img in images]
    set_processor_size(ours_proc, theirs_proc, height, width)
    tasks = set(args.tasks)
    reps = args.reps

    ours_inputs = ours_proc(images, return_tensors="pt")
    pixel_values = ours_inputs["pixel_values"].to(device)
    if "preprocess" in tasks:
        t = interleaved(
            {
                "ours": lambda: ours_proc(images, return_tensors="pt"),
                "theirs": lambda: theirs_proc(images, return_tensors="pt"),
            },
            args.fast_reps,
            device,
        )
        report.rows.append(Row(name, "preprocessing", t["ours"], t["theirs"]))
        # the torchvision backends on uint8 tensors (on the benchmark device): ours runs Pillow's filter in
        # torch, transformers' default runs torchvision's resize
        from m2f_hf.image_processing_m2f import M2fHfImageProcessorTorchvision

        ours_tv = M2fHfImageProcessorTorchvision(**ours_proc.to_dict())
        tensors = [torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).to(device) for img in images]
        t = interleaved(
            {
                "ours": lambda: ours_tv(tensors, return_tensors="pt"),
                "theirs": lambda: theirs_proc(tensors, return_tensors="pt", device=device),
            },
            args.fast_reps,
            device,
        )
        report.rows.append(
            Row(name, "preprocessing, torchvision backends (uint8 tensors)", t["ours"], t["theirs"])
        )

    with torch.inference_mode():
        out_ours = ours(pixel_values)
        out_theirs = theirs(pixel_values)
    cls_diff = (out_ours.class_queries_logits - out_theirs.class_queries_logits).abs().max().item()
    mask_diff = (out_ours.masks_queries_logits - out_theirs.masks_queries_logits).abs().max().item()
    report.agreement.append(
        f"{name}: forward max |Δ| class logits {cls_diff:.2e}, mask logits {mask_diff:.2e}"
    )
    print(f"   logits max abs diff: class {cls_diff:.2e}, mask {mask_diff:.2e}", flush=True)

    if "forward" in tasks:

        def fwd(model):
            with torch.inference_mode():
                model(pixel_values)

        t = interleaved({"ours": lambda: fwd(ours), "theirs": lambda: fwd(theirs)}, reps, device)
        fwds = {key: (lambda m=m: fwd(m)) for key, m in (("ours", ours), ("theirs", theirs))}
        report.rows.append(row_with_memory(name, "forward", t, fwds, device))
        flops = forward_flops(ours, pixel_values)
        report.flops_raw.append((name, flops, t["ours"], t["theirs"]))

    # post-processing inputs: our outputs with sharpened class logits, the same tensors for both libraries
    post_outputs = type(out_ours)(
        class_queries_logits=peaked_class_logits(out_ours.class_queries_logits),
        masks_queries_logits=out_ours.masks_queries_logits,
    )
    num_classes = post_outputs.class_queries_logits.shape[-1] - 1
    thing_ids = ours_proc.thing_ids if ours_proc.thing_ids is not None else list(range(num_classes))
    stuff = set(range(num_classes)) - set(thing_ids)
    # our post-processing crops the padding given the unpadded sizes; transformers has no such input
    ours_post = type(out_ours)(**dict(post_outputs), image_sizes=ours_inputs["image_sizes"])
    post = {
        "semantic": (
            lambda: ours_proc.post_process_semantic_segmentation(ours_post, target_sizes=orig_sizes),
            lambda: theirs_proc.post_process_semantic_segmentation(post_outputs, target_sizes=orig_sizes),
        ),
        "instance": (
            lambda: ours_proc.post_process_instance_segmentation(ours_post, target_sizes=orig_sizes),
            lambda: theirs_proc.post_process_instance_segmentation(
                post_outputs, threshold=0.0, target_sizes=orig_sizes
            ),
        ),
        "panoptic": (
            lambda: ours_proc.post_process_panoptic_segmentation(
                ours_post, threshold=THRESHOLD, overlap_mask_area_threshold=OVERLAP, target_sizes=orig_sizes
            ),
            lambda: theirs_proc.post_process_panoptic_segmentation(
                post_outputs,
                threshold=THRESHOLD,
                overlap_mask_area_threshold=OVERLAP,
                label_ids_to_fuse=stuff,
                target_sizes=orig_sizes,
            ),
        ),
    }
    for task, (fn_ours, fn_theirs) in post.items():
        if task not in tasks:
            continue
        with torch.inference_mode():
            t = interleaved({"ours": fn_ours, "theirs": fn_theirs}, args.fast_reps, device)
        note = ""
        if task == "panoptic":
            with torch.inference_mode():
                a, b = fn_ours(), fn_theirs()
            same = [segments_signature(x) == segments_signature(y) for x, y in zip(a, b, strict=True)]
            n_seg = [len(x["segments_info"]) for x in a]
            note = f"segments identical: {sum(same)}/{len(same)} images ({n_seg} segments)"
            report.agreement.append(f"{name}: panoptic post-processing {note}")
        report.rows.append(Row(name, f"post-process {task}", t["ours"], t["theirs"], note))

    if "e2e" in tasks:

        def e2e_ours():
            inputs = ours_proc(images, return_tensors="pt")
            with torch.inference_mode():
                out = ours(inputs["pixel_values"].to(device))
                out.image_sizes = inputs.get("image_sizes")
                return ours_proc.post_process_panoptic_segmentation(out, target_sizes=orig_sizes)

        def e2e_theirs():
            inputs = theirs_proc(images, return_tensors="pt")
            with torch.inference_mode():
                out = theirs(inputs["pixel_values"].to(device), pixel_mask=inputs["pixel_mask"].to(device))
                return theirs_proc.post_process_panoptic_segmentation(
                    out,
                    threshold=THRESHOLD,
                    overlap_mask_area_threshold=OVERLAP,
                    label_ids_to_fuse=stuff,
                    target_sizes=orig_sizes,
                )

        t = interleaved({"ours": e2e_ours, "theirs": e2e_theirs}, reps, device)
        report.rows.append(Row(name, "end-to-end panoptic", t["ours"], t["theirs"]))

    if args.cpu_modes and device.type == "cpu":
        run_cpu_modes(args, report, models, name, images, orig_sizes, pixel_values, out_ours, stuff)

    if "train" in tasks and (height, width, batch) in args.train_configs_set:
        run_train(args, report, theirs, ours, pixel_values, name, device)
    print(flush=True)


def run_cpu_modes(args, report, models, name, images, orig_sizes, pixel_values, out_fp32, stuff):
    """The opt-in CPU fast modes (`m2f_hf.optimize_for_cpu`): forward and end-to-end panoptic, each A/B/C
    interleaved with our fp32 and transformers' fp32 forward on the same weights, plus logit agreement."""
    theirs, ours, ours_proc, theirs_proc = models
    device = torch.device("cpu")
    for mode in args.cpu_modes:
        fast = optimize_for_cpu(ours, mode)
        with torch.inference_mode():
            out = fast(pixel_values)  # warm-up (and, for "compile", the compilation)
        cls_diff = (out.class_queries_logits - out_fp32.class_queries_logits).abs().max().item()
        mask_diff = (out.masks_queries_logits - out_fp32.masks_queries_logits).abs().max().item()
        scale = out_fp32.masks_queries_logits.abs().max().item()
        accuracy = f"max |Δ| vs our fp32: class {cls_diff:.2e}, mask {mask_diff:.2e} (mask scale {scale:.1f})"
        report.agreement.append(f"{name}: {mode} forward {accuracy}")

        def fwd(model):
            with torch.inference_mode():
                model(pixel_values)

        if "forward" in args.tasks:
            fns = {"fast": lambda f=fast: fwd(f), "ours": lambda: fwd(ours), "theirs": lambda: fwd(theirs)}
            t = interleaved(fns, args.reps, device)
            report.rows.append(
                Row(name, f"forward {mode} vs transformers fp32", t["fast"], t["theirs"], accuracy)
            )
            report.rows.append(Row(name, f"forward {mode} vs m2f_hf fp32", t["fast"], t["ours"]))

        def e2e(model):
            inputs = ours_proc(images, return_tensors="pt")
            with torch.inference_mode():
                result = model(inputs["pixel_values"])
                result.image_sizes = inputs.get("image_sizes")
                return ours_proc.post_process_panoptic_segmentation(result, target_sizes=orig_sizes)

        def e2e_theirs():
            inputs = theirs_proc(images, return_tensors="pt")
            with torch.inference_mode():
                result = theirs(inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
                return theirs_proc.post_process_panoptic_segmentation(
                    result,
                    threshold=THRESHOLD,
                    overlap_mask_area_threshold=OVERLAP,
                    label_ids_to_fuse=stuff,
                    target_sizes=orig_sizes,
                )

        if "e2e" in args.tasks:
            fns = {"fast": lambda f=fast: e2e(f), "ours": lambda: e2e(ours), "theirs": e2e_theirs}
            t = interleaved(fns, args.reps, device)
            report.rows.append(Row(name, f"end-to-end panoptic {mode}", t["fast"], t["theirs"]))
            report.rows.append(Row(name, f"end-to-end panoptic {mode} vs m2f_hf fp32", t["fast"], t["ours"]))


def demo_mode_accuracy(args, report) -> None:
    """Accuracy of each CPU mode on the demo model: PQ on the held-out synthetic set (seed 1) and panoptic
    segments agreeing with fp32 on the shared fixtures' images and the held-out images."""
    from m2f_hf.ecosystem_cli import DEMO_MODEL
    from m2f_hf.ecosystem_demo import DEMO_PALETTE
    from m2f_hf.training_data import SegmentationEvalCollator, normalize_sample
    from m2f_hf.training_evaluation import evaluate
    from m2f_hf.training_synthetic import CATEGORY_ID_TO_CONTIGUOUS, make_synthetic_dataset

    if not (DEMO_MODEL / "config.json").exists():
        report.notes.append("demo model not found: no demo-set accuracy rows")
        return
    model = Mask2FormerForUniversalSegmentation.from_pretrained(DEMO_MODEL).eval()
    processor = M2fHfImageProcessor.from_pretrained(DEMO_MODEL)
    samples = [
        normalize_sample(s, CATEGORY_ID_TO_CONTIGUOUS)
        # the demo model's held-out split: seed 1 in the palette it was trained on
        for s in make_synthetic_dataset(args.demo_images, seed=1, palette=DEMO_PALETTE)
    ]
    collate = SegmentationEvalCollator(processor)
    batches = [collate(samples[i : i + 8]) for i in range(0, len(samples), 8)]
    fixture_images = [
        np.asarray(Image.open(path).convert("RGB")) for path in sorted(FIXTURES.glob("*/input_image*.png"))
    ]

    def panoptic(model_, images):
        inputs = processor(images=images, return_tensors="pt")
        with torch.inference_mode():
            out = model_(inputs["pixel_values"])
        out.image_sizes = inputs.get("image_sizes")
        return processor.post_process_panoptic_segmentation(out, target_sizes=[i.shape[:2] for i in images])

    def pq(model_):
        with torch.inference_mode():
            return evaluate(model_, processor, batches, "panoptic", metrics=["panoptic"])["PQ"]

    held_out_images = [s["image"] for s in samples]
    base_pq = pq(model)
    base_fix = [panoptic(model, [img])[0] for img in fixture_images]
    base_held = [panoptic(model, [img])[0] for img in held_out_images]
    for mode in args.cpu_modes:
        fast = optimize_for_cpu(model, mode)
        mode_pq = pq(fast)
        fix = [panoptic(fast, [img])[0] for img in fixture_images]
        held = [panoptic(fast, [img])[0] for img in held_out_images]

        def agree(a, b):
            same = sum(
                segments_signature(x) == segments_signature(y)
                and torch.equal(x["segmentation"], y["segmentation"])
                for x, y in zip(a, b, strict=True)
            )
            return f"{same}/{len(a)}"

        line = (
            f"demo model, {mode}: PQ {mode_pq:.2f} vs fp32 {base_pq:.2f} (Δ {mode_pq - base_pq:+.2f}) on "
            f"{len(samples)} held-out synthetic images; panoptic segments (labels and areas) identical to "
            "fp32 on "
            f"{agree(fix, base_fix)} fixture images and {agree(held, base_held)} held-out images"
        )
        print("   " + line, flush=True)
        report.agreement.append(line)
        report.mode_pq[mode] = mode_pq - base_pq


def run_train(args, report, theirs, ours, pixel_values, name, device):
    batch = pixel_values.shape[0]
    gen = torch.Generator().manual_seed(5)
    h, w = pixel_values.shape[-2:]
    mask_labels, class_labels = [], []
    for _ in range(batch):
        n = 6
        masks = torch.zeros(n, h, w)
        for i in range(n):
            y0, x0 = (
                int(torch.randint(0, h // 2, (1,), generator=gen)),
                int(torch.randint(0, w // 2, (1,), generator=gen)),
            )
            masks[i, y0 : y0 + h // 3, x0 : x0 + w // 3] = 1.0
        mask_labels.append(masks.to(device))
        class_labels.append(
            torch.randint(
                0, 133 if ours.config.num_labels == 133 else ours.config.num_labels, (n,), generator=gen
            ).to(device)
        )
    # the optimizer steps change the weights (differently in each library): restore them afterwards
    saved = {
        key: {k: v.clone() for k, v in m.state_dict().items()}
        for key, m in (("ours", ours), ("theirs", theirs))
    }
    optimizers = {
        key: torch.optim.AdamW(m.parameters(), lr=1e-6) for key, m in (("ours", ours), ("theirs", theirs))
    }
    models = {"ours": ours, "theirs": theirs}

    def step(key):
        model, optimizer = models[key], optimizers[key]
        optimizer.zero_grad(set_to_none=True)
        out = model(pixel_values, mask_labels=mask_labels, class_labels=class_labels)
        out.loss.backward()
        optimizer.step()

    steps = {key: (lambda key=key: step(key)) for key in models}
    try:
        for model in models.values():
            model.train()
        t = interleaved(steps, max(1, args.train_reps), device)
        plain = row_with_memory(name, "training step (fwd+bwd+AdamW)", t, steps, device)
        report.rows.append(plain)
        # transformers' Mask2Former has no activation checkpointing (`activation_checkpointing_enable` fails):
        # m2f_hf with it against transformers as it is
        enable_all = getattr(ours, "activation_checkpointing_enable", ours.gradient_checkpointing_enable)
        disable_all = getattr(ours, "activation_checkpointing_disable", ours.gradient_checkpointing_disable)
        variants = [
            ("with gradient checkpointing", enable_all, disable_all),
            (
                "checkpointing the high-resolution layers",
                ours.checkpoint_high_resolution_layers,
                lambda: ours.checkpoint_high_resolution_layers(enable=False),
            ),
        ]
        for label, enable, disable in variants:
            enable()
            try:
                t = interleaved(steps, max(1, args.train_reps), device)
                ours_mem = peak_memory(steps["ours"], device)
            finally:
                disable()
            note = "transformers has no gradient checkpointing for Mask2Former: its plain step"
            task = f"training step, m2f_hf {label}"
            report.rows.append(Row(name, task, t["ours"], t["theirs"], note, ours_mem[0], plain.theirs_mem))
    finally:
        for key, model in models.items():
            model.load_state_dict(saved[key])
            model.eval()
            model.zero_grad(set_to_none=True)


# ---------------------------------------------------------------- report


def machine_info(threads: int, device: torch.device) -> list[str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = [
        f"date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"machine: {platform.machine()}, CPU {cpu}, {os.cpu_count()} logical cores, torch threads {threads}",
        f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
    ]
    try:
        load = os.getloadavg()
        info.append(f"load average at the end of the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    except OSError:
        pass
    return info


HAND_WRITTEN = "## Analysis (written by hand"


def render(report: Report, args, threads: int, device: torch.device, elapsed: float) -> str:
    lines = ["# Benchmarks: m2f_hf vs transformers' Mask2Former", ""]
    lines += [f"- {x}" for x in machine_info(threads, device)]
    lines += [
        f"- model: {'tiny test model' if args.tiny else 'Swin-S-like (embed 96, depths 2-2-18-2, window 7)'}"
        ", random weights, 100 queries, 133 classes, 10 decoder predictions, 6 encoder layers"
        if not args.tiny
        else "- model: tiny test model (random weights)",
        f"- repetitions: {args.reps} (training: {args.train_reps}; pre- and post-processing: "
        f"{args.fast_reps}) after one warm-up each, A/B interleaved, "
        f"median wall-clock time; total benchmark time {elapsed / 60:.1f} min",
        f"- command: `python benchmarks/benchmark.py {' '.join(sys.argv[1:])}`",
        "",
        "Ratio = transformers time / m2f_hf time (> 1: m2f_hf is faster). "
        "Memory ratio = m2f_hf / transformers.",
        "",
        "| configuration | task | m2f_hf (s) | transformers (s) | ratio | m2f_hf peak MB "
        "| transformers peak MB | memory ratio | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report.rows:
        mem = ("", "", "")
        if r.ours_mem is not None:
            mem = (
                f"{r.ours_mem / 2**20:.0f}",
                f"{r.theirs_mem / 2**20:.0f}",
                f"{r.ours_mem / r.theirs_mem:.2f}" if r.theirs_mem else "",
            )
        lines.append(
            f"| {r.config} | {r.task} | {r.ours:.4f} | {r.theirs:.4f} | {r.ratio:.2f}× | "
            f"{mem[0]} | {mem[1]} | {mem[2]} | {r.note} |"
        )
    lines += ["", "## Output agreement", ""] + [f"- {a}" for a in report.agreement]
    lines += ["", "## Achieved throughput", ""] + [f"- {f}" for f in report.flops]
    lines += ["", "## Targets", ""] + target_lines(report)
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


def target_lines(report: Report) -> list[str]:
    out = []

    def rows(pred):
        return [r for r in report.rows if pred(r)]

    def verdict(ratio: float, target: float) -> str:
        return "met" if ratio >= target else f"missed by a factor {target / ratio:.2f}"

    for r in rows(lambda r: r.task == "end-to-end panoptic"):
        out.append(
            f"- e2e panoptic {r.config}: {r.ratio:.2f}× (target ≥ {TARGETS['e2e']}×): "
            f"{verdict(r.ratio, TARGETS['e2e'])}"
        )
    for r in rows(lambda r: r.task.startswith("end-to-end panoptic ") and "vs m2f_hf" not in r.task):
        mode = r.task.rsplit(" ", 1)[-1]
        dpq = report.mode_pq.get(mode)
        pq_text = (
            "PQ change not measured"
            if dpq is None
            else (f"PQ change {dpq:+.2f} (target |Δ| ≤ 0.5: {'met' if abs(dpq) <= 0.5 else 'missed'})")
        )
        out.append(
            f"- e2e panoptic, CPU mode {mode}, {r.config}: {r.ratio:.2f}× transformers' fp32 (target ≥ 2×): "
            f"{verdict(r.ratio, 2.0)}; {pq_text}"
        )
    for r in rows(lambda r: r.task.startswith("post-process")):
        out.append(
            f"- {r.task} {r.config}: {r.ratio:.1f}× (target ≥ {TARGETS['post']}×): "
            f"{verdict(r.ratio, TARGETS['post'])}"
        )
    for r in rows(lambda r: r.task.startswith("training step")):
        mem = r.ours_mem / r.theirs_mem if r.theirs_mem else float("nan")
        out.append(
            f"- {r.task} {r.config}: {r.ratio:.2f}× faster (target ≥ {TARGETS['train']}×: "
            f"{'met' if r.ratio >= TARGETS['train'] else 'missed'}), memory {mem:.2f}× "
            f"(target ≤ {TARGETS['train_memory']}×: {'met' if mem <= TARGETS['train_memory'] else 'missed'})"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs", default="384x384:1,384x384:4,800x1333:1", help="comma-separated HxW:batch configurations"
    )
    parser.add_argument(
        "--train-configs",
        default="384x384:1,384x384:4",
        help="configurations (from --configs) that also time a training step",
    )
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"subset of {','.join(TASKS)}")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per measurement")
    parser.add_argument("--train-reps", type=int, default=2)
    parser.add_argument(
        "--fast-reps",
        type=int,
        default=11,
        help="repetitions of the sub-second measurements (pre- and post-processing): cheap, and noisier",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="1 repetition, 384x384:1 and 800x1333:1 only")
    parser.add_argument("--tiny", action="store_true", help="tiny model and sizes: runs in seconds (tests)")
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument(
        "--cpu-modes",
        default="bf16,int8",
        help="opt-in CPU fast modes (m2f_hf.optimize_for_cpu) to time: bf16, int8, compile; '' for none",
    )
    parser.add_argument(
        "--demo-images", type=int, default=64, help="held-out synthetic images for the PQ rows"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.train_reps, args.fast_reps = 1, 1, 1
        args.configs, args.train_configs = "384x384:1,800x1333:1", "384x384:1"
    if args.tiny:
        args.reps, args.train_reps, args.fast_reps = 1, 1, 1
        args.configs, args.train_configs = "64x96:2", "64x96:2"
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.cpu_modes = [m.strip() for m in args.cpu_modes.split(",") if m.strip()]
    unknown = sorted(set(args.tasks) - set(TASKS))
    if unknown:
        raise SystemExit(f"unknown tasks {unknown}; choose from {TASKS}")
    configs = parse_configs(args.configs)
    args.train_configs_set = set(parse_configs(args.train_configs))
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    device = torch.device(args.device)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    start = time.perf_counter()
    report = Report()
    peak = gemm_peak_gflops(device, n=1024 if args.tiny else 4096)
    print(f"measured fp32 GEMM peak: {peak:.1f} GFLOP/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        models = build_models(args.tiny, Path(tmp), device)
        for height, width, batch in configs:
            run_config(args, report, models, height, width, batch, device, peak)
        if args.cpu_modes and device.type == "cpu":
            print("== CPU fast modes on the demo model", flush=True)
            demo_mode_accuracy(args, report)
        if device.type == "cuda":
            run_gpu_variants(args, report, models, configs, device)
        else:
            note = "bf16/fp16 autocast and torch.compile variants run only on a GPU: skipped (CPU run)"
            print(note)
            report.notes.append(note)
    report.notes.append(
        "post-processing inputs: the m2f_hf forward mask logits and its class logits with "
        f"+{PEAK_LOGIT} on one random class per query (a third of them no-object), since random weights "
        "give flat class distributions that no query passes the 0.8 threshold with; both libraries get "
        "the same tensors and thresholds (0.8/0.8, stuff classes fused). "
        "transformers always resizes masks to 384×384 first, so segments agree only where that is the "
        "padded input size."
    )
    # the peak is measured at the start and the end (other processes may share the CPU): the larger counts
    end_peak = gemm_peak_gflops(device, n=1024 if args.tiny else 4096)
    print(f"measured fp32 GEMM peak at the end: {end_peak:.1f} GFLOP/s", flush=True)
    report.format_flops(max(peak, end_peak))
    elapsed = time.perf_counter() - start
    text = render(report, args, threads, device, elapsed)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    # the hand-written analysis at the end of an existing file stays (the table above it is replaced)
    previous = output.read_text() if output.is_file() else ""
    if HAND_WRITTEN in previous:
        text = text.rstrip("\n") + "\n\n" + previous[previous.index(HAND_WRITTEN) :]
    output.write_text(text)
    print(text)
    return 0


def run_gpu_variants(args, report, models, configs, device):
    """bf16/fp16 autocast, torch.compile and PyTorch-gather (no Triton kernel) forward timings (GPU only)."""
    theirs, ours, ours_proc, _ = models
    for height, width, batch in configs:
        name = f"{height}×{width}, batch {batch}"
        pixel_values = torch.randn(batch, 3, height, width, device=device)

        def gather_fwd(model, pixel_values=pixel_values):
            with layers_config.settings(deformable_kernel="pytorch"), torch.inference_mode():
                model(pixel_values)

        t = interleaved(
            {"ours": lambda: gather_fwd(ours), "theirs": lambda: gather_fwd(theirs)}, args.reps, device
        )
        report.rows.append(Row(name, f"forward, m2f_hf with {KERNEL_ENV}=pytorch", t["ours"], t["theirs"]))
        for dtype in (torch.bfloat16, torch.float16):

            def fwd(model, dtype=dtype, pixel_values=pixel_values):
                with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
                    model(pixel_values)

            t = interleaved({"ours": lambda: fwd(ours), "theirs": lambda: fwd(theirs)}, args.reps, device)
            report.rows.append(
                Row(name, f"forward autocast {str(dtype).split('.')[-1]}", t["ours"], t["theirs"])
            )
        compiled = {"ours": torch.compile(ours), "theirs": torch.compile(theirs)}

        def cfwd(key, compiled=compiled, pixel_values=pixel_values):
            with torch.inference_mode():
                compiled[key](pixel_values)

        t = interleaved({"ours": lambda: cfwd("ours"), "theirs": lambda: cfwd("theirs")}, args.reps, device)
        report.rows.append(Row(name, "forward torch.compile", t["ours"], t["theirs"]))


if __name__ == "__main__":
    raise SystemExit(main())
