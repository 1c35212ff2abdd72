//! Command-line flags of `registry-server`, turned into a typed `Config` at once.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use strata_registry::{Config, ProxyConfig};

/// An OCI distribution registry over a strata store.
#[derive(Debug, Parser)]
#[command(name = "registry-server", version, about)]
pub struct Cli {
    /// Store root directory [default: /var/lib/strata for root, else $XDG_DATA_HOME/strata]
    #[arg(long, env = "STRATA_ROOT")]
    pub root: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:5000]
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// A TOML configuration file (keys mirror the flags; flags win)
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Registry host name tags are stored under [default: the listen address]
    #[arg(long)]
    pub registry_name: Option<String>,
    /// Log one JSON object per line
    #[arg(long)]
    pub log_json: bool,
    /// Pull-through cache mode: the upstream registry (`http://host:port`); pushes are refused
    #[arg(long)]
    pub proxy_remote_url: Option<String>,
    /// User name for the upstream registry
    #[arg(long, requires = "proxy_password")]
    pub proxy_username: Option<String>,
    /// Password for the upstream registry
    #[arg(
        long,
        env = "STRATA_PROXY_PASSWORD",
        hide_env_values = true,
        requires = "proxy_username"
    )]
    pub proxy_password: Option<String>,
}

impl Cli {
    /// The configuration: the file's (if any), overridden by flags.
    pub fn into_config(self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path).context("load configuration")?,
            None => Config::default(),
        };
        if let Some(root) = self.root {
            config.root = root;
        }
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(name) = self.registry_name {
            config.registry_name = Some(name);
        }
        if self.log_json {
            config.log.json = true;
        }
        if let Some(url) = self.proxy_remote_url {
            let proxy = config.proxy.get_or_insert(ProxyConfig {
                remote_url: String::new(),
                username: None,
                password: None,
            });
            proxy.remote_url = url;
        }
        if let (Some(user), Some(password)) = (self.proxy_username, self.proxy_password) {
            let Some(proxy) = config.proxy.as_mut() else {
                anyhow::bail!("--proxy-username needs --proxy-remote-url (or [proxy] in the config)");
            };
            proxy.username = Some(user);
            proxy.password = Some(password);
        }
        config.validate()?;
        Ok(config)
    }
}
