#!/usr/bin/env python
"""Fetch transformers' common test mixins for the installed transformers version (used, not copied).

transformers' `ModelTesterMixin`, `ConfigTester` and `ImageProcessingTestMixin` live in its source
distribution (`tests/test_modeling_common.py`, `test_configuration_common.py`,
`test_image_processing_common.py`), not in the wheel. This script downloads the sdist of exactly the
installed version from the package registry and extracts those three files, unmodified, into
`.cache/transformers_tests/<version>/transformers_common/`, which `tests/test_transformers_mixins.py` imports.

Three modules they import are not in the sdist (`exporters/test_export.py`, `generation/test_utils.py`,
`utils/test_configuration_utils.py`); minimal stand-ins are written next to them: an export mixin and a
generation mixin without tests (Mask2Former generates nothing; export is tested by tests/test_export.py)
and the common config keyword arguments `ConfigTester` sets.

    python scripts/fetch_transformers_tests.py            # idempotent; prints the folder
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "transformers_tests"
FILES = ("test_modeling_common.py", "test_configuration_common.py", "test_image_processing_common.py")
PACKAGE = "transformers_common"

STAND_INS = {
    "exporters/test_export.py": '''"""Stand-in (not in the transformers sdist): the export mixin, no tests."""


class ExportTesterMixin:
    pass
''',
    "generation/test_utils.py": '''"""Stand-in (not in the sdist): the generation mixin, no tests."""


class GenerationTesterMixin:
    pass
''',
    "utils/test_configuration_utils.py": '''"""Stand-in (not in the transformers sdist): common
PreTrainedConfig keyword arguments with non-default values, for ConfigTester.check_config_arguments_init."""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "finetuning_task": "translation",
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}
''',
}
# test_image_processing_common.py puts <its parent>/../utils on sys.path for this helper of transformers' CI
HUB_HELPER = '''"""Stand-in (not in the sdist) for a transformers CI helper: no Hub downloads."""


def url_to_local_path(url, *args, **kwargs):
    raise RuntimeError(f"no network in this test suite: {url}")
'''


def target_dir(version: str = transformers.__version__) -> Path:
    return CACHE / version


def fetch(version: str = transformers.__version__) -> Path:
    """The folder to put on sys.path (holding the `transformers_common` package); downloads if needed."""
    folder = target_dir(version)
    package = folder / PACKAGE
    if all((package / name).is_file() for name in FILES) and (folder / "utils").is_dir():
        return folder
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                f"transformers=={version}",
                "--no-binary",
                ":all:",
                "--no-deps",
                "--quiet",
                "-d",
                tmp,
            ],
            check=True,
        )
        archive = next(Path(tmp).glob("transformers-*.tar.gz"))
        with tarfile.open(archive) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if Path(m.name).parent.name == "tests"}
            missing = [name for name in FILES if name not in members]
            if missing:
                raise FileNotFoundError(f"{archive.name} has no tests/{missing}")
            package.mkdir(parents=True, exist_ok=True)
            for name in FILES:
                data = tar.extractfile(members[name]).read()
                (package / name).write_bytes(data)
    (package / "__init__.py").write_text(
        f'"""transformers {version} common test mixins (see {Path(__file__).name})."""\n'
    )
    (folder / "utils").mkdir(exist_ok=True)
    (folder / "utils" / "fetch_hub_objects_for_ci.py").write_text(HUB_HELPER)
    for relative, text in STAND_INS.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(text)
    return folder


if __name__ == "__main__":
    print(fetch())
