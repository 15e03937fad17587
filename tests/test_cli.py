"""`m2f-hf` command line: predict (overlays + JSON checked against each other), convert, demo, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_m2f import FIXTURES, LABELS, PHOTO, PHOTO2, save_tiny

from m2f_hf import ecosystem_cli as cli
from m2f_hf.processing_postprocess import rle_decode


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_models")
    return {task: save_tiny(root / task, task) for task in ("panoptic", "semantic")}


@pytest.fixture()
def inputs(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(PHOTO, folder / "a.png")
    Image.open(PHOTO2).convert("RGB").save(folder / "sub" / "b.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image")
    return folder


def _load(out, stem, task):
    report = json.loads((out / f"{stem}_{task}.json").read_text())
    overlay = np.asarray(Image.open(out / report["overlay"]))
    source = np.asarray(Image.open(report["image"]).convert("RGB"))
    masks = [rle_decode(s["rle"]).numpy().astype(bool) for s in report["segments"]]
    return report, overlay, source, masks


def _check_consistent(report, overlay, source, masks, opaque: bool, disjoint: bool):
    """Sizes, areas, boxes and colours in the JSON agree with the masks and the overlay image."""
    height, width = source.shape[:2]
    assert overlay.shape == source.shape and (report["width"], report["height"]) == (width, height)
    assert report["segments"], "the test needs segments"
    colors = [tuple(s["color"]) for s in report["segments"]]
    assert len(set(colors)) == len(colors)
    covered = np.zeros((height, width), dtype=bool)
    for segment, mask in zip(report["segments"], masks, strict=True):
        assert mask.shape == (height, width) and segment["area"] == mask.sum() > 0
        assert segment["label"] == LABELS[segment["label_id"]]
        ys, xs = np.nonzero(mask)
        assert segment["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        visible = mask & ~covered  # where an earlier (higher-scoring) segment does not cover it
        if opaque:
            assert (overlay[visible] == segment["color"]).all(), segment["id"]
        else:
            assert (overlay[visible] != source[visible]).any(axis=1).mean() > 0.5
        if disjoint:
            assert not (mask & covered).any()
        covered |= mask
    unchanged = (overlay[~covered] == source[~covered]).all(axis=1)
    if opaque:
        assert unchanged.all()
    elif unchanged.size:  # label boxes may reach outside their segment
        assert unchanged.mean() > 0.9
    return covered


def test_predict_panoptic_folder(models, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["predict", str(inputs), "--model", str(models["panoptic"]), "--output", str(out)]
    assert cli.main([*args, "--alpha", "1", "--no-labels", "--quiet"]) == 0
    assert "wrote 2" in capsys.readouterr().out
    for stem in ("a", "sub/b"):
        report, overlay, source, masks = _load(out, stem, "panoptic")
        assert report["task"] == "panoptic" and report["model"] == str(models["panoptic"])
        assert len(report["segments"]) >= 2 and all(s["score"] >= 0.1 for s in report["segments"])
        _check_consistent(report, overlay, source, masks, opaque=True, disjoint=True)
    # default rendering (translucent, label text) of the same result
    assert cli.main([*args, "--contours", "--quiet"]) == 0
    report, overlay, source, masks = _load(out, "a", "panoptic")
    _check_consistent(report, overlay, source, masks, opaque=False, disjoint=True)


def test_predict_semantic_is_the_default_for_a_semantic_model(models, tmp_path):
    out = tmp_path / "out"
    assert (
        cli.main(
            ["predict", str(PHOTO), "--model", str(models["semantic"]), "--output", str(out), "--alpha", "1"]
        )
        == 0
    )
    report, overlay, source, masks = _load(out, PHOTO.stem, "semantic")
    assert report["task"] == "semantic" and all(s["score"] is None for s in report["segments"])
    assert len({s["label_id"] for s in report["segments"]}) == len(report["segments"]) >= 2
    covered = _check_consistent(report, overlay, source, masks, opaque=False, disjoint=True)
    assert covered.all()  # semantic segmentation labels every pixel


def test_predict_instance_masks_overlap_and_keep_their_rle(models, tmp_path):
    out = tmp_path / "out"
    args = ["predict", str(PHOTO), str(PHOTO2), "--model", str(models["panoptic"]), "--output", str(out)]
    assert cli.main([*args, "--task", "instance", "--threshold", "0.3", "--alpha", "1", "--no-labels"]) == 0
    report, overlay, source, masks = _load(out, PHOTO.stem, "instance")
    scores = [s["score"] for s in report["segments"]]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 0.3
    _check_consistent(report, overlay, source, masks, opaque=True, disjoint=False)
    assert (out / f"{PHOTO2.stem}_instance.png").is_file()


def test_same_names_do_not_overwrite(models, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(PHOTO2, other / PHOTO.name)
    out = tmp_path / "out"
    model = str(models["semantic"])
    assert (
        cli.main(["predict", str(PHOTO), str(other / PHOTO.name), "--model", model, "--output", str(out)])
        == 0
    )
    assert {p.name for p in out.glob("*.json")} == {
        f"{PHOTO.stem}_semantic.json",
        f"{PHOTO.stem}_2_semantic.json",
    }


def test_errors(models, tmp_path, capsys):
    model = str(models["semantic"])
    assert (
        cli.main(["predict", str(tmp_path / "missing.png"), "--model", model, "--output", str(tmp_path)]) == 1
    )
    assert "input not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["predict", str(empty), "--model", model, "--output", str(tmp_path)]) == 1
    assert "no images" in capsys.readouterr().err
    assert (
        cli.main(["predict", str(PHOTO), "--model", str(tmp_path / "nomodel"), "--output", str(tmp_path)])
        == 1
    )
    assert "cannot load model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["predict", str(PHOTO), "--model", model, "--output", str(tmp_path), "--task", "depth"])


def test_demo(tmp_path, monkeypatch, capsys):
    if (cli.DEMO_MODEL / "config.json").is_file():
        assert cli.main(["demo", "--output", str(tmp_path / "demo")]) == 0
        printed = capsys.readouterr().out
        scene = Image.open(tmp_path / "demo" / "demo_scene.png")
        assert min(scene.size) >= 512
        for task in ("panoptic", "instance", "semantic"):
            report = json.loads((tmp_path / "demo" / f"demo_scene_{task}.json").read_text())
            overlay = Image.open(tmp_path / "demo" / report["overlay"])
            # the overlay keeps the scene and adds a legend panel on its right
            assert overlay.height == scene.height and overlay.width > scene.width
            assert f"{task}:" in printed.replace(" ", "")
            assert str(tmp_path / "demo" / report["overlay"]) in printed
            assert report["segments"], task
        assert "synthetic scene generated by m2f_hf" in printed
    monkeypatch.setattr(cli, "DEMO_MODEL", tmp_path / "no_demo_model")
    assert cli.main(["demo", "--output", str(tmp_path / "demo2")]) == 1
    assert "demo model is missing" in capsys.readouterr().err


@pytest.mark.skipif(not (cli.DEMO_MODEL / "model.safetensors").is_file(), reason="demo model not shipped")
def test_demo_finds_and_labels_the_objects_of_its_scene(tmp_path, capsys):
    """The demo's panoptic and instance outputs recover the things of the generated scene (its ground truth,
    enlarged like the image) with the right labels, and the semantic output the right classes."""
    from m2f_hf.ecosystem_demo import DEMO_INDEX, DEMO_PALETTE, DEMO_SEED
    from m2f_hf.training_synthetic import ID2LABEL, THING_IDS, make_synthetic_sample

    assert cli.main(["demo", "--output", str(tmp_path)]) == 0
    capsys.readouterr()
    truth = make_synthetic_sample(DEMO_SEED, DEMO_INDEX, palette=DEMO_PALETTE)
    scale = 512 // truth["height"]
    instances = truth["instance_map"].repeat(scale, 0).repeat(scale, 1)
    things = [(instances == k, ID2LABEL[c]) for k, c in truth["instance_id_to_semantic_id"].items()]
    assert len(things) >= 4
    for task in ("panoptic", "instance"):
        report = json.loads((tmp_path / f"demo_scene_{task}.json").read_text())
        found = [
            (rle_decode(s["rle"]).numpy().astype(bool), s["label"])
            for s in report["segments"]
            if s["label_id"] in THING_IDS
        ]
        matched = 0
        for mask, label in things:
            ious = [(m & mask).sum() / (m | mask).sum() for m, name in found if name == label]
            matched += bool(ious) and max(ious) > 0.5
        # most objects are found with their class (occluded ones may be missed), few false detections
        assert matched >= 0.6 * len(things), (task, matched, len(things))
        assert len(found) <= len(things) + 2, (task, len(found))
    semantic = json.loads((tmp_path / "demo_scene_semantic.json").read_text())
    present = {ID2LABEL[c] for c in np.unique(truth["semantic_map"]).tolist()}
    predicted = {s["label"] for s in semantic["segments"]}
    assert len(present & predicted) >= len(present) - 1, (present, predicted)


def test_convert_original(tmp_path, capsys):
    name = "A3_ade20k_semantic_r50"
    out = tmp_path / "converted"
    code = cli.main(
        [
            "convert", "original", "--checkpoint", str(FIXTURES / name / "model_final.pkl"),
            "--config", str(FIXTURES / name / "config.yaml"), "--output", str(out), "--quiet",
        ]
    )  # fmt: skip
    assert code == 0 and "0 unused, 0 missing" in capsys.readouterr().out
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "m2f_hf_remote.py"} <= {
        p.name for p in out.iterdir()
    }
    card = (out / "README.md").read_text()
    assert "license: cc-by-nc-4.0" in card and "| 0 | wall | stuff |" in card
    assert json.loads((out / "config.json").read_text())["auto_map"]["AutoConfig"].startswith(
        "m2f_hf_remote."
    )
    assert (
        cli.main(["convert", "original", "--checkpoint", str(tmp_path / "x.pkl"), "--output", str(out)]) == 1
    )


def test_convert_transformers(tmp_path):
    import transformers

    config = transformers.Mask2FormerConfig(
        backbone_config=transformers.SwinConfig(
            embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8],
            out_features=["stage1", "stage2", "stage3", "stage4"],
        ),
        feature_size=32, mask_feature_size=32, hidden_dim=32, num_attention_heads=4, num_queries=6,
        decoder_layers=3, encoder_layers=1, dim_feedforward=32, encoder_feedforward_dim=32, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.Mask2FormerForUniversalSegmentation(config).save_pretrained(tmp_path / "hf")
    out = tmp_path / "converted"
    assert cli.main(["convert", "transformers", "--model", str(tmp_path / "hf"), "--output", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and "license: other" in (out / "README.md").read_text()
    # predict accepts the transformers-format folder directly (converted on the fly)
    assert (
        cli.main(["predict", str(PHOTO), "--model", str(tmp_path / "hf"), "--output", str(tmp_path / "p")])
        == 0
    )
    assert (tmp_path / "p" / f"{PHOTO.stem}_semantic.png").is_file()


def test_export_static_onnx_matches_eager(models, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime

    from m2f_hf import Mask2FormerForUniversalSegmentation

    out = tmp_path / "model.onnx"
    args = ["export", "--model", str(models["panoptic"]), "--output", str(out), "--static"]
    assert cli.main([*args, "--height", "64", "--width", "96"]) == 0
    pixel_values = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    model = Mask2FormerForUniversalSegmentation.from_pretrained(models["panoptic"]).eval()
    with torch.no_grad():
        eager = model(pixel_values)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    class_logits, mask_logits = session.run(None, {name: pixel_values.numpy()})[:2]
    for ours, reference in (
        (class_logits, eager.class_queries_logits),
        (mask_logits, eager.masks_queries_logits),
    ):
        reference = reference.numpy()  # onnxruntime's kernels: float32 noise relative to the logits' scale
        assert np.abs(ours - reference).max() <= 1e-4 * max(1.0, float(np.abs(reference).max()))
