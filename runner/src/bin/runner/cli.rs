//! Command line of `runner` (clap derive), turned into a typed command at once.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use strata_runner::{
    BuildOptions, CommitOptions, Limits, NetworkMode, PortSpec, SecurityOptions, StartOptions,
};

/// `--security-opt` values: the seccomp choice (`None`: docker's default profile;
/// `Some(None)`: unconfined; `Some(Some(json))`: a profile file's contents).
fn security_options(opts: &[String]) -> anyhow::Result<Option<Option<String>>> {
    let mut seccomp = None;
    for o in opts {
        let (key, value) = o.split_once(['=', ':']).unwrap_or((o.as_str(), ""));
        match key {
            "seccomp" if value == "unconfined" => seccomp = Some(None),
            "seccomp" if !value.is_empty() => {
                let json = std::fs::read_to_string(value)
                    .with_context(|| format!("read the seccomp profile {value}"))?;
                seccomp = Some(Some(json));
            }
            "no-new-privileges" if matches!(value, "" | "true") => {}
            _ => bail!(
                "unsupported --security-opt {o:?} (seccomp=unconfined, seccomp=FILE, no-new-privileges)"
            ),
        }
    }
    Ok(seccomp)
}

/// `--cpus`: a positive decimal number of CPUs, in thousandths.
fn parse_cpus(s: &str) -> Result<u64, String> {
    match s.parse::<f64>() {
        Ok(n) if (0.001..=4096.0).contains(&n) => Ok((n * 1000.0).round() as u64),
        _ => Err(format!("invalid number of CPUs {s:?} (e.g. 0.5, 2)")),
    }
}

fn parse_network(s: &str) -> Result<NetworkMode, String> {
    NetworkMode::parse(s).map_err(|e| e.to_string())
}

fn parse_port(s: &str) -> Result<PortSpec, String> {
    PortSpec::parse(s).map_err(|e| e.to_string())
}

fn parse_memory(s: &str) -> Result<u64, String> {
    strata_runner::parse_bytes(s).ok_or_else(|| format!("invalid byte count {s:?} (e.g. 64m, 1g)"))
}

#[derive(Debug, Parser)]
#[command(
    name = "runner",
    version,
    about = "Start and manage containers from a strata store"
)]
pub struct Cli {
    /// Store root directory [default: /var/lib/strata as root, else $XDG_DATA_HOME/strata]
    #[arg(long, global = true, env = "STRATA_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// The subnet of the strata0 bridge, when the first bridged container makes it
    /// [default: 10.89.0.0/16]
    #[arg(long, global = true, env = "STRATA_BRIDGE_SUBNET", value_name = "CIDR")]
    pub bridge_subnet: Option<String>,
    #[command(subcommand)]
    pub command: CliCommand,
}

// Parsed once per process: the size of the start variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Start a container from an image and wait for it; exits with its exit code
    Start {
        /// A name for the container
        #[arg(long)]
        name: Option<String>,
        /// Remove the container when it exits
        #[arg(long)]
        rm: bool,
        /// Run in the background: print the container's ID once it runs (its output goes
        /// to `containers/<id>/log`)
        #[arg(long, short = 'd')]
        detach: bool,
        /// Set an environment variable (KEY=VALUE), repeatable
        #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// The container's hostname [default: the first 12 characters of its ID]
        #[arg(long)]
        hostname: Option<String>,
        /// Run as USER[:GROUP] (names or numbers) instead of the image's User
        #[arg(long, short = 'u', value_name = "USER[:GROUP]")]
        user: Option<String>,
        /// Memory limit in bytes (suffixes k, m, g), through the memory cgroup
        #[arg(long, value_name = "BYTES", value_parser = parse_memory)]
        memory: Option<u64>,
        /// Most processes and threads, through the pids cgroup
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        pids: Option<u64>,
        /// CPUs the container may use (e.g. 1.5), through the CPU cgroup's CFS quota
        #[arg(long, value_name = "N", value_parser = parse_cpus)]
        cpus: Option<u64>,
        /// Replace the image's entrypoint ("" for none; the image's command is dropped too)
        #[arg(long)]
        entrypoint: Option<String>,
        /// The working directory inside the container (absolute)
        #[arg(long, short = 'w', value_name = "DIR")]
        workdir: Option<String>,
        /// Mount the container's root filesystem read-only
        #[arg(long = "read-only")]
        read_only: bool,
        /// Run the container on a pseudo-terminal (the caller's terminal in raw mode)
        #[arg(long, short = 't')]
        tty: bool,
        /// Keep standard input open (always, in the foreground; accepted for docker's -it)
        #[arg(long, short = 'i')]
        interactive: bool,
        /// Mount a host path or a named volume: SOURCE:/TARGET[:ro|rw], repeatable
        #[arg(long = "volume", short = 'v', value_name = "SOURCE:TARGET[:ro]")]
        volumes: Vec<String>,
        /// Mount a tmpfs at this path, repeatable
        #[arg(long, value_name = "DIR")]
        tmpfs: Vec<String>,
        /// The container's network: bridge (its own namespace on the strata0 bridge, with
        /// outbound NAT), host (the host's), none (only lo)
        #[arg(long, value_name = "MODE", default_value = "bridge", value_parser = parse_network)]
        network: NetworkMode,
        /// Publish a container's port on the host: [IP:]HOSTPORT:CONTAINERPORT[/udp],
        /// repeatable (every local address without IP)
        #[arg(long = "publish", short = 'p', value_name = "[IP:]HOSTPORT:PORT", value_parser = parse_port)]
        publish: Vec<PortSpec>,
        /// Give the container every capability, every device, no seccomp filter and no
        /// masked or read-only paths (less confinement, as docker's --privileged)
        #[arg(long)]
        privileged: bool,
        /// Add a capability to docker's default set (CAP_NET_ADMIN or NET_ADMIN; ALL)
        #[arg(long = "cap-add", value_name = "CAP")]
        cap_add: Vec<String>,
        /// Drop a capability from docker's default set (ALL drops every one)
        #[arg(long = "cap-drop", value_name = "CAP")]
        cap_drop: Vec<String>,
        /// seccomp=unconfined (no filter), seccomp=FILE (a profile in docker's JSON
        /// format), or no-new-privileges (always on)
        #[arg(long = "security-opt", value_name = "OPT")]
        security_opt: Vec<String>,
        /// Image reference, digest or ID prefix
        image: String,
        /// Command and arguments, replacing the image's Cmd
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// List containers
    Ps {
        /// Print a JSON array instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Stop running containers: SIGTERM, then SIGKILL after the grace time
    Stop {
        /// Seconds to wait after SIGTERM
        #[arg(long, short = 't', default_value_t = 10)]
        time: u64,
        #[arg(required = true, value_name = "ID-OR-PREFIX-OR-NAME")]
        containers: Vec<String>,
    },
    /// Run a command in a running container (its namespaces, cgroups and confinement)
    Exec {
        /// Keep standard input open
        #[arg(long, short = 'i')]
        interactive: bool,
        /// Run it on a pseudo-terminal (the caller's terminal in raw mode, its window
        /// size passed on)
        #[arg(long, short = 't')]
        tty: bool,
        /// Set an environment variable (KEY=VALUE), repeatable
        #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Run as USER[:GROUP] instead of the container's user
        #[arg(long, short = 'u', value_name = "USER[:GROUP]")]
        user: Option<String>,
        /// The working directory inside the container
        #[arg(long, short = 'w', value_name = "DIR")]
        workdir: Option<String>,
        #[arg(value_name = "ID-OR-PREFIX-OR-NAME")]
        container: String,
        /// The command and its arguments
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Manage named volumes (kept in the store, under volumes/)
    Volume {
        #[command(subcommand)]
        action: VolumeAction,
    },
    /// Send a signal to running containers' first process
    Kill {
        /// The signal, by name (TERM, SIGHUP…) or number
        #[arg(long, short = 's', default_value = "KILL")]
        signal: String,
        #[arg(required = true, value_name = "ID-OR-PREFIX-OR-NAME")]
        containers: Vec<String>,
    },
    /// Wait until containers exit and print their exit codes
    Wait {
        #[arg(required = true, value_name = "ID-OR-PREFIX-OR-NAME")]
        containers: Vec<String>,
    },
    /// Print a detached container's output (its log)
    Logs {
        /// Keep printing what it writes until it exits
        #[arg(long, short = 'f')]
        follow: bool,
        #[arg(value_name = "ID-OR-PREFIX-OR-NAME")]
        container: String,
    },
    /// Print containers' configuration and state as JSON
    Inspect {
        #[arg(required = true, value_name = "ID-OR-PREFIX-OR-NAME")]
        containers: Vec<String>,
    },
    /// Make a new image of a container's changes, tagged REF
    Commit {
        /// The image's author (e.g. "Jane Doe <jane@example.com>")
        #[arg(long, short = 'a')]
        author: Option<String>,
        /// A commit message (the new history entry's comment)
        #[arg(long, short = 'm')]
        message: Option<String>,
        /// Apply a Dockerfile instruction to the image's config (CMD, ENTRYPOINT, ENV,
        /// EXPOSE, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR), repeatable
        #[arg(long = "change", short = 'c', value_name = "INSTRUCTION")]
        changes: Vec<String>,
        /// Freeze a running container while its changes are read (a running container
        /// is refused without it)
        #[arg(long, short = 'p')]
        pause: bool,
        #[arg(value_name = "ID-OR-PREFIX-OR-NAME")]
        container: String,
        #[arg(value_name = "REF")]
        reference: String,
    },
    /// Build an image from a Dockerfile and a context directory (as root); each step is
    /// cached in the store
    Build {
        /// Tag the image as REF, repeatable
        #[arg(long = "tag", short = 't', value_name = "REF")]
        tags: Vec<String>,
        /// The Dockerfile [default: CONTEXT/Dockerfile]
        #[arg(long = "file", short = 'f', value_name = "FILE")]
        file: Option<PathBuf>,
        /// Set a build argument (K=V), repeatable
        #[arg(long = "build-arg", value_name = "K=V")]
        build_args: Vec<String>,
        /// Build this stage (by name) instead of the last
        #[arg(long)]
        target: Option<String>,
        /// Run every step, neither using nor recording the cache
        #[arg(long = "no-cache")]
        no_cache: bool,
        /// The network of RUN steps: bridge (the strata0 bridge, as docker's), host, none
        #[arg(long, value_name = "MODE", default_value = "bridge", value_parser = parse_network)]
        network: NetworkMode,
        /// Build for this platform (OS/ARCH[/VARIANT]); only this host's is accepted
        #[arg(long, value_name = "PLATFORM")]
        platform: Option<String>,
        /// The context directory
        #[arg(value_name = "CONTEXT")]
        context: PathBuf,
    },
    /// Write a stopped container as an OCI runtime bundle (for runc or crun) in DIR: its
    /// overlay is mounted at DIR/rootfs until you unmount it
    Export {
        #[arg(value_name = "ID-OR-PREFIX-OR-NAME")]
        container: String,
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Remove stopped containers
    Rm {
        #[arg(required = true, value_name = "ID-OR-PREFIX-OR-NAME")]
        containers: Vec<String>,
    },
    /// The container supervisor (internal: run by `runner start` in new namespaces)
    #[command(name = "__init", hide = true)]
    Init { dir: PathBuf },
    /// Give back killed containers' leases and remove the bridge when none is left
    /// (internal: run by the last bridged container's supervisor)
    #[command(name = strata_runner::RECLAIM_COMMAND, hide = true)]
    ReclaimNetwork,
}

#[derive(Debug, Subcommand)]
pub enum VolumeAction {
    /// Create a named volume
    Create { name: String },
    /// List named volumes
    Ls,
    /// Remove named volumes (not while a container mounts them)
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// What to do, typed.
pub enum Command {
    Start {
        opts: Box<StartOptions>,
        detach: bool,
    },
    Stop {
        containers: Vec<String>,
        grace: std::time::Duration,
    },
    Kill {
        signal: i32,
        containers: Vec<String>,
    },
    Wait(Vec<String>),
    Logs {
        follow: bool,
        container: String,
    },
    Inspect(Vec<String>),
    Volume(VolumeAction),
    Exec {
        container: String,
        opts: strata_runner::ExecOptions,
    },
    Ps {
        json: bool,
    },
    Rm(Vec<String>),
    Commit {
        container: String,
        reference: String,
        opts: CommitOptions,
    },
    Export {
        container: String,
        dir: PathBuf,
    },
    Build(Box<BuildOptions>),
    Init(PathBuf),
    ReclaimNetwork,
}

impl Cli {
    /// The store root and the command.
    pub fn into_parts(self) -> anyhow::Result<(PathBuf, Command)> {
        let root = self.root.unwrap_or_else(strata_store::default_root);
        let command = match self.command {
            CliCommand::Start {
                name,
                rm,
                detach,
                env,
                hostname,
                user,
                memory,
                pids,
                cpus,
                entrypoint,
                workdir,
                read_only,
                tty,
                interactive: _,
                volumes,
                tmpfs,
                network,
                publish,
                privileged,
                cap_add,
                cap_drop,
                security_opt,
                image,
                command,
            } => Command::Start {
                opts: Box::new(StartOptions {
                    image,
                    name,
                    command,
                    env,
                    hostname,
                    user,
                    remove: rm,
                    limits: Limits {
                        memory,
                        pids,
                        cpus_milli: cpus,
                    },
                    entrypoint,
                    workdir,
                    read_only,
                    tty,
                    volumes,
                    tmpfs,
                    network,
                    ports: publish,
                    subnet: self.bridge_subnet.clone(),
                    security: SecurityOptions {
                        privileged,
                        cap_add,
                        cap_drop,
                        seccomp: security_options(&security_opt)?,
                    },
                }),
                detach,
            },
            CliCommand::Kill { signal, containers } => Command::Kill {
                signal: strata_runner::parse_signal(&signal)?,
                containers,
            },
            CliCommand::Wait { containers } => Command::Wait(containers),
            CliCommand::Logs { follow, container } => Command::Logs { follow, container },
            CliCommand::Inspect { containers } => Command::Inspect(containers),
            CliCommand::Volume { action } => Command::Volume(action),
            CliCommand::Exec {
                interactive,
                tty,
                env,
                user,
                workdir,
                container,
                command,
            } => Command::Exec {
                container,
                opts: strata_runner::ExecOptions {
                    command,
                    env,
                    user,
                    workdir,
                    interactive,
                    tty,
                },
            },
            CliCommand::Stop { time, containers } => Command::Stop {
                containers,
                grace: std::time::Duration::from_secs(time),
            },
            CliCommand::Ps { json } => Command::Ps { json },
            CliCommand::Rm { containers } => Command::Rm(containers),
            CliCommand::Commit {
                author,
                message,
                changes,
                pause,
                container,
                reference,
            } => Command::Commit {
                container,
                reference,
                opts: CommitOptions {
                    author,
                    message,
                    changes,
                    pause,
                },
            },
            CliCommand::Export { container, dir } => Command::Export { container, dir },
            CliCommand::Build {
                tags,
                file,
                build_args,
                target,
                no_cache,
                platform,
                network,
                context,
            } => {
                let mut args = std::collections::BTreeMap::new();
                for a in build_args {
                    match a.split_once('=') {
                        Some((k, v)) if !k.is_empty() => args.insert(k.to_string(), v.to_string()),
                        // docker takes a bare NAME from the environment.
                        _ => match std::env::var(&a) {
                            Ok(v) => args.insert(a, v),
                            Err(_) => continue,
                        },
                    };
                }
                Command::Build(Box::new(BuildOptions {
                    context,
                    dockerfile: file,
                    tags,
                    build_args: args,
                    target,
                    no_cache,
                    platform,
                    network,
                    supervisor: std::env::current_exe().context("find the runner binary")?,
                }))
            }
            CliCommand::Init { dir } => Command::Init(dir),
            CliCommand::ReclaimNetwork => Command::ReclaimNetwork,
        };
        Ok((root, command))
    }
}
