# shellcheck shell=bash
# A lean MLflow tracking server for tests and benchmarks (measured flags:
# shared/refs/mlflow-rest.md): one uvicorn worker, no job runner, SQLite backend, artifacts
# proxied to a local directory.
#
#   source scripts/lib/venv.sh scripts/lib/mlflow.sh
#   py=$(kaizen_venv mlflow "mlflow==3.17.2")
#   kaizen_mlflow_start "$py" "$(mktemp -d)"     # sets KAIZEN_MLFLOW_URI and KAIZEN_MLFLOW_PID
#   trap kaizen_mlflow_stop EXIT
#
# The server runs in its own session (setsid), so stopping it signals its whole process tree.
# Its log is $KAIZEN_MLFLOW_DIR/server.log.

KAIZEN_MLFLOW_PID=""
KAIZEN_MLFLOW_URI=""
KAIZEN_MLFLOW_DIR=""

# kaizen_mlflow_start PYTHON DIR [PORT]: start a server on 127.0.0.1 (a free port by default)
# with its database and artifacts in DIR, and wait for /health (up to 120 s).
kaizen_mlflow_start() {
    local py="$1" dir="$2" port="${3:-}"
    if [[ -z "$port" ]]; then
        port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    fi
    mkdir -p "$dir/artifacts"
    KAIZEN_MLFLOW_DIR="$dir"
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$py" -m mlflow server \
        --backend-store-uri "sqlite:///$dir/mlflow.db" \
        --artifacts-destination "$dir/artifacts" \
        --host 127.0.0.1 --port "$port" --workers 1 \
        >"$dir/server.log" 2>&1 </dev/null &
    KAIZEN_MLFLOW_PID=$!
    KAIZEN_MLFLOW_URI="http://127.0.0.1:$port"
    if ! kaizen_mlflow_wait "$py" "$KAIZEN_MLFLOW_URI" 120; then
        echo "kaizen: MLflow server did not come up at $KAIZEN_MLFLOW_URI; its log:" >&2
        tail -n 40 "$dir/server.log" >&2
        kaizen_mlflow_stop
        return 1
    fi
    echo "kaizen: MLflow server up at $KAIZEN_MLFLOW_URI (pid $KAIZEN_MLFLOW_PID, dir $dir)" >&2
}

# kaizen_mlflow_wait PYTHON URI SECONDS: poll URI/health until it answers 200.
kaizen_mlflow_wait() {
    local py="$1" uri="$2" seconds="$3"
    local deadline=$((SECONDS + seconds))
    while ((SECONDS < deadline)); do
        if [[ -n "$KAIZEN_MLFLOW_PID" ]] && ! kill -0 "$KAIZEN_MLFLOW_PID" 2>/dev/null; then
            return 1
        fi
        if "$py" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/health", timeout=2)' "$uri" 2>/dev/null; then
            return 0
        fi
        sleep 0.5
    done
    return 1
}

# kaizen_mlflow_stop: SIGTERM the server's process group, SIGKILL it after 10 s. Safe to call
# twice or when nothing was started.
kaizen_mlflow_stop() {
    local pid="$KAIZEN_MLFLOW_PID"
    [[ -n "$pid" ]] || return 0
    KAIZEN_MLFLOW_PID=""
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || return 0
    local i
    for i in $(seq 1 40); do
        kill -0 -- "-$pid" 2>/dev/null || return 0
        sleep 0.25
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
}
