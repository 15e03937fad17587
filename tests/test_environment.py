"""The installed environment is consistent: `pip check` reports no missing or conflicting requirements
(scripts/setup_env.sh builds this environment and runs the same check)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_pip_check_is_clean():
    try:
        import pip  # noqa: F401
    except ImportError:
        pytest.skip("pip is not installed in this environment")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"pip check failed:\n{done.stdout}{done.stderr}"
