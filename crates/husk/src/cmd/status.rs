//! `status`.

use husk_pod::{Phase, PodError};

use crate::cmd::show::{app_status_text, networks_text, pod_json, ports_text};
use crate::exit::{self, Failure};
use crate::flags::pod::*;
use crate::flags::{parse_duration, Format};
use crate::Ctx;

pub fn cmd_status(ctx: &Ctx, a: &StatusArgs) -> Result<i32, Failure> {
    let pods = ctx.pods()?;
    let uuid = a.pod.resolve(&pods)?;
    if let Some(w) = &a.wait {
        let timeout = if w == "forever" { None } else { Some(parse_duration(w).map_err(Failure::usage)?) };
        let (phase, dir) = pods.observe(&uuid)?;
        if matches!(phase, Phase::Running | Phase::Preparing | Phase::Embryo | Phase::Prepared) {
            // Block on the pod lock: it is released the moment the supervisor exits.
            let _l = husk_sys::Lock::lock_dir_timeout(&dir, husk_sys::LockKind::Shared, timeout, || {})
                .map_err(PodError::from)?;
            if phase == Phase::Prepared {
                return Err(Failure::new(
                    exit::POD,
                    anyhow::anyhow!("pod {uuid} is prepared, not running; start it with run-prepared"),
                ));
            }
        }
    }
    let i = pods.info(&uuid)?;
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&pod_json(&i)).unwrap()),
        Format::Table => {
            println!("state={}", i.phase.as_str());
            if let Some(m) = &i.manifest {
                println!("flavor={}", m.flavor.as_str());
                println!("networks={}", networks_text(&i));
                println!("ports={}", ports_text(&i));
            }
            if let (Some(s), Phase::Running) = (&i.stage1, i.phase) {
                println!("pid={}", s.init_pid);
                println!("supervisor-pid={}", s.supervisor_pid);
            }
            for (k, v) in [("created", i.created), ("started", i.started), ("exited", i.exited)] {
                if let Some(t) = v {
                    println!("{k}={}", t.to_rfc3339());
                }
            }
            if let Some(r) = i.manifest.as_ref().and_then(|m| m.private_users) {
                println!("private-users={}:{}", r.host_base, r.count);
            }
            for (name, s) in &i.apps {
                println!("app-{name}={}", app_status_text(s));
                if let Some(a) = i.manifest.as_ref().and_then(|m| m.apps.iter().find(|a| &a.name == name)) {
                    let caps = if a.security.capabilities.len() == husk_types::security::ALL_CAPS.len() {
                        "all (insecure)".to_string()
                    } else {
                        a.security
                            .capabilities
                            .iter()
                            .map(|c| c.trim_start_matches("CAP_").to_lowercase())
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    let seccomp = a
                        .security
                        .seccomp
                        .as_ref()
                        .map(|p| p.summary.clone())
                        .unwrap_or_else(|| "disabled (insecure)".into());
                    let paths = if a.security.masked_paths { "masked" } else { "unmasked (insecure)" };
                    println!(
                        "app-{name}-security=uid:{} gid:{} caps:{caps} seccomp:{seccomp} paths:{paths} no-new-privs:on",
                        a.user.uid, a.user.gid
                    );
                }
            }
            if let Some(c) = i.exit_status() {
                println!("exit-status={c}");
            }
        }
    }
    Ok(0)
}
