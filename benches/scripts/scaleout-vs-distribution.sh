#!/usr/bin/env bash
# Side by side on one SeaweedFS S3 gateway: CNCF Distribution 2.8.2 (`docker-registry`, s3
# driver) against strata's scale-out mode (registry-server replicas on S3 + PostgreSQL 15),
# one replica alone and three behind HAProxy (round-robin, HTTP mode). One run on this
# machine, alternating the sides in every round; medians. Measures:
#   1. push: `skopeo copy --preserve-digests` (else skopeo gzips the layer) of an OCI layout with one LAYER_MIB MiB random uncompressed tar
#      layer (a new layer every push), MiB/s, and CPU-seconds per GB of the registry
#      processes (utime+stime from /proc, summed over replicas), of HAProxy, SeaweedFS and
#      PostgreSQL (all its processes) beside them;
#   2. blob GET MB/s of that layer (curl -o /dev/null), streamed through the registry and
#      redirected to a presigned SeaweedFS URL (curl -L): strata `redirect = true` on a
#      fourth replica, Distribution's default (a second instance; the first has
#      `redirect: disable: true`);
#   3. manifest GET req/s and p99 (wrk -t2 -c50 -d10s);
#   4. GET /v2/_catalog?n=10000 with REPOS repositories (one small image each, made with
#      cross-repository mounts) and a tags list of TAGS tags;
#   5. GC of ORPHANS unreferenced small blobs: strata online (`kill -USR1` one replica while
#      skopeo pushes run through HAProxy; time to its "gc done", failed pushes counted,
#      every pushed image checked afterwards), Distribution offline
#      (`docker-registry garbage-collect --delete-untagged` with both servers stopped).
#
#   benches/scripts/scaleout-vs-distribution.sh [ROUNDS]
# Environment: REPOS (10000), TAGS (1000), ORPHANS (10000), LAYER_MIB (256),
# CATALOG_ROUNDS (5), GET_ROUNDS (7), WRK_SECONDS (10), KEEP=1 keeps the work directory.
# Needs: docker-registry, skopeo, haproxy, wrk, curl, jq, bc, python3, setpriv, PostgreSQL
# 15 server binaries (/usr/lib/postgresql/15/bin or $STRATA_PG_BIN), SeaweedFS `weed`
# ($STRATA_WEED or /var/cache/strata/venv/bin/weed); release builds of registry-server and
# store (cargo build --release -p strata-registry --bin registry-server -p strata-store
# --bin store) in $CARGO_TARGET_DIR or ./target, or STRATA_REGISTRY_BIN and STRATA_STORE_BIN;
# scaleout-load.py beside this script (the many small requests). Runs as root (PostgreSQL runs as the user
# postgres through setpriv). Everything binds 127.0.0.1; every process it starts is stopped
# by its PID at exit.
set -euo pipefail
ROUNDS=${1:-3}
REPOS=${REPOS:-10000}; TAGS=${TAGS:-1000}; ORPHANS=${ORPHANS:-10000}; LAYER_MIB=${LAYER_MIB:-256}
CATALOG_ROUNDS=${CATALOG_ROUNDS:-5}; GET_ROUNDS=${GET_ROUNDS:-7}; WRK_SECONDS=${WRK_SECONDS:-10}
HERE=$(cd "$(dirname "$0")" && pwd)
TARGET=${CARGO_TARGET_DIR:-$HERE/../../target}
STRATA=${STRATA_REGISTRY_BIN:-$TARGET/release/registry-server}
STORE=${STRATA_STORE_BIN:-$TARGET/release/store}
WEED=${STRATA_WEED:-/var/cache/strata/venv/bin/weed}
PGBIN=${STRATA_PG_BIN:-/usr/lib/postgresql/15/bin}
LOAD=$HERE/scaleout-load.py
OCI_MANIFEST=application/vnd.oci.image.manifest.v1+json
# This machine sets AWS_CA_BUNDLE; the AWS SDKs then refuse a custom HTTP transport
# (Distribution panics with LoadCustomCABundleError). Every S3 client here is plain HTTP
# to loopback.
unset AWS_CA_BUNDLE
AK=STRATABENCHACCESSKEY; SK=strata-bench-secret-key-for-seaweedfs

W=$(mktemp -d /var/tmp/strata-scaleout.XXXXXX)
chmod 711 "$W"   # the user postgres must reach $W/pg
declare -A PID   # name -> pid of every daemon started here
stop() { # name [signal]: stops one daemon and waits for it
  local p=${PID[$1]:-}
  [ -n "$p" ] || return 0
  kill "-${2:-TERM}" "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  unset "PID[$1]"
}
cleanup() {
  set +e
  [ -e "$W/gc" ] && touch "$W/gc/stop"
  [ -n "${PID[gcloop]:-}" ] && pkill -P "${PID[gcloop]}"   # its skopeo
  stop gcloop
  for n in "${!PID[@]}"; do
    case $n in weed|postgres) ;; *) stop "$n" ;; esac
  done
  stop weed KILL    # a graceful stop waits 15 s for the filer's gRPC streams; data is thrown away
  stop postgres INT # fast shutdown
  for p in "${WEED_GRPC[@]}"; do rm -f /tmp/seaweedfs-{master,volume,filer,s3}-grpc-"$p".sock; done
  if [ -n "${KEEP:-}" ]; then echo "kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
wait_for() { # seconds command...: polls every 0.1 s
  local n=$(( $1 * 10 )); shift
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}
# 16 distinct free ports, bound at once.
read -r S3P S3G MAP MAG VOP VOG FIP FIG PGP HAP R0P R1P R2P RRP DP DRP <<<"$(python3 -c '
import socket
ss = [socket.socket() for _ in range(16)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')"
WEED_GRPC=("$MAG" "$VOG" "$FIG" "$S3G")
S3=http://127.0.0.1:$S3P

# ---------------------------------------------------------------------------------------
# Peers: SeaweedFS (flags as fixtures/src/scaleout.rs), PostgreSQL 15, the registries.
STARTED=$(date '+%F %T'); LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
log "work directory $W"
mkdir -p "$W/weed/data"
printf '{"identities":[{"name":"bench","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","List","Tagging","Write"]}]}' \
  "$AK" "$SK" > "$W/weed/s3.json"
(cd "$W/weed" && exec "$WEED" -logtostderr -config_dir="$W/weed" server -dir="$W/weed/data" \
  -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port="$MAP" -master.port.grpc="$MAG" \
  -master.telemetry=false -master.volumeSizeLimitMB=1024 -volume.port="$VOP" \
  -volume.port.grpc="$VOG" -volume.max=100 -volume.preStopSeconds=0 -filer -filer.port="$FIP" \
  -filer.port.grpc="$FIG" -filer.localSocket="$W/weed/filer.sock" -s3 -s3.port="$S3P" \
  -s3.port.grpc="$S3G" -s3.port.iceberg=0 -s3.port.lance=0 -s3.config="$W/weed/s3.json" \
  -s3.localSocket="$W/weed/s3.sock") >"$W/weed/log" 2>&1 </dev/null &
PID[weed]=$!
# curl signs the path and query as written: keep queries sorted and AWS-encoded.
s3() { curl -sS --noproxy '*' --aws-sigv4 aws:amz:us-east-1:s3 --user "$AK:$SK" "$@"; }
weed_ready() {
  curl -sf "http://127.0.0.1:$MAP/dir/status" | grep -q '"DataNodes":\[{' &&
    [ "$(s3 -o /dev/null -w '%{http_code}' "$S3/")" = 200 ]
}
wait_for 120 weed_ready || { tail -20 "$W/weed/log"; die "SeaweedFS not ready in 120 s"; }
for b in strata dist; do
  code=$(s3 -X PUT -o /dev/null -w '%{http_code}' "$S3/$b")
  [ "$code" = 200 ] || die "create bucket $b: HTTP $code"
done

aspg() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }
mkdir -p "$W/pg"
install -d -o postgres -g postgres -m 700 "$W/pg/data"
install -d -o postgres -g postgres -m 755 "$W/pg/sock"
(cd "$W/pg" && aspg "$PGBIN/initdb" -D "$W/pg/data" -U strata --auth=trust -E UTF8 \
  --no-locale --no-sync) >"$W/pg/initdb.log" 2>&1 || { cat "$W/pg/initdb.log"; die initdb; }
# Durable settings (fsync, synchronous_commit and full_page_writes on: PostgreSQL's
# defaults), unlike the test fixtures.
(cd "$W/pg" && exec setpriv --reuid=postgres --regid=postgres --init-groups -- \
  "$PGBIN/postgres" -D "$W/pg/data" -p "$PGP" -k "$W/pg/sock" \
  -c listen_addresses=127.0.0.1 -c max_connections=200) >"$W/pg/log" 2>&1 </dev/null &
PID[postgres]=$!
psql() { "$PGBIN/psql" -X -q -A -t -w -h 127.0.0.1 -p "$PGP" -U strata "$@"; }
wait_for 60 psql -d postgres -c 'select 1' || { tail "$W/pg/log"; die "PostgreSQL not ready"; }
psql -d postgres -c 'CREATE DATABASE registry'

replica_config() { # file port name redirect
  cat > "$1" <<TOML
listen = "127.0.0.1:$2"
root = "$W/strata/$3"
registry_name = "bench"
[storage]
backend = "s3"
endpoint = "$S3"
region = "us-east-1"
bucket = "strata"
prefix = "strata"
path_style = true
access_key = "$AK"
secret_key = "$SK"
redirect = $4
[metadata]
backend = "postgres"
url = "postgres://strata@127.0.0.1:$PGP/registry"
[gc]
grace = 1
settle = 2
TOML
}
mkdir -p "$W/strata"
# Info from strata's own crates ("gc done"), not the access log: nothing per request.
STRATA_LOG='warn,strata_registry=info,strata_registry::access=warn,strata_store=info'
for r in r0:$R0P:false r1:$R1P:false r2:$R2P:false rr:$RRP:true; do
  IFS=: read -r name port redirect <<<"$r"
  replica_config "$W/strata/$name.toml" "$port" "$name" "$redirect"
  RUST_LOG=$STRATA_LOG "$STRATA" --config "$W/strata/$name.toml" >"$W/strata/$name.log" 2>&1 </dev/null &
  PID[$name]=$!
  # One at a time: the first creates the schema.
  wait_for 60 curl -sf "http://127.0.0.1:$port/v2/" || { tail "$W/strata/$name.log"; die "replica $name"; }
done

mkdir -p "$W/haproxy"
cat > "$W/haproxy/haproxy.cfg" <<CFG
global
    maxconn 2000
    log stderr format raw local0 notice

defaults
    mode http
    log global
    option dontlognull
    option http-keep-alive
    option redispatch 1
    retries 3
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-request 300s
    timeout http-keep-alive 300s
    timeout queue 60s
    timeout check 2s

frontend strata
    bind 127.0.0.1:$HAP
    default_backend replicas

backend replicas
    balance roundrobin
    server r0 127.0.0.1:$R0P check inter 500ms fall 2 rise 1
    server r1 127.0.0.1:$R1P check inter 500ms fall 2 rise 1
    server r2 127.0.0.1:$R2P check inter 500ms fall 2 rise 1
CFG
(cd "$W/haproxy" && exec haproxy -db -f "$W/haproxy/haproxy.cfg") >"$W/haproxy/log" 2>&1 </dev/null &
PID[haproxy]=$!
wait_for 30 curl -sf "http://127.0.0.1:$HAP/v2/" || { tail "$W/haproxy/log"; die haproxy; }

dist_config() { # file port redirect-disabled
  cat > "$1" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage:
  s3:
    region: us-east-1
    regionendpoint: "$S3"
    bucket: dist
    accesskey: $AK
    secretkey: $SK
    secure: false
    v4auth: true
    rootdirectory: /dist
  delete: {enabled: true}
  cache: {blobdescriptor: inmemory}
  redirect: {disable: $3}
catalog: {maxentries: 10000}
http: {addr: "127.0.0.1:$2"}
YML
}
mkdir -p "$W/dist"
dist_config "$W/dist/dist.yml" "$DP" true
dist_config "$W/dist/distr.yml" "$DRP" false
for d in dist:$DP distr:$DRP; do
  IFS=: read -r name port <<<"$d"
  docker-registry serve "$W/dist/$name.yml" >"$W/dist/$name.log" 2>&1 </dev/null &
  PID[$name]=$!
  wait_for 30 curl -sf "http://127.0.0.1:$port/v2/" || { tail "$W/dist/$name.log"; die "$name"; }
done
log "peers up: SeaweedFS S3 :$S3P, PostgreSQL :$PGP, strata :$R0P :$R1P :$R2P (redirect :$RRP), HAProxy :$HAP, Distribution :$DP (redirect :$DRP)"

# The three sides: Distribution, one strata replica alone, three behind HAProxy.
SIDES=(dist s1 s3)
declare -A ADDR=([dist]=127.0.0.1:$DP [s1]=127.0.0.1:$R0P [s3]=127.0.0.1:$HAP)
declare -A SRV=([dist]="${PID[dist]}" [s1]="${PID[r0]}" [s3]="${PID[r0]} ${PID[r1]} ${PID[r2]}")
ticks() { local t=0 p; for p in "$@"; do t=$(( t + $(awk '{print $14+$15}' "/proc/$p/stat") )); done; echo "$t"; }
pg_ticks() { # the postmaster (with its reaped children) and its live children
  local t p
  t=$(awk '{print $14+$15+$16+$17}' "/proc/${PID[postgres]}/stat")
  for p in $(pgrep -P "${PID[postgres]}"); do
    t=$(( t + $(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0) ))
  done
  echo "$t"
}
median() { sort -g | awk '{a[NR]=$1} END{if (NR==0) print "nan"; else print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
med() { tr ' ' '\n' <<<"${R[$1]:-}" | grep . | median; }
declare -A R SEED CATN TAGN

# An OCI layout with one uncompressed tar layer of MiB random bytes, tag "1"; prints the
# layer digest.
make_layout() { # dir mib
  local L=$1 d size cd_ csize md msize
  mkdir -p "$L/blobs/sha256" "$L.src"
  echo '{"imageLayoutVersion":"1.0.0"}' > "$L/oci-layout"
  head -c $(( $2 << 20 )) /dev/urandom > "$L.src/data"
  tar -C "$L.src" -cf "$L/layer.tar" data; rm -rf "$L.src"
  size=$(stat -c %s "$L/layer.tar"); d=$(sha256sum "$L/layer.tar" | cut -d' ' -f1)
  mv "$L/layer.tar" "$L/blobs/sha256/$d"
  printf '{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$d" > "$L/config"
  csize=$(stat -c %s "$L/config"); cd_=$(sha256sum "$L/config" | cut -d' ' -f1); mv "$L/config" "$L/blobs/sha256/$cd_"
  printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%d}]}' \
    "$OCI_MANIFEST" "$cd_" "$csize" "$d" "$size" > "$L/manifest"
  msize=$(stat -c %s "$L/manifest"); md=$(sha256sum "$L/manifest" | cut -d' ' -f1); mv "$L/manifest" "$L/blobs/sha256/$md"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"%s","digest":"sha256:%s","size":%d,"annotations":{"org.opencontainers.image.ref.name":"1"}}]}' \
    "$OCI_MANIFEST" "$md" "$msize" > "$L/index.json"
  echo "sha256:$d"
}
skopeo_push() { # layout ref
  skopeo --insecure-policy copy -q --preserve-digests --dest-tls-verify=false "oci:$1:1" "docker://$2"
}

# ---------------------------------------------------------------------------------------
# 1. Push throughput and CPU.
declare -A LAYER
mkdir -p "$W/push"
for round in $(seq "$ROUNDS"); do
  for side in "${SIDES[@]}"; do
    L=$W/push/$side$round
    layer=$(make_layout "$L" "$LAYER_MIB"); sync
    [ "$round" = 1 ] && LAYER[$side]=$layer
    # shellcheck disable=SC2086
    c0=$(ticks ${SRV[$side]}); h0=$(ticks "${PID[haproxy]}"); w0=$(ticks "${PID[weed]}"); p0=$(pg_ticks)
    t0=$(date +%s.%N)
    skopeo_push "$L" "${ADDR[$side]}/push/$side$round:1" >>"$W/skopeo.log" 2>&1 ||
      { tail -5 "$W/skopeo.log"; die "push $side round $round"; }
    t1=$(date +%s.%N)
    # shellcheck disable=SC2086
    c1=$(ticks ${SRV[$side]}); h1=$(ticks "${PID[haproxy]}"); w1=$(ticks "${PID[weed]}"); p1=$(pg_ticks)
    gb=$(echo "$LAYER_MIB / 1024" | bc -l)
    R[$side.push]+="$(echo "$LAYER_MIB / ($t1 - $t0)" | bc -l) "
    R[$side.cpu]+="$(echo "($c1 - $c0) / 100 / $gb" | bc -l) "
    R[$side.hacpu]+="$(echo "($h1 - $h0) / 100 / $gb" | bc -l) "
    R[$side.weedcpu]+="$(echo "($w1 - $w0) / 100 / $gb" | bc -l) "
    R[$side.pgcpu]+="$(echo "($p1 - $p0) / 100 / $gb" | bc -l) "
    rm -rf "$L"
    log "push $side round $round: $(echo "scale=1; $LAYER_MIB / ($t1 - $t0)" | bc -l) MiB/s"
  done
done

# ---------------------------------------------------------------------------------------
# 2. Blob GETs of the layer: streamed, and redirected to a presigned URL (-L).
declare -A GETURL=(
  [dist]="http://127.0.0.1:$DP/v2/push/dist1/blobs/${LAYER[dist]}"
  [distr]="http://127.0.0.1:$DRP/v2/push/dist1/blobs/${LAYER[dist]}"
  [s1]="http://127.0.0.1:$R0P/v2/push/s11/blobs/${LAYER[s1]}"
  [s3]="http://127.0.0.1:$HAP/v2/push/s11/blobs/${LAYER[s1]}"
  [sr]="http://127.0.0.1:$RRP/v2/push/s11/blobs/${LAYER[s1]}")
declare -A HOPS=([dist]=0 [distr]=1 [s1]=0 [s3]=0 [sr]=1)
for round in $(seq "$GET_ROUNDS"); do
  for side in dist distr s1 s3 sr; do
    read -r speed code hops < <(curl -sS -L -o /dev/null -w '%{speed_download} %{http_code} %{num_redirects}\n' "${GETURL[$side]}")
    [ "$code" = 200 ] && [ "$hops" = "${HOPS[$side]}" ] || die "GET $side: HTTP $code after $hops redirects"
    R[$side.get]+="$(echo "$speed / 1000000" | bc -l) "
  done
done
log "blob GETs done"

# ---------------------------------------------------------------------------------------
# 3. Manifest GETs with 50 connections.
wrk_ms() { awk -v p="$1" '$1==p{v=$2; if (v ~ /us$/) {sub("us","",v); v/=1000} else if (v ~ /ms$/) {sub("ms","",v)} else if (v ~ /s$/) {sub("s","",v); v*=1000}; print v}'; }
for round in $(seq "$ROUNDS"); do
  for side in "${SIDES[@]}"; do
    repo=push/${side}1
    # shellcheck disable=SC2086
    c0=$(ticks ${SRV[$side]}); h0=$(ticks "${PID[haproxy]}"); w0=$(ticks "${PID[weed]}"); p0=$(pg_ticks)
    out=$(wrk -t2 -c50 -d"${WRK_SECONDS}s" --latency -H "Accept: $OCI_MANIFEST" "http://${ADDR[$side]}/v2/$repo/manifests/1")
    # shellcheck disable=SC2086
    c1=$(ticks ${SRV[$side]}); h1=$(ticks "${PID[haproxy]}"); w1=$(ticks "${PID[weed]}"); p1=$(pg_ticks)
    n=$(awk '/requests in/{print $1}' <<<"$out")
    # CPU microseconds per request, of each process group
    R[$side.mcpu]+="$(echo "($c1 - $c0) * 10000 / $n" | bc -l) "
    R[$side.mhacpu]+="$(echo "($h1 - $h0) * 10000 / $n" | bc -l) "
    R[$side.mweedcpu]+="$(echo "($w1 - $w0) * 10000 / $n" | bc -l) "
    R[$side.mpgcpu]+="$(echo "($p1 - $p0) * 10000 / $n" | bc -l) "
    R[$side.mrps]+="$(awk '/Requests\/sec/{print $2}' <<<"$out") "
    R[$side.p99]+="$(wrk_ms 99% <<<"$out") "
    R[$side.p50]+="$(wrk_ms 50% <<<"$out") "
    bad=$(awk '/Non-2xx/{print $NF}' <<<"$out"); errs=$(awk '/Socket errors/{print $0}' <<<"$out")
    [ -z "$bad$errs" ] || log "wrk $side round $round: non-2xx ${bad:-0}; ${errs:-no socket errors}"
    R[$side.mbad]+="${bad:-0} "
  done
done
log "manifest GETs done"

# ---------------------------------------------------------------------------------------
# 4. _catalog with REPOS repositories, tags list of TAGS tags. strata is seeded through
# HAProxy: the replicas share everything, so the one replica alone sees the same.
for side in dist s3; do
  out=$(python3 "$LOAD" seed "http://${ADDR[$side]}" "$REPOS" "$TAGS")
  log "seed $side: $out"
  SEED[$side]=$out
  [ "$(jq .errors <<<"$out")" = 0 ] || log "seeding $side had errors (see above)"
done
for round in $(seq "$CATALOG_ROUNDS"); do
  for side in "${SIDES[@]}"; do
    out=$(python3 "$LOAD" catalog "http://${ADDR[$side]}")
    [ "$(jq -r .status <<<"$out")" = 200 ] || die "catalog $side: $out"
    R[$side.cat]+="$(jq .first_ms <<<"$out") "; CATN[$side]=$(jq .first_count <<<"$out")
    out=$(python3 "$LOAD" tags "http://${ADDR[$side]}" cat/r00000)
    [ "$(jq -r .status <<<"$out")" = 200 ] || die "tags $side: $out"
    R[$side.tags]+="$(jq .ms <<<"$out") "; TAGN[$side]=$(jq .count <<<"$out")
  done
done
log "catalog: ${CATN[dist]} / ${CATN[s1]} / ${CATN[s3]} repositories in the first page; tags ${TAGN[dist]} / ${TAGN[s1]} / ${TAGN[s3]}"

# ---------------------------------------------------------------------------------------
# 5. GC of ORPHANS unreferenced blobs.
mkdir -p "$W/gc"
GCUP_S=$(python3 "$LOAD" orphans "http://127.0.0.1:$HAP" gc/orphans "$ORPHANS")
log "orphans strata: $GCUP_S"
GCUP_D=$(python3 "$LOAD" orphans "http://127.0.0.1:$DP" gc/orphans "$ORPHANS")
log "orphans dist: $GCUP_D"
du_blobs() { "$STORE" du --json --config "$W/strata/r0.toml" 2>>"$W/gc/du.err" | jq .blobs; }
BLOBS0=$(du_blobs)
sleep 2   # past the grace period (1 s)

# Pushes through HAProxy while the GC runs: a new 1 MiB layer each (so new blobs race the
# collection), a tag each.
gc_push_loop() {
  local i=0
  while [ ! -e "$W/gc/stop" ]; do
    i=$((i + 1))
    make_layout "$W/gc/l$i" 1 >/dev/null
    if skopeo_push "$W/gc/l$i" "127.0.0.1:$HAP/gcpush/img:$i" >>"$W/gc/skopeo.log" 2>&1; then
      echo "$i ok $(date +%s.%N)"
    else
      echo "$i FAIL $(date +%s.%N)"
    fi >>"$W/gc/pushes"
    rm -rf "$W/gc/l$i"
  done
}
gc_push_loop & PID[gcloop]=$!
oks() { grep -c ' ok ' "$W/gc/pushes" 2>/dev/null || true; }
two_pushes() { [ "$(oks)" -ge 2 ]; }
wait_for 60 two_pushes || die "pushes before the GC did not succeed: $(cat "$W/gc/pushes" 2>/dev/null)"
before=$(oks)
gc_lines() { grep -c -E 'gc done|gc: ' "$W/strata/r0.log" || true; }
n0=$(gc_lines)
t0=$(date +%s.%N)
kill -USR1 "${PID[r0]}"
gc_done() { [ "$(gc_lines)" -gt "$n0" ]; }
wait_for 900 gc_done || die "no 'gc done' from replica r0 within 900 s"
t1=$(date +%s.%N)
GC_S=$(echo "$t1 - $t0" | bc -l)
nocolor() { sed 's/\x1b\[[0-9;]*m//g'; }
GC_LINE=$(grep -E 'gc done|gc: ' "$W/strata/r0.log" | tail -1 | nocolor)
during=$(( $(oks) - before ))
sleep 3
touch "$W/gc/stop"; wait "${PID[gcloop]}" || true; unset "PID[gcloop]"
GC_OK=$(oks); GC_FAIL=$(grep -c ' FAIL ' "$W/gc/pushes" || true)
BLOBS1=$(du_blobs)
mapfile -t okt < <(awk '$2=="ok"{print $1}' "$W/gc/pushes")
VERIFY=$(python3 "$LOAD" verify "http://127.0.0.1:$HAP" gcpush/img "${okt[@]}")
log "strata GC: $(printf '%.2f' "$GC_S") s; $GC_LINE"
log "pushes: $GC_OK ok ($during completed during the GC), $GC_FAIL failed; blobs $BLOBS0 -> $BLOBS1; after: $VERIFY"
[ "$GC_FAIL" = 0 ] || { log "failed pushes:"; grep -i -B2 -A2 'error\|fail' "$W/gc/skopeo.log" | tail -30 >&2; }

# Distribution: offline only. Both instances share the bucket: stop both.
stop dist; stop distr
t0=$(date +%s.%N)
timeout 3600 docker-registry garbage-collect --delete-untagged "$W/dist/dist.yml" >"$W/dist/gc.log" 2>&1 ||
  log "docker-registry garbage-collect: exit $? ($(tail -1 "$W/dist/gc.log"))"
t1=$(date +%s.%N)
DGC_S=$(echo "$t1 - $t0" | bc -l)
DGC_ELIGIBLE=$(grep -c 'blob eligible for deletion' "$W/dist/gc.log" || true)
log "Distribution GC: $(printf '%.1f' "$DGC_S") s, $DGC_ELIGIBLE blobs eligible for deletion"

# ---------------------------------------------------------------------------------------
# Errors the replicas answered (their /metrics), warnings they logged.
for n in r0 r1 r2 rr; do
  port=$(awk -F'[:"]' '/^listen/{print $(NF-1)}' "$W/strata/$n.toml")
  e=$(curl -sf "http://127.0.0.1:$port/metrics" | grep '^strata_registry_requests_total' | grep 'status="5' || true)
  [ -z "$e" ] || log "replica $n 5xx: $e"
  w=$(grep -c -E 'WARN|ERROR' "$W/strata/$n.log" || true)
  [ "$w" = 0 ] || { log "replica $n logged $w warnings/errors, the last:"; grep -E 'WARN|ERROR' "$W/strata/$n.log" | tail -5 | nocolor >&2; }
done

# ---------------------------------------------------------------------------------------
echo
echo "registry-server: $STRATA ($(stat -c %y "$STRATA" | cut -d. -f1)); $(docker-registry --version)"
echo "started $STARTED, ended $(date '+%F %T'); load average before: $LOAD0; after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "rounds: $ROUNDS (blob GETs $GET_ROUNDS, catalog $CATALOG_ROUNDS); layer ${LAYER_MIB} MiB; $REPOS repositories, $TAGS tags; $ORPHANS orphans"
printf '%-44s %14s %14s %14s\n' metric distribution strata-1 strata-3-haproxy
row() { printf '%-44s %14.2f %14.2f %14.2f\n' "$1" "$(med "dist.$2")" "$(med "s1.$2")" "$(med "s3.$2")"; }
row "push MiB/s (skopeo, median)" push
row "registry CPU-s/GB pushed (sum of replicas)" cpu
row "HAProxy CPU-s/GB pushed" hacpu
row "SeaweedFS CPU-s/GB pushed" weedcpu
row "PostgreSQL CPU-s/GB pushed" pgcpu
row "blob GET MB/s, streamed" get
printf '%-44s %14.2f %14s %14.2f\n' "blob GET MB/s, 307 to presigned URL (-L)" "$(med distr.get)" - "$(med sr.get)"
row "manifest GET req/s (wrk -c50)" mrps
row "manifest GET p50 ms" p50
row "manifest GET p99 ms" p99
row "manifest GET non-2xx (per run)" mbad
row "  CPU us/manifest GET: registry" mcpu
row "  CPU us/manifest GET: HAProxy" mhacpu
row "  CPU us/manifest GET: SeaweedFS" mweedcpu
row "  CPU us/manifest GET: PostgreSQL" mpgcpu
row "GET /v2/_catalog?n=10000 ms" cat
row "GET tags/list ($TAGS+1 tags) ms" tags
printf '%-44s %14s %14s %14s\n' "repositories in the catalog's first page" "${CATN[dist]}" "${CATN[s1]}" "${CATN[s3]}"
printf '%-44s %14s %14s %14s\n' "seed $REPOS repos + $TAGS tags, s (16 threads)" \
  "$(jq '.repos_seconds + .tags_seconds | . * 10 | round / 10' <<<"${SEED[dist]}")" - \
  "$(jq '.repos_seconds + .tags_seconds | . * 10 | round / 10' <<<"${SEED[s3]}")"
printf '%-44s %14s %14s %14s\n' "upload $ORPHANS small blobs, s (16 threads)" "$(jq .seconds <<<"$GCUP_D")" - "$(jq .seconds <<<"$GCUP_S")"
printf '%-44s %14s %14s %14s\n' "GC of $ORPHANS unreferenced blobs, s" "$(printf '%.1f' "$DGC_S") (offline)" - "$(printf '%.2f' "$GC_S") (online)"
printf '%-44s %14s %14s %14s\n' "pushes during the GC: ok / failed" "impossible" - "$during / $GC_FAIL"
echo "strata: $GC_LINE"
echo "strata blobs (store du): $BLOBS0 before, $BLOBS1 after; images pushed around the GC: $VERIFY"
echo "Distribution GC: $DGC_ELIGIBLE blobs eligible for deletion"
for side in dist s3; do echo "seed $side: ${SEED[$side]}"; done
echo "every sample, in run order:"
for k in $(printf '%s\n' "${!R[@]}" | sort); do
  printf '  %-14s %s\n' "$k" "$(for v in ${R[$k]}; do printf '%.4g ' "$v"; done)"
done
