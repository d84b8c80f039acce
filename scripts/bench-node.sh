#!/usr/bin/env bash
# Side-by-side load: `apsis bench` against an Apsis node and against redis-server (Debian),
# same tool, same load. Figures go to docs/benchmarks.md.
#
#   scripts/bench-node.sh [SECONDS]      (default 10 s per run)
#   ROUNDS=5 scripts/bench-node.sh 8     (1 KiB rows: apsis and redis alternate ROUNDS times,
#                                          default 3; the medians and their ratio are printed)
#   ROWS=durable scripts/bench-node.sh   (only some rows: any of "memory durable large";
#                                          default all three)
#
# Each run also prints the CPU time per operation of the load tool and of the server (user and
# system, `--server-pid`); on a machine where both share the cores, throughput is the cores
# over their sum, so this shows which side a difference comes from.
#
# Needs redis-server (installed here with apt-get when missing).
source "$(dirname "$0")/bench-lib.sh"
need_redis

ROUNDS=${ROUNDS:-3}
# One run; prints its lines, appends its ops/s to the file $1 and its CPU per operation (tool
# and server together, us) to $1.cpu.
run_ops() {
    local into=$1; shift
    local out; out=$(run "$@")
    echo "$out"
    grep -o '[0-9.]* ops/s' <<<"$out" | cut -d' ' -f1 >>"$into"
    grep -o 'total [0-9.]*' <<<"$out" | cut -d' ' -f2 >>"$into.cpu"
}
median() { sort -n "$1" | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
# The same load on both targets, alternating ROUNDS times (the machine's noise moves both
# alike within a pair); prints the medians and the ratio.
pair() {
    rm -f "$WORK/a" "$WORK/a.cpu" "$WORK/r" "$WORK/r.cpu"
    for _ in $(seq "$ROUNDS"); do
        run_ops "$WORK/a" --target apsis -r "$APSIS_ADDR" --server-pid "$APSIS_PID" "$@"
        run_ops "$WORK/r" --target redis --redis "$REDIS_ADDR" --server-pid "$REDIS_PID" "$@"
    done
    local a r ac rc; a=$(median "$WORK/a"); r=$(median "$WORK/r")
    ac=$(median "$WORK/a.cpu"); rc=$(median "$WORK/r.cpu")
    awk -v a="$a" -v r="$r" -v ac="$ac" -v rc="$rc" -v n="$ROUNDS" 'BEGIN {printf "median of %d: apsis %.0f ops/s, redis %.0f ops/s, ratio %.2fx; cpu us/op (tool + server) apsis %.1f, redis %.1f\n", n, a, r, a/r, ac, rc}'
}

ROWS=${ROWS:-memory durable large}
want() { [[ " $ROWS " == *" $1 "* ]]; }

if want memory; then
echo "## 50 connections, 1 KiB values, sync=-1 vs Redis without persistence"
start_apsis -1; start_redis off
pair --connections 50 --value-size 1K --keys 10000 --write-ratio 0 --duration "$SECS"
pair --connections 50 --value-size 1K --keys 10000 --write-ratio 1 --duration "$SECS"
stop_apsis; stop_redis
fi

if want durable; then
echo "## 50 connections, 1 KiB SET, durable: sync=0 vs Redis appendfsync always"
start_apsis 0; start_redis always
pair --connections 50 --value-size 1K --keys 10000 --write-ratio 1 --duration "$SECS"
stop_apsis; stop_redis
fi

if want large; then
echo "## 1 MiB values over loopback"
start_apsis -1
run --target apsis -r "$APSIS_ADDR" --server-pid "$APSIS_PID" --connections 8 --value-size 1M --keys 256 --write-ratio 0 --duration "$SECS"
run --target apsis -r "$APSIS_ADDR" --server-pid "$APSIS_PID" --connections 8 --value-size 1M --keys 256 --write-ratio 1 --duration "$SECS"
stop_apsis
fi
