//! strata's runner: a container's root filesystem is an overlay of the image's unpacked
//! layers (read-only, shared) under a per-container upper directory; its process runs
//! in new mount, PID, UTS, IPC and network namespaces (or the host's network, as
//! `--network` says), as PID 1 of its own PID namespace, after `pivot_root` into that
//! overlay.
//!
//! The process model, in one place: `runner start` prepares the container (resolves the
//! image, makes sure its layers are unpacked, writes `containers/<id>/config.json`) and
//! re-executes itself as the container's supervisor, `runner __init DIR`, in fresh
//! mount, UTS and IPC namespaces. The supervisor makes the container's network (a new
//! namespace, on the `strata0` bridge by default: `network`), then a PID namespace for
//! its child; it mounts the overlay, sets the hostname, and spawns the
//! image's command as the first process of the new PID namespace; that child mounts
//! `/proc`, a minimal `/dev` and `/sys`, pivots into the rootfs, sets `no_new_privs` and
//! execs. The supervisor waits, gives back the network's lease, records the exit
//! status, and exits with it. Every
//! syscall-level step is in `sys`, the only module with `unsafe`.

mod build;
mod bundle;
mod cgroup;
mod commit;
mod container;
mod devices;
mod dockerfile;
mod dockerignore;
mod exec;
mod lifecycle;
mod network;
mod seccomp;
mod start;
mod sys;
mod volumes;

pub use build::{BuildError, BuildOptions, BuildReport, build};
pub use bundle::export;
pub use cgroup::{
    CgroupError, DEVICE_ALLOW, FROZEN_MARKER, Frozen, Limits, V2_ROOT_ENV, confine_devices, freeze,
    parse_bytes, thaw_orphaned,
};
pub use commit::{CommitError, CommitOptions, CommitReport, commit};
pub use container::{
    Container, ContainerError, ContainerState, Status, containers_dir, find, list, read_state, write_state,
};
pub use devices::{
    Access as DeviceAccess, BpfInsn, DevicePolicy, DeviceRule, DeviceRuleError, DeviceType,
    Rule as DeviceRuleLine,
};
pub use dockerfile::{
    Arg as DockerfileArg, Base as StageBase, Command as DockerfileCommand, CommandLine, CopyArgs, Directives,
    Dockerfile, DockerfileError, ExpandError, Healthcheck, Instruction as DockerfileInstruction, KeyValue,
    ResolvedInstruction, ResolvedStage, Resolver as DockerfileResolver, Stage as BuildStage,
    Vars as BuildVars, expand as expand_word, expand_words, needed_stages, parse as parse_dockerfile,
    resolve as resolve_dockerfile,
};
pub use dockerignore::{DockerIgnore, DockerIgnoreError, Verdict as IgnoreVerdict};
pub use exec::{ExecOptions, exec};
pub use lifecycle::{LifecycleError, kill, logs, parse_signal, stop, wait_exit};
pub use network::{
    BRIDGE, DEFAULT_SUBNET, NetworkError, NetworkMode, PortSpec, RECLAIM_COMMAND, RECLAIM_GRACE, Subnet,
    TABLE, reclaim_network, state_dir as network_state_dir,
};
pub use seccomp::{Profile as SeccompProfile, SeccompError};
pub use start::{SecurityOptions, StartError, StartOptions, prepare, run_supervisor};
pub use sys::{
    MASKED_PATHS, READONLY_PATHS, SupervisorGroup, alive, block_signals, forward_signals_until_exit,
    signal_checked, single_threaded, spawn_supervisor,
};
pub use volumes::{MountSpec, VolumeError, create_volume, list_volumes, remove_volume};
