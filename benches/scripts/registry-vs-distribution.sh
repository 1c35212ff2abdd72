#!/usr/bin/env bash
# Side by side: strata registry-server vs CNCF Distribution (docker-registry), one run on
# this machine, alternating A B A B. Prints medians of blob GET throughput (1 and 4
# parallel), push throughput and server CPU-seconds per GB pushed (a monolithic PUT with
# Content-Length, as containerd pushes, and a chunked PATCH then an empty PUT, as docker,
# podman and skopeo push), manifest GET req/s and
# p99 (wrk, 50 connections), blob HEAD req/s, RSS idle and peak. Blob GETs are also
# measured against nginx (sendfile on) serving the same blob file from strata's store,
# the ceiling for serving a file over loopback HTTP.
#
#   benches/scripts/registry-vs-distribution.sh [ROUNDS]
# Needs: docker-registry, nginx, wrk, curl, jq, python3; a release build of registry-server
# (cargo build --release -p strata-registry) in $CARGO_TARGET_DIR or ./target.
set -euo pipefail
ROUNDS=${1:-3}
TARGET=${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/target}
STRATA=${STRATA_REGISTRY_BIN:-$TARGET/release/registry-server}
W=$(mktemp -d /tmp/strata-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
PA=$(free_port); PB=$(free_port); PN=$(free_port)
cat > "$W/dist.yml" <<YML
version: 0.1
log: {level: error}
storage:
  filesystem: {rootdirectory: $W/dist}
  delete: {enabled: true}
http: {addr: 127.0.0.1:$PA}
YML
docker-registry serve "$W/dist.yml" >"$W/dist.log" 2>&1 & PIDS+=($!); DIST=$!
RUST_LOG=warn "$STRATA" --root "$W/strata" --listen 127.0.0.1:$PB >"$W/strata.log" 2>&1 & PIDS+=($!); STR=$!
for p in $PA $PB; do for _ in $(seq 100); do curl -sf "http://127.0.0.1:$p/v2/" >/dev/null && break; sleep 0.1; done; done

rss() { awk '/VmRSS/{print $2/1024}' /proc/$1/status; }
hwm() { awk '/VmHWM/{print $2/1024}' /proc/$1/status; }
cpu() { awk '{print ($14+$15)/100}' /proc/$1/stat; }   # seconds (USER_HZ 100)
median() { sort -g | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
echo "idle RSS MiB: distribution $(rss $DIST) strata $(rss $STR)"

head -c $((64<<20)) /dev/urandom > "$W/blob64"
head -c $((256<<20)) /dev/urandom > "$W/blob256"
D64=sha256:$(sha256sum "$W/blob64" | cut -d' ' -f1)
D256=sha256:$(sha256sum "$W/blob256" | cut -d' ' -f1)

push() { # port repo file digest -> seconds
  local port=$1 repo=$2 file=$3 digest=$4 loc t0 t1
  loc=$(curl -sf -D - -o /dev/null -X POST "http://127.0.0.1:$port/v2/$repo/blobs/uploads/" | awk 'tolower($1)=="location:"{print $2}' | tr -d '\r')
  [[ $loc == http* ]] || loc="http://127.0.0.1:$port$loc"
  [[ $loc == *\?* ]] && sep='&' || sep='?'
  t0=$(date +%s.%N)
  curl -sf -X PUT -H 'Content-Type: application/octet-stream' --data-binary @"$file" "$loc${sep}digest=$digest" -o /dev/null
  t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l
}

push_chunked() { # port repo file digest -> seconds (PATCH with Transfer-Encoding: chunked)
  local port=$1 repo=$2 file=$3 digest=$4 loc t0 t1
  loc=$(curl -sf -D - -o /dev/null -X POST "http://127.0.0.1:$port/v2/$repo/blobs/uploads/" | awk 'tolower($1)=="location:"{print $2}' | tr -d '\r')
  [[ $loc == http* ]] || loc="http://127.0.0.1:$port$loc"
  t0=$(date +%s.%N)
  loc=$(curl -sf -D - -o /dev/null -X PATCH -H 'Transfer-Encoding: chunked' -H 'Content-Type: application/octet-stream' -T "$file" "$loc" | awk 'tolower($1)=="location:"{print $2}' | tr -d '\r')
  [[ $loc == http* ]] || loc="http://127.0.0.1:$port$loc"
  [[ $loc == *\?* ]] && sep='&' || sep='?'
  curl -sf -X PUT "$loc${sep}digest=$digest" -o /dev/null
  t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l
}

# nginx serves strata's blob directory: the same file, read with sendfile.
mkdir -p "$W/nginx"
cat > "$W/nginx.conf" <<CONF
daemon off;
worker_processes 2;
user $(id -un);
pid $W/nginx/pid;
error_log $W/nginx/error.log;
events { worker_connections 256; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path $W/nginx; proxy_temp_path $W/nginx; fastcgi_temp_path $W/nginx;
  uwsgi_temp_path $W/nginx; scgi_temp_path $W/nginx;
  server { listen 127.0.0.1:$PN; root $W/strata/blobs; }
}
CONF
nginx -c "$W/nginx.conf" -p "$W/nginx" >"$W/nginx/out.log" 2>&1 & PIDS+=($!)

declare -A R
for round in $(seq "$ROUNDS"); do
  for side in dist strata; do
    [[ $side == dist ]] && { port=$PA; pid=$DIST; } || { port=$PB; pid=$STR; }
    c0=$(cpu $pid); s=$(push $port "bench/r$round" "$W/blob256" "$D256"); c1=$(cpu $pid)
    R[$side.push]+="$(echo "256/$s" | bc -l) "; R[$side.cpugb]+="$(echo "($c1-$c0)*4" | bc -l) "
    c0=$(cpu $pid); s=$(push_chunked $port "bench/c$round" "$W/blob256" "$D256"); c1=$(cpu $pid)
    R[$side.pushc]+="$(echo "256/$s" | bc -l) "; R[$side.cpugbc]+="$(echo "($c1-$c0)*4" | bc -l) "
    push $port bench/get "$W/blob64" "$D64" >/dev/null
  done
  for side in dist strata nginx; do
    case $side in
      dist) url=http://127.0.0.1:$PA/v2/bench/get/blobs/$D64 ;;
      strata) url=http://127.0.0.1:$PB/v2/bench/get/blobs/$D64 ;;
      nginx) url=http://127.0.0.1:$PN/sha256/${D64#sha256:} ;;
    esac
    R[$side.get1]+="$(curl -sf -o /dev/null -w '%{speed_download}' "$url" | awk '{print $1/1e6}') "
    t0=$(date +%s.%N)
    cp=(); for i in 1 2 3 4; do curl -sf -o /dev/null "$url" & cp+=($!); done; wait "${cp[@]}"
    t1=$(date +%s.%N); R[$side.get4]+="$(echo "4*64*1.048576/($t1-$t0)" | bc -l) "
  done
done

# A small image manifest for manifest GETs.
cfg='{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
printf '%s' "$cfg" > "$W/cfg"; DC=sha256:$(sha256sum "$W/cfg" | cut -d' ' -f1)
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[]}' "$DC" "${#cfg}" > "$W/man"
# wrk does not know a HEAD response has no body: HEAD an empty blob.
: > "$W/empty"; DE=sha256:$(sha256sum "$W/empty" | cut -d' ' -f1)
for port in $PA $PB; do
  push $port bench/m "$W/cfg" "$DC" >/dev/null
  push $port bench/get "$W/empty" "$DE" >/dev/null
  curl -sf -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary @"$W/man" "http://127.0.0.1:$port/v2/bench/m/manifests/latest" -o /dev/null
done
cat > "$W/accept.lua" <<'LUA'
wrk.headers["Accept"] = "application/vnd.oci.image.manifest.v1+json"
LUA
cat > "$W/head.lua" <<'LUA'
wrk.method = "HEAD"
LUA
for round in $(seq "$ROUNDS"); do
  for side in dist strata; do
    [[ $side == dist ]] && port=$PA || port=$PB
    out=$(wrk -t2 -c50 -d8s --latency -s "$W/accept.lua" "http://127.0.0.1:$port/v2/bench/m/manifests/latest")
    R[$side.mrps]+="$(awk '/Requests\/sec/{print $2}' <<<"$out") "
    R[$side.p99]+="$(awk '$1=="99%"{v=$2; if (v ~ /us$/) {sub("us","",v); v/=1000} else if (v ~ /ms$/) {sub("ms","",v)} else if (v ~ /s$/) {sub("s","",v); v*=1000}; print v}' <<<"$out") "
    out=$(wrk -t2 -c50 -d5s -s "$W/head.lua" "http://127.0.0.1:$port/v2/bench/get/blobs/$DE")
    R[$side.hrps]+="$(awk '/Requests\/sec/{print $2}' <<<"$out") "
  done
done

for key in get1 get4; do
  n=$(tr ' ' '\n' <<<"${R[nginx.$key]}" | grep . | median); b=$(tr ' ' '\n' <<<"${R[strata.$key]}" | grep . | median)
  printf 'nginx sendfile %-19s %14.2f  strata/nginx %.2f\n' "$key" "$n" "$(echo "$b/$n" | bc -l)"
done
printf '%-34s %14s %14s %8s\n' metric distribution strata ratio
for k in push:push_MiB/s cpugb:CPU-s_per_GB_pushed pushc:push_chunked_MiB/s cpugbc:CPU-s_per_GB_pushed_chunked get1:blob_GET_MB/s_x1 get4:blob_GET_MB/s_x4 mrps:manifest_GET_req/s p99:manifest_GET_p99_ms hrps:blob_HEAD_req/s; do
  key=${k%%:*}; label=${k#*:}
  a=$(tr ' ' '\n' <<<"${R[dist.$key]}" | grep . | median); b=$(tr ' ' '\n' <<<"${R[strata.$key]}" | grep . | median)
  printf '%-34s %14.2f %14.2f %8.2f\n' "$label" "$a" "$b" "$(echo "$b/$a" | bc -l)"
done
echo "peak RSS MiB: distribution $(hwm $DIST) strata $(hwm $STR)"
echo "idle RSS MiB after load: distribution $(rss $DIST) strata $(rss $STR)"
