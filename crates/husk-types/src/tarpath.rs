//! Sanitizing the paths of layer tar entries.
//!
//! A layer may name any path. Before anything touches the disk, a name is reduced to a list of
//! plain components (no `..`, no leading `/`), and OCI whiteouts are recognised. Whether a
//! component on disk is a symlink is checked later, by the unpacker, with `openat2`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub const WHITEOUT_PREFIX: &str = ".wh.";
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TarPathError {
    #[error("hard link {0:?} points at the layer's root")]
    LinkToRoot(String),
    #[error("entry {0:?} is an invalid whiteout")]
    BadWhiteout(String),
}

/// What a sanitized entry name means.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum EntryName {
    /// The layer's root directory itself (`./`); only its metadata applies.
    Root,
    /// A regular path, relative to the layer root.
    Path(PathBuf),
    /// `.wh.NAME`: NAME in the lower layers is deleted. Holds the path of NAME.
    Whiteout(PathBuf),
    /// `.wh..wh..opq`: the directory's lower-layer contents are hidden. Holds the directory.
    Opaque(PathBuf),
}

/// Reduces a tar entry name to safe relative components, as podman and umoci read layers: a
/// leading `/` is dropped and `..` is resolved lexically, never above the layer's root (a
/// `../../etc/shadow` entry is the layer's own `etc/shadow`). Nothing can name a path outside
/// the layer; whether a component on disk is a symlink is checked later, by the unpacker.
pub fn sanitize(raw: &[u8]) -> Result<EntryName, TarPathError> {
    let shown = || String::from_utf8_lossy(raw).into_owned();
    let mut comps: Vec<&[u8]> = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                comps.pop();
            }
            c => comps.push(c),
        }
    }
    let Some(last) = comps.pop() else {
        return Ok(EntryName::Root);
    };
    let mut out = PathBuf::new();
    for c in &comps {
        if c.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            // A whiteout can only be a leaf.
            return Err(TarPathError::BadWhiteout(shown()));
        }
        out.push(OsStr::from_bytes(c));
    }
    if last == OPAQUE_MARKER.as_bytes() {
        return Ok(EntryName::Opaque(out));
    }
    if let Some(name) = last.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        if name.is_empty() || name == b"." || name == b".." || name.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return Err(TarPathError::BadWhiteout(shown()));
        }
        out.push(OsStr::from_bytes(name));
        return Ok(EntryName::Whiteout(out));
    }
    out.push(OsStr::from_bytes(last));
    Ok(EntryName::Path(out))
}

/// Sanitizes a hard-link target, which must be a plain path inside the layer.
pub fn sanitize_link_target(raw: &[u8]) -> Result<PathBuf, TarPathError> {
    match sanitize(raw)? {
        EntryName::Path(p) => Ok(p),
        EntryName::Root => Err(TarPathError::LinkToRoot(String::from_utf8_lossy(raw).into_owned())),
        EntryName::Whiteout(_) | EntryName::Opaque(_) => {
            Err(TarPathError::BadWhiteout(String::from_utf8_lossy(raw).into_owned()))
        }
    }
}

/// True when `p` is a single normal component chain (what [`sanitize`] produces).
pub fn is_plain_relative(p: &Path) -> bool {
    p.components().all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// Whether a layer entry may carry the extended attribute `name` into the store.
///
/// The unpacked trees are the lower dirs of every pod's overlay, so an xattr there is read by the
/// kernel, not just stored. Kept: `user.*` (application data), `security.capability` (file
/// capabilities, which images rely on, e.g. ping's CAP_NET_RAW) and POSIX ACLs. Dropped:
/// `trusted.*` (overlayfs' own `trusted.overlay.{redirect,metacopy,origin,opaque}` would steer
/// lookups of every pod using the layer; husk writes the opaque marker itself from OCI
/// whiteouts), every other `security.*` (SELinux/SMACK labels and IMA/EVM signatures are the
/// host's to assign, not an image's) and any other namespace.
pub fn layer_xattr_allowed(name: &str) -> bool {
    name.starts_with("user.")
        || name == "security.capability"
        || name == "system.posix_acl_access"
        || name == "system.posix_acl_default"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_private_xattrs_from_a_layer_are_dropped() {
        for bad in [
            "trusted.overlay.redirect",
            "trusted.overlay.metacopy",
            "trusted.overlay.origin",
            "trusted.overlay.opaque",
            "trusted.anything",
            "security.selinux",
            "security.ima",
            "security.evm",
            "security.capabilityX",
            "system.nfs4_acl",
            "",
        ] {
            assert!(!layer_xattr_allowed(bad), "{bad}");
        }
        for good in ["user.mime_type", "security.capability", "system.posix_acl_access", "system.posix_acl_default"] {
            assert!(layer_xattr_allowed(good), "{good}");
        }
    }
    use proptest::prelude::*;

    #[test]
    fn plain_names() {
        assert_eq!(sanitize(b"./etc/passwd").unwrap(), EntryName::Path("etc/passwd".into()));
        assert_eq!(sanitize(b"etc//./passwd").unwrap(), EntryName::Path("etc/passwd".into()));
        assert_eq!(sanitize(b"./").unwrap(), EntryName::Root);
        assert_eq!(sanitize(b".").unwrap(), EntryName::Root);
    }

    /// podman and umoci strip a leading '/' and clamp '..' at the root; husk refused such layers.
    #[test]
    fn tar_entries_are_clamped_inside_the_root_never_outside() {
        assert_eq!(sanitize(b"/etc/passwd").unwrap(), EntryName::Path("etc/passwd".into()));
        assert_eq!(sanitize(b"../etc/shadow").unwrap(), EntryName::Path("etc/shadow".into()));
        assert_eq!(sanitize(b"a/../../b").unwrap(), EntryName::Path("b".into()));
        assert_eq!(sanitize(b"a/b/../c").unwrap(), EntryName::Path("a/c".into()));
        assert_eq!(sanitize(b"/..").unwrap(), EntryName::Root);
        assert_eq!(sanitize(b"../.wh.x").unwrap(), EntryName::Whiteout("x".into()));
        assert_eq!(sanitize_link_target(b"../../etc/shadow").unwrap(), PathBuf::from("etc/shadow"));
        assert!(sanitize_link_target(b"./").is_err());
        assert!(sanitize_link_target(b"a/..").is_err());
    }

    #[test]
    fn whiteouts() {
        assert_eq!(sanitize(b"a/b/.wh.c").unwrap(), EntryName::Whiteout("a/b/c".into()));
        assert_eq!(sanitize(b"a/.wh..wh..opq").unwrap(), EntryName::Opaque("a".into()));
        assert_eq!(sanitize(b".wh..wh..opq").unwrap(), EntryName::Opaque("".into()));
        assert!(sanitize(b".wh.").is_err());
        assert!(sanitize(b".wh...").is_err());
        assert!(sanitize(b".wh.x/y").is_err());
    }

    proptest! {
        #[test]
        fn sanitized_paths_stay_relative_and_plain(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(name) = sanitize(&raw) {
                let p = match name {
                    EntryName::Root => PathBuf::new(),
                    EntryName::Path(p) | EntryName::Whiteout(p) | EntryName::Opaque(p) => p,
                };
                prop_assert!(p.is_relative());
                prop_assert!(is_plain_relative(&p));
            }
        }

        /// Whatever '..' and '/' a name holds, the result never climbs: it has no more
        /// components than the name's plain ones.
        #[test]
        fn paths_built_from_segments_never_climb(segs in proptest::collection::vec("[a-z.]{1,4}|\\.\\.", 1..8)) {
            let raw = segs.join("/");
            let plain = segs.iter().filter(|s| *s != ".." && *s != ".").count();
            if let Ok(EntryName::Path(p) | EntryName::Whiteout(p) | EntryName::Opaque(p)) = sanitize(raw.as_bytes()) {
                prop_assert!(p.components().count() <= plain);
                prop_assert!(is_plain_relative(&p));
            }
        }
    }
}
