//! [`Dataplane`] read from the pinned eBPF maps: they answer with no netctl process running.

use anyhow::Context;
use aya::maps::{HashMap, Map, MapData};
use netctl_common::{DropReason, event::DropPairKey, maps::DROP_PAIRS};

use super::{Pins, TcProgram, conntrack, lb::LbMaps, loader, policy::PolicyMaps};
use crate::{
    dataplane::{Connection, Dataplane, DropPair, InstalledPolicy, ServedFrontend},
    topology::{Plan, Proto},
};

pub struct EbpfView<'a> {
    plan: &'a Plan,
    pins: Pins,
}

impl<'a> EbpfView<'a> {
    pub fn new(plan: &'a Plan, instance: &str) -> Self {
        EbpfView {
            plan,
            pins: Pins::for_instance(instance),
        }
    }
}

impl Dataplane for EbpfView<'_> {
    fn attach_endpoint(&self, host_ifname: &str) -> anyhow::Result<()> {
        for program in TcProgram::ENDPOINT {
            if !loader::is_linked(&self.pins.tc_link(host_ifname, program)) {
                loader::attach_tc(&self.pins, host_ifname, program)?;
            }
        }
        Ok(())
    }

    fn detach_endpoint(&self, host_ifname: &str) -> anyhow::Result<()> {
        for program in TcProgram::ENDPOINT {
            loader::unlink(&self.pins.tc_link(host_ifname, program))?;
        }
        Ok(())
    }

    fn frontends(&self) -> anyhow::Result<Vec<ServedFrontend>> {
        Ok(LbMaps::open(&self.pins)?
            .frontends()
            .into_iter()
            .map(|fe| ServedFrontend {
                service: self
                    .plan
                    .service_by_id(fe.service_id)
                    .map_or_else(|| format!("#{}", fe.service_id), |s| s.name.clone()),
                addr: fe.addr,
                port: fe.port,
                proto: Proto::from_number(fe.proto).map_or("?", Proto::name),
                host_port: fe.flags & netctl_common::lb::SVC_F_HOST_PORT != 0,
            })
            .collect())
    }

    fn connections(&self) -> anyhow::Result<Vec<Connection>> {
        conntrack::connections(&conntrack::open(&self.pins)?)
    }

    fn policy(&self) -> anyhow::Result<Option<InstalledPolicy>> {
        // The maps always hold a generation (0 until the controller installs the first).
        let installed = PolicyMaps::open(&self.pins)?.read()?;
        Ok(Some(InstalledPolicy {
            generation: installed.generation,
            compiled: installed.compiled,
            identities: installed.identities,
        }))
    }

    fn drop_pairs(&self) -> anyhow::Result<Vec<DropPair>> {
        let data = MapData::from_pin(self.pins.map(DROP_PAIRS)).context("opening DROP_PAIRS")?;
        let pairs: HashMap<_, DropPairKey, u64> = HashMap::try_from(Map::LruHashMap(data))?;
        Ok(pairs
            .iter()
            .filter_map(Result::ok)
            .map(|(k, packets)| DropPair {
                src_identity: k.src_identity,
                dst_identity: k.dst_identity,
                reason: DropReason::from_u32(k.reason).map_or("?", DropReason::name),
                packets,
            })
            .collect())
    }

    fn policy_generation(&self) -> anyhow::Result<u32> {
        PolicyMaps::open(&self.pins)?.generation()
    }
}
