"""The Swin Transformer backbone of the original Mask2Former (`D2SwinTransformer`): same numbers, same keys.

Kept from the original because outputs and checkpoints depend on it: the input is zero-padded to a multiple
of the patch size; every block zero-pads (after `norm1`) to a multiple of the window size and lets the padded
tokens take part in attention; odd blocks always use shifted windows (even on maps no larger than one window)
with a -100 additive mask; patch merging zero-pads odd sizes; each stage output has its own LayerNorm
(`norm0`..`norm3`). Maps stay channels-last `(B, H, W, C)` between blocks, and attention runs through
`F.scaled_dot_product_attention` with the relative-position bias and the shift mask folded into one
additive float mask.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from .layers_blocks import add_blockwise_, blockwise_inference, count_blocked, rows_per_block
from .layers_config import get as runtime_setting
from .modeling_layers import CheckpointedLayer, CheckpointingSwitch

FEATURE_NAMES = ("res2", "res3", "res4", "res5")
SHIFT_MASK_VALUE = -100.0  # the original's additive value between tokens of different shifted regions


def _is_symbolic(*sizes) -> bool:
    """True when a size is a torch.SymInt (tracing with dynamic shapes) rather than a plain int."""
    return any(not isinstance(s, int) for s in sizes)


def _window_multiple(size, window_size: int):
    """`size` rounded up to a multiple of the window, written as (number of windows) x window so that
    symbolic shapes stay provably divisible by the window under torch.export."""
    return (size + window_size - 1) // window_size * window_size


def relative_position_index(window_size: int) -> torch.Tensor:
    """Index into the `(2w-1)^2` bias table for every (query, key) token pair of a `w x w` window.

    Tokens are numbered row-major inside the window; entry `[i, j]` encodes `pos_i - pos_j`. This is the
    value of the original's `attn.relative_position_index` buffer (int64, `(w*w, w*w)`).
    """
    coords = torch.stack(
        torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ).flatten(1)  # 2, N
    delta = coords[:, :, None] - coords[:, None, :] + (window_size - 1)  # 2, N, N, each in [0, 2w-2]
    return delta[0] * (2 * window_size - 1) + delta[1]


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth as timm's `DropPath`: drop whole samples, rescale the kept ones by 1/keep."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    if keep > 0.0:
        mask.div_(keep)
    return x * mask


class DropPath(nn.Module):
    """Module form of `drop_path` (no parameters, so the state dict is unaffected)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


def windows_from_map(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of the window -> (B, nW, w*w, C), windows and tokens row-major."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, -1, window_size * window_size, c)


def map_from_windows(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of `windows_from_map`: (B, nW, w*w, C) -> (B, H, W, C)."""
    b, _, _, c = windows.shape
    x = windows.view(b, height // window_size, width // window_size, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, height, width, c)


def shift_attention_mask(
    padded_height: int, padded_width: int, window_size: int, shift_size: int, device: torch.device
) -> torch.Tensor:
    """Additive mask (nW, w*w, w*w) of a cyclically shifted padded map: 0 inside a region, -100 across.

    After the shift by `shift_size`, the last `window_size` rows are split at `-shift_size` into two regions
    and everything above forms a third (same for columns); tokens of different regions must not attend.
    """

    ws, n_w = window_size, padded_width // window_size
    num_windows = (padded_height // window_size) * n_w
    # row/column of token t of window k (windows and tokens row-major), computed elementwise on the final
    # (nW, N) layout: no reshuffle of a broadcast map, which torch.export would specialise on the sizes
    window = torch.arange(num_windows, device=device)[:, None]
    token = torch.arange(ws * ws, device=device)[None, :]
    window_row = window // n_w
    rows = window_row * ws + token // ws
    cols = (window - window_row * n_w) * ws + token % ws  # window % n_w, as ONNX takes no symbolic modulus

    def region(pos: torch.Tensor, length) -> torch.Tensor:
        return (pos >= length - window_size).long() + (pos >= length - shift_size).long()

    labels = region(rows, padded_height) * 3 + region(cols, padded_width)  # nW, N
    different = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill_(different, SHIFT_MASK_VALUE)


class SwinMlp(nn.Module):
    """Feed-forward part of a block: fc1 -> GELU -> dropout -> fc2 -> dropout."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative-position bias.

    `relative_position_index` is derived from the window size, so it is a non-persistent buffer; original
    checkpoints carry it and the converter checks it against `relative_position_index(window_size)`.
    """

    def __init__(
        self,
        dim: int,
        window_size: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        head_dim = dim // num_heads
        # `or` as in the original: qk_scale=0 also falls back to 1/sqrt(head_dim)
        self.scale = qk_scale or head_dim**-0.5
        self.attn_drop = float(attn_drop)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer(
            "relative_position_index", relative_position_index(window_size), persistent=False
        )
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    @torch.no_grad()
    def reset_relative_position_index(self) -> None:
        """Refill the derived index in place: transformers' meta-device loading leaves it uninitialised."""
        self.relative_position_index.copy_(relative_position_index(self.window_size))

    def relative_position_bias(self) -> torch.Tensor:
        """(heads, N, N) bias gathered from the table."""
        n = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, windows: torch.Tensor, shift_mask: torch.Tensor | None = None) -> torch.Tensor:
        """windows: (B, nW, N, C); shift_mask: (nW, N, N) additive or None. Returns (B, nW, N, C).

        At inference the windows go a block at a time (`inference_blocks`): q/k/v of a whole
        high-resolution map would be hundreds of MB."""
        b, nw, n, c = windows.shape
        step = rows_per_block(b * n * 3 * c)
        if nw <= step or not blockwise_inference(windows, self.qkv.weight):
            return self._attend(windows, shift_mask)
        count_blocked("swin_window_attention")
        out = torch.empty_like(windows)
        for start in range(0, nw, step):
            part = slice(start, start + step)
            out[:, part] = self._attend(windows[:, part], None if shift_mask is None else shift_mask[part])
        return out

    def _attend(self, windows: torch.Tensor, shift_mask: torch.Tensor | None) -> torch.Tensor:
        b, nw, n, c = windows.shape
        heads, head_dim = self.num_heads, c // self.num_heads
        qkv = self.qkv(windows).view(b, nw, n, 3, heads, head_dim)
        bias = self.relative_position_bias()  # gathered once per call
        if shift_mask is None:
            # one (heads, N, N) bias broadcast over every window of every image
            qkv = qkv.permute(3, 0, 1, 4, 2, 5).reshape(3, b * nw, heads, n, head_dim)
            mask = bias.unsqueeze(0)
        else:
            # windows x heads become the attention "heads" so the per-window mask broadcasts over the batch
            qkv = qkv.permute(3, 0, 1, 4, 2, 5).reshape(3, b, nw * heads, n, head_dim)
            if _is_symbolic(nw):
                # same sums on already-(nW·heads)-shaped operands: reshaping a broadcast sum would make
                # torch.export specialise on whether there is a single window
                mask = (bias.repeat(nw, 1, 1) + shift_mask.repeat_interleave(heads, dim=0)).unsqueeze(0)
            else:
                mask = (bias.unsqueeze(0) + shift_mask.unsqueeze(1)).reshape(1, nw * heads, n, n)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask.to(q.dtype),
            dropout_p=self.attn_drop if self.training else 0.0,
            scale=self.scale,
        )
        out = out.view(b, nw, heads, n, head_dim)
        if _is_symbolic(nw):  # explicit copy: reshaping the transposed view is unresolvable symbolically
            out = torch.transpose_copy(out, 2, 3).reshape(b, nw, n, c)
        else:
            out = out.transpose(2, 3).reshape(b, nw, n, c)
        return self.proj_drop(self.proj(out))


class SwinBlock(CheckpointedLayer):
    """(Shifted-)window attention and MLP, both pre-norm residual with stochastic depth; channels-last."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        drop: float,
        attn_drop: float,
        drop_path: float,
    ):
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size={shift_size} must lie in [0, window_size={window_size})")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = SwinMlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, shift_mask: torch.Tensor | None) -> torch.Tensor:
        """x: (B, H, W, C); shift_mask: the stage's mask for its padded size (used by shifted blocks)."""
        _, h, w, _ = x.shape
        ws, shift = self.window_size, self.shift_size
        y = self.norm1(x)
        hp, wp = _window_multiple(h, ws), _window_multiple(w, ws)
        # symbolic sizes (torch.export) always take the pad/crop path: zero padding is then an identity
        padded = _is_symbolic(h, w) or hp != h or wp != w
        if padded:
            y = F.pad(y, (0, 0, 0, wp - w, 0, hp - h))
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        y = self.attn(windows_from_map(y, ws), shift_mask if shift else None)
        y = map_from_windows(y, ws, hp, wp)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        if _is_symbolic(h, w):
            # a copy, not a view: the view's strides would depend on whether padding happened, which
            # torch.export can only resolve by specialising the traced size
            y = torch.slice_copy(torch.slice_copy(y, 1, 0, h), 2, 0, w)
        elif padded:
            y = y[:, :h, :w, :]
        x = x + self.drop_path(y)
        if self.training or not blockwise_inference(x, self.mlp.fc1.weight):
            return x + self.drop_path(self.mlp(self.norm2(x)))
        # inference: the MLP residual is added in place a block of tokens at a time (`inference_blocks`)
        x = x.contiguous()
        flat = x.view(-1, x.shape[-1])
        rows = rows_per_block(self.mlp.fc1.out_features)
        if rows < flat.shape[0]:
            count_blocked("swin_mlp")
        add_blockwise_(flat, self._mlp_branch, flat, rows)
        return x

    def _mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> one token: concat (zero-padding odd sizes), LayerNorm(4C), Linear(4C -> 2C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
            h, w = h + h % 2, w + w % 2
        # channel order of the original concat: (row 0, col 0), (1, 0), (0, 1), (1, 1), i.e. row index fastest
        x = x.view(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(b, h // 2, w // 2, 4 * c)
        return self.reduction(self.norm(x))


class SwinStage(CheckpointingSwitch, nn.Module):
    """Blocks of one resolution (even: regular windows, odd: shifted) plus the optional patch merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        drop: float,
        attn_drop: float,
        drop_paths: Sequence[float],
        downsample: bool,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                num_heads,
                window_size,
                0 if i % 2 == 0 else self.shift_size,
                mlp_ratio,
                qkv_bias,
                qk_scale,
                drop,
                attn_drop,
                drop_paths[i],
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None
        self._mask_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def shift_mask(self, height: int, width: int, device: torch.device) -> torch.Tensor | None:
        """The -100 mask for this stage's padded size, cached per (Hp, Wp, device)."""
        if self.shift_size == 0 or len(self.blocks) < 2:
            return None
        ws = self.window_size
        hp, wp = _window_multiple(height, ws), _window_multiple(width, ws)
        if _is_symbolic(hp, wp):  # traced for export: build it in the graph, symbolic sizes cannot be keys
            return shift_attention_mask(hp, wp, ws, self.shift_size, device)
        key = (hp, wp, str(device))
        mask = self._mask_cache.get(key)
        if mask is None:
            # a normal tensor even under inference_mode, so a cached mask can serve a later training step
            with torch.inference_mode(False):
                mask = shift_attention_mask(hp, wp, ws, self.shift_size, device)
            self._mask_cache[key] = mask
            if len(self._mask_cache) > runtime_setting("swin_mask_cache_size"):
                self._mask_cache.popitem(last=False)
        else:
            self._mask_cache.move_to_end(key)
        return mask

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, H, W, C). Returns the stage output and the merged map for the next stage (or None).
        Each block is a `GradientCheckpointingLayer`: setting this stage's `gradient_checkpointing` flag
        (or `gradient_checkpointing_enable()` on the model) recomputes them in the backward pass."""
        mask = self.shift_mask(x.shape[1], x.shape[2], x.device)
        for block in self.blocks:
            x = block(x, mask)
        return x, (self.downsample(x) if self.downsample is not None else None)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection (input zero-padded to patch multiples) with optional LayerNorm."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, patch_norm: bool):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if patch_norm else None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C, ceil(H/p), ceil(W/p)), channels-first like the original."""
        h, w = pixel_values.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            pixel_values = F.pad(pixel_values, (0, (-w) % p, 0, (-h) % p))
        x = self.proj(pixel_values)
        if self.norm is not None:
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x


class SwinBackbone(CheckpointingSwitch, nn.Module):
    """Swin Transformer returning res2..res5 channels-first, as the original `D2SwinTransformer`.

    Parameter names equal the original's state dict without its `backbone.` prefix. Set
    `gradient_checkpointing = True` to recompute each block in the backward pass while training, or set it on
    single stages (`layers[i]`).
    """

    def __init__(
        self,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        patch_size: int = 4,
        ape: bool = False,
        patch_norm: bool = True,
        pretrain_img_size: int = 224,
        drop_path_rate: float = 0.3,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        in_chans: int = 3,
    ):
        super().__init__()
        depths, num_heads = [int(d) for d in depths], [int(h) for h in num_heads]
        if len(depths) != len(FEATURE_NAMES) or len(num_heads) != len(FEATURE_NAMES):
            raise ValueError(f"Swin needs 4 stages (res2..res5): got depths={depths}, num_heads={num_heads}")
        if min(depths) < 1:
            raise ValueError(f"every Swin stage needs at least one block, got depths={depths}")
        for name, value in (
            ("embed_dim", embed_dim),
            ("window_size", window_size),
            ("patch_size", patch_size),
        ):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        dims = [int(embed_dim) * 2**i for i in range(len(depths))]
        for i, (dim, heads) in enumerate(zip(dims, num_heads, strict=True)):
            if heads < 1 or dim % heads:
                raise ValueError(f"stage {i}: channels {dim} are not divisible by num_heads={heads}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must lie in [0, 1), got {drop_path_rate}")

        self.ape = bool(ape)
        self.num_features = dims
        self.out_channels = dict(zip(FEATURE_NAMES, dims, strict=True))
        # hard-coded in the original D2 wrapper whatever the patch size; the pixel decoder is built from them
        self.out_strides = dict(zip(FEATURE_NAMES, (4, 8, 16, 32), strict=True))

        self.patch_embed = PatchEmbed(int(patch_size), int(in_chans), int(embed_dim), bool(patch_norm))
        if self.ape:
            grid = int(pretrain_img_size) // int(patch_size)
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, int(embed_dim), grid, grid))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)

        # linearly increasing stochastic depth over all blocks, as float32 linspace values
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # cpu: meta-device init
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList(
            SwinStage(
                dims[i],
                depths[i],
                num_heads[i],
                int(window_size),
                float(mlp_ratio),
                bool(qkv_bias),
                qk_scale,
                float(drop_rate),
                float(attn_drop_rate),
                rates[starts[i] : starts[i] + depths[i]],
                downsample=i < len(depths) - 1,
            )
            for i in range(len(depths))
        )
        for i, dim in enumerate(dims):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))

    def derived_buffers(self) -> dict[str, torch.Tensor]:
        """Non-persistent buffers that original checkpoints store (name -> the value this model derives)."""
        return {
            f"{name}.relative_position_index": module.relative_position_index
            for name, module in self.named_modules()
            if isinstance(module, WindowAttention)
        }

    def reset_derived_buffers(self) -> None:
        """Recompute every non-persistent buffer (call from `_init_weights` after a meta-device load)."""
        for module in self.modules():
            if isinstance(module, WindowAttention):
                module.reset_relative_position_index()

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, in_chans, H, W) -> {"res2": (B, C, ceil(H/4), ..), ..., "res5": (B, 8C, .., ..)}."""
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
        expected_chans = self.patch_embed.proj.in_channels
        if pixel_values.dim() != 4 or pixel_values.shape[1] != expected_chans:
            raise ValueError(
                f"Swin expects pixel_values of shape (B, {expected_chans}, H, W), "
                f"got {tuple(pixel_values.shape)}"
            )
        if pixel_values.shape[-2] < 1 or pixel_values.shape[-1] < 1:
            raise ValueError(f"empty image: pixel_values has shape {tuple(pixel_values.shape)}")
        x = self.patch_embed(pixel_values)
        if self.ape:
            x = x + F.interpolate(self.absolute_pos_embed, size=x.shape[-2:], mode="bicubic")
        x = self.pos_drop(x.permute(0, 2, 3, 1))  # channels-last from here on

        features = {}
        for i, (name, stage) in enumerate(zip(FEATURE_NAMES, self.layers, strict=True)):
            out, x = stage(x)
            features[name] = getattr(self, f"norm{i}")(out).permute(0, 3, 1, 2).contiguous()
        return features


__all__ = ["SwinBackbone", "WindowAttention", "relative_position_index", "shift_attention_mask"]
