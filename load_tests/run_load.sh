#!/usr/bin/env bash
# `make load`: start a WiCore server on a free loopback port, run the locust test headless for a
# bounded time, stop the server. Exit status: locust's (non-zero when any request failed).
#   PY          python of the project venv (default .venv/bin/python)
#   LOCUST_ARGS locust's load shape (default: -u 8 -r 2 -t 60s)
#   LOCUST      locust command (default: "$PY -m locust", installed from the `load` extra if missing)
# The server gets WICORE_API__RATE_LIMIT_PER_MINUTE=0 unless set: every locust user shares one IP,
# which the default per-client limit (100/min) would otherwise turn into mostly 429s.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
read -r -a shape <<<"${LOCUST_ARGS:--u 8 -r 2 -t 60s}"
if [ -z "${LOCUST:-}" ]; then
  "$PY" -c 'import locust' 2>/dev/null || "$PY" -m pip install --quiet -e '.[load]'
  LOCUST="$PY -m locust"
fi

port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
log=$(mktemp -t wicore-load-serve.XXXXXX)
WICORE_API__RATE_LIMIT_PER_MINUTE=${WICORE_API__RATE_LIMIT_PER_MINUTE:-0} \
  "$PY" -m wicore.cli serve --host 127.0.0.1 --port "$port" >"$log" 2>&1 &
server=$!
stop_server() {
  kill "$server" 2>/dev/null || true
  for _ in $(seq 40); do kill -0 "$server" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -f "$log"
}
trap stop_server EXIT

echo "waiting for $url/health (server log: $log)"
for _ in $(seq 300); do
  if ! kill -0 "$server" 2>/dev/null; then
    echo "server exited during start-up:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
  if "$PY" -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('$url/health', timeout=2).status != 200)" 2>/dev/null; then
    break
  fi
  sleep 1
done
"$PY" -c "import urllib.request; urllib.request.urlopen('$url/health', timeout=2)" 2>/dev/null \
  || { echo "server not healthy after 300 s:" >&2; tail -n 30 "$log" >&2; exit 1; }

# shellcheck disable=SC2086  # LOCUST is a command line
$LOCUST -f load_tests/locustfile.py --headless "${shape[@]}" --host "$url" --stop-timeout 30
