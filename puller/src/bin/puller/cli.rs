//! Command line of `puller` (clap derive), turned into a typed command.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "puller",
    version,
    about = "Fetch, push, save and load container images"
)]
pub struct Cli {
    /// Store root directory [default: /var/lib/strata as root, else $XDG_DATA_HOME/strata]
    #[arg(long, global = true, env = "STRATA_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Docker,
    Oci,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pull an image from a registry into the store (or into an archive with --output)
    Fetch {
        #[arg(value_name = "REF")]
        reference: String,
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Archive format for --output (the tar written is both a docker-save archive and
        /// an OCI layout, so either is satisfied)
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// OS/ARCH[/VARIANT] to select from a multi-platform index
        #[arg(long)]
        platform: Option<String>,
        /// Speak plain HTTP to the registry (the default for loopback registries)
        #[arg(long)]
        plain_http: bool,
        /// Concurrent blob downloads
        #[arg(long, default_value_t = 4)]
        jobs: usize,
    },
    /// Push an image from the store to a registry (the reference names both: tag it in
    /// the store first, as with docker)
    Push {
        #[arg(value_name = "REF")]
        reference: String,
        /// Speak plain HTTP to the registry (the default for loopback registries)
        #[arg(long)]
        plain_http: bool,
        /// Concurrent blob uploads
        #[arg(long, default_value_t = 4)]
        jobs: usize,
    },
    /// Write images to one tar that is both a docker-save archive and an OCI layout
    /// (gzip or zstd compressed when FILE ends in .gz or .zst)
    Save {
        #[arg(value_name = "REF", required = true)]
        references: Vec<String>,
        #[arg(long, short, value_name = "FILE")]
        output: PathBuf,
    },
    /// Load a docker-save tar, OCI archive tar or OCI layout directory (optionally compressed)
    Load {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}
