#!/usr/bin/env bash
# Two builds side by side, each as its own server and load tool, and redis-server in every
# round: 1 KiB GET (or SET) runs alternating A, B, redis; prints ops/s and CPU per request
# (server user+system from /proc/PID/stat, load tool from time(1)), then the medians.
#
#   scripts/bench-ab.sh A_BINARY [B_BINARY] [SECONDS]   (B: this tree's release build; 3 s)
#   W=1 R=5 scripts/bench-ab.sh /tmp/apsis-old          (W: write ratio, R: rounds, default 3)
set -euo pipefail
A=$(realpath "$1")
cd "$(dirname "$0")/.."
if [ -n "${2:-}" ]; then B=$(realpath "$2"); else
    cargo build --release -p apsis >/dev/null
    B=$PWD/target/release/apsis
fi
N=${3:-3}; W=${W:-0}; R=${R:-3}
command -v redis-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
start() { # binary name -> address; pid in $WORK/name.pid
    APSIS_LOG=warn "$1" server --listen 127.0.0.1:0 --data "$WORK/$2" --sync -1 >"$WORK/$2.out" 2>"$WORK/$2.err" &
    PIDS+=($!); echo $! >"$WORK/$2.pid"
    for _ in $(seq 100); do grep -q listening "$WORK/$2.out" && break; sleep 0.05; done
    awk '/listening/ {print $2; exit}' "$WORK/$2.out"
}
AA=$(start "$A" a); BA=$(start "$B" b)
PORT=$((20000 + RANDOM % 20000))
redis-server --port "$PORT" --save '' --appendonly no --daemonize no >/dev/null &
PIDS+=($!); RP=$!
for _ in $(seq 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
# Untimed fills (the runs read existing keys).
"$A" bench -r "$AA" --duration 0.3 >/dev/null 2>&1
"$B" bench -r "$BA" --duration 0.3 >/dev/null 2>&1
"$A" bench --target redis --redis "127.0.0.1:$PORT" --duration 0.3 >/dev/null 2>&1
one() { # label binary server-pid bench-args...
    local label=$1 bin=$2 pid=$3; shift 3
    local u0 s0 u1 s1 cu cs ops
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    /usr/bin/time -f "%U %S" -o "$WORK/time" "$bin" bench "$@" --connections 50 --value-size 1K \
        --keys 10000 --write-ratio "$W" --duration "$N" --no-prefill >"$WORK/run" 2>/dev/null
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    read -r cu cs <"$WORK/time"
    ops=$(grep -o '[0-9.]* ops/s' "$WORK/run" | head -1 | cut -d' ' -f1)
    awk -v l="$label" -v o="$ops" -v n="$N" -v su=$((u1 - u0)) -v ss=$((s1 - s0)) -v cu="$cu" -v cs="$cs" \
        -v hz="$(getconf CLK_TCK)" 'BEGIN { t = o * n; printf "%-5s %7.0f ops/s  CPU per request %5.2f us: server user %4.2f sys %4.2f, load tool user %4.2f sys %4.2f\n",
            l, o, (su + ss) * 1e6 / hz / t + (cu + cs) * 1e6 / t, su * 1e6 / hz / t, ss * 1e6 / hz / t, cu * 1e6 / t, cs * 1e6 / t }' | tee -a "$WORK/res"
}
for _ in $(seq "$R"); do
    one A "$A" "$(cat "$WORK/a.pid")" -r "$AA"
    one B "$B" "$(cat "$WORK/b.pid")" -r "$BA"
    one redis "$A" "$RP" --target redis --redis "127.0.0.1:$PORT"
done
for l in A B redis; do
    ops=$(awk -v l=$l '$1 == l {print $2}' "$WORK/res" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}')
    cpu=$(awk -v l=$l '$1 == l {print $7}' "$WORK/res" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}')
    echo "median $l: $ops ops/s, $cpu us of CPU per request"
done
