"""The package's architecture, read from its source with `ast`: the layer order of the imports, no import
cycle, no private name used across modules; the Hub folder carries exactly the inference layer; the
model layer loads other checkpoint formats only through registered loaders; the processor alone owns
the test-time thresholds."""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

import pytest
import torch
from tiny_m2f import tiny_model

import m2f_hf
from m2f_hf import ecosystem_hub as hub
from m2f_hf import modeling_m2f
from m2f_hf.configuration_m2f import PROCESSOR_SETTINGS, Mask2FormerConfig
from m2f_hf.image_processing_m2f import M2fHfImageProcessor

PACKAGE = Path(m2f_hf.__file__).resolve().parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
TREES = {name: ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8")) for name in MODULES}
LAYERS = ("layers", "model", "processing", "training", "conversion", "ecosystem")
# modules any layer may import: the deprecation shims (standard library only)
BASE = {"deprecated_modules"}
# the inference modules every Hub folder carries (more may join: e.g. a runtime-settings module)
CORE_REMOTE = {
    "configuration_m2f",
    "image_processing_m2f",
    "layers_blocks",
    "layers_position",
    "modeling_backbone",
    "modeling_criterion",
    "modeling_deform_attn",
    "modeling_deform_attn_triton",
    "modeling_m2f",
    "modeling_masked_attention",
    "modeling_matcher",
    "modeling_pixel_decoder",
    "modeling_point_sampling",
    "modeling_resnet",
    "modeling_swin",
    "modeling_transformer_decoder",
    "pipeline_m2f",
    "processing_postprocess",
    "processing_targets",
}
REMOTE_LINE_BUDGET = (
    6500  # "about 6,000": the transformers-API additions (outputs, sub-configs, backends) took it past
)


def layer(name: str) -> int:
    """Index in LAYERS of a module, from its name (the README's "Layout" section)."""
    if name.startswith("layers_"):
        return 0
    if name.startswith(("configuration_", "modeling_")):
        return 1
    if name.startswith("processing_") or name in ("image_processing_m2f", "pipeline_m2f"):
        return 2
    if name.startswith("training_"):
        return 3
    if name.startswith("conversion_"):
        return 4
    if name.startswith("ecosystem_"):
        return 5
    raise AssertionError(f"module {name} has no layer prefix")


def relative_imports(tree: ast.AST) -> list[tuple[str, list[str], int]]:
    """(module imported, names imported from it, line) of every relative import, lazy ones included."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.module:
                found.append((node.module.split(".")[0], [a.name for a in node.names], node.lineno))
            else:
                found += [(a.name, [], node.lineno) for a in node.names]
    return found


def test_every_module_has_a_layer():
    assert [name for name in MODULES if name not in BASE and layer(name) is None] == []


def test_imports_only_point_down_the_layers():
    upward = [
        f"{name}:{line} imports {target} ({LAYERS[layer(target)]} above {LAYERS[layer(name)]})"
        for name in MODULES
        if name not in BASE
        for target, _, line in relative_imports(TREES[name])
        if target not in BASE and layer(target) > layer(name)
    ]
    assert upward == []


def test_no_import_cycle():
    graph = {name: {t for t, _, _ in relative_imports(TREES[name]) if t in TREES} for name in MODULES}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in MODULES:
        if name not in state:
            visit(name, [name])
    assert cycles == []


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_private_name_used_across_modules():
    defined: dict[str, set[str]] = {}
    for name, tree in TREES.items():
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        names.add(target.id)
                    elif isinstance(target, ast.Attribute):
                        names.add(target.attr)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
        defined[name] = {n for n in names if _private(n)}
    found = []
    for name, tree in TREES.items():
        for target, names, line in relative_imports(tree):
            found += [f"{name}:{line} imports {target}.{n}" for n in names if _private(n)]
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and _private(node.attr)):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            owners = [other for other, names in defined.items() if node.attr in names and other != name]
            if owners and node.attr not in defined[name]:
                found.append(f"{name}:{node.lineno} uses {ast.unparse(node)} (defined in {owners})")
    assert found == []


def test_model_layer_knows_no_other_checkpoint_format():
    imported = {t for t, _, _ in relative_imports(TREES["modeling_m2f"])}
    assert not {name for name in imported if layer(name) > layer("modeling_m2f")}
    # importing the package registers the transformers-checkpoint loader into the hook
    from m2f_hf.ecosystem_registration import load_transformers_format

    assert load_transformers_format in modeling_m2f.CHECKPOINT_LOADERS


def test_from_pretrained_consults_the_registered_loaders(tmp_path):
    model, _ = tiny_model("semantic")
    model.save_pretrained(tmp_path / "plain")
    calls = []

    def loader(path, model_class=None, **kwargs):
        calls.append((str(path), model_class, kwargs))
        return model if str(path) == "special-format" else path

    modeling_m2f.register_checkpoint_loader(loader)
    modeling_m2f.register_checkpoint_loader(loader)  # idempotent
    try:
        assert modeling_m2f.CHECKPOINT_LOADERS.count(loader) == 1
        loaded = m2f_hf.Mask2FormerForUniversalSegmentation.from_pretrained("special-format", revision="x")
        assert loaded is model
        assert calls[-1] == ("special-format", m2f_hf.Mask2FormerForUniversalSegmentation, {"revision": "x"})
        # a path the loader declines loads the ordinary way
        plain = m2f_hf.Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path / "plain")
        assert plain is not model and calls[-1][0] == str(tmp_path / "plain")
        for key, value in model.state_dict().items():
            assert torch.equal(plain.state_dict()[key], value), key
    finally:
        modeling_m2f.CHECKPOINT_LOADERS.remove(loader)


def test_hub_folder_carries_exactly_the_inference_layer(tmp_path):
    model, processor = tiny_model("panoptic")
    folder = hub.save_for_hub(model, processor, tmp_path / "repo", license="apache-2.0")
    carried = {p.stem for p in folder.glob("*.py")} - {hub.ENTRY_MODULE}
    inference = {name for name in MODULES if name not in BASE and layer(name) <= layer("pipeline_m2f")}
    assert carried == set(hub.remote_code_modules())
    assert carried <= inference, carried - inference
    # every inference module of the image model is carried (video models are separate roots)
    assert {m for m in inference if "video" not in m} == {m for m in carried if "video" not in m}
    assert CORE_REMOTE <= carried
    lines = sum(len((folder / f"{m}.py").read_text().splitlines()) for m in carried if "video" not in m)
    assert lines <= REMOTE_LINE_BUDGET, lines


def test_the_processor_owns_the_test_time_settings(tmp_path, caplog):
    # the processor's defaults: the original's MODEL.MASK_FORMER.TEST values
    processor = M2fHfImageProcessor()
    assert (
        processor.object_mask_threshold,
        processor.overlap_threshold,
        processor.test_topk_per_image,
        processor.sem_seg_postprocess_before_inference,
    ) == (0.8, 0.8, 100, True)
    # an older config.json that carries them still loads; they are dropped with a note
    model, _ = tiny_model("panoptic")
    model.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    assert not set(PROCESSOR_SETTINGS) & set(data)
    old = dict(zip(PROCESSOR_SETTINGS, (0.25, 0.5, 7, False), strict=True))
    path.write_text(json.dumps({**data, **old}))
    with caplog.at_level(logging.WARNING, logger="m2f_hf.configuration_m2f"):
        config = Mask2FormerConfig.from_pretrained(tmp_path)
        reloaded = m2f_hf.Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path)
    assert not any(hasattr(config, key) for key in PROCESSOR_SETTINGS)
    assert not set(PROCESSOR_SETTINGS) & set(config.to_dict())
    assert config.panoptic_on and config.num_labels == model.config.num_labels
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    # noted once per process (for each set of keys): no config in this repository carries all four
    notes = [r.getMessage() for r in caplog.records if r.name == "m2f_hf.configuration_m2f"]
    assert len(notes) == 1 and "image processor" in notes[0] and "0.25" in notes[0]


@pytest.mark.parametrize("name", ["build_processor_from_settings", "convert_transformers_checkpoint"])
def test_moved_names_warn_and_resolve(name):
    import importlib

    module = importlib.import_module("m2f_hf.conversion_transformers")
    with pytest.warns(DeprecationWarning, match=name):
        value = getattr(module, name)
    assert callable(value)
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018
