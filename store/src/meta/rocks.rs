//! The embedded metadata engine: RocksDB, one column family per [`Cf`], synced writes.

use std::path::Path;
use std::sync::Mutex;

use rocksdb::{ColumnFamilyDescriptor, DB, IteratorMode, Options, WriteBatch};

use super::{Cf, MetaEngine, MetaError, Op, Result, SCHEMA_KEY, SCHEMA_VERSION};

/// RocksDB, opened read-write (one writer process) or as a secondary (read-only view).
pub(super) struct Rocks {
    db: DB,
    read_only: bool,
    /// Serialises this process's writes, so a conditional write's read and write are one
    /// step (RocksDB has one writer process).
    cas: Mutex<()>,
}

impl std::fmt::Debug for Rocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rocks")
            .field("path", &self.db.path())
            .field("read_only", &self.read_only)
            .finish()
    }
}

fn db_options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_keep_log_file_num(4);
    opts.set_max_log_file_size(1 << 20);
    opts.set_max_open_files(256);
    // Opening loads every column family's table handles with up to 16 threads each (some
    // 180 threads for one open); the tables are few and small, and short-lived CLI runs
    // (`runner build`, `store ls`) pay for each thread.
    opts.set_max_file_opening_threads(1);
    opts
}

impl Rocks {
    pub(super) fn open(path: &Path) -> Result<Rocks> {
        let opts = db_options();
        let cfs = Cf::ALL
            .iter()
            .map(|cf| ColumnFamilyDescriptor::new(cf.name(), Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let rocks = Rocks {
            db,
            read_only: false,
            cas: Mutex::new(()),
        };
        rocks.check_schema(true)?;
        Ok(rocks)
    }

    pub(super) fn open_read_only(path: &Path, scratch: &Path) -> Result<Rocks> {
        let mut opts = db_options();
        opts.set_max_open_files(-1);
        let names: Vec<&str> = Cf::ALL.iter().map(|c| c.name()).collect();
        let db = DB::open_cf_as_secondary(&opts, path, scratch, names)?;
        db.try_catch_up_with_primary()?;
        let rocks = Rocks {
            db,
            read_only: true,
            cas: Mutex::new(()),
        };
        rocks.check_schema(false)?;
        Ok(rocks)
    }

    fn check_schema(&self, write_if_missing: bool) -> Result<()> {
        let cf = self.cf(Cf::Meta);
        match self.db.get_cf(cf, SCHEMA_KEY)? {
            Some(v) if v == SCHEMA_VERSION.to_string().as_bytes() => Ok(()),
            Some(v) => Err(MetaError::Schema {
                found: String::from_utf8_lossy(&v).into_owned(),
            }),
            None if write_if_missing => {
                self.db.put_cf(cf, SCHEMA_KEY, SCHEMA_VERSION.to_string())?;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        // Every family in `Cf::ALL` is created at open.
        self.db
            .cf_handle(cf.name())
            .expect("column family opened at start")
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            Err(MetaError::ReadOnly)
        } else {
            Ok(())
        }
    }

    fn write_synced(&self, batch: WriteBatch) -> Result<()> {
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }
}

impl MetaEngine for Rocks {
    fn get(&self, cf: Cf, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(cf), key.as_bytes())?
            .map(|v| v.to_vec()))
    }

    fn scan(&self, cf: Cf, prefix: &str, keys_only: bool) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        let mode = IteratorMode::From(prefix.as_bytes(), rocksdb::Direction::Forward);
        for item in self.db.iterator_cf(self.cf(cf), mode) {
            let (k, v) = item?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            let value = if keys_only { Vec::new() } else { v.into_vec() };
            out.push((String::from_utf8_lossy(&k).into_owned(), value));
        }
        Ok(out)
    }

    fn write(&self, ops: Vec<Op>) -> Result<()> {
        self.check_writable()?;
        let _guard = self.cas.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = WriteBatch::default();
        for op in ops {
            match op {
                Op::Put(cf, key, value) => batch.put_cf(self.cf(cf), key.as_bytes(), value),
                Op::Delete(cf, key) => batch.delete_cf(self.cf(cf), key.as_bytes()),
            }
        }
        self.write_synced(batch)
    }

    fn compare_and_swap(
        &self,
        cf: Cf,
        key: &str,
        expected: Option<&[u8]>,
        value: Option<Vec<u8>>,
    ) -> Result<bool> {
        self.check_writable()?;
        let _guard = self.cas.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.db.get_pinned_cf(self.cf(cf), key.as_bytes())?;
        if current.as_deref() != expected {
            return Ok(false);
        }
        drop(current);
        let mut batch = WriteBatch::default();
        match value {
            Some(v) => batch.put_cf(self.cf(cf), key.as_bytes(), v),
            None => batch.delete_cf(self.cf(cf), key.as_bytes()),
        }
        self.write_synced(batch)?;
        Ok(true)
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }
}
