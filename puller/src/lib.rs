//! strata's puller: moves images between the store and the outside world — image
//! archives (docker-save and OCI) and registries over HTTP (`fetch`; push to come).

mod archive;
pub mod client;
mod fetch;

pub use archive::{ArchiveFormat, PullerError, load_file, save_file};
pub use client::{Client, ClientError, Credentials, FetchedManifest, ManifestHead};
pub use fetch::{FetchError, FetchOptions, FetchReport, fetch, registry_url};
