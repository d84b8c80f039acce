# Shared by the bench-*.sh scripts (sourced): release build, a work directory and the
# processes started, both cleaned up on exit, `run` to print and run one bench row, a single
# node (`start_apsis`, `stop_apsis`) and a redis-server to compare with (`need_redis`,
# `start_redis`, `stop_redis`).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
# APSIS=PATH runs another build of the binary (an A/B of two builds) instead of building.
if [ -z "${APSIS:-}" ]; then
    cargo build --release -p apsis >/dev/null
    APSIS=./target/release/apsis
fi
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
run() { echo "\$ apsis bench $*"; $APSIS bench "$@"; }

# Installs redis-server (Debian) when missing.
need_redis() {
    if ! command -v redis-server >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
    fi
}
# Starts redis-server on a random port: $1 = appendfsync policy, or "off" (no persistence).
# Sets REDIS_PID and REDIS_ADDR. A port found taken (redis exits) is retried with another.
start_redis() {
    local port persist=(--appendonly no)
    [ "$1" = off ] || persist=(--appendonly yes --appendfsync "$1")
    for _ in 1 2 3 4 5; do
        rm -rf "$WORK/redis"; mkdir -p "$WORK/redis"
        # Below the ephemeral range (32768 up by default), where connections take ports.
        port=$((10000 + RANDOM % 20000))
        redis-server --port "$port" --dir "$WORK/redis" --save '' "${persist[@]}" --daemonize no >/dev/null &
        REDIS_PID=$!
        PIDS+=($REDIS_PID)
        REDIS_ADDR=127.0.0.1:$port
        for _ in $(seq 100); do
            redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
            kill -0 "$REDIS_PID" 2>/dev/null || break
            sleep 0.05
        done
        kill "$REDIS_PID" 2>/dev/null || true
    done
    echo "redis-server did not start (5 ports tried)" >&2
    return 1
}
stop_redis() { kill "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null || true; }

# Starts a fresh single node: $1 = sync, $2 = binary (default $APSIS), $3 = a name for its
# files in $WORK (default apsis). Sets APSIS_PID and APSIS_ADDR.
start_apsis() {
    local bin=${2:-$APSIS} name=${3:-apsis}
    rm -rf "$WORK/$name"
    APSIS_LOG=warn "$bin" server --listen 127.0.0.1:0 --data "$WORK/$name" --sync "$1" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    APSIS_PID=$!
    PIDS+=($APSIS_PID)
    for _ in $(seq 100); do grep -q listening "$WORK/$name.out" && break; sleep 0.05; done
    APSIS_ADDR=$(awk '/listening/ {print $2; exit}' "$WORK/$name.out")
}
stop_apsis() { kill "$APSIS_PID"; wait "$APSIS_PID" 2>/dev/null || true; }
