#!/usr/bin/env bash
# Set up the environment and run the bundled demo model on a generated 512 px synthetic scene → out/demo/
# (panoptic, instance and semantic overlays with a legend, JSON results, and a printed summary).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/m2f-hf demo --output out/demo "$@"
