//! `netctl up`: reconcile the kernel with a plan.
//!
//! 1. decide, from the state journal and the kernel, what to remove (partial leftovers of
//!    a crash, resources no longer wanted or changed, resources that vanished, and whatever
//!    depends on those) and what to create;
//! 2. refuse, before any change, names taken by objects netctl did not make;
//! 3. remove, then create in order, journaling each resource before creating it;
//! 4. on a failure, remove what this run created and report both.
//!
//! A second `up` with the same plan finds nothing to do and changes nothing.

use anyhow::{Context, anyhow, bail};

use super::{
    Resource, preflight,
    resource::Ctx,
    state::{HostChanges, State, StateLock},
};
use crate::{
    dataplane::{ebpf::Pins, host_facts::HostFacts},
    instance::{daemon, failpoint::ResourceFailpoint},
    net::{bpffs, netlink::Netlink, sysctl},
    topology::Plan,
};

#[derive(Debug, Default)]
pub struct UpReport {
    pub created: Vec<Resource>,
    pub removed: Vec<Resource>,
    pub unchanged: usize,
    /// Only settings changed (services, algorithms, policy): applied by the controller.
    pub settings_changed: bool,
    /// A new build of the eBPF programs replaced the running one in place.
    pub upgraded: bool,
}

impl UpReport {
    pub fn changed(&self) -> bool {
        !self.created.is_empty() || !self.removed.is_empty() || self.settings_changed
    }
}

/// Who runs the controller after `up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControllerMode {
    /// A background `netctl controller` process (the default).
    Background,
    /// The calling process, which runs the controller itself afterwards (`--foreground`).
    Foreground,
}

pub async fn up(plan: &Plan, mode: ControllerMode) -> anyhow::Result<UpReport> {
    let ctx = Ctx {
        host: Netlink::current()?,
    };
    // The checks read only: they run before anything (the state directory included) is
    // made, so a refused `up` leaves the host as it was.
    preflight::check_routes(&ctx.host, plan).await?;
    preflight::check_host_ports(plan)?;
    let _lock = StateLock::acquire()?;
    // Again under the lock: another platform's `up` may have taken a host port meanwhile.
    preflight::check_host_ports(plan)?;

    let instance = plan.instance();
    let pins = Pins::for_instance(&instance);
    let facts = HostFacts::discover(&ctx.host, plan).await?;
    let desired = Resource::for_plan(plan, &pins, &facts, mode == ControllerMode::Background);
    let mut state = State::load(&instance)?.unwrap_or_else(|| State::new(plan.clone()));
    let upgraded = upgrade_in_place(&mut state, &desired, &ctx).await?;

    let remove = stale(&state, &desired, &ctx).await?;
    let kept: Vec<&Resource> = state
        .resources
        .iter()
        .map(|r| &r.resource)
        .filter(|r| !remove.contains(r))
        .collect();
    let create: Vec<Resource> = desired
        .iter()
        .filter(|r| !kept.contains(r))
        .cloned()
        .collect();
    let controller_kept = kept
        .iter()
        .any(|r| matches!(r, Resource::Controller { .. }));
    // What something else moved since (Docker's jumps ahead of ours in FORWARD) goes back
    // in place, also when nothing else changes.
    for r in &kept {
        r.refresh()
            .with_context(|| format!("putting {r} back in place"))?;
    }
    let mut report = UpReport {
        unchanged: kept.len(),
        upgraded,
        ..UpReport::default()
    };
    if remove.is_empty() && create.is_empty() {
        // Same kernel objects, but settings the controller applies (services, algorithms,
        // policy, what runs and its health checks) may differ: record them and let the
        // controller know.
        if state.plan != *plan {
            state.plan = plan.clone();
            state.save()?;
            report.settings_changed = true;
            if controller_kept {
                daemon::reload(&instance)?;
            }
        }
        return Ok(report);
    }

    check_conflicts(&state, &create, &ctx).await?;
    prepare_host()?;
    state.plan = plan.clone();
    state.save()?;

    // Remove in reverse creation order: dependents before what they depend on.
    let recorded: Vec<Resource> = state.resources.iter().map(|r| r.resource.clone()).collect();
    for r in recorded.iter().rev().filter(|r| remove.contains(r)) {
        r.delete(&ctx)
            .await
            .with_context(|| format!("removing {r} (changed or left over)"))?;
        state.forget(r)?;
        report.removed.push(r.clone());
    }

    let failpoint = ResourceFailpoint::from_env();
    for r in create {
        let outcome = match failpoint.before_create(report.created.len()) {
            Err(e) => Err(e),
            Ok(()) => {
                state.push(r.clone())?;
                let made = r
                    .create(&ctx)
                    .await
                    .with_context(|| format!("creating {r}"));
                failpoint.after_create(report.created.len());
                made
            }
        };
        match outcome {
            Ok(()) => {
                state.mark_done(&r)?;
                report.created.push(r);
            }
            Err(e) => {
                let mut undo = report.created.clone();
                if state.resources.iter().any(|x| x.resource == r) {
                    undo.push(r);
                }
                return Err(rollback(&mut state, &undo, &ctx, e).await);
            }
        }
    }
    // A controller that stays gets the new state; a new one read it at start.
    if controller_kept {
        daemon::reload(&instance)?;
    }
    Ok(report)
}

/// A running dataplane whose object differs only in build: upgrade it in place (maps kept,
/// programs swapped on their links) instead of removing and recreating it, which would cut
/// every connection.
async fn upgrade_in_place(
    state: &mut State,
    desired: &[Resource],
    ctx: &Ctx,
) -> anyhow::Result<bool> {
    let Some(
        want @ Resource::Dataplane {
            pins,
            options,
            object,
        },
    ) = desired
        .iter()
        .find(|r| matches!(r, Resource::Dataplane { .. }))
    else {
        return Ok(false);
    };
    let Some(rec) = state.resources.iter_mut().find(|r| {
        r.done
            && matches!(&r.resource, Resource::Dataplane { pins: p, options: o, object: b }
                if p == pins && o == options && b != object)
    }) else {
        return Ok(false);
    };
    if !rec.resource.exists(ctx).await? {
        return Ok(false);
    }
    tracing::info!("upgrading the dataplane in place to object {object}");
    crate::dataplane::ebpf::loader::upgrade(pins, *options)
        .context("upgrading the dataplane in place")?;
    rec.resource = want.clone();
    state.save()?;
    Ok(true)
}

/// Records to remove before creating: partial, unwanted, vanished, and their dependents.
async fn stale(state: &State, desired: &[Resource], ctx: &Ctx) -> anyhow::Result<Vec<Resource>> {
    let mut remove = Vec::new();
    for rec in &state.resources {
        let r = &rec.resource;
        if !rec.done || !desired.contains(r) || !r.exists(ctx).await? {
            remove.push(r.clone());
        }
    }
    loop {
        let dependents: Vec<Resource> = state
            .resources
            .iter()
            .map(|rec| &rec.resource)
            .filter(|r| !remove.contains(r) && remove.iter().any(|x| r.depends_on(x)))
            .cloned()
            .collect();
        if dependents.is_empty() {
            return Ok(remove);
        }
        remove.extend(dependents);
    }
}

/// Names the state does not account for must be free.
async fn check_conflicts(state: &State, create: &[Resource], ctx: &Ctx) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for r in create {
        let recorded = state
            .resources
            .iter()
            .any(|rec| rec.resource.kind() == r.kind() && rec.resource.name() == r.name());
        if recorded {
            continue;
        }
        if let Some(p) = r.conflict(ctx).await? {
            problems.push(p);
        }
    }
    if !problems.is_empty() {
        bail!(
            "not changing anything: names this platform needs are taken by objects netctl \
             did not make (remove them, or choose another platform.prefix / --prefix):\n  - {}",
            problems.join("\n  - ")
        );
    }
    Ok(())
}

/// bpffs mounted and IPv4 forwarding on, remembering what to restore.
fn prepare_host() -> anyhow::Result<()> {
    let mut host = HostChanges::load()?;
    if bpffs::ensure_mounted()? {
        host.mounted_bpffs = true;
    }
    let forward = sysctl::read(sysctl::IP_FORWARD)?;
    if forward != "1" {
        sysctl::write(sysctl::IP_FORWARD, "1")?;
        host.ip_forward_before.get_or_insert(forward);
    }
    host.save()
}

/// Removes what this run created; the returned error carries the cause and any problem met
/// while undoing.
async fn rollback(
    state: &mut State,
    created: &[Resource],
    ctx: &Ctx,
    cause: anyhow::Error,
) -> anyhow::Error {
    let mut problems = Vec::new();
    for r in created.iter().rev() {
        match r.delete(ctx).await {
            Ok(()) => {
                if let Err(e) = state.forget(r) {
                    problems.push(format!("{e:#}"));
                }
            }
            Err(e) => problems.push(format!("{r}: {e:#}")),
        }
    }
    if state.resources.is_empty()
        && let Err(e) = super::down::finish_instance(state)
    {
        problems.push(format!("{e:#}"));
    }
    let mut msg = format!(
        "{cause:#}\nrolled back the {} resource(s) this run had created",
        created.len()
    );
    if !problems.is_empty() {
        msg.push_str("; these could not be removed (run `netctl down` again):\n  - ");
        msg.push_str(&problems.join("\n  - "));
    }
    anyhow!(msg)
}

/// `up --foreground`: records this process as the instance's controller (journal and pid
/// file), for the caller to run the agent in it. Returns the instance.
pub fn record_as_controller(plan: &Plan) -> anyhow::Result<String> {
    let instance = plan.instance();
    {
        let _lock = StateLock::acquire()?;
        let mut state = State::load(&instance)?
            .ok_or_else(|| anyhow!("instance {instance} vanished before its controller started"))?;
        let me = Resource::Controller {
            instance: instance.clone(),
            prefix: plan.prefix.clone(),
        };
        if !state.resources.iter().any(|r| r.resource == me) {
            state.push(me.clone())?;
        }
        daemon::write_pid_file(&instance)?;
        state.mark_done(&me)?;
    }
    Ok(instance)
}
