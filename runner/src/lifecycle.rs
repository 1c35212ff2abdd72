//! A running container's life from outside: signal it (`kill`, `stop`), wait for its
//! exit, follow its log. The container's state is its `state.json`, written by its
//! supervisor; signals reach its first process through a pidfd, and only while that
//! process is the one that started.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::container::{self, ContainerError, ContainerState, Status};
use crate::sys;

/// Errors signalling, waiting for or reading a container.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("unknown signal {0:?}")]
    BadSignal(String),
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("container {0} did not exit after SIGKILL")]
    Unkillable(String),
    #[error("container {0} has no log: it ran in the foreground, its output went to its caller")]
    NoLog(String),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, LifecycleError>;

/// A signal by name (`TERM`, `SIGTERM`, any case) or number, as `docker kill -s` takes it.
pub fn parse_signal(s: &str) -> Result<i32> {
    const NAMES: [(&str, i32); 20] = [
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("ILL", libc::SIGILL),
        ("TRAP", libc::SIGTRAP),
        ("ABRT", libc::SIGABRT),
        ("BUS", libc::SIGBUS),
        ("FPE", libc::SIGFPE),
        ("KILL", libc::SIGKILL),
        ("USR1", libc::SIGUSR1),
        ("SEGV", libc::SIGSEGV),
        ("USR2", libc::SIGUSR2),
        ("PIPE", libc::SIGPIPE),
        ("ALRM", libc::SIGALRM),
        ("TERM", libc::SIGTERM),
        ("CHLD", libc::SIGCHLD),
        ("CONT", libc::SIGCONT),
        ("STOP", libc::SIGSTOP),
        ("TSTP", libc::SIGTSTP),
        ("WINCH", libc::SIGWINCH),
    ];
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(LifecycleError::BadSignal(s.to_string()))
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .ok_or_else(|| LifecycleError::BadSignal(s.to_string()))
}

fn short(dir: &Path) -> String {
    dir.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .chars()
        .take(12)
        .collect()
}

/// Whether the container's supervisor still runs (its state says running and the
/// process is there).
fn running(state: &ContainerState) -> bool {
    state.status == Status::Running && state.pid.is_some_and(sys::alive)
}

/// Thaws the container in `dir` if a `runner commit -p` died holding it frozen (signals
/// would wait for a thaw that never comes).
fn thaw_orphaned(dir: &Path) {
    if let Some(id) = dir.file_name().and_then(|n| n.to_str()) {
        crate::cgroup::thaw_orphaned(id, &dir.join(crate::cgroup::FROZEN_MARKER));
    }
}

/// Sends `sig` to the first process of the container in `dir`; an error when it is not
/// running.
pub fn kill(dir: &Path, sig: i32) -> Result<()> {
    thaw_orphaned(dir);
    let state = container::read_state(dir)?;
    let delivered = match (running(&state), state.init_pid) {
        (true, Some(init)) => {
            sys::signal_checked(init, state.init_start, sig).map_err(|source| LifecycleError::Io {
                context: format!("signal container {}", short(dir)),
                source,
            })?
        }
        _ => false,
    };
    if !delivered {
        return Err(LifecycleError::NotRunning(short(dir)));
    }
    Ok(())
}

/// Waits until the container in `dir` has exited (or `deadline` passed: `None`), and
/// returns its exit code (`None` for one removed at exit, `--rm`).
pub fn wait_exit(dir: &Path, deadline: Option<Instant>) -> Result<Option<Option<i32>>> {
    loop {
        let s = match container::read_state(dir) {
            Ok(s) => s,
            // Removed at exit (--rm), or being removed.
            Err(_) if !dir.join("state.json").exists() => return Ok(Some(None)),
            Err(e) => return Err(e.into()),
        };
        if s.status == Status::Exited {
            return Ok(Some(s.exit_code));
        }
        if s.status == Status::Running && !running(&s) {
            // The supervisor died without recording the exit.
            return Ok(Some(None));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM to the container's first process, SIGKILL after `grace`, then waits for its
/// supervisor to record the exit. A container that is not running is left as it is.
pub fn stop(dir: &Path, grace: Duration) -> Result<()> {
    thaw_orphaned(dir);
    let state = container::read_state(dir)?;
    let (Status::Running, Some(init)) = (state.status, state.init_pid) else {
        return Ok(());
    };
    let io = |source| LifecycleError::Io {
        context: format!("signal container {}", short(dir)),
        source,
    };
    if sys::signal_checked(init, state.init_start, libc::SIGTERM).map_err(io)? {
        if wait_exit(dir, Some(Instant::now() + grace))?.is_some() {
            return Ok(());
        }
        sys::signal_checked(init, state.init_start, libc::SIGKILL).map_err(io)?;
    }
    match wait_exit(dir, Some(Instant::now() + Duration::from_secs(10)))? {
        Some(_) => Ok(()),
        None => Err(LifecycleError::Unkillable(short(dir))),
    }
}

/// Copies the detached container's log (`dir/log`) to `out`; with `follow`, goes on
/// copying what it writes until it has exited.
pub fn logs(dir: &Path, follow: bool, out: &mut impl Write) -> Result<()> {
    let path = dir.join("log");
    let io = |context: &str| {
        let context = format!("{context} {}", path.display());
        move |source| LifecycleError::Io { context, source }
    };
    let mut f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(LifecycleError::NoLog(short(dir))),
        Err(e) => return Err(io("open")(e)),
    };
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // Whether it had exited before this read: then this read gets the last bytes.
        let done = !follow || wait_exit(dir, Some(Instant::now()))?.is_some();
        loop {
            let n = f.read(&mut buf).map_err(io("read"))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(io("copy"))?;
        }
        out.flush().map_err(io("copy"))?;
        if done {
            return Ok(());
        }
        // A log truncated under us starts again from its beginning.
        let len = f.metadata().map_err(io("stat"))?.len();
        if f.stream_position().map_err(io("seek"))? > len {
            f.seek(SeekFrom::Start(0)).map_err(io("seek"))?;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number_as_docker_takes_them() {
        assert_eq!(parse_signal("TERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("sigkill").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("SIGUSR1").unwrap(), libc::SIGUSR1);
        assert_eq!(parse_signal("9").unwrap(), 9);
        for bad in ["", "0", "65", "NOPE", "SIG"] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
    }
}
