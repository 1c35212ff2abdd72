//! Manifest and config parsing: OCI image manifest and index, Docker schema2 manifest and
//! manifest list, image configs (via `oci-spec`), and what each references.

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};

use crate::digest::{Digest, DigestError};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The largest manifest or config the store parses (the registry's limit too).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// Errors from parsing manifests and configs.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("malformed manifest: {0}")]
    Malformed(String),
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("malformed image config: {0}")]
    MalformedConfig(String),
    #[error("bad digest in manifest: {0}")]
    Digest(#[from] DigestError),
    #[error("manifest is larger than {MAX_MANIFEST_BYTES} bytes")]
    TooLarge,
}

type Result<T, E = ManifestError> = std::result::Result<T, E>;

/// What a descriptor points at, reduced to what the store needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ref {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub platform: Option<Platform>,
}

/// `os/architecture[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of this machine, in OCI/Go names.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Option<Platform> {
        let mut parts = s.split('/');
        let os = parts.next().filter(|p| !p.is_empty())?;
        let architecture = parts.next().filter(|p| !p.is_empty())?;
        let variant = parts.next().map(str::to_string);
        if parts.next().is_some() {
            return None;
        }
        Some(Platform {
            os: os.into(),
            architecture: architecture.into(),
            variant,
        })
    }

    /// Whether a manifest for `self` satisfies a request for `want` (a missing variant
    /// in the request matches any variant).
    pub fn satisfies(&self, want: &Platform) -> bool {
        self.os == want.os
            && self.architecture == want.architecture
            && (want.variant.is_none() || self.variant == want.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A parsed manifest.
#[derive(Debug, Clone)]
pub enum Manifest {
    Image {
        media_type: String,
        config: Ref,
        layers: Vec<Ref>,
        subject: Option<Ref>,
        artifact_type: Option<String>,
    },
    Index {
        media_type: String,
        manifests: Vec<Ref>,
        subject: Option<Ref>,
        artifact_type: Option<String>,
    },
}

impl Manifest {
    /// Parses manifest bytes. The media type comes from the document's `mediaType`
    /// field, else from `hint` (e.g. an HTTP `Content-Type`), else from its shape.
    pub fn parse(bytes: &[u8], hint: Option<&str>) -> Result<Manifest> {
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge);
        }
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        let obj = value
            .as_object()
            .ok_or_else(|| ManifestError::Malformed("not a JSON object".into()))?;
        if obj.get("schemaVersion").and_then(|v| v.as_u64()) != Some(2) {
            return Err(ManifestError::Malformed("schemaVersion must be 2".into()));
        }
        let declared = obj.get("mediaType").and_then(|v| v.as_str());
        if let (Some(d), Some(h)) = (declared, hint)
            && d != h
            && is_manifest_media_type(h)
        {
            return Err(ManifestError::Malformed(format!(
                "mediaType {d:?} does not match content type {h:?}"
            )));
        }
        let media_type = match declared.or(hint) {
            Some(m) => m.to_string(),
            None if obj.contains_key("manifests") => OCI_INDEX.to_string(),
            None => OCI_MANIFEST.to_string(),
        };
        match media_type.as_str() {
            OCI_MANIFEST | DOCKER_MANIFEST => {
                let m =
                    ImageManifest::from_reader(bytes).map_err(|e| ManifestError::Malformed(e.to_string()))?;
                Ok(Manifest::Image {
                    config: to_ref(m.config())?,
                    layers: m.layers().iter().map(to_ref).collect::<Result<_>>()?,
                    subject: m.subject().as_ref().map(to_ref).transpose()?,
                    artifact_type: m.artifact_type().as_ref().map(|a| a.to_string()),
                    media_type,
                })
            }
            OCI_INDEX | DOCKER_LIST => {
                let i =
                    ImageIndex::from_reader(bytes).map_err(|e| ManifestError::Malformed(e.to_string()))?;
                Ok(Manifest::Index {
                    manifests: i.manifests().iter().map(to_ref).collect::<Result<_>>()?,
                    subject: i.subject().as_ref().map(to_ref).transpose()?,
                    artifact_type: i.artifact_type().as_ref().map(|a| a.to_string()),
                    media_type,
                })
            }
            other => Err(ManifestError::UnsupportedMediaType(other.to_string())),
        }
    }

    pub fn media_type(&self) -> &str {
        match self {
            Manifest::Image { media_type, .. } | Manifest::Index { media_type, .. } => media_type,
        }
    }

    pub fn subject(&self) -> Option<&Ref> {
        match self {
            Manifest::Image { subject, .. } | Manifest::Index { subject, .. } => subject.as_ref(),
        }
    }

    /// Every digest this manifest references (config, layers, children, subject excluded).
    pub fn references(&self) -> Vec<&Ref> {
        match self {
            Manifest::Image { config, layers, .. } => std::iter::once(config).chain(layers).collect(),
            Manifest::Index { manifests, .. } => manifests.iter().collect(),
        }
    }

    /// The child of an index for `want`, or the first child when none matches and
    /// `fallback` is set.
    pub fn select_platform(&self, want: &Platform) -> Option<&Ref> {
        let Manifest::Index { manifests, .. } = self else {
            return None;
        };
        manifests
            .iter()
            .find(|r| r.platform.as_ref().is_some_and(|p| p.satisfies(want)))
    }
}

/// Whether `m` names a manifest (not a blob).
pub fn is_manifest_media_type(m: &str) -> bool {
    matches!(m, OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST | DOCKER_LIST)
}

fn to_ref(d: &Descriptor) -> Result<Ref> {
    let digest: Digest = d.digest().to_string().parse()?;
    let platform = d.platform().as_ref().map(|p| Platform {
        os: p.os().to_string(),
        architecture: p.architecture().to_string(),
        variant: p.variant().clone(),
    });
    Ok(Ref {
        digest,
        size: d.size(),
        media_type: d.media_type().to_string(),
        platform,
    })
}

/// The parts of an image config the store records.
#[derive(Debug, Clone)]
pub struct Config {
    pub created: Option<String>,
    pub platform: Platform,
    pub diff_ids: Vec<Digest>,
}

impl Config {
    pub fn parse(bytes: &[u8]) -> Result<Config> {
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge);
        }
        let c = ImageConfiguration::from_reader(bytes)
            .map_err(|e| ManifestError::MalformedConfig(e.to_string()))?;
        let diff_ids = c
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| d.parse::<Digest>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config {
            created: c.created().clone(),
            platform: Platform {
                os: c.os().to_string(),
                architecture: c.architecture().to_string(),
                variant: c.variant().clone(),
            },
            diff_ids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_and_oci_manifests() {
        let cfg = Digest::of(b"c");
        let l = Digest::of(b"l");
        for mt in [OCI_MANIFEST, DOCKER_MANIFEST] {
            let doc = format!(
                r#"{{"schemaVersion":2,"mediaType":"{mt}","config":{{"mediaType":"x","digest":"{cfg}","size":1}},"layers":[{{"mediaType":"y","digest":"{l}","size":1}}]}}"#
            );
            let m = Manifest::parse(doc.as_bytes(), None).unwrap();
            assert_eq!(m.media_type(), mt);
            assert_eq!(m.references().len(), 2);
        }
    }

    #[test]
    fn refuses_malformed() {
        for bad in [&b"[]"[..], b"{}", b"{\"schemaVersion\":1}", b"not json"] {
            assert!(Manifest::parse(bad, None).is_err());
        }
        let doc = br#"{"schemaVersion":2,"mediaType":"application/x","config":{}}"#;
        assert!(matches!(
            Manifest::parse(doc, None),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
        let doc = br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:../../x","size":1},"layers":[]}"#;
        assert!(Manifest::parse(doc, None).is_err());
    }
}
