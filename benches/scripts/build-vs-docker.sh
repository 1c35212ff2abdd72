#!/usr/bin/env bash
# Image builds, side by side (hyperfine, one run on this machine): a Dockerfile with 10 RUN
# steps and a COPY of 5,000 files (5 RUNs, the COPY, 5 RUNs) over the busybox fixture,
# built by `runner build`, by docker's classic builder (`DOCKER_BUILDKIT=0 docker build`
# on a private Docker engine), by BuildKit (`docker build` with buildx, when the buildx
# plugin is installed) and by `podman build` (private storage, as fixtures/src/peers.rs
# sets it up). Three cases each:
#   cold      every step run (`--no-cache`; the base image is in place)
#   no-op     nothing changed: every step from the cache
#   changed   one of the 5,000 files changed (new content before each run): the COPY and
#             the 5 RUNs after it run again
# As root.
#
#   benches/scripts/build-vs-docker.sh [RUNS]
# Needs: hyperfine, dockerd + docker (optional), podman + runc (optional); release builds
# (cargo build --release -p strata-runner -p strata-puller -p strata-store) in
# $CARGO_TARGET_DIR or ./target.
set -euo pipefail
RUNS=${1:-10}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$HERE/target}
W=$(mktemp -d /tmp/strata-build-bench.XXXXXX)
cleanup() {
  if [ -f "$W/docker/pid" ]; then kill "$(cat "$W/docker/pid")" 2>/dev/null || true; sleep 2; fi
  awk -v w="$W" '$2 ~ "^"w {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$W" 2>/dev/null || true
}
trap cleanup EXIT
(cd "$HERE" && cargo run -q --release -p strata-fixtures --example busybox-archive -- "$W/bb.tar" bb:1)

# The context: 5,000 files of 1 KiB (distinct contents) in 50 directories.
CTX="$W/ctx"
mkdir -p "$CTX"
python3 - "$CTX" <<'EOF'
import os, sys
ctx = sys.argv[1]
for d in range(50):
    os.makedirs(f"{ctx}/files/d{d}", exist_ok=True)
    for f in range(100):
        with open(f"{ctx}/files/d{d}/f{f}", "w") as out:
            out.write((f"{d}/{f} " * 200)[:1024])
runs = lambda lo, hi: "".join(f"RUN echo {i} > /step{i}\n" for i in range(lo, hi))
with open(f"{ctx}/Dockerfile", "w") as out:
    out.write("FROM bb:1\n" + runs(1, 6) + "COPY files /files\n" + runs(6, 11))
EOF
CHANGE="date +%s%N > $CTX/files/d7/f42"

R="$TARGET/release/runner --root $W/store"
"$TARGET/release/puller" --root "$W/store" load "$W/bb.tar" >/dev/null
CASES=(-n 'runner build: cold (--no-cache)' "$R build --no-cache -t b:1 $CTX"
       -n 'runner build: no-op' "$R build -t b:1 $CTX")
CHANGED=(-n 'runner build: one file changed' "$R build -t b:1 $CTX")

if command -v dockerd >/dev/null 2>&1; then
  D="$W/docker"; mkdir -p "$D/cfg"; echo '{}' > "$D/cfg/config.json"
  dockerd --data-root "$D/data" --exec-root "$D/exec" --pidfile "$D/pid" -H "unix://$D/docker.sock" \
    --bridge=none --iptables=false --ip6tables=false --containerd-namespace=strata-build-bench \
    --containerd-plugins-namespace=strata-build-bench-plugins \
    --storage-driver=overlay2 >"$D/log" 2>&1 &
  export DOCKER_HOST="unix://$D/docker.sock" DOCKER_CONFIG="$D/cfg" DOCKER_CLI_HINTS=false
  for _ in $(seq 100); do docker version >/dev/null 2>&1 && break; sleep 0.2; done
  docker load -i "$W/bb.tar" >/dev/null
  CLASSIC="env DOCKER_BUILDKIT=0 docker build -q --network none -t b:1 $CTX"
  CASES+=(-n 'docker build (classic): cold' "env DOCKER_BUILDKIT=0 docker build -q --no-cache --network none -t b:1 $CTX"
          -n 'docker build (classic): no-op' "$CLASSIC")
  CHANGED+=(-n 'docker build (classic): one file changed' "$CLASSIC")
  if docker buildx version >/dev/null 2>&1; then
    BK="env DOCKER_BUILDKIT=1 docker build -q --network none -t b:1 $CTX"
    CASES+=(-n 'docker build (BuildKit): cold' "env DOCKER_BUILDKIT=1 docker build -q --no-cache --network none -t b:1 $CTX"
            -n 'docker build (BuildKit): no-op' "$BK")
    CHANGED+=(-n 'docker build (BuildKit): one file changed' "$BK")
  else
    echo "BuildKit: the docker CLI has no buildx plugin here; not measured" >&2
  fi
fi

if command -v podman >/dev/null 2>&1; then
  P="$W/podman"; mkdir -p "$P/root" "$P/run" "$P/tmp"
  cat > "$P/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
netns = "none"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$P/events.log"
tmp_dir = "$P/tmp"
EOF
  PODMAN="env CONTAINERS_CONF=$P/containers.conf podman --root $P/root --runroot $P/run --storage-driver overlay"
  $PODMAN load -i "$W/bb.tar" >/dev/null
  PB="$PODMAN build -q --network none --layers -t b:1 $CTX"
  CASES+=(-n 'podman build: cold' "$PODMAN build -q --network none --no-cache -t b:1 $CTX"
          -n 'podman build: no-op' "$PB")
  CHANGED+=(-n 'podman build: one file changed' "$PB")
fi

hyperfine -N --warmup 1 --runs "$RUNS" --export-markdown "$W/same.md" "${CASES[@]}"
hyperfine -N --warmup 1 --runs "$RUNS" --prepare "sh -c '$CHANGE'" --export-markdown "$W/changed.md" "${CHANGED[@]}"
cat "$W/same.md" "$W/changed.md"
