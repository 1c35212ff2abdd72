//! Several processes ingest the same blob at once: the file lock on the ingest lets one
//! write it while the others wait and then find it committed. One file, one writer, no
//! debris.

use std::io::{self, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use strata_store::{BlobStore, Digest};

use crate::common::test_name;

const CHILD_ENV: &str = "STRATA_TEST_INGEST_CHILD";
const WRITERS: usize = 4;
const SIZE: usize = 24 << 20;

/// A reader that trickles its bytes so the writers' ingests overlap in time.
struct Slow<R>(R);

impl<R: Read> Read for Slow<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        std::thread::sleep(Duration::from_millis(2));
        let n = buf.len().min(256 << 10);
        self.0.read(&mut buf[..n])
    }
}

/// Entry point of the child processes (run by the test below, never on its own).
#[test]
#[ignore = "child process of concurrent_processes_ingest_one_blob_once"]
fn ingest_child() {
    let spec = std::env::var(CHILD_ENV).expect("run only as a child process");
    let mut parts = spec.splitn(3, '\n');
    let (root, src, digest) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let digest: Digest = digest.parse().unwrap();
    let store = BlobStore::open(Path::new(root)).unwrap();
    let file = std::fs::File::open(src).unwrap();
    let size = file.metadata().unwrap().len();
    let committed = store.put_verified(&digest, Some(size), Slow(file)).unwrap();
    assert_eq!(committed.digest, digest);
    println!("written={}", committed.written);
}

#[test]
fn concurrent_processes_ingest_one_blob_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("blobs");
    let src = dir.path().join("src");
    let mut data = vec![0u8; SIZE];
    rand_chacha::ChaCha8Rng::seed_from_u64(7).fill_bytes(&mut data);
    std::fs::write(&src, &data).unwrap();
    let digest = Digest::of(&data);
    drop(data);
    BlobStore::open(&root).unwrap();

    let exe = std::env::current_exe().unwrap();
    let spec = format!("{}\n{}\n{}", root.display(), src.display(), digest);
    let children: Vec<_> = (0..WRITERS)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", &test_name(module_path!(), "ingest_child")])
                .args(["--include-ignored", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, &spec)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut written = 0;
    let mut found = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if stdout.contains("written=true") {
            written += 1;
        } else if stdout.contains("written=false") {
            found += 1;
        }
    }
    assert_eq!(
        (written, found),
        (1, WRITERS - 1),
        "exactly one process writes the blob"
    );

    let store = BlobStore::open(&root).unwrap();
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].digest, digest);
    let mut blob = Vec::new();
    store.open_blob(&digest).unwrap().read_to_end(&mut blob).unwrap();
    assert_eq!(Digest::of(&blob), digest);
    assert_eq!(blob.len(), SIZE);
    let debris: Vec<_> = std::fs::read_dir(store.ingest_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(debris.is_empty(), "ingest directory left {debris:?}");
}
