"""Safe reading of original Mask2Former checkpoints (`.pkl`, `.pth`, `.safetensors`).

The released model-zoo files are Python pickles. A pickle can name any importable callable, so
loading an untrusted one with `pickle.load` can run arbitrary code. Here the unpickler resolves only
the handful of numpy/collections globals that plain array containers need and refuses everything
else; `.pth` files go through `torch.load(weights_only=True)`, which enforces the same idea.
"""

from __future__ import annotations

import codecs
import collections
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm


def _numpy_multiarray():
    """numpy >= 2 moved `numpy.core` to `numpy._core`; old pickles still name the former."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    return multiarray


def _numpy_frombuffer():
    try:
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy 1.x
        from numpy.core.numeric import _frombuffer
    return _frombuffer


def _allowed_globals() -> dict[tuple[str, str], Any]:
    multiarray = _numpy_multiarray()
    frombuffer = _numpy_frombuffer()
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # protocol-2 pickles written by Python 3 encode `bytes` through this pure function
        ("_codecs", "encode"): codecs.encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):  # protocol-5 array buffers
        allowed[(module, "_frombuffer")] = frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and (ordered) dicts and nothing else."""

    def __init__(self, file, *, source: str, **kwargs):
        super().__init__(file, **kwargs)
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"refusing to load {self._source}: it references the global {module}.{name}, which is "
                "not one of the numpy/collections constructors a weight file needs (loading it with "
                "plain pickle could execute code)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(
            f"refusing to load {self._source}: it uses pickle persistent ids ({pid!r})"
        )


class UnsafeCheckpointError(ValueError):
    """The checkpoint asks the unpickler for something other than plain arrays and containers."""


@dataclass
class OriginalCheckpoint:
    """Tensors of an original checkpoint plus what the container said about them."""

    path: Path
    format: str  # "pkl", "pth" or "safetensors"
    state_dict: dict[str, torch.Tensor]
    # module prefix -> state-dict version, from the OrderedDict `_metadata` torch attaches
    versions: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # "__author__", "matching_heuristics", ...


def _versions_from(state: Any) -> dict[str, int]:
    metadata = getattr(state, "_metadata", None)
    if not isinstance(metadata, Mapping):
        return {}
    versions = {}
    for prefix, info in metadata.items():
        if isinstance(info, Mapping) and isinstance(info.get("version"), int):
            versions[str(prefix)] = info["version"]
    return versions


def _to_tensor(key: str, value: Any, path: Path) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, expected an array")
    if value.dtype == object or not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_):
        raise ValueError(f"{path}: entry {key!r} has unsupported dtype {value.dtype}")
    return torch.from_numpy(np.ascontiguousarray(value))


def _state_from_container(
    data: Any, path: Path, allow_bare: bool
) -> tuple[Mapping[str, Any], dict[str, Any]]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a dict with a 'model' entry, got a {type(data).__name__}")
    if "model" in data:
        state = data["model"]
        if not isinstance(state, Mapping):
            raise ValueError(f"{path}: 'model' is a {type(state).__name__}, expected a dict of arrays")
        extra = {k: v for k, v in data.items() if k != "model" and isinstance(k, str)}
        return state, extra
    if allow_bare and data and all(isinstance(v, (torch.Tensor, np.ndarray)) for v in data.values()):
        return data, {}
    raise ValueError(
        f"{path}: no 'model' entry (top-level keys: {sorted(map(str, data))[:10]}); "
        "not a detectron2/Mask2Former checkpoint"
    )


def _unreadable(path: Path, kind: str, exc: Exception) -> ValueError:
    """The error for a checkpoint file that exists but cannot be decoded (damaged or cut short)."""
    return ValueError(f"could not read {path}: truncated or corrupt {kind} ({type(exc).__name__}: {exc})")


def _load_pkl(path: Path) -> tuple[Any, str]:
    try:
        with path.open("rb") as f:
            data = RestrictedUnpickler(f, source=str(path), encoding="latin1").load()
    except UnsafeCheckpointError:
        raise
    except Exception as exc:  # EOFError, UnpicklingError, ValueError ... from a damaged file
        raise _unreadable(path, "pickle", exc) from exc
    return data, "pkl"


def _load_pth(path: Path) -> tuple[Any, str]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: torch.load(weights_only=True) rejected it: {exc}"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise _unreadable(path, "torch file", exc) from exc
    return data, "pth"


def _load_safetensors(path: Path) -> tuple[Any, str]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path)), "safetensors"
    except (SafetensorError, OSError, ValueError) as exc:
        raise _unreadable(path, "safetensors file", exc) from exc


def load_original_checkpoint(path: str | Path) -> OriginalCheckpoint:
    """Read an original checkpoint without executing code from it.

    `.pkl`: detectron2 zoo pickle `{"model": {name: ndarray}, "__author__": ...}` (latin1, like
    detectron2). `.pth`/`.pt`: torch file with `{"model": state_dict}` or a bare state dict.
    `.safetensors`: a flat state dict. Anything else or a damaged file raises `ValueError`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".pkl":
        data, fmt = _load_pkl(path)
    elif suffix in (".pth", ".pt", ".bin"):
        data, fmt = _load_pth(path)
    elif suffix == ".safetensors":
        data, fmt = _load_safetensors(path)
    else:
        raise ValueError(
            f"{path}: unknown checkpoint extension {suffix!r} (expected .pkl, .pth or .safetensors)"
        )

    state, extra = _state_from_container(data, path, allow_bare=fmt != "pkl")
    versions = _versions_from(state)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in tqdm(state.items(), desc=f"reading {path.name}", unit="tensor", leave=False):
        if not isinstance(key, str):
            raise ValueError(f"{path}: state-dict key {key!r} is not a string")
        tensors[key] = _to_tensor(key, value, path)
    if not tensors:
        raise ValueError(f"{path}: the checkpoint holds no tensors")
    return OriginalCheckpoint(path=path, format=fmt, state_dict=tensors, versions=versions, extra=extra)


__all__ = ["OriginalCheckpoint", "RestrictedUnpickler", "UnsafeCheckpointError", "load_original_checkpoint"]
