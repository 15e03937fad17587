"""Every image config of the original model zoo converts: real key sets, both key styles, yaml or none.

The zoo's key sets, shapes and dtypes come from `fixtures/zoo_manifest.json.gz` (built by the ORIGINAL
implementation at real widths, see `zoo_manifest.py`). All 47 image configs are planned on the meta device
(keys, shapes, dtypes, placement, settings) through the converter's own `plan_conversion`; one config per
backbone family is converted at real width from a released-format pickle, loaded with `from_pretrained`
and run. A SyncBN re-expression of the A1 oracle fixture must reproduce A1's reference outputs.
"""

from __future__ import annotations

import collections
import gc
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import oracle
import pytest
import torch
import yaml
import zoo_manifest as zm
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor

from m2f_hf.conversion_checkpoint_io import load_original_checkpoint
from m2f_hf.conversion_original import (
    TRAINING_ONLY_SUFFIXES,
    map_state_dict,
    model_class_for,
    rename_original_key,
)
from m2f_hf.ecosystem_convert import convert_checkpoint

FEATURE_TOL, MASK_TOL = 1e-4, 2e-4  # as tests/test_parity.py (ORACLE_README's float32 tolerances)
NUM_BATCHES = 368750  # the counter value the oracle writes for SyncBN backbones


@pytest.fixture(scope="module")
def manifest():
    return zm.load_manifest()


@pytest.fixture(scope="module")
def results():
    torch.set_num_threads(1)
    return zm.collect()


# ---------------------------------------------------------------- the general mechanism


def test_training_only_buffers_are_dropped_and_reported_nothing_else():
    target = {"model.backbone.stem.conv1.norm.running_mean": torch.zeros(2)}
    original = {
        "backbone.stem.conv1.norm.running_mean": torch.ones(2),
        "backbone.stem.conv1.norm.num_batches_tracked": torch.tensor(7),
        "backbone.stem.conv1.norm.some_other_buffer": torch.tensor(7),  # unknown: never dropped silently
        "criterion.empty_weight": torch.ones(3),
    }
    mapping = map_state_dict(original, target)
    assert list(mapping.state_dict) == ["model.backbone.stem.conv1.norm.running_mean"]
    assert (
        mapping.dropped["backbone.stem.conv1.norm.num_batches_tracked"]
        == TRAINING_ONLY_SUFFIXES["num_batches_tracked"]
    )
    assert "criterion.empty_weight" in mapping.dropped
    assert mapping.unused == ["backbone.stem.conv1.norm.some_other_buffer"]
    assert "num_batches_tracked" in mapping.summary() and "1 unused" in mapping.summary()


def test_bn_backbone_loads_its_own_state_dict_strictly():
    from m2f_hf.modeling_resnet import make_norm

    for norm in ("BN", "SyncBN"):
        bn = make_norm(norm, 4).eval()
        assert "num_batches_tracked" not in bn.state_dict()
        # a plain dict (no `_metadata`, as the converter and transformers load): torch's BN adds the counter
        result = bn.load_state_dict(dict(bn.state_dict()), strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        frozen = make_norm("FrozenBN", 4)
        frozen.load_state_dict(bn.state_dict())
        x = torch.randn(2, 4, 3, 3)
        assert torch.equal(bn(x), frozen(x))  # BN in eval mode and FrozenBN: the same function


# ---------------------------------------------------------------- all 47 image configs (meta device)


def test_every_image_config_converts_both_ways(results, manifest):
    images = zm.image_configs(manifest)
    assert len(images) == 47 and set(results) == {c["config"] for c in manifest["configs"]}
    assert {r["style"] for r in results.values()} == {"static_query", "query_feat"}
    norms = collections.Counter(
        r["yaml"]["config"].backbone_config.get("norm")
        for r in results.values()
        if "norm" in r["yaml"]["config"].backbone_config and not r["yaml"]["config"].video
    )
    assert norms["SyncBN"] == 7  # the Cityscapes R50/R101 and ADE20K semantic R101 configs
    for cfg, r in results.items():
        counts = r["yaml"]["dropped_suffixes"]
        assert counts == r["inferred"]["dropped_suffixes"], cfg
        if r["yaml"]["config"].backbone_config.get("norm") == "SyncBN":
            assert counts["num_batches_tracked"] in (53, 104), cfg
        assert r["inferred"]["config"].backbone_config.get("norm") == r["yaml"]["config"].backbone_config.get(
            "norm"
        ), cfg


def test_docs_status_column_is_generated_from_these_results(results, manifest):
    text = zm.DOC.read_text()
    assert zm.render_doc(text, results, manifest) == text, (
        "docs/conversion.md is stale: regenerate it with "
        "`PYTHONPATH=src python tests/zoo_manifest.py --write`"
    )
    assert "NOT CHECKED" not in text


def test_every_video_config_converts_both_ways(results, manifest):
    videos = zm.video_configs(manifest)
    assert len(videos) == 12 and {c["config"] for c in videos} <= set(results)
    for entry in videos:
        r = results[entry["config"]]
        assert r["yaml"]["config"].video and r["inferred"]["config"].video, entry["config"]
        assert r["yaml"]["config"].num_labels == 40, entry["config"]  # YouTube-VIS 2019 / 2021


# ---------------------------------------------------------------- real width, one config per family


def relative_position_index(window: int) -> np.ndarray:
    """Swin's relative position index for a square window (independent of the model code)."""
    ys, xs = np.meshgrid(np.arange(window), np.arange(window), indexing="ij")
    coords = np.stack([ys.ravel(), xs.ravel()])
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)
    return (rel[0] * (2 * window - 1) + rel[1]).astype(np.int64)


def released_arrays(entry, style: str, seed: int):
    """(key, array) of the released checkpoint, in order: seeded random floats, zoo-like int64 buffers."""
    rows, _ = zm.released_entries(entry, style)
    rng = np.random.default_rng(seed)
    for key, shape, dtype in rows:
        if key.endswith("num_batches_tracked"):
            array = np.array(NUM_BATCHES, dtype=np.int64).reshape(shape)
        elif key.endswith("relative_position_index"):
            array = relative_position_index(int(round(shape[0] ** 0.5)))
        elif key.endswith("running_var"):
            array = rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
        else:  # small values keep a 100-layer ResNet with random weights finite
            array = (rng.standard_normal(size=shape, dtype=np.float32) * 0.02).astype(np.float32)
        assert str(array.dtype) == dtype and list(array.shape) == shape, key
        yield key, array


def write_released(path: Path, entry, style: str, seed: int) -> None:
    """A protocol-3 pickle in the container of the released `model_final_*.pkl` files."""
    _, versions = zm.released_entries(entry, style)
    state = collections.OrderedDict(released_arrays(entry, style, seed))
    state._metadata = collections.OrderedDict((k, {"version": v}) for k, v in versions.items())
    with path.open("wb") as f:
        pickle.dump({"model": state, "__author__": "m2f_hf zoo test"}, f, protocol=3)


def load_converted(folder: Path):
    config = AutoConfig.from_pretrained(folder)
    model, info = model_class_for(config).from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info.get("mismatched_keys"), info
    return model.eval()


@pytest.fixture
def scratch(tmp_path):
    """tmp_path, emptied afterwards even on failure (a Swin-L run writes ~2.6 GB; pytest keeps tmp dirs)."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.parametrize("cfg", list(zm.FULL_REAL_WIDTH), ids=list(zm.FULL_REAL_WIDTH.values()))
def test_real_width_conversion_and_forward(cfg, manifest, scratch):
    tmp_path = scratch
    torch.set_num_threads(1)
    configs = manifest["configs"]
    index = next(i for i, c in enumerate(configs) if c["config"] == cfg)
    entry, effective = configs[index], zm.load_effective()[cfg]
    style = zm.key_style(index)
    pkl = tmp_path / "model_final_test.pkl"
    write_released(pkl, entry, style, seed=index)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(zm.original_yaml(effective)))

    report = convert_checkpoint(pkl, tmp_path / "yaml", config_path=config_file, progress=False)
    # keep only what the checks need: at Swin-L width every held state dict costs ~0.9 GB
    dropped, num_mapped = dict(report.mapping.dropped), len(report.mapping.state_dict)
    del report
    gc.collect()
    model = load_converted(tmp_path / "yaml")
    config = model.config
    assert config.num_queries == effective["queries"] and config.num_labels == effective["classes"]
    assert config.backbone_type == ("swin" if effective["backbone"].startswith("swin") else "resnet")
    loaded = model.state_dict()
    placed = 0
    for key, array in released_arrays(entry, style, seed=index):  # regenerated, one array at a time
        new = rename_original_key(key)
        if key in dropped:
            suffix = key.rsplit(".", 1)[-1]
            assert suffix in ("num_batches_tracked", "relative_position_index"), key
            if suffix == "relative_position_index":  # the model derives exactly the stored values
                assert torch.equal(dict(model.named_buffers())[new], torch.from_numpy(array)), key
            continue
        assert torch.equal(loaded[new], torch.from_numpy(array)), (key, new)
        placed += 1
    assert placed == num_mapped == len(loaded) - sum(k.startswith("criterion.") for k in loaded)
    frames = (2,) if config.video else ()  # a video model runs on a 2-frame clip
    with torch.no_grad():
        out = model(torch.randn(1, *frames, 3, 64, 96, generator=torch.Generator().manual_seed(0)))
    q, c = effective["queries"], effective["classes"]
    assert tuple(out.class_queries_logits.shape) == (1, q, c + 1)
    assert tuple(out.masks_queries_logits.shape) == (1, q, *frames, 16, 24)
    assert torch.isfinite(out.class_queries_logits).all() and torch.isfinite(out.masks_queries_logits).all()

    # the same file without its yaml: architecture from the shapes, classes from the dataset
    inferred = convert_checkpoint(
        pkl, tmp_path / "inferred", dataset=zm.dataset_key(effective), progress=False
    )
    inferred_dropped = dict(inferred.mapping.dropped)
    del inferred
    gc.collect()
    assert inferred_dropped == dropped
    other = load_converted(tmp_path / "inferred")
    for name in zm.ARCHITECTURE_FIELDS:
        if name != "backbone_config":
            assert getattr(other.config, name) == getattr(config, name), name
    other_state = other.state_dict()
    assert other_state.keys() == loaded.keys()
    assert all(torch.equal(other_state[k], loaded[k]) for k in loaded)


# ---------------------------------------------------------------- SyncBN parity on the A1 fixture

A1 = "A1_coco_panoptic_r50"


@pytest.fixture(scope="module")
def syncbn_a1(tmp_path_factory):
    """A1's checkpoint re-expressed as a SyncBN model: config NORM SyncBN, num_batches_tracked added."""
    folder = oracle.FIXTURES / A1
    work = tmp_path_factory.mktemp("syncbn_a1")
    original = load_original_checkpoint(folder / "model_final.pkl")
    state = collections.OrderedDict()
    added = 0
    for key, tensor in original.state_dict.items():
        state[key] = tensor.numpy()
        if key.startswith("backbone.") and key.endswith(".norm.running_var"):
            state[key.replace("running_var", "num_batches_tracked")] = np.array(NUM_BATCHES, dtype=np.int64)
            added += 1
    assert added == 53
    state._metadata = collections.OrderedDict((k, {"version": v}) for k, v in original.versions.items())
    with (work / "model_final.pkl").open("wb") as f:
        pickle.dump({"model": state, "__author__": "m2f_hf SyncBN test"}, f, protocol=3)
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    assert cfg["MODEL"]["RESNETS"]["NORM"] == "FrozenBN"
    cfg["MODEL"]["RESNETS"]["NORM"] = "SyncBN"
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    report = convert_checkpoint(
        work / "model_final.pkl", work / "out", config_path=work / "config.yaml", progress=False
    )
    report.model = None
    assert len(report.mapping.dropped) == 53 and not report.mapping.unused
    assert "53 x training-only BatchNorm" in report.summary()
    yield work / "out"
    shutil.rmtree(work, ignore_errors=True)


def max_diff(ours: torch.Tensor, reference: np.ndarray) -> float:
    assert tuple(ours.shape) == reference.shape
    return float((ours - torch.from_numpy(reference)).abs().max())


def test_syncbn_checkpoint_reproduces_a1_reference_outputs(syncbn_a1):
    model = load_converted(syncbn_a1)
    assert model.config.backbone_config["norm"] == "SyncBN"
    assert isinstance(model.model.backbone.stem.conv1.norm, torch.nn.BatchNorm2d)
    folder = oracle.FIXTURES / A1
    pixel_values = torch.from_numpy(np.load(folder / "inputs.npz")["normalized_padded_batch"])
    raw, inter = np.load(folder / "raw_outputs.npz"), np.load(folder / "intermediates.npz")
    with torch.no_grad():
        out = model(pixel_values, output_hidden_states=True)
        embeds = [
            model.model.transformer_decoder.mask_embed(h.transpose(0, 1))
            for h in out.transformer_decoder_intermediate_states
        ]
    for k, feature in zip(("res2", "res3", "res4", "res5"), out.encoder_hidden_states, strict=True):
        assert max_diff(feature, inter[f"backbone_{k}"]) <= FEATURE_TOL, k
    assert max_diff(out.pixel_decoder_last_hidden_state, inter["pixdec_mask_features"]) <= FEATURE_TOL
    for i, feature in enumerate(out.pixel_decoder_hidden_states):
        assert max_diff(feature, inter[f"pixdec_multi_scale_{i}"]) <= FEATURE_TOL, i
    predictions = [
        *out.auxiliary_logits,
        {"class_queries_logits": out.class_queries_logits, "masks_queries_logits": out.masks_queries_logits},
    ]
    prefixes = [f"aux{i}_" for i in range(9)] + [""]
    for prefix, prediction, embed in zip(prefixes, predictions, embeds, strict=True):
        assert max_diff(prediction["class_queries_logits"], raw[f"{prefix}pred_logits"]) <= FEATURE_TOL, (
            prefix
        )
        assert max_diff(prediction["masks_queries_logits"], raw[f"{prefix}pred_masks"]) <= MASK_TOL, prefix
        assert max_diff(embed, raw[f"{prefix}mask_embed"]) <= FEATURE_TOL, prefix


def test_syncbn_a1_end_to_end_post_processing(syncbn_a1):
    """PNG files -> the converted processor -> model -> panoptic and semantic results equal the original's."""
    folder = oracle.FIXTURES / A1
    meta = oracle.meta(A1)
    processor = AutoImageProcessor.from_pretrained(syncbn_a1)
    model = load_converted(syncbn_a1)
    images = [Image.open(folder / f"input_image{j}.png") for j in range(2)]
    inputs = processor(images, return_tensors="pt")
    with torch.no_grad():
        outputs = model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
    sizes = [tuple(s) for s in inputs["original_sizes"].tolist()]
    data = np.load(folder / "postprocessed.npz")
    info = json.loads((folder / "postprocessed.json").read_text())
    semantic = processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)
    panoptic = processor.post_process_panoptic_segmentation(outputs, target_sizes=sizes)
    for j in range(2):
        stable = data[f"img{j}_sem_seg_margin"].astype(np.float32) >= 1e-3
        assert stable.sum() > 0
        ref = data[f"img{j}_sem_seg_argmax"].astype(np.int64)
        assert ((semantic[j].numpy() != ref) & stable).sum() == 0, j
        ref_pan = data[f"img{j}_panoptic_seg"]
        key = f"img{j}_panoptic_fragile_packed"
        fragile = (
            np.unpackbits(data[key], axis=-1)[..., : ref_pan.shape[1]].astype(bool)
            if key in data
            else np.zeros(ref_pan.shape, dtype=bool)
        )
        assert ((panoptic[j]["segmentation"].numpy() != ref_pan) & ~fragile).sum() == 0, j
        got = [(s["id"], s["label_id"], not s["was_fused"]) for s in panoptic[j]["segments_info"]]
        ref_info = info["images"][j]["segments_info"]
        assert got == [(s["id"], s["category_id"], s["isthing"]) for s in ref_info], j
        assert len(got) > 0
    assert meta["task_flags"]["panoptic_on"]
