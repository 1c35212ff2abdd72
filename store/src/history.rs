//! `store history`: an image's build steps (its config's `history`), newest first, each matched to the layer it made.

use serde::Deserialize;

use crate::blobs::BlobError;
use crate::diff_size::DiffSize;
use crate::digest::Digest;
use crate::layers::chain_id;
use crate::meta::{Cf, LayerRecord};
use crate::store::{Store, StoreError, io_err};

/// What `history` reads of an image config at most.
const MAX_CONFIG: u64 = 16 << 20;

/// The ID docker shows for a step that is not itself a local image.
pub const MISSING_ID: &str = "<missing>";

/// One row of `store history`: a step of the image's build, as `docker history` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HistoryEntry {
    /// The image ID (`sha256:…`) on the newest step, [`MISSING_ID`] on the others.
    pub id: String,
    /// When the step ran (RFC 3339, as written in the config), if recorded.
    pub created: Option<String>,
    /// The instruction that made the step, e.g. `RUN apk add curl`.
    pub created_by: String,
    /// Bytes the step's layer adds, as `docker history` counts them (regular files and
    /// symlink targets, each inode once); 0 for steps without a layer.
    pub size: u64,
    pub comment: String,
    /// True for steps that changed only the config (no layer).
    pub empty_layer: bool,
}

#[derive(Deserialize)]
struct ConfigHistory {
    #[serde(default)]
    history: Option<Vec<Step>>,
}

#[derive(Deserialize)]
struct Step {
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    created_by: Option<String>,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    empty_layer: Option<bool>,
}

impl Store {
    /// The build history of the image `s` names (a reference, digest or unique ID
    /// prefix, as for [`Store::inspect`]), newest step first. Steps with `empty_layer`
    /// have no layer; the others take the image's layers in order from the bottom. An
    /// image whose config has no history gets one step per layer, with no `created_by`.
    pub fn history(&self, s: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let id = self
            .resolve(s)?
            .image
            .ok_or_else(|| StoreError::NoSuchImage(s.to_string()))?;
        let image = self
            .get_image(&id)?
            .ok_or_else(|| StoreError::NoSuchImage(s.to_string()))?;
        let config = self.blobs().read_small(&id, MAX_CONFIG)?;
        let config: ConfigHistory = serde_json::from_slice(&config).map_err(|e| StoreError::BadConfig {
            image: id,
            message: format!("history: {e}"),
        })?;
        // The manifest's layer blobs, for sizes of layers the store has not unpacked.
        let mut blobs: Vec<Digest> = Vec::new();
        for m in &image.manifests {
            if let Some(record) = self.get_manifest(m)?
                && record.layers.len() == image.diff_ids.len()
            {
                blobs = record.layers;
                break;
            }
        }
        let mut sizes = Vec::with_capacity(image.diff_ids.len());
        let mut parent: Option<Digest> = None;
        for (i, diff_id) in image.diff_ids.iter().enumerate() {
            let chain = chain_id(parent.as_ref(), diff_id);
            sizes.push(self.layer_size(&chain, blobs.get(i))?);
            parent = Some(chain);
        }
        let steps = config.history.unwrap_or_default();
        let steps = if steps.is_empty() {
            sizes
                .iter()
                .map(|_| Step {
                    created: image.created.clone(),
                    created_by: None,
                    comment: None,
                    empty_layer: None,
                })
                .collect()
        } else {
            steps
        };
        let mut layers = sizes.into_iter();
        let mut out: Vec<HistoryEntry> = steps
            .into_iter()
            .map(|step| {
                let empty_layer = step.empty_layer.unwrap_or(false);
                let size = if empty_layer {
                    0
                } else {
                    layers.next().unwrap_or(0)
                };
                HistoryEntry {
                    id: MISSING_ID.to_string(),
                    created: step.created,
                    created_by: step.created_by.unwrap_or_default(),
                    size,
                    comment: step.comment.unwrap_or_default(),
                    empty_layer,
                }
            })
            .collect();
        out.reverse();
        if let Some(top) = out.first_mut() {
            top.id = id.to_string();
        }
        Ok(out)
    }

    /// A layer's size as `docker history` shows it ([`DiffSize`]): counted when the layer
    /// was unpacked, else read from its blob (a layer made by `runner commit` or `runner
    /// build` and not unpacked yet); 0 when neither is in the store.
    fn layer_size(&self, chain: &Digest, blob: Option<&Digest>) -> Result<u64, StoreError> {
        let record = self.meta().get::<LayerRecord>(Cf::Layers, &chain.to_string())?;
        if let Some(size) = record.as_ref().and_then(|l| l.diff_size) {
            return Ok(size);
        }
        if let Ok(Some(report)) = self.layers().report(chain)
            && let Some(size) = report.diff_size
        {
            return Ok(size);
        }
        let Some(blob) = blob.or(record.as_ref().and_then(|l| l.blob.as_ref())) else {
            return Ok(0);
        };
        let file = match self.blobs().open_blob(blob) {
            Ok(f) => f,
            Err(BlobError::NotFound(_)) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        DiffSize::of_layer(file).map_err(io_err(format!("read layer {blob}")))
    }
}

#[cfg(test)]
mod tests {
    use strata_fixtures as fx;

    use super::*;
    use crate::archive::{LoadOptions, load};

    /// A store holding `image`, tagged `name`, loaded from a docker-save archive.
    fn store_with(image: &fx::Image, name: &str) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s")).unwrap();
        let path = dir.path().join("image.tar");
        fx::write_docker_save(&path, &[(image, &[name][..])]);
        load(&store, &path, &LoadOptions::default()).unwrap();
        (dir, store)
    }

    fn fixture_history(image: &fx::Image) -> Vec<serde_json::Value> {
        let config: serde_json::Value = serde_json::from_slice(&image.config.bytes).unwrap();
        let mut h = config["history"].as_array().unwrap().clone();
        h.reverse();
        h
    }

    #[test]
    fn busybox_history_is_newest_first_and_matched_to_layers() {
        let image = fx::busybox(fx::Flavor::Oci, fx::LayerCompression::Gzip);
        let (_dir, store) = store_with(&image, "busybox:hist");
        let rows = store.history("busybox:hist").unwrap();
        let want = fixture_history(&image);
        assert_eq!(rows.len(), want.len());
        assert!(want.iter().any(|w| w["empty_layer"] == true));
        for (row, w) in rows.iter().zip(&want) {
            assert_eq!(row.created_by, w["created_by"].as_str().unwrap());
            assert_eq!(row.created.as_deref(), w["created"].as_str());
            assert_eq!(row.empty_layer, w["empty_layer"] == true);
            assert_eq!(row.comment, "");
        }
        assert_eq!(rows[0].id, image.id());
        assert!(rows[1..].iter().all(|r| r.id == MISSING_ID));

        // Layers from the bottom: the non-empty steps, oldest first, are layers 0, 1, 2.
        let id: Digest = image.id().parse().unwrap();
        let record = store.get_image(&id).unwrap().unwrap();
        let manifest = store.get_manifest(&record.manifests[0]).unwrap().unwrap();
        let mut parent = None;
        let mut expected = Vec::new();
        for (diff_id, blob) in record.diff_ids.iter().zip(&manifest.layers) {
            let chain = chain_id(parent.as_ref(), diff_id);
            expected.push(store.layer_size(&chain, Some(blob)).unwrap());
            parent = Some(chain);
        }
        let sized: Vec<u64> = rows
            .iter()
            .rev()
            .filter(|r| !r.empty_layer)
            .map(|r| r.size)
            .collect();
        assert_eq!(sized, expected);
        assert!(sized.iter().all(|&s| s > 0));
        assert!(rows.iter().filter(|r| r.empty_layer).all(|r| r.size == 0));

        // The same answer by ID prefix and by full ID.
        let hex = id.hex();
        assert_eq!(store.history(&hex[..12]).unwrap(), rows);
        assert_eq!(store.history(&image.id()).unwrap(), rows);
    }

    #[test]
    fn unknown_image_is_an_error() {
        let image = fx::small_image(7, 1, false);
        let (_dir, store) = store_with(&image, "small:v1");
        let err = store.history("nosuch:tag").unwrap_err();
        assert!(err.to_string().starts_with("no such image"), "{err}");
        assert_eq!(store.history("small:v1").unwrap().len(), 1);
    }
}
