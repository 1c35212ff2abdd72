//! `runner commit`: a container's changes become a new image. The overlay's upper
//! directory is written as one more layer — an uncompressed tar, with overlayfs
//! whiteouts (0/0 character devices, `trusted.overlay.opaque` directories) turned into
//! OCI ones (`.wh.<name>`, `.wh..wh..opq`) — on top of the image's layers; the config
//! gets its diff ID and a history entry; the manifest keeps the image's media types. All
//! of it goes into the store through its verified ingest, and `REF` is tagged.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use strata_store::{Digest, ImageRef, Store, StoreError};

use crate::container::Container;

/// Errors committing a container.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid reference {0:?}: {1}")]
    Reference(String, String),
    #[error("the image {0} is no longer in the store")]
    NoImage(String),
    #[error("bad image metadata: {0}")]
    Metadata(String),
    #[error("write the layer: {0}")]
    Layer(#[source] io::Error),
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
const MAX_METADATA: u64 = 4 << 20;

/// What a commit made.
#[derive(Debug, Clone)]
pub struct CommitReport {
    pub manifest: Digest,
    pub image_id: Digest,
    pub layer: Digest,
    pub layer_size: u64,
}

/// Commits container `c` (its directory `dir`) as `reference`.
pub fn commit(
    store: &Store,
    c: &Container,
    dir: &Path,
    reference: &str,
) -> Result<CommitReport, CommitError> {
    let reference =
        ImageRef::parse(reference).map_err(|e| CommitError::Reference(reference.into(), e.to_string()))?;
    let image_id: Digest = c
        .image_id
        .parse()
        .map_err(|e| CommitError::Metadata(format!("image id: {e}")))?;
    let image = store
        .get_image(&image_id)?
        .ok_or_else(|| CommitError::NoImage(c.image_id.clone()))?;
    let parent_manifest = *image
        .manifests
        .first()
        .ok_or_else(|| CommitError::NoImage(c.image_id.clone()))?;
    let json = |d: &Digest| -> Result<serde_json::Value, CommitError> {
        let bytes = store
            .blobs()
            .read_small(d, MAX_METADATA)
            .map_err(StoreError::from)?;
        serde_json::from_slice(&bytes).map_err(|e| CommitError::Metadata(format!("{d}: {e}")))
    };
    let mut manifest = json(&parent_manifest)?;
    let mut config = json(&image_id)?;

    // The layer: the upper directory as a tar, hashed as it is staged.
    let upper = dir.join("upper");
    let (reader, mut writer) = io::pipe().map_err(CommitError::Layer)?;
    let (staged, written) = std::thread::scope(|s| {
        let writing = s.spawn(move || {
            let r = write_layer(&upper, &mut writer);
            drop(writer);
            r
        });
        let staged = store.blobs().stage(reader, None);
        (
            staged,
            writing.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
        )
    });
    written.map_err(CommitError::Layer)?;
    let mut staged = staged.map_err(StoreError::from)?;
    let layer = store
        .blobs()
        .commit_staged(&mut staged)
        .map_err(StoreError::from)?;
    store.record_blob(&layer.digest, layer.size)?;

    // The config: one more diff ID (the tar is uncompressed: its digest) and history.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    config["created"] = now.clone().into();
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .ok_or_else(|| CommitError::Metadata("config without rootfs.diff_ids".into()))?
        .push(layer.digest.to_string().into());
    let entry = serde_json::json!({"created": now, "created_by": format!("runner commit {}", &c.id[..12])});
    match config["history"].as_array_mut() {
        Some(h) => h.push(entry),
        None => config["history"] = serde_json::json!([entry]),
    }
    let config_bytes = serde_json::to_vec(&config).map_err(|e| CommitError::Metadata(e.to_string()))?;
    let config_blob = store.blobs().put_bytes(&config_bytes).map_err(StoreError::from)?;
    store.record_blob(&config_blob.digest, config_blob.size)?;

    // The manifest, in the image's own family (OCI or Docker schema 2).
    let media_type = manifest["mediaType"].as_str().unwrap_or(OCI_MANIFEST).to_string();
    let layer_type = if media_type.contains("docker") {
        DOCKER_LAYER
    } else {
        OCI_LAYER
    };
    manifest["config"]["digest"] = config_blob.digest.to_string().into();
    manifest["config"]["size"] = config_blob.size.into();
    manifest["layers"]
        .as_array_mut()
        .ok_or_else(|| CommitError::Metadata("manifest without layers".into()))?
        .push(serde_json::json!({
            "mediaType": layer_type,
            "digest": layer.digest.to_string(),
            "size": layer.size,
        }));
    if let Some(m) = manifest.as_object_mut() {
        m.remove("annotations");
    }
    let manifest_bytes =
        serde_json::to_vec_pretty(&manifest).map_err(|e| CommitError::Metadata(e.to_string()))?;
    let (manifest_digest, _) = store.add_manifest(&manifest_bytes, Some(&media_type), None)?;
    store.tag(&reference, &manifest_digest)?;
    Ok(CommitReport {
        manifest: manifest_digest,
        image_id: config_blob.digest,
        layer: layer.digest,
        layer_size: layer.size,
    })
}

/// Writes `upper` as an OCI layer tar: entries in sorted order, ownership, modes and
/// times as they are, hard links as links, overlayfs whiteouts as OCI whiteouts.
fn write_layer(upper: &Path, out: &mut impl Write) -> io::Result<()> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let mut seen: HashMap<(u64, u64), std::path::PathBuf> = HashMap::new();
    for entry in walkdir::WalkDir::new(upper).min_depth(1).sort_by_file_name() {
        let entry = entry.map_err(io::Error::other)?;
        let rel = entry
            .path()
            .strip_prefix(upper)
            .map_err(io::Error::other)?
            .to_path_buf();
        let meta = entry.path().symlink_metadata()?;
        let ft = meta.file_type();
        if ft.is_char_device() && meta.rdev() == 0 {
            // An overlayfs whiteout: the lower file is deleted.
            let name = rel.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let wh = rel.with_file_name(format!(".wh.{name}"));
            append_empty(&mut tar, &wh, &meta)?;
            continue;
        }
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        if ft.is_file() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = seen.get(&key) {
                header.set_entry_type(tar::EntryType::Link);
                header.set_size(0);
                tar.append_link(&mut header, &rel, first)?;
                continue;
            }
            seen.insert(key, rel.clone());
        }
        if ft.is_symlink() {
            let target = std::fs::read_link(entry.path())?;
            tar.append_link(&mut header, &rel, target)?;
        } else if ft.is_file() {
            let file = std::fs::File::open(entry.path())?;
            tar.append_data(&mut header, &rel, file)?;
        } else if ft.is_dir() {
            tar.append_data(&mut header, &rel, io::empty())?;
            let opaque = xattr::get(entry.path(), "trusted.overlay.opaque").ok().flatten();
            if opaque.as_deref() == Some(b"y") {
                // Everything below in lower layers is hidden.
                append_empty(&mut tar, &rel.join(".wh..wh..opq"), &meta)?;
            }
        } else {
            // Devices, FIFOs: as the kernel describes them.
            tar.append_data(&mut header, &rel, io::empty())?;
        }
    }
    tar.into_inner()?.flush()
}

/// An empty regular file entry (a whiteout marker), owned and timed like `meta`.
fn append_empty<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &Path,
    meta: &std::fs::Metadata,
) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(meta.mtime().max(0) as u64);
    tar.append_data(&mut h, path, io::empty())
}
