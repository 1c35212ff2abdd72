//! Crash points of GC, staging and ingests: the state each leaves on disk, reopened, checked
//! and taken up again (the crash campaign, `benches/scripts/crash-campaign.py`, found these).

use std::path::Path;
use std::time::{Duration, SystemTime};

use strata_store::{Cf, Digest, GcOptions, IngestKey, LayerRecord, LoadOptions, Store, load};

const REPO: &str = "crash/repo";

/// A blob stored and linked into [`REPO`] as an upload leaves it, its file an hour old
/// (past any grace period).
fn stored_blob(root: &Path, seed: &str) -> Digest {
    let store = Store::open(root).unwrap();
    let bytes = seed.repeat(100).into_bytes();
    let d = Digest::of(&bytes);
    store
        .ingest_blob(&d, Some(bytes.len() as u64), &bytes[..])
        .unwrap();
    store.record_uploaded_blob(REPO, &d, bytes.len() as u64).unwrap();
    let file = std::fs::File::options()
        .write(true)
        .open(blob_path(root, &d))
        .unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    d
}

fn blob_path(root: &Path, d: &Digest) -> std::path::PathBuf {
    root.join("blobs").join("sha256").join(d.hex())
}

fn collect(store: &Store) {
    store
        .gc(&GcOptions {
            grace: Duration::ZERO,
            ..GcOptions::default()
        })
        .unwrap();
}

#[test]
fn a_record_and_links_left_by_a_gc_killed_after_removing_a_file_are_collected() {
    // GC used to remove a blob's file, then its record, then (at the very end) the
    // repository links to it: a kill in between left a record fsck reported as a missing
    // blob forever (the next GC sweeps files, and there was none).
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let d = stored_blob(&root, "orphan");
    std::fs::remove_file(blob_path(&root, &d)).unwrap();

    let store = Store::open(&root).unwrap();
    let before = store.fsck(false).unwrap();
    assert!(
        before.faults.iter().any(|f| f.kind == "missing blob"),
        "{:?}",
        before.faults
    );
    collect(&store);
    let after = store.fsck(false).unwrap();
    assert!(after.faults.is_empty(), "{:?}", after.faults);
    assert!(
        !store.repo_exists(REPO).unwrap(),
        "the link to the gone blob stayed"
    );
}

#[test]
fn a_gc_killed_between_metadata_and_files_leaves_only_what_the_next_gc_removes() {
    // GC now deletes a blob's record and links first, then the file: killed in between,
    // fsck finds no fault (only a note) and the next GC removes the file.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let d = stored_blob(&root, "half");
    {
        let store = Store::open(&root).unwrap();
        store.meta().delete(Cf::Blobs, &d.to_string()).unwrap();
        assert!(store.unlink(REPO, &d).unwrap());
    }

    let store = Store::open(&root).unwrap();
    let report = store.fsck(false).unwrap();
    assert!(report.faults.is_empty(), "{:?}", report.faults);
    assert!(report.notes.iter().any(|n| n.kind == "unrecorded blob"));
    collect(&store);
    assert!(!blob_path(&root, &d).exists());
    let report = store.fsck(false).unwrap();
    assert!(report.faults.is_empty() && report.notes.is_empty(), "{report:?}");
}

#[test]
fn a_gc_leaves_no_record_or_link_of_a_blob_it_removed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let d = stored_blob(&root, "plain");
    let store = Store::open(&root).unwrap();
    collect(&store);
    assert!(!blob_path(&root, &d).exists());
    assert!(
        store
            .meta()
            .get::<serde_json::Value>(Cf::Blobs, &d.to_string())
            .unwrap()
            .is_none()
    );
    assert!(!store.repo_exists(REPO).unwrap());
}

#[test]
fn a_layer_kept_for_its_youth_keeps_its_parent() {
    // GC swept layers in chain-ID order and judged each alone: an old unreferenced parent
    // went while its young child (a pull recording its image right now) stayed, leaving a
    // recorded layer whose parent is gone. (Children now also go before their parents, so a
    // GC killed half-way cannot leave that either.)
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let image = strata_fixtures::small_image(7, 2, false);
    let layout = dir.path().join("layout");
    strata_fixtures::write_oci_layout(&layout, &[(&image, Some("crash/layers:1"))]);
    let store = Store::open(&root).unwrap();
    load(&store, &layout, &LoadOptions::default()).unwrap();
    store.remove("crash/layers:1").unwrap();
    let chains: Vec<Digest> = image.chain_ids().iter().map(|c| c.parse().unwrap()).collect();
    let (parent, child) = (chains[0], chains[1]);
    let mut old: LayerRecord = store
        .meta()
        .get(Cf::Layers, &parent.to_string())
        .unwrap()
        .unwrap();
    old.stored = 0;
    store.meta().put(Cf::Layers, &parent.to_string(), &old).unwrap();

    store.gc(&GcOptions::default()).unwrap();
    assert!(store.layers().is_unpacked(&child) && store.layers().is_unpacked(&parent));
    let report = store.fsck(false).unwrap();
    assert!(report.faults.is_empty(), "{:?}", report.faults);
}

#[test]
fn staging_files_of_a_killed_process_go_at_the_next_open_and_live_ones_stay() {
    // A killed `puller load` or `runner commit` left its `stage-*.partial` files in
    // ingest/ until a GC a day later.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let store = Store::open(&root).unwrap();
    let live = store.blobs().stage(&b"still being written"[..], None).unwrap();
    drop(store);
    let dead = root.join("ingest").join("stage-Killed.partial");
    std::fs::write(&dead, b"half of a layer").unwrap();

    let store = Store::open(&root).unwrap();
    assert!(!dead.exists(), "a dead process's staging file stayed");
    let mut live = live;
    let c = store.blobs().commit_staged(&mut live).unwrap();
    assert!(c.written && store.blobs().contains(&c.digest));
    let names: Vec<_> = std::fs::read_dir(root.join("ingest"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("stage-"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn a_partial_ingest_holding_the_whole_blob_is_committed_when_taken_up() {
    // `puller fetch` killed after a blob's last byte but before its commit left a partial
    // as long as the blob: every later fetch asked for the bytes past its end (416) and
    // failed, until a GC a day later.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let store = Store::open(&root).unwrap();
    let bytes = b"every byte arrived".repeat(1000);
    let d = Digest::of(&bytes);
    let partial = root.join("ingest").join(format!("sha256-{}.partial", d.hex()));
    std::fs::write(&partial, &bytes).unwrap();
    assert!(store.blobs().begin(IngestKey::Digest(d)).unwrap().is_none());
    assert!(store.blobs().contains(&d) && !partial.exists());
    assert_eq!(std::fs::read(blob_path(&root, &d)).unwrap(), bytes);

    // A partial that is not (yet) the blob is resumed as before.
    let other = Digest::of(b"something longer");
    let half = root
        .join("ingest")
        .join(format!("sha256-{}.partial", other.hex()));
    std::fs::write(&half, b"something").unwrap();
    let ingest = store.blobs().begin(IngestKey::Digest(other)).unwrap().unwrap();
    assert_eq!(ingest.offset(), 9);
}

#[test]
fn a_blob_committed_from_an_old_partial_is_young() {
    // An upload resumed after a restart committed a blob whose file kept the time of its
    // last chunk: older than the grace period, the next GC took it before the manifest.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let store = Store::open(&root).unwrap();
    let bytes = b"a slow upload".repeat(100);
    let d = Digest::of(&bytes);
    let mut ingest = store
        .blobs()
        .begin(IngestKey::Upload("slow".into()))
        .unwrap()
        .unwrap();
    ingest.write_all(&bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(root.join("ingest").join("upload-slow.partial"))
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
    ingest.commit(&d, None).unwrap();
    store.gc(&GcOptions::default()).unwrap();
    assert!(
        store.blobs().contains(&d),
        "GC took a blob committed a moment ago"
    );
}

#[test]
fn generated_content_and_lock_files_leave_nothing_to_resume() {
    // `runner commit -p` killed while writing its config left a digest-keyed partial of
    // content no one would ask for again (the next commit's config has another time), and
    // killed processes left lock files.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let store = Store::open(&root).unwrap();
    let c = store.blobs().put_bytes(b"{\"generated\":true}").unwrap();
    assert!(c.written && !store.blobs().put_bytes(b"{\"generated\":true}").unwrap().written);
    let ingest = root.join("ingest");
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    assert!(names(&ingest).is_empty(), "{:?}", names(&ingest));
    drop(store);

    let held = Digest::of(b"held");
    std::fs::write(ingest.join("sha256-deadbeef.lock"), b"").unwrap();
    std::fs::write(ingest.join(format!("sha256-{}.partial", held.hex())), b"he").unwrap();
    std::fs::write(ingest.join(format!("sha256-{}.lock", held.hex())), b"").unwrap();
    let _store = Store::open(&root).unwrap();
    let mut left = names(&ingest);
    left.sort();
    assert_eq!(
        left,
        [
            format!("sha256-{}.lock", held.hex()),
            format!("sha256-{}.partial", held.hex())
        ],
        "a lock file with no partial stayed, or a resumable partial's went"
    );
}
