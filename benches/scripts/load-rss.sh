#!/usr/bin/env bash
# Peak RSS and wall time of `puller load` for a docker-save archive with one 1 GiB
# (random, incompressible) layer, against `tar -x` of the same layer.
# Usage: benches/scripts/load-rss.sh [PULLER_BINARY] [SIZE_MIB]
set -euo pipefail
PULLER=${1:-${CARGO_TARGET_DIR:-target}/release/puller}
SIZE_MIB=${2:-1024}
WORK=$(mktemp -d "${STRATA_BENCH_DIR:-/var/tmp}/strata-rss-XXXXXX")
trap 'rm -rf "$WORK"' EXIT
python3 - "$WORK" "$SIZE_MIB" <<'PY'
import hashlib, io, json, os, sys, tarfile
work, mib = sys.argv[1], int(sys.argv[2])
layer = os.path.join(work, "layer.tar")
big = os.path.join(work, "big.bin")
with open(big, "wb") as f:
    rnd = hashlib.sha256(b"seed")
    block = b"".join(hashlib.sha256(rnd.digest() + i.to_bytes(4, "little")).digest() for i in range(32768))  # 1 MiB
    for i in range(mib):
        f.write(hashlib.sha256(block[:64] + i.to_bytes(4, "little")).digest() + block[32:])
with tarfile.open(layer, "w", format=tarfile.GNU_FORMAT) as t:
    t.add(big, arcname="big.bin")
os.remove(big)
h = hashlib.sha256()
with open(layer, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
diff_id = "sha256:" + h.hexdigest()
config = json.dumps({"architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
                     "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
cfg_hex = hashlib.sha256(config).hexdigest()
manifest = json.dumps([{"Config": cfg_hex + ".json", "RepoTags": ["bench/big:1"], "Layers": ["l/layer.tar"]}]).encode()
with tarfile.open(os.path.join(work, "archive.tar"), "w", format=tarfile.GNU_FORMAT) as t:
    for name, data in [(cfg_hex + ".json", config), ("manifest.json", manifest)]:
        ti = tarfile.TarInfo(name); ti.size = len(data); t.addfile(ti, io.BytesIO(data))
    t.add(layer, arcname="l/layer.tar")
PY
sync
echo "archive: $(du -h "$WORK/archive.tar" | cut -f1) in $WORK"
/usr/bin/time -f 'puller load: %e s wall, %M KiB max RSS' "$PULLER" --root "$WORK/store" load "$WORK/archive.tar" 2>&1 | grep -v '^Loaded' | tail -2
mkdir "$WORK/x"
/usr/bin/time -f 'tar -x of the layer: %e s wall, %M KiB max RSS' tar -xf "$WORK/layer.tar" -C "$WORK/x"
