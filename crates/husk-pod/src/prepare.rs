//! From what the user asked (images, app flags, pod flags) to a [`PodManifest`]: pure functions
//! over the image config and the image's /etc/passwd and /etc/group.

use std::path::{Path, PathBuf};

use husk_image::{ImageRecord, Store};
use husk_types::pod::{App, AppSecurity, AppUser, ImageInfo, MountPoint};
use husk_types::security::Resources;
use husk_types::ByteStr;
use oci_spec::image::ImageConfiguration;

use crate::error::PodError;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One app as the user described it.
#[derive(Debug, Clone, Default)]
pub struct AppSpec {
    pub image: String,
    pub name: Option<String>,
    pub exec: Option<String>,
    /// Arguments after `--`: bytes, passed to the app unchanged.
    pub args: Vec<ByteStr>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub supplementary_gids: Vec<u32>,
    pub working_dir: Option<String>,
    /// Lowest precedence after the image: `--set-env-file` contents, in order.
    pub env_files: Vec<(String, String)>,
    pub set_env: Vec<(String, ByteStr)>,
    pub environment: Vec<(String, ByteStr)>,
    pub mounts: Vec<MountPoint>,
    pub readonly_rootfs: bool,
    pub security: AppSecurity,
    pub resources: Resources,
}

/// What the image config contributes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

impl ImageDefaults {
    pub fn from_config(cfg: &ImageConfiguration) -> ImageDefaults {
        let Some(c) = cfg.config() else { return ImageDefaults::default() };
        ImageDefaults {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default().iter().filter_map(|kv| split_env(kv)).collect(),
            working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
            user: c.user().clone().filter(|u| !u.is_empty()),
        }
    }
}

pub fn split_env(kv: &str) -> Option<(String, String)> {
    let (k, v) = kv.split_once('=')?;
    if k.is_empty() {
        return None;
    }
    Some((k.to_string(), v.to_string()))
}

/// argv: `--exec` replaces the entrypoint and cmd; arguments replace the cmd (docker's rule).
pub fn compute_exec(img: &ImageDefaults, exec: Option<&str>, args: &[ByteStr]) -> Vec<ByteStr> {
    let text = |v: &[String]| v.iter().map(|s| ByteStr::from(s.as_str())).collect::<Vec<_>>();
    match exec {
        Some(e) => std::iter::once(ByteStr::from(e)).chain(args.iter().cloned()).collect(),
        None if !args.is_empty() => text(&img.entrypoint).into_iter().chain(args.iter().cloned()).collect(),
        None => text(&img.entrypoint).into_iter().chain(text(&img.cmd)).collect(),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

pub fn parse_passwd(data: &str) -> Vec<PasswdEntry> {
    data.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 || l.starts_with('#') {
                return None;
            }
            Some(PasswdEntry { name: f[0].into(), uid: f[2].parse().ok()?, gid: f[3].parse().ok()?, home: f[5].into() })
        })
        .collect()
}

/// (name, gid, members)
pub fn parse_group(data: &str) -> Vec<(String, u32, Vec<String>)> {
    data.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || l.starts_with('#') {
                return None;
            }
            let members = f[3].split(',').filter(|m| !m.is_empty()).map(String::from).collect();
            Some((f[0].into(), f[2].parse().ok()?, members))
        })
        .collect()
}

/// Resolves `user[:group]` (names or numbers) against the image's passwd and group files.
pub fn resolve_user(
    spec: &str,
    group: Option<&str>,
    passwd: &[PasswdEntry],
    groups: &[(String, u32, Vec<String>)],
) -> Result<(AppUser, Option<String>), String> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let g = group.or(g);
    let entry = match u.parse::<u32>() {
        Ok(uid) => passwd.iter().find(|p| p.uid == uid).cloned().or(Some(PasswdEntry {
            name: String::new(),
            uid,
            gid: 0,
            home: "/".into(),
        })),
        Err(_) => passwd.iter().find(|p| p.name == u).cloned(),
    }
    .ok_or_else(|| format!("user {u:?} is not in the image's /etc/passwd; use a numeric uid"))?;
    let gid = match g {
        None => entry.gid,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .iter()
                .find(|(n, _, _)| n == g)
                .map(|(_, id, _)| *id)
                .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group; use a numeric gid"))?,
        },
    };
    let mut additional: Vec<u32> = if entry.name.is_empty() {
        vec![]
    } else {
        groups.iter().filter(|(_, _, m)| m.contains(&entry.name)).map(|(_, id, _)| *id).collect()
    };
    additional.retain(|x| *x != gid);
    additional.dedup();
    let home = if entry.home.is_empty() { None } else { Some(entry.home.clone()) };
    Ok((AppUser { uid: entry.uid, gid, additional_gids: additional }, home))
}

/// Reads a regular file from the image's layer stack (topmost layer wins; a whiteout hides it).
///
/// Each layer is resolved beneath its own root with `openat2` and no symlinks: an image whose
/// /etc is a symlink to an absolute path is never read through to the host's files. The file is
/// opened non-blocking, so a FIFO where /etc/passwd should be cannot hang stage0, and anything
/// but a regular file counts as absent.
pub fn read_image_file(store: &Store, rec: &ImageRecord, rel: &str) -> Option<Vec<u8>> {
    use husk_sys::resolve::{open_beneath, open_dir};
    use rustix::fs::{FileType, Mode, OFlags};
    use std::io::Read;
    for l in rec.layers.iter().rev() {
        let Ok(root) = open_dir(&store.layer_rootfs(&l.diff_id)) else { continue };
        let fd = match open_beneath(
            &root,
            Path::new(rel),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            // A symlink on the way (ELOOP) or a special file: not something to trust.
            Err(_) => return None,
        };
        let st = rustix::fs::fstat(&fd).ok()?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            // A 0/0 character device is a whiteout; any other special file is ignored as well.
            return None;
        }
        let mut data = Vec::new();
        std::fs::File::from(fd).take(1 << 20).read_to_end(&mut data).ok()?;
        return Some(data);
    }
    None
}

/// A default app name from an image name: the last path component, without tag.
pub fn default_app_name(image: &str) -> String {
    let base = image.rsplit('/').next().unwrap_or(image);
    let base = base.split(['@', ':']).next().unwrap_or(base);
    let clean: String =
        base.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
    let clean = clean.trim_matches('-').to_string();
    if clean.is_empty() {
        "app".into()
    } else {
        clean
    }
}

/// Builds one app of the pod manifest.
pub fn build_app(
    store: &Store,
    image_name: &str,
    rec: &ImageRecord,
    spec: &AppSpec,
    name: String,
    private_users: Option<husk_types::pod::IdRange>,
) -> Result<App, PodError> {
    let app_err = |why: String| PodError::App { app: name.clone(), why };
    let cfg_bytes = store.read_blob(&rec.config)?;
    let cfg: ImageConfiguration = serde_json::from_slice(&cfg_bytes)
        .map_err(|e| app_err(format!("image config of {image_name} is invalid: {e}")))?;
    let img = ImageDefaults::from_config(&cfg);
    let exec = compute_exec(&img, spec.exec.as_deref(), &spec.args);
    if exec.is_empty() {
        return Err(app_err(format!(
            "image {image_name} has no entrypoint or command; give one with --exec or after --"
        )));
    }
    let passwd = read_image_file(store, rec, "etc/passwd")
        .map(|d| parse_passwd(&String::from_utf8_lossy(&d)))
        .unwrap_or_default();
    let groups =
        read_image_file(store, rec, "etc/group").map(|d| parse_group(&String::from_utf8_lossy(&d))).unwrap_or_default();
    let user_spec = spec.user.clone().or(img.user.clone()).unwrap_or_else(|| "0".into());
    let (mut user, home) = resolve_user(&user_spec, spec.group.as_deref(), &passwd, &groups).map_err(app_err)?;
    for g in &spec.supplementary_gids {
        if !user.additional_gids.contains(g) {
            user.additional_gids.push(*g);
        }
    }
    user.validate(private_users).map_err(app_err)?;
    let mut env: Vec<(String, ByteStr)> = vec![("PATH".to_string(), DEFAULT_PATH.into())];
    env.push(("HOME".into(), home.unwrap_or_else(|| "/".into()).into()));
    env.extend(img.env.iter().map(|(k, v)| (k.clone(), ByteStr::from(v.as_str()))));
    env.extend(spec.env_files.iter().map(|(k, v)| (k.clone(), ByteStr::from(v.as_str()))));
    env.extend(spec.set_env.iter().cloned());
    env.extend(spec.environment.iter().cloned());
    let working_dir = PathBuf::from(spec.working_dir.clone().or(img.working_dir.clone()).unwrap_or_else(|| "/".into()));
    if !working_dir.is_absolute() {
        return Err(app_err(format!("working directory {} must be absolute", working_dir.display())));
    }
    Ok(App {
        name,
        image: ImageInfo { name: image_name.to_string(), id: rec.id.clone(), manifest: rec.manifest.clone() },
        layers: rec.layers.iter().map(|l| store.layer_rootfs(&l.diff_id)).collect(),
        exec,
        env,
        user,
        working_dir,
        mounts: spec.mounts.clone(),
        readonly_rootfs: spec.readonly_rootfs,
        security: spec.security.clone(),
        resources: spec.resources.clone(),
    })
}

/// Parses an env file: `KEY=VALUE` lines, `#` comments and blank lines skipped.
pub fn parse_env_file(path: &Path) -> Result<Vec<(String, String)>, PodError> {
    let data = std::fs::read_to_string(path).map_err(|e| PodError::io(path, "read environment file", e))?;
    let mut out = Vec::new();
    for (i, line) in data.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let kv = split_env(l).ok_or_else(|| PodError::Invalid {
            uuid: "-".into(),
            why: format!("{}:{}: expected KEY=VALUE, got {l:?}", path.display(), i + 1),
        })?;
        out.push(kv);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img() -> ImageDefaults {
        ImageDefaults { entrypoint: vec!["/ep".into()], cmd: vec!["a".into(), "b".into()], ..Default::default() }
    }

    #[test]
    fn exec_rules() {
        assert_eq!(compute_exec(&img(), None, &[]), vec!["/ep", "a", "b"]);
        assert_eq!(compute_exec(&img(), None, &["x".into()]), vec!["/ep", "x"]);
        assert_eq!(compute_exec(&img(), Some("/bin/sh"), &["-c".into(), "true".into()]), vec!["/bin/sh", "-c", "true"]);
        let no_ep = ImageDefaults { cmd: vec!["sh".into()], ..Default::default() };
        assert_eq!(compute_exec(&no_ep, None, &["true".into()]), vec!["true"]);
        let raw = ByteStr(vec![b'x', 0xff]);
        assert_eq!(compute_exec(&img(), None, std::slice::from_ref(&raw)), vec![ByteStr::from("/ep"), raw]);
    }

    #[test]
    fn users_by_name_and_number() {
        let pw = parse_passwd("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n");
        let gr = parse_group("root:x:0:\napp:x:1000:\nextra:x:2000:app,other\n");
        let (u, home) = resolve_user("app", None, &pw, &gr).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.additional_gids.clone(), home.as_deref()),
            (1000, 1000, vec![2000], Some("/home/app"))
        );
        let (u, _) = resolve_user("1000:extra", None, &pw, &gr).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 2000));
        let (u, _) = resolve_user("4242", Some("77"), &pw, &gr).unwrap();
        assert_eq!((u.uid, u.gid), (4242, 77));
        assert!(resolve_user("nobody-here", None, &pw, &gr).unwrap_err().contains("nobody-here"));
        assert!(resolve_user("app:nogroup", None, &pw, &gr).unwrap_err().contains("nogroup"));
    }

    #[test]
    fn app_names() {
        assert_eq!(default_app_name("127.0.0.1:5000/husk/busybox:latest"), "busybox");
        assert_eq!(default_app_name("oci:/x/My_Image"), "my-image");
    }

    #[test]
    fn env_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("env");
        std::fs::write(&p, "# c\nA=1\n\nB=x=y\n").unwrap();
        assert_eq!(parse_env_file(&p).unwrap(), vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]);
        std::fs::write(&p, "oops\n").unwrap();
        assert!(parse_env_file(&p).unwrap_err().to_string().contains(":1:"));
    }
}
