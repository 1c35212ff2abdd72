//! The puller's integration tests in one binary (each test binary relinks RocksDB): fetch
//! and push against real registries, save and load against docker, skopeo and umoci, and
//! loads that survive a full disk, concurrent GC and `kill -9`.

mod archive_interop;
mod common;
mod fetch;
mod fetch_retry;
mod full_disk;
mod gc_during_load;
mod kill_load;
mod messages;
mod push;
