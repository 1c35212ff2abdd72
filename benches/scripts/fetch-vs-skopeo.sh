#!/usr/bin/env bash
# Side by side: `puller fetch` against `skopeo copy docker://… oci:DIR` pulling the same
# image from one CNCF Distribution on loopback, alternating A B A B. The image has
# LAYERS uncompressed layers of LAYER_MIB MiB of random bytes (plus a config). Both tools
# download, verify digests and write every blob; `puller fetch` also unpacks the layers
# into the store (as `docker pull` does), skopeo does not. With DOCKER_HOST set (a
# private dockerd, started as ../shared/PEERS.md says) each round also times `docker pull`
# (download, verify, unpack into overlay2). Prints median seconds and MB/s.
#
#   benches/scripts/fetch-vs-skopeo.sh [ROUNDS] [LAYERS] [LAYER_MIB]
# Needs: docker-registry, skopeo, jq, sha256sum; a release build of puller
# (cargo build --release -p strata-puller) in $CARGO_TARGET_DIR or ./target.
set -euo pipefail
ROUNDS=${1:-3}; LAYERS=${2:-3}; MIB=${3:-64}
TARGET=${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/target}
PULLER=${STRATA_PULLER_BIN:-$TARGET/release/puller}
W=$(mktemp -d /var/tmp/strata-fetch-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
cat > "$W/dist.yml" <<YML
version: 0.1
log: {level: error}
storage:
  filesystem: {rootdirectory: $W/dist}
http: {addr: 127.0.0.1:$port}
YML
docker-registry serve "$W/dist.yml" >"$W/dist.log" 2>&1 & PIDS+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done

# An OCI layout with LAYERS random tar layers, pushed with skopeo.
L=$W/layout; mkdir -p "$L/blobs/sha256"; echo '{"imageLayoutVersion":"1.0.0"}' > "$L/oci-layout"
blob() { local d; d=$(sha256sum "$1" | cut -d' ' -f1); mv "$1" "$L/blobs/sha256/$d"; echo "$d"; }
layers=(); diffs=()
for i in $(seq "$LAYERS"); do
  mkdir -p "$W/l$i"; head -c $((MIB << 20)) /dev/urandom > "$W/l$i/data$i"
  tar -C "$W/l$i" -cf "$W/layer$i.tar" . ; rm -rf "$W/l$i"
  size=$(stat -c %s "$W/layer$i.tar"); d=$(blob "$W/layer$i.tar")
  layers+=("{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$d\",\"size\":$size}")
  diffs+=("\"sha256:$d\"")
done
printf '{"architecture":"%s","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
  "$(dpkg --print-architecture 2>/dev/null || echo amd64)" "$(IFS=,; echo "${diffs[*]}")" > "$W/config"
csize=$(stat -c %s "$W/config"); cd_=$(blob "$W/config")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[%s]}' \
  "$cd_" "$csize" "$(IFS=,; echo "${layers[*]}")" > "$W/manifest"
msize=$(stat -c %s "$W/manifest"); md=$(blob "$W/manifest")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"org.opencontainers.image.ref.name":"1"}}]}' \
  "$md" "$msize" > "$L/index.json"
skopeo --insecure-policy copy -q --dest-tls-verify=false "oci:$L:1" "docker://127.0.0.1:$port/bench/img:1"
TOTAL_MB=$(echo "$LAYERS * $MIB * 1.048576" | bc -l)

median() { sort -g | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
declare -A R
for round in $(seq "$ROUNDS"); do
  rm -rf "$W/store" "$W/skopeo"; sync
  t0=$(date +%s.%N)
  RUST_LOG=${STRATA_LOG:-warn} "$PULLER" --root "$W/store" fetch "127.0.0.1:$port/bench/img:1" >/dev/null 2>"$W/puller.err"; [ -n "${STRATA_LOG:-}" ] && cat "$W/puller.err" >&2
  t1=$(date +%s.%N); R[puller]+="$(echo "$t1 - $t0" | bc -l) "
  sync
  t0=$(date +%s.%N)
  skopeo --insecure-policy copy -q --src-tls-verify=false "docker://127.0.0.1:$port/bench/img:1" "oci:$W/skopeo:1"
  t1=$(date +%s.%N); R[skopeo]+="$(echo "$t1 - $t0" | bc -l) "
  if [[ -n ${DOCKER_HOST:-} ]]; then
    docker rmi -f "127.0.0.1:$port/bench/img:1" >/dev/null 2>&1 || true; sync
    t0=$(date +%s.%N)
    docker pull -q "127.0.0.1:$port/bench/img:1" >/dev/null
    t1=$(date +%s.%N); R[docker]+="$(echo "$t1 - $t0" | bc -l) "
    docker rmi -f "127.0.0.1:$port/bench/img:1" >/dev/null
  fi
done
printf '%-40s %10s %10s\n' "image: $LAYERS x $MIB MiB layers" seconds MB/s
for k in puller skopeo ${DOCKER_HOST:+docker}; do
  m=$(tr ' ' '\n' <<<"${R[$k]}" | grep . | median)
  label=$k; [[ $k == puller ]] && label="puller fetch (download+verify+unpack)"
  [[ $k == skopeo ]] && label="skopeo copy to oci: (download+verify)"
  [[ $k == docker ]] && label="docker pull (download+verify+unpack)"
  printf '%-40s %10.2f %10.1f\n' "$label" "$m" "$(echo "$TOTAL_MB / $m" | bc -l)"
done
