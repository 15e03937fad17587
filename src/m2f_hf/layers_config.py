"""Runtime settings: every kernel choice and block budget of the package, in one place.

The environment is read once, when this module is imported; after that the settings change only through
`set_settings` (process-wide) or the `settings` context manager (restores the previous values on exit,
the form tests use). Every other module reads the current values with `get(name)` at call time, so a
change takes effect on the next call.

Settings (environment variable in brackets, where there is one):

- ``deformable_kernel`` [M2F_HF_DEFORMABLE_KERNEL]: ``"auto"`` (default), ``"triton"`` or ``"pytorch"``.
  ``auto`` uses the Triton kernels on CUDA only after a first-call self-check against the PyTorch gather
  on a small input (per device and dtype) passed; on a disagreement it warns and stays on PyTorch.
  ``triton`` always uses them (on CPU only under Triton's interpreter), ``pytorch`` never.
- ``triton_interpret`` [TRITON_INTERPRET]: whether Triton's CPU interpreter is on (then ``triton`` may
  run on CPU tensors).
- ``sparse_backward`` [M2F_HF_SPARSE_BACKWARD, 1/0]: the CPU backward of the deformable gather through
  torch.sparse kernels (off: the blocked `index_add_` loops).
- ``block_elements``: elements of the widest per-block temporary of blocked CPU inference (Swin window
  attention and MLP, pixel-decoder FFN).
- ``deform_inference_block``: gather entries per block of the CPU deformable-sampling inference.
- ``deform_backward_block``: elements of the scratch buffer of the blocked deformable backward.
- ``triton_block_q``: queries per Triton program.
- ``postprocess_class_chunk``, ``postprocess_pixel_block``, ``postprocess_semantic_block``,
  ``postprocess_query_block``: chunk sizes of the post-processing rules (classes, pixels, pixels, mask
  elements at once).
- ``postprocess_semantic_tile_rows``, ``postprocess_semantic_tile_cols``: output rows and columns per tile
  of the semantic rule's exact pass (only tiles holding pixels that the class bounds leave open are
  upsampled).
- ``swin_mask_cache_size``: shifted-window attention masks kept per Swin stage.

Blocks only bound memory: results do not depend on any block size (tests shrink them to prove it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

KERNEL_ENV = "M2F_HF_DEFORMABLE_KERNEL"
SPARSE_BACKWARD_ENV = "M2F_HF_SPARSE_BACKWARD"
INTERPRET_ENV = "TRITON_INTERPRET"
KERNEL_CHOICES = ("auto", "triton", "pytorch")

DEFAULTS: dict[str, Any] = {
    "deformable_kernel": "auto",
    "triton_interpret": False,
    "sparse_backward": True,
    "block_elements": 1 << 20,  # 4 MB in float32
    "deform_inference_block": 1 << 20,  # ~4 MB of int32 indices
    "deform_backward_block": 1 << 20,
    "triton_block_q": 64,
    "postprocess_class_chunk": 32,
    "postprocess_pixel_block": 65536,
    "postprocess_semantic_block": 65536,
    "postprocess_query_block": 1 << 22,
    "postprocess_semantic_tile_rows": 32,
    "postprocess_semantic_tile_cols": 128,
    "swin_mask_cache_size": 16,
}

_FLAGS = ("triton_interpret", "sparse_backward")


def _flag(text: str, name: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{name}={text!r}: expected 1/0, true/false, yes/no or on/off")


def _check(name: str, value: Any) -> Any:
    if name not in DEFAULTS:
        raise KeyError(f"unknown m2f_hf setting {name!r}; known: {', '.join(DEFAULTS)}")
    if name == "deformable_kernel":
        value = (str(value).strip().lower() or "auto") if value is not None else "auto"
        if value not in KERNEL_CHOICES:
            raise ValueError(f"deformable_kernel={value!r}: expected one of {', '.join(KERNEL_CHOICES)}")
        return value
    if name in _FLAGS:
        return bool(value)
    value = int(value)
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


def from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings that `environ` overrides (the module applies this to `os.environ` once, at import)."""
    found: dict[str, Any] = {}
    if KERNEL_ENV in environ:
        choice = environ[KERNEL_ENV].strip().lower() or "auto"
        if choice not in KERNEL_CHOICES:
            raise ValueError(f"{KERNEL_ENV}={choice!r}: expected one of {', '.join(KERNEL_CHOICES)}")
        found["deformable_kernel"] = choice
    if INTERPRET_ENV in environ:
        found["triton_interpret"] = _flag(environ[INTERPRET_ENV], INTERPRET_ENV)
    if SPARSE_BACKWARD_ENV in environ:
        found["sparse_backward"] = _flag(environ[SPARSE_BACKWARD_ENV], SPARSE_BACKWARD_ENV)
    return found


_current: dict[str, Any] = {**DEFAULTS, **from_environment(os.environ)}
_listeners: list = []


def get(name: str) -> Any:
    """The current value of setting `name`."""
    try:
        return _current[name]
    except KeyError:
        raise KeyError(f"unknown m2f_hf setting {name!r}; known: {', '.join(DEFAULTS)}") from None


def current() -> dict[str, Any]:
    """A copy of all current settings."""
    return dict(_current)


def set_settings(**values: Any) -> dict[str, Any]:
    """Change settings process-wide; returns the previous values of the changed ones."""
    checked = {name: _check(name, value) for name, value in values.items()}
    previous = {name: _current[name] for name in checked}
    _current.update(checked)
    if "deformable_kernel" in checked or "triton_interpret" in checked:
        for listener in _listeners:
            listener()
    return previous


def reset() -> None:
    """Back to the defaults plus what the environment set at import."""
    set_settings(**{**DEFAULTS, **from_environment_at_import})


@contextmanager
def settings(**values: Any) -> Iterator[dict[str, Any]]:
    """Change settings inside a `with` block (restored on exit, also on errors); yields the new values."""
    previous = set_settings(**values)
    try:
        yield {name: _current[name] for name in values}
    finally:
        set_settings(**previous)


def on_kernel_change(listener) -> None:
    """Register a callable run whenever the kernel choice changes (the Triton self-check cache uses it)."""
    _listeners.append(listener)


# kept for `reset`: the environment is not read again
from_environment_at_import: dict[str, Any] = {
    name: value for name, value in _current.items() if value != DEFAULTS[name]
}


def set_deformable_kernel(choice: str) -> None:
    set_settings(deformable_kernel=choice)


def deformable_kernel() -> str:
    return _current["deformable_kernel"]


def set_sparse_backward(enabled: bool) -> None:
    set_settings(sparse_backward=enabled)


def sparse_backward() -> bool:
    return _current["sparse_backward"]
