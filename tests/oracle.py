"""Access to the original implementation's reference outputs (kept importable under this name; the helpers
live in conftest.py)."""

from conftest import FIXTURES, NAMES, converted, meta  # noqa: F401
