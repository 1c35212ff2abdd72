//! The store's integration tests in one binary (each test binary relinks RocksDB): archives,
//! the `store` command, GC and ingest under concurrency, and layer unpacking (hostile,
//! well-formed, unprivileged, through the layer store and under a real overlay mount).

mod archive;
mod backends;
mod cli;
mod common;
mod crash_recovery;
mod gc_concurrent;
mod ingest_processes;
mod tar_parity;
mod unpack_hostile;
mod unpack_layers;
mod unpack_overlay;
mod unpack_unprivileged;
mod unpack_wellformed;
