//! The runner's integration tests, as root, in one binary (each test binary relinks
//! RocksDB): containers started, confined, committed and exported for real.

mod build;
mod commit;
mod common;
mod confinement;
mod network;
mod start;
