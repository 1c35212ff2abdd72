//! The layer store: one unpack per chain ID across threads and processes, atomic
//! publication, `kill -9` leaving only `.tmp` debris, diff ID checks that leave nothing
//! behind, dedup through the pool (same inode, `du` shows the saving, `gc_pool`).

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use strata_fixtures::hostile::{RawHeader, RawTar};
use strata_store::{DEFAULT_DEDUP_MIN_SIZE, Digest, LayerError, LayerStore, UnpackReport, chain_id};

use crate::common::test_name;

const CHILD_ENV: &str = "STRATA_UNPACK_LAYERS_CHILD";

fn file(tar: &mut RawTar, name: &str, data: &[u8], mode: u32, mtime: u64) {
    tar.entry(
        RawHeader {
            name: name.as_bytes(),
            mode,
            mtime,
            ..Default::default()
        },
        data,
    );
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    use sha2::Digest as _;
    let mut out = Vec::with_capacity(len + 32);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(&sha2::Sha256::digest(
            [seed.to_le_bytes(), i.to_le_bytes()].concat(),
        ));
        i += 1;
    }
    out.truncate(len);
    out
}

fn open(root: &Path) -> LayerStore {
    LayerStore::open(root).unwrap().with_sync(false)
}

/// A reader that counts what it hands out and can be slow.
struct Slow {
    data: Vec<u8>,
    pos: usize,
    piece: usize,
    delay: Duration,
    read: Arc<AtomicU64>,
}

impl Read for Slow {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        std::thread::sleep(self.delay);
        let n = buf.len().min(self.piece).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        self.read.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
}

fn big_layer(seed: u64) -> Vec<u8> {
    let mut t = RawTar::new();
    t.dir(b"data/");
    for i in 0..8 {
        file(
            &mut t,
            &format!("data/f{i}"),
            &noise(128 << 10, seed * 100 + i),
            0o644,
            1_600_000_000,
        );
    }
    t.finish()
}

#[test]
fn chain_id_matches_the_image_spec() {
    let a: Digest = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        .parse()
        .unwrap();
    let b: Digest = "sha256:486ea46224d1bb4fb680f34f7c9ad96a8f24ec88be73ea8e5a6c65260e9cb8a7"
        .parse()
        .unwrap();
    assert_eq!(chain_id(None, &a), a);
    // printf 'sha256:2cf2...9824 sha256:486e...b8a7' | sha256sum
    assert_eq!(
        chain_id(Some(&a), &b).to_string(),
        "sha256:462b80aef093b60913b788d01bd83e40bea09cc1131c723ef41e7720c211e8bf"
    );
}

#[test]
fn unpacks_once_lists_and_removes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let layer = big_layer(1);
    let diff = Digest::of(&layer);
    let chain = chain_id(None, &diff);
    assert!(!store.is_unpacked(&chain));
    let first = store.unpack(&chain, &diff, &layer[..]).unwrap();
    assert!(!first.already_unpacked);
    assert_eq!(first.diff_id, diff);
    assert!(store.is_unpacked(&chain));
    assert_eq!(
        store.diff_path(&chain),
        tmp.path().join("layers").join(chain.hex()).join("diff")
    );
    assert!(store.diff_path(&chain).join("data/f7").is_file());
    // The second time nothing is read.
    let read = Arc::new(AtomicU64::new(0));
    let reader = Slow {
        data: layer.clone(),
        pos: 0,
        piece: 1 << 20,
        delay: Duration::ZERO,
        read: read.clone(),
    };
    let again = store.unpack(&chain, &diff, reader).unwrap();
    assert!(again.already_unpacked);
    assert_eq!(read.load(Ordering::SeqCst), 0);
    assert_eq!(
        UnpackReport {
            already_unpacked: false,
            ..again
        },
        first
    );
    // A wrong expectation for an unpacked layer is still a mismatch.
    let err = store
        .unpack(&chain, &Digest::of(b"other"), &layer[..])
        .unwrap_err();
    assert!(matches!(err, LayerError::DiffIdMismatch { .. }), "{err}");

    assert_eq!(store.list().unwrap(), vec![chain]);
    assert!(store.remove(&chain).unwrap());
    assert!(!store.remove(&chain).unwrap());
    assert!(store.list().unwrap().is_empty());
    assert!(!store.is_unpacked(&chain));
    assert!(!tmp.path().join("layers").join(chain.hex()).exists());
    // And it can come back.
    assert!(!store.unpack(&chain, &diff, &layer[..]).unwrap().already_unpacked);
}

#[test]
fn diff_id_mismatch_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let layer = big_layer(2);
    let actual = Digest::of(&layer);
    let expected = Digest::of(b"something else");
    let chain = chain_id(None, &expected);
    let err = store.unpack(&chain, &expected, &layer[..]).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("diff id mismatch: expected {expected}, got {actual}")
    );
    assert!(!store.is_unpacked(&chain));
    assert!(store.list().unwrap().is_empty());
    assert_eq!(fs::read_dir(store.root().join(".tmp")).unwrap().count(), 0);
    // The files were big enough for the pool, and their pool entries went too.
    assert_eq!(fs::read_dir(store.pool_dir()).unwrap().count(), 0);
}

#[test]
fn concurrent_unpacks_of_one_chain_do_the_work_once() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let layer = big_layer(3);
    let diff = Digest::of(&layer);
    let chain = chain_id(None, &diff);
    let counters: Vec<Arc<AtomicU64>> = (0..2).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let started = Instant::now();
    let reports: Vec<UnpackReport> = std::thread::scope(|s| {
        let handles: Vec<_> = counters
            .iter()
            .map(|read| {
                let reader = Slow {
                    data: layer.clone(),
                    pos: 0,
                    piece: 64 << 10,
                    delay: Duration::from_millis(20),
                    read: read.clone(),
                };
                let store = store.clone();
                s.spawn(move || store.unpack(&chain, &diff, reader).unwrap())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Both calls overlapped (each would take ~300 ms alone).
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        reports.iter().filter(|r| !r.already_unpacked).count(),
        1,
        "{reports:?}"
    );
    assert_eq!(reports.iter().filter(|r| r.already_unpacked).count(), 1);
    let reads: Vec<u64> = counters.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    assert!(reads.contains(&0), "only one reader may be consumed: {reads:?}");
    assert!(reads.contains(&(layer.len() as u64)));
    assert_eq!(store.list().unwrap(), vec![chain]);
}

#[test]
fn identical_files_share_an_inode_and_du_shows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let shared = noise(256 << 10, 9);
    let tiny = b"tiny but identical".to_vec();
    let mut a = RawTar::new();
    file(&mut a, "lib/shared.so", &shared, 0o755, 1_600_000_000);
    file(&mut a, "tiny", &tiny, 0o644, 1_600_000_000);
    file(&mut a, "only-a", &noise(20_000, 10), 0o644, 1_600_000_000);
    let a = a.finish();
    let mut b = RawTar::new();
    file(&mut b, "usr/lib/copy.so", &shared, 0o755, 1_600_000_000);
    file(&mut b, "tiny", &tiny, 0o644, 1_600_000_000);
    // Same content, other metadata: must not share.
    file(&mut b, "other-mtime.so", &shared, 0o755, 1_600_000_001);
    file(&mut b, "other-mode.so", &shared, 0o700, 1_600_000_000);
    let b = b.finish();
    let (da, db) = (Digest::of(&a), Digest::of(&b));
    let (ca, cb) = (chain_id(None, &da), chain_id(Some(&chain_id(None, &da)), &db));
    let ra = store.unpack(&ca, &da, &a[..]).unwrap();
    let rb = store.unpack(&cb, &db, &b[..]).unwrap();
    assert_eq!((ra.deduped_files, rb.deduped_files), (0, 1));
    assert_eq!(rb.deduped_bytes, shared.len() as u64);

    let ino = |chain: &Digest, rel: &str| {
        fs::symlink_metadata(store.diff_path(chain).join(rel))
            .unwrap()
            .ino()
    };
    assert_eq!(ino(&ca, "lib/shared.so"), ino(&cb, "usr/lib/copy.so"));
    assert_ne!(ino(&ca, "lib/shared.so"), ino(&cb, "other-mtime.so"));
    assert_ne!(ino(&ca, "lib/shared.so"), ino(&cb, "other-mode.so"));
    assert_ne!(ino(&cb, "other-mtime.so"), ino(&cb, "other-mode.so"));
    assert!((tiny.len() as u64) < DEFAULT_DEDUP_MIN_SIZE);
    assert_ne!(ino(&ca, "tiny"), ino(&cb, "tiny"), "tiny files stay unshared");
    // The shared inode kept its metadata and content.
    let md = fs::symlink_metadata(store.diff_path(&cb).join("usr/lib/copy.so")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.mtime()), (0o755, 1_600_000_000));
    assert_eq!(
        fs::read(store.diff_path(&cb).join("usr/lib/copy.so")).unwrap(),
        shared
    );

    let du = store.du().unwrap();
    assert_eq!(du.layers, 2);
    let sizes = 4 * shared.len() as u64 + 2 * tiny.len() as u64 + 20_000;
    assert_eq!(du.apparent_bytes, sizes);
    assert!(du.shared_bytes >= shared.len() as u64, "{du:?}");
    assert!(du.saved_bytes >= shared.len() as u64, "{du:?}");
    assert!(
        du.actual_bytes + du.saved_bytes >= 4 * shared.len() as u64,
        "{du:?}"
    );
    assert!(du.actual_bytes < 4 * shared.len() as u64, "{du:?}");

    // The same layers without dedup take more room.
    let plain_tmp = tempfile::tempdir().unwrap();
    let plain = open(plain_tmp.path()).with_dedup(false);
    plain.unpack(&ca, &da, &a[..]).unwrap();
    plain.unpack(&cb, &db, &b[..]).unwrap();
    let plain_du = plain.du().unwrap();
    assert_eq!(plain_du.saved_bytes, 0);
    assert!(
        plain_du.actual_bytes >= du.actual_bytes + shared.len() as u64,
        "{plain_du:?} vs {du:?}"
    );

    // The pool keeps entries while a layer uses them.
    assert_eq!(store.gc_pool().unwrap(), 0);
    store.remove(&ca).unwrap();
    assert_eq!(store.gc_pool().unwrap(), 1, "only-a's entry");
    store.remove(&cb).unwrap();
    assert_eq!(store.gc_pool().unwrap(), 3);
    assert_eq!(fs::read_dir(store.pool_dir()).unwrap().count(), 0);
    assert_eq!(store.du().unwrap().pool_entries, 0);
}

#[test]
fn stale_tmp_is_removed_but_live_tmp_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let stale = store.root().join(".tmp/stale");
    fs::create_dir_all(stale.join("diff/sub")).unwrap();
    fs::write(stale.join("diff/sub/file"), "x").unwrap();
    let live = store.root().join(".tmp/live");
    fs::create_dir_all(&live).unwrap();
    let held = fs::File::open(&live).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).unwrap();
    assert_eq!(store.clean_tmp().unwrap(), 1);
    assert!(!stale.exists());
    assert!(live.exists());
    drop(held);
    // Opening a store cleans too.
    open(tmp.path());
    assert!(!live.exists());
}

fn child_layer() -> Vec<u8> {
    big_layer(4)
}

/// Not a test of its own: the body a child process runs for the tests below.
#[test]
fn child_process_helper() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let root = PathBuf::from(std::env::var("STRATA_CHILD_ROOT").unwrap());
    let store = open(&root);
    let layer = child_layer();
    let diff = Digest::of(&layer);
    let chain = chain_id(None, &diff);
    let (piece, delay) = match mode.as_str() {
        // Slow enough to be killed in the middle.
        "forever" => (4096, Duration::from_millis(50)),
        _ => (64 << 10, Duration::from_millis(40)),
    };
    let reader = Slow {
        data: layer,
        pos: 0,
        piece,
        delay,
        read: Arc::new(AtomicU64::new(0)),
    };
    let report = store.unpack(&chain, &diff, reader).unwrap();
    println!("child-done already={}", report.already_unpacked);
}

fn spawn_child(root: &Path, mode: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &test_name(module_path!(), "child_process_helper")])
        .args(["--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .env("STRATA_CHILD_ROOT", root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn tmp_entries(store: &LayerStore) -> Vec<PathBuf> {
    fs::read_dir(store.root().join(".tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[test]
fn kill_9_mid_unpack_leaves_only_tmp_debris() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let layer = child_layer();
    let diff = Digest::of(&layer);
    let chain = chain_id(None, &diff);
    let mut child = spawn_child(tmp.path(), "forever");
    // Wait until the child is writing files into its temp dir.
    wait_for("the child to start writing", || {
        tmp_entries(&store)
            .iter()
            .any(|p| fs::read_dir(p.join("diff/data")).is_ok_and(|mut d| d.next().is_some()))
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!store.is_unpacked(&chain));
    assert!(store.list().unwrap().is_empty());
    assert_eq!(tmp_entries(&store).len(), 1, "the debris");
    // The next open removes the debris; the lock died with the child.
    let store = open(tmp.path());
    assert!(tmp_entries(&store).is_empty());
    let report = store.unpack(&chain, &diff, &layer[..]).unwrap();
    assert!(!report.already_unpacked);
    assert!(store.diff_path(&chain).join("data/f7").is_file());
}

#[test]
fn a_second_process_waits_and_finds_the_layer_done() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let layer = child_layer();
    let diff = Digest::of(&layer);
    let chain = chain_id(None, &diff);
    let child = spawn_child(tmp.path(), "slow");
    wait_for("the child to take the lock", || !tmp_entries(&store).is_empty());
    let read = Arc::new(AtomicU64::new(0));
    let reader = Slow {
        data: layer.clone(),
        pos: 0,
        piece: 1 << 20,
        delay: Duration::ZERO,
        read: read.clone(),
    };
    let report = store.unpack(&chain, &diff, reader).unwrap();
    assert!(report.already_unpacked, "we waited for the child's unpack");
    assert_eq!(read.load(Ordering::SeqCst), 0);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("child-done already=false"));
}

/// Pool linking happens after the content digest arrives from the dedup thread, by
/// which time later entries may have replaced the path: those must win.
#[test]
fn dedup_never_clobbers_later_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let c = noise(64 << 10, 20);
    let d = noise(64 << 10, 21);
    let mut first = RawTar::new();
    file(&mut first, "x", &c, 0o644, 1_600_000_000);
    let first = first.finish();
    let mut second = RawTar::new();
    file(&mut second, "x", &c, 0o644, 1_600_000_000);
    file(&mut second, "x", &d, 0o644, 1_600_000_000);
    second.hardlink(b"y", b"x");
    second.dir(b"dir/");
    file(&mut second, "dir/f", &c, 0o644, 1_600_000_000);
    second.file(b"dir", b"now a file");
    let second = second.finish();
    let (d1, d2) = (Digest::of(&first), Digest::of(&second));
    let (c1, c2) = (chain_id(None, &d1), chain_id(Some(&chain_id(None, &d1)), &d2));
    store.unpack(&c1, &d1, &first[..]).unwrap();
    store.unpack(&c2, &d2, &second[..]).unwrap();
    let diff = store.diff_path(&c2);
    assert_eq!(fs::read(diff.join("x")).unwrap(), d);
    assert_eq!(fs::read(diff.join("y")).unwrap(), d);
    assert_eq!(fs::read(diff.join("dir")).unwrap(), b"now a file");
    let ino = |p: &Path| fs::symlink_metadata(p).unwrap().ino();
    assert_eq!(ino(&diff.join("x")), ino(&diff.join("y")));
    assert_ne!(ino(&diff.join("x")), ino(&store.diff_path(&c1).join("x")));
    assert_eq!(fs::read(store.diff_path(&c1).join("x")).unwrap(), c);
}

#[test]
fn verified_uncompressed_blob_is_its_own_diff_id_and_its_length_is_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let layer = big_layer(5);
    let diff = Digest::of(&layer);
    let chain = chain_id(None, &diff);
    let size = layer.len() as u64;
    // The diff ID comes from the verified blob: a wrong claimed digest is what the layer
    // store then compares against the config, and refuses.
    let claimed = Digest::of(b"not this layer");
    let err = store
        .unpack_blob(&chain, &diff, (claimed, size), &layer[..])
        .unwrap_err();
    assert!(
        matches!(err, LayerError::DiffIdMismatch { actual, .. } if actual == claimed),
        "{err}"
    );
    assert!(!store.is_unpacked(&chain));
    // A blob shorter than its verified size (a truncated file) is refused.
    let err = store
        .unpack_blob(&chain, &diff, (diff, size + 1), &layer[..])
        .unwrap_err();
    assert!(err.to_string().contains("not"), "{err}");
    assert!(!store.is_unpacked(&chain));
    let report = store
        .unpack_blob(&chain, &diff, (diff, size), &layer[..])
        .unwrap();
    assert_eq!(report.diff_id, diff);
    assert!(store.diff_path(&chain).join("data/f7").is_file());

    // A compressed blob is still hashed after decompression: its digest is not the diff ID.
    let other = big_layer(6);
    let other_diff = Digest::of(&other);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    io::Write::write_all(&mut gz, &other).unwrap();
    let gz = gz.finish().unwrap();
    let other_chain = chain_id(None, &other_diff);
    let report = store
        .unpack_blob(
            &other_chain,
            &other_diff,
            (Digest::of(&gz), gz.len() as u64),
            &gz[..],
        )
        .unwrap();
    assert_eq!(report.diff_id, other_diff);
}
