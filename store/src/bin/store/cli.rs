//! Command line of the `store` admin tool (clap derive), turned into a typed command.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "store", version, about = "Inspect and maintain a strata store")]
pub struct Cli {
    /// Store root directory [default: /var/lib/strata as root, else $XDG_DATA_HOME/strata]
    #[arg(long, global = true, env = "STRATA_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// A registry-server config file: its `root`, `[storage]` and `[metadata]` say where the
    /// store is (e.g. S3 + PostgreSQL shared by several replicas)
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List images (one row per tag, plus untagged images)
    Ls {
        /// Print a JSON array instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Print what an ID, unique ID prefix or reference names, as JSON
    Inspect {
        #[arg(value_name = "ID-OR-PREFIX-OR-REF")]
        target: String,
    },
    /// Show an image's build steps, newest first (like `docker history`)
    History {
        #[arg(value_name = "ID-OR-PREFIX-OR-REF")]
        image: String,
        /// Print a JSON array instead of a table
        #[arg(long)]
        json: bool,
        /// Show the full image ID and CREATED BY text
        #[arg(long)]
        no_trunc: bool,
    },
    /// Tag an image: point DST at the manifest SRC names
    Tag { src: String, dst: String },
    /// Remove a tag, or an image and all its tags; space is reclaimed by `gc`
    Rm {
        #[arg(value_name = "ID-OR-REF")]
        target: String,
    },
    /// Remove unreferenced blobs and layers older than the grace period
    Gc {
        /// Keep unreferenced content younger than this (e.g. 0s, 10m, 1h)
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        grace: Duration,
        /// Report what would be removed without removing it
        #[arg(long)]
        dry_run: bool,
        /// When registry-server holds the store, wait for it to stop instead of asking it
        /// to collect (SIGUSR1, with its own grace period)
        #[arg(long)]
        wait: bool,
    },
    /// Re-hash every blob and check metadata both ways; non-zero exit on any fault
    Fsck {
        /// Quarantine corrupt blobs and rebuild what can be derived
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show disk usage, including what layer file sharing saves
    Du {
        #[arg(long)]
        json: bool,
    },
}

/// Parses `90`, `90s`, `15m`, `2h`, `1d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("invalid duration unit in {s:?} (use s, m, h or d)")),
    };
    Ok(Duration::from_secs(secs))
}
