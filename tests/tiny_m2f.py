"""Tiny random m2f_hf models (kept importable under this name; they live in conftest.py)."""

from conftest import (  # noqa: F401
    FIXTURES,
    HEAD,
    LABELS,
    PHOTO,
    PHOTO2,
    PROCESSOR,
    TASK_FLAGS,
    THINGS,
    save_tiny,
    tiny_model,
)
