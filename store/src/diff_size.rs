//! A layer's size as docker counts it (`docker history`'s SIZE): counted while a layer is
//! unpacked, or read from a layer blob the store has not unpacked.

use std::io::{self, BufRead, BufReader, Read};

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
        let mut size = DiffSize::default();
        let mut archive = tar::Archive::new(decoder);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path_bytes();
            let name = path.rsplit(|b| *b == b'/').find(|c| !c.is_empty()).unwrap_or(&[]);
            if name.starts_with(WHITEOUT_PREFIX) {
                continue;
            }
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => size.file(entry.size()),
                tar::EntryType::GNUSparse => {
                    let real = entry
                        .header()
                        .as_gnu()
                        .and_then(|g| g.real_size().ok())
                        .unwrap_or(entry.size());
                    size.file(real);
                }
                tar::EntryType::Symlink => {
                    if let Some(target) = entry.link_name_bytes() {
                        size.symlink(&target);
                    }
                }
                _ => {}
            }
            // PAX sparse files (GNU 1.0) name their apparent size in the extensions.
            let stored = entry.size();
            if let Some(ext) = entry.pax_extensions()? {
                for e in ext.flatten() {
                    if matches!(e.key(), Ok("GNU.sparse.realsize" | "GNU.sparse.size"))
                        && let Some(real) = e.value().ok().and_then(|v| v.parse::<u64>().ok())
                    {
                        size.0 = size.0.saturating_sub(stored).saturating_add(real);
                    }
                }
            }
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
}
