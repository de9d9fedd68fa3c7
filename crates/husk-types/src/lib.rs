//! Pure types and parsers shared by every part of husk.
//!
//! Nothing here performs I/O, so every function can be unit-, property- and fuzz-tested in
//! isolation. The stage1 ABI types ([`pod`]) live here because both stage0 (`husk`) and each
//! stage1 flavor read and write them.
#![forbid(unsafe_code)] // only husk-sys may use `unsafe` (STYLE.md)

pub mod abi;
pub mod attach;
pub mod bytes;
pub mod digest;
pub mod etc;
pub mod msg;
pub mod net;
pub mod pod;
pub mod reference;
pub mod security;
pub mod syscalls;
pub mod tarpath;

pub use bytes::ByteStr;
pub use digest::{Digest, DigestError};
pub use reference::{ImageSource, Reference, ReferenceError};
