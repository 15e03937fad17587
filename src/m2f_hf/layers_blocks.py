"""Bounded-memory evaluation at inference: row-wise work split into Python-level blocks.

Why: a layer applied to a whole high-resolution feature map creates fresh temporaries of tens to hundreds
of MB (an MLP's 4x-wide hidden layer, a window attention's q/k/v). Allocations that large are mapped
fresh from the OS on every call and paid for in page faults; blocks of a few MB are recycled by the
allocator and stay in cache. Blocking is used only on the CPU, and only where it is invisible: nothing
needs gradients and no compiler or tracer is watching (a loop whose trip count depends on the input size
would specialise it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .layers_config import get as runtime_setting

# The budget, elements of the widest per-block temporary, is the `block_elements` setting (layers_config).
# Calls of blocked paths, by name: tests read it to prove a path was taken.
BLOCKED_CALLS: dict[str, int] = {}


def count_blocked(name: str) -> None:
    """Record that the blocked path `name` ran (one dict update per call; tests read BLOCKED_CALLS)."""
    BLOCKED_CALLS[name] = BLOCKED_CALLS.get(name, 0) + 1


def tracing() -> bool:
    """Whether torch.compile/export or the JIT tracer is recording this call."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def blockwise_inference(*tensors: torch.Tensor) -> bool:
    """True when work may be split into Python-level blocks: the tensors are on the CPU (where the page
    faults are; on a GPU the caching allocator reuses memory and the blocks would only add kernel launches),
    nothing needs gradients, and no compiler or tracer is watching."""
    # non-tensors are skipped: a dynamically quantised Linear's `weight` is a method, not a tensor
    tensors = tuple(t for t in tensors if isinstance(t, torch.Tensor))
    return all(t.device.type == "cpu" for t in tensors) and not tracing() and not needs_grad(*tensors)


def rows_per_block(row_elements: int, budget: int | None = None) -> int:
    """Rows whose widest temporary (`row_elements` per row) fits in `budget` (default: the
    `block_elements` setting) elements; at least 1."""
    return max(1, (runtime_setting("block_elements") if budget is None else budget) // max(1, row_elements))


def add_blockwise_(
    out: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, rows: int
) -> torch.Tensor:
    """out[i:j] += fn(x[i:j]) over blocks of `rows` leading-dimension rows; returns `out`.

    `out` may be `x` itself: each block is read in full by `fn` before its rows are updated."""
    for start in range(0, x.shape[0], rows):
        out[start : start + rows] += fn(x[start : start + rows])
    return out
