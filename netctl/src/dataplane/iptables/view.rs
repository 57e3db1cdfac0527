//! [`Dataplane`] read back from the instance's iptables chains (and, for connections, the
//! kernel's conntrack, which holds the NAT of iptables connections).

use super::{Chains, base, conntrack, policy, rules};
use crate::{
    dataplane::{Connection, Dataplane, DropPair, InstalledPolicy, ServedFrontend},
    net::iptables,
    topology::Plan,
};

pub struct IptablesView<'a> {
    plan: &'a Plan,
    chains: Chains,
}

impl<'a> IptablesView<'a> {
    pub fn new(plan: &'a Plan, instance: &str) -> Self {
        IptablesView {
            plan,
            chains: Chains::for_instance(instance),
        }
    }
}

impl Dataplane for IptablesView<'_> {
    /// The chains hold the address table only when some rule needs it: with no entries
    /// and no limits every address is served alike.
    fn has_identity(&self, addr: std::net::Ipv4Addr, identity: u32) -> anyhow::Result<bool> {
        Ok(self.policy()?.is_some_and(|p| {
            p.identities.contains(&(addr, identity))
                || (p.compiled.entries.is_empty() && p.compiled.rate_limits.is_empty())
        }))
    }

    fn attach_endpoint(&self, host_ifname: &str) -> anyhow::Result<()> {
        base::set_hairpin(host_ifname, true)
    }

    /// The bridge-port setting goes with the interface.
    fn detach_endpoint(&self, _host_ifname: &str) -> anyhow::Result<()> {
        Ok(())
    }

    fn frontends(&self) -> anyhow::Result<Vec<ServedFrontend>> {
        let nat = iptables::save("nat")?;
        let filter = iptables::save("filter")?;
        Ok(rules::read_frontends(&self.chains, &nat, &filter)
            .into_iter()
            .map(|fe| ServedFrontend {
                service: fe.service,
                addr: fe.addr,
                port: fe.port,
                proto: fe.proto.name(),
                host_port: fe.host_port,
            })
            .collect())
    }

    fn connections(&self) -> anyhow::Result<Vec<Connection>> {
        conntrack::connections(self.plan)
    }

    fn policy(&self) -> anyhow::Result<Option<InstalledPolicy>> {
        Ok(
            policy::read(&self.chains, &iptables::save("filter")?).map(|i| InstalledPolicy {
                generation: i.generation,
                compiled: i.compiled,
                identities: i.identities,
            }),
        )
    }

    fn drop_pairs(&self) -> anyhow::Result<Vec<DropPair>> {
        let d = policy::drops(&self.chains, &iptables::save_counted("filter")?);
        Ok(d.pairs().collect())
    }
}
