#!/usr/bin/env bash
# Creates .venv (if needed) and installs m2f_hf with everything the demo and the tests use.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev,train,export,video]"
# No panopticapi: the metric tests score PQ with an independent reference (tests/reference_pq.py), and
# panopticapi-lite's metadata (numpy<2, matplotlib, scikit-image) would make `pip check` fail. The
# environment must stay consistent:
.venv/bin/python -m pip check
# transformers' common test mixins (ModelTesterMixin, ...) ship in its sdist only: fetched for the installed
# version into .cache/ (tests/test_transformers_mixins.py runs them against our classes)
.venv/bin/python scripts/fetch_transformers_tests.py > /dev/null
