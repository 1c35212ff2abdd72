//! Where a store's parts are, as configuration files say it: the `[storage]` and
//! `[metadata]` tables `registry-server` reads (and `store --config` reads from the same
//! file), turned into a [`StoreConfig`].

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::store::{MetadataConfig, StorageConfig, StoreConfig};

/// `[storage]`: `backend = "filesystem"` (default) or `"s3"` with the bucket's keys.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    pub backend: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub path_style: bool,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    /// Answer blob GETs with a 307 to a presigned URL of the object.
    pub redirect: bool,
}

/// `[metadata]`: `backend = "rocksdb"` (default) or `"postgres"` with its `url`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataSection {
    pub backend: Option<String>,
    pub url: Option<String>,
}

/// The part of a `registry-server` TOML file that says where the store is; every other
/// key of the file is ignored here.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct StoreFile {
    pub root: Option<PathBuf>,
    pub storage: StorageSection,
    pub metadata: MetadataSection,
}

impl StoreFile {
    /// Reads `path` (TOML).
    pub fn read(path: &Path) -> Result<StoreFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("parse {}: {}", path.display(), e.message()))
    }
}

impl StoreConfig {
    /// The store under `root` with the backends the two tables name.
    pub fn from_sections(
        root: &Path,
        st: &StorageSection,
        md: &MetadataSection,
    ) -> Result<StoreConfig, String> {
        let metadata = match md.backend.as_deref().unwrap_or("rocksdb") {
            "rocksdb" => MetadataConfig::Rocksdb,
            #[cfg(feature = "scale-out")]
            "postgres" => MetadataConfig::Postgres {
                url: md.url.clone().ok_or("metadata.url is required for postgres")?,
            },
            other => {
                return Err(format!(
                    "metadata.backend must be \"rocksdb\" or \"postgres\", not {other:?}"
                ));
            }
        };
        let storage = match st.backend.as_deref().unwrap_or("filesystem") {
            "filesystem" => StorageConfig::Filesystem,
            #[cfg(feature = "scale-out")]
            "s3" => StorageConfig::S3(crate::content::S3Config {
                endpoint: st.endpoint.clone(),
                region: st.region.clone(),
                bucket: st.bucket.clone().ok_or("storage.bucket is required for s3")?,
                prefix: st.prefix.clone().unwrap_or_default(),
                path_style: st.path_style,
                access_key: st.access_key.clone(),
                secret_key: st.secret_key.clone(),
            }),
            other => {
                return Err(format!(
                    "storage.backend must be \"filesystem\" or \"s3\", not {other:?}"
                ));
            }
        };
        Ok(StoreConfig {
            root: root.to_path_buf(),
            metadata,
            storage,
        })
    }
}
