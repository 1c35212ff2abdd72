#!/usr/bin/env bash
# Container start-up, side by side (hyperfine, one run on this machine): `runner start
# --rm` of the busybox fixture running /bin/true, against runc and crun running the same
# container exported as a bundle (`runner export`; its rootfs is mounted beforehand, which
# `runner start` has to do itself), `docker run --rm` of the same image on a private
# Docker engine, and the floor: unshare of the same namespaces + chroot into the same
# rootfs. As root.
#
#   benches/scripts/runner-start.sh [RUNS]
# Needs: hyperfine, runc, crun, unshare, dockerd (optional); release builds of runner and
# puller (cargo build --release -p strata-runner -p strata-puller) in $CARGO_TARGET_DIR or
# ./target.
set -euo pipefail
RUNS=${1:-30}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$HERE/target}
W=$(mktemp -d /tmp/strata-runner-bench.XXXXXX)
cleanup() {
  if [ -f "$W/docker/pid" ]; then kill "$(cat "$W/docker/pid")" 2>/dev/null || true; sleep 2; fi
  umount -l "$W/bundle/rootfs" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
(cd "$HERE" && cargo run -q --release -p strata-fixtures --example busybox-archive -- "$W/bb.tar" bb:1)
R="$TARGET/release/runner --root $W/store"
"$TARGET/release/puller" --root "$W/store" load "$W/bb.tar" >/dev/null
$R start --name b bb:1 -- /bin/true
$R export b "$W/bundle" >/dev/null
# `--network none`: a network namespace with only lo, as the exported bundle's (the bridge
# network, the default since issue 12, is measured by runner-network.sh).
# The first start of an image fills the store's caches (the image's answer, the compiled
# seccomp program); hyperfine's warm-up runs do that here.
DOCKER=()
if command -v dockerd >/dev/null 2>&1; then
  D="$W/docker"; mkdir -p "$D"
  dockerd --data-root "$D/data" --exec-root "$D/exec" --pidfile "$D/pid" -H "unix://$D/docker.sock" \
    --bridge=none --iptables=false --ip6tables=false --containerd-namespace=strata-bench \
    --storage-driver=overlay2 >"$D/log" 2>&1 &
  export DOCKER_HOST="unix://$D/docker.sock"
  for _ in $(seq 100); do docker version >/dev/null 2>&1 && break; sleep 0.2; done
  docker load -i "$W/bb.tar" >/dev/null
  DOCKER=(-n 'docker run --rm' "docker run --rm --network none bb:1 /bin/true")
fi
hyperfine -N --warmup 3 --runs "$RUNS" --export-markdown "$W/result.md" \
  -n 'runner start --rm' "$R start --rm --network none bb:1 -- /bin/true" \
  -n 'runc run' "runc --root $W/runc run --bundle $W/bundle bench" \
  -n 'crun run (in unshare -m)' "unshare -m sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null; crun --root $W/crun run --bundle $W/bundle bench'" \
  -n 'the unshare -m wrapper alone' "unshare -m sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null; true'" \
  -n 'unshare + chroot (floor)' "unshare -m -p -u -i -n -f chroot $W/bundle/rootfs /bin/true" \
  "${DOCKER[@]}"
cat "$W/result.md"
