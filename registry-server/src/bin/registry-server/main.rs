//! `registry-server`: serve a strata store over the OCI distribution API.

mod cli;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use strata_registry::{AppState, Config, serve};
use strata_store::Store;
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = cli::Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {}", strata_store::error_chain(e.as_ref()));
        std::process::exit(1);
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.log.level.as_deref().unwrap_or("info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log.json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Raises the open-file limit to its hard maximum: every connection, blob being served,
/// upload and RocksDB table holds a descriptor, and the usual soft limit (1024) is far
/// below what hundreds of clients need (Go's runtime does the same for Distribution).
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    // No maximum (infinity) is not a number the kernel takes for NOFILE: cap at nr_open's default.
    let want = limit.maximum.unwrap_or(1 << 20);
    if let Some(current) = limit.current.filter(|c| *c < want) {
        limit.current = Some(want);
        match setrlimit(Resource::Nofile, limit) {
            Ok(()) => tracing::debug!(before = current, now = want, "raised the open-file limit"),
            Err(e) => tracing::warn!("cannot raise the open-file limit from {current}: {e}"),
        }
    }
}

/// Blob bodies move through 1–2 MiB buffers, allocated on blocking threads and freed on
/// the runtime's. glibc serves such sizes by `mmap` only until the first is freed, then
/// raises its threshold and keeps them in its per-thread arenas, where fragmentation holds
/// them: 500 clients left the server at 9× its idle RSS for good (`benches/scripts/load.sh`,
/// RELIABILITY.md). A fixed threshold keeps every buffer of 256 KiB and more on its own
/// mapping, returned to the system when freed.
fn keep_large_buffers_mapped() {
    const THRESHOLD: libc::c_int = 256 << 10;
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets allocator parameters (both are documented options with a
    // value in range); it is called before the runtime starts any thread.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD) == 1
    };
    if !ok {
        tracing::debug!("mallopt refused the mmap threshold");
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<()> {
    let config = cli.into_config()?;
    init_logging(&config);
    keep_large_buffers_mapped();
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(256)
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async move {
        let store_config = config.store_config()?;
        let store = tokio::task::spawn_blocking(move || Store::open_with(&store_config))
            .await?
            .with_context(|| format!("open store {}", config.root.display()))?;
        let state = AppState::new(Arc::new(store), config.clone()).context("set up the server")?;
        if let Some(tls) = &config.tls {
            strata_registry::tls_acceptor(tls).context("load TLS certificate and key")?;
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listen on {}", config.listen))?;
        tracing::info!(
            listen = %listener.local_addr()?,
            root = %config.root.display(),
            storage = state.store().content().kind(),
            shared = state.store().is_shared(),
            registry = state.registry_name(),
            tls = config.tls.is_some(),
            "registry-server ready"
        );
        tokio::spawn(trim_when_idle(state.metrics().clone()));
        serve(listener, state, shutdown_signal()).await.context("serve")?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Once no request has been answered for 10 s after a busy spell, gives the memory the
/// allocator holds free (in its arenas, between live objects) back to the system: after
/// 500 clients that is ~40 MiB of the server's ~80 MiB (RELIABILITY.md, Load).
async fn trim_when_idle(metrics: Arc<strata_registry::Metrics>) {
    let mut seen = metrics.requests_answered();
    let mut trimmed = true;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        let now = metrics.requests_answered();
        if now != seen {
            seen = now;
            trimmed = false;
        } else if !trimmed {
            trimmed = true;
            #[allow(unsafe_code)]
            // SAFETY: malloc_trim only releases free memory; glibc takes its own arena
            // locks, so it is safe beside other threads' allocations.
            let trim = || unsafe { libc::malloc_trim(0) };
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
