"""Swin backbone: parity with the original's outputs (oracle fixture A2) and with a naive loop reference."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from m2f_hf.configuration_m2f import SWIN_DEFAULTS
from m2f_hf.conversion_checkpoint_io import load_original_checkpoint
from m2f_hf.modeling_swin import SwinBackbone, relative_position_index, shift_attention_mask

FIXTURE = Path(__file__).parent / "fixtures" / "A2_coco_panoptic_swin_tiny"
TINY = {"embed_dim": 16, "num_heads": (1, 2, 4, 8)}  # the fixture's shrunk widths (config.yaml MODEL.SWIN)


@functools.lru_cache(maxsize=1)
def _fixture_backbone_state() -> dict[str, torch.Tensor]:
    ckpt = load_original_checkpoint(FIXTURE / "model_final.pkl")
    return {k.removeprefix("backbone."): v for k, v in ckpt.state_dict.items() if k.startswith("backbone.")}


def _fixture_model() -> SwinBackbone:
    state = dict(_fixture_backbone_state())
    model = SwinBackbone(**TINY, depths=(2, 2, 6, 2), window_size=7).eval()
    derived = model.derived_buffers()
    stored = {k: state.pop(k) for k in list(state) if k.endswith("attn.relative_position_index")}
    assert set(stored) == set(derived) and len(stored) == 12
    for key, value in stored.items():
        assert torch.equal(value, derived[key]), key
    model.load_state_dict(state, strict=True)
    return model


def test_oracle_parity_a2():
    model = _fixture_model()
    batch = torch.from_numpy(np.load(FIXTURE / "inputs.npz")["normalized_padded_batch"])
    expected = np.load(FIXTURE / "intermediates.npz")
    with torch.no_grad():
        out = model(batch)
    assert list(out) == ["res2", "res3", "res4", "res5"]
    for name, feat in out.items():
        ref = torch.from_numpy(expected[f"backbone_{name}"])
        assert feat.shape == ref.shape and feat.is_contiguous()
        diff = (feat - ref).abs().max().item()
        print(f"{name}: max abs diff {diff:.2e}")
        assert diff <= 1e-4, (name, diff)


def test_state_dict_names_equal_original():
    state = _fixture_backbone_state()
    original = {k: tuple(v.shape) for k, v in state.items() if not k.endswith("relative_position_index")}
    model = SwinBackbone(**TINY)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == original
    # the derived index is a buffer of the module but not part of the state dict
    assert "layers.0.blocks.0.attn.relative_position_index" in dict(model.named_buffers())
    with_ape = SwinBackbone(**TINY, ape=True, pretrain_img_size=224).state_dict()
    assert set(with_ape) - set(ours) == {"absolute_pos_embed"}
    assert with_ape["absolute_pos_embed"].shape == (1, 16, 56, 56)


def test_defaults_accept_config_keys():
    model = SwinBackbone(**SWIN_DEFAULTS)
    assert model.out_channels == {"res2": 96, "res3": 192, "res4": 384, "res5": 768}
    assert model.out_strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


@pytest.mark.parametrize("window", [7, 12])
def test_relative_position_index_brute_force(window):
    idx = relative_position_index(window)
    n = window * window
    expected = torch.empty(n, n, dtype=torch.long)
    for i in range(n):
        for j in range(n):
            dy, dx = i // window - j // window, i % window - j % window
            expected[i, j] = (dy + window - 1) * (2 * window - 1) + dx + window - 1
    assert idx.dtype == torch.long and torch.equal(idx, expected)


# ---------------------------------------------------------------- naive reference of the original semantics


def _naive_shift_mask(hp: int, wp: int, ws: int, shift: int) -> torch.Tensor:
    """Region labels written slice by slice, then one (N, N) mask per window (row-major windows)."""
    labels = torch.zeros(hp, wp)
    cuts_h = ((0, hp - ws), (hp - ws, hp - shift), (hp - shift, hp))
    cuts_w = ((0, wp - ws), (wp - ws, wp - shift), (wp - shift, wp))
    count = 0
    for h0, h1 in cuts_h:
        for w0, w1 in cuts_w:
            labels[h0:h1, w0:w1] = count
            count += 1
    masks = []
    for r in range(hp // ws):
        for c in range(wp // ws):
            lab = labels[r * ws : (r + 1) * ws, c * ws : (c + 1) * ws].reshape(-1)
            masks.append(torch.where(lab[None, :] != lab[:, None], -100.0, 0.0))
    return torch.stack(masks)


def _naive_block(blk, x: torch.Tensor, ws: int, shift: int) -> torch.Tensor:
    b, h, w, c = x.shape
    attn = blk.attn
    heads = attn.num_heads
    y = blk.norm1(x)
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    y = torch.cat([y, y.new_zeros(b, hp - h, w, c)], 1)
    y = torch.cat([y, y.new_zeros(b, hp, wp - w, c)], 2)
    if shift:
        y = torch.roll(y, (-shift, -shift), (1, 2))
        masks = _naive_shift_mask(hp, wp, ws, shift)
    idx = relative_position_index(ws)
    bias = attn.relative_position_bias_table[idx.reshape(-1)].reshape(ws * ws, ws * ws, heads)
    out = torch.zeros_like(y)
    win = 0
    for r in range(hp // ws):
        for cc in range(wp // ws):
            tokens = y[:, r * ws : (r + 1) * ws, cc * ws : (cc + 1) * ws].reshape(b, ws * ws, c)
            q, k, v = attn.qkv(tokens).chunk(3, dim=-1)
            head_outs = []
            for hd in range(heads):
                sl = slice(hd * c // heads, (hd + 1) * c // heads)
                logits = (q[..., sl] * attn.scale) @ k[..., sl].transpose(1, 2) + bias[:, :, hd]
                if shift:
                    logits = logits + masks[win]
                head_outs.append(torch.softmax(logits, -1) @ v[..., sl])
            res = attn.proj(torch.cat(head_outs, -1))
            out[:, r * ws : (r + 1) * ws, cc * ws : (cc + 1) * ws] = res.reshape(b, ws, ws, c)
            win += 1
    if shift:
        out = torch.roll(out, (shift, shift), (1, 2))
    x = x + out[:, :h, :w]
    return x + blk.mlp(blk.norm2(x))


def _naive_forward(model: SwinBackbone, pixels: torch.Tensor, ws: int) -> dict[str, torch.Tensor]:
    p = model.patch_embed.patch_size
    h, w = pixels.shape[-2:]
    pixels = F.pad(pixels, (0, (p - w % p) % p, 0, (p - h % p) % p))
    x = model.patch_embed.norm(model.patch_embed.proj(pixels).permute(0, 2, 3, 1))
    feats = {}
    for i, stage in enumerate(model.layers):
        for j, blk in enumerate(stage.blocks):
            x = _naive_block(blk, x, ws, ws // 2 if j % 2 else 0)
        feats[f"res{i + 2}"] = getattr(model, f"norm{i}")(x).permute(0, 3, 1, 2)
        if stage.downsample is not None:
            hh, ww = x.shape[1:3]
            x = F.pad(x, (0, 0, 0, ww % 2, 0, hh % 2))
            x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
            x = stage.downsample.reduction(stage.downsample.norm(x))
    return feats


def _random_model(**kwargs) -> SwinBackbone:
    torch.manual_seed(0)
    model = SwinBackbone(**{**TINY, **kwargs}).eval()
    with torch.no_grad():  # move LayerNorms/biases away from their trivial init
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


@pytest.mark.parametrize(
    ("window", "size", "depths"),
    [(7, (70, 101), (2, 2, 6, 2)), (12, (70, 101), (2, 2, 2, 2)), (12, (150, 40), (1, 2, 1, 2))],
)
def test_odd_sizes_match_naive_reference(window, size, depths):
    model = (
        _fixture_model()
        if (window, depths) == (7, (2, 2, 6, 2))
        else _random_model(window_size=window, depths=depths)
    )
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = model(pixels)
        ref = _naive_forward(model, pixels, window)
    h, w = -(-size[0] // 4), -(-size[1] // 4)
    for i, name in enumerate(("res2", "res3", "res4", "res5")):
        assert out[name].shape == (2, 16 * 2**i, h, w), name
        diff = (out[name] - ref[name]).abs().max().item()
        assert diff <= 1e-5, (name, diff)
        h, w = (h + 1) // 2, (w + 1) // 2


def test_absolute_position_embedding_is_interpolated():
    model = _random_model(ape=True, pretrain_img_size=64)
    pixels = torch.randn(1, 3, 40, 72)
    with torch.no_grad():
        out = model(pixels)["res2"]
        model.absolute_pos_embed.zero_()
        without = model(pixels)["res2"]
    assert out.shape == (1, 16, 10, 18)
    assert (out - without).abs().max() > 1e-3  # the embedding (16x16 grid) reached the 10x18 map


def test_shift_mask_values_and_cache():
    for hp, wp, ws in ((14, 21, 7), (7, 7, 7), (24, 36, 12)):
        mask = shift_attention_mask(hp, wp, ws, ws // 2, torch.device("cpu"))
        assert torch.equal(mask, _naive_shift_mask(hp, wp, ws, ws // 2))
    model = _random_model()
    stage = model.layers[0]
    first = stage.shift_mask(18, 26, torch.device("cpu"))
    assert first.shape == (12, 49, 49)
    assert stage.shift_mask(17, 28, torch.device("cpu")) is first  # same padded size (21, 28) -> cached
    assert stage.shift_mask(22, 26, torch.device("cpu")).shape == (16, 49, 49)


def test_mask_cached_in_inference_mode_serves_training():
    model = _random_model(depths=(2, 2, 2, 2))
    pixels = torch.randn(1, 3, 40, 40)
    with torch.inference_mode():
        model(pixels)
    model.train()
    sum(o.sum() for o in model(pixels).values()).backward()
    assert model.layers[0].blocks[1].attn.qkv.weight.grad.abs().sum() > 0


def test_derived_buffers_rebuilt_after_meta_init():
    with torch.device("meta"):
        model = SwinBackbone(**TINY, window_size=12)
    model.to_empty(device="cpu")
    model.reset_derived_buffers()
    for value in model.derived_buffers().values():
        assert torch.equal(value, relative_position_index(12))


def test_gradient_checkpointing_same_output_and_grads():
    model = _random_model(depths=(2, 2, 2, 2)).train()  # drop path 0.3 active, its draws are replayed
    pixels = torch.randn(2, 3, 45, 70)
    calls = []
    # on a submodule: a GradientCheckpointingLayer recomputes its forward, not its __call__ (hooks)
    hook = model.layers[0].blocks[0].norm1.register_forward_pre_hook(lambda *_: calls.append(1))

    def run(checkpointing: bool):
        model.gradient_checkpointing = checkpointing
        model.zero_grad()
        calls.clear()
        torch.manual_seed(5)
        out = model(pixels)
        loss = sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in out.values())
        loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters()}, len(calls)

    out_a, grads_a, calls_a = run(False)
    out_b, grads_b, calls_b = run(True)
    hook.remove()
    assert (calls_a, calls_b) == (1, 2)  # the checkpointed block was entered again in backward
    for name in out_a:
        assert torch.allclose(out_a[name], out_b[name], atol=1e-6, rtol=0), name
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-5), name


def test_drop_path_only_in_training():
    model = _random_model(depths=(2, 2, 2, 2), drop_path_rate=0.5)
    pixels = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        a, b = model(pixels), model(pixels)
        assert all(torch.equal(a[k], b[k]) for k in a)
        model.train()
        torch.manual_seed(0)
        c = model(pixels)
    assert any(not torch.allclose(a[k], c[k]) for k in a)


def test_bad_input_and_config_errors():
    model = _random_model()
    with pytest.raises(ValueError, match="shape"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="shape"):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(TypeError):
        model(np.zeros((1, 3, 32, 32), dtype=np.float32))
    with pytest.raises(ValueError, match="divisible"):
        SwinBackbone(embed_dim=16, num_heads=(3, 6, 12, 24))
    with pytest.raises(ValueError, match="4 stages"):
        SwinBackbone(depths=(2, 2, 6), num_heads=(3, 6, 12))
