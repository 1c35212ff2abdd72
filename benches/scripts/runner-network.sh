#!/usr/bin/env bash
# Networking, side by side (one run on this machine, as root): a server in a container
# reached through a published port on 127.0.0.1, against the same server on the host's
# loopback (the ceiling) and in `docker run -p` on a private Docker engine.
#
# Throughput: the host's iperf3 server (bound into the busybox fixture with the host's
# libraries) and client, one TCP stream. Requests/s: the fixture's busybox `httpd` (one
# process per connection) serving a small page from a directory bound read-only, driven
# by `wrk` (2 threads, 32 connections). Then container start with the bridge network
# against `--network none` and crun with a fresh network namespace (hyperfine).
#
#   benches/scripts/runner-network.sh [DURATION] [RUNS]
# Needs: iperf3, jq, curl, wrk, hyperfine, crun, busybox-static, dockerd (optional);
# release builds of runner and puller (cargo build --release -p strata-runner -p
# strata-puller).
#
# The Docker engine gets a bridge of its own (docker's default networking, its userland
# proxy for 127.0.0.1, --iptables=false so that it leaves the host's firewall alone) on
# 172.31.254.0/24, removed afterwards.
set -euo pipefail
DURATION=${1:-5}
RUNS=${2:-30}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$HERE/target}
W=$(mktemp -d /tmp/strata-net-bench.XXXXXX)
R="$TARGET/release/runner --root $W/store"
DOCKER_BRIDGE=strbench0
cleanup() {
  $R stop -t 0 web perf keep >/dev/null 2>&1 || true
  [ -n "${HOSTPID:-}" ] && kill $HOSTPID 2>/dev/null || true
  if [ -f "$W/docker/pid" ]; then
    docker rm -f web perf >/dev/null 2>&1 || true
    kill "$(cat "$W/docker/pid")" 2>/dev/null || true
    sleep 2
  fi
  ip link del "$DOCKER_BRIDGE" 2>/dev/null || true
  umount -l "$W/bundle/rootfs" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
# BB_TAR: the busybox fixture's archive, already made (skips the cargo run).
if [ -n "${BB_TAR:-}" ]; then cp "$BB_TAR" "$W/bb.tar"
else (cd "$HERE" && cargo run -q --release -p strata-fixtures --example busybox-archive -- "$W/bb.tar" bb:1); fi
"$TARGET/release/puller" --root "$W/store" load "$W/bb.tar" >/dev/null
mkdir -p "$W/www"
echo "hello from the benchmark" >"$W/www/index.html"

IPERF_MOUNTS=(-v /usr/lib:/lib:ro -v /usr/lib64:/lib64:ro -v /usr/bin/iperf3:/usr/bin/iperf3:ro)
throughput() { # PORT: iperf3 -c, 3 runs of DURATION seconds, best, in Gbit/s
  local best=0 s
  for _ in 1 2 3; do
    # A userland proxy listens before the server does: a refused run is tried again.
    for _ in 1 2 3 4 5; do
      s=$(iperf3 -c 127.0.0.1 -p "$1" -t "$DURATION" -J | jq '.end.sum_received.bits_per_second // 0')
      [ "$s" != 0 ] && break
      sleep 1
    done
    best=$(awk -v a="$best" -v b="$s" 'BEGIN { print (b > a ? b : a) }')
  done
  awk -v b="$best" 'BEGIN { printf "%.2f", b / 1e9 }'
}
rps() { # URL
  wrk -t2 -c32 -d"${DURATION}s" "$1" | awk '/Requests\/sec/ { printf "%.0f", $2 }'
}
wait_port() {
  for _ in $(seq 100); do
    if [ "$2" = http ]; then curl -sf -o /dev/null "http://127.0.0.1:$1/index.html" && return 0
    else (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && { sleep 0.2; return 0; }; fi
    sleep 0.1
  done
  echo "no answer on 127.0.0.1:$1" >&2; return 1
}
# row NAME IPERF_PORT HTTP_PORT: both servers already started.
row() {
  wait_port "$2" iperf; wait_port "$3" http
  printf '| %s | %s | %s |\n' "$1" "$(throughput "$2")" "$(rps "http://127.0.0.1:$3/index.html")"
}

echo "| server on 127.0.0.1 | iperf3 Gbit/s (best of 3 × ${DURATION}s) | busybox httpd requests/s (wrk -t2 -c32 ${DURATION}s) |"
echo "|---|---|---|"
iperf3 -s -B 127.0.0.1 -p 18411 >/dev/null 2>&1 &
HOSTPID=$!
busybox httpd -f -p 127.0.0.1:18401 -h "$W/www" &
HOSTPID="$HOSTPID $!"
row "host loopback (ceiling)" 18411 18401
kill $HOSTPID; HOSTPID=

$R start -d --name web -p 127.0.0.1:18402:80 -v "$W/www:/www:ro" bb:1 -- httpd -f -p 80 -h /www >/dev/null
$R start -d --name perf -p 127.0.0.1:18412:5201 "${IPERF_MOUNTS[@]}" bb:1 -- /usr/bin/iperf3 -s >/dev/null
row "runner start -p (nftables DNAT)" 18412 18402
$R stop -t 0 web perf >/dev/null

if command -v dockerd >/dev/null 2>&1; then
  D="$W/docker"; mkdir -p "$D"
  ip link add "$DOCKER_BRIDGE" type bridge
  ip addr add 172.31.254.1/24 dev "$DOCKER_BRIDGE"
  ip link set "$DOCKER_BRIDGE" up
  dockerd --data-root "$D/data" --exec-root "$D/exec" --pidfile "$D/pid" -H "unix://$D/docker.sock" \
    --bridge="$DOCKER_BRIDGE" --iptables=false --ip6tables=false --containerd-namespace=strata-net-bench \
    --storage-driver=overlay2 >"$D/log" 2>&1 &
  export DOCKER_HOST="unix://$D/docker.sock"
  for _ in $(seq 100); do docker version >/dev/null 2>&1 && break; sleep 0.2; done
  docker load -i "$W/bb.tar" >/dev/null
  docker run -d --name web -p 127.0.0.1:18403:80 -v "$W/www:/www:ro" bb:1 httpd -f -p 80 -h /www >/dev/null
  docker run -d --name perf -p 127.0.0.1:18413:5201 "${IPERF_MOUNTS[@]}" bb:1 /usr/bin/iperf3 -s >/dev/null
  row "docker run -p (userland proxy)" 18413 18403
  docker rm -f web perf >/dev/null
fi

# Start-up: the bridge network's cost over a loopback-only namespace, and crun with a
# fresh network namespace (the exported bundle's config has one).
$R start --name b --network none bb:1 -- /bin/true
$R export b "$W/bundle" >/dev/null
CRUN="unshare -m sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null; crun --root $W/crun run --bundle $W/bundle bench'"
# With another container on the bridge, a start adds a veth, a lease and its address
# only; so does a start within the grace second after the last container stopped. A lone
# start after that (cold, --prepare sleeps past the grace) makes strata0 and the table.
hyperfine -N --warmup 3 --runs "$RUNS" --export-markdown "$W/start1.md" \
  -n 'runner start --rm (bridge, the only container, back to back)' "$R start --rm bb:1 -- /bin/true" \
  -n 'runner start --rm --network none' "$R start --rm --network none bb:1 -- /bin/true" \
  -n 'crun run, fresh netns (in unshare -m)' "$CRUN" >/dev/null
$R start -d --name keep bb:1 -- sleep 600 >/dev/null
hyperfine -N --warmup 3 --runs "$RUNS" --export-markdown "$W/start2.md" \
  -n 'runner start --rm (bridge, another container on it)' "$R start --rm bb:1 -- /bin/true" \
  -n 'runner start --rm -p 127.0.0.1:18404:80 (idem)' "$R start --rm -p 127.0.0.1:18404:80 bb:1 -- /bin/true" >/dev/null
$R stop -t 0 keep >/dev/null
hyperfine -N --runs 10 --prepare 'sleep 1.5' --export-markdown "$W/start3.md" \
  -n 'runner start --rm (bridge, cold: makes the bridge and the table)' "$R start --rm bb:1 -- /bin/true" \
  -n 'crun run, fresh netns (same prepare)' "$CRUN" >/dev/null
cat "$W/start1.md" "$W/start2.md" "$W/start3.md"
