#!/usr/bin/env bash
# Instructions and locked instructions (atomic read-modify-writes, lock acquisitions) a node
# spends per request, by function: the node runs under `valgrind --tool=callgrind` while
# `apsis bench` drives it (50 connections, 1 KiB values), and the executed instructions whose
# opcode carries a `lock` prefix (or is an `xchg` with memory) are counted from objdump's
# disassembly of the same binary. A locked instruction costs ~9 ns on the 2-vCPU VM of
# docs/benchmarks.md, a cache miss's worth, where a plain instruction costs a fraction of 1 ns.
#
#   scripts/locked-ops.sh [BINARY]        (default: this tree's release build; GETs)
#   W=1 scripts/locked-ops.sh             (W: write ratio; C=session: the client library)
#   TOP=40 scripts/locked-ops.sh          (functions listed, default 25)
#
# Needs valgrind and binutils (objdump, addr2line); installs valgrind when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${1:-}" ]; then
    cargo build --release -p apsis >/dev/null
fi
BIN=$(realpath "${1:-./target/release/apsis}")
W=${W:-0}; C=${C:-plain}; TOP=${TOP:-25}
command -v valgrind >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind; }
WORK=$(mktemp -d)
trap 'kill $VG 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
PORT=$((20000 + RANDOM % 10000))
APSIS_LOG=warn valgrind --tool=callgrind --compress-strings=no --compress-pos=no --dump-instr=yes \
    --callgrind-out-file="$WORK/cg.out" "$BIN" server --listen "127.0.0.1:$PORT" \
    --data "$WORK/data" --sync -1 >"$WORK/node.out" 2>"$WORK/node.err" &
VG=$!
for _ in $(seq 200); do grep -q listening "$WORK/node.out" 2>/dev/null && break; sleep 0.1; done
ARGS=(-r "127.0.0.1:$PORT" --client "$C" --connections 50 --value-size 1K --keys 10000)
# The keys first, untimed and uncounted; then the counters start from zero.
"$BIN" bench "${ARGS[@]}" --duration 1 >/dev/null 2>&1
callgrind_control -z "$VG" >/dev/null 2>&1
"$BIN" bench "${ARGS[@]}" --write-ratio "$W" --duration 5 --no-prefill >"$WORK/run" 2>&1
callgrind_control -d "$VG" >/dev/null 2>&1
sleep 1
head -1 "$WORK/run"
OPS=$(grep -o '[0-9.]* ops/s' "$WORK/run" | head -1 | cut -d' ' -f1)
objdump -d --no-show-raw-insn "$BIN" >"$WORK/dis"
python3 - "$WORK/cg.out.1" "$WORK/dis" "$(basename "$BIN")" "$OPS" "$TOP" <<'EOF'
import collections, re, sys
out, dis, name, ops, top = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]) * 5, int(sys.argv[5])
locked = set()
for line in open(dis):
    m = re.match(r'\s+([0-9a-f]+):\s+(\S.*)', line)
    if m and (m.group(2).startswith('lock ') or (m.group(2).startswith('xchg') and '(' in m.group(2))):
        locked.add(int(m.group(1), 16))
ir, lk = collections.Counter(), collections.Counter()
ob = fn = None
after_call = False
for line in open(out, errors='replace'):
    if line.startswith('ob='):
        ob = line[3:].strip()
    elif line.startswith('fn='):
        fn = line[3:].strip()
    elif line.startswith('calls='):
        after_call = True
    elif line.startswith('0x'):
        if after_call:  # the inclusive cost of a call, not this function's own
            after_call = False
            continue
        addr, _, cost = line.split()[:3]
        ir[fn] += int(cost)
        if ob and ob.endswith(name) and int(addr, 16) in locked:
            lk[fn] += int(cost)
print(f"per request: {sum(ir.values()) / ops:.0f} instructions, "
      f"{sum(lk.values()) / ops:.1f} locked (in {name} itself)")
print("locked per request, by function:")
for f, n in lk.most_common(top):
    print(f"  {n / ops:5.2f}  {f[:110]}")
print("instructions per request, by function:")
for f, n in ir.most_common(top):
    print(f"  {n / ops:6.0f}  {f[:110]}")
EOF
