//! What of the host a plan uses (uplinks, the cgroup for socket LB, the eBPF object's
//! fingerprint), found out at `up` time and again by the components that follow the host.

use std::path::PathBuf;

use crate::{dataplane::ebpf::loader, net::netlink::Netlink, topology::Plan};

/// What of the host a plan uses, found out at `up` time.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    /// Interfaces where outside traffic to port forwards arrives.
    pub uplinks: Vec<String>,
    /// cgroup v2 root for socket-level load balancing (`None`: socket LB off).
    pub cgroup: Option<PathBuf>,
    /// Fingerprint of the eBPF object this `netctl` would load.
    pub object: String,
}

impl HostFacts {
    /// Resolves the uplinks (explicit, or the interfaces of the default routes) and the
    /// cgroup v2 root.
    pub async fn discover(host: &Netlink, plan: &Plan) -> anyhow::Result<Self> {
        let uplinks = match &plan.uplinks {
            Some(list) => list.clone(),
            None => {
                let links = host.links().await?;
                let mut names: Vec<String> = host
                    .routes()
                    .await?
                    .iter()
                    .filter(|r| r.destination.prefix_len() == 0)
                    .filter_map(|r| r.oif)
                    .filter_map(|i| links.iter().find(|l| l.index == i).map(|l| l.name.clone()))
                    .collect();
                names.sort();
                names.dedup();
                names
            }
        };
        let cgroup = if plan.dataplane.socket_lb_active() {
            Some(crate::net::cgroup::v2_root()?)
        } else {
            None
        };
        let object = loader::fingerprint(&loader::object()?);
        Ok(Self {
            uplinks,
            cgroup,
            object,
        })
    }
}
