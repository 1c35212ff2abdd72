//! Docker's seccomp confinement: profiles in docker's JSON format (its default profile is
//! `seccomp/default.json`), compiled for a container's capability set into the classic BPF
//! program that the container's first process installs before exec.
//!
//! The semantics are docker's and runc's: a rule applies when all of its `includes.caps`
//! and none of its `excludes.caps` are among the container's capabilities, its arches
//! (docker's names: `amd64`, `x86`, `arm64`…) admit the native one and the running kernel
//! is at least its `minKernel`; names the native architecture does not know are skipped;
//! a rule whose action is the default action is a no-op; several conditions on one
//! argument make one rule each (any of them matches), otherwise a rule's conditions must
//! all hold. The filter covers the native architecture and the sub-architectures
//! `archMap` gives it (x86 and x32 on x86_64). Like runc, the program starts with a stub
//! that answers `ENOSYS` for syscall numbers above the highest the profile names, so that
//! libc falls back from syscalls newer than the profile (or than libseccomp) instead of
//! failing with `EPERM`.

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Docker's default profile, in docker's format.
const DEFAULT_PROFILE: &str = include_str!("seccomp/default.json");

/// The kernel's limit on a classic BPF program (`BPF_MAXINSNS`).
pub const MAX_INSTRUCTIONS: usize = 4096;

/// What can go wrong reading or compiling a seccomp profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot read seccomp profile {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Where in the profile, and what is wrong there.
    #[error("invalid seccomp profile: {0}")]
    Parse(String),
    #[error("seccomp profile sets both 'architectures' and 'archMap'")]
    ArchitecturesAndArchMap,
    #[error("seccomp rule {rule} sets both 'name' and 'names'")]
    NameAndNames { rule: usize },
    #[error("unknown seccomp architecture {0:?}")]
    UnknownArchitecture(String),
    #[error("seccomp rule {rule}: argument index {index} is out of range (0 to 5)")]
    ArgumentIndex { rule: usize, index: u32 },
    #[error("seccomp rule {rule}: SCMP_ACT_NOTIFY needs a seccomp agent, which the runner does not support")]
    Notify { rule: usize },
    #[error("seccomp default action SCMP_ACT_NOTIFY is not supported")]
    NotifyDefault,
    #[error("unknown seccomp flag {0:?}")]
    UnknownFlag(String),
    #[error("cannot read the running kernel's version from {0:?}")]
    KernelVersion(String),
    #[error("libseccomp: {what}: {source}")]
    Libseccomp {
        what: String,
        #[source]
        source: libseccomp::error::SeccompError,
    },
    #[error("cannot export the compiled seccomp filter: {0}")]
    Export(#[source] std::io::Error),
    #[error("compiled seccomp filter is {0} bytes, not a whole number of instructions")]
    Truncated(usize),
    #[error("compiled seccomp filter has {0} instructions, more than the kernel's limit of 4096")]
    TooLarge(usize),
}

fn lib(what: impl Into<String>) -> impl FnOnce(libseccomp::error::SeccompError) -> SeccompError {
    let what = what.into();
    move |source| SeccompError::Libseccomp { what, source }
}

/// A seccomp action, by docker's (libseccomp's) name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    #[serde(rename = "SCMP_ACT_KILL")]
    Kill,
    #[serde(rename = "SCMP_ACT_KILL_THREAD")]
    KillThread,
    #[serde(rename = "SCMP_ACT_KILL_PROCESS")]
    KillProcess,
    #[serde(rename = "SCMP_ACT_TRAP")]
    Trap,
    /// Fails with `errnoRet` (`EPERM` when absent).
    #[serde(rename = "SCMP_ACT_ERRNO")]
    Errno,
    /// Notifies a ptrace tracer, with `errnoRet` as the message.
    #[serde(rename = "SCMP_ACT_TRACE")]
    Trace,
    #[serde(rename = "SCMP_ACT_ALLOW")]
    Allow,
    #[serde(rename = "SCMP_ACT_LOG")]
    Log,
    /// Needs a seccomp agent; refused at compile time.
    #[serde(rename = "SCMP_ACT_NOTIFY")]
    Notify,
}

impl Action {
    /// libseccomp's action, with `ret` (errno or trace message; `EPERM` by default).
    fn scmp(self, ret: Option<u16>) -> Option<ScmpAction> {
        let ret = ret.unwrap_or(libc::EPERM as u16);
        Some(match self {
            Action::Kill | Action::KillThread => ScmpAction::KillThread,
            Action::KillProcess => ScmpAction::KillProcess,
            Action::Trap => ScmpAction::Trap,
            Action::Errno => ScmpAction::Errno(i32::from(ret)),
            Action::Trace => ScmpAction::Trace(ret),
            Action::Allow => ScmpAction::Allow,
            Action::Log => ScmpAction::Log,
            Action::Notify => return None,
        })
    }
}

/// An argument comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = "SCMP_CMP_NE")]
    NotEqual,
    #[serde(rename = "SCMP_CMP_LT")]
    Less,
    #[serde(rename = "SCMP_CMP_LE")]
    LessOrEqual,
    #[serde(rename = "SCMP_CMP_EQ")]
    Equal,
    #[serde(rename = "SCMP_CMP_GE")]
    GreaterOrEqual,
    #[serde(rename = "SCMP_CMP_GT")]
    Greater,
    /// `(arg & value) == valueTwo`.
    #[serde(rename = "SCMP_CMP_MASKED_EQ")]
    MaskedEqual,
}

/// A condition on one syscall argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arg {
    pub index: u32,
    pub value: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub value_two: u64,
    pub op: Op,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Arg {
    fn compare(&self) -> ScmpArgCompare {
        let op = match self.op {
            Op::NotEqual => ScmpCompareOp::NotEqual,
            Op::Less => ScmpCompareOp::Less,
            Op::LessOrEqual => ScmpCompareOp::LessOrEqual,
            Op::Equal => ScmpCompareOp::Equal,
            Op::GreaterOrEqual => ScmpCompareOp::GreaterEqual,
            Op::Greater => ScmpCompareOp::Greater,
            Op::MaskedEqual => {
                return ScmpArgCompare::new(
                    self.index,
                    ScmpCompareOp::MaskedEqual(self.value),
                    self.value_two,
                );
            }
        };
        ScmpArgCompare::new(self.index, op, self.value)
    }
}

/// A kernel version as docker compares them: `<kernel>.<major>`, the rest ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion(pub u32, pub u32);

impl KernelVersion {
    fn parse(s: &str) -> Option<KernelVersion> {
        let mut parts = s.splitn(3, '.');
        let kernel = parts.next()?.parse().ok()?;
        let digits: String = parts.next()?.chars().take_while(char::is_ascii_digit).collect();
        Some(KernelVersion(kernel, digits.parse().ok()?))
    }

    /// The running kernel's version.
    pub fn running() -> Result<KernelVersion, SeccompError> {
        let uname = rustix::system::uname();
        let release = uname.release().to_string_lossy();
        KernelVersion::parse(&release).ok_or_else(|| SeccompError::KernelVersion(release.into_owned()))
    }
}

impl<'de> Deserialize<'de> for KernelVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Ok(KernelVersion(0, 0));
        }
        let bad = || {
            serde::de::Error::custom(format!(
                "invalid kernel version {s:?}, expected \"<kernel>.<major>\""
            ))
        };
        let (kernel, major) = s.split_once('.').ok_or_else(bad)?;
        let v = KernelVersion(
            kernel.parse().map_err(|_| bad())?,
            major.parse().map_err(|_| bad())?,
        );
        if v == KernelVersion(0, 0) {
            return Err(bad());
        }
        Ok(v)
    }
}

impl Serialize for KernelVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}.{}", self.0, self.1))
    }
}

/// When a rule applies (`includes`) or does not (`excludes`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<String>,
    /// Docker's architecture names (`amd64`, `x86`, `x32`, `arm64`, `arm`, `s390x`…).
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub arches: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_kernel: Option<KernelVersion>,
}

/// A rule: an action for some syscalls, maybe only for some arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// The old single-name form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u16>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Arg>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub includes: Option<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excludes: Option<Condition>,
}

impl Rule {
    /// Whether the rule is part of the filter for a container with `caps`, on the
    /// architecture docker calls `arch` and on `kernel` (docker's `includes`/`excludes`).
    fn applies(&self, caps: &[&str], arch: Option<&str>, kernel: KernelVersion) -> bool {
        let has = |c: &String| caps.contains(&c.as_str());
        let arch_in = |list: &[String]| arch.is_some_and(|n| list.iter().any(|a| a == n));
        let excluded = self.excludes.as_ref().is_some_and(|ex| {
            arch_in(&ex.arches) || ex.caps.iter().any(has) || ex.min_kernel.is_some_and(|m| kernel >= m)
        });
        let included = self.includes.as_ref().is_none_or(|inc| {
            (inc.arches.is_empty() || arch_in(&inc.arches))
                && inc.caps.iter().all(has)
                && inc.min_kernel.is_none_or(|m| kernel >= m)
        });
        included && !excluded
    }
}

/// An architecture and the sub-architectures a filter for it also covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchMap {
    pub architecture: String,
    #[serde(default, deserialize_with = "nullable")]
    pub sub_architectures: Vec<String>,
}

/// A seccomp profile in docker's format (`docker run --security-opt seccomp=FILE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub default_action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u16>,
    /// The OCI form: every architecture the filter covers (`SCMP_ARCH_*`).
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub arch_map: Vec<ArchMap>,
    /// `SECCOMP_FILTER_FLAG_*` names for seccomp(2).
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub syscalls: Vec<Rule>,
}

/// Go's JSON decoder takes `null` for an empty list; so does this.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A compiled filter: the classic BPF program for seccomp(2) and its flags.
#[derive(Clone)]
pub struct Filter {
    program: Vec<libc::sock_filter>,
    flags: u32,
}

impl Filter {
    /// The program, for `sock_fprog { len: program.len() as u16, filter: program.as_ptr() }`.
    pub fn program(&self) -> &[libc::sock_filter] {
        &self.program
    }

    /// The `SECCOMP_FILTER_FLAG_*` bits to pass to `seccomp(SECCOMP_SET_MODE_FILTER, …)`
    /// (0 for docker's default profile).
    pub fn flags(&self) -> u32 {
        self.flags
    }
}

impl Filter {
    /// The filter as bytes: its flags (4 bytes), then each instruction (code 2, jt 1,
    /// jf 1, k 4 bytes), little-endian.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.program.len() * 8);
        out.extend_from_slice(&self.flags.to_le_bytes());
        for i in &self.program {
            out.extend_from_slice(&i.code.to_le_bytes());
            out.extend_from_slice(&[i.jt, i.jf]);
            out.extend_from_slice(&i.k.to_le_bytes());
        }
        out
    }

    /// Reads [`Filter::to_bytes`]'s form back; `None` when it is not one.
    fn from_bytes(bytes: &[u8]) -> Option<Filter> {
        let (flags, rest) = bytes.split_first_chunk::<4>()?;
        if rest.is_empty() || rest.len() % 8 != 0 || rest.len() / 8 > MAX_INSTRUCTIONS {
            return None;
        }
        let program = rest
            .chunks_exact(8)
            .map(|c| libc::sock_filter {
                code: u16::from_le_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        Some(Filter {
            program,
            flags: u32::from_le_bytes(*flags),
        })
    }
}

/// The source of docker's default profile (as shipped in the binary).
pub fn docker_default_source() -> &'static [u8] {
    DEFAULT_PROFILE.as_bytes()
}

/// Compiles the profile `source` (docker's JSON format) for `caps`, through a cache of
/// compiled programs in `cache_dir` keyed by the source, the capabilities, the running
/// kernel and the machine: libseccomp takes ~10 ms to compile docker's profile, reading
/// the cached program well under one. A cache that cannot be read or written is only a
/// slower start.
pub fn compile_cached(cache_dir: &Path, source: &[u8], caps: &[&str]) -> Result<Filter, SeccompError> {
    use sha2::Digest as _;
    let uname = rustix::system::uname();
    let mut h = sha2::Sha256::new();
    for part in [
        source,
        caps.join(",").as_bytes(),
        uname.release().to_bytes(),
        uname.machine().to_bytes(),
        env!("CARGO_PKG_VERSION").as_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    let path = cache_dir.join(hex::encode(h.finalize()));
    if let Some(f) = std::fs::read(&path).ok().and_then(|b| Filter::from_bytes(&b)) {
        return Ok(f);
    }
    let filter = Profile::from_json(source)?.compile(caps)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::create_dir_all(cache_dir)
        .and_then(|()| std::fs::write(&tmp, filter.to_bytes()))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(filter)
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Filter")
            .field("instructions", &self.program.len())
            .field("flags", &self.flags)
            .finish()
    }
}

/// Docker's name for an architecture (what `includes.arches` lists).
fn docker_arch_name(arch: ScmpArch) -> Option<&'static str> {
    Some(match arch {
        ScmpArch::X86 => "x86",
        ScmpArch::X8664 => "amd64",
        ScmpArch::X32 => "x32",
        ScmpArch::Arm => "arm",
        ScmpArch::Aarch64 => "arm64",
        ScmpArch::Loongarch64 => "loongarch64",
        ScmpArch::Mips => "mips",
        ScmpArch::Mipsel => "mipsel",
        ScmpArch::Mips64 => "mips64",
        ScmpArch::Mips64N32 => "mips64n32",
        ScmpArch::Mipsel64 => "mipsel64",
        // Sic: docker's spelling.
        ScmpArch::Mipsel64N32 => "mips3l64n32",
        ScmpArch::Ppc => "ppc",
        ScmpArch::Ppc64 => "ppc64",
        ScmpArch::Ppc64Le => "ppc64le",
        ScmpArch::Riscv64 => "riscv64",
        ScmpArch::S390 => "s390",
        ScmpArch::S390X => "s390x",
        _ => return None,
    })
}

/// The `AUDIT_ARCH_*` value seccomp_data carries for an architecture (x32 shares
/// x86_64's and sets bit 30 in the syscall number).
fn audit_arch(arch: ScmpArch) -> Option<u32> {
    const BITS64: u32 = 0x8000_0000;
    const LE: u32 = 0x4000_0000;
    const MIPS64_N32: u32 = 0x2000_0000;
    Some(match arch {
        ScmpArch::X8664 => 62 | BITS64 | LE,
        ScmpArch::X86 => 3 | LE,
        ScmpArch::Aarch64 => 183 | BITS64 | LE,
        ScmpArch::Arm => 40 | LE,
        ScmpArch::Riscv64 => 243 | BITS64 | LE,
        ScmpArch::Loongarch64 => 258 | BITS64 | LE,
        ScmpArch::S390X => 22 | BITS64,
        ScmpArch::S390 => 22,
        ScmpArch::Ppc64Le => 21 | BITS64 | LE,
        ScmpArch::Ppc64 => 21 | BITS64,
        ScmpArch::Ppc => 20,
        ScmpArch::Mips => 8,
        ScmpArch::Mipsel => 8 | LE,
        ScmpArch::Mips64 => 8 | BITS64,
        ScmpArch::Mipsel64 => 8 | BITS64 | LE,
        ScmpArch::Mips64N32 => 8 | BITS64 | MIPS64_N32,
        ScmpArch::Mipsel64N32 => 8 | BITS64 | LE | MIPS64_N32,
        _ => return None,
    })
}

fn parse_arch(name: &str) -> Result<ScmpArch, SeccompError> {
    name.parse()
        .map_err(|_| SeccompError::UnknownArchitecture(name.to_owned()))
}

impl Profile {
    /// Docker's default profile (embedded; a unit test checks that it parses).
    pub fn docker_default() -> Result<Profile, SeccompError> {
        Profile::from_json(DEFAULT_PROFILE.as_bytes())
    }

    /// A profile in docker's JSON format.
    pub fn from_json(json: &[u8]) -> Result<Profile, SeccompError> {
        let de = &mut serde_json::Deserializer::from_slice(json);
        let profile =
            serde_path_to_error::deserialize(&mut *de).map_err(|e| SeccompError::Parse(e.to_string()))?;
        de.end().map_err(|e| SeccompError::Parse(e.to_string()))?;
        Ok(profile)
    }

    /// The `archMap` entry of the native architecture, by libseccomp's reading of its
    /// name (docker compares names: entries for architectures libseccomp does not know
    /// are no error).
    fn native_arch_map(&self, native: ScmpArch) -> Option<&ArchMap> {
        self.arch_map
            .iter()
            .find(|a| a.architecture.parse::<ScmpArch>().ok() == Some(native))
    }

    /// The profile as the OCI runtime spec's `linux.seccomp` for a container with `caps`
    /// on this machine, as docker hands it to runc: the rules that apply, the native
    /// architecture and its sub-architectures.
    pub fn to_runtime_spec(&self, caps: &[&str]) -> Result<serde_json::Value, SeccompError> {
        let kernel = KernelVersion::running()?;
        let native = ScmpArch::native();
        let architectures: Vec<String> = if self.architectures.is_empty() {
            self.native_arch_map(native)
                .map(|a| {
                    std::iter::once(&a.architecture)
                        .chain(&a.sub_architectures)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        } else {
            self.architectures.clone()
        };
        let syscalls: Vec<serde_json::Value> = self
            .syscalls
            .iter()
            .filter(|r| r.applies(caps, docker_arch_name(native), kernel))
            .map(|r| {
                let names = if r.names.is_empty() {
                    r.name.iter().cloned().collect()
                } else {
                    r.names.clone()
                };
                let mut rule = serde_json::json!({ "names": names, "action": r.action });
                if let Some(e) = r.errno_ret {
                    rule["errnoRet"] = e.into();
                }
                if !r.args.is_empty() {
                    rule["args"] = serde_json::json!(r.args);
                }
                rule
            })
            .collect();
        let mut spec = serde_json::json!({
            "defaultAction": self.default_action,
            "architectures": architectures,
            "syscalls": syscalls,
        });
        if let Some(e) = self.default_errno_ret {
            spec["defaultErrnoRet"] = e.into();
        }
        if !self.flags.is_empty() {
            spec["flags"] = serde_json::json!(self.flags);
        }
        Ok(spec)
    }

    /// A profile file in docker's JSON format.
    pub fn from_file(path: &Path) -> Result<Profile, SeccompError> {
        let json = std::fs::read(path).map_err(|source| SeccompError::Read {
            path: path.to_owned(),
            source,
        })?;
        Profile::from_json(&json)
    }

    /// Compiles the profile for a container whose capabilities (bounding set) are `caps`
    /// (names such as `CAP_CHOWN`), on the running kernel.
    pub fn compile(&self, caps: &[&str]) -> Result<Filter, SeccompError> {
        self.compile_for(caps, KernelVersion::running()?)
    }

    /// [`Profile::compile`] as if the running kernel were `kernel`.
    pub fn compile_for(&self, caps: &[&str], kernel: KernelVersion) -> Result<Filter, SeccompError> {
        if !self.architectures.is_empty() && !self.arch_map.is_empty() {
            return Err(SeccompError::ArchitecturesAndArchMap);
        }
        let native = ScmpArch::native();
        let native_name = docker_arch_name(native);

        let mut arches = vec![native];
        let mut add = |a: ScmpArch| {
            if !arches.contains(&a) {
                arches.push(a);
            }
        };
        if self.architectures.is_empty() {
            // Docker compares names, so entries for architectures libseccomp does not
            // know are no error unless they are the native one's.
            if let Some(entry) = self.native_arch_map(native) {
                for sub in &entry.sub_architectures {
                    add(parse_arch(sub)?);
                }
            }
        } else {
            for a in &self.architectures {
                add(parse_arch(a)?);
            }
        }

        let mut flags = 0;
        for f in &self.flags {
            flags |= match f.as_str() {
                // Meaningless for a single-threaded process about to exec.
                "SECCOMP_FILTER_FLAG_TSYNC" => 0,
                "SECCOMP_FILTER_FLAG_LOG" => 2,
                "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => 4,
                _ => return Err(SeccompError::UnknownFlag(f.clone())),
            };
        }

        let default = self
            .default_action
            .scmp(self.default_errno_ret)
            .ok_or(SeccompError::NotifyDefault)?;
        let mut ctx = ScmpFilterContext::new(default).map_err(lib("seccomp_init"))?;
        // The runner sets no_new_privs itself, and only when it wants to.
        ctx.set_ctl_nnp(false).map_err(lib("SCMP_FLTATR_CTL_NNP"))?;
        for &arch in &arches[1..] {
            ctx.add_arch(arch)
                .map_err(lib(format!("add architecture {arch:?}")))?;
        }

        // Every syscall a rule applied to, for the ENOSYS stub.
        let mut named: Vec<&str> = Vec::new();
        for (i, rule) in self.syscalls.iter().enumerate() {
            if !rule.applies(caps, native_name, kernel) {
                continue;
            }
            let names: &[String] = match (&rule.name, rule.names.is_empty()) {
                (Some(_), false) => return Err(SeccompError::NameAndNames { rule: i }),
                (Some(name), true) => std::slice::from_ref(name),
                (None, _) => &rule.names,
            };
            if let Some(arg) = rule.args.iter().find(|a| a.index > 5) {
                return Err(SeccompError::ArgumentIndex {
                    rule: i,
                    index: arg.index,
                });
            }
            let action = rule
                .action
                .scmp(rule.errno_ret)
                .ok_or(SeccompError::Notify { rule: i })?;
            let compares: Vec<ScmpArgCompare> = rule.args.iter().map(Arg::compare).collect();
            // Two conditions on one argument: each its own rule, as runc does.
            let separate = rule
                .args
                .iter()
                .enumerate()
                .any(|(j, a)| rule.args[..j].iter().any(|b| b.index == a.index));
            for name in names {
                let Ok(syscall) = ScmpSyscall::from_name(name) else {
                    continue;
                };
                named.push(name.as_str());
                if action == default {
                    continue;
                }
                let what = || format!("rule {i}, {name}");
                if separate {
                    for c in &compares {
                        ctx.add_rule_conditional(action, syscall, std::slice::from_ref(c))
                            .map_err(lib(what()))?;
                    }
                } else {
                    ctx.add_rule_conditional(action, syscall, &compares)
                        .map_err(lib(what()))?;
                }
            }
        }

        let stub = match default {
            ScmpAction::Allow | ScmpAction::Log | ScmpAction::Trace(_) => Vec::new(),
            ScmpAction::Errno(e) if e == libc::ENOSYS => Vec::new(),
            _ => enosys_stub(&arches, &named),
        };
        let mut program = export(&ctx)?;
        if stub.len() + program.len() > MAX_INSTRUCTIONS {
            // libseccomp's binary tree of syscalls is shorter than its default list.
            ctx.set_ctl_optimize(2).map_err(lib("SCMP_FLTATR_CTL_OPTIMIZE"))?;
            program = export(&ctx)?;
        }
        let program = [stub, program].concat();
        if program.len() > MAX_INSTRUCTIONS {
            return Err(SeccompError::TooLarge(program.len()));
        }
        Ok(Filter { program, flags })
    }
}

/// The program libseccomp generates for `ctx`.
fn export(ctx: &ScmpFilterContext) -> Result<Vec<libc::sock_filter>, SeccompError> {
    let fd = rustix::fs::memfd_create("strata-seccomp", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| SeccompError::Export(e.into()))?;
    let mut file = File::from(fd);
    ctx.export_bpf(&file).map_err(lib("export"))?;
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(SeccompError::Export)?;
    if !bytes.len().is_multiple_of(8) {
        return Err(SeccompError::Truncated(bytes.len()));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|i| libc::sock_filter {
            code: u16::from_ne_bytes([i[0], i[1]]),
            jt: i[2],
            jf: i[3],
            k: u32::from_ne_bytes([i[4], i[5], i[6], i[7]]),
        })
        .collect())
}

// Classic BPF opcodes the stub uses.
const LD_W_ABS: u16 = 0x20;
const JA: u16 = 0x05;
const JEQ_K: u16 = 0x15;
const JGT_K: u16 = 0x25;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// runc's ENOSYS stub: for each architecture of the filter, syscall numbers above the
/// highest `names` has there return `ENOSYS`; everything else goes on to the filter
/// proper, which follows the stub (and loads the architecture again first).
fn enosys_stub(arches: &[ScmpArch], names: &[&str]) -> Vec<libc::sock_filter> {
    let highest = |arch: ScmpArch| {
        names
            .iter()
            .filter_map(|n| ScmpSyscall::from_name_by_arch(n, arch).ok())
            .map(|s| s.as_raw_syscall())
            .filter(|&nr| nr >= 0)
            .max()
            .map(|nr| nr as u32)
    };
    let x32 = arches
        .contains(&ScmpArch::X32)
        .then(|| highest(ScmpArch::X32))
        .flatten()
        .map(|nr| nr | X32_SYSCALL_BIT);
    // One block per architecture: (audit arch, highest number, x32's highest).
    let blocks: Vec<(u32, u32, Option<u32>)> = arches
        .iter()
        .filter(|&&a| a != ScmpArch::X32)
        .filter_map(|&a| {
            let x32 = if a == ScmpArch::X8664 { x32 } else { None };
            Some((audit_arch(a)?, highest(a)?, x32))
        })
        .collect();
    if blocks.is_empty() {
        return Vec::new();
    }
    let block_len = |b: &(u32, u32, Option<u32>)| if b.2.is_some() { 6 } else { 3 };
    // Layout: ld arch; blocks; ja end; enosys: ret ERRNO(ENOSYS); end: the filter.
    let enosys = 1 + blocks.iter().map(block_len).sum::<usize>() + 1;
    let end = enosys + 1;
    // A jump from `pc` to `target`: offsets count from the next instruction. Blocks are
    // at most 6 instructions, so every offset is small.
    let off = |pc: usize, target: usize| u8::try_from(target - pc - 1).expect("short jump");
    let mut out = vec![insn(LD_W_ABS, 0, 0, 4)];
    for b in &blocks {
        let start = out.len();
        let next = start + block_len(b);
        let (audit, max, x32) = *b;
        out.push(insn(JEQ_K, 0, off(start, next), audit));
        out.push(insn(LD_W_ABS, 0, 0, 0));
        match x32 {
            None => out.push(insn(JGT_K, off(start + 2, enosys), off(start + 2, end), max)),
            Some(x32_max) => {
                out.push(insn(JSET_K, 2, 0, X32_SYSCALL_BIT));
                out.push(insn(JGT_K, off(start + 3, enosys), 0, max));
                out.push(insn(JA, 0, 0, (end - start - 5) as u32));
                out.push(insn(JGT_K, off(start + 5, enosys), off(start + 5, end), x32_max));
            }
        }
    }
    out.push(insn(JA, 0, 0, 1));
    out.push(insn(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32));
    debug_assert_eq!(out.len(), end);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Docker's default capabilities.
    const DEFAULT_CAPS: [&str; 14] = {
        let mut names = [""; 14];
        let mut i = 0;
        while i < 14 {
            names[i] = crate::sys::DEFAULT_CAPABILITIES[i].0;
            i += 1;
        }
        names
    };

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | 1;
    const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | 38;

    fn with(extra: &[&'static str]) -> Vec<&'static str> {
        DEFAULT_CAPS.iter().chain(extra).copied().collect()
    }

    fn key(p: &[libc::sock_filter]) -> Vec<(u16, u8, u8, u32)> {
        p.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect()
    }

    /// A classic BPF interpreter for seccomp programs: the kernel's semantics for the
    /// instructions libseccomp and the stub emit (anything else fails the test).
    fn run(program: &[libc::sock_filter], arch: u32, nr: i64, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&(nr as i32).to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let word = |k: u32| {
            let k = k as usize;
            assert!(k.is_multiple_of(4) && k + 4 <= data.len(), "load at {k}");
            u32::from_ne_bytes(data[k..k + 4].try_into().unwrap())
        };
        let (mut a, mut x, mut mem) = (0u32, 0u32, [0u32; 16]);
        let mut pc = 0;
        loop {
            let i = program[pc];
            pc += 1;
            let k = i.k;
            let jump = |cond: bool| if cond { i.jt as usize } else { i.jf as usize };
            match i.code {
                0x20 => a = word(k),            // ld [k]
                0x00 => a = k,                  // ld #k
                0x60 => a = mem[k as usize],    // ld M[k]
                0x01 => x = k,                  // ldx #k
                0x61 => x = mem[k as usize],    // ldx M[k]
                0x02 => mem[k as usize] = a,    // st M[k]
                0x03 => mem[k as usize] = x,    // stx M[k]
                0x54 => a &= k,                 // and #k
                0x5c => a &= x,                 // and x
                0x44 => a |= k,                 // or #k
                0x74 => a = a.wrapping_shr(k),  // rsh #k
                0x04 => a = a.wrapping_add(k),  // add #k
                0x87 => a = x,                  // txa
                0x07 => x = a,                  // tax
                0x05 => pc += k as usize,       // ja
                0x15 => pc += jump(a == k),     // jeq #k
                0x25 => pc += jump(a > k),      // jgt #k
                0x35 => pc += jump(a >= k),     // jge #k
                0x45 => pc += jump(a & k != 0), // jset #k
                0x1d => pc += jump(a == x),     // jeq x
                0x2d => pc += jump(a > x),      // jgt x
                0x3d => pc += jump(a >= x),     // jge x
                0x06 => return k,               // ret #k
                0x16 => return a,               // ret a
                op => panic!("opcode {op:#x} at {}", pc - 1),
            }
            assert!(pc < program.len(), "ran off the end");
        }
    }

    #[cfg(target_arch = "x86_64")]
    mod x86_64 {
        use super::*;

        const AUDIT_X86_64: u32 = 0xc000_003e;
        const AUDIT_I386: u32 = 0x4000_0003;
        const CLONE_NEWUSER: u64 = 0x1000_0000;

        fn sys(p: &Filter, nr: i64, args: [u64; 6]) -> u32 {
            run(p.program(), AUDIT_X86_64, nr, args)
        }

        fn call(p: &Filter, nr: i64) -> u32 {
            sys(p, nr, [0; 6])
        }

        #[test]
        fn default_caps() {
            let f = Profile::docker_default().unwrap().compile(&DEFAULT_CAPS).unwrap();
            assert_eq!(call(&f, libc::SYS_read), ALLOW);
            assert_eq!(call(&f, libc::SYS_write), ALLOW);
            assert_eq!(call(&f, libc::SYS_execve), ALLOW);
            assert_eq!(call(&f, libc::SYS_arch_prctl), ALLOW);
            for nr in [
                libc::SYS_keyctl,
                libc::SYS_add_key,
                libc::SYS_request_key,
                libc::SYS_unshare,
                libc::SYS_mount,
                libc::SYS_setns,
                libc::SYS_bpf,
                libc::SYS_kexec_load,
                libc::SYS_init_module,
                libc::SYS_finit_module,
                libc::SYS_reboot,
                libc::SYS_swapon,
                libc::SYS_open_by_handle_at,
            ] {
                assert_eq!(call(&f, nr), EPERM, "syscall {nr}");
            }
            // CAP_SYS_CHROOT is a default capability.
            assert_eq!(call(&f, libc::SYS_chroot), ALLOW);
            // clone: no namespaces without CAP_SYS_ADMIN; clone3 hides its flags.
            let sigchld = libc::SIGCHLD as u64;
            assert_eq!(sys(&f, libc::SYS_clone, [sigchld, 0, 0, 0, 0, 0]), ALLOW);
            assert_eq!(
                sys(&f, libc::SYS_clone, [sigchld | CLONE_NEWUSER, 0, 0, 0, 0, 0]),
                EPERM
            );
            assert_eq!(
                sys(&f, libc::SYS_clone, [0x1_0000_0000 | sigchld, 0, 0, 0, 0, 0]),
                ALLOW
            );
            assert_eq!(call(&f, libc::SYS_clone3), ENOSYS);
            // personality: only the harmless personas.
            for (persona, ret) in [
                (0, ALLOW),
                (8, ALLOW),
                (0x2_0000, ALLOW),
                (0xffff_ffff, ALLOW),
                (0x1234, EPERM),
            ] {
                assert_eq!(
                    sys(&f, libc::SYS_personality, [persona, 0, 0, 0, 0, 0]),
                    ret,
                    "{persona:#x}"
                );
            }
            // socket: not AF_ALG (38) nor AF_VSOCK (40).
            for (family, ret) in [
                (1, ALLOW),
                (2, ALLOW),
                (10, ALLOW),
                (16, ALLOW),
                (38, EPERM),
                (39, ALLOW),
                (40, EPERM),
                (44, ALLOW),
            ] {
                assert_eq!(
                    sys(&f, libc::SYS_socket, [family, 0, 0, 0, 0, 0]),
                    ret,
                    "family {family}"
                );
            }
            // ptrace from 4.8 on, and not on older kernels.
            assert_eq!(call(&f, libc::SYS_ptrace), ALLOW);
            let old = Profile::docker_default()
                .unwrap()
                .compile_for(&DEFAULT_CAPS, KernelVersion(4, 7))
                .unwrap();
            assert_eq!(call(&old, libc::SYS_ptrace), EPERM);
            assert_eq!(call(&old, libc::SYS_read), ALLOW);
            // Numbers above every syscall of the profile: ENOSYS, so libc falls back.
            assert_eq!(call(&f, 1000), ENOSYS);
            // fchmodat2 is in the allowlist: allowed if libseccomp knows it, else ENOSYS.
            let r = call(&f, libc::SYS_fchmodat2);
            assert!(r == ALLOW || r == ENOSYS, "fchmodat2: {r:#x}");
        }

        #[test]
        fn sys_admin() {
            let f = Profile::docker_default()
                .unwrap()
                .compile(&with(&["CAP_SYS_ADMIN"]))
                .unwrap();
            for nr in [
                libc::SYS_unshare,
                libc::SYS_mount,
                libc::SYS_setns,
                libc::SYS_clone3,
                libc::SYS_bpf,
            ] {
                assert_eq!(call(&f, nr), ALLOW, "syscall {nr}");
            }
            assert_eq!(sys(&f, libc::SYS_clone, [CLONE_NEWUSER, 0, 0, 0, 0, 0]), ALLOW);
            assert_eq!(call(&f, libc::SYS_keyctl), EPERM);
            assert_eq!(call(&f, libc::SYS_init_module), EPERM);
        }

        #[test]
        fn other_caps() {
            let p = Profile::docker_default().unwrap();
            let f = p
                .compile(&with(&["CAP_SYS_MODULE", "CAP_SYS_PTRACE", "CAP_SYS_TIME"]))
                .unwrap();
            assert_eq!(call(&f, libc::SYS_init_module), ALLOW);
            assert_eq!(call(&f, libc::SYS_kcmp), ALLOW);
            assert_eq!(call(&f, libc::SYS_settimeofday), ALLOW);
            assert_eq!(call(&f, libc::SYS_unshare), EPERM);
            let f = p.compile(&DEFAULT_CAPS).unwrap();
            assert_eq!(call(&f, libc::SYS_kcmp), EPERM);
            assert_eq!(call(&f, libc::SYS_settimeofday), EPERM);
            // Without CAP_SYS_CHROOT, no chroot.
            let f = p.compile(&["CAP_CHOWN"]).unwrap();
            assert_eq!(call(&f, libc::SYS_chroot), EPERM);
        }

        #[test]
        fn sub_architectures() {
            let f = Profile::docker_default().unwrap().compile(&DEFAULT_CAPS).unwrap();
            // i386: read is 3, unshare 310, keyctl 288; socketcall is allowed.
            assert_eq!(run(f.program(), AUDIT_I386, 3, [0; 6]), ALLOW);
            assert_eq!(run(f.program(), AUDIT_I386, 310, [0; 6]), EPERM);
            assert_eq!(run(f.program(), AUDIT_I386, 288, [0; 6]), EPERM);
            assert_eq!(run(f.program(), AUDIT_I386, 102, [0; 6]), ALLOW);
            assert_eq!(run(f.program(), AUDIT_I386, 5000, [0; 6]), ENOSYS);
            // x32: the x86_64 arch with bit 30 set.
            let x32 = |nr: i64| run(f.program(), AUDIT_X86_64, nr | 0x4000_0000, [0; 6]);
            assert_eq!(x32(libc::SYS_read), ALLOW);
            assert_eq!(x32(libc::SYS_keyctl), EPERM);
            assert_eq!(x32(5000), ENOSYS);
            // Any other architecture: killed.
            let r = run(f.program(), 0xc000_00b7, 63, [0; 6]);
            assert!(
                r == libc::SECCOMP_RET_KILL_THREAD || r == libc::SECCOMP_RET_KILL_PROCESS,
                "{r:#x}"
            );
        }

        #[test]
        fn custom_profile() {
            let p = Profile::from_json(
                br#"{
                    "defaultAction": "SCMP_ACT_ALLOW",
                    "syscalls": [
                        {"name": "mkdir", "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                        {"names": ["chmod", "read"], "action": "SCMP_ACT_ALLOW"},
                        {"names": ["no_such_syscall"], "action": "SCMP_ACT_KILL"},
                        {"names": ["write"], "action": "SCMP_ACT_ERRNO",
                         "args": [{"index": 0, "value": 3, "op": "SCMP_CMP_GE"},
                                  {"index": 2, "value": 4096, "valueTwo": 0, "op": "SCMP_CMP_GT"}]},
                        {"names": ["lseek"], "action": "SCMP_ACT_ERRNO",
                         "args": [{"index": 2, "value": 0, "op": "SCMP_CMP_EQ"},
                                  {"index": 2, "value": 2, "op": "SCMP_CMP_EQ"}]}
                    ]
                }"#,
            )
            .unwrap();
            let f = p.compile(&[]).unwrap();
            assert_eq!(call(&f, libc::SYS_mkdir), libc::SECCOMP_RET_ERRNO | 13);
            assert_eq!(call(&f, libc::SYS_read), ALLOW);
            // No ENOSYS stub when everything else is allowed.
            assert_eq!(call(&f, 1000), ALLOW);
            // Conditions on different arguments: all of them.
            assert_eq!(sys(&f, libc::SYS_write, [3, 0, 8192, 0, 0, 0]), EPERM);
            assert_eq!(sys(&f, libc::SYS_write, [3, 0, 100, 0, 0, 0]), ALLOW);
            assert_eq!(sys(&f, libc::SYS_write, [1, 0, 8192, 0, 0, 0]), ALLOW);
            // Two on one argument: either.
            assert_eq!(sys(&f, libc::SYS_lseek, [3, 0, 0, 0, 0, 0]), EPERM);
            assert_eq!(sys(&f, libc::SYS_lseek, [3, 0, 2, 0, 0, 0]), EPERM);
            assert_eq!(sys(&f, libc::SYS_lseek, [3, 0, 1, 0, 0, 0]), ALLOW);
        }
    }

    #[test]
    fn default_profile() {
        let p = Profile::docker_default().unwrap();
        assert_eq!(p.default_action, Action::Errno);
        assert_eq!(p.default_errno_ret, Some(1));
        assert!(p.syscalls[0].names.len() > 300);
        assert!(
            p.syscalls
                .iter()
                .any(|r| r.includes.as_ref().is_some_and(|i| i.caps == ["CAP_SYS_ADMIN"]))
        );
        // It survives a round trip through serde.
        let json = serde_json::to_vec(&p).unwrap();
        assert_eq!(Profile::from_json(&json).unwrap(), p);
    }

    #[test]
    fn compiles_small_and_per_capabilities() {
        let p = Profile::docker_default().unwrap();
        let start = std::time::Instant::now();
        let f = p.compile(&DEFAULT_CAPS).unwrap();
        let took = start.elapsed();
        let n = f.program().len();
        eprintln!("docker's default profile: {n} instructions, compiled in {took:?}");
        assert!(n > 100 && n <= MAX_INSTRUCTIONS, "{n} instructions");
        assert_eq!(f.flags(), 0);
        let admin = p.compile(&with(&["CAP_SYS_ADMIN"])).unwrap();
        assert_ne!(key(f.program()), key(admin.program()));
        // Deterministic.
        assert_eq!(key(f.program()), key(p.compile(&DEFAULT_CAPS).unwrap().program()));
    }

    #[test]
    fn errors() {
        let err = |json: &str| Profile::from_json(json.as_bytes()).unwrap_err().to_string();
        let e = err(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": "read", "action": "SCMP_ACT_ALLOW"}]}"#,
        );
        assert!(
            e.contains("syscalls[0].names") && e.contains("invalid type"),
            "{e}"
        );
        let e = err(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_BOGUS"}]}"#,
        );
        assert!(
            e.contains("syscalls[0].action") && e.contains("SCMP_ACT_BOGUS"),
            "{e}"
        );
        let e = err(r#"{"syscalls": []}"#);
        assert!(e.contains("defaultAction"), "{e}");
        let e = err(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ABOUT"}]}]}"#,
        );
        assert!(
            e.contains("syscalls[0].args[0].op") && e.contains("SCMP_CMP_ABOUT"),
            "{e}"
        );
        let e = err(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4"}}]}"#,
        );
        assert!(e.contains("invalid kernel version"), "{e}");
        let e = err("{not json");
        assert!(e.starts_with("invalid seccomp profile"), "{e}");

        let compile_err = |json: &str| {
            Profile::from_json(json.as_bytes())
                .unwrap()
                .compile(&[])
                .unwrap_err()
                .to_string()
        };
        let e = compile_err(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
        );
        assert!(e.contains("argument index 6"), "{e}");
        let e = compile_err(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_VAX"], "syscalls": []}"#,
        );
        assert!(e.contains("SCMP_ARCH_VAX"), "{e}");
        let e = compile_err(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]}"#,
        );
        assert!(e.contains("SCMP_ACT_NOTIFY"), "{e}");
        let e = compile_err(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "flags": ["SECCOMP_FILTER_FLAG_BOGUS"], "syscalls": []}"#,
        );
        assert!(e.contains("SECCOMP_FILTER_FLAG_BOGUS"), "{e}");
        let e = compile_err(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"name": "read", "names": ["write"], "action": "SCMP_ACT_ALLOW"}]}"#,
        );
        assert!(e.contains("both 'name' and 'names'"), "{e}");
    }

    #[test]
    fn too_large() {
        // 5000 conditional rules are more than the kernel takes, even as a binary tree.
        let rules: Vec<String> = (0..5000)
            .map(|v| format!(r#"{{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{{"index": 0, "value": {v}, "op": "SCMP_CMP_EQ"}}]}}"#))
            .collect();
        let json = format!(
            r#"{{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{}]}}"#,
            rules.join(",")
        );
        let e = Profile::from_json(json.as_bytes())
            .unwrap()
            .compile(&[])
            .unwrap_err();
        assert!(
            matches!(e, SeccompError::TooLarge(n) if n > MAX_INSTRUCTIONS),
            "{e}"
        );
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(
            KernelVersion::parse("6.18.44-fc-v1045"),
            Some(KernelVersion(6, 18))
        );
        assert_eq!(KernelVersion::parse("3.12-1-amd64"), Some(KernelVersion(3, 12)));
        assert_eq!(KernelVersion::parse("5.4"), Some(KernelVersion(5, 4)));
        assert_eq!(KernelVersion::parse("5"), None);
        assert!(KernelVersion(4, 8) < KernelVersion(4, 10));
        assert!(KernelVersion::running().is_ok());
    }

    /// The stub's audit values match the ones libseccomp's own program tests.
    #[test]
    fn audit_arch_matches_libseccomp() {
        let f = Profile::docker_default().unwrap().compile(&DEFAULT_CAPS).unwrap();
        let native = audit_arch(ScmpArch::native()).unwrap();
        let stub_end = f.program().iter().position(|i| i.code == RET_K).unwrap() + 1;
        assert!(
            f.program()[stub_end..]
                .iter()
                .any(|i| i.code == JEQ_K && i.k == native)
        );
    }

    #[test]
    fn compiled_programs_are_cached_and_read_back_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let key = |p: &[libc::sock_filter]| -> Vec<(u16, u8, u8, u32)> {
            p.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect()
        };
        let fresh = Profile::docker_default().unwrap().compile(&DEFAULT_CAPS).unwrap();
        let first = compile_cached(dir.path(), docker_default_source(), &DEFAULT_CAPS).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let second = compile_cached(dir.path(), docker_default_source(), &DEFAULT_CAPS).unwrap();
        assert_eq!(key(fresh.program()), key(first.program()));
        assert_eq!(key(first.program()), key(second.program()));
        assert_eq!(first.flags(), second.flags());
        // Other capabilities are another program, in another entry.
        let admin: Vec<&str> = DEFAULT_CAPS.iter().copied().chain(["CAP_SYS_ADMIN"]).collect();
        let other = compile_cached(dir.path(), docker_default_source(), &admin).unwrap();
        assert_ne!(key(other.program()), key(first.program()));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        // A damaged entry is compiled again, not trusted.
        for e in std::fs::read_dir(dir.path()).unwrap() {
            std::fs::write(e.unwrap().path(), b"junk").unwrap();
        }
        let again = compile_cached(dir.path(), docker_default_source(), &DEFAULT_CAPS).unwrap();
        assert_eq!(key(again.program()), key(fresh.program()));
    }
}
