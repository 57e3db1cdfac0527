//! `netctl down`: remove every resource the state journal records, in reverse order,
//! collecting every error instead of stopping at the first, so that one stuck object does
//! not leave the rest behind. The journal keeps whatever could not be removed.

use anyhow::bail;

use super::{
    Resource,
    resource::Ctx,
    state::{self, HostChanges, State, StateLock, instances},
};
use crate::net::{bpffs, netlink::Netlink, sysctl};

#[derive(Debug)]
pub enum DownReport {
    NothingUp,
    Removed(Vec<Resource>),
}

pub async fn down(instance: &str) -> anyhow::Result<DownReport> {
    // No state directory: nothing is up, and `down` makes none.
    let Some(_lock) = StateLock::acquire_existing()? else {
        return Ok(DownReport::NothingUp);
    };
    let Some(mut state) = State::load(instance)? else {
        return Ok(DownReport::NothingUp);
    };
    let ctx = Ctx {
        host: Netlink::current()?,
    };
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    let records: Vec<Resource> = state.resources.iter().map(|r| r.resource.clone()).collect();
    for r in records.iter().rev() {
        match r.delete(&ctx).await {
            Ok(()) => {
                state.resources.retain(|x| &x.resource != r);
                removed.push(r.clone());
            }
            Err(e) => errors.push(format!("{r}: {e:#}")),
        }
    }
    if errors.is_empty() {
        finish_instance(&state)?;
        return Ok(DownReport::Removed(removed));
    }
    state.save()?;
    bail!(
        "could not remove {} of {} resources (they stay recorded; run `netctl down` again):\n  - {}",
        errors.len(),
        records.len(),
        errors.join("\n  - ")
    );
}

/// Drops the state file of an instance with nothing left, and when it was the last
/// instance, restores the host settings netctl changed and removes `/run/netctl`. (The
/// shared `/run/netns` mount point `up` may have made stays, as `ip netns` leaves it:
/// other tools' namespaces may live there.)
pub fn finish_instance(state: &State) -> anyhow::Result<()> {
    state.remove()?;
    bpffs::remove_pin_root_if_empty()?;
    if !instances().is_empty() {
        return Ok(());
    }
    let host = HostChanges::load()?;
    if let Some(before) = &host.ip_forward_before {
        sysctl::write(sysctl::IP_FORWARD, before)?;
    }
    if host.mounted_bpffs {
        bpffs::unmount_if_unused()?;
    }
    host.remove()?;
    state::remove_dir_if_empty()
}
