#!/usr/bin/env bash
# Creates .venv (if needed) and installs m2f_hf with everything the demo and the tests use.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev,train,export]"
# panopticapi (reference PQ for the metric tests): its metadata pins numpy<2 although the code works with
# numpy 2, so it is installed without dependencies (it needs only numpy and Pillow).
.venv/bin/python -m pip install -q --no-deps "panopticapi-lite==0.2.0"
