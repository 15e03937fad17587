"""Hub-ready model folders: weights, configs, the package's code for `trust_remote_code`, and a model card.

`save_for_hub(model, processor, folder)` writes a folder that loads three ways:

* with `m2f_hf` installed: `import m2f_hf` then the Auto classes / `pipeline("image-segmentation")`;
* without it: the same calls with `trust_remote_code=True` (the folder carries the code);
* `m2f-hf predict --model folder` on the command line.

The remote code is `ecosystem_remote_code.py`, the README `ecosystem_model_card.py`; both are re-exported
here.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from .configuration_m2f import Mask2FormerConfig
from .ecosystem_model_card import build_model_card
from .ecosystem_remote_code import (
    AUTO_MAP,
    ENTRY_MODULE,
    PROCESSOR_AUTO_MAP,
    REMOTE_ROOTS,
    external_requirements,
    remote_code_modules,
    write_remote_code,
)

__all__ = [
    "AUTO_MAP",
    "ENTRY_MODULE",
    "PROCESSOR_AUTO_MAP",
    "REMOTE_ROOTS",
    "build_model_card",
    "external_requirements",
    "push_folder_to_hub",
    "push_to_hub",
    "remote_code_modules",
    "save_for_hub",
    "write_remote_code",
]


def _check_pair(model: Any, processor: Any) -> None:
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != Mask2FormerConfig.model_type:
        raise TypeError(f"expected an m2f_hf Mask2Former model, got {type(model).__name__}")
    for method in (
        "post_process_panoptic_segmentation",
        "post_process_semantic_segmentation",
        "save_pretrained",
    ):
        if not callable(getattr(processor, method, None)):
            raise TypeError(f"expected an M2fHfImageProcessor, got {type(processor).__name__} (no {method})")


def save_for_hub(
    model: Any,
    processor: Any,
    folder: str | Path,
    *,
    license: str = "other",
    card: str | None = None,
    repo_id: str | None = None,
    summary: str | None = None,
    remote_code: bool = True,
    push_to_hub: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    commit_message: str = "Upload m2f_hf Mask2Former",
    **card_kwargs: Any,
) -> Path:
    """Write a complete Hub repository folder and optionally upload it.

    Writes model.safetensors + config.json (`model.save_pretrained`), preprocessor_config.json, the
    remote code with `auto_map` (unless `remote_code=False`) and README.md: `card` if given, else
    `build_model_card(model.config, name=repo_id or push_to_hub or the folder name, license=license,
    summary=summary, processor=processor, **card_kwargs)`. `push_to_hub`: a repository id to upload the
    folder to (created if needed). Returns the folder.
    """
    _check_pair(model, processor)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    if remote_code:
        write_remote_code(folder)
    if card is None:
        name = repo_id or push_to_hub or folder.resolve().name
        card = build_model_card(
            model.config,
            name=name,
            license=license,
            summary=summary or "Mask2Former (Cheng et al., CVPR 2022) in the `m2f_hf` format.",
            processor=processor,
            remote_code=remote_code,
            **card_kwargs,
        )
    (folder / "README.md").write_text(card, encoding="utf-8")
    if push_to_hub:
        push_folder_to_hub(folder, push_to_hub, private=private, token=token, commit_message=commit_message)
    return folder


def push_folder_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    commit_message: str = "Upload m2f_hf Mask2Former",
) -> Any:
    """Create `repo_id` if needed and upload every file of `folder` in one commit."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json; write it with save_for_hub first")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    return api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, repo_type="model"
    )


def push_to_hub(model: Any, processor: Any, repo_id: str, **kwargs: Any) -> Any:
    """`save_for_hub` into a temporary folder, then upload it to `repo_id` (the full repository, unlike
    `model.push_to_hub`, which uploads only the weights and config)."""
    with tempfile.TemporaryDirectory() as tmp:
        save_for_hub(model, processor, Path(tmp) / "repo", push_to_hub=repo_id, **kwargs)
