//! strata's puller: moves images between the store and the outside world — image
//! archives (docker-save and OCI) today; registries (fetch, push) over HTTP.

mod archive;
pub mod client;

pub use archive::{ArchiveFormat, PullerError, load_file, save_file};
pub use client::{Client, ClientError, Credentials, FetchedManifest, ManifestHead};
