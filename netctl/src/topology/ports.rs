//! Ports as written (`80`, `"53/udp"`, a bare number for a host port): values that both the
//! namespaces and the load-balancing sections read, so they are parsed here, below both.

use super::{
    error::TopologyError,
    model::PortSpec,
    plan::{Port, Proto},
};

/// Parses `ports = [80, "53/udp"]`; every bad entry is reported with its index.
pub(super) fn parse_ports(
    field: &str,
    specs: &[PortSpec],
    errors: &mut Vec<TopologyError>,
) -> Vec<Port> {
    let mut out: Vec<Port> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let parsed = match spec {
            PortSpec::Number(n) => port_number(&f, *n, errors).map(|port| Port {
                port,
                proto: Proto::Tcp,
            }),
            PortSpec::Text(text) => parse_port_text(&f, text, errors),
        };
        if let Some(p) = parsed {
            if out.contains(&p) {
                errors.push(TopologyError::DuplicatePort {
                    field: f,
                    port: p.to_string(),
                });
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn parse_port_text(field: &str, text: &str, errors: &mut Vec<TopologyError>) -> Option<Port> {
    let (num, proto) = text.split_once('/').unwrap_or((text, "tcp"));
    let proto = match parse_proto(proto) {
        Some(p) => p,
        None => {
            errors.push(TopologyError::BadPortSpec {
                field: field.into(),
                value: text.into(),
            });
            return None;
        }
    };
    match num.trim().parse::<u32>() {
        Ok(n) => port_number(field, n, errors).map(|port| Port { port, proto }),
        Err(_) => {
            errors.push(TopologyError::BadPortSpec {
                field: field.into(),
                value: text.into(),
            });
            None
        }
    }
}

pub(super) fn parse_proto(text: &str) -> Option<Proto> {
    match text.trim() {
        "tcp" => Some(Proto::Tcp),
        "udp" => Some(Proto::Udp),
        _ => None,
    }
}

pub(super) fn port_number(field: &str, n: u32, errors: &mut Vec<TopologyError>) -> Option<u16> {
    match u16::try_from(n) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            errors.push(TopologyError::BadPort {
                field: field.into(),
                value: n,
            });
            None
        }
    }
}
