//! `runner`: start containers from images in a strata store, list and remove them.

mod cli;

use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use strata_runner::{
    Status, alive, block_signals, containers_dir, find, forward_signals_until_exit, list, prepare,
    read_state, run_supervisor, signal_checked, single_threaded, spawn_supervisor,
};

fn main() -> ExitCode {
    let parsed = cli::Cli::parse().into_parts();
    match parsed.and_then(|(root, command)| run(&root, command)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn run(root: &Path, command: cli::Command) -> anyhow::Result<u8> {
    match command {
        cli::Command::Start { opts, detach } => {
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
                let child = spawn_supervisor(cmd, true).context("start the container supervisor")?;
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
                let mut child = spawn_supervisor(cmd, false).context("start the container supervisor")?;
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
                stop(&dir, grace).with_context(|| format!("stop {}", &c.id[..12]))?;
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
        cli::Command::Export { container, dir } => {
            let (c, _) = find(root, &container)?;
            strata_runner::export(&c, &c.dir(root), &dir)
                .with_context(|| format!("export {} to {}", &c.id[..12], dir.display()))?;
            println!("{}", dir.display());
            Ok(0)
        }
        cli::Command::Rm(targets) => {
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

/// SIGTERM to the container's first process, SIGKILL after `grace`, then waits for its
/// supervisor to record the exit. A container that is not running is left as it is.
fn stop(dir: &Path, grace: Duration) -> anyhow::Result<()> {
    let state = read_state(dir)?;
    let (Status::Running, Some(init)) = (state.status, state.init_pid) else {
        return Ok(());
    };
    // Only the container's own first process is signalled, never a process that reused
    // its PID (checked through a pidfd).
    let signal = |kill: bool| signal_checked(init, state.init_start, if kill { 9 } else { 15 });
    let exited = |until: Instant| -> anyhow::Result<bool> {
        while Instant::now() < until {
            let s = match read_state(dir) {
                Ok(s) => s,
                // Removed at exit (--rm), or being removed.
                Err(_) if !dir.join("state.json").exists() => return Ok(true),
                Err(e) => return Err(e.into()),
            };
            if s.status == Status::Exited || !s.pid.is_some_and(alive) {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(false)
    };
    if signal(false)? {
        if exited(Instant::now() + grace)? {
            return Ok(());
        }
        signal(true)?;
    }
    if !exited(Instant::now() + Duration::from_secs(10))? {
        bail!("the container did not exit after SIGKILL");
    }
    Ok(())
}
