//! Image references (`[registry/]name[:tag][@digest]`), normalised as docker does:
//! `busybox` is `docker.io/library/busybox:latest`.

use crate::digest::{Digest, DigestError};

/// Errors from parsing a reference.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid reference {input:?}: {reason}")]
    Invalid { input: String, reason: String },
    #[error("invalid reference {input:?}: {source}")]
    Digest {
        input: String,
        #[source]
        source: DigestError,
    },
}

/// A normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// Parses and normalises. A reference with neither tag nor digest gets `latest`.
    pub fn parse(s: &str) -> Result<ImageRef, ReferenceError> {
        let r: oci_spec::distribution::Reference =
            s.parse()
                .map_err(|e: oci_spec::distribution::ParseError| ReferenceError::Invalid {
                    input: s.to_string(),
                    reason: e.to_string(),
                })?;
        let digest = r
            .digest()
            .map(|d| d.parse::<Digest>())
            .transpose()
            .map_err(|source| ReferenceError::Digest {
                input: s.to_string(),
                source,
            })?;
        Ok(ImageRef {
            registry: r.registry().to_string(),
            repository: r.repository().to_string(),
            tag: r.tag().map(str::to_string),
            digest,
        })
    }

    /// `registry/repository`, e.g. `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The key a tag is stored under: `registry/repository:tag`.
    pub fn tag_key(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// The short form docker prints: `busybox` for `docker.io/library/busybox`.
    pub fn familiar_name(&self) -> String {
        familiar_name(&self.name())
    }

    /// Whether the registry is a loopback address (spoken to over plain HTTP by default).
    pub fn is_loopback_registry(&self) -> bool {
        let host = self
            .registry
            .rsplit_once(':')
            .map_or(self.registry.as_str(), |(h, p)| {
                if p.bytes().all(|b| b.is_ascii_digit()) {
                    h
                } else {
                    self.registry.as_str()
                }
            });
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// The familiar (short) form of a normalised repository name.
pub fn familiar_name(name: &str) -> String {
    let rest = name.strip_prefix("docker.io/").unwrap_or(name);
    if rest.len() != name.len() {
        return rest.strip_prefix("library/").unwrap_or(rest).to_string();
    }
    name.to_string()
}

/// Splits a stored tag key `registry/repository:tag` into name and tag.
pub fn split_tag_key(key: &str) -> Option<(&str, &str)> {
    let (name, tag) = key.rsplit_once(':')?;
    if tag.contains('/') {
        None
    } else {
        Some((name, tag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest", "busybox"),
            ("library/busybox:1", "docker.io/library/busybox:1", "busybox"),
            ("docker.io/foo/bar:2", "docker.io/foo/bar:2", "foo/bar"),
            (
                "127.0.0.1:5000/t/busybox:1",
                "127.0.0.1:5000/t/busybox:1",
                "127.0.0.1:5000/t/busybox",
            ),
            ("localhost/x", "localhost/x:latest", "localhost/x"),
        ];
        for (input, full, familiar) in cases {
            let r = ImageRef::parse(input).unwrap();
            assert_eq!(r.to_string(), full, "{input}");
            assert_eq!(r.familiar_name(), familiar, "{input}");
        }
        assert!(
            ImageRef::parse("127.0.0.1:5000/x")
                .unwrap()
                .is_loopback_registry()
        );
        assert!(
            ImageRef::parse("localhost:5000/x")
                .unwrap()
                .is_loopback_registry()
        );
        assert!(!ImageRef::parse("example.com/x").unwrap().is_loopback_registry());
        assert!(ImageRef::parse("UPPER").is_err());
        assert!(ImageRef::parse("a@sha256:1234").is_err());
        assert_eq!(
            split_tag_key("127.0.0.1:5000/a:b"),
            Some(("127.0.0.1:5000/a", "b"))
        );
    }
}
