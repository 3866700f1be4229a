#!/usr/bin/env bash
# Starts a real SGLang server on CPU from the venv scripts/install-sglang.sh builds:
#   scripts/sglang-cpu-server.sh MODEL_DIR [more sglang.launch_server flags, e.g. --port 30000]
# SGLang's CPU engine (SGLANG_USE_CPU_ENGINE=1) with pure-torch attention and sampling, no CUDA
# graphs, no overlap scheduling; scripts/sglang_cpu on PYTHONPATH stands in for the one op of
# the CPU kernel package that no installable wheel provides (see its docstring), and
# workers/engines/server_site grants AMX permission (bf16 on AMX CPUs).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
SGLANG_VENV=${SGLANG_VENV:-$here/../var/sglang-venv}
[ $# -ge 1 ] || { echo "usage: $0 MODEL_DIR [sglang flags...]" >&2; exit 2; }
model=$1
shift
export SGLANG_USE_CPU_ENGINE=1
# server_site's sitecustomize asks for AMX permission in every server process (bf16 dies with
# "Illegal instruction" on AMX CPUs without it), as for the vLLM servers the tests start.
export PYTHONPATH="$here/sglang_cpu:$here/../workers/engines/server_site${PYTHONPATH:+:$PYTHONPATH}"
exec "$SGLANG_VENV/bin/python" -m sglang.launch_server --model-path "$model" --device cpu \
  --attention-backend torch_native --sampling-backend pytorch --disable-overlap-schedule \
  --cuda-graph-backend-decode disabled --cuda-graph-backend-prefill disabled "$@"
