"""The package layout: old module paths still import (with a DeprecationWarning) as the new modules."""

import importlib
import warnings

import pytest

import m2f_hf
from m2f_hf.deprecated_modules import MOVED_MODULES


@pytest.mark.parametrize("old,new", sorted(MOVED_MODULES.items()))
def test_old_module_path_warns_and_is_the_new_module(old, new):
    assert m2f_hf  # the package installs the finder
    new_module = importlib.import_module(f"m2f_hf.{new}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import sys

        sys.modules.pop(f"m2f_hf.{old}", None)
        old_module = importlib.import_module(f"m2f_hf.{old}")
    assert old_module is new_module
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)
