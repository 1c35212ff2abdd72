//! `puller load` / `puller save`: archive files in and out of the store, with atomic
//! output files and compression chosen by the output's extension.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use strata_store::{ArchiveError, LoadOptions, LoadReport, SaveReport, Store};

/// Errors from the puller's archive commands.
#[derive(Debug, thiserror::Error)]
pub enum PullerError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> PullerError {
    let context = context.into();
    move |source| PullerError::Io { context, source }
}

/// Compression of a written archive, from its file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    Tar,
    TarGzip,
    TarZstd,
}

impl ArchiveFormat {
    pub fn from_path(path: &Path) -> ArchiveFormat {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if name.ends_with(".gz") || name.ends_with(".tgz") {
            ArchiveFormat::TarGzip
        } else if name.ends_with(".zst") || name.ends_with(".zstd") {
            ArchiveFormat::TarZstd
        } else {
            ArchiveFormat::Tar
        }
    }
}

/// Loads an archive file or OCI layout directory into the store.
pub fn load_file(store: &Store, path: &Path) -> Result<LoadReport, PullerError> {
    Ok(strata_store::load(store, path, &LoadOptions::default())?)
}

/// Saves images to `output`, written to a temporary file beside it and renamed into
/// place when complete, so a failed save never leaves a half-written archive.
pub fn save_file(store: &Store, refs: &[String], output: &Path) -> Result<SaveReport, PullerError> {
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".strata-save-")
        .tempfile_in(&dir)
        .map_err(io_err(format!("create temporary file in {}", dir.display())))?;
    let file = tmp.reopen().map_err(io_err("open temporary file"))?;
    let buffered = BufWriter::with_capacity(1 << 20, file);
    let report = match ArchiveFormat::from_path(output) {
        ArchiveFormat::Tar => {
            let mut w = buffered;
            let r = strata_store::save(store, refs, &mut w)?;
            w.flush().map_err(io_err("write archive"))?;
            r
        }
        ArchiveFormat::TarGzip => {
            let mut gz = flate2::write::GzEncoder::new(buffered, flate2::Compression::default());
            let r = strata_store::save(store, refs, &mut gz)?;
            gz.finish()
                .and_then(|mut w| w.flush())
                .map_err(io_err("write archive"))?;
            r
        }
        ArchiveFormat::TarZstd => {
            let mut z = zstd::stream::write::Encoder::new(buffered, 3).map_err(io_err("zstd"))?;
            let r = strata_store::save(store, refs, &mut z)?;
            z.finish()
                .and_then(|mut w| w.flush())
                .map_err(io_err("write archive"))?;
            r
        }
    };
    tmp.as_file().sync_all().map_err(io_err("fsync archive"))?;
    tmp.persist(output)
        .map_err(|e| io_err(format!("write {}", output.display()))(e.error))?;
    Ok(report)
}
