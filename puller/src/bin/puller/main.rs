//! `puller`: fetch, push, save and load container images against a strata store.

mod cli;

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;
use strata_store::{Store, default_root};

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
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
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
        Command::Fetch { .. } | Command::Push { .. } => {
            bail!("registry fetch and push are not available in this build yet (use `puller load`)")
        }
    }
    Ok(())
}
