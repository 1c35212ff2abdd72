//! What the registry server needs from the store: per-repository tags, blob links and
//! manifest deletion, the referrers index, the catalog, and upload-session records.
//!
//! Tags pushed through a registry are stored under the ordinary tag keys
//! (`<registry-name>/<repository>:<tag>`), so `store ls` and `runner` see them. Referrers
//! are indexed in the `meta` family under `referrer/<repository>@<subject>/<digest>`,
//! so listing them is a prefix scan, never a scan of every manifest.

use std::collections::BTreeMap;

use crate::digest::Digest;
use crate::index::IdKind;
use crate::meta::{Cf, ImageRecord, TagRecord, repo_link_key};
use crate::store::{Store, StoreError, now};

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A registry upload session. With the embedded store its data is the ingest
/// `upload-<id>`; with a shared blob backend `state` says where the upload is, so any
/// replica can take the next chunk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UploadRecord {
    pub repository: String,
    /// Unix seconds.
    pub started: i64,
    /// Unix seconds of the last chunk.
    pub updated: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<crate::content::UploadState>,
    /// A request is writing the upload until this Unix second (shared uploads: one request
    /// at a time, whichever replica it reached).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub busy_until: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// A manifest that names another as its `subject`, as the referrers API lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Referrer {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(rename = "artifactType", default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The store key of a registry tag: `<registry>/<repository>:<tag>`.
pub fn repo_tag_key(registry: &str, repository: &str, tag: &str) -> String {
    format!("{registry}/{repository}:{tag}")
}

fn referrer_prefix(repository: &str, subject: &Digest) -> String {
    format!("referrer/{repository}@{subject}/")
}

impl Store {
    /// Points `<registry>/<repository>:<tag>` at a stored manifest.
    pub fn set_repo_tag(&self, registry: &str, repository: &str, tag: &str, manifest: &Digest) -> Result<()> {
        self.put_tag(&repo_tag_key(registry, repository, tag), manifest)
    }

    pub fn repo_tag(&self, registry: &str, repository: &str, tag: &str) -> Result<Option<TagRecord>> {
        Ok(self
            .meta()
            .get(Cf::Tags, &repo_tag_key(registry, repository, tag))?)
    }

    /// The tags of a repository, sorted.
    pub fn repo_tags(&self, registry: &str, repository: &str) -> Result<Vec<String>> {
        let prefix = repo_tag_key(registry, repository, "");
        Ok(self
            .meta()
            .keys(Cf::Tags, &prefix)?
            .into_iter()
            .filter_map(|k| {
                k.strip_prefix(&prefix)
                    .filter(|t| !t.contains('/'))
                    .map(str::to_string)
            })
            .collect())
    }

    /// Removes a tag; false when there was none.
    pub fn delete_repo_tag(&self, registry: &str, repository: &str, tag: &str) -> Result<bool> {
        let key = repo_tag_key(registry, repository, tag);
        if !self.meta().contains(Cf::Tags, &key)? {
            return Ok(false);
        }
        self.meta().delete(Cf::Tags, &key)?;
        Ok(true)
    }

    /// Removes a blob's link from a repository; false when it was not linked.
    pub fn unlink(&self, repository: &str, digest: &Digest) -> Result<bool> {
        let key = repo_link_key(repository, digest);
        if !self.meta().contains(Cf::RepoLinks, &key)? {
            return Ok(false);
        }
        self.meta().delete(Cf::RepoLinks, &key)?;
        Ok(true)
    }

    /// Whether any blob or manifest is linked into `repository`.
    pub fn repo_exists(&self, repository: &str) -> Result<bool> {
        Ok(!self
            .meta()
            .keys(Cf::RepoLinks, &format!("{repository}@"))?
            .is_empty())
    }

    /// Every repository with linked content, sorted.
    pub fn repositories(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        for key in self.meta().keys(Cf::RepoLinks, "")? {
            if let Some((repo, _)) = key.rsplit_once('@')
                && out.last().is_none_or(|l| l != repo)
            {
                out.push(repo.to_string());
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Records that `referrer` (linked into `repository`) names `subject`.
    pub fn add_referrer(&self, repository: &str, subject: &Digest, referrer: &Referrer) -> Result<()> {
        let key = format!("{}{}", referrer_prefix(repository, subject), referrer.digest);
        self.meta().put(Cf::Meta, &key, referrer)?;
        Ok(())
    }

    /// The manifests of `repository` whose subject is `subject`, by digest.
    pub fn referrers(&self, repository: &str, subject: &Digest) -> Result<Vec<Referrer>> {
        Ok(self
            .meta()
            .scan_prefix::<Referrer>(Cf::Meta, &referrer_prefix(repository, subject))?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    /// Deletes a manifest from a repository: its link, the repository's tags that point
    /// at it and its referrer entry. When no repository links it and no tag names it any
    /// more, the manifest record goes too (its image record drops it), so the next GC
    /// can reclaim its content. False when the repository did not have it.
    pub fn delete_repo_manifest(&self, registry: &str, repository: &str, digest: &Digest) -> Result<bool> {
        let link = repo_link_key(repository, digest);
        if !self.meta().contains(Cf::RepoLinks, &link)? {
            return Ok(false);
        }
        let record = self.get_manifest(digest)?;
        let mut batch = self.meta().batch();
        batch.delete(Cf::RepoLinks, &link);
        let prefix = repo_tag_key(registry, repository, "");
        for (key, tag) in self.meta().scan_prefix::<TagRecord>(Cf::Tags, &prefix)? {
            if tag.manifest == *digest {
                batch.delete(Cf::Tags, &key);
            }
        }
        if let Some(subject) = record.as_ref().and_then(|r| r.subject) {
            batch.delete(
                Cf::Meta,
                &format!("{}{digest}", referrer_prefix(repository, &subject)),
            );
        }
        self.meta().write(batch)?;

        // Still reachable elsewhere?
        let suffix = format!("@{digest}");
        let linked_elsewhere = self
            .meta()
            .keys(Cf::RepoLinks, "")?
            .iter()
            .any(|k| k.ends_with(&suffix));
        let tagged = self
            .meta()
            .scan::<TagRecord>(Cf::Tags)?
            .iter()
            .any(|(_, t)| t.manifest == *digest);
        if linked_elsewhere || tagged {
            return Ok(true);
        }
        let Some(record) = record else { return Ok(true) };
        let mut batch = self.meta().batch();
        batch.delete(Cf::Manifests, &digest.to_string());
        let mut image_gone = None;
        if let Some(config) = record.config
            && let Some(mut image) = self.meta().get::<ImageRecord>(Cf::Images, &config.to_string())?
        {
            image.manifests.retain(|m| m != digest);
            if image.manifests.is_empty() {
                batch.delete(Cf::Images, &config.to_string());
                image_gone = Some(config);
            } else {
                batch.put(Cf::Images, &config.to_string(), &image);
            }
        }
        self.meta().write(batch)?;
        self.index_remove(digest, IdKind::Manifest);
        if let Some(id) = image_gone {
            self.index_remove(&id, IdKind::Image);
        }
        Ok(true)
    }

    pub fn put_upload(&self, id: &str, record: &UploadRecord) -> Result<()> {
        self.meta().put(Cf::Uploads, id, record)?;
        Ok(())
    }

    pub fn get_upload(&self, id: &str) -> Result<Option<UploadRecord>> {
        Ok(self.meta().get(Cf::Uploads, id)?)
    }

    pub fn delete_upload(&self, id: &str) -> Result<()> {
        self.meta().delete(Cf::Uploads, id)?;
        Ok(())
    }

    /// An upload record as stored (for [`Store::swap_upload`]).
    pub fn get_upload_raw(&self, id: &str) -> Result<Option<(UploadRecord, Vec<u8>)>> {
        let Some(raw) = self.meta().get_raw(Cf::Uploads, id)? else {
            return Ok(None);
        };
        let record = serde_json::from_slice(&raw).map_err(|source| crate::meta::MetaError::Corrupt {
            cf: Cf::Uploads.name(),
            key: id.to_string(),
            source,
        })?;
        Ok(Some((record, raw)))
    }

    /// Replaces (or with `None` deletes) an upload record only if it is still `expected`,
    /// atomically across every process sharing the metadata. Returns the stored bytes of
    /// the new record, or `None` when another request changed it first.
    pub fn swap_upload(
        &self,
        id: &str,
        expected: &[u8],
        new: Option<&UploadRecord>,
    ) -> Result<Option<Vec<u8>>> {
        let bytes = new.map(|r| serde_json::to_vec(r).expect("upload record serialises"));
        let swapped =
            self.meta()
                .engine()
                .compare_and_swap(Cf::Uploads, id, Some(expected), bytes.clone())?;
        Ok(swapped.then(|| bytes.unwrap_or_default()))
    }

    /// Every upload session on record.
    pub fn uploads(&self) -> Result<Vec<(String, UploadRecord)>> {
        Ok(self.meta().scan(Cf::Uploads)?)
    }
}

impl Store {
    /// Records a blob an upload committed and links it into `repository`, atomically.
    pub fn record_uploaded_blob(&self, repository: &str, digest: &Digest, size: u64) -> Result<()> {
        self.protect_linked(digest);
        let mut batch = self.meta().batch();
        let key = digest.to_string();
        if !self.meta().contains(Cf::Blobs, &key)? {
            batch.put(Cf::Blobs, &key, &crate::meta::BlobRecord { size, stored: now() });
        }
        batch.put(Cf::RepoLinks, &repo_link_key(repository, digest), &());
        self.meta().write(batch)?;
        Ok(())
    }
}

/// A claim on a piece of work shared by several processes (e.g. one upstream download per
/// digest across registry replicas): held by `holder` until `expires` (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Claim {
    holder: String,
    expires: i64,
}

impl Store {
    /// Takes (or renews) the claim `key` for `holder` for `ttl` seconds, atomically across
    /// every process sharing the metadata. False while another holder's claim is live.
    pub fn claim(&self, key: &str, holder: &str, ttl: i64) -> Result<bool> {
        let engine = self.meta().engine();
        let current = engine.get(Cf::Meta, &format!("claim/{key}"))?;
        if let Some(raw) = &current
            && let Ok(c) = serde_json::from_slice::<Claim>(raw)
            && c.holder != holder
            && c.expires > now()
        {
            return Ok(false);
        }
        let new = serde_json::to_vec(&Claim {
            holder: holder.to_string(),
            expires: now() + ttl,
        })
        .expect("claim serialises");
        Ok(engine.compare_and_swap(Cf::Meta, &format!("claim/{key}"), current.as_deref(), Some(new))?)
    }

    /// Lets a claim go (if `holder` still has it).
    pub fn release_claim(&self, key: &str, holder: &str) -> Result<()> {
        let engine = self.meta().engine();
        let k = format!("claim/{key}");
        if let Some(raw) = engine.get(Cf::Meta, &k)?
            && serde_json::from_slice::<Claim>(&raw).is_ok_and(|c| c.holder == holder)
        {
            engine.compare_and_swap(Cf::Meta, &k, Some(&raw), None)?;
        }
        Ok(())
    }
}
