# Shared by the bench-*.sh scripts (sourced): release build, a work directory and the
# processes started, both cleaned up on exit, and `run` to print and run one bench row.
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
