"""Importing transformers-format Mask2Former checkpoints: parity with transformers, settings, errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import transformers
from transformers import SwinConfig

from m2f_hf.conversion_label_sets import LABEL_SETS
from m2f_hf.conversion_transformers import (
    config_from_transformers_config,
    convert_transformers_state_dict,
    dataset_from_name,
    load_transformers_checkpoint,
    maybe_convert_transformers_folder,
    native_swin_blockers,
    settings_from_transformers_config,
)
from m2f_hf.modeling_m2f import Mask2FormerForUniversalSegmentation, Mask2FormerModel

TOL = 1e-4
SWIN = dict(
    embed_dim=32,
    depths=[1, 1, 1, 1],
    num_heads=[1, 2, 4, 8],
    window_size=7,
    out_features=["stage1", "stage2", "stage3", "stage4"],
)
HEADS = {
    # the brief's configuration: post-norm, feature_size == hidden_dim (no decoder input projection)
    "post_norm": dict(
        feature_size=64,
        mask_feature_size=64,
        hidden_dim=64,
        num_queries=10,
        decoder_layers=4,
        encoder_layers=2,
        num_labels=7,
    ),
    # pre-norm decoder, hidden_dim != feature_size (1x1 input projections), two rounds over the 3 levels
    "pre_norm_proj": dict(
        feature_size=64,
        mask_feature_size=32,
        hidden_dim=32,
        num_attention_heads=4,
        num_queries=6,
        decoder_layers=7,
        encoder_layers=1,
        dim_feedforward=48,
        encoder_feedforward_dim=40,
        num_labels=3,
        pre_norm=True,
    ),
}
SIZES = [(96, 128), (70, 101)]


def transformers_config(
    num_labels: int = 7, swin: dict | None = None, **head
) -> transformers.Mask2FormerConfig:
    return transformers.Mask2FormerConfig(
        backbone_config=SwinConfig(**(swin or SWIN)), num_labels=num_labels, **head
    )


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Move every parameter off its structured init (zero attention weights, unit norms, grid offsets)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.02 if "sampling_offsets" in name else 0.1
            p.add_(torch.randn(p.shape, generator=gen) * scale)


@pytest.fixture(scope="module", params=sorted(HEADS))
def saved_transformers_model(request, tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.Mask2FormerForUniversalSegmentation(
        transformers_config(**HEADS[request.param])
    ).eval()
    _randomise(model, 1)
    folder = tmp_path_factory.mktemp(f"hf_{request.param}")
    model.save_pretrained(folder)
    return request.param, folder, model, load_transformers_checkpoint(folder)


def _max_diffs(ref, ours) -> dict[str, float]:
    diffs = {
        "class_queries_logits": (ref.class_queries_logits - ours.class_queries_logits).abs().max().item(),
        "masks_queries_logits": (ref.masks_queries_logits - ours.masks_queries_logits).abs().max().item(),
    }
    assert ref.auxiliary_logits is not None and ours.auxiliary_logits is not None
    assert len(ref.auxiliary_logits) == len(ours.auxiliary_logits)
    for i, (a, b) in enumerate(zip(ref.auxiliary_logits, ours.auxiliary_logits, strict=True)):
        for key in ("class_queries_logits", "masks_queries_logits"):
            assert a[key].shape == b[key].shape, (i, key)
            diffs[f"aux{i}.{key}"] = (a[key] - b[key]).abs().max().item()
    return diffs


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_outputs_match_transformers(saved_transformers_model, size):
    name, _, reference, ours = saved_transformers_model
    assert isinstance(ours, Mask2FormerForUniversalSegmentation) and not ours.training
    torch.manual_seed(2)
    pixel_values = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = reference(pixel_values, output_auxiliary_logits=True)
        out = ours(pixel_values)
    head = HEADS[name]
    assert out.class_queries_logits.shape == (2, head["num_queries"], head["num_labels"] + 1)
    assert out.masks_queries_logits.shape == ref.masks_queries_logits.shape
    assert len(out.auxiliary_logits) == head["decoder_layers"] - 1
    # the masked attention must really mask: mask logits of mixed sign
    positive = (out.auxiliary_logits[0]["masks_queries_logits"] > 0).float().mean().item()
    assert 0.05 < positive < 0.95, positive
    diffs = _max_diffs(ref, out)
    print(f"{name} {size}: max abs diff {max(diffs.values()):.3g}")
    assert max(diffs.values()) <= TOL, diffs


def test_state_dict_mapping_covers_every_parameter(saved_transformers_model):
    _, _, reference, model = saved_transformers_model
    converted = convert_transformers_state_dict(reference.state_dict(), native_swin=True)
    ours = model.state_dict()
    assert set(converted) == set(ours)
    for key, value in converted.items():
        assert torch.equal(value, ours[key]), key
    # q, k, v of the decoder self-attention are packed in that order, as nn.MultiheadAttention does
    hidden = reference.config.hidden_dim
    packed = converted[
        "model.transformer_decoder.transformer_self_attention_layers.1.self_attn.in_proj_weight"
    ]
    hf_layer = reference.model.transformer_module.decoder.layers[1].self_attn
    for i, proj in enumerate((hf_layer.q_proj, hf_layer.k_proj, hf_layer.v_proj)):
        assert torch.equal(packed[i * hidden : (i + 1) * hidden], proj.weight)
    assert torch.equal(
        converted["model.transformer_decoder.class_embed.weight"], reference.class_predictor.weight
    )


def test_config_fields_carried_over(saved_transformers_model):
    name, _, reference, _ = saved_transformers_model
    cfg = config_from_transformers_config(reference.config)
    head = HEADS[name]
    for field in (
        "feature_size",
        "mask_feature_size",
        "hidden_dim",
        "num_queries",
        "decoder_layers",
        "encoder_layers",
        "num_labels",
    ):
        assert getattr(cfg, field) == head[field], field
    assert cfg.pre_norm == head.get("pre_norm", False)
    assert cfg.num_attention_heads == head.get("num_attention_heads", 8)
    assert cfg.dim_feedforward == head.get("dim_feedforward", 2048)
    assert cfg.encoder_feedforward_dim == head.get("encoder_feedforward_dim", 1024)
    # a transformers Swin runs as the native (original D2) Swin by default
    assert cfg.backbone_type == "swin"
    assert cfg.backbone_config["embed_dim"] == 32 and list(cfg.backbone_config["depths"]) == [1, 1, 1, 1]
    assert list(cfg.backbone_config["num_heads"]) == [1, 2, 4, 8] and cfg.backbone_config["window_size"] == 7
    kept = config_from_transformers_config(reference.config, native_swin=False)
    assert kept.backbone_type == "auto" and kept.backbone_config.model_type == "swin"
    assert (cfg.class_weight, cfg.mask_weight, cfg.dice_weight, cfg.no_object_weight) == (2.0, 5.0, 5.0, 0.1)


def test_converted_folder_loads_and_uses_original_preprocessing(saved_transformers_model, tmp_path):
    _, folder, reference, _ = saved_transformers_model
    out = tmp_path / "m2f"
    script = Path(__file__).parents[1] / "conversion" / "convert_transformers.py"
    spec = importlib.util.spec_from_file_location("convert_transformers_script", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--model", str(folder), "--output", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "m2f_hf_mask2former" and config["backbone_type"] == "swin"
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["size"] == {
        "shortest_edge": 800,
        "longest_edge": 1333,
    }  # unknown dataset: detectron2 default
    assert processor["image_mean"] == [123.675, 116.28, 103.53]
    assert processor["image_std"] == [58.395, 57.12, 57.375]
    assert processor["size_divisibility"] == 32
    loaded = Mask2FormerForUniversalSegmentation.from_pretrained(out).eval()
    pixel_values = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = reference(pixel_values)
        got = loaded(pixel_values)
    assert (ref.masks_queries_logits - got.masks_queries_logits).abs().max().item() <= TOL
    assert (ref.class_queries_logits - got.class_queries_logits).abs().max().item() <= TOL


def test_from_pretrained_hook(saved_transformers_model, tmp_path):
    _, folder, _, model = saved_transformers_model
    base = maybe_convert_transformers_folder(folder, model_class=Mask2FormerModel, dtype=torch.float16)
    assert isinstance(base, Mask2FormerModel) and next(base.parameters()).dtype == torch.float16
    # folders that are not transformers Mask2Former ones are passed through untouched
    Mask2FormerForUniversalSegmentation(model.config).save_pretrained(tmp_path / "ours")
    assert maybe_convert_transformers_folder(tmp_path / "ours") == tmp_path / "ours"
    assert maybe_convert_transformers_folder(str(tmp_path / "nothing")) == str(tmp_path / "nothing")
    with pytest.raises(ValueError, match="not supported"):
        maybe_convert_transformers_folder(folder, device_map="auto")


# ---------------------------------------------------------------- settings and errors (no weights)


def _generic(n: int) -> dict:
    return transformers_config(num_labels=n).to_dict()


@pytest.mark.parametrize(
    ("hint", "num_labels", "swin", "expected"),
    [
        ("facebook/mask2former-swin-small-coco-instance", 80, None, ("coco_instance", 800, 1333, False)),
        ("facebook/mask2former-swin-large-ade-semantic", 150, None, ("ade20k_semantic", 512, 2048, False)),
        (
            "facebook/mask2former-swin-large-ade-semantic",
            150,
            dict(SWIN, window_size=12),
            ("ade20k_semantic", 640, 2560, False),
        ),
        ("facebook/mask2former-swin-large-ade-panoptic", 150, None, ("ade20k_panoptic", 640, 2560, True)),
        (
            "facebook/mask2former-swin-small-cityscapes-semantic",
            19,
            None,
            ("cityscapes_semantic", 1024, 2048, False),
        ),
        (
            "models--facebook--mask2former-swin-large-mapillary-vistas-panoptic/snapshots/0a1b",
            65,
            None,
            ("mapillary_panoptic", 2048, 2048, True),
        ),
        ("some/fine-tune", 133, None, ("coco_panoptic", 800, 1333, True)),  # by class count
    ],
)
def test_dataset_settings(hint, num_labels, swin, expected):
    key, short, long, panoptic = expected
    settings = settings_from_transformers_config(
        transformers_config(num_labels=num_labels, swin=swin).to_dict(), name_hints=[hint]
    )
    assert settings.dataset == key
    assert settings.processor_kwargs["size"] == {"shortest_edge": short, "longest_edge": long}
    assert settings.config.panoptic_on == panoptic
    assert settings.config.thing_ids == list(LABEL_SETS[key].thing_ids)
    assert settings.processor_kwargs["thing_ids"] == settings.config.thing_ids


def test_coco_panoptic_things_and_names():
    cfg = _generic(133)
    cfg["id2label"] = {str(i): n for i, n in enumerate(LABEL_SETS["coco_panoptic"].names)}
    settings = settings_from_transformers_config(cfg)
    assert settings.dataset == "coco_panoptic" and settings.config.thing_ids == list(range(80))
    assert settings.config.id2label[132] == "rug-merged"


def test_custom_classes_are_not_mistaken_for_a_dataset():
    cfg = _generic(133)
    cfg["id2label"] = {str(i): f"part {i}" for i in range(133)}
    settings = settings_from_transformers_config(cfg)
    assert settings.dataset is None and settings.config.thing_ids is None
    assert settings.config.id2label[5] == "part 5"
    assert settings.processor_kwargs["size"] == {"shortest_edge": 800, "longest_edge": 1333}


def test_explicit_dataset_wins_and_is_checked():
    settings = settings_from_transformers_config(_generic(19), dataset="cityscapes_panoptic")
    assert settings.dataset == "cityscapes_panoptic" and settings.config.thing_ids == list(range(11, 19))
    with pytest.raises(ValueError, match="has 133 classes"):
        settings_from_transformers_config(_generic(19), dataset="coco_panoptic")
    with pytest.raises(ValueError, match="unknown dataset"):
        settings_from_transformers_config(_generic(19), dataset="pascal_voc")


def test_ambiguous_label_count_asks_for_dataset():
    with pytest.raises(ValueError, match="pass dataset"):
        settings_from_transformers_config(_generic(150))


def test_dataset_from_name():
    assert dataset_from_name("facebook/mask2former-swin-tiny-coco-panoptic") == "coco_panoptic"
    assert dataset_from_name("facebook/mask2former-swin-base-IN21k-ade-semantic") == "ade20k_semantic"
    assert dataset_from_name("facebook/mask2former-swin-tiny-cityscapes-instance") == "cityscapes_instance"
    assert dataset_from_name("my-model") is None
    assert dataset_from_name("coco-and-ade-panoptic") is None  # two datasets named: no guess


def test_unsupported_configs_raise():
    with pytest.raises(ValueError, match="model_type is 'swin'"):
        settings_from_transformers_config(SwinConfig(**SWIN).to_dict())
    bad = _generic(7)
    bad["activation_function"] = "gelu"
    with pytest.raises(ValueError, match="activation_function"):
        settings_from_transformers_config(bad)
    bad = _generic(7)
    bad["feature_strides"] = [4, 8, 16, 64]
    with pytest.raises(ValueError, match="feature_strides"):
        settings_from_transformers_config(bad)
    with pytest.raises(TypeError):
        settings_from_transformers_config(42)


def test_non_mask2former_folder_is_rejected(tmp_path):
    transformers.SwinModel(SwinConfig(**SWIN)).save_pretrained(tmp_path / "swin")
    with pytest.raises(ValueError, match="'swin' model, not transformers' 'mask2former'"):
        load_transformers_checkpoint(tmp_path / "swin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        load_transformers_checkpoint(tmp_path / "empty")
    assert maybe_convert_transformers_folder(tmp_path / "swin") == tmp_path / "swin"


def test_unknown_state_dict_key_raises():
    sd = {"model.transformer_module.something_new.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="no m2f_hf counterpart"):
        convert_transformers_state_dict(sd)
    partial = {"model.transformer_module.decoder.layers.0.self_attn.q_proj.weight": torch.zeros(2, 2)}
    with pytest.raises(ValueError, match="q/k/v"):
        convert_transformers_state_dict(partial)


def test_truncated_checkpoint_raises(saved_transformers_model, tmp_path):
    _, folder, _, _ = saved_transformers_model
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    dropped = next(k for k in state if "class_predictor" in k)
    del state[dropped]
    (tmp_path / "cut").mkdir()
    save_file(state, tmp_path / "cut" / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "cut" / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(ValueError, match="does not fit"):
        load_transformers_checkpoint(tmp_path / "cut")


def test_mapillary_uses_the_zoo_ignore_value():
    settings = settings_from_transformers_config(_generic(65), dataset="mapillary_semantic")
    assert settings.config.ignore_value == 65 and settings.processor_kwargs["ignore_index"] == 65
    assert settings.processor_kwargs["object_mask_threshold"] == 0.0


# ---------------------------------------------------------------- native Swin vs transformers' Swin


def test_native_swin_matches_transformers_backbone(saved_transformers_model):
    """The transformers Swin mapped onto our SwinBackbone gives its features, and so the same outputs."""
    _, folder, reference, native = saved_transformers_model
    kept = load_transformers_checkpoint(folder, native_swin=False)
    assert native.config.backbone_type == "swin" and kept.config.backbone_type == "auto"
    # odd sizes: patch padding, window padding and odd patch merging all take part
    torch.manual_seed(3)
    pixel_values = torch.randn(2, 3, 83, 157)
    with torch.no_grad():
        ref_maps = reference.model.pixel_level_module.encoder(pixel_values).feature_maps
        ours = native.model.backbone(pixel_values)
        ref = reference(pixel_values, output_auxiliary_logits=True)
        out_native = native(pixel_values)
        out_kept = kept(pixel_values)
    assert len(ref_maps) == len(ours) == 4
    for name, ref_map in zip(("res2", "res3", "res4", "res5"), ref_maps, strict=True):
        assert ours[name].shape == ref_map.shape, name
        diff = (ours[name] - ref_map).abs().max().item()
        assert diff <= TOL, (name, diff)
    for out in (out_native, out_kept):
        assert max(_max_diffs(ref, out).values()) <= TOL


def test_native_swin_state_dict_mapping():
    model = transformers.Mask2FormerForUniversalSegmentation(
        transformers_config(swin=dict(SWIN, depths=[1, 2, 1, 1]), **HEADS["post_norm"])
    )
    hf_sd = model.state_dict()
    converted = convert_transformers_state_dict(hf_sd, native_swin=True)
    ours = Mask2FormerForUniversalSegmentation(config_from_transformers_config(model.config)).state_dict()
    assert set(converted) == set(ours) - {"criterion.empty_weight"}
    for key, value in converted.items():
        assert value.shape == ours[key].shape, key
    swin = "model.pixel_level_module.encoder."
    block = swin + "swin.encoder.layers.1.blocks.1.attention."
    packed = converted["model.backbone.layers.1.blocks.1.attn.qkv.weight"]
    for i, which in enumerate("qkv"):
        assert torch.equal(packed[i * 64 : (i + 1) * 64], hf_sd[block + f"{which}_proj.weight"])
    stage4_norm = hf_sd[swin + "hidden_states_norms.stage4.weight"]
    assert torch.equal(converted["model.backbone.norm3.weight"], stage4_norm)
    assert torch.equal(
        converted["model.backbone.layers.1.blocks.1.attn.proj.bias"], hf_sd[block + "o_proj.bias"]
    )
    # an incomplete q/k/v triple or a key from another Swin version is an error, not a silent skip
    cut = {k: v for k, v in hf_sd.items() if not k.endswith("blocks.0.attention.k_proj.bias")}
    with pytest.raises(ValueError, match="q/k/v"):
        convert_transformers_state_dict(cut, native_swin=True)
    odd = dict(hf_sd, **{swin + "swin.encoder.layers.0.blocks.0.attention.gamma": torch.zeros(1)})
    with pytest.raises(ValueError, match="no native Swin counterpart"):
        convert_transformers_state_dict(odd, native_swin=True)


def test_native_swin_refused_for_unsupported_swin_configs():
    cfg = transformers_config(swin=dict(SWIN, hidden_act="relu")).to_dict()
    assert config_from_transformers_config(cfg).backbone_type == "auto"  # automatic: falls back
    with pytest.raises(ValueError, match="hidden_act"):
        config_from_transformers_config(cfg, native_swin=True)
    cfg = transformers_config(swin=dict(SWIN, out_features=["stage2", "stage3", "stage4"])).to_dict()
    assert native_swin_blockers(cfg["backbone_config"])
