//! strata's puller: moves images between the store and the outside world — image
//! archives (docker-save and OCI) and registries over HTTP (`fetch`, `push`).

mod archive;
pub mod client;
mod fetch;
mod push;

pub use archive::{ArchiveFormat, PullerError, load_file, save_file};
pub use client::{Client, ClientError, Credentials, FetchedManifest, ManifestHead};
pub use fetch::{FetchError, FetchOptions, FetchReport, fetch, registry_url};
pub use push::{PushError, PushOptions, PushReport, push};
