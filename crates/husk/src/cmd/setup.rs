//! `setup [--check]`: the `husk` group, and the data and config dirs with the owners and modes
//! that let members of the group fetch and read while only root runs pods.
//!
//! Plan, then apply: [`plan`] says what every directory must be (pure); `--check` compares, a
//! plain `setup` applies the difference (idempotent: a second run changes nothing).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::exit::Failure;
use crate::Ctx;

/// The group whose members may fetch and read without root (rkt had `rkt` and `rkt-admin`).
pub const GROUP: &str = "husk";

/// One directory as it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub path: PathBuf,
    /// Owner: always root.
    pub uid: u32,
    pub gid: u32,
    /// With the setgid bit where files must get the group.
    pub mode: u32,
    /// Files directly inside: made group-readable (older files may be 0600).
    pub files_mode: Option<u32>,
}

/// What the data dir `dir` and config dir `config` must look like, for group `gid`.
pub fn plan(dir: &Path, config: &Path, gid: u32) -> Vec<Want> {
    let want =
        |p: PathBuf, g: u32, mode: u32, files: Option<u32>| Want { path: p, uid: 0, gid: g, mode, files_mode: files };
    let store = dir.join("store");
    let mut v = vec![
        // Outsiders reach nothing: every command they run says which group they lack.
        want(dir.to_path_buf(), gid, 0o750, None),
        want(store.clone(), gid, 0o2750, Some(0o644)),
    ];
    // Members write blobs, records, names, locks and downloads; setgid keeps the group.
    for sub in husk_image::store::SHARED_DIRS {
        let files = if *sub == "blobs" { None } else { Some(0o644) };
        v.push(want(store.join(sub), gid, 0o2770, files));
    }
    // Layer trees are root's alone: a member never writes, renames or swaps one.
    v.push(want(store.join("layers"), gid, 0o750, None));
    v.push(want(dir.join("pods"), gid, 0o2750, None));
    for p in husk_pod::state::PhaseDir::ALL {
        v.push(want(dir.join("pods").join(p.name()), gid, 0o2750, None));
    }
    v.push(want(config.to_path_buf(), 0, 0o755, None));
    v.push(want(config.join("trust"), 0, 0o755, None));
    v
}

/// What is wrong with `w` now, if anything.
fn problems(w: &Want) -> Vec<String> {
    let Ok(md) = std::fs::symlink_metadata(&w.path) else { return vec![format!("{}: missing", w.path.display())] };
    let mut out = Vec::new();
    if md.file_type().is_symlink() || !md.is_dir() {
        return vec![format!("{}: not a directory", w.path.display())];
    }
    if md.uid() != w.uid || md.gid() != w.gid {
        out.push(format!("{}: owned by {}:{}, want {}:{}", w.path.display(), md.uid(), md.gid(), w.uid, w.gid));
    }
    if md.mode() & 0o7777 != w.mode {
        out.push(format!("{}: mode {:04o}, want {:04o}", w.path.display(), md.mode() & 0o7777, w.mode));
    }
    if let Some(fm) = w.files_mode {
        let unreadable = std::fs::read_dir(&w.path)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.metadata().is_ok_and(|m| m.is_file() && (m.mode() & fm & 0o070) != (fm & 0o070)))
                    .count()
            })
            .unwrap_or(0);
        if unreadable > 0 {
            out.push(format!("{}: {unreadable} file(s) the group cannot read", w.path.display()));
        }
    }
    out
}

fn apply(w: &Want) -> anyhow::Result<()> {
    let p = &w.path;
    std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))?;
    std::os::unix::fs::chown(p, Some(w.uid), Some(w.gid)).with_context(|| format!("cannot chown {}", p.display()))?;
    // Explicit, so that the umask never decides.
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(w.mode))
        .with_context(|| format!("cannot chmod {}", p.display()))?;
    if let Some(fm) = w.files_mode {
        for e in std::fs::read_dir(p).with_context(|| format!("cannot list {}", p.display()))?.flatten() {
            let md = e.metadata()?;
            if md.is_file() && (md.mode() & 0o777) & fm != fm {
                std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode((md.mode() & 0o777) | fm))?;
                std::os::unix::fs::chown(e.path(), None, Some(w.gid))?;
            }
        }
    }
    Ok(())
}

/// The gid of `name` in /etc/group.
pub fn group_gid(name: &str) -> Option<u32> {
    std::fs::read_to_string("/etc/group").ok()?.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then(|| f.nth(1)?.parse().ok())?
    })
}

pub fn cmd_setup(ctx: &Ctx, check: bool) -> Result<i32, Failure> {
    let gid = match group_gid(GROUP) {
        Some(g) => g,
        None if check => {
            eprintln!("group {GROUP}: missing (husk setup creates it)");
            return Ok(1);
        }
        None => {
            let st = std::process::Command::new("groupadd")
                .args(["--system", GROUP])
                .status()
                .context("cannot run groupadd (the passwd package)")?;
            if !st.success() {
                return Err(Failure::new(crate::exit::ENGINE, anyhow::anyhow!("groupadd --system {GROUP} failed")));
            }
            eprintln!("created group {GROUP}");
            group_gid(GROUP).ok_or_else(|| anyhow::anyhow!("group {GROUP} was created but is not in /etc/group"))?
        }
    };
    let wants = plan(&ctx.dir, &ctx.config_dir, gid);
    let found: Vec<String> = wants.iter().flat_map(problems).collect();
    if check {
        for p in &found {
            println!("{p}");
        }
        if found.is_empty() {
            eprintln!("{}: set up for group {GROUP} (gid {gid})", ctx.dir.display());
            return Ok(0);
        }
        eprintln!("{} problem(s); `husk setup` (as root) fixes them", found.len());
        return Ok(1);
    }
    for w in &wants {
        apply(w)?;
    }
    // The store's own files (its format version) exist before any member opens it.
    ctx.store()?;
    eprintln!(
        "{} and {}: set up for group {GROUP} (gid {gid}){}; add users with `usermod -aG {GROUP} USER`",
        ctx.dir.display(),
        ctx.config_dir.display(),
        if found.is_empty() { ", nothing to change" } else { "" }
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_dirs_are_setgid_and_group_writable_layers_are_roots() {
        let v = plan(Path::new("/d"), Path::new("/etc/husk"), 77);
        let get = |p: &str| v.iter().find(|w| w.path == Path::new(p)).unwrap_or_else(|| panic!("{p}"));
        assert_eq!(get("/d").mode, 0o750);
        assert_eq!(get("/d/store/refs").mode, 0o2770);
        assert_eq!(get("/d/store/blobs/sha256").mode, 0o2770);
        assert_eq!(get("/d/store/layers").mode, 0o750, "members never write layer trees");
        assert_eq!(get("/d/pods/run").mode, 0o2750, "members read pods, never write them");
        assert_eq!(get("/etc/husk/trust").gid, 0, "the trust store is root's");
        assert!(v.iter().all(|w| w.uid == 0));
    }

    #[test]
    fn problems_name_the_path_and_what_to_want() {
        let d = tempfile::tempdir().unwrap();
        let w = Want { path: d.path().join("x"), uid: 0, gid: 0, mode: 0o2770, files_mode: None };
        assert!(problems(&w)[0].ends_with("missing"));
        std::fs::create_dir(&w.path).unwrap();
        std::fs::set_permissions(&w.path, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(problems(&w).iter().any(|p| p.contains("mode 0700, want 2770")), "{:?}", problems(&w));
        apply(&w).unwrap();
        assert!(problems(&w).is_empty(), "{:?}", problems(&w));
    }
}
