//! `--help` of every command, snapshot-tested: a flag's help text changes only on purpose.
//! After an intended change: `HUSK_UPDATE_SNAPSHOTS=1 cargo test -p husk --test help`, then
//! review the diff of tests/snapshots/help/.

use std::path::PathBuf;
use std::process::Command;

const COMMANDS: &[&[&str]] = &[
    &[],
    &["fetch"],
    &["image"],
    &["image", "list"],
    &["image", "rm"],
    &["image", "gc"],
    &["image", "cat-manifest"],
    &["image", "import"],
    &["image", "export"],
    &["image", "extract"],
    &["image", "render"],
    &["image", "verify"],
    &["trust"],
    &["trust", "add"],
    &["trust", "list"],
    &["trust", "rm"],
    &["setup"],
    &["run"],
    &["prepare"],
    &["run-prepared"],
    &["list"],
    &["status"],
    &["cat-manifest"],
    &["logs"],
    &["enter"],
    &["attach"],
    &["stop"],
    &["rm"],
    &["gc"],
    &["version"],
    &["completion"],
];

fn snapshot_path(cmd: &[&str]) -> PathBuf {
    let name = if cmd.is_empty() { "husk".to_string() } else { cmd.join("-") };
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/help").join(format!("{name}.txt"))
}

#[test]
fn help_of_every_command_matches_its_snapshot() {
    let update = std::env::var_os("HUSK_UPDATE_SNAPSHOTS").is_some();
    let mut stale = Vec::new();
    for cmd in COMMANDS {
        let out = Command::new(env!("CARGO_BIN_EXE_husk"))
            .args(*cmd)
            .arg("--help")
            .env("COLUMNS", "100")
            .env_remove("HUSK_DIR")
            .env_remove("HUSK_CONFIG_DIR")
            .output()
            .unwrap();
        assert!(out.status.success(), "husk {cmd:?} --help failed: {}", String::from_utf8_lossy(&out.stderr));
        let help = String::from_utf8(out.stdout).unwrap();
        let path = snapshot_path(cmd);
        if update {
            std::fs::write(&path, &help).unwrap();
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(want) if want == help => {}
            Ok(want) => {
                stale.push(format!("husk {} --help changed:\n--- snapshot\n{want}\n--- now\n{help}", cmd.join(" ")))
            }
            Err(_) => stale.push(format!("no snapshot {} (run with HUSK_UPDATE_SNAPSHOTS=1)", path.display())),
        }
    }
    assert!(stale.is_empty(), "{}", stale.join("\n"));
}

/// The subcommands `husk --help` lists are exactly those snapshot-tested here.
#[test]
fn every_command_has_a_help_snapshot() {
    let out = Command::new(env!("CARGO_BIN_EXE_husk")).arg("--help").env("COLUMNS", "100").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let listed: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    for c in listed {
        assert!(COMMANDS.iter().any(|x| x.first() == Some(&c)), "husk {c} has no help snapshot");
    }
}
