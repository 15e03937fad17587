"""CLI and pipeline robustness: one-line errors, folder runs that skip bad files, collision-free names,
16-bit inputs, batch-invariant CLI results, quiet loading, clear model-loading errors."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_m2f import PHOTO, PHOTO2, save_tiny
from transformers import pipeline

from m2f_hf import ecosystem_cli as cli
from m2f_hf.pipeline_m2f import CheckpointLoadError


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("robust_models") / "panoptic", "panoptic")


def _run(args, capsys):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err  # one line, no traceback, no progress-bar fragments
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(
    "device, message", [("banana", "not a torch device"), ("cuda:7", "CUDA"), ("xla", "unsupported device")]
)
def test_bad_devices_are_one_line_errors(model_dir, tmp_path, capsys, device, message):
    if device == "cuda:7" and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    code, _, err = _run(
        ["predict", PHOTO, "--model", model_dir, "--output", tmp_path, "--device", device], capsys
    )
    assert code == 1 and message in _error_line(err)


def test_corrupt_weights_are_one_line_errors(model_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    code, _, err = _run(["predict", PHOTO, "--model", broken, "--output", tmp_path / "out"], capsys)
    assert code == 1 and "cannot load model" in _error_line(err)


@pytest.mark.parametrize(
    "option, value", [("--threshold", "7"), ("--mask-threshold", "-0.1"), ("--alpha", "2")]
)
def test_out_of_range_options_are_rejected(model_dir, tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as info:
        cli.main(["predict", str(PHOTO), "--model", str(model_dir), "--output", str(tmp_path), option, value])
    assert info.value.code == 2 and "outside [0, 1]" in capsys.readouterr().err
    with pytest.raises(cli.CliError, match="must lie in"):
        cli.predict([str(PHOTO)], str(model_dir), tmp_path, **{option[2:].replace("-", "_"): float(value)})


def test_folder_run_skips_bad_files_and_exits_non_zero(model_dir, tmp_path, capsys):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(PHOTO, folder / "a.png")
    shutil.copy(PHOTO2, folder / "sub" / "b.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    data = io.BytesIO()
    Image.open(PHOTO).save(data, "PNG")
    (folder / "truncated.png").write_bytes(data.getvalue()[:300])
    out = tmp_path / "out"
    code, stdout, err = _run(["predict", folder, "--model", model_dir, "--output", out, "--quiet"], capsys)
    assert code == 1
    assert (out / "a_panoptic.json").is_file() and (out / "sub" / "b_panoptic.json").is_file()
    assert "wrote 2 overlay(s)" in stdout
    assert "warning: skipped" in err and "corrupt.jpg" in err and "truncated.png" in err
    assert "2 of 4 image(s) failed" in err
    assert not list(out.glob("corrupt*")) and not list(out.glob("truncated*"))


def test_output_names_never_collide(model_dir, tmp_path, capsys):
    folder = tmp_path / "images"
    (folder / "x").mkdir(parents=True)
    shutil.copy(PHOTO, folder / "a.png")
    Image.open(PHOTO2).convert("RGB").save(folder / "a.jpg")
    shutil.copy(PHOTO, folder / "a_png.png")  # the name the first rule would give a.png
    shutil.copy(PHOTO2, folder / "x" / "a.png")
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(PHOTO2, other / "a.png")
    out = tmp_path / "out"
    code, _, _ = _run(["predict", folder, other, "--model", model_dir, "--output", out, "--quiet"], capsys)
    assert code == 0
    reports = [json.loads(p.read_text()) for p in out.rglob("*.json")]
    assert len(reports) == 5  # one per input: nothing overwritten
    assert len({r["image"] for r in reports}) == 5 and len({r["overlay"] for r in reports}) == 5
    assert all((out / r["overlay"]).is_file() for r in reports)


def _segments(out: Path) -> dict[str, list]:
    results = {}
    for path in sorted(out.glob("*.json")):
        report = json.loads(path.read_text())
        results[path.name] = [
            (s["label"], s["score"], s["area"], s["rle"]["counts"]) for s in report["segments"]
        ]
    return results


def test_cli_results_do_not_depend_on_the_batch(model_dir, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.open(PHOTO).save(folder / "p1.png")  # 225x150
    Image.open(PHOTO2).resize((160, 200)).save(folder / "p2.png")
    Image.open(PHOTO2).resize((90, 300)).save(folder / "p3.png")
    outs = {}
    for batch_size in (1, 3):
        outs[batch_size] = tmp_path / f"out{batch_size}"
        args = ["predict", folder, "--model", model_dir, "--output", outs[batch_size], "--quiet"]
        assert _run([*args, "--batch-size", batch_size, "--threshold", "0.1"], capsys)[0] == 0
    one, three = _segments(outs[1]), _segments(outs[3])
    assert len(one) == 3 and any(one.values())
    assert one == three
    for name in one:
        overlay = name.replace(".json", ".png")
        assert np.array_equal(
            np.asarray(Image.open(outs[1] / overlay)), np.asarray(Image.open(outs[3] / overlay))
        )


def test_16bit_png_segmented_and_drawn_like_its_8bit_copy(model_dir, tmp_path, capsys):
    photo = np.asarray(Image.open(PHOTO).convert("L")).astype(np.uint16) * 257  # exact 16-bit scaling
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(photo).save(folder / "deep.png")
    Image.fromarray((photo // 257).astype(np.uint8)).save(folder / "flat.png")
    assert Image.open(folder / "deep.png").mode in ("I;16", "I")
    out = tmp_path / "out"
    args = ["predict", folder, "--model", model_dir, "--output", out, "--quiet", "--threshold", "0.1"]
    assert _run(args, capsys)[0] == 0
    segments = _segments(out)
    assert segments["deep_panoptic.json"] == segments["flat_panoptic.json"] and segments["flat_panoptic.json"]
    deep, flat = (np.asarray(Image.open(out / f"{n}_panoptic.png")) for n in ("deep", "flat"))
    assert np.array_equal(deep, flat)
    # the pipeline gives the 16-bit path the 8-bit copy's answer too
    segmenter = pipeline("image-segmentation", model=str(model_dir))
    deep_result = segmenter(str(folder / "deep.png"), threshold=0.1)
    flat_result = segmenter(str(folder / "flat.png"), threshold=0.1)
    assert deep_result and [(r["label"], r["score"]) for r in deep_result] == [
        (r["label"], r["score"]) for r in flat_result
    ]


def test_pipeline_bad_inputs_are_value_errors(model_dir, tmp_path):
    segmenter = pipeline("image-segmentation", model=str(model_dir))
    data = io.BytesIO()
    Image.open(PHOTO).save(data, "PNG")
    (tmp_path / "cut.png").write_bytes(data.getvalue()[:400])
    with pytest.raises(ValueError, match="cut.png"):
        segmenter(str(tmp_path / "cut.png"))
    result = segmenter(Image.new("RGB", (2, 1000)), subtask="semantic")  # resized to 1 x 64 pixels
    assert result and all(r["mask"].size == (2, 1000) for r in result)


def test_pipeline_without_weights_fails_clearly(model_dir, tmp_path):
    folder = tmp_path / "no_weights"
    shutil.copytree(model_dir, folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointLoadError, match="no_weights.*model.safetensors"):
        pipeline("image-segmentation", model=str(folder))


def test_cli_prints_no_loading_bar(model_dir, tmp_path):
    code = (
        "import sys; from m2f_hf.ecosystem_cli import main; "
        f"sys.exit(main(['predict', {str(PHOTO)!r}, '--model', {str(model_dir)!r}, '--output', "
        f"{str(tmp_path / 'out')!r}]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "Loading weights" not in done.stderr and "%|" not in done.stderr, done.stderr
