//! A pod's /etc/resolv.conf and /etc/hosts: what the pod manifest asks for (one enum each, so
//! that no two flags can contradict each other) and the pure functions that write them.

use serde::{Deserialize, Serialize};

/// A pod's /etc/resolv.conf.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "mode", rename_all = "kebab-case", from = "DnsWire")]
pub enum Dns {
    /// Written by stage1 (the default): `servers` when given (`--dns IP`), else the networks'
    /// name servers, else the host's; `search`, `options`, `domain` when given, else those of
    /// the same source.
    Written {
        #[serde(default)]
        servers: Vec<String>,
        #[serde(default)]
        search: Vec<String>,
        #[serde(default)]
        options: Vec<String>,
        #[serde(default)]
        domain: Option<String>,
    },
    /// The host's file, read-only (`--dns=host`).
    Host,
    /// The image's own file, untouched (`--dns=none`).
    Image,
}

impl Default for Dns {
    fn default() -> Self {
        Dns::Written { servers: vec![], search: vec![], options: vec![], domain: None }
    }
}

/// What a CNI result says about DNS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetDns {
    pub servers: Vec<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
    pub domain: Option<String>,
}

/// How `dns` was written by stage0 of ABI 1 (`{servers, search, options, domain, host, none}`),
/// read still: `none` won over `host`, which won over the rest.
#[derive(Deserialize)]
#[serde(untagged)]
enum DnsWire {
    Tagged(DnsTagged),
    Legacy {
        #[serde(default)]
        servers: Vec<String>,
        #[serde(default)]
        search: Vec<String>,
        #[serde(default)]
        options: Vec<String>,
        #[serde(default)]
        domain: Option<String>,
        #[serde(default)]
        host: bool,
        #[serde(default)]
        none: bool,
    },
}

#[derive(Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
enum DnsTagged {
    Written {
        #[serde(default)]
        servers: Vec<String>,
        #[serde(default)]
        search: Vec<String>,
        #[serde(default)]
        options: Vec<String>,
        #[serde(default)]
        domain: Option<String>,
    },
    Host,
    Image,
}

impl From<DnsWire> for Dns {
    fn from(w: DnsWire) -> Self {
        match w {
            DnsWire::Tagged(DnsTagged::Written { servers, search, options, domain }) => {
                Dns::Written { servers, search, options, domain }
            }
            DnsWire::Tagged(DnsTagged::Host) => Dns::Host,
            DnsWire::Tagged(DnsTagged::Image) => Dns::Image,
            DnsWire::Legacy { none: true, .. } => Dns::Image,
            DnsWire::Legacy { host: true, .. } => Dns::Host,
            DnsWire::Legacy { servers, search, options, domain, .. } => {
                Dns::Written { servers, search, options, domain }
            }
        }
    }
}

/// The content of the pod's /etc/resolv.conf, or None to leave the image's (and for
/// [`Dns::Host`], which stage1 binds instead).
pub fn resolv_conf(dns: &Dns, networks: Option<&NetDns>, host_file: &str) -> Option<String> {
    let Dns::Written { servers, search, options, domain } = dns else { return None };
    let host = parse_resolv(host_file);
    let source = match networks {
        Some(n) if servers.is_empty() && !n.servers.is_empty() => n.clone(),
        _ => host,
    };
    let pick = |mine: &Vec<String>, theirs: &Vec<String>| if mine.is_empty() { theirs.clone() } else { mine.clone() };
    let servers = pick(servers, &source.servers);
    let search = pick(search, &source.search);
    let options = pick(options, &source.options);
    let domain = domain.clone().or(source.domain);
    let mut r = String::new();
    for s in &servers {
        r.push_str(&format!("nameserver {s}\n"));
    }
    if !search.is_empty() {
        r.push_str(&format!("search {}\n", search.join(" ")));
    }
    if let Some(d) = domain {
        r.push_str(&format!("domain {d}\n"));
    }
    if !options.is_empty() {
        r.push_str(&format!("options {}\n", options.join(" ")));
    }
    Some(r)
}

/// The name servers, search list, options and domain of a resolv.conf.
pub fn parse_resolv(text: &str) -> NetDns {
    let mut d = NetDns::default();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("nameserver") => d.servers.extend(f.next().map(String::from)),
            Some("search") => d.search = f.map(String::from).collect(),
            Some("options") => d.options.extend(f.map(String::from)),
            Some("domain") => d.domain = f.next().map(String::from),
            _ => {}
        }
    }
    d
}

/// A pod's /etc/hosts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum Hosts {
    /// Written by stage1: localhost, the pod's hostname, and these `(IP, NAME)` entries.
    Written {
        #[serde(default)]
        entries: Vec<(String, String)>,
    },
    /// The host's file, read-only (`--hosts-entry host`).
    Host,
}

impl Default for Hosts {
    fn default() -> Self {
        Hosts::Written { entries: vec![] }
    }
}

/// The content of the pod's /etc/hosts, or None for [`Hosts::Host`] (bound instead).
pub fn hosts_file(hosts: &Hosts, hostname: &str) -> Option<String> {
    let Hosts::Written { entries } = hosts else { return None };
    let mut h = format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n");
    for (ip, name) in entries {
        h.push_str(&format!("{ip}\t{name}\n"));
    }
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "# host\nnameserver 192.0.2.53\nsearch host.example\noptions ndots:2\n";

    fn written(servers: &[&str], search: &[&str]) -> Dns {
        Dns::Written {
            servers: servers.iter().map(|s| s.to_string()).collect(),
            search: search.iter().map(|s| s.to_string()).collect(),
            options: vec![],
            domain: None,
        }
    }

    #[test]
    fn resolv_conf_takes_given_servers_then_the_networks_then_the_host() {
        let net =
            NetDns { servers: vec!["172.16.29.53".into()], search: vec!["lab.test".into()], ..Default::default() };
        assert_eq!(
            resolv_conf(&written(&["10.1.2.3"], &[]), Some(&net), HOST).unwrap(),
            "nameserver 10.1.2.3\nsearch host.example\noptions ndots:2\n"
        );
        assert_eq!(
            resolv_conf(&written(&[], &[]), Some(&net), HOST).unwrap(),
            "nameserver 172.16.29.53\nsearch lab.test\n"
        );
        assert_eq!(
            resolv_conf(&written(&[], &[]), None, HOST).unwrap(),
            "nameserver 192.0.2.53\nsearch host.example\noptions ndots:2\n"
        );
        // --dns-search without --dns is not ignored any more.
        assert_eq!(
            resolv_conf(&written(&[], &["corp.example"]), None, HOST).unwrap(),
            "nameserver 192.0.2.53\nsearch corp.example\noptions ndots:2\n"
        );
        assert_eq!(resolv_conf(&Dns::Host, None, HOST), None);
        assert_eq!(resolv_conf(&Dns::Image, Some(&net), HOST), None);
    }

    /// ABI 1 wrote `{host, none}` booleans; `--dns host --dns none` silently picked one.
    #[test]
    fn legacy_dns_reads_as_one_mode() {
        let d: Dns = serde_json::from_str(r#"{"servers":[],"host":true,"none":true}"#).unwrap();
        assert_eq!(d, Dns::Image);
        let d: Dns = serde_json::from_str(r#"{"servers":[],"host":true}"#).unwrap();
        assert_eq!(d, Dns::Host);
        let d: Dns = serde_json::from_str(r#"{"servers":["1.1.1.1"],"search":["a"]}"#).unwrap();
        assert_eq!(d, written(&["1.1.1.1"], &["a"]));
        for d in [Dns::Host, Dns::Image, written(&["1.1.1.1"], &["x"])] {
            let back: Dns = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
            assert_eq!(back, d);
        }
        assert_eq!(serde_json::to_value(Dns::Host).unwrap(), serde_json::json!({"mode": "host"}));
    }

    #[test]
    fn hosts_file_has_localhost_the_hostname_and_the_entries() {
        let h = hosts_file(&Hosts::Written { entries: vec![("192.0.2.7".into(), "db".into())] }, "pod").unwrap();
        assert_eq!(
            h,
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tpod\n192.0.2.7\tdb\n"
        );
        assert_eq!(hosts_file(&Hosts::Host, "pod"), None);
    }
}
