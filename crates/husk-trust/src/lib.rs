//! husk's image trust: which signatures an image needs (husk's trust store, containers'
//! policy.json and husk.toml's default), and their verification: GPG simple signing (as
//! `skopeo copy --sign-by` writes it, kept in a lookaside store) and cosign key-based
//! signatures (kept in the registry). Public keys only; nothing here touches the network —
//! the image crate gathers the signatures a [`Decision`] needs.
#![forbid(unsafe_code)] // only husk-sys may use `unsafe` (STYLE.md)

pub mod identity;
pub mod keys;
pub mod payload;
pub mod policy;
pub mod registries;
pub mod store;
pub mod trust;

pub use identity::SignedIdentity;
pub use keys::{KeyType, PublicKey, SignatureKind};
pub use policy::{Policy, Requirement, Target};
pub use registries::Registries;
pub use store::{TrustStore, TrustedKey};
pub use trust::{
    check_local, verify, CosignSignature, Decision, DefaultRule, Found, GpgSignature, Rejected, Trust, TrustRecord,
};
