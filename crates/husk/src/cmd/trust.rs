//! `trust add|list|rm`: husk's trust store (keys trusted per name prefix).

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use anyhow::Context as _;
use husk_trust::store::normalize_prefix;
use husk_trust::TrustStore;

use crate::exit::Failure;
use crate::flags::{Format, TrustCommand};
use crate::output::Table;
use crate::Ctx;

pub fn cmd_trust(ctx: &Ctx, cmd: &TrustCommand) -> Result<i32, Failure> {
    let store = TrustStore::new(&ctx.config_dir);
    match cmd {
        TrustCommand::Add { prefix, key, yes } => {
            let prefix = normalize_prefix(prefix)?;
            let bytes = std::fs::read(key).with_context(|| format!("cannot read the key file {}", key.display()))?;
            let keys = TrustStore::inspect(key, &bytes)?;
            for k in &keys {
                let who = if k.user_ids.is_empty() { String::new() } else { format!(" ({})", k.user_ids.join(", ")) };
                eprintln!("prefix {prefix}: {} key {}{who}", k.key_type, k.fingerprint);
            }
            if !yes {
                confirm(&prefix)?;
            }
            for k in store.add(&prefix, key, &bytes)? {
                eprintln!("trusted for {prefix}: {}", k.path.display());
                println!("{}", k.key.fingerprint);
            }
            Ok(0)
        }
        TrustCommand::List { format } => {
            let loaded = store.load()?;
            let keys = loaded.keys;
            match format {
                Format::Json => {
                    let v: Vec<_> = keys
                        .iter()
                        .map(|k| {
                            serde_json::json!({
                                "prefix": k.prefix, "type": k.key.key_type, "fingerprint": k.key.fingerprint,
                                "user_ids": k.key.user_ids, "path": k.path,
                            })
                        })
                        .chain(loaded.unusable.iter().map(|u| {
                            serde_json::json!({
                                "prefix": u.prefix, "fingerprint": husk_trust::store::stored_fingerprint(&u.path),
                                "unusable": u.why, "path": u.path,
                            })
                        }))
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&v).expect("json"));
                }
                Format::Table => {
                    let mut t = Table::new(&["PREFIX", "TYPE", "FINGERPRINT", "USER IDS"]);
                    for k in &keys {
                        t.row(vec![
                            k.prefix.clone(),
                            k.key.key_type.to_string(),
                            k.key.fingerprint.clone(),
                            k.key.user_ids.join(", "),
                        ]);
                    }
                    for u in &loaded.unusable {
                        t.row(vec![
                            u.prefix.clone(),
                            "-".into(),
                            husk_trust::store::stored_fingerprint(&u.path),
                            format!("UNUSABLE: {}", u.why),
                        ]);
                    }
                    t.print();
                }
            }
            Ok(0)
        }
        TrustCommand::Rm { fingerprint, prefix, all } => {
            let prefix = prefix.as_deref().map(normalize_prefix).transpose()?;
            for k in store.remove(fingerprint, prefix.as_deref(), *all)? {
                eprintln!("no longer trusted for {}: {}", k.prefix, k.what);
            }
            Ok(0)
        }
    }
}

/// rkt asked before trusting a key; so do we, and a script must say `--yes`.
fn confirm(prefix: &str) -> Result<(), Failure> {
    if !std::io::stdin().is_terminal() {
        return Err(Failure::usage(format!(
            "not trusting a key for {prefix} without confirmation: check the fingerprint above, then pass --yes"
        )));
    }
    eprint!("Trust this key for images under {prefix}? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("cannot read the answer")?;
    if matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(Failure::usage(format!("not trusted: the key was not added for {prefix}")))
    }
}
