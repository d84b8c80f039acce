#!/usr/bin/env bash
# Builds compared on fresh nodes, one at a time (two live nodes disturb each other's writes:
# writeback and freed pages land in the other's runs). For each of N rounds and each binary:
# a new node in a new directory, R runs of `apsis bench` (D seconds each), then the node goes.
#
#   scripts/bench-fresh.sh OLD_BINARY NEW_BINARY ...     (any number of builds)
#   N=2 R=3 D=8 V=1K C=50 K=10000 W=1 S=-1 scripts/bench-fresh.sh A B
#       N rounds, R runs per node, D s per run, V value size, C connections, K keys,
#       W write ratio, S the node's sync setting; CLIENT=session drives the client library
#       instead of the plain protocol loop.
#   V=1M C=8 K=256 scripts/bench-fresh.sh A B            (the 1 MiB WRITE row)
#
# Prints per run: ops/s, the max and p99/p999 latency (us), and the CPU per operation.
set -euo pipefail
N=${N:-2}; R=${R:-3}; D=${D:-8}; V=${V:-1K}; C=${C:-50}; K=${K:-10000}; W=${W:-1}; S=${S:--1}
CLIENT=${CLIENT:-plain}
[ $# -gt 0 ] || { echo "usage: $0 BINARY [BINARY ...]" >&2; exit 2; }
for _ in $(seq "$N"); do
    for bin in "$@"; do
        work=$(mktemp -d)
        APSIS_LOG=warn "$bin" server --listen 127.0.0.1:0 --data "$work/d" --sync "$S" \
            >"$work/out" 2>"$work/err" &
        pid=$!
        for _ in $(seq 100); do grep -q listening "$work/out" && break; sleep 0.05; done
        addr=$(awk '/listening/ {print $2; exit}' "$work/out")
        for _ in $(seq "$R"); do
            "$bin" bench --target apsis --client "$CLIENT" -r "$addr" --server-pid "$pid" \
                --connections "$C" --value-size "$V" --keys "$K" --write-ratio "$W" \
                --duration "$D" |
                awk -v b="$bin" '/ops\/s/ {
                        for (i = 1; i <= NF; i++) {
                            if ($i == "ops/s,") ops = $(i - 1)
                            if ($i == "p99") p99 = $(i + 1)
                            if ($i == "p999") p999 = $(i + 1)
                            if ($i == "max") max = $(i + 1)
                        }
                        printf "%s: %s ops/s, latency us p99 %s p999 %s max %s\n", b, ops, p99, p999, max
                    }
                    /cpu us\/op/ { print "   " $0 }'
        done
        kill "$pid"; wait "$pid" 2>/dev/null || true
        rm -rf "$work"
    done
done
