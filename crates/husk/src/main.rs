//! The `husk` binary: parses the command line and dispatches to the libraries. Only this crate
//! prints; errors are reported once, here, with a `hint:` line where one helps.
#![forbid(unsafe_code)] // only husk-sys may use `unsafe` (STYLE.md)

mod cmd;
mod config;
mod exit;
mod flags;
mod output;
mod progress;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};

use exit::Failure;
use flags::{Cli, Command, Insecure};

/// What every command needs: paths, configuration, loosened options.
pub struct Ctx {
    pub dir: PathBuf,
    pub config_dir: PathBuf,
    pub config: config::Config,
    pub insecure: Vec<Insecure>,
    pub verbose: u8,
    /// `--policy`.
    pub policy: Option<PathBuf>,
    trust: std::cell::OnceCell<Option<husk_trust::Trust>>,
}

impl Ctx {
    pub fn insecure(&self, i: Insecure) -> bool {
        self.insecure.contains(&i)
    }

    pub fn store(&self) -> Result<husk_image::Store, Failure> {
        husk_image::Store::open(&self.dir).map_err(|e| {
            let f: Failure = e.into();
            f.hint(format!("the data dir {} must be writable (run as root, or pass --dir)", self.dir.display()))
        })
    }

    /// The trust policy images are fetched and run under, loaded once per command; None with
    /// `--insecure-options=image`, which is said on stderr.
    pub fn trust(&self) -> Result<Option<&husk_trust::Trust>, Failure> {
        if let Some(t) = self.trust.get() {
            return Ok(t.as_ref());
        }
        let t = if self.insecure(Insecure::Image) {
            eprintln!("warning: --insecure-options=image: image signatures are NOT verified by this command");
            None
        } else {
            Some(self.load_trust()?)
        };
        Ok(self.trust.get_or_init(|| t).as_ref())
    }

    fn load_trust(&self) -> Result<husk_trust::Trust, Failure> {
        let keys = husk_trust::TrustStore::new(&self.config_dir).load()?;
        let bad_policy = |why: String| {
            Failure::new(exit::USAGE, anyhow::anyhow!("invalid trust policy: {why}"))
                .hint("see containers-policy.json(5) and docs/trust.md")
        };
        let policy = match (&self.policy, &self.config.trust.policy) {
            // A policy named on the command line must exist.
            (Some(p), _) => Some(
                husk_trust::Policy::load(p)
                    .map_err(bad_policy)?
                    .ok_or_else(|| Failure::usage(format!("the policy file {} does not exist", p.display())))?,
            ),
            (None, Some(p)) => husk_trust::Policy::load(p).map_err(bad_policy)?,
            (None, None) => husk_trust::Policy::load(Path::new(DEFAULT_POLICY)).map_err(bad_policy)?,
        };
        let dir = self.config.trust.registries_d.as_deref().unwrap_or(Path::new(husk_trust::registries::DEFAULT_DIR));
        let registries = husk_trust::Registries::load(dir).map_err(|why| {
            Failure::new(exit::USAGE, anyhow::anyhow!("invalid registries.d configuration: {why}"))
                .hint("see containers-registries.d(5) and docs/trust.md")
        })?;
        Ok(husk_trust::Trust::new(keys, policy, self.config.trust.default, registries))
    }

    pub fn pods(&self) -> Result<husk_pod::Pods, Failure> {
        Ok(husk_pod::Pods::open(&self.dir)?)
    }

    /// The stage1 executable of a flavor: husk.toml's paths.stage1_dir, $HUSK_STAGE1_DIR, or
    /// the directory of the husk binary.
    pub fn stage1_path(&self, flavor: &husk_types::pod::Flavor) -> Result<PathBuf, Failure> {
        let name = husk_types::abi::stage1_executable(flavor);
        let dir = match (std::env::var_os(husk_types::abi::env::STAGE1_DIR), &self.config.paths.stage1_dir) {
            (Some(d), _) => PathBuf::from(d),
            (None, Some(d)) => d.clone(),
            (None, None) => std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from("/usr/lib/husk")),
        };
        let p = dir.join(&name);
        if !p.is_file() {
            return Err(Failure::new(exit::ENGINE, anyhow::anyhow!("stage1 {} not found", p.display()))
                .hint("install the stage1 binaries next to husk, or set paths.stage1_dir in husk.toml"));
        }
        Ok(p)
    }

    /// Whether `path`, the stage1 of `flavor`, is the `ns` stage1 installed beside this husk: its
    /// code is then also husk's own, which `run` may hand over to without exec'ing it. A stage1
    /// directory of another build (husk.toml's paths.stage1_dir, $HUSK_STAGE1_DIR elsewhere)
    /// is always exec'd.
    pub fn is_builtin_stage1(&self, flavor: &husk_types::pod::Flavor, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        if *flavor != husk_types::pod::Flavor::Ns {
            return false;
        }
        let Some(beside) = std::env::current_exe().ok().and_then(|e| Some(e.parent()?.join(path.file_name()?))) else {
            return false;
        };
        match (std::fs::metadata(path), std::fs::metadata(beside)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
}

/// The containers policy honoured when present (containers-policy.json(5)).
const DEFAULT_POLICY: &str = "/etc/containers/policy.json";

/// Splits argv at `---` (the app separator of `run` and `prepare`). Arguments are bytes
/// (`OsString`): app arguments and environment values reach the app unchanged, and every other
/// argument that is not UTF-8 gets a usage error from the parser, never a panic.
fn split_apps(args: Vec<OsString>) -> (Vec<OsString>, Vec<Vec<OsString>>) {
    let mut segs = args.split(|a| a == "---").map(|s| s.to_vec());
    let first = segs.next().unwrap_or_default();
    (first, segs.collect())
}

fn main() {
    husk_sys::proc::default_sigpipe();
    let (first, rest) = split_apps(std::env::args_os().collect());
    let cli = match Cli::try_parse_from(&first) {
        Ok(c) => c,
        Err(e) if e.kind() == clap::error::ErrorKind::UnknownArgument => {
            eprint!("{}", unknown_flag_message(&e));
            std::process::exit(exit::USAGE);
        }
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    init_logging(cli.verbose);
    let code = match run(cli, rest) {
        Ok(c) => c,
        Err(f) => {
            let f = with_group_hint(f);
            exit::report(&f);
            f.code
        }
    };
    std::process::exit(code);
}

/// A permission error met by a user other than root: say which group grants what, never just
/// EACCES.
fn with_group_hint(mut f: Failure) -> Failure {
    if rustix::process::geteuid().is_root() {
        return f;
    }
    let denied = f.error.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| matches!(io.kind(), std::io::ErrorKind::PermissionDenied) || io.raw_os_error() == Some(1))
    });
    if !denied {
        return f;
    }
    let group = cmd::setup::GROUP;
    let member = cmd::setup::group_gid(group).is_some_and(|g| {
        rustix::process::getgid().as_raw() == g
            || rustix::process::getgroups().is_ok_and(|gs| gs.iter().any(|x| x.as_raw() == g))
    });
    f.hint = Some(if member {
        format!(
            "you are in the `{group}` group, but the data dir is not set up for it: root runs `husk setup` \
             (`husk setup --check` shows what is wrong)"
        )
    } else {
        format!(
            "without root, this needs membership in the `{group}` group (fetch, image list, list, status, logs, \
             trust list): root runs `husk setup` and `usermod -aG {group} $USER` (then log in again); or run as root"
        )
    });
    f
}

/// The commands only root may run (the privilege table in the README), by name.
fn needs_root(c: &Command) -> Option<&'static str> {
    use flags::{ImageCommand as I, TrustCommand as T};
    Some(match c {
        Command::Run(_) => "run",
        Command::Prepare(_) => "prepare",
        Command::RunPrepared(_) => "run-prepared",
        Command::Enter(_) => "enter",
        Command::Attach(_) => "attach",
        Command::Stop(_) => "stop",
        Command::Rm(_) => "rm",
        Command::Gc(_) => "gc",
        Command::Image(I::Rm { .. }) => "image rm",
        Command::Image(I::Gc) => "image gc",
        Command::Trust(T::Add { .. }) => "trust add",
        Command::Trust(T::Rm { .. }) => "trust rm",
        Command::Setup { check: false } => "setup",
        _ => return None,
    })
}

fn root_why(c: &Command) -> &'static str {
    match c {
        Command::Trust(_) => "the trust store decides what every pod may run",
        Command::Image(_) | Command::Gc(_) | Command::Rm(_) => "removing images or pods can take what others use",
        Command::Setup { .. } => "it creates a group and sets owners",
        _ => "pods need namespaces, mounts and cgroups",
    }
}

/// clap's message for an unknown flag, without its tip to pass the flag after `--` (which would
/// hand a podman-style flag to the app), and with a hint that fits.
fn unknown_flag_message(e: &clap::Error) -> String {
    let flag = match e.get(clap::error::ContextKind::InvalidArg) {
        Some(clap::error::ContextValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    let rendered = e.render().to_string();
    let mut out: String =
        rendered.lines().filter(|l| !l.trim_start().starts_with("tip:")).map(|l| format!("{l}\n")).collect();
    while out.contains("\n\n\n") {
        out = out.replace("\n\n\n", "\n\n");
    }
    out.push_str(&format!("hint: {}\n", flag_hint(flag.split('=').next().unwrap_or(""))));
    out
}

/// What to suggest for an unknown flag, podman's first.
fn flag_hint(flag: &str) -> String {
    match flag {
        "--privileged" => "husk has no --privileged: keep what the app needs with the app flags --caps-retain and \
                           --seccomp, or run a trusted host tool with --stage1=fly"
            .into(),
        "-v" => "a host directory is a pod volume: --volume NAME,kind=host,source=/host/dir with the app flag \
                 --mount volume=NAME,target=/dir"
            .into(),
        "--network" => "husk's flag is --net".into(),
        "--env" => "husk's flag is --environment (or -e)".into(),
        "--user" | "--name" | "--workdir" | "-w" => {
            "app flags (--user, --name, --working-dir …) come after the image".into()
        }
        _ => "see `husk help`, or `husk COMMAND --help`; arguments for the app go after `--`".into(),
    }
}

/// One subscriber, on stderr. `HUSK_LOG` takes `target=level` directives (`Targets`: a level,
/// or `husk_image=debug,info`); otherwise a plain level filter, which (unlike parsing
/// directives) costs nothing on the start path of every command.
///
/// Not `EnvFilter`: its span and field filters (regular expressions) linked `regex-syntax`'s
/// Unicode tables into husk, 190 KiB of the 430 KiB of pointers relocated at every start.
fn init_logging(verbose: u8) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).without_time().with_target(false);
    match std::env::var("HUSK_LOG").map(|d| d.parse::<tracing_subscriber::filter::Targets>()) {
        Ok(Ok(targets)) => builder.with_max_level(tracing::Level::TRACE).finish().with(targets).init(),
        Ok(Err(e)) => {
            builder.with_max_level(tracing::Level::INFO).init();
            tracing::warn!("HUSK_LOG: {e}; it takes target=level directives, such as husk_image=debug,info");
        }
        Err(_) => {
            let level = match verbose {
                0 => tracing::Level::INFO,
                1 => tracing::Level::DEBUG,
                _ => tracing::Level::TRACE,
            };
            builder.with_max_level(level).init()
        }
    }
}

fn run(cli: Cli, more_apps: Vec<Vec<OsString>>) -> Result<i32, Failure> {
    if !more_apps.is_empty() && !matches!(cli.command, Command::Run(_) | Command::Prepare(_)) {
        return Err(Failure::usage("`---` separates apps only in `husk run` and `husk prepare`"));
    }
    let segments: Vec<flags::pod::AppSegment> = more_apps
        .iter()
        .map(|s| {
            flags::pod::AppSegment::try_parse_from(s)
                .map_err(|e| Failure::usage(format!("in an app after `---`: {}", e.render().to_string().trim())))
        })
        .collect::<Result<_, _>>()?;
    let config = config::Config::load(&cli.config_dir).map_err(|e| Failure::new(exit::USAGE, e))?;
    // Paths derived from the data dir end up in pod manifests that stage1 reads from the pod's
    // own directory: they must be absolute.
    let dir = std::path::absolute(&cli.dir)
        .map_err(|e| Failure::usage(format!("invalid --dir {}: {e}", cli.dir.display())))?;
    if let Some(what) = needs_root(&cli.command) {
        if !rustix::process::geteuid().is_root() {
            return Err(Failure::new(exit::USAGE, anyhow::anyhow!("`husk {what}` needs root")).hint(format!(
                "{}; members of the `{}` group may fetch, list images, and read pods' status and logs without it",
                root_why(&cli.command),
                cmd::setup::GROUP
            )));
        }
    }
    let ctx = Ctx {
        dir,
        config_dir: cli.config_dir,
        config,
        insecure: cli.insecure_options,
        verbose: cli.verbose,
        policy: cli.policy,
        trust: std::cell::OnceCell::new(),
    };
    match &cli.command {
        Command::Fetch(a) => cmd::fetch::cmd_fetch(&ctx, a),
        Command::Image(c) => cmd::image::cmd_image(&ctx, c),
        Command::Trust(c) => cmd::trust::cmd_trust(&ctx, c),
        Command::Setup { check } => cmd::setup::cmd_setup(&ctx, *check),
        Command::Run(a) => cmd::run::cmd_run(&ctx, a, &segments, false),
        Command::Prepare(a) => cmd::run::cmd_run(&ctx, a, &segments, true),
        Command::RunPrepared(a) => cmd::run::cmd_run_prepared(&ctx, a),
        Command::List { format, full, no_legend, quiet } => {
            cmd::list::cmd_list(&ctx, *format, *full, *no_legend, *quiet)
        }
        Command::Status(a) => cmd::status::cmd_status(&ctx, a),
        Command::CatManifest(r) => cmd::cat_manifest::cmd_cat_manifest(&ctx, r),
        Command::Logs(a) => cmd::logs::cmd_logs(&ctx, a),
        Command::Enter(a) => cmd::enter::cmd_enter(&ctx, a),
        Command::Attach(a) => cmd::attach::cmd_attach(&ctx, a),
        Command::Stop(a) => cmd::stop::cmd_stop(&ctx, a),
        Command::Rm(a) => cmd::rm::cmd_rm(&ctx, a),
        Command::Gc(a) => cmd::gc::cmd_gc(&ctx, a),
        Command::Version => {
            println!("husk {}", env!("CARGO_PKG_VERSION"));
            println!("stage1 ABI {}", husk_types::pod::ABI_VERSION);
            println!("store format {}", husk_image::store::STORE_FORMAT_VERSION);
            Ok(0)
        }
        Command::Completion { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "husk", &mut std::io::stdout());
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap told podman users to pass their flag after `--`, which hands it to the app.
    #[test]
    fn unknown_flags_get_a_hint_that_fits_not_clap_tip() {
        let e = Cli::try_parse_from(["husk", "run", "--privileged", "img"]).unwrap_err();
        let m = unknown_flag_message(&e);
        assert!(!m.contains("tip:") && !m.contains("'-- --privileged'"), "{m}");
        assert!(m.contains("hint: husk has no --privileged"), "{m}");
        assert!(Cli::try_parse_from(["husk", "run", "-it", "img"]).is_ok(), "podman's -it is husk's too");
        let e = Cli::try_parse_from(["husk", "list", "--bogus"]).unwrap_err();
        assert!(unknown_flag_message(&e).contains("husk COMMAND --help"));
    }

    #[test]
    fn apps_split_at_triple_dash_even_after_double_dash() {
        let args: Vec<OsString> =
            ["husk", "run", "a", "--", "x", "---", "b", "--name", "n", "---", "c"].iter().map(OsString::from).collect();
        let (first, rest) = split_apps(args);
        assert_eq!(first, vec!["husk", "run", "a", "--", "x"]);
        assert_eq!(rest, vec![vec![OsString::from("b"), "--name".into(), "n".into()], vec![OsString::from("c")]]);
    }
}
