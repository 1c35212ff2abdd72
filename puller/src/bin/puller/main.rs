//! `puller`: fetch, push, save and load container images against a strata store.

mod cli;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use strata_puller::{FetchOptions, PushOptions};
use strata_store::{ImageRef, Platform, Store, default_root};

use cli::{Cli, Command};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", strata_store::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = cli.root.unwrap_or_else(default_root);
    let open = || Store::open(&root).with_context(|| format!("open store {}", root.display()));
    match cli.command {
        Command::Load { file } => {
            let store = open()?;
            let report = strata_puller::load_file(&store, &file)
                .with_context(|| format!("load {}", file.display()))?;
            for img in &report.images {
                let id = img
                    .id
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| img.manifest.to_string());
                if img.tags.is_empty() {
                    println!("Loaded image ID: {id}");
                }
                for t in &img.tags {
                    println!("Loaded image: {t} ({id})");
                }
            }
            eprintln!(
                "{} blobs written ({} bytes), {} already present, {} layers unpacked",
                report.blobs_written, report.bytes_written, report.blobs_existing, report.layers_unpacked
            );
        }
        Command::Save { references, output } => {
            let store =
                Store::open_read_only(&root).with_context(|| format!("open store {}", root.display()))?;
            let report = strata_puller::save_file(&store, &references, &output)
                .with_context(|| format!("save to {}", output.display()))?;
            eprintln!(
                "saved {} images, {} blobs ({} bytes) to {}",
                report.images,
                report.blobs,
                report.bytes,
                output.display()
            );
        }
        Command::Fetch {
            reference,
            output,
            format,
            platform,
            plain_http,
            jobs,
        } => {
            let image = ImageRef::parse(&reference).with_context(|| format!("reference {reference}"))?;
            let platform = match platform {
                Some(p) => {
                    Platform::parse(&p).with_context(|| format!("platform {p:?} is not OS/ARCH[/VARIANT]"))?
                }
                None => Platform::host(),
            };
            let opts = FetchOptions {
                platform,
                plain_http,
                jobs,
                credentials: strata_puller::credentials_for(&image.registry),
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            let report = runtime()?
                .block_on(strata_puller::fetch(&root, &image, &opts))
                .with_context(|| format!("fetch {image}"))?;
            println!("{image}: {} (image {})", report.manifest, report.image_id);
            eprintln!(
                "{} blobs fetched ({} bytes), {} already present, {} layers",
                report.blobs_fetched, report.bytes_fetched, report.blobs_present, report.layers
            );
            if let Some(output) = output {
                // The tar is both a docker-save archive and an OCI layout: it serves
                // either `--format`.
                let _: Option<cli::Format> = format;
                let store =
                    Store::open_read_only(&root).with_context(|| format!("open store {}", root.display()))?;
                strata_puller::save_file(&store, &[image.to_string()], &output)
                    .with_context(|| format!("save to {}", output.display()))?;
                eprintln!("saved {image} to {}", output.display());
            }
        }
        Command::Push {
            reference,
            plain_http,
            jobs,
        } => {
            let image = ImageRef::parse(&reference).with_context(|| format!("reference {reference}"))?;
            let opts = PushOptions {
                plain_http,
                jobs,
                credentials: strata_puller::credentials_for(&image.registry),
            };
            let store = Arc::new(open()?);
            let report = runtime()?
                .block_on(strata_puller::push(store, &image, &opts))
                .with_context(|| format!("push {image}"))?;
            if let Some(d) = report.manifest {
                println!("{image}: digest: {d}");
            }
            eprintln!(
                "{} blobs pushed ({} bytes), {} already there, {} manifests",
                report.blobs_pushed, report.bytes_pushed, report.blobs_present, report.manifests
            );
        }
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")
}
