//! Tag lists and the catalog, both paginated with `n` and `last` (and a `Link` to the
//! next page). A pull-through cache's tag list includes the upstream's tags, which the
//! router hands in.

use std::future::Future;

use axum::response::IntoResponse;
use http::{HeaderValue, StatusCode, header};

use super::shared::{Shared, blocking, query_get};
use crate::error::{ApiError, ApiResult, ErrorCode};

/// `n` and `last` pagination over a sorted list, with the `Link` for the next page.
fn paginate(
    items: Vec<String>,
    q: &[(String, String)],
    max: usize,
    path: &str,
) -> ApiResult<(Vec<String>, Option<String>)> {
    let n = match query_get(q, "n") {
        Some(s) => Some(
            s.parse::<usize>()
                .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::Unsupported, "invalid n"))?,
        ),
        None => None,
    };
    let last = query_get(q, "last");
    let mut it: Vec<String> = match last {
        Some(l) => items.into_iter().filter(|t| t.as_str() > l).collect(),
        None => items,
    };
    let limit = n.unwrap_or(usize::MAX).min(max);
    let mut link = None;
    if it.len() > limit {
        it.truncate(limit);
        if let Some(l) = it.last() {
            link = Some(format!("<{path}?n={limit}&last={l}>; rel=\"next\""));
        }
    }
    Ok((it, link))
}

pub(super) async fn catalog(st: &Shared, q: &[(String, String)]) -> ApiResult {
    let store = st.store().clone();
    let repos = blocking(move || Ok(store.repositories()?)).await?;
    let (page, link) = paginate(repos, q, st.inner.config.limits.max_page, "/v2/_catalog")?;
    let mut resp = axum::Json(serde_json::json!({ "repositories": page })).into_response();
    if let Some(l) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert(header::LINK, l);
    }
    Ok(resp)
}

/// A repository's tags. `upstream` yields a pull-through cache's upstream tags (`None`:
/// not a cache, or the upstream cannot say); it is awaited once the store's are read.
pub(super) async fn tags(
    st: &Shared,
    name: String,
    q: &[(String, String)],
    upstream: impl Future<Output = Option<Vec<String>>>,
) -> ApiResult {
    let store = st.store().clone();
    let registry = st.inner.registry.clone();
    let n2 = name.clone();
    let (mut tags, exists) = blocking(move || {
        let tags = store.repo_tags(&registry, &n2)?;
        let exists = !tags.is_empty() || store.repo_exists(&n2)?;
        Ok((tags, exists))
    })
    .await?;
    let upstream = upstream.await;
    if upstream.is_none() && !exists {
        return Err(ApiError::name_unknown(&name));
    }
    if let Some(up) = upstream {
        tags.extend(up);
        tags.sort();
        tags.dedup();
    }
    let path = format!("/v2/{name}/tags/list");
    let (page, link) = paginate(tags, q, st.inner.config.limits.max_page, &path)?;
    let mut resp = axum::Json(serde_json::json!({ "name": name, "tags": page })).into_response();
    if let Some(l) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert(header::LINK, l);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagination() {
        let items: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let q = vec![("n".to_string(), "2".to_string())];
        let (p, link) = paginate(items.clone(), &q, 100, "/x").unwrap();
        assert_eq!(p, ["a", "b"]);
        assert_eq!(link.unwrap(), "</x?n=2&last=b>; rel=\"next\"");
        let q = vec![
            ("n".to_string(), "2".to_string()),
            ("last".to_string(), "b".to_string()),
        ];
        let (p, link) = paginate(items, &q, 100, "/x").unwrap();
        assert_eq!(p, ["c", "d"]);
        assert!(link.is_none());
    }
}
