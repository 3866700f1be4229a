#!/usr/bin/env bash
# System tools the test suite drives for real: Debian's Chromium (browser tests) and
# docker-compose (validates docker-compose.yml; no Docker engine runs here).
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The SGLang server's own venv (tests/engine/test_sglang.py); a no-op when already built.
bash "$(dirname "$0")/install-sglang.sh"
