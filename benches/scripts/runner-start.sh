#!/usr/bin/env bash
# Container start-up, side by side (hyperfine, one run on this machine): `runner start
# --rm` of the busybox fixture running /bin/true, against runc and crun running the same
# container exported as a bundle (`runner export`), and the floor: unshare of the same
# namespaces + chroot into the same rootfs. As root.
#
#   benches/scripts/runner-start.sh [RUNS]
# Needs: hyperfine, runc, crun, unshare; release builds of runner and puller
# (cargo build --release -p strata-runner -p strata-puller) in $CARGO_TARGET_DIR or ./target.
set -euo pipefail
RUNS=${1:-30}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$HERE/target}
W=$(mktemp -d /tmp/strata-runner-bench.XXXXXX)
trap 'umount -l "$W/bundle/rootfs" 2>/dev/null || true; rm -rf "$W"' EXIT
(cd "$HERE" && cargo run -q --release -p strata-fixtures --example busybox-archive -- "$W/bb.tar" bb:1)
R="$TARGET/release/runner --root $W/store"
"$TARGET/release/puller" --root "$W/store" load "$W/bb.tar" >/dev/null
$R start --name b bb:1 -- /bin/true
$R export b "$W/bundle" >/dev/null
hyperfine -N --warmup 3 --runs "$RUNS" --export-markdown "$W/result.md" \
  -n 'runner start --rm' "$R start --rm bb:1 -- /bin/true" \
  -n 'runc run' "runc --root $W/runc run --bundle $W/bundle bench" \
  -n 'crun run (in unshare -m)' "unshare -m sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null; crun --root $W/crun run --bundle $W/bundle bench'" \
  -n 'unshare + chroot (floor)' "unshare -m -p -u -i -n -f chroot $W/bundle/rootfs /bin/true"
cat "$W/result.md"
