#!/usr/bin/env bash
# Set up the environment and segment a bundled photo with the embedded default model → out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/m2f-hf demo --output out/demo "$@"
