//! fsck: re-hash every blob and check every metadata reference both ways; optionally
//! repair (quarantine corrupt blobs, rebuild what can be derived from the blobs).

use std::collections::HashSet;

use crate::digest::{Digest, HashingReader};
use crate::index::IdKind;
use crate::manifest::{Config, MAX_MANIFEST_BYTES};
use crate::meta::{BlobRecord, Cf, ImageRecord, LayerRecord, ManifestRecord, TagRecord};
use crate::store::{Store, StoreError, now};

/// One problem fsck found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Fault {
    pub kind: &'static str,
    pub subject: String,
    pub detail: String,
    pub repaired: bool,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.kind, self.subject, self.detail)?;
        if self.repaired {
            write!(f, " (repaired)")?;
        }
        Ok(())
    }
}

/// What fsck checked and found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FsckReport {
    pub blobs_checked: u64,
    pub bytes_hashed: u64,
    pub manifests_checked: u64,
    pub layers_checked: u64,
    pub faults: Vec<Fault>,
    /// Not faults: leftovers of interrupted work that `gc` reclaims (blobs no record
    /// names yet, complete layers no record names yet).
    pub notes: Vec<Fault>,
}

impl FsckReport {
    /// Faults that remain after repair.
    pub fn unrepaired(&self) -> usize {
        self.faults.iter().filter(|f| !f.repaired).count()
    }
}

impl Store {
    /// Whether a stored manifest's config is an image config (an artifact's — BuildKit's
    /// cache config, the OCI empty config, a Helm chart's — makes no image record). A
    /// manifest that cannot be read counts as an image's: the other checks report it.
    fn has_image_config(&self, digest: &Digest, media_type: &str) -> bool {
        self.blobs()
            .read_small(digest, crate::manifest::MAX_MANIFEST_BYTES)
            .ok()
            .and_then(|b| crate::manifest::Manifest::parse(&b, Some(media_type)).ok())
            .is_none_or(|m| crate::store::image_config(&m).is_some())
    }

    /// Checks the store. With `repair`, fixes what can be fixed without losing data.
    pub fn fsck(&self, repair: bool) -> Result<FsckReport, StoreError> {
        let mut r = FsckReport::default();
        let meta = self.meta();
        let fault = |r: &mut FsckReport, kind, subject: String, detail: String, repaired| {
            r.faults.push(Fault {
                kind,
                subject,
                detail,
                repaired,
            });
        };

        // Blobs: content, and blob files against blob records.
        let mut present: HashSet<Digest> = HashSet::new();
        for entry in self.blobs().list()? {
            let file = self.blobs().open_blob(&entry.digest)?;
            let mut reader = HashingReader::new(std::io::BufReader::with_capacity(1 << 20, file));
            std::io::copy(&mut reader, &mut std::io::sink())
                .map_err(crate::store::io_err(format!("read blob {}", entry.digest)))?;
            let (actual, len, _) = reader.finish();
            r.blobs_checked += 1;
            r.bytes_hashed += len;
            if actual != entry.digest {
                let mut repaired = false;
                if repair {
                    self.blobs()
                        .quarantine(&entry.digest, &self.root().join("quarantine"))?;
                    meta.delete(Cf::Blobs, &entry.digest.to_string())?;
                    repaired = true;
                }
                fault(
                    &mut r,
                    "corrupt blob",
                    entry.digest.to_string(),
                    format!("content hashes to {actual}"),
                    repaired,
                );
                continue;
            }
            present.insert(entry.digest);
            let key = entry.digest.to_string();
            match meta.get::<BlobRecord>(Cf::Blobs, &key)? {
                Some(rec) if rec.size == entry.size => {}
                Some(rec) => {
                    if repair {
                        meta.put(
                            Cf::Blobs,
                            &key,
                            &BlobRecord {
                                size: entry.size,
                                stored: rec.stored,
                            },
                        )?;
                    }
                    fault(
                        &mut r,
                        "blob record",
                        key,
                        format!("records {} bytes, file has {}", rec.size, entry.size),
                        repair,
                    );
                }
                None => {
                    // An ingest that died between its rename and its record: valid
                    // content nothing refers to yet.
                    if repair {
                        meta.put(
                            Cf::Blobs,
                            &key,
                            &BlobRecord {
                                size: entry.size,
                                stored: now(),
                            },
                        )?;
                    }
                    r.notes.push(Fault {
                        kind: "unrecorded blob",
                        subject: key,
                        detail: "blob file has no metadata record".into(),
                        repaired: repair,
                    });
                }
            }
        }
        for (key, _) in meta.scan::<BlobRecord>(Cf::Blobs)? {
            if key.parse::<Digest>().is_ok_and(|d| !present.contains(&d)) {
                if repair {
                    meta.delete(Cf::Blobs, &key)?;
                }
                fault(
                    &mut r,
                    "missing blob",
                    key,
                    "recorded but no blob file".into(),
                    repair,
                );
            }
        }

        // Manifests and what they reference.
        let manifests: Vec<(String, ManifestRecord)> = meta.scan(Cf::Manifests)?;
        let manifest_keys: HashSet<&str> = manifests.iter().map(|(k, _)| k.as_str()).collect();
        for (key, m) in &manifests {
            r.manifests_checked += 1;
            let Ok(digest) = key.parse::<Digest>() else {
                fault(
                    &mut r,
                    "bad key",
                    key.clone(),
                    "manifest key is not a digest".into(),
                    false,
                );
                continue;
            };
            if !present.contains(&digest) {
                fault(
                    &mut r,
                    "dangling manifest",
                    key.clone(),
                    "manifest blob is missing".into(),
                    false,
                );
            }
            for d in m.config.iter().chain(&m.layers) {
                if !present.contains(d) {
                    fault(
                        &mut r,
                        "dangling reference",
                        key.clone(),
                        format!("references missing blob {d}"),
                        false,
                    );
                }
            }
            for c in &m.children {
                if !manifest_keys.contains(c.to_string().as_str()) {
                    fault(
                        &mut r,
                        "dangling reference",
                        key.clone(),
                        format!("references missing manifest {c}"),
                        false,
                    );
                }
            }
            if let Some(config) = m.config
                && present.contains(&config)
                && (m.media_type == crate::manifest::OCI_MANIFEST
                    || m.media_type == crate::manifest::DOCKER_MANIFEST)
                && self.has_image_config(&digest, &m.media_type)
            {
                let ikey = config.to_string();
                match meta.get::<ImageRecord>(Cf::Images, &ikey)? {
                    Some(img) if img.manifests.contains(&digest) => {}
                    existing => {
                        let repaired = repair && self.rebuild_image(&config, &digest, m, existing).is_ok();
                        fault(
                            &mut r,
                            "image record",
                            ikey,
                            format!("missing or not linked to manifest {digest}"),
                            repaired,
                        );
                    }
                }
            }
        }

        // Images.
        for (key, mut img) in meta.scan::<ImageRecord>(Cf::Images)? {
            if key.parse::<Digest>().is_ok_and(|d| !present.contains(&d)) {
                fault(
                    &mut r,
                    "dangling image",
                    key.clone(),
                    "image config blob is missing".into(),
                    false,
                );
            }
            let before = img.manifests.len();
            img.manifests
                .retain(|m| manifest_keys.contains(m.to_string().as_str()));
            if img.manifests.len() != before {
                if repair {
                    if img.manifests.is_empty() {
                        meta.delete(Cf::Images, &key)?;
                        if let Ok(d) = key.parse::<Digest>() {
                            self.index_remove(&d, IdKind::Image);
                        }
                    } else {
                        meta.put(Cf::Images, &key, &img)?;
                    }
                }
                fault(
                    &mut r,
                    "image record",
                    key,
                    "lists manifests that are not stored".into(),
                    repair,
                );
            }
        }

        // Tags.
        for (key, t) in meta.scan::<TagRecord>(Cf::Tags)? {
            if !manifest_keys.contains(t.manifest.to_string().as_str()) {
                fault(
                    &mut r,
                    "dangling tag",
                    key,
                    format!("points at missing manifest {}", t.manifest),
                    false,
                );
            }
        }

        // Layers: records against unpacked directories, both ways.
        let records: Vec<(String, LayerRecord)> = meta.scan(Cf::Layers)?;
        let recorded: HashSet<&str> = records.iter().map(|(k, _)| k.as_str()).collect();
        for (key, l) in &records {
            r.layers_checked += 1;
            let Ok(chain) = key.parse::<Digest>() else {
                continue;
            };
            if !self.layers().is_unpacked(&chain) {
                if repair {
                    meta.delete(Cf::Layers, key)?;
                    self.index_remove(&chain, IdKind::Layer);
                }
                fault(
                    &mut r,
                    "missing layer",
                    key.clone(),
                    "recorded but not unpacked".into(),
                    repair,
                );
            }
            if let Some(p) = l.parent
                && !recorded.contains(p.to_string().as_str())
            {
                fault(
                    &mut r,
                    "layer parent",
                    key.clone(),
                    format!("parent {p} is not recorded"),
                    false,
                );
            }
        }
        for chain in self.layers().list()? {
            if !recorded.contains(chain.to_string().as_str()) {
                // Complete (layers are renamed into place whole) but its record was never
                // written: a crash between the two. GC removes it.
                r.notes.push(Fault {
                    kind: "unrecorded layer",
                    subject: chain.to_string(),
                    detail: "unpacked but not recorded".into(),
                    repaired: false,
                });
            }
        }
        Ok(r)
    }

    fn rebuild_image(
        &self,
        config: &Digest,
        manifest: &Digest,
        m: &ManifestRecord,
        existing: Option<ImageRecord>,
    ) -> Result<(), StoreError> {
        let mut img = match existing {
            Some(img) => img,
            None => {
                let cfg = Config::parse(&self.blobs().read_small(config, MAX_MANIFEST_BYTES)?)?;
                let mut parent = None;
                for d in &cfg.diff_ids {
                    parent = Some(crate::layers::chain_id(parent.as_ref(), d));
                }
                ImageRecord {
                    created: cfg.created,
                    os: cfg.platform.os,
                    architecture: cfg.platform.architecture,
                    variant: cfg.platform.variant,
                    diff_ids: cfg.diff_ids,
                    top_layer: parent,
                    size: m
                        .layers
                        .iter()
                        .filter_map(|l| self.blobs().size(l).ok().flatten())
                        .sum(),
                    manifests: Vec::new(),
                    stored: now(),
                }
            }
        };
        img.manifests.push(*manifest);
        self.meta().put(Cf::Images, &config.to_string(), &img)?;
        self.index_insert(config, IdKind::Image);
        Ok(())
    }
}
