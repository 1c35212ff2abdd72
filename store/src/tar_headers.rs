//! The capped tar header reader shared by the layer unpacker and archive load: extension
//! headers (PAX, GNU long names) with size caps, and the entry's name, link target and
//! size resolved as Go's `archive/tar` resolves them (what docker, containerd and image
//! scanners read), so no tar shows them one path while strata writes another.
//!
//! Go's precedence, which this follows:
//! - name: the header's name (with the ustar prefix; STAR headers have a shorter prefix),
//!   then a non-empty PAX `path`, then a non-empty GNU `L` long name, then — for an entry
//!   the PAX records mark as GNU sparse (known major/minor version, or a map) — a
//!   non-empty `GNU.sparse.name`;
//! - link target: the header's link name, then a non-empty PAX `linkpath`, then a
//!   non-empty GNU `K` long link;
//! - a PAX global header (`g`) drops the extension headers read before it;
//! - a zero block followed by a non-zero block is an error (two zero blocks end the archive).
//!
//! Where Go accepts something ambiguous that a safe extractor should not (two `L` or two
//! `x` headers for one entry; a long name longer than the path limit; a PAX header larger
//! than its cap; extension headers with no entry after them), this refuses it.

use std::io;

use rustix::fs::Timespec;

use crate::unpack::UnpackError;

pub(crate) const BLOCK: u64 = 512;

/// Where header blocks and extension data come from.
pub(crate) trait BlockSource {
    /// Bytes of the tar stream consumed so far.
    fn position(&self) -> u64;
    /// Reads one block; `Ok(false)` on a clean end of stream before any byte of it.
    fn next_block(&mut self, out: &mut [u8; BLOCK as usize]) -> io::Result<bool>;
    /// Reads exactly `n` bytes (the caller has capped `n`).
    fn take_vec(&mut self, n: usize) -> io::Result<Vec<u8>>;
    /// Skips exactly `n` bytes.
    fn skip_bytes(&mut self, n: u64) -> io::Result<()>;
}

/// Caps on what one tar may make the reader hold or count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeaderLimits {
    /// Most header blocks (entries plus extension headers).
    pub max_headers: u64,
    /// Longest path or link target (and so GNU long name), in bytes.
    pub max_path_len: usize,
    /// Largest PAX extended header, in bytes.
    pub max_pax_len: usize,
}

/// One entry, its extension headers applied.
pub(crate) struct TarEntry {
    pub header: tar::Header,
    /// Offset of the entry's own header block.
    pub offset: u64,
    pub pax: Pax,
    /// The entry's type, with an old-style `\0`-typed name ending in `/` made a directory.
    pub kind: u8,
    /// The path, resolved as Go's `archive/tar` resolves it (raw, not normalised).
    pub path: Vec<u8>,
    /// The link target (empty when there is none).
    pub link: Vec<u8>,
    /// Bytes of data after the header (0 for links, devices, fifos and directories,
    /// whatever the size field says), before padding.
    pub size: u64,
}

/// Reads headers one entry at a time.
pub(crate) struct HeaderReader {
    limits: HeaderLimits,
    headers: u64,
    ended: bool,
}

#[derive(Default)]
struct Extensions {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

impl Extensions {
    fn is_empty(&self) -> bool {
        self.long_name.is_none() && self.long_link.is_none() && self.pax.is_none()
    }
}

impl HeaderReader {
    pub fn new(limits: HeaderLimits) -> HeaderReader {
        HeaderReader {
            limits,
            headers: 0,
            ended: false,
        }
    }

    /// The next entry, or `None` at the end of the archive. The caller consumes the
    /// entry's `size` bytes of data and then [`padding`] before calling again.
    pub fn next(&mut self, src: &mut impl BlockSource) -> Result<Option<TarEntry>, UnpackError> {
        if self.ended {
            return Ok(None);
        }
        let mut ext = Extensions::default();
        loop {
            let offset = src.position();
            let mut block = [0u8; BLOCK as usize];
            if !read_block(src, &mut block, offset)? {
                return self.end(&ext);
            }
            let bad = |reason: String| UnpackError::BadHeader { offset, reason };
            if block.iter().all(|b| *b == 0) {
                // Go's reader: a second zero block ends the archive (so does the end of
                // the stream); anything else after a zero block is an error.
                let second = src.position();
                let mut next = [0u8; BLOCK as usize];
                if read_block(src, &mut next, second)? && next.iter().any(|b| *b != 0) {
                    return Err(UnpackError::BadHeader {
                        offset: second,
                        reason: "a header after a zero block (the end-of-archive marker)".into(),
                    });
                }
                return self.end(&ext);
            }
            self.headers += 1;
            if self.headers > self.limits.max_headers {
                return Err(UnpackError::TooManyEntries {
                    limit: self.limits.max_headers,
                });
            }
            if !checksum_ok(&block).map_err(bad)? {
                return Err(bad("header checksum mismatch".into()));
            }
            let size_field = Fields(&block).size().map_err(bad)?;
            let kind = block[156];
            let truncated = |_| UnpackError::Truncated {
                context: format!("in the extension header at offset {offset}"),
            };
            match kind {
                b'L' | b'K' => {
                    let limit = self.limits.max_path_len;
                    if size_field > limit as u64 + 1 {
                        return Err(UnpackError::PathTooLong {
                            path: "(GNU long name header)".into(),
                            limit,
                        });
                    }
                    let mut v = src.take_vec(size_field as usize).map_err(truncated)?;
                    src.skip_bytes(padding(size_field)).map_err(truncated)?;
                    if let Some(nul) = v.iter().position(|b| *b == 0) {
                        v.truncate(nul);
                    }
                    let slot = if kind == b'L' {
                        &mut ext.long_name
                    } else {
                        &mut ext.long_link
                    };
                    if slot.is_some() {
                        return Err(bad("two GNU long name headers for one entry".into()));
                    }
                    *slot = Some(v);
                }
                b'x' | b'g' => {
                    if size_field > self.limits.max_pax_len as u64 {
                        return Err(bad(format!(
                            "pax header of {size_field} bytes exceeds the limit of {} bytes",
                            self.limits.max_pax_len
                        )));
                    }
                    let v = src.take_vec(size_field as usize).map_err(truncated)?;
                    src.skip_bytes(padding(size_field)).map_err(truncated)?;
                    if kind == b'x' {
                        if ext.pax.is_some() {
                            return Err(bad("two pax headers for one entry".into()));
                        }
                        ext.pax = Some(v);
                    } else {
                        // Global headers carry archive-wide defaults that layers do not
                        // use; Go's reader returns one as an entry of its own, so what
                        // came before it describes no file.
                        parse_pax(&v, offset)?;
                        ext = Extensions::default();
                    }
                }
                _ => return self.entry(block, offset, size_field, ext).map(Some),
            }
        }
    }

    fn end(&mut self, ext: &Extensions) -> Result<Option<TarEntry>, UnpackError> {
        self.ended = true;
        if !ext.is_empty() {
            return Err(UnpackError::Truncated {
                context: "after an extension header with no entry".into(),
            });
        }
        Ok(None)
    }

    fn entry(
        &self,
        block: [u8; BLOCK as usize],
        offset: u64,
        size_field: u64,
        ext: Extensions,
    ) -> Result<TarEntry, UnpackError> {
        let pax = match &ext.pax {
            Some(data) => parse_pax(data, offset)?,
            None => Pax::default(),
        };
        let non_empty = |v: &Option<Vec<u8>>| v.clone().filter(|v| !v.is_empty());
        let mut path = header_name(&block);
        if let Some(p) = non_empty(&pax.path) {
            path = p;
        }
        if let Some(p) = non_empty(&ext.long_name) {
            path = p;
        }
        let mut kind = block[156];
        if kind == b'\0' && path.ends_with(b"/") {
            kind = b'5';
        }
        if kind != b'S'
            && pax.sparse_version().is_some()
            && let Some(p) = non_empty(&pax.sparse_name)
        {
            path = p;
        }
        let mut link = cstr(&block[157..257]).to_vec();
        if let Some(l) = non_empty(&pax.linkpath) {
            link = l;
        }
        if let Some(l) = non_empty(&ext.long_link) {
            link = l;
        }
        let limit = self.limits.max_path_len;
        if path.len() > limit || link.len() > limit {
            return Err(UnpackError::PathTooLong {
                path: crate::unpack::lossy(&path),
                limit,
            });
        }
        let size = if matches!(kind, b'1'..=b'6') {
            0
        } else {
            pax.size.unwrap_or(size_field)
        };
        let mut header = tar::Header::new_old();
        header.as_mut_bytes().copy_from_slice(&block);
        Ok(TarEntry {
            header,
            offset,
            pax,
            kind,
            path,
            link,
            size,
        })
    }
}

fn read_block(
    src: &mut impl BlockSource,
    out: &mut [u8; BLOCK as usize],
    offset: u64,
) -> Result<bool, UnpackError> {
    src.next_block(out).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => UnpackError::Truncated {
            context: format!("in a header at offset {offset}"),
        },
        _ => UnpackError::Read(e),
    })
}

/// A NUL-terminated field.
fn cstr(field: &[u8]) -> &[u8] {
    field.iter().position(|b| *b == 0).map_or(field, |i| &field[..i])
}

/// The header's own name: `prefix/name` for ustar (`ustar\0` magic, whatever the
/// version; STAR's prefix is 131 bytes, its trailer `tar\0`), the name field alone for
/// GNU and v7 headers — as Go reads it.
fn header_name(block: &[u8; BLOCK as usize]) -> Vec<u8> {
    let name = cstr(&block[0..100]);
    let prefix = if &block[257..263] == b"ustar\0" {
        if &block[508..512] == b"tar\0" {
            cstr(&block[345..476])
        } else {
            cstr(&block[345..500])
        }
    } else {
        &[][..]
    };
    if prefix.is_empty() {
        return name.to_vec();
    }
    let mut out = prefix.to_vec();
    out.push(b'/');
    out.extend_from_slice(name);
    out
}

pub(crate) fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// What a PAX extended header said.
#[derive(Default)]
pub(crate) struct Pax {
    pub path: Option<Vec<u8>>,
    pub linkpath: Option<Vec<u8>>,
    pub size: Option<u64>,
    pub uid: Option<u64>,
    pub gid: Option<u64>,
    pub mtime: Option<Timespec>,
    pub atime: Option<Timespec>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub sparse_major: Option<Vec<u8>>,
    pub sparse_minor: Option<Vec<u8>>,
    pub sparse_name: Option<Vec<u8>>,
    /// `GNU.sparse.size`, else `GNU.sparse.realsize`.
    pub sparse_realsize: Option<u64>,
    pub sparse_numblocks: Option<u64>,
    pub sparse_map: Option<Vec<u8>>,
    pub sparse_offsets: Vec<u64>,
    pub sparse_numbytes: Vec<u64>,
}

/// The GNU sparse PAX formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SparseVersion {
    /// 0.0 and 0.1: the map in the PAX records.
    V0,
    /// 1.0: the map at the start of the data.
    V1,
}

impl Pax {
    /// Which GNU sparse format the records announce, as Go's reader decides it: a known
    /// major/minor pair, or (no version) a map; an unknown version is no sparse file.
    pub fn sparse_version(&self) -> Option<SparseVersion> {
        let major = self.sparse_major.as_deref().unwrap_or_default();
        let minor = self.sparse_minor.as_deref().unwrap_or_default();
        match (major, minor) {
            (b"0", b"0" | b"1") => Some(SparseVersion::V0),
            (b"1", b"0") => Some(SparseVersion::V1),
            _ if !major.is_empty() || !minor.is_empty() => None,
            _ if !self.sparse_offsets.is_empty()
                || self.sparse_map.as_ref().is_some_and(|m| !m.is_empty()) =>
            {
                Some(SparseVersion::V0)
            }
            _ => None,
        }
    }
}

/// One PAX record: key and value.
type PaxRecord<'a> = (&'a [u8], &'a [u8]);

/// Parses length-prefixed PAX records (`"<len> <key>=<value>\n"`). Values may hold any
/// byte, newlines included.
fn parse_pax_records(mut data: &[u8]) -> Result<Vec<PaxRecord<'_>>, &'static str> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|b| *b == 0) {
            break;
        }
        let space = data
            .iter()
            .position(|b| *b == b' ')
            .ok_or("pax record without a length")?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("pax record with a bad length")?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err("pax record with a bad length");
        }
        let record = &data[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|b| *b == b'=')
            .ok_or("pax record without `=`")?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        // Go refuses these records (and so the whole archive).
        let nul_checked = match key {
            b"path" | b"linkpath" | b"uname" | b"gname" => value,
            _ => key,
        };
        if key.is_empty() || nul_checked.contains(&0) {
            return Err("pax record with an empty key or a NUL byte");
        }
        out.push((key, value));
        data = &data[len..];
    }
    Ok(out)
}

pub(crate) fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Parses a PAX time (`[-]seconds[.fraction]`).
pub(crate) fn parse_pax_time(v: &[u8]) -> Option<Timespec> {
    let (neg, v) = match v.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (int, frac) = match v.iter().position(|b| *b == b'.') {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, &b""[..]),
    };
    if (int.is_empty() && frac.is_empty()) || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let secs = if int.is_empty() { 0 } else { parse_decimal(int)? };
    let secs = i64::try_from(secs).ok()?;
    let mut nanos: i64 = 0;
    for i in 0..9 {
        nanos = nanos * 10 + frac.get(i).map_or(0, |d| i64::from(d - b'0'));
    }
    Some(if !neg {
        Timespec {
            tv_sec: secs,
            tv_nsec: nanos,
        }
    } else if nanos == 0 {
        Timespec {
            tv_sec: -secs,
            tv_nsec: 0,
        }
    } else {
        Timespec {
            tv_sec: -secs - 1,
            tv_nsec: 1_000_000_000 - nanos,
        }
    })
}

pub(crate) fn parse_pax(data: &[u8], offset: u64) -> Result<Pax, UnpackError> {
    let records = parse_pax_records(data).map_err(|reason| UnpackError::BadHeader {
        offset,
        reason: reason.into(),
    })?;
    let bad = |what: &str| UnpackError::BadHeader {
        offset,
        reason: format!("bad pax {what} value"),
    };
    let mut pax = Pax::default();
    let mut sparse_size = None;
    for (key, value) in records {
        // An empty value unsets the keyword.
        let present = !value.is_empty();
        let decimal = |what| {
            present
                .then(|| parse_decimal(value).ok_or_else(|| bad(what)))
                .transpose()
        };
        match key {
            b"path" => pax.path = present.then(|| value.to_vec()),
            b"linkpath" => pax.linkpath = present.then(|| value.to_vec()),
            b"size" => pax.size = decimal("size")?,
            b"uid" => pax.uid = decimal("uid")?,
            b"gid" => pax.gid = decimal("gid")?,
            b"mtime" if present => pax.mtime = Some(parse_pax_time(value).ok_or_else(|| bad("mtime"))?),
            b"atime" if present => pax.atime = Some(parse_pax_time(value).ok_or_else(|| bad("atime"))?),
            b"GNU.sparse.major" => pax.sparse_major = present.then(|| value.to_vec()),
            b"GNU.sparse.minor" => pax.sparse_minor = present.then(|| value.to_vec()),
            b"GNU.sparse.name" => pax.sparse_name = present.then(|| value.to_vec()),
            b"GNU.sparse.realsize" => pax.sparse_realsize = decimal("sparse size")?,
            b"GNU.sparse.size" => sparse_size = decimal("sparse size")?,
            b"GNU.sparse.numblocks" => pax.sparse_numblocks = decimal("sparse numblocks")?,
            b"GNU.sparse.map" => pax.sparse_map = Some(value.to_vec()),
            b"GNU.sparse.offset" => pax
                .sparse_offsets
                .push(parse_decimal(value).ok_or_else(|| bad("sparse offset"))?),
            b"GNU.sparse.numbytes" => pax
                .sparse_numbytes
                .push(parse_decimal(value).ok_or_else(|| bad("sparse numbytes"))?),
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.")
                    && !name.is_empty()
                {
                    pax.xattrs.retain(|(n, _)| n != name);
                    pax.xattrs.push((name.to_vec(), value.to_vec()));
                }
            }
        }
    }
    if sparse_size.is_some() {
        pax.sparse_realsize = sparse_size;
    }
    Ok(pax)
}

/// A numeric header field: octal text (leading/trailing spaces and NULs allowed, empty
/// meaning 0, as GNU tar reads it) or GNU base-256 (high bit of the first byte set).
pub(crate) fn numeric(field: &[u8]) -> Result<u64, String> {
    if let Some(first) = field.first().filter(|b| **b & 0x80 != 0) {
        if *first == 0xff {
            return Err("negative number in a numeric field".into());
        }
        let mut v = u64::from(first & 0x7f);
        for b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(*b)))
                .ok_or("number too large in a numeric field")?;
        }
        return Ok(v);
    }
    let text = field
        .iter()
        .position(|b| *b != b' ' && *b != 0)
        .map_or(&[][..], |i| &field[i..]);
    let digits = text.iter().take_while(|b| (b'0'..=b'7').contains(*b)).count();
    if !text[digits..].iter().all(|b| *b == b' ' || *b == 0) {
        return Err(format!("bad numeric field {:?}", String::from_utf8_lossy(field)));
    }
    text[..digits].iter().try_fold(0u64, |v, d| {
        v.checked_mul(8)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .ok_or_else(|| "number too large in a numeric field".to_string())
    })
}

/// Raw fields of a header block.
pub(crate) struct Fields<'b>(pub &'b [u8; BLOCK as usize]);

impl Fields<'_> {
    pub fn mode(&self) -> Result<u64, String> {
        numeric(&self.0[100..108])
    }
    pub fn uid(&self) -> Result<u64, String> {
        numeric(&self.0[108..116])
    }
    pub fn gid(&self) -> Result<u64, String> {
        numeric(&self.0[116..124])
    }
    pub fn size(&self) -> Result<u64, String> {
        numeric(&self.0[124..136])
    }
    pub fn mtime(&self) -> Result<u64, String> {
        numeric(&self.0[136..148])
    }
    pub fn cksum(&self) -> Result<u64, String> {
        numeric(&self.0[148..156])
    }
    /// Device numbers exist in ustar and GNU headers only.
    pub fn device(&self) -> Result<(u32, u32), String> {
        if &self.0[257..262] != b"ustar" {
            return Ok((0, 0));
        }
        let major = numeric(&self.0[329..337])?;
        let minor = numeric(&self.0[337..345])?;
        match (u32::try_from(major), u32::try_from(minor)) {
            (Ok(a), Ok(b)) => Ok((a, b)),
            _ => Err("device number out of range".into()),
        }
    }
}

/// The header checksum: unsigned sum with the checksum field as spaces (some old tars
/// used a signed sum; accept that too).
fn checksum_ok(block: &[u8; BLOCK as usize]) -> Result<bool, String> {
    let stored = Fields(block).cksum()?;
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { *b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    Ok(stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed))
}

/// A [`BlockSource`] over any reader (archive load's outer tar).
pub(crate) struct ReadSource<R> {
    inner: R,
    offset: u64,
}

impl<R: io::Read> ReadSource<R> {
    pub fn new(inner: R) -> ReadSource<R> {
        ReadSource { inner, offset: 0 }
    }
}

impl<R: io::Read> io::Read for ReadSource<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.offset += n as u64;
        Ok(n)
    }
}

impl<R: io::Read> BlockSource for ReadSource<R> {
    fn position(&self) -> u64 {
        self.offset
    }

    fn next_block(&mut self, out: &mut [u8; BLOCK as usize]) -> io::Result<bool> {
        let mut got = 0;
        while got < out.len() {
            match io::Read::read(self, &mut out[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn take_vec(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; n];
        io::Read::read_exact(self, &mut v)?;
        Ok(v)
    }

    fn skip_bytes(&mut self, n: u64) -> io::Result<()> {
        let skipped = io::copy(&mut io::Read::take(&mut *self, n), &mut io::sink())?;
        if skipped != n {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pax_records_with_binary_values() {
        let value = b"a\nb=c\0d";
        let body = {
            let rec = |k: &[u8], v: &[u8]| {
                let inner = [k, b"=", v, b"\n"].concat();
                let mut len = inner.len() + 2;
                if len.to_string().len() + 1 + inner.len() != len {
                    len += 1;
                }
                [format!("{len} ").into_bytes(), inner].concat()
            };
            [rec(b"path", b"x/y"), rec(b"SCHILY.xattr.user.k", value)].concat()
        };
        let pax = parse_pax(&body, 0).ok().unwrap();
        assert_eq!(pax.path.as_deref(), Some(&b"x/y"[..]));
        assert_eq!(pax.xattrs, vec![(b"user.k".to_vec(), value.to_vec())]);
        assert!(parse_pax(b"99 path=x\n", 0).is_err());
        assert!(parse_pax(b"5 x\n", 0).is_err());
        // Go refuses a NUL in a path and an empty key.
        assert!(parse_pax(b"11 path=\0x\n", 0).is_err());
        assert!(parse_pax(b"6 =x\n", 0).is_err());
    }

    #[test]
    fn parses_pax_times() {
        let t = |s: &str| parse_pax_time(s.as_bytes()).map(|t| (t.tv_sec, t.tv_nsec));
        assert_eq!(t("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(t("1700000000.5"), Some((1_700_000_000, 500_000_000)));
        assert_eq!(t("1.123456789123"), Some((1, 123_456_789)));
        assert_eq!(t("-1.5"), Some((-2, 500_000_000)));
        assert_eq!(t("-3"), Some((-3, 0)));
        assert_eq!(t("x"), None);
        assert_eq!(t("1.x"), None);
        assert_eq!(t(""), None);
    }

    #[test]
    fn sparse_versions_as_go_reads_them() {
        let v = |major: &[u8], minor: &[u8]| {
            Pax {
                sparse_major: Some(major.to_vec()).filter(|v| !v.is_empty()),
                sparse_minor: Some(minor.to_vec()).filter(|v| !v.is_empty()),
                ..Pax::default()
            }
            .sparse_version()
        };
        assert_eq!(v(b"1", b"0"), Some(SparseVersion::V1));
        assert_eq!(v(b"0", b"1"), Some(SparseVersion::V0));
        assert_eq!(v(b"00", b"1"), None);
        assert_eq!(v(b"2", b""), None);
        assert_eq!(v(b"", b""), None);
    }
}
