#!/usr/bin/env python3
"""Load and timing helper of scaleout-vs-distribution.sh: many small registry requests
from a pool of threads, each thread on its own keep-alive connection (http.client), and
the timed reads (`_catalog`, tags list). Prints one JSON object per command.

    scaleout-load.py seed    BASE REPOS TAGS     10,000 repositories of one small image each
                                                 (the first pushed, the rest cross-repository
                                                 mounts of its config + a manifest PUT), then
                                                 TAGS tags in the first repository
    scaleout-load.py orphans BASE REPO N         N unique small blobs nothing references
                                                 (POST ?digest= with the body; a POST then a
                                                 PUT when the registry answers 202)
    scaleout-load.py catalog BASE                GET /v2/_catalog?n=10000, following Link
    scaleout-load.py tags    BASE REPO           GET /v2/REPO/tags/list, following Link
    scaleout-load.py verify  BASE REPO TAG...    every manifest and each blob it names: 200

BASE is http://127.0.0.1:PORT. Environment: THREADS (16).
"""
import hashlib, http.client, json, os, sys, threading, time, urllib.parse
from concurrent.futures import ThreadPoolExecutor

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
THREADS = int(os.environ.get("THREADS", "16"))


class Client:
    """One keep-alive connection per thread; reconnects once when the server closed it."""

    local = threading.local()

    def __init__(self, base):
        u = urllib.parse.urlsplit(base)
        self.host, self.port = u.hostname, u.port

    def conn(self, fresh=False):
        c = getattr(self.local, "c", None)
        if c is None or fresh:
            if c is not None:
                c.close()
            c = self.local.c = http.client.HTTPConnection(self.host, self.port, timeout=300)
        return c

    def request(self, method, path, body=None, headers=None):
        """(status, headers, body bytes)."""
        for attempt in (0, 1):
            c = self.conn(fresh=attempt == 1)
            try:
                c.request(method, path, body=body, headers=headers or {})
                r = c.getresponse()
                data = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.conn(fresh=True)
                return r.status, r, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if attempt == 1:
                    raise

    @staticmethod
    def path_of(location):
        u = urllib.parse.urlsplit(location)
        return u.path + ("?" + u.query if u.query else "")


class Errors:
    def __init__(self):
        self.lock = threading.Lock()
        self.count = 0
        self.samples = []

    def add(self, what):
        with self.lock:
            self.count += 1
            if len(self.samples) < 5:
                self.samples.append(what)


def digest(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def push_blob(cl, repo, data, errors, single_post=True):
    """Uploads a blob: POST ?digest= with the body (one request) when single_post, else (or
    when the registry answers 202 to it) POST, then PUT ?digest= with the body."""
    d = digest(data)
    hdr = {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))}
    if single_post:
        st, r, body = cl.request("POST", f"/v2/{repo}/blobs/uploads/?digest={d}", data, hdr)
    else:
        st, r, body = cl.request("POST", f"/v2/{repo}/blobs/uploads/", b"", {"Content-Length": "0"})
    if st == 201:
        return d
    if st != 202:
        errors.add(f"POST /v2/{repo}/blobs/uploads/ -> {st} {body[:200]!r}")
        return None
    loc = cl.path_of(r.getheader("Location"))
    sep = "&" if "?" in loc else "?"
    st, r, body = cl.request("PUT", f"{loc}{sep}digest={d}", data, hdr)
    if st != 201:
        errors.add(f"PUT {loc} -> {st} {body[:200]!r}")
        return None
    return d


def small_image(cl, repo, errors):
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                      "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    d = push_blob(cl, repo, cfg, errors, single_post=False)
    man = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                      "config": {"mediaType": OCI_CONFIG, "digest": d, "size": len(cfg)},
                      "layers": []}).encode()
    return cfg, d, man


def put_manifest(cl, repo, ref, man, errors):
    st, _, body = cl.request("PUT", f"/v2/{repo}/manifests/{ref}", man,
                             {"Content-Type": OCI_MANIFEST, "Content-Length": str(len(man))})
    if st != 201:
        errors.add(f"PUT /v2/{repo}/manifests/{ref} -> {st} {body[:200]!r}")


def seed(base, repos, tags):
    cl, errors = Client(base), Errors()
    first = "cat/r00000"
    t0 = time.time()
    cfg, d, man = small_image(cl, first, errors)
    put_manifest(cl, first, "latest", man, errors)
    mounts = {"201": 0, "202": 0}

    def one(i):
        repo = f"cat/r{i:05d}"
        st, r, body = cl.request("POST", f"/v2/{repo}/blobs/uploads/?mount={d}&from={first}", b"",
                                 {"Content-Length": "0"})
        if st == 202:  # not mounted: an upload session instead; put the config into it
            with errors.lock:
                mounts["202"] += 1
            loc = cl.path_of(r.getheader("Location"))
            sep = "&" if "?" in loc else "?"
            st, _, body = cl.request("PUT", f"{loc}{sep}digest={d}", cfg,
                                     {"Content-Type": "application/octet-stream",
                                      "Content-Length": str(len(cfg))})
            if st != 201:
                errors.add(f"PUT config {repo} -> {st} {body[:200]!r}")
                return
        elif st != 201:
            errors.add(f"POST mount {repo} -> {st} {body[:200]!r}")
            return
        else:
            with errors.lock:
                mounts["201"] += 1
        put_manifest(cl, repo, "latest", man, errors)

    with ThreadPoolExecutor(THREADS) as ex:
        list(ex.map(one, range(1, repos)))
    t1 = time.time()
    with ThreadPoolExecutor(THREADS) as ex:
        list(ex.map(lambda i: put_manifest(cl, first, f"t{i:04d}", man, errors), range(tags)))
    t2 = time.time()
    print(json.dumps({"repos": repos, "repos_seconds": round(t1 - t0, 2), "tags": tags,
                      "tags_seconds": round(t2 - t1, 2), "mounted": mounts["201"],
                      "not_mounted": mounts["202"], "errors": errors.count,
                      "error_samples": errors.samples}))


def paged(base, path):
    """GETs path and every next page its Link headers name (each on a new connection, as a
    client that lists once would). JSON: ms and count of the first page, of all pages."""
    cl = Client(base)
    t0 = time.time()
    first_ms = first_count = None
    items, pages, status = [], 0, 200
    while path:
        cl.conn(fresh=True)
        st, r, body = cl.request("GET", path)
        pages += 1
        if st != 200:
            status = f"{st} {body[:200]!r}"
            break
        doc = json.loads(body)
        items += doc.get("repositories", doc.get("tags")) or []
        if first_ms is None:
            first_ms, first_count = round((time.time() - t0) * 1000, 1), len(items)
        link = r.getheader("Link")
        path = cl.path_of(link.split(";")[0].strip().strip("<>")) if link else None
    print(json.dumps({"first_ms": first_ms, "first_count": first_count,
                      "ms": round((time.time() - t0) * 1000, 1), "count": len(items),
                      "distinct": len(set(items)), "pages": pages, "status": status}))


def orphans(base, repo, n):
    cl, errors = Client(base), Errors()
    salt = os.urandom(8).hex()
    t0 = time.time()
    with ThreadPoolExecutor(THREADS) as ex:
        list(ex.map(lambda i: push_blob(cl, repo, f"orphan {salt} {i}\n".encode() * 16, errors),
                    range(n)))
    print(json.dumps({"blobs": n, "seconds": round(time.time() - t0, 2), "errors": errors.count,
                      "error_samples": errors.samples}))


def verify(base, repo, tags):
    cl, errors = Client(base), Errors()
    accept = {"Accept": OCI_MANIFEST}
    blobs = 0
    for tag in tags:
        st, _, body = cl.request("GET", f"/v2/{repo}/manifests/{tag}", headers=accept)
        if st != 200:
            errors.add(f"GET /v2/{repo}/manifests/{tag} -> {st} {body[:200]!r}")
            continue
        m = json.loads(body)
        for desc in [m["config"]] + m.get("layers", []):
            blobs += 1
            st, _, _ = cl.request("HEAD", f"/v2/{repo}/blobs/{desc['digest']}")
            if st != 200:
                errors.add(f"HEAD /v2/{repo}/blobs/{desc['digest']} (tag {tag}) -> {st}")
    print(json.dumps({"manifests": len(tags), "blobs": blobs, "errors": errors.count,
                      "error_samples": errors.samples}))


def main():
    cmd, base, *rest = sys.argv[1:]
    if cmd == "seed":
        seed(base, int(rest[0]), int(rest[1]))
    elif cmd == "catalog":
        paged(base, "/v2/_catalog?n=10000")
    elif cmd == "tags":
        paged(base, f"/v2/{rest[0]}/tags/list")
    elif cmd == "orphans":
        orphans(base, rest[0], int(rest[1]))
    elif cmd == "verify":
        verify(base, rest[0], rest[1:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
