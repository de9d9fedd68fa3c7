//! `husk fetch` and `husk image …`.

use std::io::Write;

use anyhow::Context;
use husk_image::{fetch, FetchOptions, RegistryOptions, Store};
use husk_types::ImageSource;

use crate::cli::{FetchArgs, Format, ImageCommand, Insecure};
use crate::exit::{self, Failure};
use crate::output::{human_size, human_time, Table};
use crate::Ctx;

/// Registry settings from `--insecure-options` and husk.toml. Certificate checking is one
/// setting per client in oci-client, so a registry's `tls` entry applies when that registry is
/// the one being fetched from (see `options_for`).
pub fn registry_options(ctx: &Ctx) -> RegistryOptions {
    RegistryOptions {
        all_http: ctx.insecure(Insecure::Http),
        skip_tls_verify: ctx.insecure(Insecure::Tls),
        http: ctx
            .config
            .registries
            .iter()
            .filter(|(_, r)| r.insecure.iter().any(|i| i == "http"))
            .map(|(n, _)| n.clone())
            .collect(),
    }
}

fn options_for<'a>(
    ctx: &Ctx,
    source: &ImageSource,
    progress: &'a dyn husk_image::Progress,
    policy: husk_image::PullPolicy,
    name: Option<String>,
) -> FetchOptions<'a> {
    let mut reg = registry_options(ctx);
    if let ImageSource::Registry(r) = source {
        if ctx.config.registries.get(&r.registry).is_some_and(|c| c.insecure.iter().any(|i| i == "tls")) {
            reg.skip_tls_verify = true;
        }
    }
    FetchOptions { policy, registry: reg, progress, name, parallel: 4 }
}

/// Fetches one image (used by `fetch` and by `run`/`prepare`).
pub fn fetch_one(
    ctx: &Ctx,
    store: &Store,
    what: &str,
    policy: husk_image::PullPolicy,
    quiet: bool,
    name: Option<String>,
) -> Result<husk_image::Fetched, Failure> {
    let source = ImageSource::parse(what).map_err(|e| {
        let code = if matches!(e, husk_types::ReferenceError::TooLong { .. }) { exit::USAGE } else { exit::IMAGE };
        Failure::new(code, e).hint(
            "image references look like docker://HOST/NAME:TAG, oci:DIR[:TAG], oci-archive:FILE or docker-archive:FILE",
        )
    })?;
    let bars = crate::progress::Bars::new(quiet);
    let progress: &dyn husk_image::Progress = match &bars {
        Some(b) => b,
        None => &husk_image::NoProgress,
    };
    let opts = options_for(ctx, &source, progress, policy, name);
    Ok(fetch(store, &source, &opts)?)
}

pub fn cmd_fetch(ctx: &Ctx, args: &FetchArgs) -> Result<i32, Failure> {
    let store = ctx.store()?;
    if args.name.is_some() && args.images.len() > 1 {
        return Err(Failure::usage("--name applies to one image; fetch them one at a time"));
    }
    for img in &args.images {
        let f = fetch_one(ctx, &store, img, args.pull_policy.into(), args.quiet, args.name.clone())?;
        if !args.quiet {
            eprintln!("{} {}", if f.cached { "up to date:" } else { "fetched:" }, f.name);
        }
        println!("{}", if args.full { f.record.id.to_string() } else { f.record.id.to_string()[..19].to_string() });
    }
    Ok(0)
}

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
                                "id": i.id, "names": refs.iter().filter(|r| r.id == i.id).map(|r| &r.name).collect::<Vec<_>>(),
                                "manifest": i.manifest, "size": i.size(), "layers": i.layers.len(), "fetched": i.fetched, "source": i.source,
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&v).unwrap());
                }
                Format::Table => {
                    let mut t = Table::new(&["ID", "NAME", "SIZE", "LAYERS", "FETCHED"]);
                    for i in &images {
                        let id = if *full { i.id.to_string() } else { i.id.to_string()[..19].to_string() };
                        let names: Vec<&str> = refs.iter().filter(|r| r.id == i.id).map(|r| r.name.as_str()).collect();
                        let shown = if names.is_empty() { "<none>".to_string() } else { names.join(",") };
                        t.row(vec![id, shown, human_size(i.size()), i.layers.len().to_string(), human_time(i.fetched)]);
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
                    Ok(husk_image::maintenance::Removed::Image { id, .. }) => println!("removed: {id}"),
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
        ImageCommand::CatManifest { image, config } => {
            let rec = store.resolve(image)?;
            let data = store.read_blob(if *config { &rec.config } else { &rec.manifest })?;
            let v: serde_json::Value = serde_json::from_slice(&data).context("stored manifest is not JSON")?;
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
            let rec = store.resolve(image)?;
            let names = store.names_of(&rec.id)?;
            husk_image::layout::export_oci_archive(&store, &rec, names.first().map(String::as_str), output)?;
            eprintln!(
                "exported {} to {}",
                names.first().cloned().unwrap_or_else(|| rec.id.to_string()),
                output.display()
            );
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
