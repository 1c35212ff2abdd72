#!/usr/bin/env bash
# Server CPU-seconds per GB pushed, per push: starts registry-server BIN on a fresh store
# and pushes one 256 MiB random blob ROUNDS times, either as a monolithic PUT with
# Content-Length (as containerd pushes) or as a chunked PATCH then an empty PUT (as docker,
# podman and skopeo push), reading utime+stime from /proc around each push. The stored
# blob is removed between pushes so that every push writes and fsyncs it.
#
#   benches/scripts/push-cpu.sh BIN [ROUNDS] [put|chunked]
# Run two binaries alternately to compare them; the machine is shared and noisy.
set -euo pipefail
BIN=$1; N=${2:-4}; MODE=${3:-put}
W=$(mktemp -d /tmp/strata-push-cpu.XXXXXX)
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
head -c $((256<<20)) /dev/urandom > "$W/blob"
D=sha256:$(sha256sum "$W/blob" | cut -d' ' -f1)
RUST_LOG=warn "$BIN" --root "$W/root" --listen 127.0.0.1:$PORT >"$W/log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 100); do curl -sf http://127.0.0.1:$PORT/v2/ >/dev/null && break; sleep 0.1; done
cpu() { awk '{print $14+$15}' /proc/$PID/stat; }   # ticks (USER_HZ 100)
location() { awk 'tolower($1)=="location:"{print $2}' | tr -d '\r'; }
out=""
for i in $(seq "$N"); do
  loc=$(curl -sf -D - -o /dev/null -X POST "http://127.0.0.1:$PORT/v2/r$i/blobs/uploads/" | location)
  c0=$(cpu); t0=$(date +%s.%N)
  if [[ $MODE == put ]]; then
    curl -sf -X PUT -H 'Content-Type: application/octet-stream' --data-binary @"$W/blob" \
      "http://127.0.0.1:$PORT$loc?digest=$D" -o /dev/null
  else
    loc=$(curl -sf -D - -o /dev/null -X PATCH -H 'Transfer-Encoding: chunked' \
      -H 'Content-Type: application/octet-stream' -T "$W/blob" "http://127.0.0.1:$PORT$loc" | location)
    curl -sf -X PUT "http://127.0.0.1:$PORT$loc?digest=$D" -o /dev/null
  fi
  t1=$(date +%s.%N); c1=$(cpu)
  out+="$(echo "scale=2; ($c1-$c0)/100*4" | bc) ($(echo "scale=0; 256/($t1-$t0)" | bc) MiB/s)  "
  rm -f "$W"/root/blobs/sha256/*
done
echo "$(basename "$BIN") $MODE, CPU-s/GB per push: $out"
