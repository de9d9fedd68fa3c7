//! Pods on disk: phases, locks, preparation, listing and garbage collection.
//!
//! A pod's phase is the directory holding it plus whether its exclusive lock is held:
//!
//! ```text
//! pods/embryo/<uuid>          being created         (locked)   | abandoned (unlocked)
//! pods/prepare/<uuid>         being prepared        (locked)   | aborted   (unlocked)
//! pods/prepared/<uuid>        ready for run-prepared
//! pods/run/<uuid>             running               (locked)   | exited    (unlocked)
//! pods/exited-garbage/<uuid>  exited, collected by gc, removed after the grace period
//! pods/garbage/<uuid>         being removed
//! ```
//! Transitions are `rename`s of a locked directory. The running pod's supervisor (stage1) holds
//! the lock for the pod's whole life, so a pod whose supervisor died is seen as exited by every
//! command, with no daemon to tell them.
#![forbid(unsafe_code)] // only husk-sys may use `unsafe` (STYLE.md)

pub mod error;
pub mod idrange;
pub mod lifecycle;
pub mod network;
pub mod prepare;
pub mod state;

pub use error::PodError;
pub use state::{Phase, PodInfo, Pods};
