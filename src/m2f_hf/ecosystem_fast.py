"""Opt-in CPU fast modes: bf16 autocast, int8 dynamic quantisation of the Linear layers, torch.compile.

`optimize_for_cpu(model, mode)` returns a model whose forward gives the same outputs (same keys, float32
logits) at a measured, small accuracy cost; nothing changes unless a user asks for it. See
docs/performance.md for the speed and accuracy of each mode.

- ``"bf16"``: the forward runs under `torch.autocast("cpu", torch.bfloat16)` (oneDNN bf16 matrix products
  on CPUs with AVX512-BF16/AMX), except the pixel decoder, which runs in float32 with autocast off, as the
  original runs it under mixed precision (its deformable sampling and multi-scale sums are the
  numerically sensitive part). Class and mask logits are returned in float32.
- ``"int8"``: `torch.ao.quantization.quantize_dynamic` on every `nn.Linear` (int8 weights, activations
  quantised per batch at run time; convolutions and attention products stay float32). Returns a copy.
- ``"compile"``: `torch.compile(model)` (the first call compiles, which takes tens of seconds on a CPU).
"""

from __future__ import annotations

import copy
import functools
import warnings

import torch
from torch import nn

__all__ = ["CPU_MODES", "optimize_for_cpu"]

CPU_MODES = ("fp32", "bf16", "int8", "compile")


def _float32_outputs(output):
    for name in ("class_queries_logits", "masks_queries_logits"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float32:
            setattr(output, name, value.float())
    return output


def _bf16_forward(forward, *args, **kwargs):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return _float32_outputs(forward(*args, **kwargs))


def _to_float32(value):
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return type(value)((key, _to_float32(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float32(item) for item in value)
    return value


def _float32_forward(forward, *args, **kwargs):
    with torch.autocast("cpu", enabled=False):
        return forward(*_to_float32(args), **_to_float32(kwargs))


def _pixel_decoder(model: nn.Module) -> nn.Module | None:
    for name, module in model.named_modules():
        if name.endswith("pixel_decoder"):
            return module
    return None


def optimize_for_cpu(model: nn.Module, mode: str = "bf16", **compile_kwargs) -> nn.Module:
    """A CPU fast mode of `model` (see the module doc): "bf16" (a copy with its forward wrapped), "int8"
    (a quantised copy), "compile" (a compiled wrapper sharing the parameters) or "fp32" (the model itself).
    `model` itself is left as it was (apart from `.eval()`). `compile_kwargs` go to `torch.compile`."""
    if mode not in CPU_MODES:
        raise ValueError(f"unknown CPU mode {mode!r}; expected one of {', '.join(CPU_MODES)}")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("optimize_for_cpu needs a model on the CPU")
    model.eval()
    if mode == "fp32":
        return model
    if mode == "bf16":
        model = copy.deepcopy(model)
        decoder = _pixel_decoder(model)
        if decoder is not None:
            decoder.forward = functools.partial(_float32_forward, decoder.forward)
        model.forward = functools.partial(_bf16_forward, model.forward)
        return model
    if mode == "int8":
        quantize = torch.ao.quantization.quantize_dynamic
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao.quantization's migration notice
            return quantize(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    return torch.compile(model, **compile_kwargs)
