//! What `list` and `status` show of a pod: its apps' statuses and its networks, as JSON and text.

use husk_pod::{Phase, PodInfo};
use husk_types::abi::PodDir;

pub fn app_status_text(s: &Option<husk_types::pod::AppStatus>) -> String {
    use husk_types::pod::Outcome;
    let Some(s) = s else { return "-".into() };
    match (&s.outcome, s.oom_killed) {
        (Outcome::NotStarted { reason, .. }, _) => format!("failed to start ({reason})"),
        (Outcome::Killed(9), true) => "killed by the OOM killer (memory limit)".into(),
        (Outcome::Exited(c), true) => format!("exited {c} (the OOM killer ended a process of the app)"),
        (Outcome::Exited(c), false) => format!("exited {c}"),
        (Outcome::Killed(sig), _) => format!("killed by signal {sig}"),
    }
}

/// Each network with its interface and addresses (from stage1's record of the CNI results).
pub fn networks_json(i: &PodInfo) -> serde_json::Value {
    // state.json while networks are set up; released.json once they were torn down.
    let pd = PodDir::new(&i.dir);
    let states: Vec<husk_types::net::NetState> = [pd.net_state(), pd.net_released()]
        .iter()
        .find_map(|f| std::fs::read(f).ok())
        .and_then(|d| serde_json::from_slice(&d).ok())
        .unwrap_or_default();
    let names = i.manifest.as_ref().map(|m| m.net.names()).unwrap_or_default();
    serde_json::Value::Array(
        names
            .iter()
            .map(|n| {
                let st = states.iter().find(|s| &s.name == n);
                serde_json::json!({"name": n, "interface": st.map(|s| s.ifname.clone()), "addresses": st.map(|s| s.addresses()).unwrap_or_default()})
            })
            .collect(),
    )
}

/// `default:eth0=172.16.28.3/24,lan:eth1=…` for tables.
pub fn networks_text(i: &PodInfo) -> String {
    let v = networks_json(i);
    let parts: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let addrs: Vec<&str> =
                n["addresses"].as_array().map(|a| a.iter().filter_map(|x| x.as_str()).collect()).unwrap_or_default();
            let name = n["name"].as_str().unwrap_or("");
            match (n["interface"].as_str(), addrs.is_empty()) {
                (Some(ifn), false) => format!("{name}:{ifn}={}", addrs.join("+")),
                _ => name.to_string(),
            }
        })
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

/// The pod's forwarded ports.
pub fn ports(i: &PodInfo) -> Vec<husk_types::net::PortMapping> {
    match i.manifest.as_ref().map(|m| &m.net) {
        Some(husk_types::pod::NetMode::Cni { ports, .. }) => ports.clone(),
        _ => vec![],
    }
}

/// `127.0.0.1:8080->80/tcp,9000->9000/udp` for tables, `-` without ports.
pub fn ports_text(i: &PodInfo) -> String {
    let p: Vec<String> = ports(i)
        .iter()
        .map(|p| {
            let host = p.host_ip.as_ref().map(|ip| format!("{ip}:")).unwrap_or_default();
            format!("{host}{}->{}/{}", p.host_port, p.pod_port, p.protocol.as_str())
        })
        .collect();
    if p.is_empty() {
        "-".into()
    } else {
        p.join(",")
    }
}

pub fn pod_json(i: &PodInfo) -> serde_json::Value {
    serde_json::json!({
        "uuid": i.uuid,
        "state": i.phase.as_str(),
        "apps": i.apps.iter().map(|(n, s)| {
            let app = i.manifest.as_ref().and_then(|m| m.apps.iter().find(|a| &a.name == n));
            serde_json::json!({
                "name": n, "image": app.map(|a| &a.image.name), "image_id": app.map(|a| a.image.id.to_string()),
                "status": s, "pid": i.stage1.as_ref().and_then(|st| st.app_pids.get(n)),
                "security": app.map(|a| serde_json::json!({
                    "capabilities": a.security.capabilities,
                    "seccomp": a.security.seccomp.as_ref().map(|p| p.summary.clone()).unwrap_or_else(|| "disabled".into()),
                    "masked_paths": a.security.masked_paths,
                    "no_new_privs": true,
                    "user": a.user,
                })),
                "resources": app.map(|a| &a.resources),
            })
        }).collect::<Vec<_>>(),
        "networks": networks_json(i),
        "ports": ports(i).iter().map(|p| serde_json::json!({
            "host_ip": p.host_ip, "host_port": p.host_port, "pod_port": p.pod_port, "protocol": p.protocol.as_str(),
        })).collect::<Vec<_>>(),
        "flavor": i.manifest.as_ref().map(|m| m.flavor.as_str()),
        "private_users": i.manifest.as_ref().and_then(|m| m.private_users),
        "created": i.created, "started": i.started, "exited": i.exited,
        "exit_status": i.exit_status(),
        "pid": i.stage1.as_ref().filter(|_| i.phase == Phase::Running).map(|s| s.init_pid),
        "supervisor_pid": i.stage1.as_ref().filter(|_| i.phase == Phase::Running).map(|s| s.supervisor_pid),
    })
}
