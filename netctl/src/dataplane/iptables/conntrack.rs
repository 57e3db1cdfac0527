//! In iptables mode the kernel's own conntrack keeps each connection on its backend; this
//! reads it (`/proc/net/nf_conntrack`) as the same [`Connection`]s `netctl conntrack` shows
//! for the eBPF dataplane, keeping those of one platform.

use std::net::Ipv4Addr;

use anyhow::Context;
use ipnet::Ipv4Net;

use crate::{dataplane::ebpf::conntrack::Connection, topology::Plan};

pub const PROC_FILE: &str = "/proc/net/nf_conntrack";

/// Connections of `plan`'s platform: from, to or through its subnets or VIPs.
pub fn connections(plan: &Plan) -> anyhow::Result<Vec<Connection>> {
    let text = std::fs::read_to_string(PROC_FILE)
        .with_context(|| format!("reading {PROC_FILE} (kernel conntrack)"))?;
    let mut nets: Vec<Ipv4Net> = plan.networks.iter().map(|n| n.subnet).collect();
    nets.push(plan.service_cidr);
    let ours = |a: Ipv4Addr| nets.iter().any(|n| n.contains(&a));
    Ok(text
        .lines()
        .filter_map(|l| parse_line(l, plan))
        .filter(|c| ours(c.client) || ours(c.frontend) || ours(c.backend))
        .collect())
}

/// One line: `ipv4 2 tcp 6 431999 ESTABLISHED src=A dst=B sport=1 dport=2 src=C dst=D
/// sport=3 dport=4 [ASSURED] mark=0 zone=0 use=2`. The first tuple is the original
/// direction (client -> what it addressed), the second the reply (who answers -> client).
pub fn parse_line(line: &str, plan: &Plan) -> Option<Connection> {
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.first() != Some(&"ipv4") {
        return None;
    }
    let proto: u8 = words.get(3)?.parse().ok()?;
    let expires: f64 = words.get(4)?.parse().ok()?;
    let state = match words.get(5) {
        Some(s) if proto == netctl_common::flow::IPPROTO_TCP && !s.contains('=') => tcp_state(s),
        _ => crate::dataplane::ebpf::conntrack::stateless(proto),
    };
    let fields: Vec<(&str, &str)> = words.iter().filter_map(|w| w.split_once('=')).collect();
    let get = |name: &str, nth: usize| -> Option<&str> {
        fields
            .iter()
            .filter(|(k, _)| *k == name)
            .nth(nth)
            .map(|(_, v)| *v)
    };
    let client: Ipv4Addr = get("src", 0)?.parse().ok()?;
    let frontend: Ipv4Addr = get("dst", 0)?.parse().ok()?;
    let client_port: u16 = get("sport", 0).and_then(|p| p.parse().ok()).unwrap_or(0);
    let frontend_port: u16 = get("dport", 0).and_then(|p| p.parse().ok()).unwrap_or(0);
    let backend: Ipv4Addr = get("src", 1)?.parse().ok()?;
    let backend_port: u16 = get("sport", 1).and_then(|p| p.parse().ok()).unwrap_or(0);
    let service_id = plan
        .services
        .iter()
        .find(|s| s.vip == frontend)
        .map_or(0, |s| s.id);
    Some(Connection {
        proto,
        client,
        client_port,
        frontend,
        frontend_port,
        backend,
        backend_port,
        state,
        nat: (backend, backend_port) != (frontend, frontend_port),
        via_uplink: false,
        service_id,
        backend_id: 0,
        age_s: 0.0,
        idle_s: 0.0,
        expires_in_s: expires,
    })
}

fn tcp_state(s: &str) -> &'static str {
    match s {
        "SYN_SENT" | "SYN_RECV" => "syn-sent",
        "ESTABLISHED" => "established",
        _ => "closing",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Source;

    #[test]
    fn a_dnated_connection_shows_client_vip_and_backend() {
        let plan = Source {
            name: "t".into(),
            text: "[networks.a]\nsubnet = \"10.9.0.0/24\"\n[services.web]\nnetwork = \"a\"\nports = [80]\n\
                   vip = \"10.96.0.7\"\n"
                .into(),
        }
        .plan(None)
        .expect("valid");
        let line = "ipv4     2 tcp      6 431999 ESTABLISHED src=10.9.0.3 dst=10.96.0.7 sport=40000 dport=80 \
                    src=10.9.0.2 dst=10.9.0.3 sport=80 dport=40000 [ASSURED] mark=0 zone=0 use=2";
        let c = parse_line(line, &plan).expect("parses");
        assert_eq!(c.client, Ipv4Addr::new(10, 9, 0, 3));
        assert_eq!(c.frontend, Ipv4Addr::new(10, 96, 0, 7));
        assert_eq!(c.backend, Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!((c.state, c.nat, c.service_id), ("established", true, 1));
        let udp = "ipv4     2 udp      17 29 src=10.9.0.3 dst=10.9.0.2 sport=5000 dport=53 \
                   src=10.9.0.2 dst=10.9.0.3 sport=53 dport=5000 mark=0 zone=0 use=2";
        let u = parse_line(udp, &plan).expect("parses");
        assert_eq!((u.state, u.nat, u.proto), ("udp", false, 17));
        let icmp = "ipv4     2 icmp     1 29 src=10.9.0.3 dst=10.9.0.2 type=8 code=0 id=7 \
                    src=10.9.0.2 dst=10.9.0.3 type=0 code=0 id=7 mark=0 zone=0 use=2";
        let i = parse_line(icmp, &plan).expect("parses");
        assert_eq!((i.state, i.proto), ("icmp", 1), "ICMP is not UDP");
    }
}
