//! `runner exec`: another process in a running container — its namespaces joined
//! through a pidfd on its first process (checked to be the process that started), in
//! its cgroups, as the container's user or another, confined as the container is
//! (capabilities, seccomp, `no_new_privs`, rlimits, fds), in a session of its own; with
//! `-t` on a pseudo-terminal of its own, as `runner start -t` runs a container.

use std::path::Path;
use std::process::Stdio;

use crate::container::{self, Container, ContainerError, Status};
use crate::start::{
    StartError, User, attach, command, confinement, io, merge_env, process_env, resolve_user, seccomp_cache,
};
use crate::{cgroup, sys};

/// What `runner exec` was asked for.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub command: Vec<String>,
    /// `KEY=VALUE` added to the container's environment.
    pub env: Vec<String>,
    /// `user[:group]` instead of the container's.
    pub user: Option<String>,
    /// `-w`: the working directory instead of the container's.
    pub workdir: Option<String>,
    /// `-i`: keep standard input open (else it reads /dev/null).
    pub interactive: bool,
    /// `-t`: run it on a pseudo-terminal of its own, the caller's terminal in raw mode
    /// meanwhile, its window size passed on.
    pub tty: bool,
}

/// Runs `opts.command` in the running container `c` (directory `dir`) and returns its
/// exit code (128 + signal). The caller must not have other threads (it joins the
/// container's PID namespace and cgroups itself).
pub fn exec(c: &Container, dir: &Path, opts: &ExecOptions) -> Result<i32, StartError> {
    let state = container::read_state(dir)?;
    let not_running = || StartError::Container(ContainerError::NotRunning(c.id[..12].to_string()));
    let (Status::Running, Some(init)) = (state.status, state.init_pid) else {
        return Err(not_running());
    };
    if opts.command.is_empty() {
        return Err(StartError::NoCommand);
    }
    // The container's own files, as its first process sees them.
    let root = Path::new("/proc").join(init.to_string()).join("root");
    let ids: User = resolve_user(opts.user.as_deref().unwrap_or(&c.user), &root)?;
    let confined = confinement(&c.security, &seccomp_cache(dir))?;
    let mut env = process_env(c, &ids);
    env = merge_env(env, &opts.env)?;
    sys::block_signals().map_err(io("block signals"))?;
    cgroup::join_existing(&c.id)?;
    let pidfd = sys::join_pid_namespace(init, state.init_start)
        .map_err(io("join the container's PID namespace"))?
        .ok_or_else(not_running)?;
    let workdir = opts.workdir.as_deref().unwrap_or(&c.workdir);
    let steps = sys::Rootfs::for_exec(pidfd, workdir, (ids.uid, ids.gid, &ids.groups), confined)
        .map_err(io("prepare the process"))?;
    let mut cmd = command(&opts.command, &env);
    if !opts.tty {
        if !opts.interactive {
            cmd.stdin(Stdio::null());
        }
        let mut child = sys::spawn_init(cmd, steps).map_err(io(format!("start {:?}", opts.command[0])))?;
        return sys::forward_signals_until_exit(&mut child).map_err(io("wait for the process"));
    }
    let pty = sys::Pty::open().map_err(io("open a pseudo-terminal"))?;
    let slave = || pty.slave.try_clone().map_err(io("open a pseudo-terminal"));
    cmd.stdin(slave()?).stdout(slave()?).stderr(slave()?);
    if !env.iter().any(|e| e.starts_with("TERM=")) {
        cmd.env("TERM", "xterm");
    }
    let mut child =
        sys::spawn_init(cmd, steps.with_tty()).map_err(io(format!("start {:?}", opts.command[0])))?;
    attach(&mut child, pty, opts.interactive)
}
