//! Validation: every check runs before any change to the host, and every problem in the
//! file is reported at once, each naming the field it is about.

use super::{
    endpoints::Claims,
    error::{MAX_IFNAME_LEN, TopologyError},
    model::Topology,
    plan::{Dataplane, DataplaneMode, Plan},
    policy, services, validate_run,
};

/// Checks `topology` and resolves it into a [`Plan`], or returns every error found.
pub fn validate(topology: &Topology) -> Result<Plan, Vec<TopologyError>> {
    let mut v = Claims::default();
    let prefix = &topology.platform.prefix;
    v.check_prefix(prefix);

    let networks = v.networks(topology);
    if topology.services.is_empty() {
        v.errors.push(TopologyError::Empty);
    }
    let endpoints = v.endpoints(topology, &networks, validate_run::resolve);
    validate_run::check_wiring(topology, &mut v.errors);
    let lb = services::plan(
        topology,
        &networks,
        &endpoints,
        validate_run::health,
        &mut v.errors,
    );
    let mode = DataplaneMode::parse(topology.dataplane.mode.trim());
    if mode.is_none() {
        v.errors.push(TopologyError::BadDataplane {
            field: "dataplane.mode".into(),
            value: topology.dataplane.mode.clone(),
        });
    }
    let policy = policy::plan(&topology.policy, topology, &mut v.errors);
    let metrics_listen = match topology.metrics.listen.trim() {
        "" => None,
        text => match text.parse::<std::net::SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                v.errors.push(TopologyError::BadAddress {
                    field: "metrics.listen".into(),
                    value: text.into(),
                });
                None
            }
        },
    };
    if let Some(uplinks) = &topology.platform.uplinks {
        for (i, name) in uplinks.iter().enumerate() {
            if name.is_empty() || name.len() > MAX_IFNAME_LEN || name.contains('/') {
                v.errors.push(TopologyError::InvalidName {
                    field: format!("platform.uplinks[{i}]"),
                    name: name.clone(),
                    reason: "not an interface name",
                });
            }
        }
    }

    if v.errors.is_empty() {
        Ok(Plan {
            platform: topology.platform.name.clone(),
            prefix: prefix.clone(),
            networks,
            endpoints,
            masquerade: topology.nat.masquerade,
            services: lb.services,
            service_cidr: lb.service_cidr,
            port_forwards: lb.port_forwards,
            uplinks: topology.platform.uplinks.clone(),
            dataplane: Dataplane {
                mode: mode.unwrap_or_default(),
                ..lb.dataplane
            },
            policy,
            metrics_listen,
            names: Default::default(),
        })
    } else {
        Err(v.errors)
    }
}
