#!/usr/bin/env bash
# Two builds of the load tool side by side, driving the same node (the first build's) and the
# same redis-server: what a change to `apsis bench` itself does to each target. 1 KiB runs,
# 50 connections, alternating old plain, old redis, new plain, new redis in every round; then
# each row's mean. Each line: ops/s, the CPU per request (tool and server), the host's idle
# share and the sleeps per request of each side.
#
#   scripts/bench-tools.sh OLD_BINARY NEW_BINARY [SECONDS]   (6 s per run)
#   R=5 W=1 scripts/bench-tools.sh OLD NEW                   (R: rounds, default 3; W: write
#                                                            ratio, default 0)
OLD=$(realpath "$1"); NEW=$(realpath "$2")
shift 2
set -- "${1:-6}"
APSIS=$OLD
source "$(dirname "$0")/bench-lib.sh"
W=${W:-0}; R=${R:-3}
need_redis
start_apsis -1
start_redis off
one() { # binary bench-args...
    local bin=$1; shift
    "$bin" bench "$@" --connections 50 --value-size 1K --keys 10000 --write-ratio "$W" \
        --duration "$SECS" 2>/dev/null | tr '\n' ' ' | awk '{
            for (i = 1; i < NF; i++) if ($(i + 1) ~ /^ops\/s/) o = $i
            match($0, /total [0-9.]+; host idle [0-9.]+%/); a = substr($0, RSTART, RLENGTH)
            match($0, /sleeps\/op: tool [0-9.]+, server [0-9.]+/)
            print o, a, substr($0, RSTART, RLENGTH) }'
}
for _ in $(seq "$R"); do
    for who in old new; do
        bin=$OLD; [ "$who" = new ] && bin=$NEW
        echo "$who plain $(one "$bin" --target apsis --client plain -r "$APSIS_ADDR" --server-pid "$APSIS_PID")"
        echo "$who redis $(one "$bin" --target redis --redis "$REDIS_ADDR" --server-pid "$REDIS_PID")"
    done
done | tee "$WORK/rows"
awk '{ s[$1 " " $2] += $3; n[$1 " " $2]++ }
     END { for (k in s) printf "%s: mean %.0f ops/s over %d runs\n", k, s[k] / n[k], n[k] }' "$WORK/rows" | sort
