//! strata's puller: moves images between the store and the outside world — image
//! archives (docker-save and OCI) and registries over HTTP (`fetch`, `push`, through
//! `strata_client`).

mod archive;
mod credentials;
mod fetch;
mod push;

pub use archive::{ArchiveFormat, PullerError, load_file, save_file};
pub use credentials::{credentials_for, docker_config_credentials, docker_config_path};
pub use fetch::{FetchError, FetchOptions, FetchReport, fetch, registry_url};
pub use push::{PushError, PushOptions, PushReport, push};
pub use strata_client::{BlobProgress, Client, ClientError, Credentials, FetchedManifest, ManifestHead};
