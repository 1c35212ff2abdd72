#!/usr/bin/env python3
"""The CPU floor of receiving a blob push on this machine: a minimal receiver that reads
a loopback TCP stream into a 1 MiB buffer, writes it to a file and fsyncs (optionally also
hashing it with OpenSSL's SHA-256, and optionally with O_DIRECT), measured with getrusage.
The sender is another process (sendfile), so its CPU is not counted. Compare with the
registry's "server CPU-seconds per GB pushed".

    benches/scripts/push-floor.py [--hash] [--direct] [--rounds N] [--dir DIR]
"""
import argparse, hashlib, mmap, os, resource, socket, subprocess, sys

ap = argparse.ArgumentParser()
ap.add_argument("--hash", action="store_true")
ap.add_argument("--direct", action="store_true")
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--dir", default="/var/tmp")
a = ap.parse_args()
blob = os.path.join(a.dir, "strata-push-floor.blob")
if not os.path.exists(blob):
    with open(blob, "wb") as f:
        f.write(os.urandom(256 << 20))
out = os.path.join(a.dir, "strata-push-floor.out")
B = 1 << 20
for _ in range(a.rounds):
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
    port = srv.getsockname()[1]
    sender = subprocess.Popen([sys.executable, "-c",
        f"import socket;c=socket.create_connection(('127.0.0.1',{port}));"
        f"c.sendfile(open({blob!r},'rb'));c.close()"])
    conn, _ = srv.accept()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if a.direct else 0)
    fd = os.open(out, flags, 0o644)
    buf = mmap.mmap(-1, B); mv = memoryview(buf)  # page-aligned, as O_DIRECT needs
    h = hashlib.sha256() if a.hash else None
    fill = total = 0
    while True:
        n = conn.recv_into(mv[fill:])
        if n == 0:
            break
        if h:
            h.update(mv[fill:fill + n])
        fill += n; total += n
        if fill == B or not a.direct:
            os.write(fd, mv[:fill]); fill = 0
    if fill:
        os.close(fd); fd = os.open(out, os.O_WRONLY); os.pwrite(fd, mv[:fill], total - fill)
    os.fsync(fd); os.close(fd)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    sender.wait(); conn.close(); srv.close()
    gb = total / 2**30
    u, s = (r1.ru_utime - r0.ru_utime) / gb, (r1.ru_stime - r0.ru_stime) / gb
    print(f"{'hash ' if a.hash else ''}{'O_DIRECT ' if a.direct else ''}recv+write+fsync: "
          f"user {u:.2f} sys {s:.2f} total {u + s:.2f} CPU-s/GB")
os.unlink(out)
