//! `puller fetch`: an image from a registry into the store — manifest negotiation,
//! platform selection from an index, concurrent blob downloads streamed into store
//! ingests, then the manifest, the tag and the unpacked layers.
//!
//! The pull-pool: each digest is downloaded once. In this process the list is
//! de-duplicated; across processes, downloads go straight into the blob store without
//! the store's write lock, so concurrent fetches run side by side, and two that want the
//! same blob meet on its ingest's file lock: the second waits, then finds it committed.
//! Only the metadata step (manifest, tag, unpack) takes the store's write lock.

use std::collections::HashSet;
use std::path::Path;

use futures::StreamExt;
use strata_client::{BlobProgress, Client, ClientError, Credentials};
use strata_store::{
    BlobStore, Config, Digest, ImageRef, LayerStore, MAX_MANIFEST_BYTES, Manifest, Platform, Store,
    StoreError, chain_id,
};
use tokio::sync::watch;

/// What can go wrong in a fetch.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("manifest {digest}: {source}")]
    Manifest {
        digest: Digest,
        #[source]
        source: strata_store::ManifestError,
    },
    #[error("{reference} has no image for {platform} (it has: {available})")]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("{reference}: an index inside an index is not supported")]
    NestedIndex { reference: String },
    #[error("worker task failed: {0}")]
    Task(String),
}

/// How to fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// The platform to take from an index (default: this host's).
    pub platform: Platform,
    /// Speak plain HTTP (the default anyway for loopback registries).
    pub plain_http: bool,
    /// Concurrent blob downloads.
    pub jobs: usize,
    pub credentials: Option<Credentials>,
    /// Draw a progress bar per blob on stderr (for a terminal).
    pub progress: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            platform: Platform::host(),
            plain_http: false,
            jobs: 4,
            credentials: None,
            progress: false,
        }
    }
}

/// What a fetch did.
#[derive(Debug, Clone)]
pub struct FetchReport {
    /// The image manifest stored (for an index: the selected platform's).
    pub manifest: Digest,
    /// The image ID (config digest).
    pub image_id: Digest,
    pub blobs_fetched: usize,
    pub bytes_fetched: u64,
    pub blobs_present: usize,
    pub layers: usize,
}

/// The registry base URL for a reference: plain HTTP for loopback registries or when
/// asked, HTTPS otherwise; Docker Hub's API host for `docker.io`.
pub fn registry_url(reference: &ImageRef, plain_http: bool) -> String {
    let host = match reference.registry.as_str() {
        "docker.io" => "registry-1.docker.io",
        other => other,
    };
    let scheme = if plain_http || reference.is_loopback_registry() {
        "http"
    } else {
        "https"
    };
    format!("{scheme}://{host}")
}

/// Fetches `reference` into `store`: verified blobs, the manifest, the tag (when the
/// reference has one), the unpacked layers.
pub async fn fetch(
    root: &Path,
    reference: &ImageRef,
    opts: &FetchOptions,
) -> Result<FetchReport, FetchError> {
    let blobs = BlobStore::open(root).map_err(StoreError::from)?;
    let client = Client::new(
        &registry_url(reference, opts.plain_http),
        opts.credentials.clone(),
    )?;
    let repo = reference.repository.as_str();
    let wanted = match (&reference.digest, &reference.tag) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.clone(),
        (None, None) => "latest".to_string(),
    };
    let mut fetched = client.get_manifest(repo, &wanted).await?;
    let mut manifest = parse(&fetched.bytes, &fetched.media_type, fetched.digest)?;
    if let Manifest::Index { .. } = &manifest {
        let Some(child) = manifest.select_platform(&opts.platform) else {
            return Err(FetchError::NoPlatform {
                reference: reference.to_string(),
                platform: opts.platform.to_string(),
                available: platforms(&manifest),
            });
        };
        fetched = client.get_manifest(repo, &child.digest.to_string()).await?;
        manifest = parse(&fetched.bytes, &fetched.media_type, fetched.digest)?;
        if let Manifest::Index { .. } = manifest {
            return Err(FetchError::NestedIndex {
                reference: reference.to_string(),
            });
        }
    }
    let Manifest::Image { config, layers, .. } = &manifest else {
        unreachable!("an index was resolved to an image manifest above")
    };

    // The config first (small): its diff IDs let each layer be unpacked as soon as its
    // blob is in, while the other downloads go on. Then the layers, each digest once,
    // `jobs` at a time.
    let bars = opts.progress.then(indicatif::MultiProgress::new);
    let config_committed = download(&client, repo, &config.digest, &blobs, bars.as_ref()).await?;
    let chains = chains_to_unpack(&blobs, &config.digest, layers.len());
    let layer_store = LayerStore::open(root).map_err(StoreError::from)?;
    let mut seen = HashSet::from([config.digest]);
    let wanted: Vec<Digest> = layers
        .iter()
        .map(|r| r.digest)
        .filter(|d| seen.insert(*d))
        .collect();
    let results: Vec<Result<(Digest, u64, bool), FetchError>> = futures::stream::iter(wanted)
        .map(|digest| {
            let (client, blobs, bars, layer_store) = (&client, &blobs, &bars, &layer_store);
            let chains: Vec<(Digest, Digest)> = layers
                .iter()
                .zip(&chains)
                .filter(|(l, _)| l.digest == digest)
                .filter_map(|(_, c)| *c)
                .collect();
            async move {
                let committed = download(client, repo, &digest, blobs, bars.as_ref()).await?;
                for (chain, diff_id) in chains {
                    unpack_early(
                        layer_store,
                        blobs,
                        chain,
                        diff_id,
                        committed.digest,
                        committed.size,
                    )
                    .await;
                }
                Ok((digest, committed.size, committed.written))
            }
        })
        .buffer_unordered(opts.jobs.max(1))
        .collect()
        .await;
    let results = std::iter::once(Ok((
        config.digest,
        config_committed.size,
        config_committed.written,
    )))
    .chain(results);
    let mut report = FetchReport {
        manifest: fetched.digest,
        image_id: config.digest,
        blobs_fetched: 0,
        bytes_fetched: 0,
        blobs_present: 0,
        layers: layers.len(),
    };
    let mut stored = Vec::new();
    for r in results {
        let (digest, size, written) = r?;
        stored.push((digest, size));
        if written {
            report.blobs_fetched += 1;
            report.bytes_fetched += size;
        } else {
            report.blobs_present += 1;
        }
    }

    // The manifest, the tag, the layers: under the store's write lock.
    let (reference, bytes, media_type) = (reference.clone(), fetched.bytes.clone(), fetched.media_type);
    let image_id = config.digest;
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<(), FetchError> {
        let store = Store::open(&root)?;
        for (digest, size) in stored {
            store.record_blob(&digest, size)?;
        }
        let (digest, _) = store.add_manifest(&bytes, Some(&media_type), None)?;
        if reference.tag.is_some() {
            store.tag(&reference, &digest)?;
        }
        store.ensure_unpacked(&image_id)?;
        Ok(())
    })
    .await
    .map_err(|e| FetchError::Task(e.to_string()))??;
    Ok(report)
}

fn parse(bytes: &[u8], media_type: &str, digest: Digest) -> Result<Manifest, FetchError> {
    Manifest::parse(bytes, Some(media_type)).map_err(|source| FetchError::Manifest { digest, source })
}

fn platforms(index: &Manifest) -> String {
    let Manifest::Index { manifests, .. } = index else {
        return String::new();
    };
    let names: Vec<String> = manifests
        .iter()
        .filter_map(|m| m.platform.as_ref().map(ToString::to_string))
        .collect();
    names.join(", ")
}

/// Attempts of one blob download before giving up.
const ATTEMPTS: u32 = 4;

/// Runs `attempt` until it succeeds, fails for good, or `ATTEMPTS` are used, waiting
/// 250 ms, 500 ms, 1 s between tries. A download that broke off resumes where its
/// ingest stopped (the client asks for the rest with a Range request).
async fn with_retries<T, F, Fut>(digest: &Digest, mut attempt: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut delay = std::time::Duration::from_millis(250);
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(e) if e.is_transient() && tries < ATTEMPTS => {
                tracing::warn!(%digest, "attempt {tries} failed, retrying in {delay:?}: {e}");
                tokio::time::sleep(delay).await;
                delay *= 2;
                tries += 1;
            }
            result => return result,
        }
    }
}

/// A progress bar for one blob download, following its progress until it is stored (a
/// failed attempt leaves the bar for the retry).
async fn draw(bars: indicatif::MultiProgress, digest: Digest, mut progress: watch::Receiver<BlobProgress>) {
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} {bar:30} {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    let bar = bars.add(indicatif::ProgressBar::new(0).with_style(style));
    bar.set_prefix(digest.hex()[..12].to_string());
    while progress.changed().await.is_ok() {
        let p = progress.borrow_and_update().clone();
        if let Some(size) = p.size {
            bar.set_length(size);
        }
        bar.set_position(p.written);
        match p.done {
            Some(Ok(())) => {
                bar.finish_with_message("done");
                return;
            }
            Some(Err(_)) => bar.set_message("retrying"),
            None => bar.set_message(""),
        }
    }
    bar.abandon();
}

/// One blob download with retries (and a progress bar when asked).
async fn download(
    client: &Client,
    repo: &str,
    digest: &Digest,
    blobs: &BlobStore,
    bars: Option<&indicatif::MultiProgress>,
) -> Result<strata_store::Committed, FetchError> {
    let progress = watch::Sender::new(BlobProgress::default());
    if let Some(bars) = bars {
        tokio::spawn(draw(bars.clone(), *digest, progress.subscribe()));
    }
    let committed = with_retries(digest, || {
        client.fetch_blob_following(repo, digest, blobs, progress.clone())
    })
    .await?;
    tracing::info!(%digest, bytes = committed.size, written = committed.written, "blob");
    Ok(committed)
}

/// The (chain ID, diff ID) of each layer, from the stored config; `None`s when the
/// config does not parse or does not match the manifest (the unpack under the store's
/// lock then reports it).
fn chains_to_unpack(blobs: &BlobStore, config: &Digest, layers: usize) -> Vec<Option<(Digest, Digest)>> {
    let diff_ids = blobs
        .read_small(config, MAX_MANIFEST_BYTES)
        .ok()
        .and_then(|b| Config::parse(&b).ok())
        .map(|c| c.diff_ids)
        .filter(|d| d.len() == layers);
    let Some(diff_ids) = diff_ids else {
        return vec![None; layers];
    };
    let mut parent = None;
    diff_ids
        .iter()
        .map(|d| {
            let chain = chain_id(parent.as_ref(), d);
            parent = Some(chain);
            Some((chain, *d))
        })
        .collect()
}

/// Unpacks a layer as soon as its blob is stored, while other downloads go on. Only the
/// layer directory is made here (the layer store locks per chain ID); it is recorded
/// under the store's write lock afterwards, which finds it done. A failure is left for
/// that step to report.
async fn unpack_early(
    layers: &LayerStore,
    blobs: &BlobStore,
    chain: Digest,
    diff_id: Digest,
    blob: Digest,
    size: u64,
) {
    let (layers, blobs) = (layers.clone(), blobs.clone());
    let result = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let file = blobs.open_blob(&blob).map_err(|e| e.to_string())?;
        let file = std::io::BufReader::with_capacity(1 << 20, file);
        layers
            .unpack_blob(&chain, &diff_id, (blob, size), file)
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    if let Ok(Err(e)) = result {
        tracing::debug!(%chain, "early unpack failed (retried under the store lock): {e}");
    }
}
