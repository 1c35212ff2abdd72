//! Request paths of the distribution API, and the spec's grammar for repository names,
//! tags and references.

use strata_store::valid_name_component;
pub use strata_store::valid_tag;

/// What a `/v2/…` path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Base,
    Catalog,
    Tags { name: String },
    Manifest { name: String, reference: String },
    Blob { name: String, digest: String },
    Uploads { name: String },
    Upload { name: String, id: String },
    Referrers { name: String, digest: String },
}

impl Route {
    /// The repository the route is about, if any.
    pub fn name(&self) -> Option<&str> {
        match self {
            Route::Base | Route::Catalog => None,
            Route::Tags { name }
            | Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::Uploads { name }
            | Route::Upload { name, .. }
            | Route::Referrers { name, .. } => Some(name),
        }
    }
}

/// Parses a request path; `None` for paths outside the API.
pub fn parse_route(path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(Route::Base);
    }
    let rest = rest.strip_prefix('/')?;
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags {
            name: name.to_string(),
        });
    }
    if let Some((name, id)) = rest.rsplit_once("/blobs/uploads/") {
        return Some(if id.is_empty() {
            Route::Uploads {
                name: name.to_string(),
            }
        } else {
            Route::Upload {
                name: name.to_string(),
                id: id.to_string(),
            }
        });
    }
    if let Some(name) = rest.strip_suffix("/blobs/uploads") {
        return Some(Route::Uploads {
            name: name.to_string(),
        });
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        return Some(Route::Manifest {
            name: name.to_string(),
            reference: reference.to_string(),
        });
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        return Some(Route::Blob {
            name: name.to_string(),
            digest: digest.to_string(),
        });
    }
    if let Some((name, digest)) = rest.rsplit_once("/referrers/") {
        return Some(Route::Referrers {
            name: name.to_string(),
            digest: digest.to_string(),
        });
    }
    None
}

/// Whether `name` matches the spec's repository name grammar
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`
/// (each component checked by the store's reference grammar) and is at most `max_len`
/// bytes.
pub fn valid_name(name: &str, max_len: usize) -> bool {
    !name.is_empty() && name.len() <= max_len && name.split('/').all(valid_name_component)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(parse_route("/v2/"), Some(Route::Base));
        assert_eq!(parse_route("/v2"), Some(Route::Base));
        assert_eq!(parse_route("/v2/_catalog"), Some(Route::Catalog));
        assert_eq!(
            parse_route("/v2/a/b/tags/list"),
            Some(Route::Tags { name: "a/b".into() })
        );
        assert_eq!(
            parse_route("/v2/a/blobs/uploads/"),
            Some(Route::Uploads { name: "a".into() })
        );
        assert_eq!(
            parse_route("/v2/a/blobs/uploads/xyz"),
            Some(Route::Upload {
                name: "a".into(),
                id: "xyz".into()
            })
        );
        assert_eq!(
            parse_route("/v2/a/manifests/latest"),
            Some(Route::Manifest {
                name: "a".into(),
                reference: "latest".into()
            })
        );
        assert_eq!(
            parse_route("/v2/a/b/blobs/sha256:00"),
            Some(Route::Blob {
                name: "a/b".into(),
                digest: "sha256:00".into()
            })
        );
        assert_eq!(
            parse_route("/v2/a/referrers/sha256:00"),
            Some(Route::Referrers {
                name: "a".into(),
                digest: "sha256:00".into()
            })
        );
        assert_eq!(parse_route("/v3/"), None);
    }

    #[test]
    fn names_and_tags() {
        for ok in ["a", "library/busybox", "a.b/c_d/e__f/g-h/i---j", "0"] {
            assert!(valid_name(ok, 255), "{ok}");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "a..b", "a___b", "-a", "a-", "a:b", "a/../b", "a.-b",
        ] {
            assert!(!valid_name(bad, 255), "{bad}");
        }
        assert!(!valid_name(&"a".repeat(256), 255));
        for ok in ["latest", "_x", "1.0-rc_2", &"a".repeat(128)] {
            assert!(valid_tag(ok), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", &"a".repeat(129)] {
            assert!(!valid_tag(bad), "{bad}");
        }
    }
}
