//! Every flag of the CLI, defined once with its help text and parsed into validated types; the
//! pod commands' flags are in [`pod`]. Parse tests beside them. Nothing here runs a command.

pub mod pod;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "husk", version, about = "A daemonless, pod-native container engine", propagate_version = true)]
pub struct Cli {
    /// Data directory: the image store and the pods.
    #[arg(long, global = true, env = "HUSK_DIR", default_value = "/var/lib/husk")]
    pub dir: PathBuf,
    /// Configuration directory holding husk.toml.
    #[arg(long, global = true, env = "HUSK_CONFIG_DIR", default_value = "/etc/husk")]
    pub config_dir: PathBuf,
    /// Loosen security for this command: http, tls (registries); image (skip signature
    /// verification); capabilities, seccomp, paths, all-run (pods). Comma-separated.
    #[arg(long, global = true, value_delimiter = ',', value_parser = parse_insecure)]
    pub insecure_options: Vec<Insecure>,
    /// A containers-policy.json to apply instead of husk.toml's [trust] policy
    /// (default /etc/containers/policy.json, when present).
    #[arg(long, global = true, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// More logging (debug); repeat for trace.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insecure {
    Http,
    Tls,
    Image,
    Capabilities,
    Seccomp,
    Paths,
    AllRun,
}

fn parse_insecure(s: &str) -> Result<Insecure, String> {
    Ok(match s {
        "http" => Insecure::Http,
        "tls" => Insecure::Tls,
        "image" => Insecure::Image,
        "capabilities" => Insecure::Capabilities,
        "seccomp" => Insecure::Seccomp,
        "paths" => Insecure::Paths,
        "all-run" => Insecure::AllRun,
        "ondisk" => return Err(format!("{s:?} is not supported: husk always verifies the store's blobs")),
        other => {
            return Err(format!(
                "unknown insecure option {other:?} (http, tls, image, capabilities, seccomp, paths, all-run)"
            ))
        }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ManifestFormat {
    Raw,
    Json,
}

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum TrustCommand {
    /// Trust a public key for images under a name prefix (GPG keys: armored or binary; PEM
    /// public keys for cosign signatures). Shows the fingerprint and asks, or takes --yes.
    Add {
        /// HOST[:PORT][/NAMESPACE[/REPO]]: the images the key vouches for.
        #[arg(long)]
        prefix: String,
        /// The public key file.
        key: PathBuf,
        /// Trust it without asking (required when not on a terminal).
        #[arg(long, short)]
        yes: bool,
    },
    /// List trusted keys: prefix, key type, fingerprint.
    List {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Stop trusting a key (by fingerprint, at least 8 digits).
    Rm {
        fingerprint: String,
        /// Only under this prefix.
        #[arg(long)]
        prefix: Option<String>,
        /// Remove every key the fingerprint matches.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PullPolicyArg {
    New,
    Update,
    Never,
}

impl From<PullPolicyArg> for husk_image::PullPolicy {
    fn from(p: PullPolicyArg) -> Self {
        match p {
            PullPolicyArg::New => husk_image::PullPolicy::New,
            PullPolicyArg::Update => husk_image::PullPolicy::Update,
            PullPolicyArg::Never => husk_image::PullPolicy::Never,
        }
    }
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Images: docker://HOST/NAME[:TAG|@DIGEST] (scheme optional), oci:DIR[:TAG],
    /// oci-archive:FILE[:TAG], docker-archive:FILE.
    #[arg(required = true)]
    pub images: Vec<String>,
    /// When to contact the registry: new (only if not in the store), update, never.
    #[arg(long, value_enum, default_value = "update")]
    pub pull_policy: PullPolicyArg,
    /// No progress display.
    #[arg(short, long)]
    pub quiet: bool,
    /// Store a local image (oci:, oci-archive:, docker-archive:) under this name.
    #[arg(long)]
    pub name: Option<String>,
    /// Print full image IDs.
    #[arg(long)]
    pub full: bool,
}

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum ImageCommand {
    /// List images in the store.
    List {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// Show full IDs.
        #[arg(long)]
        full: bool,
    },
    /// Remove images by name or unique ID prefix.
    Rm {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove blobs and layer trees no image uses, and leftovers of interrupted fetches.
    Gc,
    /// Print an image's manifest.
    CatManifest {
        image: String,
        /// Print the image config instead.
        #[arg(long)]
        config: bool,
        /// raw: the stored bytes' JSON; json: the manifest with its digest, names and what the
        /// trust policy verified.
        #[arg(long, value_enum, default_value = "raw")]
        format: ManifestFormat,
    },
    /// Import a local image (same sources as `fetch`).
    Import {
        source: String,
        /// The name to store it under.
        #[arg(long)]
        name: Option<String>,
    },
    /// Export an image as an OCI archive that podman, skopeo and husk can load.
    Export {
        image: String,
        /// Output file.
        output: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        overwrite: bool,
    },
    /// Write an image's root filesystem, manifest and config into DIR/rootfs, DIR/manifest.json, DIR/config.json.
    Extract {
        image: String,
        #[arg(value_name = "DIR")]
        dest: PathBuf,
        /// Write only the root filesystem, directly into DIR.
        #[arg(long)]
        rootfs_only: bool,
    },
    /// Write an image's flattened root filesystem into DIR.
    Render {
        image: String,
        #[arg(value_name = "DIR")]
        dest: PathBuf,
    },
    /// Re-hash every blob and unpacked layer and report what is damaged.
    Verify {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Fetch images into the store and print their IDs.
    Fetch(FetchArgs),
    /// Manage images in the store.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Manage the keys images are verified with.
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Create the husk group and the data and config dirs with their owners and modes (idempotent).
    Setup {
        /// Only report what is wrong; change nothing.
        #[arg(long)]
        check: bool,
    },
    /// Run a pod: IMAGE [app flags] [-- ARGS] [--- IMAGE2 [app flags] [-- ARGS]] …
    Run(pod::RunArgs),
    /// Prepare a pod without running it; prints its UUID.
    Prepare(pod::RunArgs),
    /// Run a prepared pod.
    RunPrepared(pod::RunPreparedArgs),
    /// List pods.
    List {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// Show full UUIDs.
        #[arg(long)]
        full: bool,
        /// Print the rows without the header line.
        #[arg(long)]
        no_legend: bool,
        /// Print only the full UUIDs, one per line (for scripts).
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show a pod's state and its apps' exit statuses.
    Status(pod::StatusArgs),
    /// Print a pod's manifest.
    CatManifest(pod::PodRef),
    /// Print the logs of a detached pod's apps.
    Logs(pod::LogsArgs),
    /// Run a command inside a running pod's app, with the app's privileges.
    #[command(visible_alias = "exec")]
    Enter(pod::EnterArgs),
    /// Attach to the terminal of a pod started with `run -d -t` (detach: ctrl-p ctrl-q).
    Attach(pod::AttachArgs),
    /// Stop running pods: SIGTERM, then SIGKILL after the timeout.
    Stop(pod::StopArgs),
    /// Remove exited or prepared pods.
    Rm(pod::RmArgs),
    /// Collect exited and abandoned pods and leftovers.
    Gc(pod::GcArgs),
    /// Print the version and the stage1 ABI version.
    Version,
    /// Print a shell completion script.
    Completion { shell: clap_complete::Shell },
}

/// Parses durations like `30s`, `10m`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e} (examples: 30s, 10m, 1h)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("husk").chain(args.iter().copied()))
    }

    #[test]
    fn fetch_flags() {
        let c = parse(&["fetch", "--pull-policy=never", "-q", "busybox", "oci:/x"]).unwrap();
        let Command::Fetch(f) = c.command else { panic!() };
        assert_eq!(f.images, vec!["busybox", "oci:/x"]);
        assert_eq!(f.pull_policy, PullPolicyArg::Never);
        assert!(f.quiet);
        assert!(parse(&["fetch"]).is_err());
    }

    #[test]
    fn insecure_options_are_validated() {
        let c = parse(&["--insecure-options=http,tls", "image", "gc"]).unwrap();
        assert_eq!(c.insecure_options, vec![Insecure::Http, Insecure::Tls]);
        let e = parse(&["--insecure-options=bogus", "image", "gc"]).unwrap_err().to_string();
        assert!(e.contains("bogus"));
        assert!(parse(&["--insecure-options=ondisk", "image", "gc"]).is_err());
        let c = parse(&["--insecure-options=image,http", "--policy", "/p.json", "fetch", "x"]).unwrap();
        assert_eq!(c.insecure_options, vec![Insecure::Image, Insecure::Http]);
        assert_eq!(c.policy, Some(PathBuf::from("/p.json")));
    }

    #[test]
    fn global_dir_anywhere() {
        let c = parse(&["image", "list", "--dir", "/tmp/x", "--format", "json"]).unwrap();
        assert_eq!(c.dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn render_destination_is_not_the_data_dir() {
        let c = parse(&["--dir", "/data", "image", "render", "img", "/out"]).unwrap();
        assert_eq!(c.dir, PathBuf::from("/data"));
        let Command::Image(ImageCommand::Render { dest, .. }) = c.command else { panic!() };
        assert_eq!(dest, PathBuf::from("/out"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("soon").unwrap_err().contains("soon"));
    }

    #[test]
    fn help_mentions_every_command() {
        use clap::CommandFactory;
        let help = Cli::command().render_help().to_string();
        for c in [
            "fetch",
            "image",
            "run",
            "prepare",
            "run-prepared",
            "list",
            "status",
            "enter",
            "stop",
            "rm",
            "gc",
            "logs",
            "cat-manifest",
            "version",
            "completion",
        ] {
            assert!(help.contains(c), "{c} missing from --help");
        }
    }
}
