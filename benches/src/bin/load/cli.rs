//! The load tool's command line (the only clap code of `load`).

use std::time::Duration;

use clap::Parser;

/// Drives one registry with many concurrent clients for a bounded time and reports
/// latency percentiles per kind of request, errors, and the server's RSS and open file
/// descriptors during and after the run.
#[derive(Parser, Debug)]
pub struct Cli {
    /// The registry, http://HOST:PORT.
    #[arg(long)]
    pub base: String,
    /// The server's process ID, to sample its RSS and open descriptors.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 500)]
    pub clients: usize,
    /// How long the clients run (seconds).
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// How long to keep sampling the idle server after the clients are gone (seconds).
    #[arg(long, default_value_t = 10)]
    pub settle: u64,
    /// Repositories the clients push to and pull from.
    #[arg(long, default_value_t = 40)]
    pub repos: usize,
    /// Write the figures as JSON here too.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Slow clients of each kind beside the others: slowloris heads, trickled upload
    /// bodies, stalled upload bodies, and readers that never read a large blob.
    #[arg(long, default_value_t = 0)]
    pub slow: usize,
}

/// The run's settings, typed.
#[derive(Debug, Clone)]
pub struct Settings {
    pub base: String,
    pub pid: Option<u32>,
    pub clients: usize,
    pub duration: Duration,
    pub settle: Duration,
    pub repos: usize,
    pub json: Option<std::path::PathBuf>,
    pub slow: usize,
}

impl Cli {
    pub fn into_settings(self) -> Settings {
        Settings {
            base: self.base.trim_end_matches('/').to_string(),
            pid: self.pid,
            clients: self.clients.max(1),
            duration: Duration::from_secs(self.duration),
            settle: Duration::from_secs(self.settle),
            repos: self.repos.max(1),
            json: self.json,
            slow: self.slow,
        }
    }
}
