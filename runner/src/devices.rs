//! Device access rules for cgroup v2, where there is no devices controller: the rules (in
//! the v1 controller's syntax, `c 1:3 rwm`) become an eBPF program of type
//! `BPF_PROG_TYPE_CGROUP_DEVICE`, which the kernel runs on every open and mknod of a device
//! node by a process of the cgroup it is attached to (`sys::load_device_program`,
//! `sys::attach_device_program`).
//!
//! The semantics are the v1 controller's, as runc emulates them: writing `a` resets to a
//! default (deny all for `devices.deny`, allow all for `devices.allow`) with no exceptions;
//! a rule of the other kind adds an exception (merged with one for the same device); a rule
//! of the default's kind takes its access away from the exceptions for that same device.
//! Under a deny default, a request is allowed when an exception for its device grants all
//! the access it asks for; under an allow default, it is denied when an exception for its
//! device names any of the access it asks for.
//!
//! The program, as runc's: it loads the request's type (low 16 bits of `access_type`, the
//! first `u32` of `struct bpf_cgroup_dev_ctx`), its access (high 16 bits), major and
//! minor, then tests each exception in order (type, access, major and minor; a wildcard
//! skips its compare) and returns the exception's verdict on a match, else the default
//! (1 allows, 0 denies).

use std::fmt;

/// `BPF_DEVCG_DEV_BLOCK`, a request's type for a block device.
pub const DEV_BLOCK: u32 = 1;
/// `BPF_DEVCG_DEV_CHAR`, a request's type for a character device.
pub const DEV_CHAR: u32 = 2;

/// A rule that cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error("device rule {rule:?}: {reason}")]
pub struct DeviceRuleError {
    rule: String,
    reason: &'static str,
}

/// The kind of device node a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceType {
    Char,
    Block,
}

impl DeviceType {
    /// The type as the kernel passes it to the program (`BPF_DEVCG_DEV_*`).
    pub fn bpf(self) -> u32 {
        match self {
            DeviceType::Char => DEV_CHAR,
            DeviceType::Block => DEV_BLOCK,
        }
    }
}

/// A set of accesses: mknod, read, write, with the kernel's bits (`BPF_DEVCG_ACC_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Access(u32);

impl Access {
    pub const MKNOD: Access = Access(1);
    pub const READ: Access = Access(2);
    pub const WRITE: Access = Access(4);
    pub const ALL: Access = Access(7);

    /// The `BPF_DEVCG_ACC_*` bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every access of `other` is in `self`.
    pub fn contains(self, other: Access) -> bool {
        other.0 & !self.0 == 0
    }

    /// Whether `self` and `other` share an access.
    pub fn intersects(self, other: Access) -> bool {
        self.0 & other.0 != 0
    }

    fn without(self, other: Access) -> Access {
        Access(self.0 & !other.0)
    }
}

impl std::ops::BitOr for Access {
    type Output = Access;

    fn bitor(self, other: Access) -> Access {
        Access(self.0 | other.0)
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (a, c) in [(Access::READ, 'r'), (Access::WRITE, 'w'), (Access::MKNOD, 'm')] {
            if self.contains(a) {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// A rule about some device nodes: a type, a major and minor (`None` for `*`), the access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    pub kind: DeviceType,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: Access,
}

impl DeviceRule {
    /// Whether the rule is about the same devices as `other` (v1's exact match).
    fn same_devices(&self, other: &DeviceRule) -> bool {
        self.kind == other.kind && self.major == other.major && self.minor == other.minor
    }

    /// Whether the rule is about device `major:minor` of type `kind`.
    fn covers(&self, kind: DeviceType, major: u32, minor: u32) -> bool {
        self.kind == kind && self.major.is_none_or(|m| m == major) && self.minor.is_none_or(|m| m == minor)
    }
}

impl fmt::Display for DeviceRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let num = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
        let kind = match self.kind {
            DeviceType::Char => 'c',
            DeviceType::Block => 'b',
        };
        write!(
            f,
            "{kind} {}:{} {}",
            num(self.major),
            num(self.minor),
            self.access
        )
    }
}

/// One line written to v1's `devices.allow` or `devices.deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// `a` (or `a *:* rwm`): every device, every access.
    All,
    Device(DeviceRule),
}

impl std::str::FromStr for Rule {
    type Err = DeviceRuleError;

    /// Parses a rule in the v1 controller's syntax: `a`, or `TYPE MAJOR:MINOR ACCESS` with
    /// TYPE `c`, `b` or `a`, MAJOR and MINOR numbers or `*`, ACCESS some of `r`, `w`, `m`.
    fn from_str(s: &str) -> Result<Rule, DeviceRuleError> {
        let bad = |reason| DeviceRuleError {
            rule: s.to_string(),
            reason,
        };
        let fields: Vec<&str> = s.split_whitespace().collect();
        if fields == ["a"] {
            return Ok(Rule::All);
        }
        let [kind, numbers, access] = fields[..] else {
            return Err(bad("expected `a` or `TYPE MAJOR:MINOR ACCESS`"));
        };
        let (major, minor) = numbers.split_once(':').ok_or(bad("expected MAJOR:MINOR"))?;
        let number = |n: &str| -> Result<Option<u32>, DeviceRuleError> {
            if n == "*" {
                return Ok(None);
            }
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("a device number is digits or `*`"));
            }
            // The program compares with 32-bit immediates, sign-extended: keep them
            // positive (the kernel's majors have 12 bits, its minors 20).
            n.parse::<i32>()
                .ok()
                .map(|n| Some(n as u32))
                .ok_or(bad("device number out of range"))
        };
        let (major, minor) = (number(major)?, number(minor)?);
        let mut bits = Access::default();
        for c in access.chars() {
            let a = match c {
                'r' => Access::READ,
                'w' => Access::WRITE,
                'm' => Access::MKNOD,
                _ => return Err(bad("access is some of r, w and m")),
            };
            if bits.contains(a) {
                return Err(bad("access named twice"));
            }
            bits = bits | a;
        }
        if bits.is_empty() {
            return Err(bad("no access"));
        }
        let kind = match kind {
            "c" => DeviceType::Char,
            "b" => DeviceType::Block,
            "a" if major.is_none() && minor.is_none() && bits == Access::ALL => return Ok(Rule::All),
            "a" => return Err(bad("type `a` is for every device, `a *:* rwm`")),
            _ => return Err(bad("the type is c, b or a")),
        };
        Ok(Rule::Device(DeviceRule {
            kind,
            major,
            minor,
            access: bits,
        }))
    }
}

/// The device access of a cgroup: a default and its exceptions, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePolicy {
    default_allow: bool,
    exceptions: Vec<DeviceRule>,
}

impl DevicePolicy {
    /// Every device allowed (`devices.allow` ← `a`): a privileged container's.
    pub fn allow_all() -> DevicePolicy {
        DevicePolicy {
            default_allow: true,
            exceptions: Vec::new(),
        }
    }

    /// Every device denied (`devices.deny` ← `a`).
    pub fn deny_all() -> DevicePolicy {
        DevicePolicy {
            default_allow: false,
            exceptions: Vec::new(),
        }
    }

    /// Everything denied, then `rules` allowed (each parsed).
    pub fn allowlist<'a>(rules: impl IntoIterator<Item = &'a str>) -> Result<DevicePolicy, DeviceRuleError> {
        let mut p = DevicePolicy::deny_all();
        for r in rules {
            p.apply(true, r.parse()?);
        }
        Ok(p)
    }

    /// Docker's confined containers' devices: everything denied, then
    /// [`DEVICE_ALLOW`](crate::cgroup::DEVICE_ALLOW).
    pub fn docker() -> DevicePolicy {
        DevicePolicy::allowlist(crate::cgroup::DEVICE_ALLOW).expect("DEVICE_ALLOW parses")
    }

    /// What writing `rule` to v1's `devices.allow` (`allow`) or `devices.deny` does.
    pub fn apply(&mut self, allow: bool, rule: Rule) {
        match rule {
            Rule::All => {
                self.default_allow = allow;
                self.exceptions.clear();
            }
            Rule::Device(rule) if allow != self.default_allow => {
                match self.exceptions.iter_mut().find(|e| e.same_devices(&rule)) {
                    Some(e) => e.access = e.access | rule.access,
                    None => self.exceptions.push(rule),
                }
            }
            Rule::Device(rule) => {
                for e in self.exceptions.iter_mut().filter(|e| e.same_devices(&rule)) {
                    e.access = e.access.without(rule.access);
                }
                self.exceptions.retain(|e| !e.access.is_empty());
            }
        }
    }

    /// Whether every device is allowed (no program is needed).
    pub fn allows_all(&self) -> bool {
        self.default_allow && self.exceptions.is_empty()
    }

    /// The exceptions to the default, in order.
    pub fn exceptions(&self) -> &[DeviceRule] {
        &self.exceptions
    }

    /// Whether a request for `access` to device `major:minor` of type `kind` is allowed:
    /// what the program answers, by another road.
    pub fn allows(&self, kind: DeviceType, major: u32, minor: u32, access: Access) -> bool {
        let mut matching = self.exceptions.iter().filter(|e| e.covers(kind, major, minor));
        if self.default_allow {
            !matching.any(|e| e.access.intersects(access))
        } else {
            matching.any(|e| e.access.contains(access))
        }
    }

    /// The eBPF program (`BPF_PROG_TYPE_CGROUP_DEVICE`) that enforces the policy.
    pub fn program(&self) -> Vec<BpfInsn> {
        use insn::*;
        let mut p = vec![
            // R2 = type, R3 = access, R4 = major, R5 = minor.
            ldx_w(R2, R1, 0),
            alu32_k(AND, R2, 0xffff),
            ldx_w(R3, R1, 0),
            alu32_k(RSH, R3, 16),
            ldx_w(R4, R1, 4),
            ldx_w(R5, R1, 8),
        ];
        let verdict = if self.default_allow { 0 } else { 1 };
        for e in &self.exceptions {
            let start = p.len();
            // Each `None` is a jump to the next exception, patched below.
            let mut block: Vec<Option<BpfInsn>> = vec![None];
            let kind = e.kind.bpf() as i32;
            // R1 = the requested access beyond the exception's (deny default: a match
            // needs none), or within it (allow default: a match needs some); the bits
            // the kernel does not define count as beyond.
            let (mask, skip_if) = if self.default_allow {
                (e.access.bits() as i32, JEQ)
            } else {
                (!e.access.bits() as i32 & 0xffff, JNE)
            };
            block.extend([Some(mov32_x(R1, R3)), Some(alu32_k(AND, R1, mask)), None]);
            let mut jumps = vec![(0, JNE, R2, kind), (3, skip_if, R1, 0)];
            for (reg, n) in [(R4, e.major), (R5, e.minor)] {
                if let Some(n) = n {
                    jumps.push((block.len(), JNE, reg, n as i32));
                    block.push(None);
                }
            }
            block.extend([Some(mov64_k(R0, verdict)), Some(exit())]);
            let end = block.len();
            for (at, op, reg, imm) in jumps {
                let off = (end - at - 1) as i16;
                block[at] = Some(jmp_k(op, reg, imm, off));
            }
            p.extend(block.into_iter().map(|i| i.expect("every jump patched")));
            debug_assert_eq!(p.len(), start + end);
        }
        p.extend([mov64_k(R0, 1 - verdict), exit()]);
        p
    }
}

/// One eBPF instruction, laid out as the kernel's `struct bpf_insn`: opcode, destination
/// and source registers (4 bits each), offset, immediate.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfInsn {
    pub code: u8,
    /// `dst_reg:4, src_reg:4`, in the bit-field order of the target's C compiler.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

impl BpfInsn {
    pub const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
        let regs = if cfg!(target_endian = "little") {
            (src << 4) | (dst & 0xf)
        } else {
            (dst << 4) | (src & 0xf)
        };
        BpfInsn { code, regs, off, imm }
    }

    pub fn dst(&self) -> u8 {
        if cfg!(target_endian = "little") {
            self.regs & 0xf
        } else {
            self.regs >> 4
        }
    }

    pub fn src(&self) -> u8 {
        if cfg!(target_endian = "little") {
            self.regs >> 4
        } else {
            self.regs & 0xf
        }
    }
}

/// The few instructions the program uses (`include/uapi/linux/bpf.h`, `bpf_common.h`).
mod insn {
    use super::BpfInsn;

    pub const R0: u8 = 0;
    pub const R1: u8 = 1;
    pub const R2: u8 = 2;
    pub const R3: u8 = 3;
    pub const R4: u8 = 4;
    pub const R5: u8 = 5;

    // Classes.
    pub const LDX: u8 = 0x01;
    pub const JMP: u8 = 0x05;
    pub const ALU: u8 = 0x04;
    pub const ALU64: u8 = 0x07;
    // Load size and mode.
    pub const W: u8 = 0x00;
    pub const MEM: u8 = 0x60;
    // Source.
    pub const K: u8 = 0x00;
    pub const X: u8 = 0x08;
    // ALU operations.
    pub const AND: u8 = 0x50;
    pub const RSH: u8 = 0x70;
    pub const MOV: u8 = 0xb0;
    // Jump operations.
    pub const JEQ: u8 = 0x10;
    pub const JNE: u8 = 0x50;
    pub const EXIT: u8 = 0x90;

    /// `dst = *(u32 *)(src + off)`
    pub fn ldx_w(dst: u8, src: u8, off: i16) -> BpfInsn {
        BpfInsn::new(LDX | MEM | W, dst, src, off, 0)
    }

    /// `dst = (u32)dst OP imm`
    pub fn alu32_k(op: u8, dst: u8, imm: i32) -> BpfInsn {
        BpfInsn::new(ALU | op | K, dst, 0, 0, imm)
    }

    /// `dst = (u32)src`
    pub fn mov32_x(dst: u8, src: u8) -> BpfInsn {
        BpfInsn::new(ALU | MOV | X, dst, src, 0, 0)
    }

    /// `dst = imm`
    pub fn mov64_k(dst: u8, imm: i32) -> BpfInsn {
        BpfInsn::new(ALU64 | MOV | K, dst, 0, 0, imm)
    }

    /// `if dst OP imm goto +off`
    pub fn jmp_k(op: u8, dst: u8, imm: i32, off: i16) -> BpfInsn {
        BpfInsn::new(JMP | op | K, dst, 0, off, imm)
    }

    /// `return R0`
    pub fn exit() -> BpfInsn {
        BpfInsn::new(JMP | EXIT, 0, 0, 0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::insn::*;
    use super::*;

    /// Runs `prog` on a request as the kernel would, for the instructions the generator
    /// emits (anything else panics): R1 points at the 12-byte context.
    fn run(prog: &[BpfInsn], kind: u32, major: u32, minor: u32, access: u32) -> u64 {
        let mut ctx = Vec::new();
        for v in [(access << 16) | kind, major, minor] {
            ctx.extend_from_slice(&v.to_ne_bytes());
        }
        // Registers hold numbers; R1 starts as the context's "address" 0, and a load
        // reads the context at that address plus the offset.
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        for _ in 0..prog.len() {
            let i = prog[pc];
            let (dst, src) = (i.dst() as usize, i.src() as usize);
            pc += 1;
            match i.code {
                c if c == LDX | MEM | W => {
                    let at = (r[src] as i64 + i.off as i64) as usize;
                    let bytes: [u8; 4] = ctx[at..at + 4].try_into().unwrap();
                    r[dst] = u32::from_ne_bytes(bytes) as u64;
                }
                c if c == ALU | AND | K => r[dst] = ((r[dst] as u32) & i.imm as u32) as u64,
                c if c == ALU | RSH | K => r[dst] = ((r[dst] as u32) >> i.imm) as u64,
                c if c == ALU | MOV | X => r[dst] = r[src] as u32 as u64,
                c if c == ALU64 | MOV | K => r[dst] = i.imm as i64 as u64,
                c if c == JMP | JNE | K || c == JMP | JEQ | K => {
                    let equal = r[dst] == i.imm as i64 as u64;
                    if equal == (c == JMP | JEQ | K) {
                        assert!(i.off >= 0, "backward jump at {}", pc - 1);
                        pc += i.off as usize;
                    }
                }
                c if c == JMP | EXIT => return r[0],
                c => panic!("opcode {c:#04x} at {}", pc - 1),
            }
            assert!(pc < prog.len(), "ran off the end");
        }
        panic!("no exit");
    }

    fn docker() -> Vec<BpfInsn> {
        DevicePolicy::docker().program()
    }

    const RD: u32 = 2;
    const WR: u32 = 4;
    const MK: u32 = 1;

    #[test]
    fn the_instruction_is_the_kernels_struct() {
        assert_eq!(std::mem::size_of::<BpfInsn>(), 8);
        let i = BpfInsn::new(0x61, 3, 1, -2, 7);
        assert_eq!((i.dst(), i.src(), i.off, i.imm), (3, 1, -2, 7));
        if cfg!(target_endian = "little") {
            assert_eq!(i.regs, 0x13);
        }
    }

    #[test]
    fn dockers_rules_parse() {
        let p = DevicePolicy::docker();
        assert!(!p.allows_all());
        let shown: Vec<String> = p.exceptions().iter().map(|e| e.to_string()).collect();
        let expected: Vec<String> = crate::cgroup::DEVICE_ALLOW
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(shown, expected);
        assert_eq!(
            p.exceptions()[10],
            DeviceRule {
                kind: DeviceType::Char,
                major: Some(136),
                minor: None,
                access: Access::ALL
            }
        );
        assert_eq!("a".parse::<Rule>().unwrap(), Rule::All);
        assert_eq!("a *:* rwm".parse::<Rule>().unwrap(), Rule::All);
        for bad in [
            "",
            "c",
            "c 1:3",
            "c 1 rwm",
            "c 1:3 rwx",
            "c 1:3 rr",
            "c 1:3 ",
            "x 1:3 r",
            "a 1:3 r",
            "c -1:3 r",
            "c 1:+3 r",
            "c 4294967295:0 r",
            "c 1:3 r extra",
        ] {
            assert!(bad.parse::<Rule>().is_err(), "{bad:?}");
        }
        let e = "c 1:3 rwx".parse::<Rule>().unwrap_err().to_string();
        assert!(e.starts_with("device rule \"c 1:3 rwx\": "), "{e}");
    }

    #[test]
    fn dockers_program_allows_dockers_devices_only() {
        let p = docker();
        let (c, b) = (DEV_CHAR, DEV_BLOCK);
        assert_eq!(run(&p, c, 1, 3, RD | WR), 1, "c 1:3 rw");
        assert_eq!(run(&p, c, 1, 3, MK), 1, "c 1:3 m");
        assert_eq!(run(&p, b, 7, 0, RD), 0, "b 7:0 r");
        assert_eq!(run(&p, b, 7, 0, MK), 1, "b 7:0 m");
        assert_eq!(run(&p, c, 136, 5, RD | WR), 1, "c 136:5 rw");
        assert_eq!(run(&p, c, 10, 229, RD | WR), 0, "c 10:229 rw");
        assert_eq!(run(&p, c, 10, 229, RD), 0, "c 10:229 r");
        assert_eq!(run(&p, c, 10, 229, MK), 1, "c 10:229 m");
        assert_eq!(run(&p, b, 1, 3, RD), 0, "b 1:3 r: the type counts");
        assert_eq!(run(&p, c, 1, 4, RD), 0, "c 1:4 r: the minor counts");
        assert_eq!(run(&p, c, 5, 2, RD | WR | MK), 1, "c 5:2 rwm");
        // Unknown access bits or types are never allowed.
        assert_eq!(run(&p, c, 1, 3, RD | 8), 0);
        assert_eq!(run(&p, 3, 1, 3, RD), 0);
    }

    #[test]
    fn the_privileged_program_allows_everything() {
        let all = DevicePolicy::allowlist(["a"]).unwrap();
        assert_eq!(all, DevicePolicy::allow_all());
        assert!(all.allows_all());
        let p = all.program();
        for kind in [DEV_CHAR, DEV_BLOCK] {
            for (major, minor) in [(1, 3), (7, 0), (10, 229), (8, 0), (4095, 1048575)] {
                for access in 1..=7 {
                    assert_eq!(run(&p, kind, major, minor, access), 1);
                }
            }
        }
    }

    /// The program answers as [`DevicePolicy::allows`] does, for v1-style sequences of
    /// rules under both defaults, on every device and access around the rules' numbers.
    #[test]
    fn programs_agree_with_the_policy() {
        let mut policies = vec![DevicePolicy::docker(), DevicePolicy::deny_all()];
        let mut p = DevicePolicy::docker();
        // Taking access away narrows the exception for those devices only.
        p.apply(false, "c 1:3 w".parse().unwrap());
        p.apply(false, "c 136:* rwm".parse().unwrap());
        p.apply(false, "c 1:5 w".parse().unwrap());
        assert!(p.allows(DeviceType::Char, 1, 3, Access::READ));
        assert!(!p.allows(DeviceType::Char, 1, 3, Access::WRITE));
        assert!(!p.allows(DeviceType::Char, 136, 0, Access::READ));
        policies.push(p);
        let mut p = DevicePolicy::allow_all();
        p.apply(false, "b 7:* rw".parse().unwrap());
        p.apply(false, "c *:229 w".parse().unwrap());
        p.apply(false, "b 7:* m".parse().unwrap());
        p.apply(true, "b 7:* w".parse().unwrap());
        assert_eq!(p.exceptions().len(), 2);
        assert!(!p.allows(DeviceType::Block, 7, 1, Access::READ | Access::WRITE));
        assert!(p.allows(DeviceType::Block, 7, 1, Access::WRITE));
        assert!(p.allows(DeviceType::Char, 10, 229, Access::READ));
        assert!(!p.allows(DeviceType::Char, 10, 229, Access::WRITE | Access::READ));
        policies.push(p);
        let mut p = DevicePolicy::allow_all();
        p.apply(false, "a".parse().unwrap());
        p.apply(true, "c 1:3 r".parse().unwrap());
        p.apply(true, "c 1:3 w".parse().unwrap());
        assert_eq!(p.exceptions().len(), 1, "merged");
        policies.push(p);
        for policy in &policies {
            let prog = policy.program();
            for kind in [DeviceType::Char, DeviceType::Block] {
                for major in [0, 1, 5, 7, 10, 136, 4095] {
                    for minor in [0, 1, 2, 3, 5, 7, 8, 9, 229, 1048575] {
                        for bits in 1..=7 {
                            let expect = policy.allows(kind, major, minor, Access(bits));
                            assert_eq!(
                                run(&prog, kind.bpf(), major, minor, bits) == 1,
                                expect,
                                "{kind:?} {major}:{minor} {} under {policy:?}",
                                Access(bits)
                            );
                        }
                    }
                }
            }
        }
    }
}
