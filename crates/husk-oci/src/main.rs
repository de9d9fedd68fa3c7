//! husk-oci: an OCI runtime with runc's command line, so that podman, containerd (and through
//! it Kubernetes and Docker) and CRI-O can run containers on husk's isolation code. A thin front
//! end: the planner, mounts, seccomp, capabilities and cgroup code live in husk-stage1.
#![forbid(unsafe_code)] // only husk-sys may use `unsafe` (STYLE.md)

mod container;
mod exec;
mod log;
mod state;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// What a command can fail with. Every message names the thing and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// runc's wording: callers (containerd) match on it.
    #[error("container does not exist")]
    NotFound,
    /// The caller asked for something wrong: a bad id, config field, state for the command.
    #[error("{0}")]
    User(String),
    /// The system refused: a failed mount, write, fork.
    #[error("{0}")]
    Sys(String),
}

#[derive(Parser, Debug)]
#[command(
    name = "husk-oci",
    disable_version_flag = true,
    about = "An OCI runtime (runc's command line) on husk's isolation"
)]
pub struct Cli {
    /// Where container state lives.
    #[arg(long, global = false, default_value = "/run/husk-oci")]
    root: PathBuf,
    /// Also write messages to this file.
    #[arg(long)]
    log: Option<PathBuf>,
    /// text, or json (one {"level","msg","time"} object per line).
    #[arg(long, default_value = "text")]
    log_format: String,
    /// Log debug messages too.
    #[arg(long)]
    debug: bool,
    /// cgroupsPath is slice:prefix:name, for systemd's cgroup layout.
    #[arg(long)]
    systemd_cgroup: bool,
    /// Ignore cgroup errors for a container that asks for no limits (default: when not root).
    #[arg(long, default_value = "auto")]
    rootless: String,
    /// runc's `--criu`, accepted for compatibility (checkpointing is not supported).
    #[arg(long, hide = true)]
    criu: Option<String>,
    /// Print the version.
    #[arg(short = 'v', long)]
    version: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create a container from a bundle; it waits for `start`.
    Create(container::CreateArgs),
    /// Start a created container (run its process).
    Start { id: String },
    /// Create and start a container, and wait for it (unless --detach).
    Run(container::RunArgs),
    /// Print a container's state as JSON.
    State { id: String },
    /// Send a signal to a container's init (or, with --all, to all its processes).
    Kill {
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "TERM")]
        signal: String,
    },
    /// Delete a container (stopped or created; --force kills it first).
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Run a process in a running container.
    Exec(exec::ExecArgs),
    /// List a container's processes.
    Ps {
        #[arg(short, long, default_value = "table")]
        format: String,
        id: String,
        /// Arguments for ps(1) (table format).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Freeze all processes of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Change a container's resource limits.
    Update(container::UpdateArgs),
    /// Print what this runtime supports (runtime-spec features.md).
    Features,
    /// Write a default config.json.
    Spec {
        #[arg(short, long)]
        bundle: Option<PathBuf>,
        #[arg(long)]
        rootless: bool,
    },
    /// List containers.
    #[command(alias = "ls")]
    List {
        #[arg(short, long, default_value = "table")]
        format: String,
        #[arg(short, long)]
        quiet: bool,
    },
}

/// Global settings every command gets.
pub struct Ctx {
    pub root: PathBuf,
    pub log: log::Log,
    pub systemd_cgroup: bool,
    /// Cgroup errors are warnings for containers without limits.
    pub rootless: bool,
}

const COMMIT: &str = match option_env!("HUSK_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

fn main() {
    husk_sys::proc::default_sigpipe();
    let cli = Cli::parse();
    if cli.version {
        println!("husk-oci version {}", env!("CARGO_PKG_VERSION"));
        println!("commit: {COMMIT}");
        println!("spec: {}", husk_stage1::oci::plan::OCI_VERSION_MAX);
        return;
    }
    let log = match log::Log::new(cli.log.as_deref(), &cli.log_format, cli.debug) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("husk-oci: {e}");
            std::process::exit(1);
        }
    };
    let euid = rustix::process::geteuid().as_raw();
    let rootless = match cli.rootless.as_str() {
        "true" => true,
        "false" => false,
        "auto" => euid != 0,
        other => {
            log.error(&format!("--rootless={other:?}: use true, false or auto"));
            std::process::exit(1);
        }
    };
    let Some(cmd) = cli.cmd else {
        log.error("no command given; see husk-oci --help");
        std::process::exit(1);
    };
    let ctx = Ctx { root: cli.root, log, systemd_cgroup: cli.systemd_cgroup, rootless };
    let r = match cmd {
        Cmd::Create(a) => container::create(&ctx, &a).map(|_| 0),
        Cmd::Start { id } => container::start(&ctx, &id).map(|_| 0),
        Cmd::Run(a) => container::run(&ctx, &a),
        Cmd::State { id } => container::state(&ctx, &id).map(|_| 0),
        Cmd::Kill { all, id, signal } => container::kill(&ctx, &id, &signal, all).map(|_| 0),
        Cmd::Delete { force, id } => container::delete(&ctx, &id, force).map(|_| 0),
        Cmd::Exec(a) => exec::exec(&ctx, &a),
        Cmd::Ps { format, id, ps_args } => container::ps(&ctx, &id, &format, &ps_args).map(|_| 0),
        Cmd::Pause { id } => container::pause(&ctx, &id, true).map(|_| 0),
        Cmd::Resume { id } => container::pause(&ctx, &id, false).map(|_| 0),
        Cmd::Update(a) => container::update(&ctx, &a).map(|_| 0),
        Cmd::Features => container::features().map(|_| 0),
        Cmd::Spec { bundle, rootless } => container::spec(bundle.as_deref(), rootless).map(|_| 0),
        Cmd::List { format, quiet } => container::list(&ctx, &format, quiet).map(|_| 0),
    };
    match r {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            ctx.log.error(&e.to_string());
            std::process::exit(1);
        }
    }
}
