//! `runner export`: a container as an OCI runtime bundle that runc and crun run — the
//! container's overlay (its image's layers under its own upper directory) mounted at
//! `DIR/rootfs`, and a runtime-spec `config.json` saying what `runner start` would do:
//! the same command, environment, working directory, user, hostname, namespaces,
//! capabilities, masked and read-only paths, device rules, seccomp filter and limits.

use std::path::Path;

use crate::container::{self, Container, ContainerError, Status};
use crate::seccomp::Profile;
use crate::start::{StartError, io, mount_rootfs, process_env, resolve_user};
use crate::sys;

/// Writes the bundle of container `c` (directory `dir`) into `bundle`. The container
/// must not be running (its upper directory cannot be in two overlays at once).
pub fn export(c: &Container, dir: &Path, bundle: &Path) -> Result<(), StartError> {
    let state = container::read_state(dir)?;
    if state.status == Status::Running && state.pid.is_some_and(sys::alive) {
        return Err(ContainerError::Running(c.id[..12].to_string()).into());
    }
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(io(format!("create {}", rootfs.display())))?;
    mount_rootfs(c, dir, &rootfs)?;
    let written = write_config(c, &rootfs, bundle);
    if written.is_err() {
        let _ = sys::unmount(&rootfs);
    }
    written
}

fn write_config(c: &Container, rootfs: &Path, bundle: &Path) -> Result<(), StartError> {
    let user = resolve_user(&c.user, rootfs)?;
    let env = process_env(c, &user);
    let names: Vec<&str> = c.security.capabilities.iter().map(String::as_str).collect();
    let mut resources = serde_json::Map::new();
    if let Some(m) = c.limits.memory {
        resources.insert("memory".into(), serde_json::json!({ "limit": m }));
    }
    if let Some(m) = c.limits.cpus_milli {
        resources.insert(
            "cpu".into(),
            serde_json::json!({ "quota": m * 100, "period": 100_000 }),
        );
    }
    if let Some(p) = c.limits.pids {
        resources.insert("pids".into(), serde_json::json!({ "limit": p }));
    }
    let caps = if user.uid == 0 { names.clone() } else { Vec::new() };
    let paths = |list: &[&std::ffi::CStr]| -> Vec<String> {
        list.iter().map(|p| p.to_string_lossy().into_owned()).collect()
    };
    let (masked, readonly) = if c.security.privileged {
        (Vec::new(), Vec::new())
    } else {
        (paths(&sys::MASKED_PATHS), paths(&sys::READONLY_PATHS))
    };
    // The devices cgroup's allowlist, in the runtime spec's form.
    let mut devices = vec![serde_json::json!({ "allow": c.security.privileged, "access": "rwm" })];
    if !c.security.privileged {
        for rule in crate::cgroup::DEVICE_ALLOW {
            let mut parts = rule.split([' ', ':']);
            let (kind, major, minor, access) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next().unwrap_or("rwm"),
            );
            let num = |s: Option<&str>| s.and_then(|s| s.parse::<i64>().ok());
            devices.push(serde_json::json!({
                "allow": true, "type": kind, "major": num(major), "minor": num(minor), "access": access,
            }));
        }
    }
    resources.insert("devices".into(), devices.into());
    // docker's seccomp profile (or the container's own) in the runtime spec's form.
    let seccomp = match c.security.seccomp.source() {
        Some(source) => Some(Profile::from_json(source)?.to_runtime_spec(&names)?),
        None => None,
    };
    let mut config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": user.uid, "gid": user.gid, "additionalGids": user.groups },
            "args": c.command,
            "env": env,
            "cwd": c.workdir,
            "capabilities": {
                "bounding": names,
                "effective": caps,
                "permitted": caps,
            },
            "noNewPrivileges": true,
        },
        "root": { "path": "rootfs", "readonly": c.read_only },
        "hostname": c.hostname,
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
              "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
              "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs",
              "options": ["nosuid", "noexec", "nodev", "ro"] },
        ],
        "linux": {
            "namespaces": [
                { "type": "pid" }, { "type": "network" }, { "type": "ipc" },
                { "type": "uts" }, { "type": "mount" },
            ],
            "resources": resources,
            "maskedPaths": masked,
            "readonlyPaths": readonly,
        },
    });
    if let Some(seccomp) = seccomp {
        config["linux"]["seccomp"] = seccomp;
    }
    if c.network == crate::network::NetworkMode::Host {
        // The host's network namespace: none of its own (a bridged container's network
        // is the runner's to make; the bundle gets an empty namespace, as `none`).
        if let Some(ns) = config["linux"]["namespaces"].as_array_mut() {
            ns.retain(|n| n["type"] != "network");
        }
    }
    let path = bundle.join("config.json");
    let bytes = serde_json::to_vec_pretty(&config).map_err(|e| StartError::Config {
        image: c.image.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(&path, bytes).map_err(io(format!("write {}", path.display())))
}
