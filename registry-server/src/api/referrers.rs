//! The referrers API: the manifests whose subject is a digest, as an OCI index, filtered
//! by `artifactType` on request.

use axum::response::IntoResponse;
use http::{HeaderValue, StatusCode, header};
use strata_store::OCI_INDEX;

use super::shared::{Shared, blocking, parse_digest, query_get};
use crate::error::ApiResult;

pub(super) async fn referrers(
    st: &Shared,
    name: String,
    digest: String,
    q: &[(String, String)],
) -> ApiResult {
    let d = parse_digest(&digest)?;
    let store = st.store().clone();
    let mut list = blocking(move || Ok(store.referrers(&name, &d)?)).await?;
    let filter = query_get(q, "artifactType");
    if let Some(f) = filter {
        list.retain(|r| r.artifact_type.as_deref() == Some(f));
    }
    let doc = serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list });
    let mut resp = (StatusCode::OK, serde_json::to_vec(&doc).unwrap_or_default()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX));
    if filter.is_some() {
        h.insert("OCI-Filters-Applied", HeaderValue::from_static("artifactType"));
    }
    Ok(resp)
}
