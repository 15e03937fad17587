"""Converted checkpoints written as Hub folders: the conversion layer's model and settings, saved with
`ecosystem_hub.save_for_hub` (weights, configs, remote code) and a model card with the source's provenance.

* `convert_checkpoint`: an original detectron2 checkpoint (`conversion_original.import_original_checkpoint`);
* `convert_transformers_checkpoint`: a transformers Mask2Former checkpoint
  (`conversion_transformers.import_transformers_checkpoint`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .conversion_checkpoint_io import OriginalCheckpoint
from .conversion_original import ConversionReport, import_original_checkpoint
from .conversion_settings import TORCH_DTYPES, build_processor
from .conversion_transformers import TransformersImport, import_transformers_checkpoint
from .ecosystem_hub import save_for_hub
from .ecosystem_model_card import original_conversion_card, transformers_conversion_card

__all__ = ["convert_checkpoint", "convert_transformers_checkpoint", "model_card"]


def model_card(report: ConversionReport, repo_id: str | None, processor: Any = None) -> str:
    """README.md of a folder converted from an original checkpoint (`original_conversion_card`)."""
    return original_conversion_card(report, repo_id, processor)


def convert_checkpoint(
    checkpoint: str | Path | OriginalCheckpoint,
    output_dir: str | Path,
    config_path: str | Path | None = None,
    dataset: str | None = None,
    dtype: str = "float32",
    push_to_hub: str | None = None,
    strict: bool = True,
    progress: bool = True,
) -> ConversionReport:
    """Convert one original checkpoint into `output_dir` (config, weights, processor, model card).

    strict: unused original keys or missing model keys are an error (otherwise listed in the report).
    """
    report = import_original_checkpoint(checkpoint, output_dir, config_path, dataset, dtype, strict, progress)
    report.output_dir.mkdir(parents=True, exist_ok=True)
    processor = build_processor(report.settings)
    save_for_hub(
        report.model,
        processor,
        report.output_dir,
        card=original_conversion_card(report, push_to_hub, processor),
        push_to_hub=push_to_hub,
    )
    return report


def convert_transformers_checkpoint(
    path_or_folder: str | Path,
    output_dir: str | Path,
    dataset: str | None = None,
    dtype: str = "float32",
    push_to_hub: str | None = None,
    native_swin: bool | None = None,
    **hub_kwargs: Any,
) -> TransformersImport:
    """Write an m2f_hf folder (config, weights, image processor, README) for a transformers checkpoint."""
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {sorted(TORCH_DTYPES)}")
    imported = import_transformers_checkpoint(path_or_folder, dataset, dtype, native_swin, **hub_kwargs)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    processor = build_processor(imported.settings)
    save_for_hub(
        imported.model,
        processor,
        output_dir,
        card=transformers_conversion_card(imported, push_to_hub or str(output_dir), processor),
        push_to_hub=push_to_hub,
    )
    return imported
