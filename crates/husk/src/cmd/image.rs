//! `image list|rm|gc|cat-manifest|import|export|extract|render|verify`.

use std::io::Write;

use anyhow::Context;

use super::fetch::fetch_one;
use crate::exit::{self, Failure};
use crate::flags::{Format, ImageCommand, ManifestFormat};
use crate::output::{human_size, human_time, Table};
use crate::Ctx;

pub fn cmd_image(ctx: &Ctx, cmd: &ImageCommand) -> Result<i32, Failure> {
    let store = ctx.store()?;
    match cmd {
        ImageCommand::List { format, full } => {
            let images = store.images()?;
            let refs = store.refs()?;
            match format {
                Format::Json => {
                    let v: Vec<_> = images
                        .iter()
                        .map(|i| {
                            serde_json::json!({
                                "id": i.id, "names": refs.iter().filter(|r| r.manifest == i.manifest).map(|r| &r.name).collect::<Vec<_>>(),
                                "manifest": i.manifest, "size": i.size(), "layers": i.layers.len(), "fetched": i.fetched, "source": i.source,
                                "trust": refs.iter().filter(|r| r.manifest == i.manifest).map(|r| (r.name.clone(), r.trust.clone())).collect::<std::collections::BTreeMap<_, _>>(),
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&v).unwrap());
                }
                Format::Table => {
                    let mut t = Table::new(&["ID", "NAME", "SIZE", "LAYERS", "FETCHED", "SIGNED BY"]);
                    for i in &images {
                        let id = if *full { i.id.to_string() } else { i.id.to_string()[..19].to_string() };
                        let names: Vec<&str> =
                            refs.iter().filter(|r| r.manifest == i.manifest).map(|r| r.name.as_str()).collect();
                        let shown = if names.is_empty() { "<none>".to_string() } else { names.join(",") };
                        t.row(vec![
                            id,
                            shown,
                            human_size(i.size()),
                            i.layers.len().to_string(),
                            human_time(i.fetched),
                            signed_by(refs.iter().filter(|r| r.manifest == i.manifest).map(|r| r.trust.as_ref())),
                        ]);
                    }
                    t.print();
                }
            }
            Ok(0)
        }
        ImageCommand::Rm { images } => {
            let _excl = store.lock_store(husk_sys::LockKind::Exclusive)?;
            let pods = ctx.pods()?;
            let using = |id: &husk_types::Digest| pods.pods_using_image(id);
            let mut failed = None;
            for what in images {
                match husk_image::maintenance::remove(&store, what, &using) {
                    Ok(husk_image::maintenance::Removed::Untagged(n)) => println!("untagged: {n}"),
                    Ok(husk_image::maintenance::Removed::Image { id, manifests, .. }) => {
                        for m in manifests {
                            println!("removed: {id} (manifest {m})");
                        }
                    }
                    Err(e) => {
                        let f: Failure = e.into();
                        exit::report(&f);
                        failed = Some(f.code);
                    }
                }
            }
            Ok(failed.unwrap_or(0))
        }
        ImageCommand::Gc => {
            let r = husk_image::maintenance::gc(&store)?;
            eprintln!(
                "removed {} blobs, {} layer trees, {} leftovers ({} freed)",
                r.blobs,
                r.layers,
                r.leftovers,
                human_size(r.bytes)
            );
            Ok(0)
        }
        ImageCommand::CatManifest { image, config, format } => {
            let rec = store.resolve(image)?;
            let digest = if *config { &rec.config } else { &rec.manifest };
            let data = store.read_blob(digest)?;
            let v: serde_json::Value = serde_json::from_slice(&data).context("stored manifest is not JSON")?;
            let v = match format {
                ManifestFormat::Raw => v,
                ManifestFormat::Json => {
                    let (key, media_type) =
                        if *config { ("config", "config") } else { ("manifest", rec.manifest_media_type.as_str()) };
                    let mut out = serde_json::json!({
                        "digest": digest, "id": rec.id, "names": store.names_of(&rec.manifest)?,
                        "media_type": media_type,
                        "trust": store.refs()?.into_iter().filter(|r| r.manifest == rec.manifest).map(|r| (r.name, r.trust)).collect::<std::collections::BTreeMap<_, _>>(),
                    });
                    out[key] = v;
                    out
                }
            };
            println!("{}", serde_json::to_string_pretty(&v).unwrap());
            Ok(0)
        }
        ImageCommand::Import { source, name } => {
            let f = fetch_one(ctx, &store, source, husk_image::PullPolicy::Update, false, name.clone())?;
            eprintln!("imported: {}", f.name);
            println!("{}", f.record.id);
            Ok(0)
        }
        ImageCommand::Export { image, output, overwrite } => {
            if output.exists() && !overwrite {
                return Err(Failure::usage(format!("{} exists; pass --overwrite to replace it", output.display())));
            }
            // The archive carries the name the user asked for, or the manifest's first name.
            let found = store.lookup(image)?;
            let rec = found.record;
            let name = match found.via {
                husk_image::Via::Name(n) => Some(n),
                _ => store.names_of(&rec.manifest)?.into_iter().next(),
            };
            husk_image::layout::export_oci_archive(&store, &rec, name.as_deref(), output)?;
            eprintln!("exported {} to {}", name.unwrap_or_else(|| rec.manifest.to_string()), output.display());
            Ok(0)
        }
        ImageCommand::Render { image, dest } => {
            let rec = store.resolve(image)?;
            husk_image::maintenance::render(&store, &rec, dest).map_err(|e| Failure::new(exit::ENGINE, e))?;
            Ok(0)
        }
        ImageCommand::Extract { image, dest: dir, rootfs_only } => {
            let rec = store.resolve(image)?;
            let rootfs = if *rootfs_only { dir.clone() } else { dir.join("rootfs") };
            husk_image::maintenance::render(&store, &rec, &rootfs).map_err(|e| Failure::new(exit::ENGINE, e))?;
            if !rootfs_only {
                for (name, d) in [("manifest.json", &rec.manifest), ("config.json", &rec.config)] {
                    husk_sys::atomic_write(&dir.join(name), &store.read_blob(d)?, 0o644)
                        .with_context(|| format!("cannot write {}", dir.join(name).display()))?;
                }
            }
            Ok(0)
        }
        ImageCommand::Verify { format } => {
            let (checked, damage) = husk_image::maintenance::verify(&store)?;
            match format {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({"checked": checked, "damaged": damage})).unwrap()
                ),
                Format::Table => {
                    let mut out = std::io::stdout().lock();
                    for d in &damage {
                        let _ = writeln!(out, "DAMAGED {}: {} ({})", d.what, d.problem, d.path.display());
                    }
                    eprintln!("checked {checked} blobs and layer trees: {} damaged", damage.len());
                    if !store.unpacks() {
                        eprintln!("layer trees were not checked: only root can read every file of a tree");
                    }
                }
            }
            if damage.is_empty() {
                Ok(0)
            } else {
                Err(Failure::new(exit::DAMAGED, anyhow::anyhow!("the store has {} damaged item(s)", damage.len()))
                    .hint("remove the affected images (husk image rm) and fetch them again"))
            }
        }
    }
}

/// The SIGNED BY column, over a manifest's names: the keys (last 16 digits) that verified any
/// of them, else `unsigned` when a policy accepted them without a signature, else `-` (nothing
/// was checked).
fn signed_by<'a>(names: impl Iterator<Item = Option<&'a husk_trust::TrustRecord>>) -> String {
    let mut keys: Vec<String> = Vec::new();
    let mut checked = false;
    for t in names.flatten() {
        checked = true;
        for s in &t.signatures {
            let fp = s.fingerprint.trim_start_matches("SHA256:");
            let k = format!("{} {}", s.kind, &fp[fp.len().saturating_sub(16)..]);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    match (keys.is_empty(), checked) {
        (false, _) => keys.join(","),
        (true, true) => "unsigned".into(),
        (true, false) => "-".into(),
    }
}
