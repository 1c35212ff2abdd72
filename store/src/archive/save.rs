//! `save`: writes images from the store as one tar that is both a docker-save archive
//! (`manifest.json`, `repositories`) and an OCI image layout (`oci-layout`,
//! `index.json`, `blobs/sha256/…`), blobs streamed from the store, each written once.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;

use serde_json::json;

use super::{ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, ArchiveError, DockerSaveEntry};
use crate::digest::Digest;
use crate::manifest::{self, MAX_MANIFEST_BYTES, Manifest, Platform};
use crate::reference::ImageRef;
use crate::store::{Store, StoreError};

type Result<T, E = ArchiveError> = std::result::Result<T, E>;

/// What a save wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SaveReport {
    pub images: usize,
    pub blobs: usize,
    pub bytes: u64,
}

struct Image {
    /// The manifest as written to the archive (OCI media types).
    manifest: Vec<u8>,
    config: Digest,
    layers: Vec<Digest>,
    names: Vec<ImageRef>,
}

/// Writes the images `refs` name (references or ID prefixes) to `out` as a tar.
pub fn save(store: &Store, refs: &[String], out: impl Write) -> Result<SaveReport> {
    let host = Platform::host();
    let mut images: Vec<Image> = Vec::new();
    for r in refs {
        let resolved = store.resolve(r)?;
        let name = resolved.tag.as_deref().and_then(|t| ImageRef::parse(t).ok());
        let no_image = || StoreError::NoSuchImage(r.clone());
        let first_manifest_of = |id: &Digest| -> Result<Digest> {
            let image = store.get_image(id)?.ok_or_else(no_image)?;
            Ok(*image.manifests.first().ok_or_else(no_image)?)
        };
        let manifest_digest = match (resolved.manifest, resolved.image) {
            // An image manifest is saved as named; for an index, the platform's image.
            (Some(m), Some(id)) => {
                let rec = store.get_manifest(&m)?.ok_or_else(no_image)?;
                if rec.config.is_some() {
                    m
                } else {
                    first_manifest_of(&id)?
                }
            }
            (None, Some(id)) => first_manifest_of(&id)?,
            _ => return Err(StoreError::NoSuchImage(format!("{r} (no image for {host})")).into()),
        };
        let bytes = store.blobs().read_small(&manifest_digest, MAX_MANIFEST_BYTES)?;
        let parsed = Manifest::parse(&bytes, None).map_err(StoreError::from)?;
        let Manifest::Image { config, layers, .. } = &parsed else {
            return Err(StoreError::NoSuchImage(format!("{r} is not an image")).into());
        };
        if let Some(existing) = images.iter_mut().find(|i| i.config == config.digest) {
            existing.names.extend(name);
            continue;
        }
        images.push(Image {
            manifest: as_oci_manifest(&bytes, parsed.media_type())?,
            config: config.digest,
            layers: layers.iter().map(|l| l.digest).collect(),
            names: name.into_iter().collect(),
        });
    }

    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Deterministic);
    let mut report = SaveReport {
        images: images.len(),
        ..SaveReport::default()
    };
    let mut written: HashSet<Digest> = HashSet::new();
    append_dir(&mut tar, "blobs/")?;
    append_dir(&mut tar, "blobs/sha256/")?;
    for image in &images {
        for d in std::iter::once(&image.config).chain(&image.layers) {
            if written.insert(*d) {
                let file = store.blobs().open_blob(d)?;
                let size = file.metadata().map_err(ArchiveError::io("stat blob"))?.len();
                append_file(&mut tar, &format!("blobs/sha256/{}", d.hex()), size, file)?;
                report.blobs += 1;
                report.bytes += size;
            }
        }
        let md = Digest::of(&image.manifest);
        if written.insert(md) {
            append_bytes(&mut tar, &format!("blobs/sha256/{}", md.hex()), &image.manifest)?;
            report.blobs += 1;
        }
    }

    // OCI index: one entry per name (or one unnamed entry), like docker and containerd.
    let mut index_entries = Vec::new();
    let mut docker_entries = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for image in &images {
        let md = Digest::of(&image.manifest);
        let descriptor = |annotations: Option<serde_json::Value>| {
            let mut d = json!({"mediaType": manifest::OCI_MANIFEST, "digest": md.to_string(), "size": image.manifest.len()});
            if let Some(a) = annotations {
                d["annotations"] = a;
            }
            d
        };
        if image.names.is_empty() {
            index_entries.push(descriptor(None));
        }
        let mut repo_tags = Vec::new();
        for n in &image.names {
            let tag = n.tag.clone().unwrap_or_else(|| "latest".into());
            index_entries.push(descriptor(Some(json!({
                ANNOTATION_IMAGE_NAME: n.to_string(),
                ANNOTATION_REF_NAME: tag,
            }))));
            repo_tags.push(format!("{}:{tag}", n.familiar_name()));
            if let Some(top) = image.layers.last() {
                repositories
                    .entry(n.familiar_name())
                    .or_default()
                    .insert(tag, top.hex());
            }
        }
        docker_entries.push(DockerSaveEntry {
            config: format!("blobs/sha256/{}", image.config.hex()),
            repo_tags: Some(repo_tags),
            layers: image
                .layers
                .iter()
                .map(|l| format!("blobs/sha256/{}", l.hex()))
                .collect(),
        });
    }
    let index = json!({"schemaVersion": 2, "mediaType": manifest::OCI_INDEX, "manifests": index_entries});
    append_bytes(&mut tar, "index.json", &to_json(&index)?)?;
    append_bytes(&mut tar, "manifest.json", &to_json(&docker_entries)?)?;
    append_bytes(&mut tar, "repositories", &to_json(&repositories)?)?;
    append_bytes(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut out = tar.into_inner().map_err(ArchiveError::io("finish archive"))?;
    out.flush().map_err(ArchiveError::io("write archive"))?;
    Ok(report)
}

/// Rewrites a Docker schema2 manifest with OCI media types (umoci and OCI tools need
/// them); OCI manifests pass through byte for byte.
fn as_oci_manifest(bytes: &[u8], media_type: &str) -> Result<Vec<u8>> {
    if media_type == manifest::OCI_MANIFEST {
        return Ok(bytes.to_vec());
    }
    let mut doc: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| ArchiveError::Malformed {
        file: "manifest".into(),
        detail: e.to_string(),
    })?;
    doc["mediaType"] = manifest::OCI_MANIFEST.into();
    doc["config"]["mediaType"] = manifest::OCI_CONFIG.into();
    if let Some(layers) = doc["layers"].as_array_mut() {
        for l in layers {
            let mt = match l["mediaType"].as_str() {
                Some(manifest::DOCKER_LAYER_GZIP) => manifest::OCI_LAYER_GZIP,
                Some("application/vnd.docker.image.rootfs.diff.tar") => manifest::OCI_LAYER_TAR,
                Some(other) => other,
                None => manifest::OCI_LAYER_GZIP,
            }
            .to_string();
            l["mediaType"] = mt.into();
        }
    }
    to_json(&doc)
}

fn to_json(v: &impl serde::Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| ArchiveError::Malformed {
        file: "archive metadata".into(),
        detail: e.to_string(),
    })
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn append_dir(tar: &mut tar::Builder<impl Write>, path: &str) -> Result<()> {
    let mut h = header(tar::EntryType::Directory, 0, 0o755);
    tar.append_data(&mut h, path, std::io::empty())
        .map_err(ArchiveError::io("write archive"))
}

fn append_bytes(tar: &mut tar::Builder<impl Write>, path: &str, bytes: &[u8]) -> Result<()> {
    append_file(tar, path, bytes.len() as u64, bytes)
}

fn append_file(
    tar: &mut tar::Builder<impl Write>,
    path: &str,
    size: u64,
    data: impl std::io::Read,
) -> Result<()> {
    let mut h = header(tar::EntryType::Regular, size, 0o644);
    tar.append_data(&mut h, path, data)
        .map_err(ArchiveError::io(format!("write {path}")))
}
