"""Model cards (README.md of a Hub model folder): one builder, `build_model_card`, and the provenance of the
three ways a folder is made (an original checkpoint converted, a transformers checkpoint converted, a
training run) as thin callers of it.

A card is YAML front matter (license, pipeline tag, datasets, model-index metrics) followed by markdown:
a summary with the model's facts, evaluation, usage snippets, the label table, license and notes. Each
part is one small function below.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .configuration_m2f import Mask2FormerConfig
from .conversion_original import ORIGINAL_LICENSE
from .ecosystem_remote_code import external_requirements, remote_code_modules
from .pipeline_m2f import default_subtask
from .processing_postprocess import TASKS, check_task

__all__ = [
    "CARD_METRICS",
    "TASK_TITLES",
    "build_model_card",
    "original_conversion_card",
    "transformers_conversion_card",
    "write_model_card",
]

TASK_TITLES = {
    "panoptic": "Panoptic Segmentation",
    "instance": "Instance Segmentation",
    "semantic": "Semantic Segmentation",
}
# metrics a training run's card lists (in this order), when present and finite
CARD_METRICS = ("PQ", "PQ_th", "PQ_st", "SQ", "RQ", "mIoU", "fwIoU", "mACC", "pACC", "AP", "AP50", "AP75")
_YAML_SPECIAL = {"y", "n", "yes", "no", "true", "false", "on", "off", "null"}


# ------------------------------------------------------------------------------------------------ the parts
def _yaml(value: Any) -> str:
    return json.dumps(str(value))  # a JSON string is a valid YAML scalar


def _yaml_key(value: Any) -> str:
    """A metric name as a YAML scalar: plain for a simple identifier (`PQ`, `AP50`), else quoted."""
    text = str(value)
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", text) and text.lower() not in _YAML_SPECIAL:
        return text
    return _yaml(text)


def _checked_metrics(metrics: Mapping[str, float] | None) -> list[tuple[str, float]]:
    shown = []
    for key, value in (metrics or {}).items():
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"metric {key!r} is not finite: {value}")
        shown.append((str(key), value))
    return shown


def _front_matter(
    name: str,
    license: str,
    task: str,
    dataset: str | None,
    base_model: str | None,
    shown: list[tuple[str, float]],
    metric_format: str,
) -> list[str]:
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
    return meta + ["---"]


def _backbone_name(config: Mask2FormerConfig) -> str:
    if config.backbone_type == "resnet":
        return f"ResNet-{config.backbone_config['depth']}"
    if config.backbone_type == "swin":
        return f"Swin (embed dim {config.backbone_config['embed_dim']})"
    return f"transformers {getattr(config.backbone_config, 'model_type', None)}"


def _facts(
    config: Mask2FormerConfig, dataset: str | None, processor: Any, license: str, details: Sequence[str]
) -> list[str]:
    flags = [(task, getattr(config, f"{task}_on")) for task in TASKS]
    enabled = [task for task, on in flags if on]
    things = config.num_labels if config.thing_ids is None else len(config.thing_ids)
    facts = [
        f"- **Architecture:** Mask2Former, {_backbone_name(config)} backbone, {config.num_queries} queries, "
        f"{config.decoder_layers - 1} masked-attention decoder layers, hidden size {config.hidden_dim}",
        f"- **Tasks:** {', '.join(enabled) or 'none enabled'} (pipeline default: {default_subtask(config)})",
        f"- **Classes:** {config.num_labels} ({things} thing classes)",
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
    return facts + [f"- {line}" for line in details]


def _evaluation(shown: list[tuple[str, float]], metrics_source: str | None, metric_format: str) -> list[str]:
    lines = ["## Evaluation", ""]
    if not shown:
        return lines + ["No evaluation results are recorded for this model."]
    if metrics_source:
        lines += [metrics_source.strip(), ""]
    return lines + ["| metric | value |", "|---|---:|", *[f"| {k} | {v:{metric_format}} |" for k, v in shown]]


def _usage(name: str, task: str, remote_code: bool) -> list[str]:
    lines = [
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
        requirements = " ".join(external_requirements(remote_code_modules()))
        lines += [
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
    return lines + [
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
    ]


def _labels(config: Mask2FormerConfig) -> list[str]:
    things = set(range(config.num_labels)) if config.thing_ids is None else set(config.thing_ids)
    rows = ["| id | label | kind |", "|---:|---|---|"]
    for i in range(config.num_labels):
        name = str(config.id2label.get(i, i)).replace("|", "\\|")
        rows.append(f"| {i} | {name} | {'thing' if i in things else 'stuff'} |")
    if config.num_labels > 30:
        rows = ["<details><summary>all classes</summary>", "", *rows, "", "</details>"]
    return ["## Labels", "", *rows]


def _closing(
    license: str,
    license_note: str | None,
    extra_sections: Mapping[str, str] | None,
    notes: Sequence[str],
) -> list[str]:
    lines = ["## License", "", f"`{license}`." + (f" {license_note.strip()}" if license_note else "")]
    for heading, text in (extra_sections or {}).items():
        lines += ["", f"## {heading}", "", text.strip()]
    if notes:
        lines += ["", "## Notes", "", *[f"- {note}" for note in notes]]
    return lines


# -------------------------------------------------------------------------------------------- the builder
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
    check_task(task)
    shown = _checked_metrics(metrics)
    body = [
        f"# {name}",
        "",
        summary.strip(),
        "",
        *_facts(config, dataset, processor, license, details),
        "",
        *_evaluation(shown, metrics_source, metric_format),
        "",
        *_usage(name, task, remote_code),
        *_labels(config),
        "",
        *_closing(license, license_note, extra_sections, notes),
    ]
    meta = _front_matter(name, license, task, dataset, base_model, shown, metric_format)
    return "\n".join(meta + [""] + body) + "\n"


# ------------------------------------------------------------------------------------------ the provenance
def original_conversion_card(report: Any, repo_id: str | None, processor: Any = None) -> str:
    """Card of a folder converted from an original checkpoint (`conversion_original.ConversionReport`)."""
    s = report.settings
    source_cfg = s.source.get("config_file") or "none (architecture inferred from the weights)"
    details = [
        f"**Source checkpoint:** `{report.checkpoint.name}` (sha256 `{report.checkpoint_sha256}`)",
        f"**Source config:** `{source_cfg}`",
    ]
    extra_sections = None
    if getattr(s.config, "video", False):
        details.append(
            "Video instance segmentation model (the original VideoMaskFormer, YouTube-VIS): load it with "
            "`Mask2FormerForVideoInstanceSegmentation` and `M2fHfVideoProcessor` (see Video usage)."
        )
        extra_sections = {"Video usage": VIDEO_USAGE.format(name=repo_id or str(report.output_dir))}
    if report.flipped_input_channels:
        details.append(
            "The original was fed BGR images; the first-layer weights were re-ordered so this model "
            "takes RGB."
        )
    return build_model_card(
        s.config,
        name=repo_id or str(report.output_dir),
        license=ORIGINAL_LICENSE,
        summary=(
            'Mask2Former (Cheng et al., "Masked-attention Mask Transformer for Universal Image '
            'Segmentation", CVPR 2022) converted from the original detectron2 checkpoint of '
            "facebookresearch/Mask2Former into the `m2f_hf` format (same weights, same computation, the "
            "original test-time pre- and post-processing)."
        ),
        processor=processor,
        dataset=s.dataset,
        details=details,
        license_note=(
            "The original Mask2Former model-zoo weights are released under CC BY-NC 4.0 (non-commercial); "
            "these converted weights carry the same license."
        ),
        notes=[report.mapping.summary(), *s.notes],
        extra_sections=extra_sections,
    )


VIDEO_USAGE = """```python
import torch
from PIL import Image
from m2f_hf.modeling_video_m2f import Mask2FormerForVideoInstanceSegmentation
from m2f_hf.processing_video_m2f import M2fHfVideoProcessor

processor = M2fHfVideoProcessor.from_pretrained("{name}")
model = Mask2FormerForVideoInstanceSegmentation.from_pretrained("{name}").eval()
frames = [Image.open(f"frames/{{i:05d}}.jpg") for i in range(8)]
inputs = processor(videos=[frames], return_tensors="pt")
with torch.no_grad():
    outputs = model(inputs["pixel_values_videos"])
instances = processor.post_process_video_instance_segmentation(
    outputs, target_sizes=inputs["original_sizes"]
)[0]  # [{{"score", "label_id", "masks" (T, H, W) bool}}, ...], the original's top 10
```"""


def transformers_conversion_card(imported: Any, name: str, processor: Any = None) -> str:
    """Card of a folder converted from a transformers checkpoint
    (`conversion_transformers.TransformersImport`)."""
    s = imported.settings
    return build_model_card(
        s.config,
        name=name,
        license="other",
        summary=(
            f"Converted from the transformers-format Mask2Former checkpoint `{imported.source}` into the "
            "`m2f_hf` format (same weights and the same computation) with the original test-time "
            "preprocessing of its dataset."
        ),
        processor=processor,
        dataset=s.dataset,
        details=[f"**Source checkpoint:** `{imported.source}`"],
        license_note=(
            "The license of the source checkpoint applies (the facebook/mask2former-* weights: CC BY-NC 4.0)."
        ),
        notes=s.notes,
    )


def write_model_card(
    folder: Any,
    config: Any,
    task: str,
    metrics: Mapping[str, float],
    dataset: str,
    license: str = "apache-2.0",
    base_model: str | None = None,
    repo_id: str | None = None,
    dataset_details: str | None = None,
    training_command: str | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    processor: Any = None,
) -> str:
    """Write README.md into `folder` for a training run: `build_model_card` with the run's provenance
    (base checkpoint, data, hyper-parameters, command) and its finite held-out metrics."""
    check_task(task)
    if not dataset:
        raise ValueError("the model card needs the dataset name")
    if not license:
        raise ValueError("the model card needs a license")
    name = repo_id or Path(folder).resolve().name
    shown = {k: float(metrics[k]) for k in CARD_METRICS if k in metrics and math.isfinite(float(metrics[k]))}
    origin = f"fine-tuned from `{base_model}`" if base_model else "trained from scratch"
    details = [f"**Base checkpoint:** {base_model or 'none (random initialisation)'}"]
    if dataset_details:
        details.append(f"**Training data:** {dataset_details}")
    training = []
    if hyperparameters:
        training += ["| hyperparameter | value |", "|---|---|"]
        training += [f"| {k} | {v} |" for k, v in hyperparameters.items()]
    if training_command:
        training += ["", "```bash", training_command, "```"]
    text = build_model_card(
        config,
        name=name,
        license=license,
        summary=f"Mask2Former for {task} segmentation, trained with the `m2f_hf` package ({origin}).",
        processor=processor,
        dataset=dataset,
        task=task,
        metrics=shown,
        metrics_source="Held-out split, original image resolution, the original post-processing:",
        base_model=base_model,
        details=details,
        extra_sections={"Training": "\n".join(training)} if training else None,
        remote_code=False,
        metric_format=".2f",
    )
    Path(folder, "README.md").write_text(text)
    return text
