//! Garbage collection and disk usage: mark from tags, manifests, images, containers and
//! leases; sweep unreferenced blobs and layers older than a grace period.
//!
//! Safe while the store is being written: blobs committed after the GC started, blobs a
//! manifest starts referencing during the GC (see [`Store::note_referenced`]), leased
//! content and partial ingests are never swept.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use crate::digest::Digest;
use crate::index::IdKind;
use crate::layers::chain_id;
use crate::meta::{Batch, Cf, ImageRecord, LayerRecord, LeaseRecord, ManifestRecord, Meta};
use crate::store::{Store, StoreError, now};

const TIMESTAMP_SLACK: Duration = Duration::from_secs(1);

/// Blobs swept per metadata batch.
const SWEEP_CHUNK: usize = 256;

/// Parent links followed at most (a chain of records is never this deep; a loop in
/// damaged records must not hang the GC).
const MAX_CHAIN_DEPTH: usize = 4096;

/// How a GC runs.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Unreferenced content younger than this is kept.
    pub grace: Duration,
    /// Partial ingests (abandoned uploads) untouched for this long are removed.
    pub partial_expiry: Duration,
    /// Report what would go, remove nothing.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: Duration::from_secs(3600),
            partial_expiry: Duration::from_secs(24 * 3600),
            dry_run: false,
        }
    }
}

/// What a GC removed (or would remove, for a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub blobs_removed: u64,
    pub bytes_removed: u64,
    pub layers_removed: u64,
    pub pool_files_removed: u64,
    pub leases_expired: u64,
    pub partials_removed: u64,
    pub blobs_kept: u64,
    /// Of the blobs kept, those no manifest, image or lease references, kept only for
    /// being younger than the grace period (a later GC, or one with `grace` 0, takes them).
    pub young_blobs_kept: u64,
    pub young_bytes_kept: u64,
}

/// Disk usage of a store.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub blobs: u64,
    pub blob_bytes: u64,
    pub blob_disk_bytes: u64,
    pub layers: u64,
    /// Bytes of files in unpacked layers, counted once per layer.
    pub layer_apparent_bytes: u64,
    /// Bytes on disk for unpacked layers, each shared inode counted once.
    pub layer_disk_bytes: u64,
    /// What file sharing across layers saves.
    pub layer_shared_bytes: u64,
    pub images: u64,
    pub manifests: u64,
    pub tags: u64,
}

impl Store {
    /// Marks `digests` as referenced for any GC running now (called by `add_manifest`
    /// before it checks that they exist).
    pub(crate) fn note_referenced(&self, digests: impl IntoIterator<Item = Digest>) {
        let mut guard = self.gc_refs().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(set) = guard.as_mut() {
            set.extend(digests);
        }
    }

    /// Runs a garbage collection.
    pub fn gc(&self, opts: &GcOptions) -> Result<GcReport, StoreError> {
        let started = SystemTime::now();
        *self.gc_refs().lock().unwrap_or_else(|p| p.into_inner()) = Some(HashSet::new());
        let result = self.gc_inner(opts, started);
        *self.gc_refs().lock().unwrap_or_else(|p| p.into_inner()) = None;
        result
    }

    fn gc_inner(&self, opts: &GcOptions, started: SystemTime) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let meta = self.meta();
        let mut blobs: HashSet<Digest> = HashSet::new();
        let mut layers: HashSet<Digest> = HashSet::new();
        let mark_chain = |diff_ids: &[Digest], layers: &mut HashSet<Digest>| {
            let mut parent: Option<Digest> = None;
            for d in diff_ids {
                let c = chain_id(parent.as_ref(), d);
                layers.insert(c);
                parent = Some(c);
            }
        };

        // Mark. Every manifest record is a root (manifests leave by `rm` or a registry
        // DELETE); tags point at manifests; images and containers keep their layers.
        mark_manifests(meta, &mut blobs)?;
        for (key, image) in meta.scan::<ImageRecord>(Cf::Images)? {
            if let Ok(d) = key.parse() {
                blobs.insert(d);
            }
            mark_chain(&image.diff_ids, &mut layers);
        }
        for (_, c) in meta.scan::<serde_json::Value>(Cf::Containers)? {
            for field in ["image", "config"] {
                if let Some(d) = c.get(field).and_then(|v| v.as_str()).and_then(|s| s.parse().ok()) {
                    blobs.insert(d);
                }
            }
            if let Some(chains) = c.get("layers").and_then(|v| v.as_array()) {
                layers.extend(chains.iter().filter_map(|v| v.as_str()?.parse::<Digest>().ok()));
            }
        }
        let (images, chains) = container_roots(self.root());
        blobs.extend(images);
        layers.extend(chains);
        let now_s = now();
        for (key, lease) in meta.scan::<LeaseRecord>(Cf::Leases)? {
            if lease.expires < now_s {
                report.leases_expired += 1;
                if !opts.dry_run {
                    meta.delete(Cf::Leases, &key)?;
                }
            } else {
                blobs.extend(lease.digests.iter().copied());
            }
        }
        // Sweep blobs.
        // File times come from the kernel's coarse clock, which can lag `SystemTime::now()`
        // by a few milliseconds: allow a second of slack so a blob written just after the
        // GC started never looks older than it.
        let cutoff = started
            .checked_sub(opts.grace + TIMESTAMP_SLACK)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let candidates: Vec<_> = self
            .blobs()
            .list()?
            .into_iter()
            .filter(|entry| {
                let referenced = blobs.contains(&entry.digest);
                let keep = referenced || entry.modified > cutoff;
                report.blobs_kept += u64::from(keep);
                if keep && !referenced {
                    report.young_blobs_kept += 1;
                    report.young_bytes_kept += entry.size;
                }
                !keep
            })
            .collect();
        // Metadata first, then files, a chunk at a time: a GC killed between the two leaves
        // blob files no record names (what fsck notes and the next GC removes), never a
        // record or a repository link to a blob that is gone.
        for chunk in candidates.chunks(SWEEP_CHUNK) {
            // Re-check under the lock `add_manifest` takes, held until the chunk's files
            // are gone: a manifest stored during this GC may have started referencing one.
            let guard = self.gc_refs().lock().unwrap_or_else(|p| p.into_inner());
            let mut doomed = HashSet::new();
            for entry in chunk {
                if guard.as_ref().is_some_and(|s| s.contains(&entry.digest)) {
                    report.blobs_kept += 1;
                    continue;
                }
                report.blobs_removed += 1;
                report.bytes_removed += entry.size;
                doomed.insert(entry.digest);
            }
            if opts.dry_run || doomed.is_empty() {
                continue;
            }
            let mut batch = meta.batch();
            for d in &doomed {
                batch.delete(Cf::Blobs, &d.to_string());
            }
            delete_links_to(meta, &doomed, &mut batch)?;
            meta.write(batch)?;
            for d in &doomed {
                self.blobs().remove(d)?;
            }
            drop(guard);
        }
        // Records of blobs whose file is gone and that nothing references: left by a GC of
        // an earlier version killed between removing a file and its record.
        if !opts.dry_run {
            let mut batch = meta.batch();
            let mut orphans = HashSet::new();
            for key in meta.keys(Cf::Blobs, "")? {
                if let Ok(d) = key.parse::<Digest>()
                    && !blobs.contains(&d)
                    && !self.blobs().contains(&d)
                {
                    batch.delete(Cf::Blobs, &key);
                    orphans.insert(d);
                }
            }
            if !orphans.is_empty() {
                delete_links_to(meta, &orphans, &mut batch)?;
                meta.write(batch)?;
            }
        }

        // Sweep layers: children before their parents, so that a GC killed half-way
        // leaves no recorded layer whose parent is gone; a layer kept for its youth keeps
        // its ancestors.
        let cutoff_s = now_s - opts.grace.as_secs() as i64;
        let records: HashMap<Digest, LayerRecord> = meta
            .scan::<LayerRecord>(Cf::Layers)?
            .into_iter()
            .filter_map(|(k, l)| Some((k.parse().ok()?, l)))
            .collect();
        let ancestors = |chain: &Digest| {
            std::iter::successors(records.get(chain).and_then(|l| l.parent), |p| {
                records.get(p).and_then(|l| l.parent)
            })
            .take(MAX_CHAIN_DEPTH)
        };
        let (mut doomed, mut spared) = (Vec::new(), HashSet::new());
        for chain in self.layers().list()? {
            if layers.contains(&chain) {
                continue;
            }
            if records.get(&chain).map_or(0, |l| l.stored) > cutoff_s {
                spared.extend(ancestors(&chain));
            } else {
                doomed.push(chain);
            }
        }
        doomed.retain(|c| !spared.contains(c));
        doomed.sort_by_cached_key(|c| std::cmp::Reverse(ancestors(c).count()));
        for chain in doomed {
            report.layers_removed += 1;
            if !opts.dry_run {
                // Record first: a kill between the two leaves an unrecorded layer (a note
                // for fsck, removed by the next GC), never a record of a missing layer.
                meta.delete(Cf::Layers, &chain.to_string())?;
                self.index_remove(&chain, IdKind::Layer);
                self.layers().remove(&chain)?;
            }
        }
        for (key, _) in meta.scan::<LayerRecord>(Cf::Layers)? {
            if let Ok(chain) = key.parse::<Digest>()
                && !self.layers().is_unpacked(&chain)
                && !opts.dry_run
            {
                meta.delete(Cf::Layers, &key)?;
                self.index_remove(&chain, IdKind::Layer);
            }
        }
        if !opts.dry_run {
            report.pool_files_removed = self.layers().gc_pool()?;
        }

        // Abandoned partial ingests.
        let partial_cutoff = started
            .checked_sub(opts.partial_expiry)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        for (stem, _, modified) in self.blobs().list_partials()? {
            if modified < partial_cutoff && (opts.dry_run || self.blobs().remove_partial(&stem)?) {
                report.partials_removed += 1;
            }
        }
        Ok(report)
    }

    /// Disk usage.
    pub fn usage(&self) -> Result<Usage, StoreError> {
        let mut u = Usage::default();
        for b in self.blobs().list()? {
            u.blobs += 1;
            u.blob_bytes += b.size;
            u.blob_disk_bytes += b.blocks;
        }
        let l = self.layers().du()?;
        u.layers = l.layers;
        u.layer_apparent_bytes = l.apparent_bytes;
        u.layer_disk_bytes = l.actual_bytes;
        u.layer_shared_bytes = l.shared_bytes;
        u.images = self.meta().keys(Cf::Images, "")?.len() as u64;
        u.manifests = self.meta().keys(Cf::Manifests, "")?.len() as u64;
        u.tags = self.meta().keys(Cf::Tags, "")?.len() as u64;
        Ok(u)
    }
}

/// Marks what the manifest records reference: each manifest, its config, layers and
/// children (both collectors' first roots).
pub(crate) fn mark_manifests(meta: &Meta, live: &mut HashSet<Digest>) -> Result<(), StoreError> {
    for (key, m) in meta.scan::<ManifestRecord>(Cf::Manifests)? {
        live.extend(key.parse::<Digest>().ok());
        live.extend(m.config);
        live.extend(m.layers.iter().copied());
        live.extend(m.children.iter().copied());
    }
    Ok(())
}

/// Adds to `batch` the deletion of every repository link to a swept blob.
pub(crate) fn delete_links_to(
    meta: &Meta,
    swept: &HashSet<Digest>,
    batch: &mut Batch,
) -> Result<(), StoreError> {
    for link in meta.keys(Cf::RepoLinks, "")? {
        let digest = link.rsplit_once('@').and_then(|(_, d)| d.parse::<Digest>().ok());
        if digest.is_some_and(|d| swept.contains(&d)) {
            batch.delete(Cf::RepoLinks, &link);
        }
    }
    Ok(())
}

/// What the runner's containers use: each `containers/<id>/config.json` names its image
/// (`image_id`: the config blob) and its unpacked layers (`layers`:
/// `<root>/layers/<chain-hex>/diff`). A container outlives its image's tag, so its
/// layers stay while it does, as docker keeps an image a container uses.
fn container_roots(root: &std::path::Path) -> (Vec<Digest>, Vec<Digest>) {
    let (mut images, mut chains) = (Vec::new(), Vec::new());
    let Ok(entries) = std::fs::read_dir(root.join("containers")) else {
        return (images, chains);
    };
    for e in entries.flatten() {
        let Ok(bytes) = std::fs::read(e.path().join("config.json")) else {
            continue;
        };
        let Ok(c) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        images.extend(c["image_id"].as_str().and_then(|s| s.parse::<Digest>().ok()));
        for l in c["layers"].as_array().into_iter().flatten() {
            let chain = l
                .as_str()
                .map(std::path::Path::new)
                .and_then(|p| p.parent()?.file_name()?.to_str())
                .and_then(|hex| Digest::from_hex(hex).ok());
            chains.extend(chain);
        }
    }
    (images, chains)
}
