#!/usr/bin/env bash
# Runs the whole product in the foreground: daphne (HTTP + websockets), a Celery worker on
# queue "gpu" (solo pool: vLLM spawns its engine process) and one on queue "default" with
# the beat scheduler. Ctrl-C stops everything this script started.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
mkdir -p var/log

pids=()
stop() {
  trap - INT TERM EXIT
  echo; echo "stopping…"
  kill "${pids[@]}" 2>/dev/null
  wait "${pids[@]}" 2>/dev/null
  exit 0
}
trap stop INT TERM EXIT

if [ "${DEMO:-0}" = 1 ] && [ -f var/demo-receiver-secret ]; then
  # The demo's alert endpoint: a local receiver that checks each delivery's signature.
  export WEBHOOK_ALLOWED_HOSTS=${WEBHOOK_ALLOWED_HOSTS:-127.0.0.1}
  RECEIVER_PORT=${DEMO_RECEIVER_PORT:-8001}
  "$PY" -m dashboard.demo.receiver --port "$RECEIVER_PORT" \
    --secret "$(cat var/demo-receiver-secret)" >var/log/webhook-receiver.log 2>&1 &
  pids+=($!)
fi
"$PY" -m daphne -b "$HOST" -p "$PORT" dashboard.asgi:application >var/log/web.log 2>&1 &
pids+=($!)
"$PY" -m celery -A dashboard worker -Q gpu --pool solo --concurrency 1 -n gpu@%h \
  --loglevel INFO >var/log/worker-gpu.log 2>&1 &
pids+=($!)
"$PY" -m celery -A dashboard worker -Q default --concurrency 2 -n default@%h -B \
  --schedule var/celerybeat-schedule --loglevel INFO >var/log/worker-default.log 2>&1 &
pids+=($!)

for _ in $(seq 60); do
  curl -fs "http://$HOST:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.5
done
echo
echo "  Parity is running at http://$HOST:$PORT/   (logs in var/log/, Ctrl-C to stop)"
if [ "${DEMO:-0}" = 1 ]; then
  echo "  Demo alerts go to a local receiver: deliveries on http://$HOST:$PORT/p/demo/alerts/,"
  echo "  what it received in var/log/webhook-receiver.log"
fi
echo
wait -n "${pids[@]}"
echo "a process exited; see var/log/"
stop
