#!/usr/bin/env bash
# kaizen serve vs llama.cpp's llama-server: OpenAI-compatible serving throughput on CPU, same
# model (SmolLM2-135M-Instruct), same prompts, same max_tokens, same concurrency levels.
#
#   scripts/bench/serve.sh                      # both servers at concurrency 1, 8, 64
#   SERVE_BENCH_LEVELS="1 8" SERVE_BENCH_REQUESTS_PER_CLIENT=1 SERVE_BENCH_MIN_REQUESTS=8 \
#       scripts/bench/serve.sh                  # a quick run
#   SERVE_BENCH_BUILD_ONLY=1 scripts/bench/serve.sh   # only build (and cache) llama-server
#
# The servers run one after the other, never both at once (the machine has 2 cores).
#
# Environment (defaults in brackets):
#   SERVE_BENCH_LEVELS                concurrency levels                       ["1 8 64"]
#   SERVE_BENCH_REQUESTS_PER_CLIENT   requests each client sends per level    [4]
#   SERVE_BENCH_MIN_REQUESTS          at least this many requests per level   [32]
#   SERVE_BENCH_MAX_TOKENS            max_tokens of every request              [64]
#   SERVE_BENCH_TEMPERATURE           0 = greedy                              [0]
#   SERVE_BENCH_SEED                  request k is sent with seed SEED+k (for sampling) [unset]
#   SERVE_BENCH_STREAM                1: stream (SSE) and measure time to first token [0]
#   SERVE_BENCH_CHAT                  1: /v1/chat/completions, 0: /v1/completions [1]
#   SERVE_BENCH_THREADS               compute threads of each server          [2]
#   SERVE_BENCH_SERVERS               which servers, in order                 ["kaizen llamacpp"]
#   SERVE_BENCH_LLAMACPP              server: llama.cpp's own llama-server (continuous batching);
#                                     python: llama-cpp-python[server] (serialises requests) [server]
#   SERVE_BENCH_LLAMACPP_SLOTS        llama-server --parallel (requests decoded together)
#                                     [largest level, at most 16]
#   SERVE_BENCH_LLAMACPP_ARGS         extra flags for the llama.cpp server, e.g. --no-cache-prompt []
#   SERVE_BENCH_SKIP_CARGO            1: use the kaizen binary as built, no `cargo build` [0]
#   SERVE_BENCH_OUT                   folder for the JSON summaries and server logs
#                                     [$KAIZEN_CACHE/bench/serve/<timestamp>]
#   CMAKE_BUILD_PARALLEL_LEVEL        compile jobs for the one-off llama-server build [1]
#
# llama-server is built once from the llama.cpp source that the PyPI sdist of
# llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION vendors (ggml-org/llama.cpp@$LLAMA_CPP_COMMIT), with
# GGML_NATIVE (the host's AVX2 / AVX-512), under nice, and cached under
# $KAIZEN_CACHE/llama.cpp/ keyed by version and the CPU's flags.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/venv.sh

LLAMA_CPP_PYTHON_VERSION="0.3.36"
LLAMA_CPP_PYTHON_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
LLAMA_CPP_COMMIT="0c1e57098"
CMAKE_REQ="cmake==4.4.5"
HTTPX_REQ="httpx==0.28.1"

read -r -a LEVELS <<<"${SERVE_BENCH_LEVELS:-1 8 64}"
REQUESTS_PER_CLIENT="${SERVE_BENCH_REQUESTS_PER_CLIENT:-4}"
MIN_REQUESTS="${SERVE_BENCH_MIN_REQUESTS:-32}"
MAX_TOKENS="${SERVE_BENCH_MAX_TOKENS:-64}"
TEMPERATURE="${SERVE_BENCH_TEMPERATURE:-0}"
STREAM="${SERVE_BENCH_STREAM:-0}"
CHAT="${SERVE_BENCH_CHAT:-1}"
THREADS="${SERVE_BENCH_THREADS:-2}"
SERVERS="${SERVE_BENCH_SERVERS:-kaizen llamacpp}"
read -r -a SERVER_LIST <<<"$SERVERS"
LLAMACPP_IMPL="${SERVE_BENCH_LLAMACPP:-server}"
read -r -a LLAMACPP_ARGS <<<"${SERVE_BENCH_LLAMACPP_ARGS:-}"
OUT="${SERVE_BENCH_OUT:-$KAIZEN_CACHE/bench/serve/$(date +%Y%m%d-%H%M%S)}"
KAIZEN_BIN="${CARGO_TARGET_DIR:-target}/release/kaizen"

# llama-server's slots (requests decoded together; more clients queue): the largest level, at
# most 16. On the 2-vCPU AMD EPYC (AVX-512) at concurrency 64, 16 slots gave the most tokens/s:
# --parallel 8 / 16 / 32 / 64 -> 201 / 210 / 196 / 153 completion tokens/s.
max_level=1
for c in "${LEVELS[@]}"; do
    if ((c > max_level)); then max_level=$c; fi
done
LLAMACPP_SLOTS="${SERVE_BENCH_LLAMACPP_SLOTS:-$((max_level < 16 ? max_level : 16))}"
# Context per request: the chat-templated prompt (< 100 tokens) plus max_tokens, with room.
CTX_PER_SLOT=$(((MAX_TOKENS + 192 + 127) / 128 * 128))

cpu_flags() { grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -x -E 'avx2|avx512f|avx512bw|avx512vl|avx512_vnni|avx512_bf16|fma|f16c' | sort | tr '\n' ' '; }

# Builds llama-server (once) and prints its path. Progress and the compiler go to stderr.
llama_server_bin() {
    local key dir
    key=$(printf '%s\n' "$LLAMA_CPP_PYTHON_VERSION" "$CMAKE_REQ" "$(cpu_flags)" "$(gcc -dumpfullversion)" | sha256sum | cut -c1-12)
    dir="$KAIZEN_CACHE/llama.cpp/llama-server-$LLAMA_CPP_PYTHON_VERSION-$key"
    if [[ ! -x "$dir/bin/llama-server" || ! -f "$dir/.complete" ]]; then
        local cmake_py cmake sdist
        cmake_py=$(kaizen_venv llamacpp-build "$CMAKE_REQ")
        cmake="$(dirname "$cmake_py")/cmake"
        echo "kaizen: building llama-server into $dir (once; nice -n 19, ${CMAKE_BUILD_PARALLEL_LEVEL:-1} job(s))" >&2
        rm -rf "$dir"
        mkdir -p "$dir/bin"
        python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
            "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$dir" >&2
        sdist="$dir/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
        echo "$LLAMA_CPP_PYTHON_SHA256  $sdist" | sha256sum --check --status || {
            echo "kaizen: checksum mismatch for $sdist" >&2
            return 1
        }
        tar -xzf "$sdist" -C "$dir" "llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
        local src="$dir/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
        # Offline: no prebuilt web UI download (the server's API does not need it), no OpenSSL.
        nice -n 19 "$cmake" -S "$src" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release \
            -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF \
            -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
            -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF \
            -DLLAMA_BUILD_COMMIT="$LLAMA_CPP_COMMIT" >&2
        nice -n 19 "$cmake" --build "$dir/build" --target llama-server \
            -j "${CMAKE_BUILD_PARALLEL_LEVEL:-1}" >&2
        cp "$dir/build/bin/llama-server" "$dir/bin/"
        rm -rf "$dir/build" "$dir/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION" "$sdist"
        touch "$dir/.complete"
    fi
    echo "$dir/bin/llama-server"
}

# The llama-cpp-python[server] venv (compiles llama.cpp once, under nice); prints its python.
llama_cpp_python_py() {
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-1}" \
        CMAKE_ARGS="-DGGML_NATIVE=ON ${CMAKE_ARGS:-}" nice -n 19 \
        bash -c 'source scripts/lib/venv.sh; kaizen_venv "$@"' _ llamacpp-python \
        "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

server_pid=""
server_url=""
stop_server() {
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
trap stop_server EXIT

# Waits until GET $1/models answers 200 (the model is loaded), or fails after $2 seconds.
wait_ready() {
    local url="$1" deadline=$((SECONDS + $2))
    until curl -sf -o /dev/null "$url/models"; do
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "kaizen: the server exited before it was ready" >&2
            return 1
        fi
        if ((SECONDS > deadline)); then
            echo "kaizen: the server was not ready within $2 s" >&2
            return 1
        fi
        sleep 0.5
    done
}

# Starts server $1 in the background; sets server_pid and server_url (its base URL, …/v1).
start_server() {
    local name="$1" log="$OUT/$1.server.log" port
    case "$name" in
        kaizen)
            echo "\$ $KAIZEN_BIN serve smollm2 --port 0  (RAYON_NUM_THREADS=$THREADS)"
            RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" \
                "$KAIZEN_BIN" serve smollm2 --port 0 >"$log" 2>&1 &
            server_pid=$!
            local deadline=$((SECONDS + 120))
            until port=$(grep -m1 -o -E 'listening on http://127\.0\.0\.1:[0-9]+' "$log" | grep -o -E '[0-9]+$'); do
                if ! kill -0 "$server_pid" 2>/dev/null || ((SECONDS > deadline)); then
                    echo "kaizen: kaizen serve did not report its port; log:" >&2
                    cat "$log" >&2
                    return 1
                fi
                sleep 0.2
            done
            ;;
        llamacpp)
            port=$(free_port)
            local cmd
            if [[ "$LLAMACPP_IMPL" == server ]]; then
                # LLAMACPP_SLOTS slots, each with CTX_PER_SLOT tokens of KV cache; continuous
                # batching (on by default) decodes all active slots in one batch each step, and
                # new prompts are prefilled in the same batches.
                cmd=("$LLAMA_SERVER" --model "$GGUF" --host 127.0.0.1 --port "$port"
                    --threads "$THREADS" --threads-batch "$THREADS"
                    --parallel "$LLAMACPP_SLOTS" --ctx-size $((LLAMACPP_SLOTS * CTX_PER_SLOT))
                    --cont-batching --no-webui "${LLAMACPP_ARGS[@]}")
            else
                # llama-cpp-python's server runs one request at a time (a lock around the model);
                # interrupt_requests=False so a queued request does not cut a running stream short.
                cmd=("$LLAMA_PY" -m llama_cpp.server --model "$GGUF" --host 127.0.0.1 --port "$port"
                    --n_threads "$THREADS" --n_threads_batch "$THREADS" --n_ctx 2048
                    --interrupt_requests False "${LLAMACPP_ARGS[@]}")
            fi
            echo "\$ ${cmd[*]}"
            "${cmd[@]}" >"$log" 2>&1 &
            server_pid=$!
            ;;
        *)
            echo "kaizen: unknown server $name" >&2
            return 1
            ;;
    esac
    server_url="http://127.0.0.1:$port/v1"
    if ! wait_ready "$server_url" 300; then
        cat "$log" >&2
        return 1
    fi
}

echo "== CPU: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p'), $(nproc) cores; flags: $(cpu_flags)"

if [[ " $SERVERS " == *" llamacpp "* ]]; then
    if [[ "$LLAMACPP_IMPL" == server ]]; then
        LLAMA_SERVER=$(llama_server_bin)
        echo "== llama.cpp: $LLAMA_SERVER (llama.cpp@$LLAMA_CPP_COMMIT, from llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION's sdist)"
    else
        LLAMA_PY=$(llama_cpp_python_py)
        echo "== llama.cpp: llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION ($LLAMA_PY)"
    fi
fi
[[ "${SERVE_BENCH_BUILD_ONLY:-0}" == 1 ]] && exit 0

GGUF=$(scripts/fetch_model.sh)
PY=$(kaizen_venv serve-bench "$HTTPX_REQ")
if [[ " $SERVERS " == *" kaizen "* && "${SERVE_BENCH_SKIP_CARGO:-0}" != 1 ]]; then
    cargo build --release --quiet --bin kaizen
fi
mkdir -p "$OUT"

load_args=(--concurrency "${LEVELS[@]}" --requests-per-client "$REQUESTS_PER_CLIENT"
    --min-requests "$MIN_REQUESTS" --max-tokens "$MAX_TOKENS" --temperature "$TEMPERATURE")
[[ "$CHAT" == 1 ]] && load_args+=(--chat)
[[ "$STREAM" == 1 ]] && load_args+=(--stream)
[[ -n "${SERVE_BENCH_SEED:-}" ]] && load_args+=(--seed "$SERVE_BENCH_SEED")

for name in "${SERVER_LIST[@]}"; do
    echo
    echo "== $name (max_tokens $MAX_TOKENS, temperature $TEMPERATURE, threads $THREADS)"
    start_server "$name"
    "$PY" scripts/bench/serve_load.py --base-url "$server_url" --label "$name" "${load_args[@]}" \
        --json "$OUT/$name.json"
    stop_server
done

if [[ " $SERVERS " == *" kaizen "* && " $SERVERS " == *" llamacpp "* ]]; then
    echo
    echo "== kaizen / llama.cpp"
    "$PY" scripts/bench/serve_load.py --compare "$OUT/kaizen.json" "$OUT/llamacpp.json"
fi
echo "summaries and server logs: $OUT"
