#!/usr/bin/env python3
"""Crash campaigns: SIGKILL strata's programs at random moments and check that nothing
acknowledged is lost and nothing is left broken.

  benches/scripts/crash-campaign.py [--bin DIR] [--work DIR] [--seed N] CAMPAIGN [options]

CAMPAIGN is one of
  registry  registry-server under concurrent pushes (monolithic, chunked and PUT-bodied
            uploads, cross-repository mounts), manifest and blob deletes, uploads left in
            progress and resumed across restarts, online GC ([gc] interval and SIGUSR1);
            killed with SIGKILL every 0.2-3 s and restarted. With the server down after
            each kill `store fsck` must find no fault; after each restart every push
            acknowledged since the last check (201 on the manifest PUT) and a sample of the
            older ones are pulled (manifest and every blob, digest-checked), every
            acknowledged manifest is HEADed, and every upload chunk acknowledged (202)
            must still be there. At the end every acknowledged push is pulled once more.
            --duration S (default 600), --min-kills N (default 100: runs past the duration
            until reached, up to twice the duration).
  fetch     `puller fetch` of a large image from our registry, killed mid-download/unpack.
  load      `puller load` of a large docker-save archive, killed mid-load.
  gc        `store gc` of a store full of removed images (many blobs and layers), killed
            mid-collection.
  commit    `runner commit` of a stopped container with many files (as root), killed
            mid-commit.
  commit-paused  `runner commit -p` of a running container with many files, killed while
            the container is frozen: `runner kill` must reach (thaw) it afterwards.
  all       every campaign above in turn.
For fetch, load, gc and commit (--kills N, default 20): after each kill `store fsck` finds
no fault, the next run of the same command succeeds, and after it the store holds no
partial ingest, staging file, unpack in progress (`layers/.tmp`) or mount of its own.

Binaries come from --bin (default $CARGO_TARGET_DIR/release, built with
`cargo build --release -p strata-registry -p strata-store -p strata-puller -p strata-runner`).
Prints one line per event and a summary line per campaign; exits non-zero on any failure.
Images are built here, deterministically from --seed (tar layers of seeded random files).
"""

import argparse
import gzip
import hashlib
import http.client
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------- deterministic images


def layer_tar(seed, files, size, prefix=None):
    """An uncompressed tar of `files` seeded random files totalling about `size` bytes."""
    rng = random.Random(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        top = prefix or f"l{seed}"
        d = tarfile.TarInfo(top)
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, 0
        t.addfile(d)
        per = max(1, size // max(1, files))
        for i in range(files):
            data = rng.randbytes(per)
            ti = tarfile.TarInfo(f"{top}/f{i:05}")
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


class Image:
    """Config, layers and manifest bytes of one image."""

    def __init__(self, layers, label, extra_files=None):
        # layers: list of (media_type, blob_bytes, diff_id)
        self.layers = layers
        config = {
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": {"Labels": {"crash.campaign": label}, "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [d for _, _, d in layers]},
            "history": [{"created": "2024-01-01T00:00:00Z", "created_by": f"layer {i}"} for i in range(len(layers))],
        }
        self.config = json.dumps(config, sort_keys=True).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha(self.config), "size": len(self.config)},
            "layers": [{"mediaType": mt, "digest": sha(b), "size": len(b)} for mt, b, _ in layers],
        }
        self.manifest = json.dumps(manifest, sort_keys=True).encode()
        self.digest = sha(self.manifest)

    def blobs(self):
        """(digest, bytes) of the config and layers."""
        return [(sha(self.config), self.config)] + [(sha(b), b) for _, b, _ in self.layers]


def make_layer(seed, files, size, compress=False, prefix=None):
    tar = layer_tar(seed, files, size, prefix)
    if compress:
        return (LAYER_GZIP, gzip.compress(tar, compresslevel=1, mtime=0), sha(tar))
    return (LAYER_TAR, tar, sha(tar))


def write_oci_layout(path, images):
    """An OCI image layout directory holding `images` ((Image, ref_name) pairs)."""
    os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(path, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    manifests = []
    for img, ref in images:
        for d, b in img.blobs() + [(img.digest, img.manifest)]:
            p = os.path.join(path, "blobs", "sha256", d[7:])
            if not os.path.exists(p):
                with open(p, "wb") as f:
                    f.write(b)
        manifests.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": img.digest,
                "size": len(img.manifest),
                "annotations": {"org.opencontainers.image.ref.name": ref},
            }
        )
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}, f)


# ---------------------------------------------------------------- HTTP


class Http:
    def __init__(self, port, timeout=60):
        self.port = port
        self.timeout = timeout

    def req(self, method, path, body=None, headers=None, keep=False):
        """Returns (status, headers with lower-case names, body bytes)."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def get_digest(self, path, accept=None):
        """GETs `path`, hashing the body as it streams: (status, digest, length, headers)."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            c.request("GET", path, headers={"Accept": accept} if accept else {})
            r = c.getresponse()
            h = hashlib.sha256()
            n = 0
            while True:
                chunk = r.read(1 << 20)
                if not chunk:
                    break
                h.update(chunk)
                n += len(chunk)
            return r.status, "sha256:" + h.hexdigest(), n, {k.lower(): v for k, v in r.getheaders()}
        finally:
            c.close()


def loc_path(location):
    u = urllib.parse.urlsplit(location)
    return u.path + (("?" + u.query) if u.query else "")


def with_query(path, q):
    return path + ("&" if "?" in path else "?") + q


class Unexpected(Exception):
    pass


def expect(status, want, what, body=b""):
    if status not in want:
        raise Unexpected(f"{what}: HTTP {status} {body[:300]!r}")


# ---------------------------------------------------------------- processes


def bins(args):
    d = args.bin or os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release")
    out = {n: os.path.join(d, n) for n in ("registry-server", "store", "puller", "runner")}
    for n, p in out.items():
        if not os.access(p, os.X_OK):
            sys.exit(f"no {n} at {p}: cargo build --release -p strata-registry -p strata-store -p strata-puller -p strata-runner")
    return out


def run(cmd, check=True, timeout=600, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise Unexpected(f"{' '.join(map(str, cmd))} exited {p.returncode}: {p.stderr.strip()[-800:]}")
    return p


def fsck(b, root):
    """Faults `store fsck` reports (an empty list when clean)."""
    p = run([b["store"], "--root", root, "fsck", "--json"], check=False)
    try:
        report = json.loads(p.stdout)
    except ValueError:
        return [f"fsck exited {p.returncode} without a report: {p.stderr.strip()[-500:]}"]
    faults = [f"{f['kind']}: {f['subject']}: {f['detail']}" for f in report.get("faults", [])]
    if p.returncode != 0 and not faults:
        faults.append(f"fsck exited {p.returncode}: {p.stderr.strip()[-500:]}")
    return faults


def leftovers(root):
    """Debris of interrupted work that a completed run should have cleaned up."""
    out = []
    ingest = os.path.join(root, "ingest")
    if os.path.isdir(ingest):
        out += [f"ingest/{n}" for n in sorted(os.listdir(ingest))]
    tmp = os.path.join(root, "layers", ".tmp")
    if os.path.isdir(tmp):
        out += [f"layers/.tmp/{n}" for n in sorted(os.listdir(tmp))]
    real = os.path.realpath(root)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4]
            if mnt.startswith(real + "/") or mnt == real:
                out.append(f"mount {mnt}")
    return out


class Server:
    """registry-server on a store, restartable."""

    def __init__(self, b, root, work, config_extra=""):
        self.b = b
        self.root = root
        self.port = free_port()
        self.config = os.path.join(work, "registry.toml")
        with open(self.config, "w") as f:
            f.write(f'root = "{root}"\nlisten = "127.0.0.1:{self.port}"\n{config_extra}')
        self.logf = open(os.path.join(work, "registry.log"), "ab")
        self.proc = None
        self.http = Http(self.port)

    def start(self, timeout=60):
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        self.proc = subprocess.Popen([self.b["registry-server"], "--config", self.config], stdout=self.logf, stderr=self.logf, env=env)
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise Unexpected(f"registry-server exited {self.proc.returncode} at start (see {self.logf.name})")
            try:
                if self.http.req("GET", "/v2/")[0] == 200:
                    return time.time() - t0
            except OSError:
                pass
            time.sleep(0.05)
        raise Unexpected(f"registry-server not ready after {timeout} s")

    def kill(self, sig=signal.SIGKILL):
        self.proc.send_signal(sig)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def push_image(h, repo, img, rng, stats=None, ref=None):
    """Pushes an image's blobs (the way chosen at random per blob) and its manifest.
    Returns the manifest PUT's status."""
    for d, data in img.blobs():
        s, _, _ = h.req("HEAD", f"/v2/{repo}/blobs/{d}")
        if s == 200:
            continue
        mode = rng.choice(["mono", "put", "chunked", "chunked", "mount"])
        if mode == "mount":
            s, hd, body = h.req("POST", f"/v2/{repo}/blobs/uploads/?mount={d}&from=crash/r{rng.randrange(6)}")
            expect(s, (201, 202), "mount", body)
            if s == 201:
                continue
            mode = "put"
            loc = loc_path(hd["location"])
        if mode == "mono":
            s, _, body = h.req("POST", f"/v2/{repo}/blobs/uploads/?digest={d}", data, {"Content-Type": "application/octet-stream"})
            expect(s, (201,), "monolithic POST", body)
            continue
        if mode != "mount":
            s, hd, body = h.req("POST", f"/v2/{repo}/blobs/uploads/")
            expect(s, (202,), "POST upload", body)
            loc = loc_path(hd["location"])
        if mode == "chunked":
            off = 0
            while off < len(data):
                n = min(len(data) - off, rng.choice([65536, 1 << 20, 3 << 20]))
                s, hd, body = h.req(
                    "PATCH",
                    loc,
                    data[off : off + n],
                    {"Content-Type": "application/octet-stream", "Content-Range": f"{off}-{off + n - 1}"},
                )
                expect(s, (202,), "PATCH", body)
                loc = loc_path(hd["location"])
                off += n
            s, _, body = h.req("PUT", with_query(loc, f"digest={d}"), b"")
        else:
            s, _, body = h.req("PUT", with_query(loc, f"digest={d}"), data, {"Content-Type": "application/octet-stream"})
        expect(s, (201,), "PUT blob", body)
    s, _, body = h.req("PUT", f"/v2/{repo}/manifests/{ref or img.digest}", img.manifest, {"Content-Type": OCI_MANIFEST})
    if s != 201:
        raise Unexpected(f"manifest PUT: HTTP {s} {body[:300]!r}")
    return s


def pull_check(h, repo, img_digest, blob_digests):
    """Problems pulling an acknowledged push: manifest and blobs, digest-checked."""
    s, d, _, _ = h.get_digest(f"/v2/{repo}/manifests/{img_digest}", OCI_MANIFEST)
    if s != 200 or d != img_digest:
        return [f"{repo}@{img_digest}: manifest GET {s}, digest {d}"]
    bad = []
    for bd in blob_digests:
        s, d, _, _ = h.get_digest(f"/v2/{repo}/blobs/{bd}")
        if s != 200 or d != bd:
            bad.append(f"{repo}@{img_digest}: blob {bd} GET {s}, digest {d}")
    return bad


# ---------------------------------------------------------------- registry campaign


class RegistryCampaign:
    def __init__(self, args, b):
        self.args = args
        self.b = b
        self.rng = random.Random(args.seed)
        self.work = os.path.join(args.work, "registry")
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(self.work)
        self.root = os.path.join(self.work, "root")
        self.server = Server(
            b, self.root, self.work, "[gc]\ninterval = 4\ngrace = 20\n[limits]\nmax_upload_sessions = 10000\n"
        )
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.acked = []  # (repo, manifest digest, [blob digests]) not deleted
        self.unchecked = []  # acknowledged since the last check
        self.n = 0  # image counter
        self.s = dict(
            kills=0,
            pushes_acked=0,
            pushes_cut=0,
            pushes_refused=0,
            manifests_deleted=0,
            blob_links_deleted=0,
            uploads_abandoned=0,
            uploads_resumed=0,
            closing_puts_lost=0,
            pulls_verified=0,
            heads_verified=0,
            usr1=0,
            conn_errors=0,
            failures=0,
        )
        self.failures = []
        # Shared layers: overlaps between images (sizes from 4 KiB to 6 MiB).
        lr = random.Random(args.seed)
        self.shared = []
        for i in range(18):
            size = lr.choice([4096, 65536, 300_000, 1 << 20, 3 << 20, 6 << 20])
            self.shared.append(make_layer(args.seed * 1000 + i, lr.choice([1, 4, 16]), size, compress=(i % 3 == 0)))

    def fail(self, msg):
        with self.lock:
            self.s["failures"] += 1
            self.failures.append(msg)
        log(f"FAILURE: {msg}")

    def bump(self, key, n=1):
        with self.lock:
            self.s[key] += n

    def new_image(self, rng):
        with self.lock:
            self.n += 1
            n = self.n
        k = rng.randrange(1, 4)
        # Mostly small unique layers; now and then a big one, so that kills land mid-upload.
        size = rng.choice([1 << 20, 4 << 20, 8 << 20]) if rng.random() < 0.15 else rng.choice([512, 8192, 100_000])
        layers = rng.sample(self.shared, k) + [make_layer(self.args.seed * 1_000_000 + n, 2, size, compress=n % 2 == 0)]
        return Image(layers, f"{self.args.seed}-{n}")

    # Workers: each loops until stopped; a refused or cut connection abandons the step.
    def worker(self, wid, body, on_unexpected=None):
        rng = random.Random(self.args.seed * 7919 + wid)
        while not self.stop.is_set():
            try:
                body(rng)
            except (OSError, http.client.HTTPException) as e:
                self.bump("conn_errors")
                if isinstance(e, ConnectionRefusedError):
                    time.sleep(0.05)
            except Unexpected as e:
                self.note_unexpected(str(e))
                if on_unexpected:
                    on_unexpected(rng)

    def note_unexpected(self, msg):
        # A registry answering 5xx (other than while shutting down) is a bug; so is any 4xx
        # to a well-formed request, save a manifest PUT whose blobs a GC took (counted).
        self.fail(f"unexpected answer: {msg}")

    def pusher(self, rng):
        h = self.server.http
        time.sleep(rng.uniform(0, 0.2))
        repo = f"crash/r{rng.randrange(6)}"
        img = self.new_image(rng)
        ref = img.digest if rng.random() < 0.5 else f"t{rng.randrange(1000)}"
        try:
            push_image(h, repo, img, rng, ref=ref)
        except (OSError, http.client.HTTPException):
            self.bump("pushes_cut")
            raise
        entry = (repo, img.digest, [d for d, _ in img.blobs()])
        with self.lock:
            self.acked.append(entry)
            self.unchecked.append(entry)
            self.s["pushes_acked"] += 1

    def deleter(self, rng):
        h = self.server.http
        time.sleep(rng.uniform(0.1, 0.6))
        if rng.random() < 0.6:
            with self.lock:
                if len(self.acked) < 20:
                    return
                entry = self.acked.pop(rng.randrange(len(self.acked)))
                if entry in self.unchecked:
                    self.unchecked.remove(entry)
            repo, d, _ = entry
            s, _, body = h.req("DELETE", f"/v2/{repo}/manifests/{d}")
            expect(s, (202,), f"DELETE manifest {repo}@{d}", body)
            self.bump("manifests_deleted")
        else:
            # A blob pushed to a scratch repository nothing else uses, then its link deleted.
            data = rng.randbytes(rng.choice([100, 50_000]))
            d = sha(data)
            s, _, body = h.req("POST", f"/v2/crash/scratch/blobs/uploads/?digest={d}", data, {"Content-Type": "application/octet-stream"})
            expect(s, (201,), "scratch POST", body)
            s, _, body = h.req("DELETE", f"/v2/crash/scratch/blobs/{d}")
            expect(s, (202,), "DELETE blob", body)
            self.bump("blob_links_deleted")

    def abandoner(self, rng):
        h = self.server.http
        time.sleep(rng.uniform(0.2, 1.0))
        s, hd, body = h.req("POST", f"/v2/crash/r{rng.randrange(6)}/blobs/uploads/")
        expect(s, (202,), "POST upload", body)
        data = rng.randbytes(rng.choice([1000, 200_000, 2 << 20]))
        s, hd, body = h.req("PATCH", loc_path(hd["location"]), data, {"Content-Type": "application/octet-stream"})
        expect(s, (202,), "PATCH", body)
        self.bump("uploads_abandoned")

    def resumer_state(self, rng):
        data = rng.randbytes(rng.choice([300_000, 3 << 20]))
        return {"data": data, "loc": None, "acked": 0, "sent": 0, "put_sent": False}

    def resumer(self, rng, st):
        """One upload across kills: every chunk acknowledged (202) must survive."""
        h = self.server.http
        if st["loc"] is None:
            s, hd, body = h.req("POST", "/v2/crash/resume/blobs/uploads/")
            expect(s, (202,), "POST upload", body)
            st["loc"] = loc_path(hd["location"])
            st["acked"] = 0
        data = st["data"]
        d = sha(data)
        s, hd, body = h.req("GET", st["loc"])
        if s == 404 and st["put_sent"]:
            # The closing PUT went out and its answer was lost: the session may be done, or
            # gone with the blob unlinked (killed between the commit and the link: nothing
            # was acknowledged, the client starts again).
            s, _, _ = h.req("HEAD", f"/v2/crash/resume/blobs/{d}")
            if s == 404:
                self.bump("closing_puts_lost")
                st.update(self.resumer_state(rng))
                return
        if s not in (200, 204):
            self.fail(f"upload session {st['loc']} with {st['acked']} bytes acknowledged: status GET {s} {body[:200]!r}")
            st.update(self.resumer_state(rng))
            return
        if s == 204:
            # `Range: 0-<last>`; "0-0" is an empty session here (chunks are never one byte).
            # Between what was acknowledged and what was sent (a PATCH whose answer was lost).
            rg = hd.get("range", "0-0")
            end = 0 if rg == "0-0" else int(rg.split("-")[1]) + 1
            if not st["acked"] <= end <= st["sent"]:
                self.fail(f"upload session {st['loc']}: {st['acked']} bytes acknowledged, {st['sent']} sent, status says {rg}")
                st.update(self.resumer_state(rng))
                return
            if end < len(data):
                n = min(len(data) - end, 256 * 1024)
                st["sent"] = end + n
                s, hd, body = h.req("PATCH", st["loc"], data[end : end + n], {"Content-Type": "application/octet-stream", "Content-Range": f"{end}-{end + n - 1}"})
                expect(s, (202,), "resumed PATCH", body)
                st["loc"] = loc_path(hd["location"])
                st["acked"] = end + n
                time.sleep(rng.uniform(0, 0.3))
                return
            st["put_sent"] = True
            s, _, body = h.req("PUT", with_query(st["loc"], f"digest={d}"), b"")
            expect(s, (201,), "PUT after resumed upload", body)
        s, got, _, _ = h.get_digest(f"/v2/crash/resume/blobs/{d}")
        if s != 200 or got != d:
            self.fail(f"resumed upload {d}: GET {s} digest {got}")
        self.bump("uploads_resumed")
        st.update(self.resumer_state(rng))

    def verify(self, sample, everything=False, heads=True):
        h = self.server.http
        with self.lock:
            fresh = list(self.unchecked)
            self.unchecked.clear()
            acked = list(self.acked)
        targets = acked if everything else fresh + random.sample(acked, min(sample, len(acked)))
        for repo, d, blobs in targets:
            with self.lock:
                if (repo, d, blobs) not in self.acked:
                    continue  # deleted meanwhile
            for problem in pull_check(h, repo, d, blobs):
                with self.lock:
                    still = (repo, d, blobs) in self.acked
                if still:
                    self.fail(f"acknowledged push not pullable: {problem}")
            self.bump("pulls_verified")
        if heads and not everything:
            for repo, d, blobs in acked:
                s, _, _ = h.req("HEAD", f"/v2/{repo}/manifests/{d}", headers={"Accept": OCI_MANIFEST})
                with self.lock:
                    still = (repo, d, blobs) in self.acked
                if s != 200 and still:
                    self.fail(f"acknowledged manifest {repo}@{d}: HEAD {s}")
                self.bump("heads_verified")

    def run(self):
        a = self.args
        t0 = time.time()
        self.server.start()
        threads = []
        bodies = [self.pusher] * 4 + [self.deleter, self.abandoner]
        for i, body in enumerate(bodies):
            threads.append(threading.Thread(target=self.worker, args=(i, body), daemon=True))
        for i in range(2):
            st = self.resumer_state(random.Random(i))
            threads.append(
                threading.Thread(
                    target=self.worker,
                    args=(100 + i, lambda rng, st=st: self.resumer(rng, st), lambda rng, st=st: st.update(self.resumer_state(rng))),
                    daemon=True,
                )
            )
        for t in threads:
            t.start()
        deadline = t0 + a.duration
        while time.time() < deadline or (self.s["kills"] < a.min_kills and time.time() < t0 + 2 * a.duration):
            wait = self.rng.uniform(0.2, 3.0)
            if self.rng.random() < 0.3:
                time.sleep(wait * self.rng.random())
                self.server.proc.send_signal(signal.SIGUSR1)
                self.bump("usr1")
                time.sleep(self.rng.uniform(0, 0.3))
            else:
                time.sleep(wait)
            self.server.kill()
            self.bump("kills")
            for f in fsck(self.b, self.root):
                self.fail(f"after kill {self.s['kills']}: fsck: {f}")
            try:
                self.server.start()
            except Unexpected as e:
                self.fail(f"after kill {self.s['kills']}: {e}")
                break
            # Fresh pushes and a sample of older ones pulled; every manifest HEADed each 5th kill.
            self.verify(sample=10, heads=self.s["kills"] % 5 == 0)
            if self.s["kills"] % 10 == 0:
                log(f"registry: {self.summary(t0)}")
        self.stop.set()
        for t in threads:
            t.join(120)
        log("registry: final check of every acknowledged push")
        self.verify(sample=0, everything=True)
        self.server.stop()
        for f in fsck(self.b, self.root):
            self.fail(f"final fsck: {f}")
        line = self.summary(t0)
        log(f"registry SUMMARY: {line}")
        for f in self.failures[:50]:
            log(f"  failure: {f}")
        return line, not self.failures

    def summary(self, t0):
        s = self.s
        return (
            f"{time.time() - t0:.0f} s, {s['kills']} kills survived, {s['pushes_acked']} pushes acknowledged "
            f"({len(self.acked)} still tagged, {s['pulls_verified']} pulls digest-checked, {s['heads_verified']} HEADs), "
            f"{s['pushes_cut']} pushes cut, {s['manifests_deleted']} manifest + {s['blob_links_deleted']} blob deletes, "
            f"{s['uploads_abandoned']} uploads abandoned, {s['uploads_resumed']} uploads resumed across kills "
            f"({s['closing_puts_lost']} unanswered closing PUTs lost), "
            f"{s['usr1']} SIGUSR1 GCs, {s['conn_errors']} cut connections, {s['failures']} failures"
        )


# ---------------------------------------------------------------- command campaigns


class CommandCampaign:
    """Kill one command at a random moment, fsck, re-run it to completion, look for debris."""

    name = "?"
    streak = 1  # killed runs in a row before one runs to completion

    def __init__(self, args, b):
        self.args = args
        self.b = b
        self.rng = random.Random(args.seed * 1000 + sum(self.name.encode()))
        self.work = os.path.join(args.work, self.name)
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(self.work)
        self.root = os.path.join(self.work, "root")
        self.failures = []
        self.kills = 0
        self.early = 0  # runs that finished before the kill landed

    def fail(self, msg):
        self.failures.append(msg)
        log(f"FAILURE: {self.name}: {msg}")

    def command(self, i):
        raise NotImplementedError

    def prepare(self, i):
        """Brings the store to the state before the command (e.g. removes what it made)."""

    def check(self, i):
        """Checks the outcome of a successful run."""

    def run_once(self, i, kill_after):
        """Starts the command; kills it after `kill_after` seconds (None: let it finish).
        Returns (killed, returncode, stderr)."""
        cmd = self.command(i)
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = p.communicate(timeout=kill_after if kill_after is not None else 900)
            return False, p.returncode, err
        except subprocess.TimeoutExpired:
            if kill_after is None:
                raise
            # The command and whatever it forked (runner's helpers) die together.
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.communicate()
            return True, p.returncode, ""

    def campaign(self):
        a = self.args
        t0 = time.time()
        self.setup()
        # How long one whole run takes, to spread the kills over it.
        self.prepare(0)
        t = time.time()
        _, rc, err = self.run_once(0, None)
        full = time.time() - t
        if rc != 0:
            self.fail(f"first run exited {rc}: {err.strip()[-600:]}")
            return self.report(t0, full), False
        self.check(0)
        log(f"{self.name}: one run takes {full:.2f} s")
        i, streak = 0, 0
        while self.kills < a.kills and time.time() - t0 < a.duration:
            i += 1
            if streak == 0:
                self.prepare(i)
            killed, rc, err = self.run_once(i, self.rng.uniform(0.02, full * 1.05))
            if not killed:
                self.early += 1
                if rc != 0:
                    self.fail(f"run {i} exited {rc}: {err.strip()[-600:]}")
                elif streak:
                    self.after_success(i)
                streak = 0
                continue
            self.kills += 1
            for f in fsck(self.b, self.root):
                self.fail(f"after kill {self.kills}: fsck: {f}")
            self.after_kill()
            # Up to `streak` killed runs in a row, each taking up what the last one left.
            streak = (streak + 1) % self.streak
            if streak:
                continue
            _, rc, err = self.run_once(i, None)
            if rc != 0:
                self.fail(f"run after kill {self.kills} exited {rc}: {err.strip()[-600:]}")
                continue
            self.after_success(i)
        line = self.report(t0, full)
        log(f"{self.name} SUMMARY: {line}")
        return line, not self.failures

    def after_kill(self):
        """Checks right after a kill (besides fsck)."""

    def after_success(self, i):
        """Checks after a run that completed following a kill."""
        self.check(i)
        for f in fsck(self.b, self.root):
            self.fail(f"after the run that followed kill {self.kills}: fsck: {f}")
        for d in leftovers(self.root):
            self.fail(f"left behind after kill {self.kills} and a successful run: {d}")

    def report(self, t0, full):
        return (
            f"{time.time() - t0:.0f} s, one run {full:.1f} s, {self.kills} kills survived "
            f"({self.early} runs finished before their kill), {len(self.failures)} failures"
        )

    def store(self, *argv, check=True):
        return run([self.b["store"], "--root", self.root, *argv], check=check)

    def forget(self, ref):
        """Removes an image and collects everything at once (grace 0)."""
        self.store("rm", ref, check=False)
        self.store("gc", "--grace", "0s")


def big_image(seed, mib):
    """A large image: a few big files and a layer of many small ones."""
    layers = [
        make_layer(seed, 4, mib * (1 << 20) // 2),
        make_layer(seed + 1, 2, mib * (1 << 20) // 2, compress=True),
        make_layer(seed + 2, 2000, 8 << 20),
    ]
    return Image(layers, f"big-{seed}")


class FetchCampaign(CommandCampaign):
    name = "fetch"

    def setup(self):
        self.img = big_image(self.args.seed, self.args.size_mib)
        self.server = Server(self.b, os.path.join(self.work, "upstream"), self.work)
        self.server.start()
        push_image(self.server.http, "crash/big", self.img, random.Random(1), ref="latest")

    def command(self, i):
        return [self.b["puller"], "--root", self.root, "fetch", f"127.0.0.1:{self.server.port}/crash/big:latest"]

    def prepare(self, i):
        if i > 0 and os.path.isdir(os.path.join(self.root, "meta")):
            self.forget(f"127.0.0.1:{self.server.port}/crash/big:latest")

    def check(self, i):
        out = self.store("inspect", f"127.0.0.1:{self.server.port}/crash/big:latest").stdout
        if self.img.digest not in out:
            self.fail(f"run {i}: fetched image is not {self.img.digest}")

    def campaign(self):
        try:
            return super().campaign()
        finally:
            self.server.stop()


class LoadCampaign(CommandCampaign):
    name = "load"

    def setup(self):
        img = big_image(self.args.seed + 10, self.args.size_mib)
        self.img = img
        layout = os.path.join(self.work, "layout")
        write_oci_layout(layout, [(img, "crash/load:latest")])
        # `puller save` makes the docker-save archive (also an OCI layout) from a store.
        src = os.path.join(self.work, "src")
        run([self.b["puller"], "--root", src, "load", layout])
        self.archive = os.path.join(self.work, "big.tar")
        run([self.b["puller"], "--root", src, "save", "crash/load:latest", "-o", self.archive])
        shutil.rmtree(layout)
        shutil.rmtree(src)

    def command(self, i):
        return [self.b["puller"], "--root", self.root, "load", self.archive]

    def prepare(self, i):
        if i > 0 and os.path.isdir(os.path.join(self.root, "meta")):
            self.forget("crash/load:latest")

    def check(self, i):
        out = self.store("inspect", "crash/load:latest").stdout
        if self.img.digest not in out:
            self.fail(f"run {i}: loaded image is not {self.img.digest}")


class GcCampaign(CommandCampaign):
    name = "gc"
    streak = 4  # filling the store again takes longer than collecting it

    def setup(self):
        # Many small images (many blobs and unpacked layers), loaded then removed.
        rng = random.Random(self.args.seed)
        self.kept = Image([make_layer(self.args.seed + 5, 10, 50_000)], "kept")
        images = [(self.kept, "crash/kept:latest")]
        for n in range(self.args.gc_images):
            layers = [make_layer(self.args.seed * 100_000 + n * 3 + k, rng.choice([5, 40]), 20_000) for k in range(3)]
            images.append((Image(layers, f"gc-{n}"), f"crash/gc:{n}"))
        self.images = images
        self.layout = os.path.join(self.work, "layout")
        write_oci_layout(self.layout, images)

    def command(self, i):
        return [self.b["store"], "--root", self.root, "gc", "--grace", "0s"]

    def prepare(self, i):
        # The images back, then removed: every blob but the kept image's is garbage.
        run([self.b["puller"], "--root", self.root, "load", self.layout])
        for _, ref in self.images[1:]:
            self.store("rm", ref)

    def check(self, i):
        out = self.store("inspect", "crash/kept:latest").stdout
        if self.kept.digest not in out:
            self.fail(f"run {i}: the kept image is gone")
        blobs = os.listdir(os.path.join(self.root, "blobs", "sha256"))
        if len(blobs) > 3:
            self.fail(f"run {i}: {len(blobs)} blobs remain after a complete gc (expected the kept image's 3)")


class CommitCampaign(CommandCampaign):
    name = "commit"

    def setup(self):
        if os.geteuid() != 0:
            raise Unexpected("the commit campaign runs containers: run it as root")
        tar = io.BytesIO()
        with tarfile.open(fileobj=tar, mode="w", format=tarfile.GNU_FORMAT) as t:
            for d in ("bin", "tmp", "data"):
                ti = tarfile.TarInfo(d)
                ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755, 0
                t.addfile(ti)
            with open("/bin/busybox", "rb") as f:
                bb = f.read()
            ti = tarfile.TarInfo("bin/busybox")
            ti.size, ti.mode, ti.mtime = len(bb), 0o755, 0
            t.addfile(ti, io.BytesIO(bb))
            for applet in ("sh", "mkdir", "seq", "head", "dd", "cat", "ls"):
                ti = tarfile.TarInfo(f"bin/{applet}")
                ti.type, ti.linkname, ti.mtime, ti.mode = tarfile.SYMTYPE, "busybox", 0, 0o777
                t.addfile(ti)
        tb = tar.getvalue()
        img = Image([(LAYER_TAR, tb, sha(tb))], "commit-base")
        layout = os.path.join(self.work, "layout")
        write_oci_layout(layout, [(img, "crash/base:latest")])
        run([self.b["puller"], "--root", self.root, "load", layout])
        # A container whose upper directory holds many files.
        self.start_container(
            f"for d in $(seq 1 {self.args.commit_dirs}); do mkdir /data/$d; for f in $(seq 1 100); do echo $d-$f > /data/$d/$f; done; done;"
            f" dd if=/dev/urandom of=/data/big bs=1M count={self.args.size_mib // 4} 2>/dev/null"
        )

    def start_container(self, script):
        """Runs `script` in a container that is then stopped."""
        run([self.b["runner"], "--root", self.root, "start", "--name", "crashc", "crash/base:latest", "--", "/bin/sh", "-c", script], timeout=900)

    def command(self, i):
        return [self.b["runner"], "--root", self.root, "commit", "crashc", f"crash/committed:{i}"]

    def prepare(self, i):
        # Drop earlier commits so each run writes its layer afresh.
        if i > 0:
            self.store("rm", f"crash/committed:{i - 1}", check=False)
            self.store("gc", "--grace", "0s")

    def check(self, i):
        self.store("inspect", f"crash/committed:{i}")


class PausedCommitCampaign(CommitCampaign):
    """`runner commit -p` of a running container, killed while the container is frozen."""

    name = "commit-paused"

    def start_container(self, script):
        out = run([self.b["runner"], "--root", self.root, "start", "-d", "--name", "crashc", "crash/base:latest", "--", "/bin/sh", "-c", f"{script}; : > /data/done; exec sleep 100000"])
        self.id = out.stdout.strip()
        done = os.path.join(self.root, "containers", self.id, "upper", "data", "done")
        t0 = time.time()
        while not os.path.exists(done):
            if time.time() - t0 > 600:
                raise Unexpected("the container did not finish writing its files")
            time.sleep(0.2)

    frozen_after_kill = 0

    def command(self, i):
        return [self.b["runner"], "--root", self.root, "commit", "-p", "crashc", f"crash/committed:{i}"]

    def frozen(self):
        for f, on in ((f"/sys/fs/cgroup/freezer/strata/{self.id}/freezer.state", "FROZEN"), (f"/sys/fs/cgroup/strata/{self.id}/cgroup.events", "frozen 1")):
            if os.path.exists(f):
                with open(f) as fh:
                    return on in fh.read()
        return False

    def after_kill(self):
        # A signal must reach the container a killed commit may have left frozen: `runner
        # kill` (of a harmless signal) thaws it.
        self.frozen_after_kill += self.frozen()
        p = run([self.b["runner"], "--root", self.root, "kill", "-s", "CHLD", "crashc"], check=False, timeout=60)
        if p.returncode != 0:
            self.fail(f"after kill {self.kills}: runner kill -s CHLD: {p.stderr.strip()[-300:]}")
        if self.frozen():
            self.fail(f"after kill {self.kills}: the container stays frozen after runner kill")

    def check(self, i):
        super().check(i)
        if self.frozen():
            self.fail(f"run {i}: the container is still frozen after a successful commit -p")

    def report(self, t0, full):
        return super().report(t0, full) + f", {self.frozen_after_kill} kills left the container frozen (all thawed by runner kill)"

    def campaign(self):
        try:
            return super().campaign()
        finally:
            run([self.b["runner"], "--root", self.root, "stop", "-t", "0", "crashc"], check=False, timeout=120)


CAMPAIGNS = {
    "fetch": FetchCampaign,
    "load": LoadCampaign,
    "gc": GcCampaign,
    "commit": CommitCampaign,
    "commit-paused": PausedCommitCampaign,
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("campaign", choices=["registry", *CAMPAIGNS, "all"])
    p.add_argument("--bin", help="directory of the release binaries")
    p.add_argument("--work", default="/var/tmp/strata-crash", help="scratch directory (emptied)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration", type=float, default=None, help="seconds per campaign (registry: 600, others: 300)")
    p.add_argument("--min-kills", type=int, default=100, help="registry: kills to reach")
    p.add_argument("--kills", type=int, default=20, help="fetch/load/gc/commit: kills per campaign")
    p.add_argument("--size-mib", type=int, default=256, help="fetch/load: image size")
    p.add_argument("--gc-images", type=int, default=60, help="gc: images removed before each collection")
    p.add_argument("--commit-dirs", type=int, default=200, help="commit: directories of 100 files")
    a = p.parse_args()
    b = bins(a)
    os.makedirs(a.work, exist_ok=True)
    names = ["registry", *CAMPAIGNS] if a.campaign == "all" else [a.campaign]
    results = []
    for name in names:
        args = argparse.Namespace(**vars(a))
        if args.duration is None:
            args.duration = 600 if name == "registry" else 300
        log(f"campaign {name} starts (seed {a.seed})")
        c = RegistryCampaign(args, b) if name == "registry" else CAMPAIGNS[name](args, b)
        try:
            line, ok = c.run() if name == "registry" else c.campaign()
        except Unexpected as e:
            line, ok = f"aborted: {e}", False
        results.append((name, line, ok))
    for name, line, ok in results:
        print(f"{name}: {'OK' if ok else 'FAILED'}: {line}")
    sys.exit(0 if all(ok for _, _, ok in results) else 1)


if __name__ == "__main__":
    main()
