//! The registry's integration tests, one binary (each test binary relinks RocksDB): the
//! API through `app()` without a socket, real sockets, real clients and peers.

mod common;

mod artifacts;
mod auth_matrix;
mod blob_serving;
mod clients;
mod conformance;
mod direct_upload;
mod durability;
mod fuzz_corpus;
mod oci_workflows;
mod partial_pulls;
mod proxy;
mod scaleout;
mod security;
mod slow_clients;
