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
    /// Parses and normalises, following Distribution's reference grammar (a hand-written
    /// parser: the regex-based ones cost tens of milliseconds to compile in every
    /// process). A reference with neither tag nor digest gets `latest`.
    pub fn parse(s: &str) -> Result<ImageRef, ReferenceError> {
        let invalid = |reason: &str| ReferenceError::Invalid {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => {
                let digest = d.parse::<Digest>().map_err(|source| ReferenceError::Digest {
                    input: s.to_string(),
                    source,
                })?;
                (rest, Some(digest))
            }
            None => (s, None),
        };
        // A tag follows the last ':' unless that ':' is part of the domain's port (then a
        // '/' comes after it).
        let (name, tag) = match rest.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t)),
            _ => (rest, None),
        };
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(invalid("invalid tag"));
        }
        if name.is_empty() {
            return Err(invalid("empty name"));
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (first, path)
            }
            _ => ("docker.io", name),
        };
        if !valid_domain(domain) {
            return Err(invalid("invalid registry host"));
        }
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid("repository name must be lowercase"));
        }
        if !path.split('/').all(valid_name_component) {
            return Err(invalid("invalid repository name"));
        }
        let (registry, repository) = match domain {
            "docker.io" | "index.docker.io" if !path.contains('/') => {
                ("docker.io".to_string(), format!("library/{path}"))
            }
            "index.docker.io" => ("docker.io".to_string(), path.to_string()),
            d => (d.to_string(), path.to_string()),
        };
        // Distribution's limit is on the normalised name (`docker.io/library/…` counts).
        if registry.len() + 1 + repository.len() > 255 {
            return Err(invalid("name longer than 255 characters"));
        }
        Ok(ImageRef {
            registry,
            repository,
            tag: match (tag, &digest) {
                (Some(t), _) => Some(t.to_string()),
                (None, None) => Some("latest".to_string()),
                (None, Some(_)) => None,
            },
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

/// Whether `tag` matches the tag grammar `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Whether `c` is one `/`-separated component of a repository name:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
pub fn valid_name_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or "-+", followed by an alphanumeric.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i >= b.len() || !alnum(b[i]) || i == start {
            return false;
        }
    }
    true
}

/// `host[:port]`: dot-separated labels of letters, digits and inner dashes, or an IPv6
/// address in brackets.
fn valid_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after.strip_prefix(':') {
            Some(p) => ("", Some(p)),
            None if after.is_empty() => ("", None),
            None => return false,
        }
    } else {
        match d.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    host.is_empty() && d.starts_with('[')
        || !host.is_empty()
            && host.split('.').all(|label| {
                let b = label.as_bytes();
                !b.is_empty()
                    && b[0].is_ascii_alphanumeric()
                    && b[b.len() - 1].is_ascii_alphanumeric()
                    && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
            })
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
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let r = ImageRef::parse(&format!("reg.example:5000/a/b@{d}")).unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("reg.example:5000", "a/b", None)
        );
        assert_eq!(r.digest.unwrap().to_string(), d);
        let r = ImageRef::parse(&format!("a:1@{d}")).unwrap();
        assert_eq!(
            (r.repository.as_str(), r.tag.as_deref()),
            ("library/a", Some("1"))
        );
        let r = ImageRef::parse("[::1]:5000/x/y:t").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("[::1]:5000", "x/y")
        );
        assert!(r.is_loopback_registry());
        assert_eq!(
            ImageRef::parse("index.docker.io/x").unwrap().to_string(),
            "docker.io/library/x:latest"
        );
        assert_eq!(
            ImageRef::parse("a__b/c-d/e.f_g:v1.0-rc_1").unwrap().repository,
            "a__b/c-d/e.f_g"
        );
        for bad in [
            "",
            ":tag",
            "a:",
            "a::b",
            "a/",
            "/a",
            "a//b",
            "-a",
            "a-",
            "a..b",
            "a___b",
            "a/B",
            "Host.com/a/B",
            "a:-tag",
            "host:port/a",
            "[::1/a",
            "a b",
            "a:tag with space",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(ImageRef::parse(&format!("a:{}", "t".repeat(129))).is_err());
        assert!(ImageRef::parse(&"a".repeat(256)).is_err());
        // The limit is on the normalised name, as Distribution's (found by fuzzing).
        assert!(ImageRef::parse(&"a".repeat(237)).is_ok());
        assert!(ImageRef::parse(&"a".repeat(238)).is_err());
        assert_eq!(
            split_tag_key("127.0.0.1:5000/a:b"),
            Some(("127.0.0.1:5000/a", "b"))
        );
    }
}
