"""The remote code of a Hub folder: the package modules a folder carries for `trust_remote_code`.

transformers imports `auto_map` class references as `module.Class` from files in the folder and copies
along only the files named by `from .module import ...` lines (its regex; `from . import x` is not seen).
Every auto_map entry therefore points at one generated entry module, `m2f_hf_remote.py`, which names each
needed package module in that form; one entry module also means every Auto class resolves to the same copy
of the code (separate roots would get separate copies and distinct classes). The entry module also
registers the m2f_hf `image-segmentation` pipeline (see `pipeline_m2f.py`): it is imported with the config,
before `pipeline()` picks its pipeline class.

The modules carried are the inference layer only (layers_*, configuration/modeling_*, processing_*,
image_processing_m2f, pipeline_m2f): `REMOTE_ROOTS` and what they import relatively.
"""

from __future__ import annotations

import ast
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "AUTO_MAP",
    "VIDEO_AUTO_MAP",
    "VIDEO_REMOTE_ROOTS",
    "ENTRY_MODULE",
    "PROCESSOR_AUTO_MAP",
    "REMOTE_ROOTS",
    "external_requirements",
    "remote_code_modules",
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
# distribution names where they differ from the import name
_DISTRIBUTIONS = {"PIL": "pillow", "yaml": "pyyaml", "huggingface_hub": "huggingface-hub"}


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
