//! Manifests whose config is not an image config — BuildKit's cache export (as an image
//! manifest, and as the older index listing the cache config and layers directly), OCI
//! artifacts with `artifactType` and the empty config, a Helm-style config — are stored,
//! served (GET, HEAD, referrers), kept whole by GC and pass fsck and `store ls`, as an
//! ORAS- or BuildKit-like client pushes them.

use crate::common::Reg;
use axum::body::Body;
use http::{Method, StatusCode};
use strata_store::{Digest, GcOptions};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
const BUILDKIT_CACHE: &str = "application/vnd.buildkit.cacheconfig.v0";
const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn descriptor(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "mediaType": media_type,
        "digest": Digest::of(bytes).to_string(),
        "size": bytes.len(),
    })
}

async fn put(reg: &Reg, name: &str, reference: &str, media_type: &str, doc: &serde_json::Value) -> String {
    let bytes = serde_json::to_vec(doc).unwrap();
    let r = reg.put_manifest(name, reference, media_type, &bytes).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{reference}: {}",
        String::from_utf8_lossy(&r.body)
    );
    let digest = Digest::of(&bytes).to_string();
    for reference in [reference, digest.as_str()] {
        let uri = format!("/v2/{name}/manifests/{reference}");
        let r = reg
            .req(Method::GET, &uri, &[("accept", media_type)], Body::empty())
            .await;
        assert_eq!(r.status, StatusCode::OK, "GET {uri}");
        assert_eq!(r.body, bytes, "GET {uri}");
        assert_eq!(r.header("content-type"), Some(media_type));
        let r = reg
            .req(Method::HEAD, &uri, &[("accept", media_type)], Body::empty())
            .await;
        assert_eq!(r.status, StatusCode::OK, "HEAD {uri}");
        assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
    }
    digest
}

#[tokio::test]
async fn manifests_with_non_image_configs_are_stored_served_and_kept() {
    let reg = Reg::new();
    let name = "cache/app";
    let mut blobs: Vec<Vec<u8>> = Vec::new();
    let mut push = |bytes: Vec<u8>| {
        blobs.push(bytes.clone());
        bytes
    };

    // BuildKit's cache export with image-manifest=true: an image manifest whose config is
    // the cache config.
    let layer_a = push(b"\x1f\x8b cache layer a (never unpacked)".to_vec());
    let layer_b = push(b"\x1f\x8b cache layer b".to_vec());
    let cache_config = push(
        serde_json::to_vec(&serde_json::json!({
            "layers": [{"blob": Digest::of(&layer_a).to_string(), "parent": -1},
                       {"blob": Digest::of(&layer_b).to_string(), "parent": 0}],
            "records": [{"digest": "sha256:0000000000000000000000000000000000000000000000000000000000000000"}],
        }))
        .unwrap(),
    );
    // An OCI artifact: artifactType, the empty config, one blob.
    let empty = push(b"{}".to_vec());
    let sbom = push(br#"{"spdxVersion":"SPDX-2.3"}"#.to_vec());
    // A Helm-style chart: its own config type, content that is no image config.
    let chart_config = push(br#"{"name":"app","version":"1.0.0","apiVersion":"v2"}"#.to_vec());
    let chart = push(b"\x1f\x8b chart tarball".to_vec());
    for b in &blobs {
        reg.push_blob(name, b).await;
    }

    let cache_manifest = put(
        &reg,
        name,
        "buildcache",
        OCI_MANIFEST,
        &serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(BUILDKIT_CACHE, &cache_config),
            "layers": [descriptor(GZIP_LAYER, &layer_a), descriptor(GZIP_LAYER, &layer_b)],
        }),
    )
    .await;
    // The older cache export: an index listing the layers and the cache config themselves.
    put(
        &reg,
        name,
        "buildcache-index",
        OCI_INDEX,
        &serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [descriptor(GZIP_LAYER, &layer_a), descriptor(GZIP_LAYER, &layer_b),
                          descriptor(BUILDKIT_CACHE, &cache_config)],
        }),
    )
    .await;
    let chart_manifest = put(
        &reg,
        name,
        "chart-1.0.0",
        OCI_MANIFEST,
        &serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor("application/vnd.cncf.helm.config.v1+json", &chart_config),
            "layers": [descriptor("application/vnd.cncf.helm.chart.content.v1.tar+gzip", &chart)],
        }),
    )
    .await;
    let cache_bytes = reg
        .get(&format!("/v2/{name}/manifests/{cache_manifest}"))
        .await
        .body;
    let sbom_manifest = put(
        &reg,
        name,
        "sbom",
        OCI_MANIFEST,
        &serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/spdx+json",
            "config": descriptor(OCI_EMPTY, &empty),
            "layers": [descriptor("application/spdx+json", &sbom)],
            "subject": descriptor(OCI_MANIFEST, &cache_bytes),
        }),
    )
    .await;
    let r = reg
        .get(&format!(
            "/v2/{name}/referrers/{cache_manifest}?artifactType=application%2Fspdx%2Bjson"
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let referrers = r.json();
    assert_eq!(referrers["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(referrers["manifests"][0]["digest"], sbom_manifest.as_str());
    assert_eq!(referrers["manifests"][0]["artifactType"], "application/spdx+json");
    let _ = chart_manifest;

    // GC with no grace period: every config and layer is still served.
    let store = reg.state.store();
    store
        .gc(&GcOptions {
            grace: std::time::Duration::ZERO,
            ..GcOptions::default()
        })
        .unwrap();
    for b in &blobs {
        let d = Digest::of(b).to_string();
        let r = reg.get(&format!("/v2/{name}/blobs/{d}")).await;
        assert_eq!(r.status, StatusCode::OK, "GC took {d}");
        assert_eq!(&r.body, b);
    }
    let fsck = store.fsck(false).unwrap();
    assert!(fsck.faults.is_empty(), "{:?}", fsck.faults);
    let listed = store.images().unwrap();
    for tag in ["buildcache", "buildcache-index", "chart-1.0.0", "sbom"] {
        assert!(
            listed.iter().any(|i| i.tag == tag),
            "store ls lacks {tag}: {listed:?}"
        );
    }
}
