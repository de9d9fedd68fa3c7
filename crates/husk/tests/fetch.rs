//! `husk fetch` and `husk image …` against the loopback registry and local layouts.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::{image, images_dir, registry, Env};

#[test]
fn fetch_from_registry_lists_verifies_and_is_cached() {
    let env = Env::new();
    let out = env.ok(&["fetch", "--quiet", &image("busybox"), &image("big")]);
    assert_eq!(out.lines().count(), 2, "one ID per image: {out}");
    let list = env.json(&["image", "list", "--format", "json"]);
    let names: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()))
        .collect();
    assert!(names.contains(&image("busybox")) && names.contains(&image("big")), "{names:?}");
    // big shares its first layer with busybox: 5 layers, 4 distinct unpacked trees... plus configs.
    let trees = std::fs::read_dir(env.dir().join("store/layers")).unwrap().count();
    assert_eq!(trees, 4, "the busybox layer is unpacked once and shared");
    env.ok(&["image", "verify"]);
    // A second fetch downloads nothing.
    let o = env.husk(&["fetch", &image("big")]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("up to date"), "{}", String::from_utf8_lossy(&o.stderr));
    // And `never` works without the registry being asked.
    env.ok(&["fetch", "--pull-policy=never", &image("big")]);
}

#[test]
fn unpacked_layers_are_exact() {
    let env = Env::new();
    env.ok(&["fetch", "-q", &image("big"), &image("busybox")]);
    let out = env.tmp.path().join("render");
    env.ok(&["image", "render", &image("big"), out.to_str().unwrap()]);
    // Whiteouts and the opaque directory were applied.
    assert!(!out.join("to-delete").exists());
    assert!(!out.join("data/blob0.bin").exists());
    assert!(!out.join("replaced/old-a").exists() && out.join("replaced/new").exists());
    // Owners, modes, hard links, symlinks, FIFOs.
    let m = std::fs::metadata(out.join("data/owned/secret")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 2000, 0o600));
    assert_eq!(std::fs::read_to_string(out.join("data/owned/secret")).unwrap(), "changed\n");
    assert_eq!(std::fs::metadata(out.join("data/setuid-tool")).unwrap().mode() & 0o7777, 0o4755);
    assert_eq!(std::fs::metadata(out.join("data/text.txt")).unwrap().nlink(), 2);
    assert_eq!(std::fs::read_link(out.join("data/abs-link")).unwrap(), Path::new("/etc/passwd"));
    assert_eq!(std::fs::metadata(out.join("data3/blob0.bin")).unwrap().uid(), 65534);
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(out.join("data/pipe")).unwrap().file_type().is_fifo());
    // extract also writes manifest and config.
    let ex = env.tmp.path().join("extract");
    env.ok(&["image", "extract", &image("busybox"), ex.to_str().unwrap()]);
    assert!(
        ex.join("rootfs/bin/busybox").is_file()
            && ex.join("manifest.json").is_file()
            && ex.join("config.json").is_file()
    );
}

#[test]
fn local_sources_and_export_round_trip() {
    let env = Env::new();
    let layout = images_dir().join("busybox");
    let out = env.ok(&["fetch", "-q", &format!("oci:{}:latest", layout.display())]);
    let id = out.trim().to_string();
    let archive = env.tmp.path().join("bb.tar");
    env.ok(&["image", "export", "localhost/busybox:latest", archive.to_str().unwrap()]);
    // Another store loads the archive; so does skopeo (another tool).
    let env2 = Env::new();
    let id2 = env2.ok(&["fetch", "-q", &format!("oci-archive:{}", archive.display())]);
    assert_eq!(id2.trim(), id);
    let docker = env.tmp.path().join("docker.tar");
    let st = Command::new("skopeo")
        .args([
            "copy",
            "-q",
            &format!("oci-archive:{}", archive.display()),
            &format!("docker-archive:{}:husk/bb:v1", docker.display()),
        ])
        .status()
        .unwrap();
    assert!(st.success(), "skopeo could not read husk's export");
    let env3 = Env::new();
    env3.ok(&["fetch", "-q", &format!("docker-archive:{}", docker.display())]);
    let list = env3.json(&["image", "list", "--format", "json"]);
    assert_eq!(list[0]["names"][0], "docker.io/husk/bb:v1");
    env3.ok(&["image", "verify"]);
}

#[test]
fn registry_errors_are_named_and_leave_the_store_unchanged() {
    let env = Env::new();
    let err = env.fails(&["fetch", "-q", &format!("{}/husk/no-such-image:latest", registry())], 121);
    assert!(err.contains("no-such-image") && err.contains("not found"), "{err}");
    let err = env.fails(&["fetch", "-q", "127.0.0.1:1/husk/busybox"], 121);
    assert!(err.contains("cannot reach registry 127.0.0.1:1"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    // Without the insecure setting the registry is spoken to over HTTPS, which it does not serve.
    let o = Command::new(Env::bin())
        .args(["--dir", env.dir().to_str().unwrap(), "--config-dir", "/nonexistent", "fetch", "-q", &image("busybox")])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(121));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--insecure-options=http"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = env.fails(&["fetch", "-q", "--pull-policy=never", &image("busybox")], 121);
    assert!(err.contains("pull policy"), "{err}");
    assert!(env.json(&["image", "list", "--format", "json"]).as_array().unwrap().is_empty());
    let err = env.fails(&["image", "rm", "nothing-here"], 121);
    assert!(err.contains("nothing-here"), "{err}");
    let err = env.fails(&["fetch", "ftp://x/y"], 121);
    assert!(err.contains("unknown transport"), "{err}");
}

fn copy_layout(src: &Path, dst: &Path) {
    let st = Command::new("cp").args(["-a", src.to_str().unwrap(), dst.to_str().unwrap()]).status().unwrap();
    assert!(st.success());
}

fn layer_blob(layout: &Path) -> std::path::PathBuf {
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(m)).unwrap()).unwrap();
    let l = manifest["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    layout.join("blobs/sha256").join(l)
}

#[test]
fn corrupt_or_truncated_layer_is_refused() {
    let env = Env::new();
    let bad = env.tmp.path().join("bad");
    copy_layout(&images_dir().join("busybox"), &bad);
    let blob = layer_blob(&bad);
    let mut data = std::fs::read(&blob).unwrap();
    let n = data.len();
    data[n / 2] ^= 0xff;
    std::fs::write(&blob, &data).unwrap();
    let err = env.fails(&["fetch", "-q", &format!("oci:{}", bad.display())], 121);
    assert!(err.contains("digest mismatch") || err.contains("corrupt") || err.contains("not a valid"), "{err}");
    std::fs::write(&blob, &data[..n / 3]).unwrap();
    let err = env.fails(&["fetch", "-q", &format!("oci:{}", bad.display())], 121);
    assert!(err.contains("layer sha256:"), "{err}");
    // Nothing partial is visible: no image, no layer tree, no leftovers after gc.
    assert!(env.json(&["image", "list", "--format", "json"]).as_array().unwrap().is_empty());
    assert_eq!(std::fs::read_dir(env.dir().join("store/layers")).unwrap().count(), 0);
    env.ok(&["image", "gc"]);
    assert_eq!(std::fs::read_dir(env.dir().join("store/tmp")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(env.dir().join("store/blobs/sha256")).unwrap().count(), 0);
}

#[test]
fn verify_reports_a_damaged_tree() {
    let env = Env::new();
    env.ok(&["fetch", "-q", &image("busybox")]);
    let layers: Vec<_> = std::fs::read_dir(env.dir().join("store/layers")).unwrap().flatten().collect();
    std::fs::write(layers[0].path().join("rootfs/etc/passwd"), b"evil::0:0::/:/bin/sh\n").unwrap();
    let o = env.husk(&["image", "verify"]);
    assert_eq!(o.status.code(), Some(123));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("DAMAGED layer tree"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn kill_9_during_fetch_leaves_nothing_partial() {
    let env = Env::new();
    for delay_ms in [5u64, 20, 60, 120] {
        let mut child =
            env.cmd().args(["fetch", "-q", &format!("oci:{}", images_dir().join("big").display())]).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        // Whatever is visible is complete and verified.
        env.ok(&["image", "verify"]);
    }
    env.ok(&["fetch", "-q", &format!("oci:{}", images_dir().join("big").display())]);
    env.ok(&["image", "verify"]);
    env.ok(&["image", "gc"]);
    assert_eq!(std::fs::read_dir(env.dir().join("store/tmp")).unwrap().count(), 0);
}

#[test]
fn concurrent_fetches_of_the_same_image_all_succeed() {
    let env = Env::new();
    let children: Vec<_> = (0..4).map(|_| env.cmd().args(["fetch", "-q", &image("big")]).spawn().unwrap()).collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    env.ok(&["image", "verify"]);
    assert_eq!(env.json(&["image", "list", "--format", "json"]).as_array().unwrap().len(), 1);
}

#[test]
fn rm_and_gc_free_the_store() {
    let env = Env::new();
    env.ok(&["fetch", "-q", &image("busybox"), &image("big")]);
    env.ok(&["image", "rm", &image("big")]);
    env.ok(&["image", "gc"]);
    // Lock files do not pile up: gc keeps only the store lock.
    let locks: Vec<String> = std::fs::read_dir(env.dir().join("store/locks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(locks, vec!["store.lock"]);
    assert_eq!(std::fs::read_dir(env.dir().join("store/layers")).unwrap().count(), 1, "only busybox's layer stays");
    let m = env.json(&["image", "cat-manifest", &image("busybox")]);
    assert_eq!(m["schemaVersion"], 2);
}

#[test]
fn a_full_disk_is_named_and_leaves_the_store_as_it_was() {
    let env = Env::new();
    // A data dir on an 8 MiB tmpfs: busybox fits, the 50 MB image does not.
    let small = env.tmp.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs", small.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(small.clone());
    let husk = |args: &[&str]| {
        Command::new(Env::bin())
            .arg("--dir")
            .arg(&small)
            .arg("--config-dir")
            .arg(env.tmp.path().join("etc"))
            .args(args)
            .output()
            .unwrap()
    };
    assert!(husk(&["fetch", "-q", &image("busybox")]).status.success());
    let o = husk(&["fetch", "-q", &image("big")]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert!(err.contains("No space left") && err.contains("disk") && err.contains("hint:"), "{err}");
    let list = husk(&["image", "list", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "busybox stays, nothing of big is visible");
    assert!(husk(&["image", "verify"]).status.success());
    assert!(husk(&["image", "gc"]).status.success());
    assert_eq!(std::fs::read_dir(small.join("store/tmp")).unwrap().count(), 0);
}

#[test]
fn registry_credentials_from_docker_config() {
    let env = Env::new();
    let reg =
        std::env::var("HUSK_TEST_AUTH_REGISTRY").expect("HUSK_TEST_AUTH_REGISTRY is not set: run scripts/test.sh");
    std::fs::write(env.tmp.path().join("etc/husk.toml"), format!("[registries.\"{reg}\"]\ninsecure = [\"http\"]\n"))
        .unwrap();
    let img = format!("{reg}/husk/busybox:latest");
    let docker = env.tmp.path().join("docker");
    std::fs::create_dir(&docker).unwrap();
    let with_auth = |user_pass: Option<&str>| {
        let mut c = env.cmd();
        match user_pass {
            Some(up) => {
                let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, up);
                std::fs::write(
                    docker.join("config.json"),
                    format!("{{\"auths\": {{\"{reg}\": {{\"auth\": \"{auth}\"}}}}}}"),
                )
                .unwrap();
                c.env("DOCKER_CONFIG", &docker);
            }
            None => {
                c.env("DOCKER_CONFIG", env.tmp.path().join("no-docker-config"));
            }
        }
        c.args(["fetch", "-q", &img]).output().unwrap()
    };
    for creds in [None, Some("husk:wrong")] {
        let o = with_auth(creds);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(121), "{err}");
        assert!(err.contains("refused access (401)") && err.contains("hint:") && err.contains("config.json"), "{err}");
    }
    let o = with_auth(Some("husk:s3cret"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    env.ok(&["image", "verify"]);
}

#[test]
fn progress_is_drawn_on_a_terminal_only() {
    let env = Env::new();
    let cmd = format!(
        "{} --dir {} --config-dir {} fetch {}",
        Env::bin().display(),
        env.dir().display(),
        env.tmp.path().join("etc").display(),
        image("big")
    );
    let out = Command::new("script").args(["-qec", &cmd, "/dev/null"]).output().unwrap();
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(tty.contains("total") && tty.contains("MiB"), "no progress on a terminal: {tty}");
    let env2 = Env::new();
    let o = env2.husk(&["fetch", &image("big")]);
    let piped = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && !piped.contains("total"), "progress drawn into a pipe: {piped}");
}

/// Copies with skopeo (another tool); `what` names the step in a failure.
fn skopeo_copy(what: &str, args: &[&str]) {
    let st = Command::new("skopeo").args(["copy", "-q"]).args(args).status().unwrap();
    assert!(st.success(), "skopeo could not {what}");
}

/// Pushes the busybox test image to the loopback registry as `husk/variants:TAG`, from the OCI
/// layout `src` (tag `latest`), with `extra` flags.
fn push_variant(src: &Path, tag: &str, extra: &[&str]) -> String {
    let dest = format!("{}/husk/variants:{tag}", registry());
    let mut args = vec!["--dest-tls-verify=false"];
    args.extend_from_slice(extra);
    let (from, to) = (format!("oci:{}:latest", src.display()), format!("docker://{dest}"));
    args.extend_from_slice(&[&from, &to]);
    skopeo_copy(&format!("push {dest}"), &args);
    dest
}

/// One image record per manifest (issue 15): the same image as OCI+gzip, OCI+zstd and Docker
/// v2s2 shares one config (one image ID) and its unpacked trees, but each name shows, exports
/// and removes its own manifest.
#[test]
fn names_of_one_image_in_three_formats_keep_their_own_manifests() {
    let env = Env::new();
    let busybox = images_dir().join("busybox");
    let gzip = push_variant(&busybox, "gzip", &[]);
    let v2s2 = push_variant(&busybox, "v2s2", &["--format=v2s2"]);
    // skopeo recompresses only uncompressed layers (and reuses blobs a registry already has):
    // decompress, then compress as zstd into a layout, then push that.
    let (plain, zstd_layout) = (env.tmp.path().join("plain"), env.tmp.path().join("zstd"));
    let at = |p: &Path| format!("oci:{}:latest", p.display());
    skopeo_copy("decompress", &["--dest-decompress", &at(&busybox), &at(&plain)]);
    skopeo_copy(
        "compress as zstd",
        &["--dest-compress", "--dest-compress-format=zstd", &at(&plain), &at(&zstd_layout)],
    );
    let zstd = push_variant(&zstd_layout, "zstd", &[]);
    env.ok(&["fetch", "-q", &gzip, &zstd, &v2s2]);
    let list = env.json(&["image", "list", "--format", "json"]);
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 3, "one record per manifest: {list}");
    assert!(rows.iter().all(|r| r["id"] == rows[0]["id"]), "one image ID: {list}");
    let manifest_of = |name: &str| -> serde_json::Value { env.json(&["image", "cat-manifest", name]) };
    let (mg, mz, mv) = (manifest_of(&gzip), manifest_of(&zstd), manifest_of(&v2s2));
    assert_eq!(mv["mediaType"], "application/vnd.docker.distribution.manifest.v2+json", "{mv}");
    assert!(mz["layers"][0]["mediaType"].as_str().unwrap().ends_with("+zstd"), "{mz}");
    assert!(mg["layers"][0]["mediaType"].as_str().unwrap().ends_with("+gzip"), "{mg}");
    assert_eq!(std::fs::read_dir(env.dir().join("store/layers")).unwrap().count(), 1, "one unpacked tree");
    // Each export carries its own name and manifest.
    for (name, m) in [(&gzip, &mg), (&zstd, &mz), (&v2s2, &mv)] {
        let out = env.tmp.path().join("export.tar");
        env.ok(&["image", "export", "--overwrite", name, out.to_str().unwrap()]);
        let dir = env.tmp.path().join("unpacked");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        assert!(Command::new("tar").arg("-xf").arg(&out).arg("-C").arg(&dir).status().unwrap().success());
        let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        let d = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
        let exported: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("blobs/sha256").join(d)).unwrap()).unwrap();
        assert_eq!(&exported, m, "{name} exported another's manifest");
        assert_eq!(index["manifests"][0]["annotations"]["io.containerd.image.name"], name.as_str());
    }
    // Removing one name removes its manifest only; the others still run.
    let out = env.ok(&["image", "rm", &zstd]);
    assert!(out.contains("removed:"), "{out}");
    assert_eq!(env.json(&["image", "list", "--format", "json"]).as_array().unwrap().len(), 2);
    assert_eq!(env.ok(&["run", "--net=none", &v2s2, "--", "echo", "ok"]).trim(), "ok");
    env.ok(&["image", "verify"]);
    // Removing by ID removes every manifest of the image.
    let id = rows[0]["id"].as_str().unwrap().to_string();
    env.ok(&["gc", "--grace-period=0s"]);
    env.ok(&["image", "rm", &id[7..19]]);
    assert!(env.json(&["image", "list", "--format", "json"]).as_array().unwrap().is_empty());
}

/// A store husk 0.1 wrote (format 1: one record per config, the last manifest fetched) is
/// upgraded when opened: each name gets its own manifest back.
#[test]
fn a_format_1_store_is_upgraded_in_place() {
    let env = Env::new();
    let busybox = images_dir().join("busybox");
    let gzip = push_variant(&busybox, "gzip", &[]);
    let v2s2 = push_variant(&busybox, "v2s2", &["--format=v2s2"]);
    env.ok(&["fetch", "-q", &gzip, &v2s2]);
    let want = env.json(&["image", "cat-manifest", &gzip]);
    // Make it what 0.1 left: the v2s2 record under the config's name, no version file.
    let store = env.dir().join("store");
    let list = env.json(&["image", "list", "--format", "json"]);
    let row = list.as_array().unwrap().iter().find(|r| r["names"][0] == v2s2.as_str()).unwrap().clone();
    let hex = |v: &serde_json::Value| v.as_str().unwrap().trim_start_matches("sha256:").to_string();
    for e in std::fs::read_dir(store.join("images")).unwrap() {
        let p = e.unwrap().path();
        if !p.ends_with(format!("{}.json", hex(&row["manifest"]))) {
            std::fs::remove_file(p).unwrap();
        }
    }
    std::fs::rename(
        store.join("images").join(format!("{}.json", hex(&row["manifest"]))),
        store.join("images").join(format!("{}.json", hex(&row["id"]))),
    )
    .unwrap();
    std::fs::remove_file(store.join("version")).unwrap();
    assert_eq!(env.json(&["image", "cat-manifest", &gzip]), want, "the gzip name's manifest came back");
    assert_eq!(std::fs::read_to_string(store.join("version")).unwrap(), "2\n");
    assert_eq!(env.json(&["image", "list", "--format", "json"]).as_array().unwrap().len(), 2);
    env.ok(&["image", "verify"]);
}
