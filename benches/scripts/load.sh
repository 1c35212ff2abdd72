#!/usr/bin/env bash
# Load and slow clients against one release registry-server on a local store: CLIENTS
# concurrent clients (default 500) for SECONDS (default 60) — pushes of overlapping images
# (monolithic, POST+PUT, chunked and streamed PATCH uploads, manifest PUTs), pulls with
# digests checked, tag lists, HEADs — plus SLOW slow clients of each kind (slowloris heads,
# trickled and stalled upload bodies, readers that never read a 64 MiB blob) with 10 s
# timeouts. Prints latency percentiles per kind of request, errors, the server's RSS and
# open descriptors before/peak/after, how long slow clients were held, then stops the
# server and runs `store fsck` on its store.
#
#   benches/scripts/load.sh [CLIENTS] [SECONDS] [SLOW]
# Needs a release build: cargo build --release -p strata-registry -p strata-store -p strata-benches --bins
set -euo pipefail
CLIENTS=${1:-500}
SECONDS_=${2:-60}
SLOW=${3:-50}
TARGET=${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/target}
W=$(mktemp -d "${STRATA_BENCH_DIR:-/var/tmp}/strata-load.XXXXXX")
PID=
cleanup() { [[ -n $PID ]] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
cat > "$W/config.toml" <<TOML
root = "$W/store"
listen = "127.0.0.1:$PORT"
[limits]
header_timeout = 10
body_idle_timeout = 10
min_body_rate = 1024
send_timeout = 10
TOML
start_server() {
  RUST_LOG=warn "$TARGET/release/registry-server" --config "$W/config.toml" 2>>"$W/server.log" &
  PID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/v2/" >/dev/null && break; sleep 0.1; done
}
start_server
echo "registry-server pid $PID, open-file limit $(awk '/Max open files/{print $4}' /proc/$PID/limits)"
status=0
"$TARGET/release/load" --base "http://127.0.0.1:$PORT" --pid "$PID" --clients "$CLIENTS" \
  --duration "$SECONDS_" --slow "$SLOW" --settle 75 --json "$W/load.json" || status=$?
kill -TERM "$PID"; wait "$PID" || true; PID=
echo "server log: $(grep -c . "$W/server.log") lines, $(grep -ci 'error\|panic' "$W/server.log" || true) with error/panic"
grep -i 'panic' "$W/server.log" | head -5 || true
"$TARGET/release/store" --root "$W/store" fsck && echo "store fsck: clean" || { echo "store fsck: NOT clean"; status=1; }
# What the store itself costs a server: a fresh one on the same store, after a catalog
# and a tag list of every repository (the "after" RSS above, against this, is what the load left).
start_server
for r in $(curl -sf "http://127.0.0.1:$PORT/v2/_catalog?n=10000" | jq -r '.repositories[]'); do
  curl -sf "http://127.0.0.1:$PORT/v2/$r/tags/list" >/dev/null
done
sleep 2
echo "a fresh server on the same store: RSS $(awk '/VmRSS/{printf "%d MiB", $2/1024}' /proc/$PID/status), open fds $(ls /proc/$PID/fd | wc -l)"
kill -TERM "$PID"; wait "$PID" || true; PID=
cp "$W/load.json" "${LOAD_JSON:-/tmp/strata-load.json}" 2>/dev/null || true
exit $status
