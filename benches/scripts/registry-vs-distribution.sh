#!/usr/bin/env bash
# Side-by-side: strata's registry-server (A) against CNCF Distribution (B), alternating
# A B A B over ROUNDS rounds on this machine. Prints medians per measure, and the ratio.
# Usage: benches/scripts/registry-vs-distribution.sh [REGISTRY_SERVER_BINARY] [ROUNDS]
# Needs: docker-registry, curl, wrk, ab (apache2-utils), python3.
set -euo pipefail
STRATA=${1:-${CARGO_TARGET_DIR:-target}/release/registry-server}
ROUNDS=${2:-3}
WORK=$(mktemp -d "${STRATA_BENCH_DIR:-/var/tmp}/strata-regbench-XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Test data: one 64 MiB and one 256 MiB incompressible blob, a config, a manifest.
head -c $((64 << 20)) /dev/urandom >"$WORK/blob64"
head -c $((256 << 20)) /dev/urandom >"$WORK/blob256"
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$(sha256sum "$WORK/blob64" | cut -d' ' -f1)" >"$WORK/config"
dig() { echo "sha256:$(sha256sum "$1" | cut -d' ' -f1)"; }
B64=$(dig "$WORK/blob64"); B256=$(dig "$WORK/blob256"); CFG=$(dig "$WORK/config")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%d}]}' \
    "$CFG" "$(stat -c%s "$WORK/config")" "$B64" "$(stat -c%s "$WORK/blob64")" >"$WORK/manifest"

start_strata() {
    local port; port=$(free_port)
    "$STRATA" --root "$WORK/strata-root" --listen "127.0.0.1:$port" >"$WORK/strata.log" 2>&1 &
    PIDS+=($!); SERVER_PID=$!; URL="http://127.0.0.1:$port"
}
start_distribution() {
    local port; port=$(free_port)
    mkdir -p "$WORK/dist-root"
    cat >"$WORK/dist.yml" <<YML
version: 0.1
log: {level: error}
storage:
  filesystem: {rootdirectory: $WORK/dist-root}
  delete: {enabled: true}
http: {addr: 127.0.0.1:$port}
YML
    docker-registry serve "$WORK/dist.yml" >"$WORK/dist.log" 2>&1 &
    PIDS+=($!); SERVER_PID=$!; URL="http://127.0.0.1:$port"
}
wait_up() { for _ in $(seq 100); do curl -sf "$URL/v2/" >/dev/null && return; sleep 0.1; done; echo "server did not start" >&2; exit 1; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }

push_blob() { # file digest
    local loc
    loc=$(curl -sf -D - -o /dev/null -X POST "$URL/v2/bench/blobs/uploads/" | awk 'tolower($1)=="location:" {print $2}' | tr -d '\r')
    case "$loc" in http*) ;; *) loc="$URL$loc" ;; esac
    case "$loc" in *\?*) loc="$loc&digest=$2" ;; *) loc="$loc?digest=$2" ;; esac
    curl -sf -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' --data-binary @"$1" "$loc"
}

declare -A RESULTS
record() { RESULTS["$1|$2"]+="$3 "; }

measure() { # name (A or B)
    local who=$1 t0 t1 c0 c1 hz
    hz=$(getconf CLK_TCK)
    wait_up
    sleep 0.5
    record "$who" "rss_idle_MiB" "$(awk -v k="$(rss_kib "$SERVER_PID" VmRSS)" 'BEGIN{printf "%.1f", k/1024}')"
    # Push: 256 MiB monolithic, wall time and server CPU-seconds per GB.
    c0=$(cpu_ticks "$SERVER_PID"); t0=$(date +%s.%N)
    push_blob "$WORK/blob256" "$B256"
    t1=$(date +%s.%N); c1=$(cpu_ticks "$SERVER_PID")
    record "$who" "push_MBps" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", 256*1.048576/(b-a)}')"
    record "$who" "push_cpu_s_per_GB" "$(awk -v c="$((c1 - c0))" -v hz="$hz" 'BEGIN{printf "%.2f", (c/hz)/(256*1.048576/1000)}')"
    push_blob "$WORK/blob64" "$B64"; push_blob "$WORK/config" "$CFG"
    curl -sf -o /dev/null -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary @"$WORK/manifest" "$URL/v2/bench/manifests/1"
    # Blob GET, one stream and four in parallel (MB/s aggregate), best of 3 each.
    local best=0 r
    for _ in 1 2 3; do
        r=$(curl -sf -o /dev/null -w '%{speed_download}' "$URL/v2/bench/blobs/$B64")
        best=$(awk -v a="$best" -v b="$r" 'BEGIN{print (b>a)?b:a}')
    done
    record "$who" "blob_get_MBps" "$(awk -v b="$best" 'BEGIN{printf "%.0f", b/1e6}')"
    t0=$(date +%s.%N)
    local gets=()
    for _ in 1 2 3 4; do curl -sf -o /dev/null "$URL/v2/bench/blobs/$B64" & gets+=($!); done
    for g in "${gets[@]}"; do wait "$g"; done
    t1=$(date +%s.%N)
    record "$who" "blob_get_x4_MBps" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", 4*64*1.048576/(b-a)}')"
    # Manifest GET and blob HEAD under 50 connections.
    local out
    out=$(wrk -t2 -c50 -d8s --latency -H 'Accept: application/vnd.oci.image.manifest.v1+json' "$URL/v2/bench/manifests/1")
    record "$who" "manifest_get_rps" "$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")"
    record "$who" "manifest_get_p99_ms" "$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; printf "%.2f", v}' <<<"$out")"
    # wrk waits for a body after HEAD; ab -i speaks HEAD properly.
    out=$(ab -q -k -i -c 50 -n 20000 "$URL/v2/bench/blobs/$B64" 2>&1)
    record "$who" "blob_head_rps" "$(awk '/Requests per second/ {printf "%.0f", $4}' <<<"$out")"
    record "$who" "rss_peak_MiB" "$(awk -v k="$(rss_kib "$SERVER_PID" VmHWM)" 'BEGIN{printf "%.1f", k/1024}')"
    kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
}

for round in $(seq "$ROUNDS"); do
    echo "round $round: strata" >&2
    rm -rf "$WORK/strata-root"; start_strata; measure A
    echo "round $round: distribution" >&2
    rm -rf "$WORK/dist-root"; start_distribution; measure B
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2}'; }
printf '%-22s %12s %12s %8s\n' measure strata distribution ratio
for m in blob_get_MBps blob_get_x4_MBps push_MBps push_cpu_s_per_GB manifest_get_rps manifest_get_p99_ms blob_head_rps rss_idle_MiB rss_peak_MiB; do
    a=$(median <<<"${RESULTS["A|$m"]:-}"); b=$(median <<<"${RESULTS["B|$m"]:-}")
    printf '%-22s %12s %12s %8s\n' "$m" "$a" "$b" "$(awk -v a="$a" -v b="$b" 'BEGIN{ if (b>0) printf "%.2f", a/b; else print "-" }')"
done
