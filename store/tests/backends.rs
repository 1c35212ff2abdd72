//! The backend test suite: one contract, run against every blob backend (local files; S3
//! on SeaweedFS) and every metadata engine (RocksDB; PostgreSQL). A backend is only
//! usable by the registry if it passes all of it.

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use strata_fixtures::scaleout::{Postgres, Seaweed};
use strata_store::{
    BlobBackend, BlobStore, Cf, ContentError, Digest, LocalBlobs, Meta, MetaEngine, Op, S3Blobs, S3Config,
};

async fn read_all(b: &dyn BlobBackend, d: &Digest, range: Option<(u64, u64)>) -> Vec<u8> {
    let s = b.read(d, range).await.unwrap();
    s.try_fold(Vec::new(), |mut acc, c| async move {
        acc.extend_from_slice(&c);
        Ok(acc)
    })
    .await
    .unwrap()
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

/// What every blob backend must do.
async fn blob_contract(b: Arc<dyn BlobBackend>) {
    // Absent content.
    let absent = Digest::of(b"absent");
    assert_eq!(b.stat(&absent).await.unwrap(), None);
    assert!(matches!(
        b.read(&absent, None).await,
        Err(ContentError::NotFound(_))
    ));

    // Small content of known digest: checked, stored once.
    let small = Bytes::from_static(b"{\"small\":true}");
    let d = Digest::of(&small);
    let wrong = b.write(&Digest::of(b"other"), small.clone()).await;
    assert!(
        matches!(wrong, Err(ContentError::DigestMismatch { .. })),
        "{wrong:?}"
    );
    assert!(b.write(&d, small.clone()).await.unwrap());
    assert!(!b.write(&d, small.clone()).await.unwrap());
    assert_eq!(b.stat(&d).await.unwrap(), Some(small.len() as u64));
    assert_eq!(read_all(&*b, &d, None).await, small.to_vec());
    assert_eq!(read_all(&*b, &d, Some((2, 6))).await, small[2..=6].to_vec());
    assert_eq!(b.read_small(&d, 1 << 20).await.unwrap(), small.to_vec());
    assert!(matches!(
        b.read_small(&d, 3).await,
        Err(ContentError::TooLarge { .. })
    ));

    // An upload across part boundaries, saved and taken up again between chunks as if by
    // another process.
    let data = pattern((11 << 20) + 777, 1);
    let digest = Digest::of(&data);
    let mut state = b.upload_begin("contract-upload-1").await.unwrap();
    let mut at = 0;
    for len in [1 << 20, 5 << 20, 3, (3 << 20) + 11] {
        b.upload_append(&mut state, Bytes::copy_from_slice(&data[at..at + len]))
            .await
            .unwrap();
        at += len;
        b.upload_suspend(&mut state).await.unwrap();
        let saved = serde_json::to_vec(&state).unwrap();
        state = serde_json::from_slice(&saved).unwrap();
        b.upload_resume(&mut state).await.unwrap();
        assert_eq!(state.offset(), at as u64);
    }
    b.upload_append(&mut state, Bytes::copy_from_slice(&data[at..]))
        .await
        .unwrap();
    // Not visible before the commit.
    assert_eq!(b.stat(&digest).await.unwrap(), None);
    let committed = b.upload_commit(state, &digest).await.unwrap();
    assert_eq!(committed.size, data.len() as u64);
    assert!(committed.written);
    assert_eq!(b.stat(&digest).await.unwrap(), Some(data.len() as u64));
    assert!(read_all(&*b, &digest, None).await == data);
    let r = read_all(&*b, &digest, Some((5 << 20, (5 << 20) + 99))).await;
    assert_eq!(r, data[5 << 20..(5 << 20) + 100].to_vec());

    // A wrong digest: refused, nothing visible.
    let other = pattern(6 << 20, 2);
    let mut state = b.upload_begin("contract-upload-2").await.unwrap();
    b.upload_append(&mut state, Bytes::from(other.clone()))
        .await
        .unwrap();
    let claimed = Digest::of(b"not this");
    let r = b.upload_commit(state, &claimed).await;
    assert!(matches!(r, Err(ContentError::DigestMismatch { .. })), "{r:?}");
    assert_eq!(b.stat(&claimed).await.unwrap(), None);
    assert_eq!(b.stat(&Digest::of(&other)).await.unwrap(), None);

    // Two uploads of the same content race: both succeed, one copy is stored.
    let same = pattern(7 << 20, 3);
    let sd = Digest::of(&same);
    let mut tasks = Vec::new();
    for i in 0..2 {
        let (b, same) = (b.clone(), same.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = b.upload_begin(&format!("contract-race-{i}")).await.unwrap();
            b.upload_append(&mut s, Bytes::from(same)).await.unwrap();
            b.upload_commit(s, &sd).await.unwrap()
        }));
    }
    let mut written = 0;
    for t in tasks {
        let c = t.await.unwrap();
        assert_eq!(c.size, same.len() as u64);
        written += usize::from(c.written);
    }
    assert!(written <= 1, "two copies written");
    assert!(read_all(&*b, &sd, None).await == same);

    // An aborted upload leaves nothing.
    let mut state = b.upload_begin("contract-upload-3").await.unwrap();
    b.upload_append(&mut state, Bytes::from(pattern(6 << 20, 4)))
        .await
        .unwrap();
    b.upload_abort(state).await.unwrap();
    assert!(matches!(
        b.upload_begin("bad/id").await,
        Err(ContentError::InvalidUpload(_))
    ));

    // Listing.
    let listed = b.list().await.unwrap();
    for (dd, size) in [(d, small.len()), (digest, data.len()), (sd, same.len())] {
        assert!(
            listed.iter().any(|i| i.digest == dd && i.size == size as u64),
            "{dd} missing from the listing"
        );
    }

    // GC's two steps: a keep between them saves the blob; without one it goes.
    assert!(b.condemn(&d).await.unwrap());
    assert!(
        b.list()
            .await
            .unwrap()
            .iter()
            .any(|i| i.digest == d && i.condemned)
    );
    assert!(b.keep(&d, i64::MAX).await.unwrap());
    assert_eq!(b.remove_condemned(&d).await.unwrap(), None);
    assert_eq!(b.stat(&d).await.unwrap(), Some(small.len() as u64));
    assert!(b.condemn(&d).await.unwrap());
    assert_eq!(b.remove_condemned(&d).await.unwrap(), Some(small.len() as u64));
    assert_eq!(b.stat(&d).await.unwrap(), None);
    assert!(!b.keep(&d, 0).await.unwrap());
    assert!(!b.condemn(&d).await.unwrap());
    assert!(b.remove(&digest).await.unwrap());
    assert!(!b.remove(&digest).await.unwrap());
    assert_eq!(b.stat(&digest).await.unwrap(), None);
}

/// What every metadata engine must do.
fn meta_contract(m: &dyn MetaEngine) {
    assert_eq!(m.get(Cf::Tags, "a").unwrap(), None);
    m.write(vec![
        Op::Put(Cf::Tags, "r/b:1".into(), b"1".to_vec()),
        Op::Put(Cf::Tags, "r/a:2".into(), b"2".to_vec()),
        Op::Put(Cf::Tags, "r/a:1".into(), b"3".to_vec()),
        Op::Put(Cf::Tags, "s/a:1".into(), b"4".to_vec()),
        Op::Put(Cf::Blobs, "r/a:1".into(), b"other family".to_vec()),
    ])
    .unwrap();
    let scan = m.scan(Cf::Tags, "r/", false).unwrap();
    let keys: Vec<&str> = scan.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["r/a:1", "r/a:2", "r/b:1"], "prefix scans are in key order");
    assert_eq!(scan[0].1, b"3");
    assert!(
        m.scan(Cf::Tags, "r/", true)
            .unwrap()
            .iter()
            .all(|(_, v)| v.is_empty())
    );
    assert_eq!(m.scan(Cf::Tags, "", false).unwrap().len(), 4);
    assert_eq!(
        m.get(Cf::Blobs, "r/a:1").unwrap().as_deref(),
        Some(&b"other family"[..])
    );
    // A batch is one step.
    m.write(vec![
        Op::Delete(Cf::Tags, "r/a:1".into()),
        Op::Put(Cf::Tags, "r/a:2".into(), b"22".to_vec()),
    ])
    .unwrap();
    assert_eq!(m.get(Cf::Tags, "r/a:1").unwrap(), None);
    assert_eq!(m.get(Cf::Tags, "r/a:2").unwrap().as_deref(), Some(&b"22"[..]));
    // Conditional writes.
    assert!(m.insert_if_absent(Cf::Uploads, "u1", b"x".to_vec()).unwrap());
    assert!(!m.insert_if_absent(Cf::Uploads, "u1", b"y".to_vec()).unwrap());
    assert!(
        !m.compare_and_swap(Cf::Uploads, "u1", Some(b"y"), Some(b"z".to_vec()))
            .unwrap()
    );
    assert!(
        m.compare_and_swap(Cf::Uploads, "u1", Some(b"x"), Some(b"z".to_vec()))
            .unwrap()
    );
    assert!(m.compare_and_swap(Cf::Uploads, "u1", Some(b"z"), None).unwrap());
    assert_eq!(m.get(Cf::Uploads, "u1").unwrap(), None);
}

/// Many writers race for one key: exactly one insert wins, every compare-and-swap chain
/// stays consistent (a counter incremented by CAS ends at the number of increments).
fn meta_races(engines: &[&dyn MetaEngine]) {
    let wins = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for (i, m) in engines.iter().cycle().take(16).enumerate() {
            let wins = &wins;
            s.spawn(move || {
                if m.insert_if_absent(Cf::Meta, "race", format!("{i}").into_bytes())
                    .unwrap()
                {
                    wins.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                for _ in 0..10 {
                    loop {
                        let cur = m.get(Cf::Meta, "counter").unwrap();
                        let n: u64 = cur
                            .as_deref()
                            .map_or(0, |v| String::from_utf8_lossy(v).parse().unwrap());
                        if m.compare_and_swap(
                            Cf::Meta,
                            "counter",
                            cur.as_deref(),
                            Some((n + 1).to_string().into_bytes()),
                        )
                        .unwrap()
                        {
                            break;
                        }
                    }
                }
            });
        }
    });
    assert_eq!(wins.load(std::sync::atomic::Ordering::SeqCst), 1);
    let counter = engines[0].get(Cf::Meta, "counter").unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&counter), "160");
}

#[test]
fn rocksdb_meets_the_metadata_contract() {
    let dir = tempfile::tempdir().unwrap();
    let m = Meta::open(&dir.path().join("meta")).unwrap();
    meta_contract(m.engine());
    meta_races(&[m.engine()]);
}

#[test]
fn postgres_meets_the_metadata_contract() {
    let Some(pg) = Postgres::start() else { return };
    pg.create_database("contract");
    let url = pg.url("contract");
    // Two connections pools, as two replicas would have.
    let (a, b) = (
        Meta::connect_postgres(&url).unwrap(),
        Meta::connect_postgres(&url).unwrap(),
    );
    meta_contract(a.engine());
    meta_races(&[a.engine(), b.engine()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_files_meet_the_blob_contract() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(dir.path()).unwrap();
    blob_contract(Arc::new(LocalBlobs::new(blobs))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_meets_the_blob_contract() {
    let Some(pg) = Postgres::start() else { return };
    let Some(weed) = Seaweed::start() else { return };
    pg.create_database("blobs");
    weed.create_bucket("contract");
    let meta = Arc::new(Meta::connect_postgres(&pg.url("blobs")).unwrap());
    let config = S3Config {
        endpoint: Some(weed.endpoint()),
        region: Some("us-east-1".into()),
        bucket: "contract".into(),
        prefix: "p".into(),
        path_style: true,
        access_key: Some(weed.access_key().into()),
        secret_key: Some(weed.secret_key().into()),
    };
    let b = Arc::new(S3Blobs::new(&config, meta).unwrap());
    blob_contract(b).await;
    // Nothing left behind in the bucket: no open multipart uploads, and only the one
    // object still stored (the raced content).
    assert_eq!(weed.list_multipart_uploads("contract"), 0);
    let keys = weed.list_keys("contract", "p/");
    assert_eq!(keys.len(), 1, "{keys:?}");
}
