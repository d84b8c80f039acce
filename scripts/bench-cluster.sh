#!/usr/bin/env bash
# Replication cost: `apsis bench` writing to 1 group versus 3 groups of the same cluster.
# Three nodes on loopback, each serving one backend (groups 1, 2 and 3); nodes 2 and 3 join
# node 1. The 3-group runs use the `all` checker: a write is acknowledged when every group has
# it, and the three requests go out in parallel. Figures go to docs/benchmarks.md.
#
#   scripts/bench-cluster.sh [SECONDS]      (default 10 s per run)
source "$(dirname "$0")/bench-lib.sh"

ADDRS=()
start_node() { # $1 = index (group = index), $2.. = remotes
    local i=$1; shift
    local remotes=""
    for r in "$@"; do remotes="$remotes\"$r\", "; done
    mkdir -p "$WORK/n$i"
    cat >"$WORK/n$i/apsis.toml" <<TOML
[node]
addresses = ["127.0.0.1:0"]
remotes = [${remotes%, }]
join = true
[[backend]]
id = 1
group = $i
dir = "$WORK/n$i/b1"
sync = -1
TOML
    APSIS_LOG=warn $APSIS server -c "$WORK/n$i/apsis.toml" >"$WORK/n$i/out" 2>"$WORK/n$i/err" &
    PIDS+=($!)
    for _ in $(seq 100); do grep -q listening "$WORK/n$i/out" && break; sleep 0.05; done
    ADDRS+=("$(awk '/listening/ {print $2; exit}' "$WORK/n$i/out")")
}
start_node 1
start_node 2 "${ADDRS[0]}"
start_node 3 "${ADDRS[0]}"
sleep 1
REMOTES=(-r "${ADDRS[0]}" -r "${ADDRS[1]}" -r "${ADDRS[2]}")

echo "## 1K writes, 1 connection (latency-bound: parallel fan-out costs one round trip, not three)"
run "${REMOTES[@]}" -g 1 --checker all --connections 1 --value-size 1K --keys 10000 --write-ratio 1 --duration "$SECS"
run "${REMOTES[@]}" -g 1,2,3 --checker all --connections 1 --value-size 1K --keys 10000 --write-ratio 1 --duration "$SECS"
echo "## 1K writes, 8 connections, every backend 1 ms slower (BACKEND_CONTROL delay: a fan-out"
echo "## that went one group after another would take 3 ms a write; in parallel it takes 1 ms)"
for a in "${ADDRS[@]}"; do $APSIS backend -r "$a" delay 1 1 >/dev/null; done
run "${REMOTES[@]}" -g 1 --checker all --connections 8 --value-size 1K --keys 10000 --write-ratio 1 --duration "$SECS"
run "${REMOTES[@]}" -g 1,2,3 --checker all --connections 8 --value-size 1K --keys 10000 --write-ratio 1 --duration "$SECS"
for a in "${ADDRS[@]}"; do $APSIS backend -r "$a" delay 1 0 >/dev/null; done
echo "## 1K writes, 1 connection with 50 requests in flight (multiplexed: fewer system calls per write)"
run "${REMOTES[@]}" -g 1 --checker all --connections 1 --inflight 50 --value-size 1K --keys 10000 --write-ratio 1 --duration "$SECS"
run "${REMOTES[@]}" -g 1,2,3 --checker all --connections 1 --inflight 50 --value-size 1K --keys 10000 --write-ratio 1 --duration "$SECS"
for size in 1K 1M; do
    if [ "$size" = 1K ]; then CONNS=50; KEYS=10000; else CONNS=8; KEYS=200; fi
    echo "## $size writes, $CONNS connections: 1 group vs 3 groups (checker all)"
    run "${REMOTES[@]}" -g 1 --checker all --connections $CONNS --value-size $size --keys $KEYS --write-ratio 1 --duration "$SECS"
    run "${REMOTES[@]}" -g 1,2,3 --checker all --connections $CONNS --value-size $size --keys $KEYS --write-ratio 1 --duration "$SECS"
    echo "## $size reads, $CONNS connections: 1 group vs 3 groups (first group answers)"
    run "${REMOTES[@]}" -g 1 --connections $CONNS --value-size $size --keys $KEYS --write-ratio 0 --no-prefill --duration "$SECS"
    run "${REMOTES[@]}" -g 1,2,3 --connections $CONNS --value-size $size --keys $KEYS --write-ratio 0 --no-prefill --duration "$SECS"
done
