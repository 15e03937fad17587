"""Hub folders (`m2f_hf.ecosystem_hub`): files, auto_map, model card, loading with and without the package
installed (remote code in a subprocess that cannot import m2f_hf), and the upload step (mocked, offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_m2f import PHOTO, tiny_model
from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation, pipeline

import m2f_hf
from m2f_hf import ecosystem_hub as hub
from m2f_hf.pipeline_m2f import SUBTASKS

TASKS = ("panoptic", "instance", "semantic")


@pytest.fixture(scope="module")
def hub_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    folders = {}
    for task in TASKS:
        model, processor = tiny_model(task)
        folders[task] = hub.save_for_hub(
            model,
            processor,
            root / f"m2f-tiny-{task}",
            license="apache-2.0",
            repo_id=f"someone/m2f-tiny-{task}",
            dataset="toy-shapes",
            metrics={"PQ": 12.25, "mIoU": 30.5},
            metrics_source="Measured on nothing.",
        )
    return folders


def _summary(results) -> list:
    """Pipeline results as JSON-able facts: label, score, mask area and a mask checksum per segment."""
    out = []
    for result in results:
        masks = [np.asarray(r["mask"]) > 0 for r in result]
        out.append(
            [
                [
                    r["label"],
                    r["score"],
                    int(m.sum()),
                    int((m * np.arange(m.size).reshape(m.shape)).sum() % 1000003),
                ]
                for r, m in zip(result, masks, strict=True)
            ]
        )
    return out


def test_folder_contents_and_auto_map(hub_folders):
    folder = hub_folders["semantic"]
    names = {p.name for p in folder.iterdir()}
    modules = hub.remote_code_modules()
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= names
    assert {f"{m}.py" for m in modules} | {f"{hub.ENTRY_MODULE}.py"} <= names
    # lazily imported modules (targets...) and `from . import x` ones are included; the inference layer only
    # (the exact list and line budget: test_architecture.py)
    expected = {"processing_postprocess", "processing_targets", "pipeline_m2f"}
    assert expected <= set(modules)
    assert "ecosystem_cli" not in modules and "training_recipe" not in modules
    assert "conversion_transformers" not in modules and "ecosystem_hub" not in modules
    config = json.loads((folder / "config.json").read_text())
    assert set(config["auto_map"]) == {
        "AutoConfig",
        "AutoModel",
        "AutoModelForUniversalSegmentation",
        "AutoModelForImageSegmentation",
        "AutoImageProcessor",
    }
    assert all(ref.startswith(hub.ENTRY_MODULE + ".") for ref in config["auto_map"].values())
    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    assert preprocessor["auto_map"] == {"AutoImageProcessor": f"{hub.ENTRY_MODULE}.M2fHfImageProcessor"}
    # every module the entry names exists in the folder, so transformers' regex-based copy finds them all
    from transformers.dynamic_module_utils import get_relative_import_files

    copied = {
        os.path.basename(f)[:-3] for f in get_relative_import_files(str(folder / f"{hub.ENTRY_MODULE}.py"))
    }
    assert copied == set(modules)


def test_model_card(hub_folders):
    card = (hub_folders["panoptic"] / "README.md").read_text()
    front = card.split("---")[1]
    assert "license: apache-2.0" in front and "pipeline_tag: image-segmentation" in front
    assert '- "toy-shapes"' in front and "model-index:" in front and "value: 12.25" in front
    assert "name: Panoptic Segmentation" in front
    body = card.split("---", 2)[2]
    assert "| 0 | cat | thing |" in body and "| 4 | grass | stuff |" in body
    assert "| PQ | 12.25 |" in body and "Measured on nothing." in body
    assert 'pipeline("image-segmentation", model="someone/m2f-tiny-panoptic")' in body
    assert "trust_remote_code=True" in body and "scipy" in body
    assert "post_process_panoptic_segmentation" in body
    semantic_card = (hub_folders["semantic"] / "README.md").read_text()
    assert "semantic by default" in semantic_card and "post_process_semantic_segmentation" in semantic_card


def test_model_card_rejects_bad_input():
    model, processor = tiny_model("semantic")
    with pytest.raises(ValueError, match="license"):
        hub.build_model_card(model.config, name="x", license="", summary="s")
    with pytest.raises(ValueError, match="task"):
        hub.build_model_card(model.config, name="x", license="mit", summary="s", task="depth")
    with pytest.raises(ValueError, match="finite"):
        hub.build_model_card(model.config, name="x", license="mit", summary="s", metrics={"PQ": float("nan")})
    with pytest.raises(TypeError, match="m2f_hf"):
        hub.save_for_hub(torch.nn.Linear(2, 2), processor, "unused")
    with pytest.raises(TypeError, match="M2fHfImageProcessor"):
        hub.save_for_hub(model, object(), "unused")


def test_with_package_installed_local_classes_are_used(hub_folders):
    folder = hub_folders["instance"]
    model = AutoModelForUniversalSegmentation.from_pretrained(folder)  # no trust_remote_code, no prompt
    processor = AutoImageProcessor.from_pretrained(folder)
    assert type(model) is m2f_hf.Mask2FormerForUniversalSegmentation
    assert type(processor) is m2f_hf.M2fHfImageProcessor
    reference, _ = tiny_model("instance")
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "m2f_hf" or name.startswith("m2f_hf."):
                raise ImportError("m2f_hf is blocked in this test")

    sys.meta_path.insert(0, BlockPackage())
    try:
        import m2f_hf  # noqa: F401
        raise SystemExit("m2f_hf is importable; the test would not test remote code")
    except ImportError:
        pass

    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, pipeline

    folders, photo, summary_src = json.loads(sys.argv[1])
    exec(summary_src)
    image = Image.open(photo)
    report = {}
    for task, folder in folders.items():
        seg = pipeline("image-segmentation", model=folder, trust_remote_code=True)
        classes = [type(seg), type(seg.model), type(seg.image_processor)]
        entry = {"classes": [c.__module__ for c in classes], "default": _summary([seg(image)])}
        if task == "panoptic":  # every subtask, on the model that enables them all
            for subtask in ("panoptic", "instance", "semantic"):
                entry[subtask] = _summary([seg(image, subtask=subtask, threshold=0.5)])
            config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
            base = AutoModel.from_pretrained(folder, trust_remote_code=True)
            processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
            entry["types"] = [type(config).__name__, type(base).__name__, type(processor).__name__]
        inputs = seg.image_processor(images=[image], return_tensors="pt")
        with torch.no_grad():
            out = seg.model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
        np.save(folder + "/remote_logits.npy", out.class_queries_logits.numpy())
        np.save(folder + "/remote_masks.npy", out.masks_queries_logits.numpy())
        report[task] = entry
    print("REPORT" + json.dumps(report))
    """
)


def _assert_same(got, expected, where):
    """Equal summaries; scores may differ by float noise (another process may use other thread counts)."""
    if isinstance(expected, float):
        assert isinstance(got, float) and abs(got - expected) <= 1e-5, (where, got, expected)
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), (where, got, expected)
        for g, e in zip(got, expected, strict=True):
            _assert_same(g, e, where)
    else:
        assert got == expected, (where, got, expected)


def test_remote_code_without_the_package(hub_folders, tmp_path):
    import inspect

    image = Image.open(PHOTO)
    expected = {}
    for task, folder in hub_folders.items():
        seg = pipeline("image-segmentation", model=str(folder))
        expected[task] = {"default": _summary([seg(image)])}
        if task == "panoptic":
            for subtask in SUBTASKS:
                expected[task][subtask] = _summary([seg(image, subtask=subtask, threshold=0.5)])
    summary_src = "import numpy as np\n" + inspect.getsource(_summary)
    arg = json.dumps([{t: str(f) for t, f in hub_folders.items()}, str(PHOTO), summary_src])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(
        [sys.executable, "-I", "-c", REMOTE_SCRIPT, arg],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.split("REPORT", 1)[1])
    for task, folder in hub_folders.items():
        got = report[task]
        assert all(module.startswith("transformers_modules.") for module in got["classes"]), got["classes"]
        _assert_same(got["default"], expected[task]["default"], task)
        # the default answer is the configured task: semantic segments have no score, the others do
        scores = [segment[1] for segment in got["default"][0]]
        assert scores and all(s is None for s in scores) == (task == "semantic")
        model, processor = tiny_model(task)
        inputs = processor(images=[image], return_tensors="pt")
        with torch.no_grad():
            out = model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
        diff_class = np.abs(np.load(folder / "remote_logits.npy") - out.class_queries_logits.numpy()).max()
        diff_mask = np.abs(np.load(folder / "remote_masks.npy") - out.masks_queries_logits.numpy()).max()
        scale = max(1.0, float(np.abs(out.masks_queries_logits.numpy()).max()))  # float noise, relative
        assert diff_class <= 1e-4 and diff_mask <= 1e-4 * scale, (diff_class, diff_mask, scale)
    panoptic = report["panoptic"]
    assert panoptic["types"] == ["Mask2FormerConfig", "Mask2FormerModel", "M2fHfImageProcessor"]
    for subtask in SUBTASKS:
        _assert_same(panoptic[subtask], expected["panoptic"][subtask], subtask)
        assert panoptic[subtask][0], subtask  # something was found, so the comparison means something
    assert panoptic["default"] != panoptic["semantic"]


def test_upload_is_the_saved_folder(monkeypatch, tmp_path):
    """No network: HfApi is replaced by a recorder; the uploaded folder is the complete repository."""
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None):
            calls.append(("create", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message, repo_type):
            files = sorted(os.listdir(folder_path))
            card = open(os.path.join(folder_path, "README.md")).read()
            calls.append(("upload", repo_id, files, card))
            return "commit-url"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    model, processor = tiny_model("panoptic")
    hub.push_to_hub(model, processor, "someone/tiny", license="mit", private=True, token="t0k")
    assert calls[0] == ("init", "t0k") and calls[1] == ("create", "someone/tiny", True, True)
    _, repo, files, card = calls[2]
    assert repo == "someone/tiny"
    assert {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "README.md",
        "m2f_hf_remote.py",
    } <= set(files)
    assert "license: mit" in card and 'model="someone/tiny"' in card
    with pytest.raises(FileNotFoundError, match="config.json"):
        hub.push_folder_to_hub(tmp_path, "someone/empty")


PLAIN_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "m2f_hf" or name.startswith("m2f_hf."):
                raise ImportError("m2f_hf is blocked in this test")

    sys.meta_path.insert(0, BlockPackage())
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation

    folder, photo = sys.argv[1:]
    try:
        AutoModelForUniversalSegmentation.from_pretrained(folder)
        refusal = None
    except ValueError as error:
        refusal = str(error)
    model = AutoModelForUniversalSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    inputs = processor(images=[Image.open(photo)], return_tensors="pt")
    with torch.no_grad():
        out = model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
    np.save(folder + "/remote_logits.npy", out.class_queries_logits.numpy())
    print("REPORT" + json.dumps([refusal, type(model).__name__, type(processor).__name__]))
    """
)


def test_plain_save_pretrained_folder_loads_without_the_package(tmp_path):
    """`save_pretrained` alone (no save_for_hub) writes the code and auto_map as transformers' custom models
    do: without the package the folder asks for trust_remote_code (never "update Transformers") and then
    loads and computes the same logits."""
    model, processor = tiny_model("panoptic")
    folder = tmp_path / "plain"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForUniversalSegmentation"].endswith(
        "Mask2FormerForUniversalSegmentation"
    )
    assert (folder / "modeling_m2f.py").is_file() and (folder / "processing_postprocess.py").is_file()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(
        [sys.executable, "-I", "-c", PLAIN_SCRIPT, str(folder), str(PHOTO)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    refusal, model_type, processor_type = json.loads(proc.stdout.split("REPORT", 1)[1])
    assert refusal is not None and "trust_remote_code" in refusal and "upgrade" not in refusal
    assert (model_type, processor_type) == ("Mask2FormerForUniversalSegmentation", "M2fHfImageProcessor")
    inputs = processor(images=[Image.open(PHOTO)], return_tensors="pt")
    with torch.no_grad():
        out = model.eval()(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
    diff = np.abs(np.load(folder / "remote_logits.npy") - out.class_queries_logits.numpy()).max()
    assert diff <= 1e-5, diff
