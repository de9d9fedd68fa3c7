//! husk's image store and OCI registry client.
//!
//! Images enter through [`fetch::fetch`] (a registry, an OCI layout or archive, a docker
//! archive), are verified while they stream, and are kept as content-addressed blobs plus one
//! unpacked tree per layer, which pods use as overlay lower dirs.
#![forbid(unsafe_code)] // only husk-sys may use `unsafe` (STYLE.md)

pub mod base;
pub mod error;
pub mod fetch;
pub mod ingest;
pub mod layout;
pub mod maintenance;
mod migrate;
pub mod registry;
pub mod signatures;
pub mod store;
pub mod unpack;

pub use error::{FetchError, StoreError, UnpackError};
pub use fetch::{admit, fetch, prepare_for_run, FetchOptions, Fetched, PullPolicy};
pub use ingest::{NoProgress, Progress};
pub use registry::{AsyncRegistry, RegistryOptions};
pub use store::{Found, ImageRecord, Store, Via};
