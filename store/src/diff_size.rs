//! A layer's size as docker counts it (`docker history`'s SIZE): counted while a layer is
//! unpacked, or read from a layer blob the store has not unpacked.

use std::io::{self, BufRead, BufReader, Read};

use crate::tar_headers::{BLOCK, BlockSource, HeaderLimits, HeaderReader, ReadSource, padding};

/// What is read of a layer blob at a time.
const INPUT_BUFFER: usize = 256 << 10;
/// Whiteout entries' name prefix (they add nothing).
const WHITEOUT_PREFIX: &[u8] = b".wh.";

/// A layer's size as docker's overlay2 driver computes it after applying the layer
/// (moby's `directory.Size` over the layer's directory): the `lstat` sizes of everything
/// but directories, each inode once — regular files (a sparse file by its apparent size),
/// symlinks by their target's length; hard links, whiteouts, devices and FIFOs add
/// nothing. Fed one tar entry at a time (an entry that replaces an earlier one of the
/// same layer is counted twice: only a hostile layer has those).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffSize(pub u64);

impl DiffSize {
    /// A regular file of `apparent` bytes.
    pub fn file(&mut self, apparent: u64) {
        self.0 = self.0.saturating_add(apparent);
    }

    /// A symlink to `target`.
    pub fn symlink(&mut self, target: &[u8]) {
        self.0 = self.0.saturating_add(target.len() as u64);
    }

    /// The size of the layer tar `reader` (plain, gzip or zstd, sniffed), read to its end
    /// without writing anything: for layers the store has not unpacked.
    pub fn of_layer(reader: impl Read) -> io::Result<u64> {
        let mut reader = BufReader::with_capacity(INPUT_BUFFER, reader);
        let compression = crate::unpack::Compression::detect(reader.fill_buf()?);
        let decoder: Box<dyn Read + '_> = match compression {
            crate::unpack::Compression::None => Box::new(reader),
            crate::unpack::Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
            crate::unpack::Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
        };
        // The unpacker's capped header reader: a layer's long name or PAX header is held
        // under the same caps, and its names resolve the same way.
        let mut src = ReadSource::new(decoder);
        let defaults = crate::unpack::UnpackOptions::default();
        let mut headers = HeaderReader::new(HeaderLimits {
            max_headers: defaults.max_entries,
            max_path_len: defaults.max_path_len,
            max_pax_len: defaults.max_pax_len,
        });
        let mut size = DiffSize::default();
        while let Some(entry) = headers.next(&mut src).map_err(io::Error::other)? {
            let name = entry
                .path
                .rsplit(|b| *b == b'/')
                .find(|c| !c.is_empty())
                .unwrap_or(&[]);
            let whiteout = name.starts_with(WHITEOUT_PREFIX);
            match entry.kind {
                b'0' | b'\0' | b'7' if !whiteout => match entry.pax.sparse_version() {
                    // PAX sparse files name their apparent size in the extensions.
                    Some(_) => size.file(entry.pax.sparse_realsize.unwrap_or(entry.size)),
                    None => size.file(entry.size),
                },
                b'S' => {
                    let gnu = entry.header.as_gnu();
                    if !whiteout {
                        size.file(gnu.and_then(|g| g.real_size().ok()).unwrap_or(entry.size));
                    }
                    // Old GNU sparse maps continue in extension blocks before the data.
                    let mut extended = gnu.is_some_and(|g| g.is_extended());
                    while extended {
                        let mut block = [0u8; BLOCK as usize];
                        if !src.next_block(&mut block)? {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                        extended = block[504] != 0;
                    }
                }
                b'2' if !whiteout => size.symlink(&entry.link),
                _ => {}
            }
            src.skip_bytes(entry.size + padding(entry.size))?;
        }
        Ok(size.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer with what docker counts and what it does not.
    fn layer() -> Vec<u8> {
        let mut t = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        t.append_data(&mut h, "d/", io::empty()).unwrap();
        let mut f = tar::Header::new_gnu();
        f.set_mode(0o644);
        f.set_size(1000);
        t.append_data(&mut f, "d/file", &[7u8; 1000][..]).unwrap();
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(tar::EntryType::Link);
        l.set_size(0);
        t.append_link(&mut l, "d/hard", "d/file").unwrap();
        let mut s = tar::Header::new_gnu();
        s.set_entry_type(tar::EntryType::Symlink);
        s.set_size(0);
        t.append_link(&mut s, "d/soft", "a/twelve/chr").unwrap();
        let mut w = tar::Header::new_gnu();
        w.set_size(0);
        t.append_data(&mut w, "d/.wh.gone", io::empty()).unwrap();
        t.into_inner().unwrap()
    }

    #[test]
    fn counts_files_and_link_targets_once_and_nothing_else() {
        let plain = layer();
        assert_eq!(DiffSize::of_layer(&plain[..]).unwrap(), 1012);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &plain).unwrap();
        assert_eq!(DiffSize::of_layer(&gz.finish().unwrap()[..]).unwrap(), 1012);
        // Unpacking counts the same.
        let dir = tempfile::tempdir().unwrap();
        let report =
            crate::unpack::unpack_layer(&plain[..], &dir.path().join("l"), &Default::default()).unwrap();
        assert_eq!(report.diff_size, Some(1012));
    }

    #[test]
    fn a_long_name_bomb_is_refused_at_its_header() {
        let bomb = strata_fixtures::hostile::gzip_long_name_bomb(8 << 30);
        let err = DiffSize::of_layer(&bomb[..]).unwrap_err();
        assert!(err.to_string().contains("longer than the limit"), "{err}");
    }
}
