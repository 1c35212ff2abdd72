//! The OCI distribution-spec's conformance workflows — pull, push, content discovery,
//! content management — walked request by request in the order the spec's conformance
//! suite (v1.1.1, `conformance/0{1,2,3,4}_*_test.go`) makes them, with the same content
//! (configs with an unspecified `data` field, a manifest with no layers, artifacts with
//! and without `artifactType`, a referrer whose subject was never pushed). Where the
//! suite accepts several status codes, the one this registry gives is asserted. The
//! workflows with a teardown run twice: deleting manifests before blobs, and blobs first
//! (the suite's `OCI_DELETE_MANIFEST_BEFORE_BLOBS`). Through `app()` without a socket.

use crate::common::{Reg, Resp};
use base64::Engine;
use http::{Method, StatusCode};
use strata_store::Digest;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCTET: &str = "application/octet-stream";
const NAME: &str = "myorg/myrepo";
const CROSSMOUNT: &str = "myorg/other";
const TAG: &str = "tagtest0";
const EMPTY_LAYER_TAG: &str = "emptylayer";
const NONEXISTENT_MANIFEST: &str = ".INVALID_MANIFEST_NAME";
const ANNOTATION: &str = "org.opencontainers.conformance.test";
const TYPE_A: &str = "application/vnd.nhl.peanut.butter.bagel";
const TYPE_B: &str = "application/vnd.nba.strawberry.jam.croissant";
const TYPE_INDEX: &str = "application/vnd.food.stand";
const EMPTY_JSON_DIGEST: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

/// Content with its digest.
#[derive(Clone)]
struct Blob {
    bytes: Vec<u8>,
    digest: String,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Blob {
        let digest = Digest::of(&bytes).to_string();
        Blob { bytes, digest }
    }
    fn json(v: &serde_json::Value) -> Blob {
        Blob::new(serde_json::to_vec_pretty(v).unwrap())
    }
    fn len(&self) -> String {
        self.bytes.len().to_string()
    }
    fn descriptor(&self, media_type: &str) -> serde_json::Value {
        serde_json::json!({ "mediaType": media_type, "digest": self.digest, "size": self.bytes.len() })
    }
}

/// Reproducible bytes (the suite seeds Go's math/rand the same way for its blobs).
fn seeded(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

/// The suite's test data (`setup.go`): one config and one manifest per workflow, a
/// layer they share, blobs for the push workflow and the referrers artifacts.
struct Data {
    configs: Vec<Blob>,
    layer: Blob,
    manifests: Vec<Blob>,
    empty_layer_manifest: Blob,
    blob_a: Blob,
    blob_b: Blob,
    dummy: String,
    empty_json: Blob,
    ref_blob_a: Blob,
    ref_blob_b: Blob,
    a_config: Blob,
    b_config: Blob,
    a_layer: Blob,
    b_layer: Blob,
    c_layer: Blob,
    index: Blob,
}

impl Data {
    fn new() -> Data {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        // The suite makes `numWorkflows` (16) of each; the workflows use five.
        let configs: Vec<Blob> = (0..5)
            .map(|i| {
                Blob::json(&serde_json::json!({
                    "author": format!("conformance-author-{i}"),
                    "architecture": "amd64",
                    "os": "linux",
                    "rootfs": { "type": "layers", "diff_ids": [] },
                }))
            })
            .collect();
        // A gzipped tarball in the suite; the registry never looks inside.
        let layer = Blob::new(seeded(168, 7));
        // The config descriptor carries the config inline (`data`) and a field no spec
        // defines; the layer descriptor carries that field as null. A registry stores
        // and serves such manifests unchanged. The config lists no diff IDs for the one
        // layer: the registry is not to judge that.
        let config_descriptor = |c: &Blob| {
            let mut d = c.descriptor(OCI_CONFIG);
            d["data"] = b64(&c.bytes).into();
            d["newUnspecifiedField"] = b64(b"hello world").into();
            d
        };
        let mut layer_descriptor = layer.descriptor(OCI_LAYER);
        layer_descriptor["newUnspecifiedField"] = serde_json::Value::Null;
        let manifests: Vec<Blob> = (0..5)
            .map(|i| {
                Blob::json(&serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": config_descriptor(&configs[i]),
                    "layers": [layer_descriptor],
                }))
            })
            .collect();
        // No `mediaType`, no layers.
        let empty_layer_manifest = Blob::json(&serde_json::json!({
            "schemaVersion": 2,
            "config": config_descriptor(&configs[1]),
            "layers": [],
        }));
        let empty_json = Blob::new(b"{}".to_vec());
        assert_eq!(empty_json.digest, EMPTY_JSON_DIGEST);
        let empty_desc = empty_json.descriptor("application/vnd.oci.empty.v1+json");
        let ref_blob_a = Blob::new(b"NHL Peanut Butter on my NHL bagel".to_vec());
        let ref_blob_b = Blob::new(b"NBA Strawberry Jam on my NBA croissant".to_vec());
        let subject = |m: &Blob| m.descriptor(OCI_MANIFEST);
        // artifactType given by the config's media type.
        let config_artifact = |t: &str, blob: &Blob, note: &str| {
            Blob::json(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": blob.descriptor(t),
                "subject": subject(&manifests[4]),
                "layers": [empty_desc],
                "annotations": { ANNOTATION: note },
            }))
        };
        // artifactType given by the field, the config the empty JSON.
        let layer_artifact = |t: &str, blob: &Blob, subj: &Blob, note: Option<&str>| {
            let mut doc = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": t,
                "config": empty_desc,
                "subject": subject(subj),
                "layers": [blob.descriptor(t)],
            });
            if let Some(n) = note {
                doc["annotations"] = serde_json::json!({ ANNOTATION: n });
            }
            Blob::json(&doc)
        };
        let a_config = config_artifact(TYPE_A, &ref_blob_a, "test config a");
        let b_config = config_artifact(TYPE_B, &ref_blob_b, "test config b");
        let a_layer = layer_artifact(TYPE_A, &ref_blob_a, &manifests[4], Some("test layer a"));
        let b_layer = layer_artifact(TYPE_B, &ref_blob_b, &manifests[4], Some("test layer b"));
        // Same as B, but its subject (manifests[3]) is never pushed in this workflow.
        let c_layer = layer_artifact(TYPE_B, &ref_blob_b, &manifests[3], None);
        let index = Blob::json(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "artifactType": TYPE_INDEX,
            "manifests": [a_config.descriptor(OCI_MANIFEST), a_layer.descriptor(OCI_MANIFEST)],
            "subject": subject(&manifests[4]),
            "annotations": { ANNOTATION: "test index" },
        }));
        Data {
            configs,
            layer,
            manifests,
            empty_layer_manifest,
            blob_a: Blob::new(seeded(42, 1)),
            blob_b: Blob::new(seeded(42, 2)),
            dummy: Digest::of(b"hello world").to_string(),
            empty_json,
            ref_blob_a,
            ref_blob_b,
            a_config,
            b_config,
            a_layer,
            b_layer,
            c_layer,
            index,
        }
    }

    /// The annotation each referrer of manifests[4] carries.
    fn annotation_of(&self, digest: &str) -> &'static str {
        [
            (&self.a_config, "test config a"),
            (&self.b_config, "test config b"),
            (&self.a_layer, "test layer a"),
            (&self.b_layer, "test layer b"),
            (&self.index, "test index"),
        ]
        .into_iter()
        .find(|(b, _)| b.digest == digest)
        .map(|(_, n)| n)
        .unwrap_or_else(|| panic!("{digest} is no referrer of manifests[4]"))
    }
}

/// The suite's client, reduced to what it sends on the wire.
struct Client {
    target: Target,
    d: Data,
}

/// Where the requests go: `app()` over a temp store, or a registry on a socket.
enum Target {
    App(Reg),
    Remote(String, reqwest::Client),
}

/// `loc` with one more query parameter.
fn with_query(loc: &str, key: &str, value: &str) -> String {
    let sep = if loc.contains('?') { '&' } else { '?' };
    format!("{loc}{sep}{key}={value}")
}

fn location(r: &Resp) -> String {
    let loc = r.header("location").unwrap_or_default().to_string();
    assert!(!loc.is_empty(), "no Location: {r:?}");
    loc
}

#[track_caller]
fn expect(r: &Resp, status: StatusCode, step: &str) {
    assert_eq!(
        r.status,
        status,
        "{step}: {r:?} {}",
        String::from_utf8_lossy(&r.body)
    );
}

fn tag_list(r: &Resp) -> Vec<String> {
    serde_json::from_value(r.json()["tags"].clone()).unwrap_or_default()
}

impl Client {
    fn new() -> Client {
        Client {
            target: Target::App(Reg::new()),
            d: Data::new(),
        }
    }

    /// The workflows against a registry on a real socket (`host:port`), e.g. replicas
    /// behind a load balancer.
    fn remote(addr: &str) -> Client {
        Client {
            target: Target::Remote(addr.to_string(), reqwest::Client::new()),
            d: Data::new(),
        }
    }

    async fn send(&self, method: Method, uri: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        match &self.target {
            Target::App(reg) => reg.req(method, uri, headers, body.to_vec()).await,
            Target::Remote(addr, http) => {
                let mut b = http.request(method, format!("http://{addr}{uri}"));
                for (k, v) in headers {
                    b = b.header(*k, *v);
                }
                let r = b.body(body.to_vec()).send().await.unwrap();
                let status = r.status();
                let headers = r.headers().clone();
                let body = r.bytes().await.unwrap().to_vec();
                Resp {
                    status,
                    headers,
                    body,
                }
            }
        }
    }

    fn blob_path(digest: &str) -> String {
        format!("/v2/{NAME}/blobs/{digest}")
    }

    fn manifest_path(reference: &str) -> String {
        format!("/v2/{NAME}/manifests/{reference}")
    }

    /// The setups' "Populate registry with test blob": POST, then PUT with the digest.
    async fn populate_blob(&self, blob: &Blob, step: &str) {
        let r = self
            .send(Method::POST, &format!("/v2/{NAME}/blobs/uploads/"), &[], b"")
            .await;
        expect(&r, StatusCode::ACCEPTED, step);
        let r = self
            .send(
                Method::PUT,
                &with_query(&location(&r), "digest", &blob.digest),
                &[("content-type", OCTET), ("content-length", &blob.len())],
                &blob.bytes,
            )
            .await;
        expect(&r, StatusCode::CREATED, step);
    }

    async fn put_manifest(&self, reference: &str, media_type: &str, m: &Blob) -> Resp {
        self.send(
            Method::PUT,
            &Self::manifest_path(reference),
            &[("content-type", media_type)],
            &m.bytes,
        )
        .await
    }

    async fn head(&self, path: &str, accept: Option<&str>) -> Resp {
        let h: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
        self.send(Method::HEAD, path, &h, b"").await
    }

    async fn get(&self, path: &str, accept: Option<&str>) -> Resp {
        let h: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
        self.send(Method::GET, path, &h, b"").await
    }

    async fn delete(&self, path: &str, status: StatusCode, step: &str) {
        let r = self.send(Method::DELETE, path, &[], b"").await;
        expect(&r, status, step);
    }

    async fn delete_manifests(&self, list: &[&Blob], status: StatusCode) {
        for m in list {
            let step = format!("delete manifest {}", m.digest);
            self.delete(&Self::manifest_path(&m.digest), status, &step).await;
        }
    }

    async fn tags(&self) -> Resp {
        self.get(&format!("/v2/{NAME}/tags/list"), None).await
    }
}

/// `01_pull_test.go`.
async fn pull(manifest_first: bool) {
    pull_with(Client::new(), manifest_first).await;
}

async fn pull_with(c: Client, manifest_first: bool) {
    let d = &c.d;

    // Setup.
    c.populate_blob(&d.configs[0], "populate config[0]").await;
    c.populate_blob(&d.configs[1], "populate config[1]").await;
    c.populate_blob(&d.layer, "populate layer").await;
    let r = c.put_manifest(TAG, OCI_MANIFEST, &d.manifests[0]).await;
    expect(&r, StatusCode::CREATED, "populate manifest[0] by tag");
    let r = c
        .put_manifest(&d.manifests[1].digest, OCI_MANIFEST, &d.manifests[1])
        .await;
    expect(&r, StatusCode::CREATED, "populate manifest[1] by digest");
    // Stored as pushed; as an image it lists no diff ID for its layer, so it is not
    // unpacked for running.
    if let Target::App(reg) = &c.target {
        let config: Digest = d.configs[0].digest.parse().unwrap();
        let err = reg.state.store().ensure_unpacked(&config).unwrap_err();
        assert!(
            matches!(err, strata_store::StoreError::LayerCountMismatch { .. }),
            "{err}"
        );
    }

    // Pull blobs.
    let r = c.head(&Client::blob_path(&d.dummy), None).await;
    expect(&r, StatusCode::NOT_FOUND, "HEAD nonexistent blob");
    let r = c.head(&Client::blob_path(&d.configs[0].digest), None).await;
    expect(&r, StatusCode::OK, "HEAD existing blob");
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d.configs[0].digest.as_str())
    );
    let r = c.get(&Client::blob_path(&d.dummy), None).await;
    expect(&r, StatusCode::NOT_FOUND, "GET nonexistent blob");
    let r = c.get(&Client::blob_path(&d.configs[0].digest), None).await;
    expect(&r, StatusCode::OK, "GET existing blob");
    assert_eq!(r.body, d.configs[0].bytes);

    // Pull manifests.
    let r = c.head(&Client::manifest_path(NONEXISTENT_MANIFEST), None).await;
    expect(&r, StatusCode::NOT_FOUND, "HEAD nonexistent manifest");
    for (i, m) in d.manifests[..2].iter().enumerate() {
        let r = c
            .head(&Client::manifest_path(&m.digest), Some(OCI_MANIFEST))
            .await;
        expect(&r, StatusCode::OK, &format!("HEAD manifest[{i}] by digest"));
        assert_eq!(r.header("docker-content-digest"), Some(m.digest.as_str()));
        assert!(r.body.is_empty());
    }
    let r = c.head(&Client::manifest_path(TAG), Some(OCI_MANIFEST)).await;
    expect(&r, StatusCode::OK, "HEAD manifest by tag");
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d.manifests[0].digest.as_str())
    );
    let r = c.get(&Client::manifest_path(NONEXISTENT_MANIFEST), None).await;
    expect(&r, StatusCode::NOT_FOUND, "GET nonexistent manifest");
    assert_eq!(r.code(), "MANIFEST_UNKNOWN");
    for (i, m) in d.manifests[..2].iter().enumerate() {
        let r = c.get(&Client::manifest_path(&m.digest), Some(OCI_MANIFEST)).await;
        expect(&r, StatusCode::OK, &format!("GET manifest[{i}] by digest"));
        assert_eq!(r.body, m.bytes, "served unchanged");
        assert_eq!(r.header("content-type"), Some(OCI_MANIFEST));
    }
    let r = c.get(&Client::manifest_path(TAG), Some(OCI_MANIFEST)).await;
    expect(&r, StatusCode::OK, "GET manifest by tag");
    assert_eq!(r.body, d.manifests[0].bytes);

    // Error codes: a malformed digest is a 400 with a spec error code.
    let r = c
        .send(
            Method::GET,
            &Client::manifest_path("sha256:totallywrong"),
            &[("content-type", OCI_MANIFEST)],
            b"blablabla",
        )
        .await;
    expect(&r, StatusCode::BAD_REQUEST, "GET malformed digest");
    assert_eq!(r.code(), "DIGEST_INVALID");

    // Teardown.
    let delete_manifests = async {
        for (i, m) in d.manifests[..2].iter().enumerate() {
            c.delete(
                &Client::manifest_path(&m.digest),
                StatusCode::ACCEPTED,
                &format!("delete manifest[{i}]"),
            )
            .await;
        }
    };
    let delete_blobs = async {
        for (b, step) in [
            (&d.configs[0], "delete config[0]"),
            (&d.configs[1], "delete config[1]"),
            (&d.layer, "delete layer"),
        ] {
            c.delete(&Client::blob_path(&b.digest), StatusCode::ACCEPTED, step)
                .await;
        }
    };
    if manifest_first {
        delete_manifests.await;
        delete_blobs.await;
    } else {
        delete_blobs.await;
        delete_manifests.await;
    }
    let r = c.get(&Client::manifest_path(TAG), None).await;
    expect(&r, StatusCode::NOT_FOUND, "tag gone with its manifest");
    let r = c.get(&Client::blob_path(&d.layer.digest), None).await;
    expect(&r, StatusCode::NOT_FOUND, "layer gone");
}

/// `02_push_test.go`, with `OCI_AUTOMATIC_CROSSMOUNT=0` (this registry mounts only
/// from a named repository).
async fn push(manifest_first: bool) {
    push_with(Client::new(), manifest_first).await;
}

async fn push_with(c: Client, manifest_first: bool) {
    let d = &c.d;
    let uploads = format!("/v2/{NAME}/blobs/uploads/");

    // Blob upload, streamed: POST, PATCH with the whole blob, PUT with no body.
    let r = c.send(Method::POST, &uploads, &[], b"").await;
    expect(&r, StatusCode::ACCEPTED, "POST for a streamed upload");
    let r = c
        .send(
            Method::PATCH,
            &location(&r),
            &[("content-type", OCTET)],
            &d.blob_a.bytes,
        )
        .await;
    expect(&r, StatusCode::ACCEPTED, "PATCH with the blob in the body");
    // The suite sets `Content-Length: 42` here, but Go's client sends the length of
    // the (empty) body.
    let r = c
        .send(
            Method::PUT,
            &with_query(&location(&r), "digest", &d.blob_a.digest),
            &[("content-type", OCTET)],
            b"",
        )
        .await;
    expect(&r, StatusCode::CREATED, "PUT closing a streamed upload");
    location(&r);

    // Blob upload, monolithic.
    let r = c.get(&Client::blob_path(&d.dummy), None).await;
    expect(&r, StatusCode::NOT_FOUND, "GET nonexistent blob");
    let cfg = &d.configs[1];
    let r = c
        .send(
            Method::POST,
            &with_query(&uploads, "digest", &cfg.digest),
            &[("content-length", &cfg.len()), ("content-type", OCTET)],
            &cfg.bytes,
        )
        .await;
    expect(&r, StatusCode::CREATED, "POST with digest and blob");
    assert_eq!(location(&r), Client::blob_path(&cfg.digest));
    let r = c.get(&Client::blob_path(&cfg.digest), None).await;
    expect(&r, StatusCode::OK, "GET blob pushed by a single POST");
    let r = c.send(Method::POST, &uploads, &[], b"").await;
    expect(&r, StatusCode::ACCEPTED, "POST yields a session");
    let r = c
        .send(
            Method::PUT,
            &with_query(&location(&r), "digest", &cfg.digest),
            &[("content-length", &cfg.len()), ("content-type", OCTET)],
            &cfg.bytes,
        )
        .await;
    expect(&r, StatusCode::CREATED, "PUT upload of a blob");
    location(&r);
    let r = c.get(&Client::blob_path(&cfg.digest), None).await;
    expect(&r, StatusCode::OK, "GET existing blob");
    let r = c.send(Method::POST, &uploads, &[], b"").await;
    expect(&r, StatusCode::ACCEPTED, "POST for the layer");
    let r = c
        .send(
            Method::PUT,
            &with_query(&location(&r), "digest", &d.layer.digest),
            &[("content-length", &d.layer.len()), ("content-type", OCTET)],
            &d.layer.bytes,
        )
        .await;
    expect(&r, StatusCode::CREATED, "PUT upload of a layer");
    location(&r);
    let r = c.get(&Client::blob_path(&d.layer.digest), None).await;
    expect(&r, StatusCode::OK, "GET existing layer");

    // Blob upload, chunked: 22 bytes then 20.
    let (chunk1, chunk2) = d.blob_b.bytes.split_at(22);
    let (range1, range2) = ("0-21", "22-41");
    let r = c
        .send(Method::POST, &uploads, &[("content-length", "0")], b"")
        .await;
    expect(&r, StatusCode::ACCEPTED, "POST for an out-of-order upload");
    assert!(r.header("oci-chunk-min-length").is_none());
    let r = c
        .send(
            Method::PATCH,
            &location(&r),
            &[
                ("content-type", OCTET),
                ("content-length", "20"),
                ("content-range", range2),
            ],
            chunk2,
        )
        .await;
    expect(&r, StatusCode::RANGE_NOT_SATISFIABLE, "out-of-order chunk");
    let r = c
        .send(Method::POST, &uploads, &[("content-length", "0")], b"")
        .await;
    expect(&r, StatusCode::ACCEPTED, "POST for a chunked upload");
    let session = location(&r);
    let r = c
        .send(
            Method::PATCH,
            &session,
            &[
                ("content-type", OCTET),
                ("content-length", "22"),
                ("content-range", range1),
            ],
            chunk1,
        )
        .await;
    expect(&r, StatusCode::ACCEPTED, "PATCH with the first chunk");
    assert_eq!(r.header("range"), Some(range1));
    let r = c
        .send(
            Method::PATCH,
            &session,
            &[
                ("content-type", OCTET),
                ("content-length", "22"),
                ("content-range", range1),
            ],
            chunk1,
        )
        .await;
    expect(&r, StatusCode::RANGE_NOT_SATISFIABLE, "retried first chunk");
    let r = c.get(&session, None).await;
    expect(&r, StatusCode::NO_CONTENT, "GET the upload's status");
    assert_eq!(r.header("range"), Some(range1));
    let r = c
        .send(
            Method::PATCH,
            &location(&r),
            &[
                ("content-length", "20"),
                ("content-range", range2),
                ("content-type", OCTET),
            ],
            chunk2,
        )
        .await;
    expect(&r, StatusCode::ACCEPTED, "PATCH with the second chunk");
    let r = c
        .send(
            Method::PUT,
            &with_query(&location(&r), "digest", &d.blob_b.digest),
            &[("content-length", "0"), ("content-type", OCTET)],
            b"",
        )
        .await;
    expect(&r, StatusCode::CREATED, "PUT closing a chunked upload");
    location(&r);
    let r = c.get(&Client::blob_path(&d.blob_b.digest), None).await;
    assert_eq!(r.body, d.blob_b.bytes);

    // Cross-repository blob mount.
    let cross_uploads = format!("/v2/{CROSSMOUNT}/blobs/uploads/");
    let r = c
        .send(
            Method::POST,
            &with_query(&cross_uploads, "mount", &d.dummy),
            &[],
            b"",
        )
        .await;
    expect(&r, StatusCode::ACCEPTED, "mount without from yields a session");
    location(&r);
    let r = c
        .send(
            Method::POST,
            &with_query(
                &with_query(&cross_uploads, "mount", &d.blob_a.digest),
                "from",
                NAME,
            ),
            &[],
            b"",
        )
        .await;
    expect(&r, StatusCode::CREATED, "mount from another repository");
    let mounted = location(&r);
    assert_eq!(mounted, format!("/v2/{CROSSMOUNT}/blobs/{}", d.blob_a.digest));
    let r = c.get(&mounted, None).await;
    expect(&r, StatusCode::OK, "GET the mounted blob");
    assert_eq!(r.body, d.blob_a.bytes);
    // What the suite checks when the mount answers 202: a session in the target.
    let r = c
        .send(
            Method::POST,
            &with_query(&with_query(&cross_uploads, "mount", &d.dummy), "from", NAME),
            &[],
            b"",
        )
        .await;
    expect(&r, StatusCode::ACCEPTED, "mount of a blob the source lacks");
    assert!(location(&r).starts_with(&cross_uploads));
    // No automatic mount without `from`, even of a blob the target now has.
    let r = c
        .send(
            Method::POST,
            &with_query(&cross_uploads, "mount", &d.blob_a.digest),
            &[],
            b"",
        )
        .await;
    expect(&r, StatusCode::ACCEPTED, "mount without from, no automatic mount");

    // Manifest upload.
    let r = c.get(&Client::manifest_path(NONEXISTENT_MANIFEST), None).await;
    expect(&r, StatusCode::NOT_FOUND, "GET nonexistent manifest");
    for i in 0..4 {
        let r = c
            .put_manifest(&format!("test{i}"), OCI_MANIFEST, &d.manifests[1])
            .await;
        expect(&r, StatusCode::CREATED, &format!("PUT manifest as test{i}"));
        assert_eq!(location(&r), Client::manifest_path(&d.manifests[1].digest));
    }
    let r = c
        .put_manifest(EMPTY_LAYER_TAG, OCI_MANIFEST, &d.empty_layer_manifest)
        .await;
    expect(&r, StatusCode::CREATED, "PUT a manifest with no layers");
    location(&r);
    let r = c
        .get(&Client::manifest_path(&d.manifests[1].digest), Some(OCI_MANIFEST))
        .await;
    expect(&r, StatusCode::OK, "GET manifest by digest");

    // Teardown.
    let delete_manifests = async {
        c.delete(
            &Client::manifest_path(&d.manifests[1].digest),
            StatusCode::ACCEPTED,
            "delete manifest",
        )
        .await;
        c.delete(
            &Client::manifest_path(&d.empty_layer_manifest.digest),
            StatusCode::ACCEPTED,
            "delete the manifest with no layers",
        )
        .await;
    };
    let delete_blobs = async {
        c.delete(
            &Client::blob_path(&d.configs[1].digest),
            StatusCode::ACCEPTED,
            "delete config",
        )
        .await;
        c.delete(
            &Client::blob_path(&d.layer.digest),
            StatusCode::ACCEPTED,
            "delete layer",
        )
        .await;
    };
    if manifest_first {
        delete_manifests.await;
        delete_blobs.await;
    } else {
        delete_blobs.await;
        delete_manifests.await;
    }
    let r = c.tags().await;
    expect(&r, StatusCode::OK, "tags after teardown");
    assert_eq!(tag_list(&r), Vec::<String>::new(), "tags go with their manifest");
}

/// `03_discovery_test.go`.
async fn content_discovery(manifest_first: bool) {
    content_discovery_with(Client::new(), manifest_first).await;
}

async fn content_discovery_with(c: Client, manifest_first: bool) {
    let d = &c.d;
    let subject = &d.manifests[4].digest;

    // Setup: four tags on one manifest.
    c.populate_blob(&d.configs[2], "populate config[2]").await;
    c.populate_blob(&d.layer, "populate layer").await;
    for i in 0..4 {
        let r = c
            .put_manifest(&format!("test{i}"), OCI_MANIFEST, &d.manifests[2])
            .await;
        expect(&r, StatusCode::CREATED, &format!("populate tag test{i}"));
    }
    let r = c.tags().await;
    expect(&r, StatusCode::OK, "tags after setup");
    assert_eq!(tag_list(&r), ["test0", "test1", "test2", "test3"]);

    // References setup: referrers pushed before and after their subject, and one whose
    // subject never arrives. Each PUT with a subject answers OCI-Subject.
    c.populate_blob(&d.empty_json, "populate the empty JSON blob")
        .await;
    c.populate_blob(&d.ref_blob_a, "populate reference blob A").await;
    for (m, media_type, step) in [
        (&d.a_config, OCI_MANIFEST, "PUT artifact A (config media type)"),
        (&d.a_layer, OCI_MANIFEST, "PUT artifact A (artifactType)"),
        (&d.index, OCI_INDEX, "PUT artifact index"),
    ] {
        let r = c.put_manifest(&m.digest, media_type, m).await;
        expect(&r, StatusCode::CREATED, step);
        assert_eq!(r.header("oci-subject"), Some(subject.as_str()), "{step}");
    }
    c.populate_blob(&d.configs[4], "populate config[4]").await;
    c.populate_blob(&d.layer, "populate layer again").await;
    let r = c.put_manifest(TAG, OCI_MANIFEST, &d.manifests[4]).await;
    expect(&r, StatusCode::CREATED, "populate the subject manifest");
    c.populate_blob(&d.ref_blob_b, "populate reference blob B").await;
    for (m, subj, step) in [
        (&d.b_config, subject, "PUT artifact B (config media type)"),
        (&d.b_layer, subject, "PUT artifact B (artifactType)"),
        (
            &d.c_layer,
            &d.manifests[3].digest,
            "PUT artifact C (absent subject)",
        ),
    ] {
        let r = c.put_manifest(&m.digest, OCI_MANIFEST, m).await;
        expect(&r, StatusCode::CREATED, step);
        assert_eq!(r.header("oci-subject"), Some(subj.as_str()), "{step}");
    }

    // Listing tags.
    let r = c.tags().await;
    expect(&r, StatusCode::OK, "list tags");
    let all = tag_list(&r);
    assert_eq!(all, [TAG, "test0", "test1", "test2", "test3"]);
    let n = all.len() / 2;
    let r = c.get(&format!("/v2/{NAME}/tags/list?n={n}"), None).await;
    expect(&r, StatusCode::OK, "list tags with n");
    let first = tag_list(&r);
    assert_eq!(first, all[..n]);
    let r = c
        .get(&format!("/v2/{NAME}/tags/list?n={n}&last={}", first[n - 1]), None)
        .await;
    expect(&r, StatusCode::OK, "list tags with n and last");
    assert_eq!(tag_list(&r), all[n..2 * n]);

    // Listing referrers.
    let referrers = |r: &Resp| -> Vec<serde_json::Value> {
        assert_eq!(r.header("content-type"), Some(OCI_INDEX));
        r.json()["manifests"].as_array().cloned().unwrap_or_default()
    };
    let r = c.get(&format!("/v2/{NAME}/referrers/{}", d.dummy), None).await;
    expect(&r, StatusCode::OK, "referrers of a nonexistent blob");
    assert!(referrers(&r).is_empty());
    let r = c.get(&format!("/v2/{NAME}/referrers/{subject}"), None).await;
    expect(&r, StatusCode::OK, "referrers of the subject");
    let list = referrers(&r);
    let mut digests: Vec<&str> = list.iter().map(|m| m["digest"].as_str().unwrap()).collect();
    digests.sort();
    let mut want: Vec<&str> = [&d.a_config, &d.a_layer, &d.index, &d.b_config, &d.b_layer]
        .iter()
        .map(|b| b.digest.as_str())
        .collect();
    want.sort();
    assert_eq!(digests, want);
    for m in &list {
        let digest = m["digest"].as_str().unwrap();
        let annotations = m["annotations"].as_object().unwrap();
        assert_eq!(annotations.len(), 1, "{m}");
        assert_eq!(annotations[ANNOTATION], d.annotation_of(digest), "{m}");
    }
    let r = c
        .get(
            &format!("/v2/{NAME}/referrers/{subject}?artifactType={TYPE_A}"),
            None,
        )
        .await;
    expect(&r, StatusCode::OK, "referrers filtered by artifactType");
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
    let list = referrers(&r);
    let mut digests: Vec<&str> = list.iter().map(|m| m["digest"].as_str().unwrap()).collect();
    digests.sort();
    let mut want = vec![d.a_config.digest.as_str(), d.a_layer.digest.as_str()];
    want.sort();
    assert_eq!(digests, want);
    for m in &list {
        assert_eq!(m["artifactType"], TYPE_A, "{m}");
        assert_eq!(
            m["annotations"][ANNOTATION],
            d.annotation_of(m["digest"].as_str().unwrap())
        );
    }
    let r = c
        .get(&format!("/v2/{NAME}/referrers/{}", d.manifests[3].digest), None)
        .await;
    expect(&r, StatusCode::OK, "referrers of a manifest never pushed");
    let list = referrers(&r);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["digest"], d.c_layer.digest.as_str());

    // Teardown. Manifests: the suite's list, then (in the references teardown) the
    // referrers and the subject again, already gone.
    let manifests = [
        &d.index,
        &d.manifests[2],
        &d.manifests[4],
        &d.a_config,
        &d.a_layer,
        &d.b_config,
        &d.b_layer,
        &d.c_layer,
    ];
    let again = [
        &d.index,
        &d.a_config,
        &d.a_layer,
        &d.manifests[4],
        &d.b_config,
        &d.b_layer,
    ];
    if manifest_first {
        c.delete_manifests(&manifests, StatusCode::ACCEPTED).await;
    }
    c.delete(
        &Client::blob_path(&d.configs[2].digest),
        StatusCode::ACCEPTED,
        "delete config[2]",
    )
    .await;
    c.delete(
        &Client::blob_path(&d.layer.digest),
        StatusCode::ACCEPTED,
        "delete layer",
    )
    .await;
    if !manifest_first {
        c.delete_manifests(&manifests, StatusCode::ACCEPTED).await;
    }
    // References teardown.
    if manifest_first {
        c.delete_manifests(&again, StatusCode::NOT_FOUND).await;
    }
    for (b, step) in [
        (&d.configs[4], "delete config[4]"),
        (&d.ref_blob_a, "delete reference blob A"),
        (&d.ref_blob_b, "delete reference blob B"),
        (&d.empty_json, "delete the empty JSON blob"),
    ] {
        c.delete(&Client::blob_path(&b.digest), StatusCode::ACCEPTED, step)
            .await;
    }
    if !manifest_first {
        c.delete_manifests(&again, StatusCode::NOT_FOUND).await;
    }
    let r = c.get(&format!("/v2/{NAME}/referrers/{subject}"), None).await;
    expect(&r, StatusCode::OK, "referrers after teardown");
    assert!(referrers(&r).is_empty());
    let r = c.tags().await;
    assert_eq!(tag_list(&r), Vec::<String>::new());
}

/// `04_management_test.go`.
async fn content_management() {
    content_management_with(Client::new()).await;
}

async fn content_management_with(c: Client) {
    let d = &c.d;
    let m = &d.manifests[3];

    // Setup.
    c.populate_blob(&d.configs[3], "populate config[3]").await;
    c.populate_blob(&d.layer, "populate layer").await;
    let r = c.put_manifest(TAG, OCI_MANIFEST, m).await;
    expect(&r, StatusCode::CREATED, "populate tag");
    let r = c.tags().await;
    expect(&r, StatusCode::OK, "tags before deleting");
    let num_tags = tag_list(&r).len();
    assert_eq!(num_tags, 1);

    // Manifest delete: the tag, then the manifest it pointed at (still there).
    c.delete(&Client::manifest_path(TAG), StatusCode::ACCEPTED, "delete tag")
        .await;
    let r = c.get(&Client::manifest_path(TAG), None).await;
    expect(&r, StatusCode::NOT_FOUND, "GET deleted tag");
    c.delete(
        &Client::manifest_path(&m.digest),
        StatusCode::ACCEPTED,
        "delete manifest by digest",
    )
    .await;
    let r = c.get(&Client::manifest_path(&m.digest), None).await;
    expect(&r, StatusCode::NOT_FOUND, "GET deleted manifest");
    assert_eq!(r.code(), "MANIFEST_UNKNOWN");
    let r = c.tags().await;
    expect(&r, StatusCode::OK, "tags after deleting");
    assert_eq!(tag_list(&r).len(), num_tags - 1);

    // Blob delete.
    c.delete(
        &Client::blob_path(&d.configs[3].digest),
        StatusCode::ACCEPTED,
        "delete config blob",
    )
    .await;
    c.delete(
        &Client::blob_path(&d.layer.digest),
        StatusCode::ACCEPTED,
        "delete layer blob",
    )
    .await;
    let r = c.get(&Client::blob_path(&d.configs[3].digest), None).await;
    expect(&r, StatusCode::NOT_FOUND, "GET deleted blob");
    assert_eq!(r.code(), "BLOB_UNKNOWN");
    // Deleting again: unknown.
    c.delete(
        &Client::blob_path(&d.configs[3].digest),
        StatusCode::NOT_FOUND,
        "delete deleted blob",
    )
    .await;
    let r = c
        .send(Method::DELETE, &Client::manifest_path(&m.digest), &[], b"")
        .await;
    expect(&r, StatusCode::NOT_FOUND, "delete deleted manifest");
}

/// Every workflow, both teardown orders, against the registry at `addr` (used by the
/// scale-out tests: the same requests through a load balancer over replicas).
pub(crate) async fn all_workflows_against(addr: &str) {
    for manifest_first in [true, false] {
        pull_with(Client::remote(addr), manifest_first).await;
        push_with(Client::remote(addr), manifest_first).await;
        content_discovery_with(Client::remote(addr), manifest_first).await;
    }
    content_management_with(Client::remote(addr)).await;
}

#[tokio::test]
async fn pull_workflow() {
    pull(true).await;
    pull(false).await;
}

#[tokio::test]
async fn push_workflow() {
    push(true).await;
    push(false).await;
}

#[tokio::test]
async fn content_discovery_workflow() {
    content_discovery(true).await;
    content_discovery(false).await;
}

#[tokio::test]
async fn content_management_workflow() {
    // The workflow has no teardown, so no order to vary.
    content_management().await;
}
