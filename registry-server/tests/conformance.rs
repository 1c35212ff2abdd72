//! The distribution spec, endpoint by endpoint and error by error, through `app()`
//! without a socket.

use crate::common::Reg;
use axum::body::Body;
use http::{Method, StatusCode};
use strata_fixtures::{Flavor, LayerCompression, busybox, index_for, small_image};
use strata_store::Digest;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn digest_of(b: &[u8]) -> String {
    Digest::of(b).to_string()
}

#[tokio::test]
async fn base_endpoint_and_version_header() {
    base_endpoint_and_version_header_on().await;
}

/// [`base_endpoint_and_version_header`] with two replicas on shared backends (S3, PostgreSQL), requests alternating.
#[tokio::test]
async fn base_endpoint_and_version_header_on_shared_backends() {
    if crate::common::shared_mode() {
        let reg = Reg::new();
        assert!(
            reg.is_shared() && reg.state.store().is_shared() && reg.state.store().content().kind() == "s3"
        );
        base_endpoint_and_version_header_on().await;
    }
}

async fn base_endpoint_and_version_header_on() {
    let reg = Reg::new();
    let r = reg.get("/v2/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("docker-distribution-api-version"), Some("registry/2.0"));
    let r = reg.get("/v2").await;
    assert_eq!(r.status, StatusCode::OK);
    let r = reg.get("/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
    let r = reg.get("/v3/nothing").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn blob_push_pull_head_range_and_errors() {
    blob_push_pull_head_range_and_errors_on().await;
}

/// [`blob_push_pull_head_range_and_errors`] with two replicas on shared backends (S3, PostgreSQL), requests alternating.
#[tokio::test]
async fn blob_push_pull_head_range_and_errors_on_shared_backends() {
    if crate::common::shared_mode() {
        blob_push_pull_head_range_and_errors_on().await;
    }
}

async fn blob_push_pull_head_range_and_errors_on() {
    let reg = Reg::new();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let d = reg.push_blob("a/b", &data).await;

    let r = reg
        .req(Method::HEAD, &format!("/v2/a/b/blobs/{d}"), &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-length"), Some("100000"));
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));
    assert!(r.body.is_empty());

    let r = reg.get(&format!("/v2/a/b/blobs/{d}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, data);

    let r = reg
        .req(
            Method::GET,
            &format!("/v2/a/b/blobs/{d}"),
            &[("range", "bytes=10-19")],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, &data[10..20]);
    assert_eq!(r.header("content-range"), Some("bytes 10-19/100000"));
    let r = reg
        .req(
            Method::GET,
            &format!("/v2/a/b/blobs/{d}"),
            &[("range", "bytes=99990-")],
            Body::empty(),
        )
        .await;
    assert_eq!(r.body, &data[99990..]);
    let r = reg
        .req(
            Method::GET,
            &format!("/v2/a/b/blobs/{d}"),
            &[("range", "bytes=200000-")],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);

    // Repository-scoped: not readable from another repository.
    let r = reg.get(&format!("/v2/other/blobs/{d}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "BLOB_UNKNOWN");
    let r = reg
        .req(Method::HEAD, &format!("/v2/other/blobs/{d}"), &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let r = reg.get("/v2/a/b/blobs/sha256:nothex").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "DIGEST_INVALID");
    let r = reg.get(&format!("/v2/a/b/blobs/{}", digest_of(b"absent"))).await;
    assert_eq!(r.code(), "BLOB_UNKNOWN");
    let r = reg.get(&format!("/v2/Bad_Name/blobs/{d}")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "NAME_INVALID");
}

#[tokio::test]
async fn single_post_upload_and_digest_mismatch() {
    single_post_upload_and_digest_mismatch_on().await;
}

/// [`single_post_upload_and_digest_mismatch`] with two replicas on shared backends (S3, PostgreSQL), requests alternating.
#[tokio::test]
async fn single_post_upload_and_digest_mismatch_on_shared_backends() {
    if crate::common::shared_mode() {
        single_post_upload_and_digest_mismatch_on().await;
    }
}

async fn single_post_upload_and_digest_mismatch_on() {
    let reg = Reg::new();
    let data = b"single request upload".to_vec();
    let d = digest_of(&data);
    let r = reg
        .req(
            Method::POST,
            &format!("/v2/x/blobs/uploads/?digest={d}"),
            &[],
            data.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(r.header("location"), Some(format!("/v2/x/blobs/{d}").as_str()));
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));
    assert_eq!(reg.get(&format!("/v2/x/blobs/{d}")).await.body, data);

    // Wrong digest: refused, nothing stored, session gone.
    let wrong = digest_of(b"other");
    let r = reg
        .req(Method::POST, "/v2/x/blobs/uploads/", &[], Body::empty())
        .await;
    let loc = r.header("location").unwrap().to_string();
    let r = reg
        .req(
            Method::PUT,
            &format!("{loc}?digest={wrong}"),
            &[],
            b"mismatched".to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "DIGEST_INVALID");
    assert_eq!(
        reg.state
            .store()
            .content()
            .stat(&wrong.parse().unwrap())
            .await
            .unwrap(),
        None
    );
    let r = reg.get(&loc).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "BLOB_UPLOAD_UNKNOWN");

    // PUT without a digest.
    let r = reg
        .req(Method::POST, "/v2/x/blobs/uploads/", &[], Body::empty())
        .await;
    let loc = r.header("location").unwrap().to_string();
    let r = reg.req(Method::PUT, &loc, &[], Body::empty()).await;
    assert_eq!(r.code(), "DIGEST_INVALID");
}

#[tokio::test]
async fn chunked_upload_status_out_of_order_and_cancel() {
    chunked_upload_status_out_of_order_and_cancel_on().await;
}

/// [`chunked_upload_status_out_of_order_and_cancel`] with two replicas on shared backends (S3, PostgreSQL), requests alternating.
#[tokio::test]
async fn chunked_upload_status_out_of_order_and_cancel_on_shared_backends() {
    if crate::common::shared_mode() {
        chunked_upload_status_out_of_order_and_cancel_on().await;
    }
}

async fn chunked_upload_status_out_of_order_and_cancel_on() {
    let reg = Reg::new();
    let data: Vec<u8> = (0..30_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let d = digest_of(&data);
    let r = reg
        .req(Method::POST, "/v2/c/blobs/uploads/", &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert!(r.header("docker-upload-uuid").is_some());
    assert_eq!(r.header("range"), Some("0-0"));
    let loc = r.header("location").unwrap().to_string();

    let r = reg
        .req(
            Method::PATCH,
            &loc,
            &[
                ("content-range", "0-9999"),
                ("content-type", "application/octet-stream"),
            ],
            data[..10_000].to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    assert_eq!(r.header("range"), Some("0-9999"));

    // Out of order: 416 and the offset unchanged.
    let r = reg
        .req(
            Method::PATCH,
            &loc,
            &[("content-range", "20000-29999")],
            data[20_000..].to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("range"), Some("0-9999"));
    let r = reg.get(&loc).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.header("range"), Some("0-9999"));

    let r = reg
        .req(
            Method::PATCH,
            &loc,
            &[("content-range", "10000-19999")],
            data[10_000..20_000].to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    // The last chunk with the closing PUT.
    let r = reg
        .req(
            Method::PUT,
            &format!("{loc}?digest={d}"),
            &[("content-range", "20000-29999")],
            data[20_000..].to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(reg.get(&format!("/v2/c/blobs/{d}")).await.body, data);

    // Cancel.
    let r = reg
        .req(Method::POST, "/v2/c/blobs/uploads/", &[], Body::empty())
        .await;
    let loc = r.header("location").unwrap().to_string();
    reg.req(Method::PATCH, &loc, &[], b"abc".to_vec()).await;
    let r = reg.req(Method::DELETE, &loc, &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = reg.get(&loc).await;
    assert_eq!(r.code(), "BLOB_UPLOAD_UNKNOWN");
    let r = reg.req(Method::DELETE, &loc, &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // An upload of another repository is unknown here.
    let r = reg
        .req(Method::POST, "/v2/c/blobs/uploads/", &[], Body::empty())
        .await;
    let id = r.header("docker-upload-uuid").unwrap().to_string();
    assert_eq!(
        reg.get(&format!("/v2/other/blobs/uploads/{id}")).await.code(),
        "BLOB_UPLOAD_UNKNOWN"
    );
    assert_eq!(
        reg.get("/v2/c/blobs/uploads/../../x").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn cross_repository_mount() {
    cross_repository_mount_on().await;
}

/// [`cross_repository_mount`] with two replicas on shared backends (S3, PostgreSQL), requests alternating.
#[tokio::test]
async fn cross_repository_mount_on_shared_backends() {
    if crate::common::shared_mode() {
        cross_repository_mount_on().await;
    }
}

async fn cross_repository_mount_on() {
    let reg = Reg::new();
    let d = reg.push_blob("src/repo", b"mount me").await;
    let r = reg
        .req(
            Method::POST,
            &format!("/v2/dst/blobs/uploads/?mount={d}&from=src/repo"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("location"), Some(format!("/v2/dst/blobs/{d}").as_str()));
    assert_eq!(reg.get(&format!("/v2/dst/blobs/{d}")).await.body, b"mount me");
    // Source without the blob: a new upload session instead.
    let r = reg
        .req(
            Method::POST,
            &format!("/v2/dst2/blobs/uploads/?mount={d}&from=nothere"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert!(
        r.header("location")
            .unwrap()
            .starts_with("/v2/dst2/blobs/uploads/")
    );
    assert_eq!(
        reg.get(&format!("/v2/dst2/blobs/{d}")).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn manifests_by_tag_and_digest_byte_exact() {
    manifests_by_tag_and_digest_byte_exact_on().await;
}

/// [`manifests_by_tag_and_digest_byte_exact`] with two replicas on shared backends (S3, PostgreSQL), requests alternating.
#[tokio::test]
async fn manifests_by_tag_and_digest_byte_exact_on_shared_backends() {
    if crate::common::shared_mode() {
        manifests_by_tag_and_digest_byte_exact_on().await;
    }
}

async fn manifests_by_tag_and_digest_byte_exact_on() {
    let reg = Reg::new();
    for (i, flavor) in [Flavor::Oci, Flavor::Docker].into_iter().enumerate() {
        let img = if flavor == Flavor::Oci {
            small_image(1, 2, true)
        } else {
            docker_image()
        };
        let name = format!("m/{i}");
        reg.push_image(&name, "v1", &img).await;
        let md = img.manifest.digest.clone();
        for reference in ["v1", md.as_str()] {
            let r = reg.get(&format!("/v2/{name}/manifests/{reference}")).await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.body, img.manifest.bytes, "byte-exact");
            assert_eq!(r.header("content-type"), Some(img.manifest.media_type.as_str()));
            assert_eq!(r.header("docker-content-digest"), Some(md.as_str()));
            let r = reg
                .req(
                    Method::HEAD,
                    &format!("/v2/{name}/manifests/{reference}"),
                    &[],
                    Body::empty(),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(
                r.header("content-length"),
                Some(img.manifest.bytes.len().to_string().as_str())
            );
            assert!(r.body.is_empty());
        }
        // PUT by digest.
        let r = reg
            .put_manifest(&name, &md, &img.manifest.media_type, &img.manifest.bytes)
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(
            r.header("location"),
            Some(format!("/v2/{name}/manifests/{md}").as_str())
        );
        // Not visible from another repository.
        assert_eq!(
            reg.get(&format!("/v2/elsewhere/manifests/{md}")).await.code(),
            "MANIFEST_UNKNOWN"
        );
    }
    // The tag is in the store under the registry name, for `store ls` and `runner`.
    let rows = reg.state.store().images().unwrap();
    assert!(
        rows.iter()
            .any(|r| r.repository == "reg.test/m/0" && r.tag == "v1"),
        "{rows:?}"
    );
    assert_eq!(reg.get("/v2/m/0/manifests/nope").await.code(), "MANIFEST_UNKNOWN");
    // A malformed tag names nothing on a read (404, as the spec's conformance suite
    // expects) and is refused on a push (400).
    let r = reg.get("/v2/m/0/manifests/-bad-tag").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "MANIFEST_UNKNOWN");
    let r = reg
        .req(Method::HEAD, "/v2/m/0/manifests/.bad", &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = reg.put_manifest("m/0", "-bad-tag", OCI_MANIFEST, b"{}").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "MANIFEST_INVALID");
}

fn docker_image() -> strata_fixtures::Image {
    strata_fixtures::ImageBuilder::new(Flavor::Docker)
        .layer_with(
            strata_fixtures::LayerBuilder::new().build(),
            LayerCompression::Gzip,
            "empty",
        )
        .build()
}

#[tokio::test]
async fn manifest_put_errors() {
    manifest_put_errors_on().await;
}

/// [`manifest_put_errors`] with two replicas on shared backends (S3, PostgreSQL), requests alternating.
#[tokio::test]
async fn manifest_put_errors_on_shared_backends() {
    if crate::common::shared_mode() {
        manifest_put_errors_on().await;
    }
}

async fn manifest_put_errors_on() {
    let reg = Reg::new();
    let img = small_image(2, 2, false);
    // Blobs missing from the repository.
    let r = reg
        .put_manifest("e", "t", OCI_MANIFEST, &img.manifest.bytes)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "MANIFEST_BLOB_UNKNOWN");
    // In the store, but pushed to another repository: still unknown here.
    reg.push_image("first", "t", &img).await;
    let r = reg
        .put_manifest("e", "t", OCI_MANIFEST, &img.manifest.bytes)
        .await;
    assert_eq!(r.code(), "MANIFEST_BLOB_UNKNOWN");
    // Malformed.
    let r = reg.put_manifest("e", "t", OCI_MANIFEST, b"{not json").await;
    assert_eq!(r.code(), "MANIFEST_INVALID");
    let r = reg
        .put_manifest("e", "t", OCI_MANIFEST, br#"{"schemaVersion":1}"#)
        .await;
    assert_eq!(r.code(), "MANIFEST_INVALID");
    // Digest reference that does not match the body.
    let r = reg
        .put_manifest("first", &digest_of(b"x"), OCI_MANIFEST, &img.manifest.bytes)
        .await;
    assert_eq!(r.code(), "DIGEST_INVALID");
    // Over 4 MiB.
    let big = vec![b' '; (4 << 20) + 1];
    let r = reg.put_manifest("first", "big", OCI_MANIFEST, &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.code(), "SIZE_INVALID");
    // Index whose child is not in the repository.
    let index = index_for(Flavor::Oci, std::slice::from_ref(&img));
    let r = reg.put_manifest("e", "idx", OCI_INDEX, &index.bytes).await;
    assert_eq!(r.code(), "MANIFEST_BLOB_UNKNOWN");
    let r = reg.put_manifest("first", "idx", OCI_INDEX, &index.bytes).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

#[tokio::test]
async fn index_accept_negotiation() {
    index_accept_negotiation_on().await;
}

/// [`index_accept_negotiation`] with two replicas on shared backends (S3, PostgreSQL), requests alternating.
#[tokio::test]
async fn index_accept_negotiation_on_shared_backends() {
    if crate::common::shared_mode() {
        index_accept_negotiation_on().await;
    }
}

async fn index_accept_negotiation_on() {
    let reg = Reg::new();
    let img = small_image(3, 1, false);
    reg.push_image("n", "child", &img).await;
    let index = index_for(Flavor::Oci, std::slice::from_ref(&img));
    assert_eq!(
        reg.put_manifest("n", "multi", OCI_INDEX, &index.bytes)
            .await
            .status,
        StatusCode::CREATED
    );
    let r = reg
        .req(
            Method::GET,
            "/v2/n/manifests/multi",
            &[("accept", &format!("{OCI_INDEX}, {OCI_MANIFEST}"))],
            Body::empty(),
        )
        .await;
    assert_eq!(r.body, index.bytes);
    assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    // A client that takes no index gets the manifest for this platform.
    let r = reg
        .req(
            Method::GET,
            "/v2/n/manifests/multi",
            &[("accept", OCI_MANIFEST)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.body, img.manifest.bytes);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(img.manifest.digest.as_str())
    );
}

#[tokio::test]
async fn tags_list_sorted_paginated() {
    tags_list_sorted_paginated_on().await;
}

/// [`tags_list_sorted_paginated`] with two replicas on shared backends (S3, PostgreSQL), requests alternating.
#[tokio::test]
async fn tags_list_sorted_paginated_on_shared_backends() {
    if crate::common::shared_mode() {
        tags_list_sorted_paginated_on().await;
    }
}

async fn tags_list_sorted_paginated_on() {
    let reg = Reg::new();
    let img = small_image(4, 1, false);
    for tag in ["zeta", "alpha", "1.0", "beta", "Alpha"] {
        reg.push_image("t/r", tag, &img).await;
    }
    let r = reg.get("/v2/t/r/tags/list").await;
    assert_eq!(
        r.json()["tags"],
        serde_json::json!(["1.0", "Alpha", "alpha", "beta", "zeta"])
    );
    assert_eq!(r.json()["name"], "t/r");
    let r = reg.get("/v2/t/r/tags/list?n=2").await;
    assert_eq!(r.json()["tags"], serde_json::json!(["1.0", "Alpha"]));
    assert_eq!(
        r.header("link"),
        Some("</v2/t/r/tags/list?n=2&last=Alpha>; rel=\"next\"")
    );
    let r = reg.get("/v2/t/r/tags/list?n=2&last=Alpha").await;
    assert_eq!(r.json()["tags"], serde_json::json!(["alpha", "beta"]));
    let r = reg.get("/v2/t/r/tags/list?n=2&last=beta").await;
    assert_eq!(r.json()["tags"], serde_json::json!(["zeta"]));
    assert!(r.header("link").is_none());
    let r = reg.get("/v2/t/r/tags/list?n=0").await;
    assert_eq!(r.json()["tags"], serde_json::json!([]));
    // A sibling repository's tags do not leak in.
    reg.push_image("t/r/sub", "x", &img).await;
    reg.push_image("t/rr", "y", &img).await;
    assert_eq!(
        reg.get("/v2/t/r/tags/list").await.json()["tags"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    let r = reg.get("/v2/nothing/here/tags/list").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "NAME_UNKNOWN");
    assert_eq!(reg.get("/v2/UPPER/tags/list").await.code(), "NAME_INVALID");
}

#[tokio::test]
async fn catalog_paginated() {
    catalog_paginated_on().await;
}

/// [`catalog_paginated`] with two replicas on shared backends (S3, PostgreSQL), requests alternating.
#[tokio::test]
async fn catalog_paginated_on_shared_backends() {
    if crate::common::shared_mode() {
        catalog_paginated_on().await;
    }
}

async fn catalog_paginated_on() {
    let reg = Reg::new();
    for name in ["c", "a/b", "b", "a"] {
        reg.push_blob(name, name.as_bytes()).await;
    }
    let r = reg.get("/v2/_catalog").await;
    assert_eq!(
        r.json()["repositories"],
        serde_json::json!(["a", "a/b", "b", "c"])
    );
    let r = reg.get("/v2/_catalog?n=3").await;
    assert_eq!(r.json()["repositories"], serde_json::json!(["a", "a/b", "b"]));
    assert_eq!(r.header("link"), Some("</v2/_catalog?n=3&last=b>; rel=\"next\""));
    let r = reg.get("/v2/_catalog?n=3&last=b").await;
    assert_eq!(r.json()["repositories"], serde_json::json!(["c"]));
}

#[tokio::test]
async fn referrers_with_filter_and_subject_header() {
    referrers_with_filter_and_subject_header_on().await;
}

/// [`referrers_with_filter_and_subject_header`] with two replicas on shared backends (S3, PostgreSQL), requests alternating.
#[tokio::test]
async fn referrers_with_filter_and_subject_header_on_shared_backends() {
    if crate::common::shared_mode() {
        referrers_with_filter_and_subject_header_on().await;
    }
}

async fn referrers_with_filter_and_subject_header_on() {
    let reg = Reg::new();
    let img = small_image(5, 1, false);
    reg.push_image("r", "base", &img).await;
    let empty = reg.push_blob("r", b"{}").await;
    let mut digests = Vec::new();
    for (i, at) in [
        "application/vnd.example.sbom",
        "application/vnd.example.sig",
        "application/vnd.example.sbom",
    ]
    .iter()
    .enumerate()
    {
        let doc = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": at,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": img.manifest.digest, "size": img.manifest.bytes.len()},
            "annotations": {"n": i.to_string()},
        });
        let bytes = serde_json::to_vec(&doc).unwrap();
        let d = digest_of(&bytes);
        let r = reg.put_manifest("r", &d, OCI_MANIFEST, &bytes).await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.header("oci-subject"), Some(img.manifest.digest.as_str()));
        digests.push(d);
    }
    let r = reg.get(&format!("/v2/r/referrers/{}", img.manifest.digest)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    let list = r.json()["manifests"].as_array().unwrap().clone();
    assert_eq!(list.len(), 3);
    assert!(
        list.iter()
            .all(|m| m["size"].as_u64().unwrap() > 0 && m["annotations"]["n"].is_string())
    );
    let r = reg
        .get(&format!(
            "/v2/r/referrers/{}?artifactType=application/vnd.example.sbom",
            img.manifest.digest
        ))
        .await;
    assert_eq!(r.json()["manifests"].as_array().unwrap().len(), 2);
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
    // Another repository sees none; a subject with none gives an empty index.
    let r = reg
        .get(&format!("/v2/other/referrers/{}", img.manifest.digest))
        .await;
    assert_eq!(r.json()["manifests"], serde_json::json!([]));
    assert_eq!(
        reg.get("/v2/r/referrers/sha256:zz").await.code(),
        "DIGEST_INVALID"
    );
    // Deleting a referrer removes it from the list.
    let r = reg
        .req(
            Method::DELETE,
            &format!("/v2/r/manifests/{}", digests[0]),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = reg.get(&format!("/v2/r/referrers/{}", img.manifest.digest)).await;
    assert_eq!(r.json()["manifests"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn deletes() {
    deletes_on().await;
}

/// [`deletes`] with two replicas on shared backends (S3, PostgreSQL), requests alternating.
#[tokio::test]
async fn deletes_on_shared_backends() {
    if crate::common::shared_mode() {
        deletes_on().await;
    }
}

async fn deletes_on() {
    let reg = Reg::new();
    let img = small_image(6, 1, false);
    reg.push_image("d", "one", &img).await;
    reg.push_image("d", "two", &img).await;
    let md = img.manifest.digest.clone();
    // Delete a tag.
    let r = reg
        .req(Method::DELETE, "/v2/d/manifests/one", &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(reg.get("/v2/d/manifests/one").await.code(), "MANIFEST_UNKNOWN");
    assert_eq!(reg.get("/v2/d/manifests/two").await.status, StatusCode::OK);
    // Delete the manifest: its other tags go too.
    let r = reg
        .req(
            Method::DELETE,
            &format!("/v2/d/manifests/{md}"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(
        reg.get(&format!("/v2/d/manifests/{md}")).await.code(),
        "MANIFEST_UNKNOWN"
    );
    assert_eq!(reg.get("/v2/d/manifests/two").await.code(), "MANIFEST_UNKNOWN");
    let r = reg
        .req(
            Method::DELETE,
            &format!("/v2/d/manifests/{md}"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.code(), "MANIFEST_UNKNOWN");
    // Delete a blob.
    let layer = &img.layers[0].digest;
    let r = reg
        .req(
            Method::DELETE,
            &format!("/v2/d/blobs/{layer}"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(
        reg.get(&format!("/v2/d/blobs/{layer}")).await.code(),
        "BLOB_UNKNOWN"
    );
    let r = reg
        .req(
            Method::DELETE,
            &format!("/v2/d/blobs/{layer}"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.code(), "BLOB_UNKNOWN");
    // Unsupported method.
    let r = reg.req(Method::POST, "/v2/d/tags/list", &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.code(), "UNSUPPORTED");
}

#[tokio::test]
async fn deletes_can_be_disabled() {
    deletes_can_be_disabled_on().await;
}

/// [`deletes_can_be_disabled`] with two replicas on shared backends (S3, PostgreSQL), requests alternating.
#[tokio::test]
async fn deletes_can_be_disabled_on_shared_backends() {
    if crate::common::shared_mode() {
        deletes_can_be_disabled_on().await;
    }
}

async fn deletes_can_be_disabled_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::common::config(dir.path());
    cfg.delete_enabled = false;
    let reg = Reg::with_config(dir, cfg);
    let d = reg.push_blob("x", b"keep").await;
    let r = reg
        .req(Method::DELETE, &format!("/v2/x/blobs/{d}"), &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.code(), "UNSUPPORTED");
}

/// The session limit counts sessions requests are working on: at the limit, an idle
/// session is let go of (its upload goes on, reopened by its next request), and only
/// when every session is busy does a new one get `TOOMANYREQUESTS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_session_limit_is_toomanyrequests() {
    use tower::ServiceExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::common::config(dir.path());
    cfg.limits.max_upload_sessions = 2;
    let reg = Reg::with_config(dir, cfg);
    let post = async || {
        let r = reg
            .req(Method::POST, "/v2/x/blobs/uploads/", &[], Body::empty())
            .await;
        (r.status, r.header("location").map(str::to_string))
    };
    // Two abandoned sessions do not lock pushes out.
    let (_, a) = post().await;
    let a = a.unwrap();
    let r = reg
        .req(Method::PATCH, &a, &[("content-range", "0-5")], b"hello ".to_vec())
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let (_, b) = post().await;
    assert!(b.is_some());
    assert_eq!(
        post().await.0,
        StatusCode::ACCEPTED,
        "idle sessions counted against the limit"
    );
    // The session let go of goes on where it was.
    let r = reg
        .req(Method::PATCH, &a, &[("content-range", "6-10")], b"world".to_vec())
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    let digest = strata_store::Digest::of(b"hello world");
    let r = reg
        .req(Method::PUT, &format!("{a}?digest={digest}"), &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    // Two sessions with a PATCH in flight: a third session waits its turn.
    let mut senders = Vec::new();
    let mut patches = Vec::new();
    for _ in 0..2 {
        let (status, loc) = post().await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
        let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }));
        let req = http::Request::patch(loc.unwrap()).body(body).unwrap();
        let app = strata_registry::app(reg.state.clone());
        patches.push(tokio::spawn(
            async move { app.oneshot(req).await.unwrap().status() },
        ));
        tx.send(Ok(b"busy".to_vec())).await.unwrap();
        senders.push(tx);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let r = reg
        .req(Method::POST, "/v2/x/blobs/uploads/", &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.code(), "TOOMANYREQUESTS");
    drop(senders);
    for p in patches {
        assert_eq!(p.await.unwrap(), StatusCode::ACCEPTED);
    }
    assert_eq!(post().await.0, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn blob_size_limit() {
    blob_size_limit_on().await;
}

/// [`blob_size_limit`] with two replicas on shared backends (S3, PostgreSQL), requests alternating.
#[tokio::test]
async fn blob_size_limit_on_shared_backends() {
    if crate::common::shared_mode() {
        blob_size_limit_on().await;
    }
}

async fn blob_size_limit_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::common::config(dir.path());
    cfg.limits.max_blob_bytes = Some(10);
    let reg = Reg::with_config(dir, cfg);
    let r = reg
        .req(Method::POST, "/v2/x/blobs/uploads/", &[], Body::empty())
        .await;
    let loc = r.header("location").unwrap().to_string();
    let r = reg.req(Method::PATCH, &loc, &[], vec![0u8; 11]).await;
    assert_eq!(r.code(), "SIZE_INVALID");
}

#[tokio::test]
async fn busybox_images_both_flavors() {
    busybox_images_both_flavors_on().await;
}

/// [`busybox_images_both_flavors`] with two replicas on shared backends (S3, PostgreSQL), requests alternating.
#[tokio::test]
async fn busybox_images_both_flavors_on_shared_backends() {
    if crate::common::shared_mode() {
        busybox_images_both_flavors_on().await;
    }
}

async fn busybox_images_both_flavors_on() {
    let reg = Reg::new();
    for flavor in [Flavor::Oci, Flavor::Docker] {
        let img = busybox(flavor, LayerCompression::Gzip);
        reg.push_image("library/busybox", "latest", &img).await;
        let r = reg
            .req(
                Method::GET,
                "/v2/library/busybox/manifests/latest",
                &[("accept", DOCKER_MANIFEST)],
                Body::empty(),
            )
            .await;
        assert_eq!(r.body, img.manifest.bytes);
        for l in &img.layers {
            assert_eq!(
                reg.get(&format!("/v2/library/busybox/blobs/{}", l.digest))
                    .await
                    .body,
                l.bytes
            );
        }
    }
}

#[tokio::test]
async fn metrics_endpoint() {
    let reg = Reg::new();
    reg.push_blob("m", b"metric").await;
    let r = reg.get("/metrics").await;
    let text = String::from_utf8(r.body).unwrap();
    assert!(
        text.contains("strata_registry_requests_total{method=\"PUT\",status=\"201\"} 1"),
        "{text}"
    );
    assert!(text.contains("strata_registry_storage_blobs 1"), "{text}");
    assert!(text.contains("strata_registry_received_bytes_total 6"), "{text}");
}
