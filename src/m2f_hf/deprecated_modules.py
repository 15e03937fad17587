"""Old module paths of the package (before the layered layout), importable for one release with a warning.

`import m2f_hf.postprocessing` (or `from m2f_hf.postprocessing import x`) still works and returns the module
under its new name (`m2f_hf.processing_postprocess`), with a `DeprecationWarning` naming the new path. The
table below is the whole mapping; `install()` is called once by the package's `__init__`.

Names that moved between modules stay importable from their old module the same way: the old module sets
`__getattr__ = moved_names(__name__, {name: new module})`.

This module uses the standard library only and any layer may import it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["MOVED_MODULES", "install", "moved_names"]

# old module name -> new module name (both inside the m2f_hf package)
MOVED_MODULES: dict[str, str] = {
    "position_encoding": "layers_position",
    "inference_blocks": "layers_blocks",
    "backbone": "modeling_backbone",
    "backbone_resnet": "modeling_resnet",
    "backbone_swin": "modeling_swin",
    "ms_deform_attn": "modeling_deform_attn",
    "ms_deform_attn_triton": "modeling_deform_attn_triton",
    "pixel_decoder": "modeling_pixel_decoder",
    "masked_attention": "modeling_masked_attention",
    "transformer_decoder": "modeling_transformer_decoder",
    "matcher": "modeling_matcher",
    "criterion": "modeling_criterion",
    "point_sampling": "modeling_point_sampling",
    "postprocessing": "processing_postprocess",
    "targets": "processing_targets",
    "training": "training_recipe",
    "augmentation": "training_augmentation",
    "synthetic": "training_synthetic",
    "metrics_semantic": "training_metrics_semantic",
    "metrics_instance": "training_metrics_instance",
    "metrics_panoptic": "training_metrics_panoptic",
    "convert_original": "conversion_original",
    "convert_transformers": "conversion_transformers",
    "checkpoint_io": "conversion_checkpoint_io",
    "original_config": "conversion_settings",
    "label_sets": "conversion_label_sets",
    "hub": "ecosystem_hub",
    "cli": "ecosystem_cli",
    "export": "ecosystem_export",
    "tta": "ecosystem_tta",
    "visualization": "ecosystem_visualization",
    "registration": "ecosystem_registration",
}


class _MovedModuleLoader(importlib.abc.Loader):
    def __init__(self, new_name: str) -> None:
        self.new_name = new_name

    def create_module(self, spec):  # noqa: D401 - importlib protocol
        old = spec.name
        warnings.warn(
            f"`{old}` moved to `{self.new_name}`; the old path will be removed in the next release",
            DeprecationWarning,
            stacklevel=3,
        )
        return importlib.import_module(self.new_name)

    def exec_module(self, module) -> None:  # the module is the already-executed new one
        return None


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    def __init__(self, package: str) -> None:
        self.package = package

    def find_spec(self, fullname, path=None, target=None):
        prefix = self.package + "."
        if not fullname.startswith(prefix):
            return None
        new = MOVED_MODULES.get(fullname[len(prefix) :])
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _MovedModuleLoader(prefix + new))


def install(package: str) -> None:
    """Make the old module paths of `package` importable (idempotent)."""
    if not any(isinstance(f, _MovedModuleFinder) and f.package == package for f in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder(package))


def moved_names(module: str, moved: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` for the names that left `module`: `moved` maps an old name to its new
    module in the same package, as "module" (same name) or "module:new_name". The new module is imported
    on first use, with a DeprecationWarning naming the new path."""
    package = module.rpartition(".")[0]

    def __getattr__(name: str) -> Any:
        target = moved.get(name)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new_module, _, new_name = target.partition(":")
        new_name = new_name or name
        warnings.warn(
            f"`{module}.{name}` moved to `{package}.{new_module}.{new_name}`; the old path will be removed "
            "in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(f"{package}.{new_module}"), new_name)

    return __getattr__
