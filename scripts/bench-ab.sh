#!/usr/bin/env bash
# Two builds side by side, each as its own server and load tool, and redis-server in every
# round: 1 KiB GET (or SET) runs alternating A, B, redis; prints ops/s and CPU per request
# (server user+system from /proc/PID/stat, load tool from time(1)), then the medians.
#
#   scripts/bench-ab.sh A_BINARY [SECONDS]            (B: this tree's release build, or
#                                                     APSIS=B_BINARY; 3 s per run)
#   W=1 R=5 scripts/bench-ab.sh /tmp/apsis-old        (W: write ratio, R: rounds, default 3)
#   S=0 W=1 scripts/bench-ab.sh /tmp/apsis-old        (S: the nodes' sync, default -1; with 0,
#                                                     redis runs with appendfsync always)
#   C=plain scripts/bench-ab.sh /tmp/apsis-old        (C: `apsis bench --client` for the two
#                                                     builds, default the tool's own: session)
A=$(realpath "$1")
shift
set -- "${1:-3}"
source "$(dirname "$0")/bench-lib.sh"
B=$(realpath "$APSIS")
W=${W:-0}; R=${R:-3}; S=${S:--1}
CLIENT=()
[ -n "${C:-}" ] && CLIENT=(--client "$C")
need_redis
start_apsis "$S" "$A" a; A_PID=$APSIS_PID; A_ADDR=$APSIS_ADDR
start_apsis "$S" "$B" b; B_PID=$APSIS_PID; B_ADDR=$APSIS_ADDR
if [ "$S" = 0 ]; then start_redis always; else start_redis off; fi
# Untimed fills (the runs read existing keys).
"$A" bench -r "$A_ADDR" --duration 0.3 >/dev/null 2>&1
"$B" bench -r "$B_ADDR" --duration 0.3 >/dev/null 2>&1
"$A" bench --target redis --redis "$REDIS_ADDR" --duration 0.3 >/dev/null 2>&1
one() { # label binary server-pid bench-args...
    local label=$1 bin=$2 pid=$3; shift 3
    local u0 s0 u1 s1 cu cs ops
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    /usr/bin/time -f "%U %S" -o "$WORK/time" "$bin" bench "$@" --connections 50 --value-size 1K \
        --keys 10000 --write-ratio "$W" --duration "$SECS" --no-prefill >"$WORK/run" 2>/dev/null
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    read -r cu cs <"$WORK/time"
    ops=$(grep -o '[0-9.]* ops/s' "$WORK/run" | head -1 | cut -d' ' -f1)
    awk -v l="$label" -v o="$ops" -v n="$SECS" -v su=$((u1 - u0)) -v ss=$((s1 - s0)) -v cu="$cu" -v cs="$cs" \
        -v hz="$(getconf CLK_TCK)" 'BEGIN { t = o * n; printf "%-5s %7.0f ops/s  CPU per request %5.2f us: server user %4.2f sys %4.2f, load tool user %4.2f sys %4.2f\n",
            l, o, (su + ss) * 1e6 / hz / t + (cu + cs) * 1e6 / t, su * 1e6 / hz / t, ss * 1e6 / hz / t, cu * 1e6 / t, cs * 1e6 / t }' | tee -a "$WORK/res"
}
for _ in $(seq "$R"); do
    one A "$A" "$A_PID" -r "$A_ADDR" "${CLIENT[@]}"
    one B "$B" "$B_PID" -r "$B_ADDR" "${CLIENT[@]}"
    one redis "$A" "$REDIS_PID" --target redis --redis "$REDIS_ADDR"
done
median() { awk -v l="$1" -v f="$2" '$1 == l {print $f}' "$WORK/res" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
for l in A B redis; do
    echo "median $l: $(median $l 2) ops/s, $(median $l 7) us of CPU per request"
done
