#!/usr/bin/env bash
# Recovery: how long a wiped node takes to be refilled by background dc, and what that costs
# the foreground. Two nodes on loopback: node 1 serves group 1, node 2 group 2. KEYS 1 KiB
# keys are written to both groups; then node 2 is killed, its data deleted (the ids file is
# kept, so it returns at the same ring points) and restarted empty. Background recovery
# (defaults: 20 000 keys/s, 64 MiB/s; interval 5 s here) refills it from node 1 while
# `apsis bench` reads from node 1 — the node recovery reads from. The same read run without
# recovery gives the baseline p99. Figures go to docs/benchmarks.md.
#
#   scripts/bench-recovery.sh [SECONDS] [KEYS]      (defaults: 20 s of reads, 1 000 000 keys)
source "$(dirname "$0")/bench-lib.sh"
KEYS=${2:-1000000}
RATE_KEYS=${RATE_KEYS:-20000}

config() { # $1 = index (= group), $2 = address, $3 = remote or ""
    local remotes=""
    [ -n "$3" ] && remotes="\"$3\""
    mkdir -p "$WORK/n$1"
    cat >"$WORK/n$1/apsis.toml" <<TOML
[node]
addresses = ["$2"]
remotes = [$remotes]
join = true
[recovery]
interval_secs = 5
rate_keys = $RATE_KEYS
[[backend]]
id = 1
group = $1
dir = "$WORK/n$1/b1"
sync = -1
TOML
}
start() { # $1 = index; sets ADDR[$1], PID[$1]
    APSIS_LOG=warn $APSIS server -c "$WORK/n$1/apsis.toml" >"$WORK/n$1/out" 2>>"$WORK/n$1/err" &
    PID[$1]=$!
    PIDS+=($!)
    for _ in $(seq 200); do grep -q listening "$WORK/n$1/out" && break; sleep 0.05; done
    ADDR[$1]=$(awk '/listening/ {print $2; exit}' "$WORK/n$1/out")
}
records() { # records in node $1's backends
    $APSIS stat -r "${ADDR[$1]}" --json --categories 0x10 2>/dev/null | python3 -c '
import json, sys
v = json.loads(sys.stdin.readline())
print(sum(b["backend"]["summary_stats"]["records_total"] - b["backend"]["summary_stats"]["records_removed"] for b in v["backends"].values()))' 2>/dev/null || echo 0
}
declare -A ADDR PID
config 1 127.0.0.1:0 ""
start 1
config 2 127.0.0.1:0 "${ADDR[1]}"
start 2
config 2 "${ADDR[2]}" "${ADDR[1]}"   # node 2 restarts at the same address
sleep 1

echo "## writing $KEYS keys of 1 KiB to groups 1 and 2 (the prefill of a short read run)"
run -r "${ADDR[1]}" -g 1,2 --checker all --connections 50 --value-size 1K --keys "$KEYS" --write-ratio 0 --duration 2
echo "node 2 holds $(records 2) records"
echo "## reads from group 1, no recovery running (baseline)"
run -r "${ADDR[1]}" -g 1 --connections 50 --value-size 1K --keys "$KEYS" --write-ratio 0 --no-prefill --duration "$SECS"

kill -9 "${PID[2]}"; wait "${PID[2]}" 2>/dev/null || true
find "$WORK/n2/b1" -type f ! -name ids -delete
start 2
T0=$(date +%s.%N)
# Recovery starts once the route table has been stable for an interval; read from then on.
while [ "$(records 2)" -eq 0 ]; do sleep 0.2; done
echo "recovery started $(python3 -c "print(f'{$(date +%s.%N) - $T0:.1f}')") s after the restart"
echo "## node 2 wiped and restarted; reads from group 1 while recovery refills it"
run -r "${ADDR[1]}" -g 1 --connections 50 --value-size 1K --keys "$KEYS" --write-ratio 0 --no-prefill --duration "$SECS" &
BENCH=$!
while :; do
    n=$(records 2)
    if [ "$n" -ge "$KEYS" ]; then break; fi
    sleep 0.5
done
T1=$(date +%s.%N)
wait $BENCH
echo "converged: node 2 holds $(records 2) records, $(python3 -c "print(f'{$T1 - $T0:.1f}')") s after its restart"
for i in 1 2; do
    $APSIS stat -r "${ADDR[$i]}" --json --categories 0x20 | python3 -c '
import json, sys
r = json.loads(sys.stdin.readline())["recovery"]
print("node '$i' recovery:", {k: r[k] for k in ("rounds", "buckets_compared", "buckets_differing", "copied_keys", "copied_bytes", "errors", "last_round_ms")})'
done
