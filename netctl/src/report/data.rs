//! From flows to the three analyses: packets and bytes per service pair, per protocol, and
//! per sending service (top talkers). Pure, unit-tested.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{dataplane::ebpf::flows::Flow, topology::Plan};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub packets: u64,
    pub bytes: u64,
}

impl Counts {
    fn add(&mut self, f: &Flow) {
        self.packets += f.packets;
        self.bytes += f.bytes;
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Analysis {
    pub platform: String,
    pub instance: String,
    pub networks: usize,
    pub namespaces: usize,
    pub services: usize,
    /// Unix seconds of the earliest first packet and the latest last packet included.
    pub window: Option<(f64, f64)>,
    pub flows: usize,
    pub total: Counts,
    /// (source, destination) -> counts, sorted by packets, largest first.
    pub pairs: Vec<(String, String, Counts)>,
    /// Protocol (TCP, UDP, ICMP, OTHER) -> counts.
    pub protocols: Vec<(String, Counts)>,
    /// Sending service -> counts, largest first.
    pub talkers: Vec<(String, Counts)>,
}

/// The service a flow endpoint belongs to: a replica's service, `host`, or `world`.
pub fn party(plan: &Plan, addr: std::net::Ipv4Addr) -> String {
    if let Some(ep) = plan.endpoint_by_addr(addr) {
        return ep.service.clone();
    }
    if let Some(svc) = plan.services.iter().find(|s| s.vip == addr) {
        return svc.name.clone();
    }
    if plan.networks.iter().any(|n| n.gateway == addr) {
        return "host".into();
    }
    "world".into()
}

pub fn analyse(plan: &Plan, flows: &[Flow], since_unix: Option<f64>) -> Analysis {
    let included: Vec<&Flow> = flows
        .iter()
        .filter(|f| since_unix.is_none_or(|t| f.last_seen >= t))
        .collect();
    let mut pairs: BTreeMap<(String, String), Counts> = BTreeMap::new();
    const PROTOCOLS: [&str; 4] = ["TCP", "UDP", "ICMP", "OTHER"];
    let mut protocols: BTreeMap<String, Counts> = PROTOCOLS
        .iter()
        .map(|p| (p.to_string(), Counts::default()))
        .collect();
    let mut talkers: BTreeMap<String, Counts> = BTreeMap::new();
    let mut total = Counts::default();
    let mut window: Option<(f64, f64)> = None;
    for f in &included {
        let (src, dst) = (party(plan, f.src), party(plan, f.dst));
        pairs.entry((src.clone(), dst)).or_default().add(f);
        let proto = crate::cli_protocol_name(f.proto).to_uppercase();
        protocols.entry(proto).or_default().add(f);
        talkers.entry(src).or_default().add(f);
        total.add(f);
        window = Some(match window {
            None => (f.first_seen, f.last_seen),
            Some((a, b)) => (a.min(f.first_seen), b.max(f.last_seen)),
        });
    }
    let mut pairs: Vec<(String, String, Counts)> =
        pairs.into_iter().map(|((s, d), c)| (s, d, c)).collect();
    pairs.sort_by(|a, b| {
        b.2.packets
            .cmp(&a.2.packets)
            .then_with(|| (&a.0, &a.1).cmp(&(&b.0, &b.1)))
    });
    let mut talkers: Vec<(String, Counts)> = talkers.into_iter().collect();
    talkers.sort_by(|a, b| b.1.packets.cmp(&a.1.packets).then_with(|| a.0.cmp(&b.0)));
    let services = {
        let mut s: Vec<&str> = plan.endpoints.iter().map(|e| e.service.as_str()).collect();
        s.dedup();
        s.len()
    };
    Analysis {
        platform: plan.platform.clone(),
        instance: plan.instance(),
        networks: plan.networks.len(),
        namespaces: plan.endpoints.len(),
        services,
        window,
        flows: included.len(),
        total,
        pairs,
        protocols: PROTOCOLS
            .iter()
            .map(|p| (p.to_string(), protocols.remove(*p).unwrap_or_default()))
            .collect(),
        talkers,
    }
}

pub fn pairs_csv(a: &Analysis) -> String {
    let mut s = String::from("source,destination,packets,bytes\n");
    for (src, dst, c) in &a.pairs {
        s.push_str(&format!("{src},{dst},{},{}\n", c.packets, c.bytes));
    }
    s
}

pub fn protocols_csv(a: &Analysis) -> String {
    let mut s = String::from("protocol,packets,bytes\n");
    for (p, c) in &a.protocols {
        s.push_str(&format!("{p},{},{}\n", c.packets, c.bytes));
    }
    s
}

pub fn talkers_csv(a: &Analysis) -> String {
    let mut s = String::from("service,packets,bytes\n");
    for (t, c) in &a.talkers {
        s.push_str(&format!("{t},{},{}\n", c.packets, c.bytes));
    }
    s
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::topology::Source;

    fn flow(src: [u8; 4], dst: [u8; 4], proto: u8, packets: u64, last_seen: f64) -> Flow {
        Flow {
            src: Ipv4Addr::from(src),
            dst: Ipv4Addr::from(dst),
            src_port: 1000,
            dst_port: 80,
            proto,
            packets,
            bytes: packets * 100,
            first_seen: last_seen - 1.0,
            last_seen,
            tcp_flags: 0,
        }
    }

    #[test]
    fn flows_add_up_per_service_pair_protocol_and_sender() {
        let plan = Source {
            name: "t".into(),
            text: r#"
[networks.app]
subnet = "10.9.0.0/24"
[services.web]
network = "app"
address = "10.9.0.10"
replicas = 2
ports = [80]
[services.db]
network = "app"
address = "10.9.0.20"
"#
            .into(),
        }
        .plan(None)
        .expect("valid");
        let flows = vec![
            flow([10, 9, 0, 10], [10, 9, 0, 20], 6, 10, 100.0), // web-1 -> db
            flow([10, 9, 0, 11], [10, 9, 0, 20], 6, 5, 100.0),  // web-2 -> db
            flow([10, 9, 0, 20], [10, 9, 0, 10], 6, 7, 100.0),  // db -> web
            flow([10, 9, 0, 1], [10, 9, 0, 20], 17, 3, 100.0),  // host -> db
            flow([10, 9, 0, 10], [1, 1, 1, 1], 1, 2, 10.0),     // web -> world, old
        ];
        let a = analyse(&plan, &flows, None);
        assert_eq!(a.flows, 5);
        assert_eq!(a.total.packets, 27);
        assert_eq!(
            a.pairs[0],
            (
                "web".into(),
                "db".into(),
                Counts {
                    packets: 15,
                    bytes: 1500
                }
            )
        );
        assert!(a.pairs.contains(&(
            "host".into(),
            "db".into(),
            Counts {
                packets: 3,
                bytes: 300
            }
        )));
        assert!(a.pairs.contains(&(
            "web".into(),
            "world".into(),
            Counts {
                packets: 2,
                bytes: 200
            }
        )));
        let proto = |p: &str| {
            a.protocols
                .iter()
                .find(|(n, _)| n == p)
                .map(|(_, c)| c.packets)
        };
        assert_eq!(
            (proto("TCP"), proto("UDP"), proto("ICMP"), proto("OTHER")),
            (Some(22), Some(3), Some(2), Some(0))
        );
        assert_eq!(
            a.talkers[0],
            (
                "web".into(),
                Counts {
                    packets: 17,
                    bytes: 1700
                }
            )
        );
        assert_eq!(a.window, Some((9.0, 100.0)));

        let recent = analyse(&plan, &flows, Some(50.0));
        assert_eq!(
            recent.flows, 4,
            "--since leaves out flows idle since before the window"
        );

        let csv = pairs_csv(&a);
        assert!(
            csv.starts_with("source,destination,packets,bytes\nweb,db,15,1500\n"),
            "{csv}"
        );
        assert!(protocols_csv(&a).contains("UDP,3,300\n"));
        assert!(talkers_csv(&a).contains("db,7,700\n"));
    }
}
