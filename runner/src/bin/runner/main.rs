//! `runner`: start containers from images in a strata store, list and remove them.

mod cli;

use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use strata_runner::{
    Status, SupervisorGroup, alive, block_signals, containers_dir, find, forward_signals_until_exit, list,
    prepare, read_state, run_supervisor, single_threaded, spawn_supervisor,
};

fn main() -> ExitCode {
    let parsed = cli::Cli::parse().into_parts();
    match parsed.and_then(|(root, command)| run(&root, command)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", strata_store::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(root: &Path, command: cli::Command) -> anyhow::Result<u8> {
    match command {
        cli::Command::Start { opts, detach } => {
            if opts.tty && detach {
                bail!("runner start -t: terminals are for foreground containers (no --detach)");
            }
            if !rustix::process::geteuid().is_root() {
                bail!("runner start needs root (namespaces and mounts)");
            }
            let c = prepare(root, &opts).with_context(|| format!("start {}", opts.image))?;
            let dir = c.dir(root);
            let exe = std::env::current_exe().context("find the runner binary")?;
            let mut cmd = std::process::Command::new(exe);
            cmd.arg("--root").arg(root).arg("__init").arg(&dir);
            if detach {
                let log = std::fs::File::create(dir.join("log")).context("create the container log")?;
                cmd.stdin(Stdio::null())
                    .stdout(log.try_clone().context("open the container log")?)
                    .stderr(log);
                let child = spawn_supervisor(cmd, SupervisorGroup::Detached)
                    .context("start the container supervisor")?;
                wait_started(&dir, child).with_context(|| format!("start {}", opts.image))?;
                println!("{}", c.id);
                return Ok(0);
            }
            let code = if single_threaded() {
                // This process becomes the supervisor: no re-exec.
                run_supervisor(&dir, true).with_context(|| format!("container {}", &c.id[..12]))?
            } else {
                // Opening the store left threads behind: a fresh process supervises, in a
                // process group of its own; the terminal's signals reach it through here.
                block_signals().context("block signals")?;
                let mut child = spawn_supervisor(
                    cmd,
                    if opts.tty {
                        SupervisorGroup::CallersGroup
                    } else {
                        SupervisorGroup::OwnGroup
                    },
                )
                .context("start the container supervisor")?;
                forward_signals_until_exit(&mut child).context("wait for the container")?
            };
            if c.remove && dir.exists() {
                std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
            }
            Ok(code.clamp(0, 255) as u8)
        }
        cli::Command::Stop { containers, grace } => {
            for t in containers {
                let (c, _) = find(root, &t)?;
                let dir = c.dir(root);
                strata_runner::stop(&dir, grace).with_context(|| format!("stop {}", &c.id[..12]))?;
                println!("{}", c.id);
            }
            Ok(0)
        }
        cli::Command::Init(dir) => {
            let id: String = dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .chars()
                .take(12)
                .collect();
            let code = run_supervisor(&dir, false).with_context(|| format!("container {id}"))?;
            Ok(code.clamp(0, 255) as u8)
        }
        cli::Command::Ps { json } => {
            let all = list(root)?;
            if json {
                let rows: Vec<serde_json::Value> = all
                    .iter()
                    .map(|(c, s)| {
                        serde_json::json!({
                            "id": c.id, "name": c.name, "image": c.image, "image_id": c.image_id,
                            "command": c.command, "created": c.created, "status": s.status,
                            "exit_code": s.exit_code,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<14}{:<24}{:<28}{:<12}NAME",
                    "CONTAINER ID", "IMAGE", "COMMAND", "STATUS"
                );
                for (c, s) in &all {
                    let status = match (s.status, s.exit_code) {
                        (Status::Exited, Some(code)) => format!("exited ({code})"),
                        (Status::Running, _) if !s.pid.is_some_and(alive) => "dead".to_string(),
                        (st, _) => format!("{st:?}").to_lowercase(),
                    };
                    let cmd: String = c.command.join(" ").chars().take(26).collect();
                    println!(
                        "{:<14}{:<24}{:<28}{:<12}{}",
                        &c.id[..12],
                        c.image,
                        format!("\"{cmd}\""),
                        status,
                        c.name.as_deref().unwrap_or("")
                    );
                }
            }
            Ok(0)
        }
        cli::Command::Commit {
            container,
            reference,
            opts,
        } => {
            let (c, _) = find(root, &container)?;
            let store = strata_store::Store::open(root)?;
            let r = strata_runner::commit(&store, &c, &c.dir(root), &reference, &opts)
                .with_context(|| format!("commit {} as {reference}", &c.id[..12]))?;
            for path in &r.skipped {
                eprintln!("warning: {path} is a socket: not committed");
            }
            println!("{}", r.image_id);
            Ok(0)
        }
        cli::Command::Build(opts) => {
            if !rustix::process::geteuid().is_root() {
                bail!("runner build needs root (its RUN steps are containers)");
            }
            let mut out = std::io::stdout().lock();
            let r = strata_runner::build(root, &opts, &mut out).context("build")?;
            drop(out);
            eprintln!(
                "{} steps, {} from the cache, {} RUN containers",
                r.steps, r.cached, r.runs
            );
            Ok(0)
        }
        cli::Command::Kill { signal, containers } => {
            for t in containers {
                let (c, _) = find(root, &t)?;
                strata_runner::kill(&c.dir(root), signal)?;
                println!("{}", c.id);
            }
            Ok(0)
        }
        cli::Command::Wait(containers) => {
            for t in containers {
                let (c, _) = find(root, &t)?;
                let code = strata_runner::wait_exit(&c.dir(root), None)?.flatten();
                match code {
                    Some(code) => println!("{code}"),
                    None => println!("unknown (removed or its supervisor died)"),
                }
            }
            Ok(0)
        }
        cli::Command::Logs { follow, container } => {
            let (c, _) = find(root, &container)?;
            strata_runner::logs(&c.dir(root), follow, &mut std::io::stdout().lock())?;
            Ok(0)
        }
        cli::Command::Inspect(containers) => {
            let mut all = Vec::new();
            for t in containers {
                let (c, s) = find(root, &t)?;
                let mut v = serde_json::to_value(&c)?;
                v["state"] = serde_json::to_value(&s)?;
                all.push(v);
            }
            println!("{}", serde_json::to_string_pretty(&all)?);
            Ok(0)
        }
        cli::Command::Exec { container, opts } => {
            let (c, _) = find(root, &container)?;
            let code = strata_runner::exec(&c, &c.dir(root), &opts)
                .with_context(|| format!("exec in {}", &c.id[..12]))?;
            Ok(code.clamp(0, 255) as u8)
        }
        cli::Command::Volume(action) => {
            match action {
                cli::VolumeAction::Create { name } => {
                    strata_runner::create_volume(root, &name)?;
                    println!("{name}");
                }
                cli::VolumeAction::Ls => {
                    for name in strata_runner::list_volumes(root)? {
                        println!("{name}");
                    }
                }
                cli::VolumeAction::Rm { names } => {
                    for name in names {
                        strata_runner::remove_volume(root, &name)?;
                        println!("{name}");
                    }
                }
            }
            Ok(0)
        }
        cli::Command::Export { container, dir } => {
            let (c, _) = find(root, &container)?;
            strata_runner::export(&c, &c.dir(root), &dir)
                .with_context(|| format!("export {} to {}", &c.id[..12], dir.display()))?;
            println!("{}", dir.display());
            Ok(0)
        }
        cli::Command::ReclaimNetwork => {
            // A grace second: a container started right after the last one stopped finds
            // the bridge and the table still there (and this then removes nothing).
            std::thread::sleep(strata_runner::RECLAIM_GRACE);
            strata_runner::reclaim_network().context("reclaim the network")?;
            Ok(0)
        }
        cli::Command::Rm(targets) => {
            // Addresses and ports of containers whose supervisor was killed go back.
            if rustix::process::geteuid().is_root() {
                strata_runner::reclaim_network().context("reclaim the network of stopped containers")?;
            }
            for t in targets {
                let (c, s) = find(root, &t)?;
                if s.status == Status::Running && s.pid.is_some_and(alive) {
                    bail!("container {} is running: stop it first", &c.id[..12]);
                }
                let dir = containers_dir(root).join(&c.id);
                std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
                println!("{}", c.id);
            }
            Ok(0)
        }
    }
}

/// Waits until a detached container's process runs (or has already run and exited).
fn wait_started(dir: &Path, mut supervisor: std::process::Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = read_state(dir)?;
        if state.status != Status::Created {
            return Ok(());
        }
        if let Some(status) = supervisor.try_wait()? {
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            bail!("the container did not start ({status}): {}", log.trim());
        }
        if Instant::now() > deadline {
            bail!("the container did not start within 30 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
