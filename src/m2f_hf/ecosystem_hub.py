"""Hub-ready model folders: weights, configs, the package's code for `trust_remote_code`, and a model card.

`save_for_hub(model, processor, folder)` writes a folder that loads three ways:

* with `m2f_hf` installed: `import m2f_hf` then the Auto classes / `pipeline("image-segmentation")`;
* without it: the same calls with `trust_remote_code=True` (the folder carries the code);
* `m2f-hf predict --model folder` on the command line.

Remote code: transformers imports `auto_map` class references as `module.Class` from files in the folder
and copies along only the files named by `from .module import ...` lines (its regex; `from . import x`
is not seen). Every auto_map entry therefore points at one generated entry module, `m2f_hf_remote.py`,
which names each needed package module in that form; one entry module also means every Auto class
resolves to the same copy of the code (separate roots would get separate copies and distinct classes).
The entry module also registers the m2f_hf `image-segmentation` pipeline (see `pipeline_m2f.py`): it is
imported with the config, before `pipeline()` picks its pipeline class.
"""

from __future__ import annotations

import ast
import json
import math
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .configuration_m2f import Mask2FormerConfig
from .pipeline_m2f import SUBTASKS, default_subtask

__all__ = [
    "AUTO_MAP",
    "ENTRY_MODULE",
    "build_model_card",
    "external_requirements",
    "push_folder_to_hub",
    "push_to_hub",
    "remote_code_modules",
    "save_for_hub",
    "write_remote_code",
]

PACKAGE_DIR = Path(__file__).resolve().parent
ENTRY_MODULE = "m2f_hf_remote"
# the package modules the remote code starts from; their relative imports (also lazy ones) are followed
REMOTE_ROOTS = ("configuration_m2f", "modeling_m2f", "image_processing_m2f", "pipeline_m2f")
_CLASSES = {
    "configuration_m2f": ("Mask2FormerConfig",),
    "modeling_m2f": ("Mask2FormerForUniversalSegmentation", "Mask2FormerModel"),
    "image_processing_m2f": ("M2fHfImageProcessor",),
    "pipeline_m2f": ("M2fHfImageSegmentationPipeline", "register_segmentation_pipeline"),
    "modeling_video_m2f": ("Mask2FormerForVideoInstanceSegmentation", "Mask2FormerVideoModel"),
    "processing_video_m2f": ("M2fHfVideoProcessor",),
}
# video models (config "video": true) also carry the video model and processor; AutoModel gives the
# video instance-segmentation model (transformers has no Auto class for that task)
VIDEO_REMOTE_ROOTS = ("modeling_video_m2f", "processing_video_m2f")
# every key an Auto class or the pipeline looks up in config.json / preprocessor_config.json
AUTO_MAP = {
    "AutoConfig": f"{ENTRY_MODULE}.Mask2FormerConfig",
    "AutoModel": f"{ENTRY_MODULE}.Mask2FormerModel",
    "AutoModelForUniversalSegmentation": f"{ENTRY_MODULE}.Mask2FormerForUniversalSegmentation",
    "AutoModelForImageSegmentation": f"{ENTRY_MODULE}.Mask2FormerForUniversalSegmentation",
    "AutoImageProcessor": f"{ENTRY_MODULE}.M2fHfImageProcessor",
}
PROCESSOR_AUTO_MAP = {"AutoImageProcessor": AUTO_MAP["AutoImageProcessor"]}
VIDEO_AUTO_MAP = {
    "AutoConfig": f"{ENTRY_MODULE}.Mask2FormerConfig",
    "AutoModel": f"{ENTRY_MODULE}.Mask2FormerForVideoInstanceSegmentation",
    "AutoImageProcessor": f"{ENTRY_MODULE}.M2fHfVideoProcessor",
}
VIDEO_PROCESSOR_AUTO_MAP = {"AutoImageProcessor": VIDEO_AUTO_MAP["AutoImageProcessor"]}
TASK_TITLES = {
    "panoptic": "Panoptic Segmentation",
    "instance": "Instance Segmentation",
    "semantic": "Semantic Segmentation",
}
# distribution names where they differ from the import name
_DISTRIBUTIONS = {"PIL": "pillow", "yaml": "pyyaml", "huggingface_hub": "huggingface-hub"}


# ----------------------------------------------------------------------------------------------- remote code
def _relative_imports(path: Path) -> set[str]:
    """Package modules a file imports relatively, wherever the import statement is (lazy ones included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level != 1:
                raise ValueError(
                    f"{path.name}: only single-dot relative imports are supported in a flat package"
                )
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def remote_code_modules(package_dir: Path = PACKAGE_DIR, video: bool = False) -> list[str]:
    """Sorted names of the package modules the remote code needs: `REMOTE_ROOTS` (+ `VIDEO_REMOTE_ROOTS`
    for a video model) and everything they import relatively, transitively."""
    needed: set[str] = set()
    todo = list(REMOTE_ROOTS) + (list(VIDEO_REMOTE_ROOTS) if video else [])
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        path = package_dir / f"{name}.py"
        if not path.is_file():
            raise FileNotFoundError(f"module {name!r} needed by the remote code is missing: {path}")
        needed.add(name)
        todo.extend(_relative_imports(path) - needed)
    return sorted(needed)


def external_requirements(modules: Sequence[str], package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Distribution names of the non-standard-library packages the given modules import."""
    top: set[str] = set()
    for name in modules:
        tree = ast.parse((package_dir / f"{name}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                top.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                top.add(node.module.split(".")[0])
    external = top - set(sys.stdlib_module_names) - {"__future__"}
    return sorted(_DISTRIBUTIONS.get(name, name) for name in external)


def _entry_module_source(modules: Sequence[str]) -> str:
    lines = [
        '"""Remote-code entry point of an m2f_hf model folder (made by `m2f_hf.ecosystem_hub.save_for_hub`).',
        "",
        "Every `auto_map` entry points here. The `from .module import ...` lines are what transformers",
        "follows to copy the code next to this file; importing this module (first, with the config) also",
        'registers the m2f_hf "image-segmentation" pipeline, so pipeline() uses the checkpoint\'s task and',
        "thresholds.",
        '"""',
        "",
    ]
    for name in modules:
        if name in _CLASSES:
            lines.append(f"from .{name} import {', '.join(sorted(_CLASSES[name]))}")
        else:
            lines.append(f"from .{name} import __name__ as _{name}  # noqa: F401  (listed for the file copy)")
    lines += ["", "register_segmentation_pipeline()", ""]
    exported = sorted(c for name in modules for c in _CLASSES.get(name, ()))
    lines.append(f"__all__ = {exported!r}")
    return "\n".join(lines) + "\n"


def write_remote_code(folder: str | Path) -> list[str]:
    """Copy the needed package modules into `folder`, write the entry module and add `auto_map` to
    config.json and preprocessor_config.json (which must exist). Returns the file names written."""
    folder = Path(folder)
    for json_name in ("config.json", "preprocessor_config.json"):
        if not (folder / json_name).is_file():
            raise FileNotFoundError(
                f"{folder / json_name} is missing; save the model and the processor first"
            )
    video = bool(json.loads((folder / "config.json").read_text(encoding="utf-8")).get("video", False))
    modules = remote_code_modules(video=video)
    written = []
    for name in modules:
        shutil.copyfile(PACKAGE_DIR / f"{name}.py", folder / f"{name}.py")
        written.append(f"{name}.py")
    (folder / f"{ENTRY_MODULE}.py").write_text(_entry_module_source(modules), encoding="utf-8")
    written.append(f"{ENTRY_MODULE}.py")
    maps = (VIDEO_AUTO_MAP, VIDEO_PROCESSOR_AUTO_MAP) if video else (AUTO_MAP, PROCESSOR_AUTO_MAP)
    for json_name, auto_map in zip(("config.json", "preprocessor_config.json"), maps):
        path = folder / json_name
        data = json.loads(path.read_text(encoding="utf-8"))
        data["auto_map"] = dict(auto_map)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return written


# ------------------------------------------------------------------------------------------------ model card
def _yaml(value: Any) -> str:
    return json.dumps(str(value))  # a JSON string is a valid YAML scalar


_YAML_SPECIAL = {"y", "n", "yes", "no", "true", "false", "on", "off", "null"}


def _yaml_key(value: Any) -> str:
    """A metric name as a YAML scalar: plain for a simple identifier (`PQ`, `AP50`), else quoted."""
    text = str(value)
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", text) and text.lower() not in _YAML_SPECIAL:
        return text
    return _yaml(text)


def _label_rows(config: Mask2FormerConfig) -> list[str]:
    things = set(range(config.num_labels)) if config.thing_ids is None else set(config.thing_ids)
    rows = ["| id | label | kind |", "|---:|---|---|"]
    for i in range(config.num_labels):
        name = str(config.id2label.get(i, i)).replace("|", "\\|")
        rows.append(f"| {i} | {name} | {'thing' if i in things else 'stuff'} |")
    return rows


def build_model_card(
    config: Mask2FormerConfig,
    *,
    name: str,
    license: str,
    summary: str,
    processor: Any = None,
    dataset: str | None = None,
    task: str | None = None,
    metrics: Mapping[str, float] | None = None,
    metrics_source: str | None = None,
    base_model: str | None = None,
    details: Sequence[str] = (),
    license_note: str | None = None,
    notes: Sequence[str] = (),
    extra_sections: Mapping[str, str] | None = None,
    remote_code: bool = True,
    metric_format: str = "g",
) -> str:
    """README.md text of a Hub model repository: YAML metadata (license, pipeline tag, datasets,
    model-index metrics), a description, the label table, metrics, usage snippets, license and notes.

    name: the Hub repository id (or folder) the usage snippets load. summary: one paragraph on where the
    weights come from. task: the task of the metrics and of the snippets (default: the config's,
    `pipeline_m2f.default_subtask`). metrics: name → value (e.g. {"PQ": 51.9}); `metrics_source` says
    where they come from; `metric_format` is how their values are written (a format spec, e.g. ".2f").
    details: extra bullet lines. extra_sections: heading → markdown.
    """
    if not license:
        raise ValueError("a model card needs a license (a Hub license id such as 'apache-2.0', or 'other')")
    if not name:
        raise ValueError("a model card needs the repository name or folder the snippets load")
    task = task or default_subtask(config)
    if task not in SUBTASKS:
        raise ValueError(f"task must be one of {SUBTASKS}, got {task!r}")
    shown = []
    for key, value in (metrics or {}).items():
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"metric {key!r} is not finite: {value}")
        shown.append((str(key), value))

    meta = [
        "---",
        f"license: {license}",
        "library_name: transformers",
        "pipeline_tag: image-segmentation",
        "tags:",
        "- image-segmentation",
        "- mask2former",
        "- m2f_hf",
        f"- {task}-segmentation",
    ]
    if dataset:
        meta += ["datasets:", f"- {_yaml(dataset)}"]
    if base_model:
        meta.append(f"base_model: {_yaml(base_model)}")
    if shown:
        meta += [
            "model-index:",
            f"- name: {_yaml(name)}",
            "  results:",
            "  - task:",
            "      type: image-segmentation",
            f"      name: {TASK_TITLES[task]}",
            "    dataset:",
            f"      name: {_yaml(dataset or 'unknown')}",
            f"      type: {_yaml(dataset or 'unknown')}",
            "    metrics:",
        ]
        for key, value in shown:
            meta += [
                f"    - type: {_yaml_key(key)}",
                f"      value: {value:{metric_format}}",
                f"      name: {_yaml_key(key)}",
            ]
    meta.append("---")

    enabled = [
        t
        for t, on in (
            ("panoptic", config.panoptic_on),
            ("instance", config.instance_on),
            ("semantic", config.semantic_on),
        )
        if on
    ]
    backbone = config.backbone_type
    if backbone == "resnet":
        backbone = f"ResNet-{config.backbone_config['depth']}"
    elif backbone == "swin":
        backbone = f"Swin (embed dim {config.backbone_config['embed_dim']})"
    else:
        backbone = f"transformers {config.backbone_config.get('model_type')}"
    facts = [
        f"- **Architecture:** Mask2Former, {backbone} backbone, {config.num_queries} queries, "
        f"{config.decoder_layers - 1} masked-attention decoder layers, hidden size {config.hidden_dim}",
        f"- **Tasks:** {', '.join(enabled) or 'none enabled'} (pipeline default: {default_subtask(config)})",
        f"- **Classes:** {config.num_labels} "
        f"({config.num_labels if config.thing_ids is None else len(config.thing_ids)} thing classes)",
    ]
    if dataset:
        facts.append(f"- **Dataset:** {dataset}")
    if processor is not None:
        size = processor.size
        facts.append(
            f"- **Test-time resize:** shortest edge {size.get('shortest_edge')}, longest edge "
            f"{size.get('longest_edge')}, padded to a multiple of {processor.size_divisibility}"
        )
    facts.append(f"- **License:** {license}")
    facts += [f"- {line}" for line in details]

    body = [f"# {name}", "", summary.strip(), "", *facts, "", "## Evaluation", ""]
    if shown:
        if metrics_source:
            body += [metrics_source.strip(), ""]
        body += ["| metric | value |", "|---|---:|", *[f"| {k} | {v:{metric_format}} |" for k, v in shown]]
    else:
        body.append("No evaluation results are recorded for this model.")
    requirements = " ".join(external_requirements(remote_code_modules()))
    body += [
        "",
        "## Usage",
        "",
        "With the `m2f_hf` package installed:",
        "",
        "```python",
        "import m2f_hf  # registers the classes and the pipeline with transformers",
        "from transformers import pipeline",
        "",
        f'segmenter = pipeline("image-segmentation", model="{name}")',
        f'segments = segmenter("image.jpg")  # {task} by default; subtask="panoptic"|"instance"|"semantic"',
        'print([(s["label"], s["score"]) for s in segments])  # s["mask"]: PIL mask at the input size',
        "```",
        "",
    ]
    if remote_code:
        body += [
            "Without it, the code shipped in this repository runs with `trust_remote_code=True` "
            f"(needs `{requirements}`):",
            "",
            "```python",
            "from transformers import pipeline",
            "",
            f'segmenter = pipeline("image-segmentation", model="{name}", trust_remote_code=True)',
            "```",
            "",
        ]
    body += [
        "Models and processor directly (results at the input resolution, as the original returns them):",
        "",
        "```python",
        "import torch",
        "from PIL import Image",
        "import m2f_hf",
        "from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation",
        "",
        f'processor = AutoImageProcessor.from_pretrained("{name}")',
        f'model = AutoModelForUniversalSegmentation.from_pretrained("{name}").eval()',
        'inputs = processor(images=Image.open("image.jpg"), return_tensors="pt")',
        "with torch.no_grad():",
        '    outputs = model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])',
        f"result = processor.post_process_{task}_segmentation(outputs, "
        'target_sizes=inputs["original_sizes"])[0]',
        "```",
        "",
        "Command line: `m2f-hf predict image.jpg --model " + name + " --output out/`.",
        "",
        "## Labels",
        "",
    ]
    rows = _label_rows(config)
    if config.num_labels > 30:
        body += ["<details><summary>all classes</summary>", "", *rows, "", "</details>"]
    else:
        body += rows
    body += ["", "## License", "", f"`{license}`." + (f" {license_note.strip()}" if license_note else "")]
    for heading, text in (extra_sections or {}).items():
        body += ["", f"## {heading}", "", text.strip()]
    if notes:
        body += ["", "## Notes", "", *[f"- {note}" for note in notes]]
    return "\n".join(meta + [""] + body) + "\n"


# ------------------------------------------------------------------------------------------ folders and Hub
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
