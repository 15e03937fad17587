"""Shared access to the original implementation's reference outputs in tests/fixtures."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
NAMES = [
    "A1_coco_panoptic_r50",
    "A2_coco_panoptic_swin_tiny",
    "A3_ade20k_semantic_r50",
    "A4_coco_instance_r50",
]


def meta(name: str) -> dict:
    return json.loads((FIXTURES / name / "meta.json").read_text())


@functools.cache
def converted(name: str) -> Path:
    """The fixture's original checkpoint + yaml converted once per test session into a temporary folder."""
    from m2f_hf.conversion_original import convert_checkpoint

    folder = FIXTURES / name
    out = Path(tempfile.mkdtemp(prefix=f"m2f_{name}_"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)  # leave no checkpoints behind
    convert_checkpoint(folder / "model_final.pkl", out, config_path=folder / "config.yaml", progress=False)
    return out
