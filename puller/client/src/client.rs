//! `Client`, one registry's OCI distribution API: the `/v2/` ping, the auth challenge flow
//! (bearer tokens from the challenge's realm, anonymous or with basic credentials; basic
//! challenges answered with the credentials), manifest GET/HEAD/PUT with the OCI and
//! Docker media types, blob HEAD and push, tag lists. Blob downloads are in `blob.rs`.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use strata_store::{Digest, MAX_MANIFEST_BYTES, OCI_INDEX, OCI_MANIFEST};

use crate::challenge::{Challenge, parse_challenge};
use crate::error::{ClientError, Result};

/// The manifest media types a client accepts, most preferred first.
pub(crate) const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// Credentials for a registry.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A manifest as the registry served it.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: Digest,
}

/// What a manifest HEAD tells.
#[derive(Debug, Clone)]
pub struct ManifestHead {
    pub digest: Digest,
    pub media_type: Option<String>,
    pub size: Option<u64>,
}

/// How to authenticate requests, learnt from challenges.
#[derive(Debug, Clone)]
enum Scheme {
    Basic,
    Bearer(String),
}

/// A client for one registry (`http://host:port` or `https://…`).
pub struct Client {
    http: reqwest::Client,
    base: String,
    credentials: Option<Credentials>,
    /// Per scope (e.g. `repository:x:pull`): how to authenticate.
    auth: Mutex<HashMap<String, Scheme>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `base` (`http://127.0.0.1:5000`), optionally with credentials.
    pub fn new(base: &str, credentials: Option<Credentials>) -> Result<Client> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) || base.len() < 9 {
            return Err(ClientError::InvalidUrl(base));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| ClientError::Http {
                url: base.clone(),
                error: source,
            })?;
        Ok(Client {
            http,
            base,
            credentials,
            auth: Mutex::new(HashMap::new()),
        })
    }

    /// The registry's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn scheme_for(&self, scope: &str) -> Option<Scheme> {
        self.auth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(scope)
            .cloned()
    }

    fn authorize(&self, rb: RequestBuilder, scheme: Option<&Scheme>) -> RequestBuilder {
        match (scheme, &self.credentials) {
            (Some(Scheme::Bearer(t)), _) => rb.bearer_auth(t),
            (Some(Scheme::Basic), Some(c)) => rb.basic_auth(&c.username, Some(&c.password)),
            _ => rb,
        }
    }

    /// Sends a request, answering one auth challenge (then retrying once).
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &str,
        scope: &str,
        headers: &[(&str, String)],
    ) -> Result<Response> {
        self.send_body(method, url, scope, headers, None).await
    }

    /// [`Client::send`] with a body that can be sent twice (a manifest).
    async fn send_body(
        &self,
        method: Method,
        url: &str,
        scope: &str,
        headers: &[(&str, String)],
        body: Option<Bytes>,
    ) -> Result<Response> {
        let build = |scheme: Option<&Scheme>| {
            let mut rb = self.http.request(method.clone(), url);
            for (k, v) in headers {
                rb = rb.header(*k, v);
            }
            if let Some(b) = &body {
                rb = rb.body(b.clone());
            }
            self.authorize(rb, scheme)
        };
        let http_err = |source| ClientError::Http {
            url: url.to_string(),
            error: source,
        };
        let known = self.scheme_for(scope);
        let resp = build(known.as_ref()).send().await.map_err(http_err)?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok().and_then(parse_challenge))
            .find(|c| c.scheme == "bearer" || c.scheme == "basic");
        let unauthorized = || ClientError::Unauthorized {
            url: url.to_string(),
            with_credentials: self.credentials.is_some(),
        };
        let scheme = match challenge {
            Some(c) if c.scheme == "bearer" => Scheme::Bearer(self.token(&c, scope).await?),
            Some(_) if self.credentials.is_some() => Scheme::Basic,
            _ => return Err(unauthorized()),
        };
        if known.is_some() && matches!((&known, &scheme), (Some(Scheme::Basic), Scheme::Basic)) {
            // The credentials were sent already and refused.
            return Err(unauthorized());
        }
        let resp = build(Some(&scheme)).send().await.map_err(http_err)?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(unauthorized());
        }
        self.auth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(scope.to_string(), scheme);
        Ok(resp)
    }

    /// Gets a bearer token from a challenge's realm (with basic credentials if any).
    async fn token(&self, c: &Challenge, scope: &str) -> Result<String> {
        let realm = c.params.get("realm").cloned().unwrap_or_default();
        let terr = |message: String| ClientError::Token {
            realm: realm.clone(),
            message,
        };
        if !(realm.starts_with("http://") || realm.starts_with("https://")) {
            return Err(terr("the challenge has no usable realm".into()));
        }
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = c.params.get("service") {
            query.push(("service", s));
        }
        let scope = c.params.get("scope").map_or(scope, String::as_str);
        query.push(("scope", scope));
        let mut rb = self.http.get(&realm).query(&query);
        if let Some(cr) = &self.credentials {
            rb = rb.basic_auth(&cr.username, Some(&cr.password));
        }
        let resp = rb.send().await.map_err(|e| terr(e.to_string()))?;
        if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
            return Err(ClientError::Unauthorized {
                url: realm.clone(),
                with_credentials: self.credentials.is_some(),
            });
        }
        if !resp.status().is_success() {
            return Err(terr(format!("status {}", resp.status().as_u16())));
        }
        let body: serde_json::Value = resp.json().await.map_err(|e| terr(e.to_string()))?;
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .ok_or_else(|| terr("no token in the response".into()))
    }

    pub(crate) async fn check(&self, resp: Response, url: &str) -> Result<Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status == StatusCode::NOT_FOUND {
            return Err(ClientError::NotFound { url: url.to_string() });
        }
        let mut body = resp.text().await.unwrap_or_default();
        body.truncate(512);
        Err(ClientError::Status {
            url: url.to_string(),
            status: status.as_u16(),
            body,
        })
    }

    /// `GET /v2/`: whether the registry answers (and, with credentials, accepts them).
    pub async fn ping(&self) -> Result<()> {
        let url = format!("{}/v2/", self.base);
        let resp = self.send(Method::GET, &url, "registry:catalog:*", &[]).await?;
        self.check(resp, &url).await.map(|_| ())
    }

    pub(crate) fn scope(name: &str) -> String {
        format!("repository:{name}:pull")
    }

    /// `HEAD` of a manifest by tag or digest. `None` digest header: asks with GET.
    pub async fn head_manifest(&self, name: &str, reference: &str) -> Result<ManifestHead> {
        let url = format!("{}/v2/{name}/manifests/{reference}", self.base);
        let accept = [(ACCEPT.as_str(), MANIFEST_ACCEPT.to_string())];
        let resp = self.send(Method::HEAD, &url, &Self::scope(name), &accept).await?;
        let resp = self.check(resp, &url).await?;
        let h = resp.headers();
        let digest = match h.get("docker-content-digest").and_then(|v| v.to_str().ok()) {
            Some(v) => v.parse::<Digest>().map_err(|_| ClientError::BadHeader {
                url: url.clone(),
                header: "Docker-Content-Digest",
                value: v.to_string(),
            })?,
            None => {
                let m = self.get_manifest(name, reference).await?;
                return Ok(ManifestHead {
                    digest: m.digest,
                    media_type: Some(m.media_type),
                    size: Some(m.bytes.len() as u64),
                });
            }
        };
        Ok(ManifestHead {
            digest,
            media_type: media_type(h),
            size: h.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok()),
        })
    }

    /// `GET` of a manifest by tag or digest. By digest the body must hash to it; by tag
    /// it must hash to the `Docker-Content-Digest` the registry sent, if any.
    pub async fn get_manifest(&self, name: &str, reference: &str) -> Result<FetchedManifest> {
        let url = format!("{}/v2/{name}/manifests/{reference}", self.base);
        let accept = [(ACCEPT.as_str(), MANIFEST_ACCEPT.to_string())];
        let resp = self.send(Method::GET, &url, &Self::scope(name), &accept).await?;
        let resp = self.check(resp, &url).await?;
        let too_large = || ClientError::ManifestTooLarge {
            reference: reference.to_string(),
            limit: MAX_MANIFEST_BYTES,
        };
        if resp.content_length().is_some_and(|n| n > MAX_MANIFEST_BYTES) {
            return Err(too_large());
        }
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok()?.parse::<Digest>().ok());
        let mt = media_type(resp.headers());
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| ClientError::Http {
                url: url.clone(),
                error: source,
            })?;
            if (body.len() + chunk.len()) as u64 > MAX_MANIFEST_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        let actual = Digest::of(&body);
        let expected = match reference.parse::<Digest>() {
            Ok(d) if reference.contains(':') => Some(d),
            _ => header_digest,
        };
        if let Some(expected) = expected
            && expected != actual
        {
            return Err(ClientError::DigestMismatch {
                reference: reference.to_string(),
                expected,
                actual,
            });
        }
        let media_type = mt
            .filter(|m| strata_store::is_manifest_media_type(m))
            .or_else(|| sniff_media_type(&body))
            .unwrap_or_else(|| OCI_MANIFEST.to_string());
        Ok(FetchedManifest {
            bytes: Bytes::from(body),
            media_type,
            digest: actual,
        })
    }

    /// `HEAD` of a blob: its size, `None` when the registry does not have it.
    pub async fn blob_size(&self, name: &str, digest: &Digest) -> Result<Option<u64>> {
        let url = format!("{}/v2/{name}/blobs/{digest}", self.base);
        let resp = self.send(Method::HEAD, &url, &Self::scope(name), &[]).await?;
        match self.check(resp, &url).await {
            Ok(r) => Ok(Some(
                r.headers()
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(0),
            )),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every tag of a repository, following the registry's `Link` pagination (up to
    /// 100 pages).
    pub async fn tags(&self, name: &str) -> Result<Vec<String>> {
        let mut url = format!("{}/v2/{name}/tags/list?n=1000", self.base);
        let mut tags = Vec::new();
        for _ in 0..100 {
            let resp = self.send(Method::GET, &url, &Self::scope(name), &[]).await?;
            let resp = self.check(resp, &url).await?;
            let next = resp
                .headers()
                .get(reqwest::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| l.split(';').next())
                .map(|l| l.trim().trim_start_matches('<').trim_end_matches('>').to_string());
            let body: serde_json::Value = resp.json().await.map_err(|source| ClientError::Http {
                url: url.clone(),
                error: source,
            })?;
            if let Some(list) = body.get("tags").and_then(|t| t.as_array()) {
                tags.extend(list.iter().filter_map(|t| t.as_str().map(str::to_string)));
            }
            match next {
                Some(n) if n.starts_with("http://") || n.starts_with("https://") => url = n,
                Some(n) if n.starts_with('/') => url = format!("{}{n}", self.base),
                _ => break,
            }
        }
        Ok(tags)
    }

    fn push_scope(name: &str) -> String {
        format!("repository:{name}:pull,push")
    }

    /// Uploads a blob unless the repository has it: `HEAD`, then `POST` an upload and
    /// `PUT` the file's bytes (streamed, `Content-Length: size`) with `?digest=`. Returns
    /// whether bytes were sent. The registry checks the digest.
    pub async fn push_blob(&self, name: &str, digest: &Digest, size: u64, file: File) -> Result<bool> {
        let url = format!("{}/v2/{name}/blobs/{digest}", self.base);
        let scope = Self::push_scope(name);
        let resp = self.send(Method::HEAD, &url, &scope, &[]).await?;
        match self.check(resp, &url).await {
            Ok(_) => return Ok(false),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        let start = format!("{}/v2/{name}/blobs/uploads/", self.base);
        let resp = self.send(Method::POST, &start, &scope, &[]).await?;
        let resp = self.check(resp, &start).await?;
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ClientError::BadHeader {
                url: start.clone(),
                header: "Location",
                value: String::new(),
            })?;
        let mut put = if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else {
            format!("{}{location}", self.base)
        };
        put.push(if put.contains('?') { '&' } else { '?' });
        put.push_str(&format!("digest={digest}"));
        // A streamed body cannot be sent twice: the POST above settled the auth scheme.
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
            tokio::fs::File::from_std(file),
            1 << 20,
        ));
        let rb = self
            .http
            .put(&put)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size)
            .body(body);
        let rb = self.authorize(rb, self.scheme_for(&scope).as_ref());
        let resp = rb.send().await.map_err(|source| ClientError::Http {
            url: put.clone(),
            error: source,
        })?;
        self.check(resp, &put).await?;
        Ok(true)
    }

    /// `PUT` of a manifest under `reference` (a tag or its digest); returns the digest
    /// the registry answered with (or the manifest's own).
    pub async fn put_manifest(
        &self,
        name: &str,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<Digest> {
        let url = format!("{}/v2/{name}/manifests/{reference}", self.base);
        let headers = [(CONTENT_TYPE.as_str(), media_type.to_string())];
        let own = Digest::of(&bytes);
        let resp = self
            .send_body(Method::PUT, &url, &Self::push_scope(name), &headers, Some(bytes))
            .await?;
        let resp = self.check(resp, &url).await?;
        Ok(resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(own))
    }
}

fn media_type(h: &reqwest::header::HeaderMap) -> Option<String> {
    h.get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The media type a manifest declares in its body.
fn sniff_media_type(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if let Some(m) = v.get("mediaType").and_then(|m| m.as_str()) {
        return Some(m.to_string());
    }
    if v.get("manifests").is_some() {
        return Some(OCI_INDEX.to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(Client::new("ftp://x", None).is_err());
        let c = Client::new("http://127.0.0.1:5000/", None).unwrap();
        assert_eq!(c.base(), "http://127.0.0.1:5000");
    }
}
