//! `fetch`, and the fetching every pod command does.

use husk_image::{fetch, FetchOptions, RegistryOptions, Store};
use husk_types::ImageSource;

use crate::exit::{self, Failure};
use crate::flags::{FetchArgs, Insecure};
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

pub fn options_for<'a>(
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
    FetchOptions { policy, registry: reg, progress, name, parallel: 4, runtime: None, trust: None }
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
    let progress = crate::progress::for_fetch(quiet);
    let mut opts = options_for(ctx, &source, progress.as_ref(), policy, name);
    opts.trust = ctx.trust()?;
    let f = fetch(store, &source, &opts)?;
    // Said even with -q: it is about trust, not progress.
    if let Some(n) = &f.notice {
        eprintln!("{n}");
    }
    Ok(f)
}

/// Refuses a stored image that today's trust policy would not let in (it may have tightened
/// since the image was fetched; see [`husk_image::admit`]).
pub fn admit(ctx: &Ctx, store: &Store, f: &husk_image::Fetched) -> Result<(), Failure> {
    if let Some(t) = ctx.trust()? {
        husk_image::admit(store, t, &f.name, f.trust.as_ref())?;
    }
    Ok(())
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
