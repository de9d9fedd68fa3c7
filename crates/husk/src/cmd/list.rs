//! `list`.

use crate::cmd::show::{networks_text, pod_json, ports_text};
use crate::exit::Failure;
use crate::flags::Format;
use crate::output::{human_time, Table};
use crate::Ctx;

pub fn cmd_list(ctx: &Ctx, format: Format, full: bool, no_legend: bool, quiet: bool) -> Result<i32, Failure> {
    let pods = ctx.pods()?.list()?;
    match format {
        Format::Table if quiet => {
            for p in &pods {
                println!("{}", p.uuid);
            }
        }
        Format::Json => {
            println!("{}", serde_json::to_string_pretty(&pods.iter().map(pod_json).collect::<Vec<_>>()).unwrap())
        }
        Format::Table => {
            let mut t =
                Table::new(&["UUID", "APPS", "IMAGES", "STATE", "NETWORKS", "PORTS", "CREATED", "STARTED", "EXITED"]);
            for p in &pods {
                let m = p.manifest.as_ref();
                let uuid = if full { p.uuid.clone() } else { p.uuid[..8].to_string() };
                let apps = m
                    .map(|m| m.apps.iter().map(|a| a.name.clone()).collect::<Vec<_>>().join(","))
                    .unwrap_or_else(|| "-".into());
                let images = m
                    .map(|m| m.apps.iter().map(|a| a.image.name.clone()).collect::<Vec<_>>().join(","))
                    .unwrap_or_else(|| "-".into());
                let nets = networks_text(p);
                let state = match p.exit_status() {
                    Some(c) => format!("{} ({c})", p.phase.as_str()),
                    None => p.phase.as_str().to_string(),
                };
                let t_or = |x: Option<chrono::DateTime<chrono::Utc>>| x.map(human_time).unwrap_or_else(|| "-".into());
                t.row(vec![
                    uuid,
                    apps,
                    images,
                    state,
                    nets,
                    ports_text(p),
                    t_or(p.created),
                    t_or(p.started),
                    t_or(p.exited),
                ]);
            }
            // --no-legend: the rows without the header (rkt's meaning).
            print!("{}", if no_legend { t.render_rows() } else { t.render() });
        }
    }
    Ok(0)
}
