"""The side-by-side benchmark runs end to end on a tiny model (no timing assertions)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "benchmark.py"


def _load():
    spec = importlib.util.spec_from_file_location("m2f_hf_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_benchmark_tiny_runs_end_to_end(tmp_path):
    bench = _load()
    out = tmp_path / "bench.md"
    # a regenerated file replaces the old table and keeps the hand-written analysis after it
    out.write_text("| old table |\n\n## Analysis (written by hand; ...)\n\nkept analysis\n")
    assert bench.main(["--tiny", "--threads", "1", "--output", str(out)]) == 0
    text = out.read_text()
    assert "| old table |" not in text and text.endswith(
        "## Analysis (written by hand; ...)\n\nkept analysis\n"
    )
    for task in (
        "preprocessing",
        "forward",
        "post-process semantic",
        "post-process instance",
        "post-process panoptic",
        "end-to-end panoptic",
        "training step",
    ):
        assert f"| {task}" in text, task
    assert "| training step, m2f_hf with gradient checkpointing" in text
    assert "| training step, m2f_hf checkpointing the high-resolution layers" in text
    assert "peak bytes of live tensors" in text  # the profiler-based memory measure works on this torch
    forward = next(x for x in text.splitlines() if "| forward |" in x).split("|")
    assert float(forward[6]) > 0 and float(forward[7]) > 0  # inference peak MB of both libraries
    assert "torch " in text and "transformers " in text and "GEMM peak" in text
    # both libraries ran the same weights: the logits agree
    line = next(x for x in text.splitlines() if "forward max |Δ| class logits" in x)
    class_diff = float(line.split("class logits ")[1].split(",")[0])
    mask_diff = float(line.split("mask logits ")[1])
    assert class_diff <= 1e-4 and mask_diff <= 1e-4, line


def test_parse_configs():
    bench = _load()
    assert bench.parse_configs("384x384:1, 800x1333:4,64x96") == [(384, 384, 1), (800, 1333, 4), (64, 96, 1)]


def test_peak_tensor_bytes_counts_live_tensors():
    bench = _load()

    def allocate():
        a = torch.ones(1024, 1024)  # 4 MiB
        b = torch.ones(2048, 1024)  # 8 MiB, both alive
        del a, b
        c = torch.ones(512, 1024)  # 2 MiB after they are gone
        return c.sum()

    peak = bench.peak_tensor_bytes(allocate)
    assert peak is not None
    assert 12 * 2**20 <= peak < 13 * 2**20
