"""Model construction, save/load round trips and API behaviour on tiny random configs."""

from __future__ import annotations

import pytest
import torch
from tiny_m2f import HEAD as TINY_HEAD
from transformers import AutoConfig, AutoModel, AutoModelForUniversalSegmentation

import m2f_hf
from m2f_hf import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerModel

# the tiny head of the pipeline/Hub/CLI tests, with 5 classes and one more decoder layer
HEAD = {**TINY_HEAD, "num_labels": 5, "decoder_layers": 4}
BACKBONES = {
    "resnet_basic": ("resnet", dict(depth=50, stem_out_channels=16, res2_out_channels=32, width_per_group=8)),
    "resnet_deeplab_bn": (
        "resnet",
        dict(
            depth=50,
            stem_type="deeplab",
            stem_out_channels=32,
            res2_out_channels=32,
            width_per_group=8,
            norm="SyncBN",
            res5_dilation=2,
            res5_multi_grid=[1, 2, 4],
        ),
    ),
    "resnet18": ("resnet", dict(depth=18, stem_out_channels=16, res2_out_channels=64)),
    "swin": ("swin", dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=7)),
    "convnext_auto": (
        "auto",
        dict(
            model_type="convnext",
            hidden_sizes=[16, 32, 64, 128],
            depths=[1, 1, 1, 1],
            out_features=["stage1", "stage2", "stage3", "stage4"],
        ),
    ),
}


def tiny_config(kind: str, **overrides) -> Mask2FormerConfig:
    backbone_type, backbone_config = BACKBONES[kind]
    kwargs = {"backbone_type": backbone_type, "backbone_config": backbone_config, **HEAD, **overrides}
    return Mask2FormerConfig(**kwargs)


@pytest.mark.parametrize("kind", sorted(BACKBONES))
def test_save_load_roundtrip_identical(kind, tmp_path):
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(tiny_config(kind)).eval()
    pixel_values = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        before = model(pixel_values)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForUniversalSegmentation.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, Mask2FormerForUniversalSegmentation)
    with torch.no_grad():
        after = loaded(pixel_values)
    assert before.class_queries_logits.shape == (2, 8, 6)
    assert before.masks_queries_logits.shape == (2, 8, 16, 24)
    assert len(before.auxiliary_logits) == 3
    assert torch.equal(before.class_queries_logits, after.class_queries_logits)
    assert torch.equal(before.masks_queries_logits, after.masks_queries_logits)
    for a, b in zip(before.auxiliary_logits, after.auxiliary_logits):
        assert torch.equal(a["masks_queries_logits"], b["masks_queries_logits"])


def test_state_dict_uses_original_names():
    keys = Mask2FormerForUniversalSegmentation(tiny_config("resnet_basic")).state_dict().keys()
    for expected in [
        "model.backbone.stem.conv1.norm.running_var",
        "model.backbone.res2.0.shortcut.weight",
        "model.pixel_decoder.transformer.encoder.layers.0.self_attn.sampling_offsets.weight",
        "model.pixel_decoder.adapter_1.norm.weight",
        "model.pixel_decoder.layer_1.weight",
        "model.transformer_decoder.transformer_cross_attention_layers.0.multihead_attn.in_proj_weight",
        "model.transformer_decoder.query_feat.weight",
        "model.transformer_decoder.mask_embed.layers.2.bias",
    ]:
        assert expected in keys
    assert not any("num_batches_tracked" in k or "empty_weight" in k for k in keys)


def test_input_projection_only_when_widths_differ():
    same = Mask2FormerModel(tiny_config("resnet_basic"))
    assert not any("transformer_decoder.input_proj" in k for k in same.state_dict())
    enforced = Mask2FormerModel(tiny_config("resnet_basic", enforce_input_projection=True))
    assert "transformer_decoder.input_proj.0.weight" in enforced.state_dict()
    wider = Mask2FormerModel(tiny_config("resnet_basic", hidden_dim=64))
    assert wider.transformer_decoder.input_proj[2].weight.shape == (64, 32, 1, 1)
    with torch.no_grad():
        out = wider.eval()(torch.randn(1, 3, 64, 64))
    assert out.class_queries_logits[-1].shape == (1, 8, 6)


def test_auto_classes_and_tuple_output():
    config = tiny_config("resnet_basic")
    assert isinstance(AutoConfig.for_model(config.model_type), Mask2FormerConfig)
    assert isinstance(AutoModel.from_config(config), Mask2FormerModel)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    with torch.no_grad():
        tup = model(torch.randn(1, 3, 64, 64), return_dict=False)
        out = model(torch.randn(1, 3, 64, 64), output_auxiliary_logits=False, output_hidden_states=True)
    assert isinstance(tup, tuple) and tup[0].shape == (1, 8, 6)
    assert out.auxiliary_logits is None
    assert len(out.encoder_hidden_states) == 4 and len(out.pixel_decoder_hidden_states) == 3
    assert len(out.transformer_decoder_hidden_states) == 4
    assert m2f_hf.__version__


def test_pixel_mask_gives_image_sizes():
    model = Mask2FormerModel(tiny_config("resnet_basic")).eval()
    mask = torch.zeros(2, 64, 96, dtype=torch.long)
    mask[0, :60, :90] = 1
    mask[1, :64, :33] = 1
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96), pixel_mask=mask)
    assert out.image_sizes.tolist() == [[60, 90], [64, 33]]


def _count_runs(watched: dict) -> dict:
    """Counts how often each watched layer runs. The hook sits on a submodule: a `GradientCheckpointingLayer`
    recomputes its `forward` directly (its own hooks stay outside the checkpoint), its children through
    their `__call__`."""
    calls = {name: [0] for name in watched}
    for name, module in watched.items():
        # a pre-hook: the recomputation stops early, once it has rebuilt what the backward needs
        module.register_forward_pre_hook(lambda *_, count=calls[name]: count.__setitem__(0, count[0] + 1))
    return calls


def _watched_layers(model, kind: str) -> dict:
    first_block = model.backbone.layers[0].blocks[0].norm1 if kind == "swin" else model.backbone.res2[0].conv1
    decoder = model.transformer_decoder
    return {
        "backbone": first_block,
        "encoder": model.pixel_decoder.transformer.encoder.layers[0].norm1,
        "cross": decoder.transformer_cross_attention_layers[0].multihead_attn,
        "self": decoder.transformer_self_attention_layers[0].self_attn,
        "ffn": decoder.transformer_ffn_layers[0].linear1,
    }


def _loss(out) -> torch.Tensor:
    return sum(c.sum() for c in out.class_queries_logits) + sum(m.sum() for m in out.masks_queries_logits)


@pytest.mark.parametrize("kind", ["swin", "resnet_basic"])
def test_gradient_checkpointing_same_gradients(kind):
    """transformers' `gradient_checkpointing_enable()` recomputes backbone blocks, deformable encoder layers
    and decoder layers in the backward pass (through `GradientCheckpointingLayer`), with plain gradients."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    torch.manual_seed(0)
    model = Mask2FormerModel(tiny_config(kind)).train()
    x = torch.randn(1, 3, 64, 64)
    calls = _count_runs(_watched_layers(model, kind))

    def grads():
        torch.manual_seed(1)  # drop path is random in training: same draws for both runs
        model.zero_grad()
        for count in calls.values():
            count[0] = 0
        _loss(model(x)).backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = grads()
    assert {name: count[0] for name, count in calls.items()} == dict.fromkeys(calls, 1)
    model.activation_checkpointing_enable()  # v5's name for gradient_checkpointing_enable
    assert model.is_activation_checkpointing
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert layers and all(m.gradient_checkpointing for m in layers)
    checkpointed = grads()
    assert {name: count[0] for name, count in calls.items()} == dict.fromkeys(calls, 2)
    assert len(plain) == len(checkpointed)
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    model.activation_checkpointing_disable()
    grads()
    assert {name: count[0] for name, count in calls.items()} == dict.fromkeys(calls, 1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(backbone_type="vgg"), "backbone_type"),
        (dict(hidden_dim=30), "divisible"),
        (dict(decoder_layers=0), "decoder_layers"),
        (dict(feature_size=48), "multiple of 32"),
        (dict(thing_ids=[9]), "thing_ids"),
    ],
)
def test_bad_config_is_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config("resnet_basic", **overrides)


def test_bad_backbone_options_are_refused():
    with pytest.raises(ValueError, match="unknown resnet backbone_config keys"):
        Mask2FormerConfig(backbone_type="resnet", backbone_config={"depht": 50})
    with pytest.raises(ValueError, match="depth"):
        Mask2FormerModel(Mask2FormerConfig(backbone_type="resnet", backbone_config={"depth": 42}))
    with pytest.raises(ValueError, match="model_type"):
        Mask2FormerConfig(backbone_type="auto", backbone_config={})


def test_wrong_pixel_values_shape():
    model = Mask2FormerModel(tiny_config("resnet_basic")).eval()
    with pytest.raises(ValueError, match="pixel_values"):
        model(torch.randn(3, 64, 64))


def test_high_resolution_checkpointing_recomputes_only_those_layers_with_the_same_gradients():
    torch.manual_seed(0)
    model = Mask2FormerModel(tiny_config("swin")).train()
    x = torch.randn(1, 3, 64, 64)
    backbone = model.backbone
    calls = _count_runs(
        {
            "stage0": backbone.layers[0].blocks[0].norm1,
            "stage2": backbone.layers[2].blocks[0].norm1,
            "encoder": model.pixel_decoder.transformer.encoder.layers[0].norm1,
            "decoder": model.transformer_decoder.transformer_ffn_layers[0].linear1,
        }
    )

    def grads():
        torch.manual_seed(1)  # drop path is random in training: same draws for both runs
        model.zero_grad()
        for count in calls.values():
            count[0] = 0
        _loss(model(x)).backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = grads()
    assert {name: count[0] for name, count in calls.items()} == dict.fromkeys(calls, 1)
    names = model.checkpoint_high_resolution_layers()
    assert names == ["backbone.layers.0", "backbone.layers.1", "pixel_decoder.transformer.encoder"]
    checkpointed = grads()
    # the checkpointed layers ran again in the backward pass, the others once
    assert {name: count[0] for name, count in calls.items()} == dict(stage0=2, stage2=1, encoder=2, decoder=1)
    assert len(plain) == len(checkpointed)
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    model.checkpoint_high_resolution_layers(enable=False)
    grads()
    assert {name: count[0] for name, count in calls.items()} == dict.fromkeys(calls, 1)


def test_fresh_model_starts_from_the_original_initialisation(tmp_path):
    """Every module's `_init_weights` branch runs on a freshly built model (transformers would skip the
    modules without parameters of their own in custom code): the deformable attention starts on the
    Deformable-DETR ring with uniform attention, and loading a saved model keeps its weights."""
    from conftest import tiny_model

    from m2f_hf.modeling_deform_attn import MSDeformAttn

    config = tiny_model("panoptic")[0].config
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(config)
    attention = [m for m in model.modules() if isinstance(m, MSDeformAttn)]
    assert attention
    for module in attention:
        assert torch.equal(module.sampling_offsets.bias, module.offset_grid())
        assert not module.sampling_offsets.weight.any() and not module.attention_weights.weight.any()
        assert not module.value_proj.bias.any()
    decoder = model.model.transformer_decoder
    for layer in decoder.transformer_ffn_layers:  # xavier, not the generic Linear init (std 0.02)
        bound = (6 / sum(layer.linear1.weight.shape)) ** 0.5
        assert layer.linear1.weight.abs().max() <= bound and layer.linear1.weight.std() > 0.5 * bound / 3**0.5
    with torch.no_grad():
        for module in attention:  # move the weights off their initial values, then save and reload
            module.sampling_offsets.bias.add_(0.5)
    model.save_pretrained(tmp_path)
    loaded = Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
