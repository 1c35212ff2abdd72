//! `runner`: start containers from images in a strata store, list and remove them.

mod cli;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use strata_runner::{Container, ContainerState, Status, containers_dir, list, prepare, run_supervisor};

fn main() -> ExitCode {
    let (root, command) = cli::Cli::parse().into_parts();
    match run(&root, command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn run(root: &Path, command: cli::Command) -> anyhow::Result<u8> {
    match command {
        cli::Command::Start(opts) => {
            if !rustix::process::geteuid().is_root() {
                bail!("runner start needs root (namespaces and mounts)");
            }
            let c = prepare(root, &opts).with_context(|| format!("start {}", opts.image))?;
            let dir = c.dir(root);
            let exe = std::env::current_exe().context("find the runner binary")?;
            let mut cmd = std::process::Command::new(exe);
            cmd.arg("--root").arg(root).arg("__init").arg(&dir);
            let status = strata_runner::spawn_supervisor(cmd)
                .context("start the container supervisor")?
                .wait()
                .context("wait for the container")?;
            if c.remove {
                std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
            }
            Ok(status.code().unwrap_or(255).clamp(0, 255) as u8)
        }
        cli::Command::Init(dir) => {
            let id: String = dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .chars()
                .take(12)
                .collect();
            let code = run_supervisor(&dir).with_context(|| format!("container {id}"))?;
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
        cli::Command::Rm(targets) => {
            let all = list(root)?;
            for t in targets {
                let matches: Vec<&(Container, ContainerState)> = all
                    .iter()
                    .filter(|(c, _)| c.id.starts_with(&t) || c.name.as_deref() == Some(t.as_str()))
                    .collect();
                let (c, s) = match matches.as_slice() {
                    [one] => *one,
                    [] => bail!("no such container: {t}"),
                    _ => bail!("container prefix {t:?} is ambiguous"),
                };
                if s.status == Status::Running {
                    bail!("container {} is running", &c.id[..12]);
                }
                let dir = containers_dir(root).join(&c.id);
                std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
                println!("{}", c.id);
            }
            Ok(0)
        }
    }
}
