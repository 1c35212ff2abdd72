//! GC, fsck and `du` over shared backends (several registry replicas on one PostgreSQL
//! and one bucket). The GC is online: one collector at a time, by a lease in the
//! metadata; no read-only mode.
//!
//! A blob is removed in two steps with a settling time between: unreferenced blobs past
//! the grace period are *condemned* (a mark in their location record), then — after
//! `settle`, and a second mark — those still unreferenced and still condemned are removed,
//! each by a compare-and-swap on its record. A push that will reference a blob *keeps* it
//! first ([`BlobBackend::keep`], which pardons a condemned blob by the same
//! compare-and-swap) and must store its manifest within `settle` of that (the registry
//! gives up with a 503 otherwise): so either the keep came before the condemning and the
//! manifest is seen by the second mark, or it came after and the removal's swap fails.
//!
//! [`BlobBackend::keep`]: crate::BlobBackend::keep

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;

use crate::digest::Digest;
use crate::fsck::{Fault, FsckReport};
use crate::gc::{GcOptions, GcReport, Usage, delete_links_to, mark_manifests};
use crate::manifest::MAX_MANIFEST_BYTES;
use crate::meta::{Cf, LeaseRecord, ManifestRecord, TagRecord};
use crate::store::{Store, StoreError, now};

/// The collector's lease (a `Store::claim`).
const LEASE_KEY: &str = "gc";
/// How long a lease lasts without renewal.
const LEASE_TTL: i64 = 60;
/// Backend calls in flight at once while condemning and removing.
const CONCURRENCY: usize = 32;

/// A running collection's progress, for `/metrics`.
#[derive(Debug, Default)]
pub struct GcProgress {
    pub running: AtomicBool,
    pub runs: AtomicU64,
    pub condemned: AtomicU64,
    pub removed: AtomicU64,
    pub removed_bytes: AtomicU64,
}

/// How the shared collector runs: [`GcOptions`] plus the settling time.
#[derive(Debug, Clone)]
pub struct SharedGcOptions {
    pub gc: GcOptions,
    /// Between condemning and removing; longer than any manifest push takes between
    /// keeping its blobs and storing itself.
    pub settle: Duration,
}

async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| StoreError::Unsupported(format!("gc task: {e}")))?
}

/// Everything the metadata references: manifests, what they list, images, live leases.
fn mark(store: &Store) -> Result<HashSet<Digest>, StoreError> {
    let meta = store.meta();
    let mut live = HashSet::new();
    mark_manifests(meta, &mut live)?;
    for key in meta.keys(Cf::Images, "")? {
        live.extend(key.parse::<Digest>().ok());
    }
    let now_s = now();
    for (_, lease) in meta.scan::<LeaseRecord>(Cf::Leases)? {
        if lease.expires >= now_s {
            live.extend(lease.digests.iter().copied());
        }
    }
    Ok(live)
}

impl Store {
    /// One collection over the shared blob backend, as `holder` (e.g. the replica's
    /// address). Returns `Ok(None)` when another replica holds the collector's lease.
    pub async fn gc_shared(
        self: &Arc<Store>,
        opts: &SharedGcOptions,
        holder: &str,
        progress: &GcProgress,
    ) -> Result<Option<GcReport>, StoreError> {
        let h = holder.to_string();
        if !blocking(self, move |s| s.claim(LEASE_KEY, &h, LEASE_TTL)).await? {
            return Ok(None);
        }
        progress.running.store(true, Ordering::Relaxed);
        let result = self.gc_shared_inner(opts, holder, progress).await;
        progress.running.store(false, Ordering::Relaxed);
        progress.runs.fetch_add(1, Ordering::Relaxed);
        let h = holder.to_string();
        blocking(self, move |s| s.release_claim(LEASE_KEY, &h)).await?;
        result.map(Some)
    }

    async fn renew(self: &Arc<Store>, holder: &str) -> Result<(), StoreError> {
        let h = holder.to_string();
        if blocking(self, move |s| s.claim(LEASE_KEY, &h, LEASE_TTL)).await? {
            Ok(())
        } else {
            Err(StoreError::Unsupported("gc lease lost to another replica".into()))
        }
    }

    async fn gc_shared_inner(
        self: &Arc<Store>,
        opts: &SharedGcOptions,
        holder: &str,
        progress: &GcProgress,
    ) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let started = now();
        let content = self.content().clone();
        let live = blocking(self, mark).await?;
        let cutoff = started - opts.gc.grace.as_secs() as i64;
        let mut candidates = Vec::new();
        for b in content.list().await? {
            if live.contains(&b.digest) {
                report.blobs_kept += 1;
            } else if b.stored > cutoff && !b.condemned {
                report.blobs_kept += 1;
                report.young_blobs_kept += 1;
                report.young_bytes_kept += b.size;
            } else {
                candidates.push(b.digest);
            }
        }
        if opts.gc.dry_run {
            report.blobs_removed = candidates.len() as u64;
            return Ok(report);
        }
        // Step one: condemn.
        let mut condemned = Vec::new();
        let mut results = futures::stream::iter(candidates)
            .map(|d| {
                let content = content.clone();
                async move { (d, content.condemn(&d).await) }
            })
            .buffer_unordered(CONCURRENCY);
        while let Some((d, r)) = results.next().await {
            if r? {
                condemned.push(d);
                progress.condemned.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(results);
        if condemned.is_empty() {
            return Ok(report);
        }
        self.renew(holder).await?;
        tokio::time::sleep(opts.settle).await;
        self.renew(holder).await?;
        // Step two: what is still unreferenced and still condemned goes.
        let live = blocking(self, mark).await?;
        let (pardon, doomed): (Vec<Digest>, Vec<Digest>) =
            condemned.into_iter().partition(|d| live.contains(d));
        for d in &pardon {
            content.keep(d, i64::MAX).await?;
            report.blobs_kept += 1;
        }
        let mut swept = HashSet::new();
        let mut results = futures::stream::iter(doomed)
            .map(|d| {
                let content = content.clone();
                async move { (d, content.remove_condemned(&d).await) }
            })
            .buffer_unordered(CONCURRENCY);
        while let Some((d, r)) = results.next().await {
            match r? {
                Some(size) => {
                    report.blobs_removed += 1;
                    report.bytes_removed += size;
                    progress.removed.fetch_add(1, Ordering::Relaxed);
                    progress.removed_bytes.fetch_add(size, Ordering::Relaxed);
                    swept.insert(d);
                }
                None => report.blobs_kept += 1,
            }
        }
        drop(results);
        if !swept.is_empty() {
            blocking(self, move |s| {
                let meta = s.meta();
                let mut batch = meta.batch();
                for d in &swept {
                    batch.delete(Cf::Blobs, &d.to_string());
                }
                delete_links_to(meta, &swept, &mut batch)?;
                meta.write(batch)?;
                Ok(())
            })
            .await?;
        }
        Ok(report)
    }

    /// fsck over the shared backends: every blob re-read and re-hashed from the backend;
    /// every manifest's blobs and children present; every tag at a stored manifest.
    /// Checks only (repair is for the embedded store).
    pub async fn fsck_shared(self: &Arc<Store>) -> Result<FsckReport, StoreError> {
        use futures::TryStreamExt;
        let mut r = FsckReport::default();
        let content = self.content().clone();
        let blobs = content.list().await?;
        let mut present = HashSet::new();
        for b in &blobs {
            let mut hasher = crate::digest::Hasher::new();
            let mut stream = content.read(&b.digest, None).await?;
            let mut len = 0u64;
            let read: Result<(), std::io::Error> = async {
                while let Some(chunk) = stream.try_next().await? {
                    len += chunk.len() as u64;
                    hasher.update(&chunk);
                }
                Ok(())
            }
            .await;
            r.blobs_checked += 1;
            r.bytes_hashed += len;
            let fault = |kind, detail: String| Fault {
                kind,
                subject: b.digest.to_string(),
                detail,
                repaired: false,
            };
            if let Err(e) = read {
                r.faults.push(fault("unreadable blob", e.to_string()));
                continue;
            }
            let actual = hasher.finish();
            if actual != b.digest || len != b.size {
                r.faults.push(fault(
                    "corrupt blob",
                    format!("content hashes to {actual} ({len} bytes, {} recorded)", b.size),
                ));
                continue;
            }
            if b.condemned {
                r.notes
                    .push(fault("condemned blob", "a GC is removing it".into()));
            }
            present.insert(b.digest);
        }
        let (manifests, tags) = blocking(self, |s| {
            Ok((
                s.meta().scan::<ManifestRecord>(Cf::Manifests)?,
                s.meta().scan::<TagRecord>(Cf::Tags)?,
            ))
        })
        .await?;
        let manifest_keys: HashSet<String> = manifests.iter().map(|(k, _)| k.clone()).collect();
        for (key, m) in &manifests {
            r.manifests_checked += 1;
            let mut missing = |kind: &'static str, d: &Digest| {
                r.faults.push(Fault {
                    kind,
                    subject: key.clone(),
                    detail: format!("references {d}, which is not stored"),
                    repaired: false,
                });
            };
            if let Ok(d) = key.parse::<Digest>()
                && !present.contains(&d)
            {
                missing("manifest blob", &d);
            }
            for d in m.config.iter().chain(&m.layers) {
                if !present.contains(d) {
                    missing("missing blob", d);
                }
            }
            for d in &m.children {
                if !manifest_keys.contains(&d.to_string()) {
                    missing("missing child manifest", d);
                }
            }
        }
        for (key, t) in tags {
            if !manifest_keys.contains(&t.manifest.to_string()) {
                r.faults.push(Fault {
                    kind: "dangling tag",
                    subject: key,
                    detail: format!("points at {}, which is not stored", t.manifest),
                    repaired: false,
                });
            }
        }
        // A config a manifest names must be small enough to be read as one (every blob
        // was read in full above; its size says the rest).
        let sizes: std::collections::HashMap<Digest, u64> =
            blobs.iter().map(|b| (b.digest, b.size)).collect();
        for (_, m) in &manifests {
            if let Some(c) = m.config
                && present.contains(&c)
                && sizes.get(&c).is_some_and(|&size| size > MAX_MANIFEST_BYTES)
            {
                r.faults.push(Fault {
                    kind: "unreadable config",
                    subject: c.to_string(),
                    detail: crate::content::ContentError::TooLarge {
                        limit: MAX_MANIFEST_BYTES,
                    }
                    .to_string(),
                    repaired: false,
                });
            }
        }
        Ok(r)
    }

    /// `du` over the shared backends: what the blob backend holds, and the metadata's counts.
    pub async fn usage_shared(self: &Arc<Store>) -> Result<Usage, StoreError> {
        let mut u = Usage::default();
        for b in self.content().list().await? {
            u.blobs += 1;
            u.blob_bytes += b.size;
        }
        u.blob_disk_bytes = u.blob_bytes;
        let (images, manifests, tags) = blocking(self, |s| {
            Ok((
                s.meta().keys(Cf::Images, "")?.len() as u64,
                s.meta().keys(Cf::Manifests, "")?.len() as u64,
                s.meta().keys(Cf::Tags, "")?.len() as u64,
            ))
        })
        .await?;
        u.images = images;
        u.manifests = manifests;
        u.tags = tags;
        Ok(u)
    }
}
