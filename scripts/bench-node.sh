#!/usr/bin/env bash
# Side-by-side load: `apsis bench` against an Apsis node and against redis-server (Debian),
# same tool, same load. Figures go to docs/benchmarks.md. Apsis is driven two ways in every
# round: `--client plain` (a protocol loop per connection, as the RESP loop drives Redis: the
# servers compared) and `--client session` (through the client library users call).
#
#   scripts/bench-node.sh [SECONDS]      (default 10 s per run)
#   ROUNDS=5 scripts/bench-node.sh 8     (1 KiB rows: apsis plain, apsis session and redis
#                                          alternate ROUNDS times, default 3; the medians and
#                                          their ratios are printed, and each round's own
#                                          ratio with their median)
#   ROWS=durable scripts/bench-node.sh   (only some rows: any of "memory durable large";
#                                          default all three)
#   STEAL_MAX=5 scripts/bench-node.sh    (a round in which a run lost more than 5 % of the
#                                          CPUs to the hypervisor is run again, while the
#                                          3 x ROUNDS tries allowed leave room; the summary
#                                          counts the rounds dropped)
#
# Each run also prints the CPU time per operation of the load tool and of the server (user and
# system, `--server-pid`); on a machine where both share the cores, throughput is the cores
# over their sum, so this shows which side a difference comes from. And the host's steal over
# the run (`host steal N%`): CPU time the hypervisor gave other guests; the summary lists each
# round's largest.
#
# Needs redis-server (installed here with apt-get when missing).
source "$(dirname "$0")/bench-lib.sh"
need_redis

ROUNDS=${ROUNDS:-3}
# One run; prints its lines, appends its ops/s to the file $1, its CPU per operation (tool
# and server together, us) to $1.cpu and the host's steal over it (%) to $1.steal.
run_ops() {
    local into=$1; shift
    local out; out=$(run "$@")
    echo "$out"
    grep -o '[0-9.]* ops/s' <<<"$out" | cut -d' ' -f1 >>"$into"
    grep -o 'total [0-9.]*' <<<"$out" | cut -d' ' -f2 >>"$into.cpu"
    (grep -o 'host steal [0-9]*' <<<"$out" || echo 'host steal ?') | cut -d' ' -f3 >>"$into.steal"
}
median() { sort -n "$1" | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
# The same load on both targets, alternating ROUNDS times (the machine's noise moves all
# alike within a round): Apsis through the plain protocol loop (the counterpart of the RESP
# loop that drives Redis) and through the client library, then Redis. Prints the medians and
# the ratios to Redis.
pair() {
    rm -f "$WORK"/p "$WORK"/p.cpu "$WORK"/p.steal "$WORK"/s "$WORK"/s.cpu "$WORK"/s.steal \
        "$WORK"/r "$WORK"/r.cpu "$WORK"/r.steal
    local kept=0 tries=0 dropped=0 f x
    while [ "$kept" -lt "$ROUNDS" ]; do
        tries=$((tries + 1))
        run_ops "$WORK/p" --target apsis --client plain -r "$APSIS_ADDR" --server-pid "$APSIS_PID" "$@"
        run_ops "$WORK/s" --target apsis --client session -r "$APSIS_ADDR" --server-pid "$APSIS_PID" "$@"
        run_ops "$WORK/r" --target redis --redis "$REDIS_ADDR" --server-pid "$REDIS_PID" "$@"
        # With STEAL_MAX, a round the hypervisor stole from goes (all three results alike),
        # as long as the tries left can still make up ROUNDS rounds.
        if [ -n "${STEAL_MAX:-}" ] && [ $((3 * ROUNDS - tries)) -ge $((ROUNDS - kept)) ] &&
            tail -qn1 "$WORK/p.steal" "$WORK/s.steal" "$WORK/r.steal" |
            awk -v m="$STEAL_MAX" '$1 != "?" && $1 > m {bad = 1} END {exit !bad}'; then
            for f in p s r; do
                for x in "" .cpu .steal; do sed -i '$d' "$WORK/$f$x"; done
            done
            dropped=$((dropped + 1))
            echo "  (round dropped: host steal above $STEAL_MAX %)"
            continue
        fi
        kept=$((kept + 1))
    done
    if [ -n "${STEAL_MAX:-}" ]; then
        echo "  rounds dropped for host steal above $STEAL_MAX %: $dropped"
    fi
    local p s r pc sc rc
    p=$(median "$WORK/p"); s=$(median "$WORK/s"); r=$(median "$WORK/r")
    pc=$(median "$WORK/p.cpu"); sc=$(median "$WORK/s.cpu"); rc=$(median "$WORK/r.cpu")
    awk -v p="$p" -v s="$s" -v r="$r" -v pc="$pc" -v sc="$sc" -v rc="$rc" -v n="$ROUNDS" 'BEGIN {
        printf "median of %d: apsis/plain %.0f ops/s (%.2fx redis), apsis/session %.0f ops/s (%.2fx), redis %.0f ops/s\n", n, p, p/r, s, s/r, r
        printf "  cpu us/op (tool + server): apsis/plain %.1f, apsis/session %.1f, redis %.1f\n", pc, sc, rc }'
    # Each round's own ratio (Apsis against the Redis run right after it): the host drifts
    # over a run, and a round's pair shares its moment, so their median resists the drift
    # better than the ratio of the medians does.
    local who
    for who in plain session; do
        local f=$WORK/p
        [ "$who" = session ] && f=$WORK/s
        paste "$f" "$WORK/r" | awk '{printf "%.2f\n", $1 / $2}' >"$WORK/ratios"
        echo "  per-round ratios apsis/$who to redis: $(tr '\n' ' ' <"$WORK/ratios")(median $(median "$WORK/ratios"))"
    done
    # The most any run of a round lost to the hypervisor: a round above a few percent
    # measured the host's neighbours too, and its ratio says little about the servers.
    echo "  host steal per round, the most of its runs (%): $(paste "$WORK/p.steal" "$WORK/s.steal" "$WORK/r.steal" |
        awk '{m = $1; for (i = 2; i <= NF; i++) if ($i > m) m = $i; printf "%s ", m}')"
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
for client in plain session; do
    for ratio in 0 1; do
        run --target apsis --client "$client" -r "$APSIS_ADDR" --server-pid "$APSIS_PID" --connections 8 --value-size 1M --keys 256 --write-ratio "$ratio" --duration "$SECS"
    done
done
stop_apsis
fi
