//! strata's registry HTTP client (OCI distribution API), shared by `puller` (fetch, push)
//! and the registry's pull-through cache: auth challenges, manifests (digest checked),
//! tag lists, blob pushes, and blobs streamed into the store through its ingest.

mod blob;
mod challenge;
mod client;
mod error;
/// Fuzz target bodies (for `fixtures/fuzz` and its corpus-replay test); not an API.
#[doc(hidden)]
pub mod fuzzing;

pub use blob::BlobProgress;
pub use client::{Client, Credentials, FetchedManifest, ManifestHead};
pub use error::ClientError;
