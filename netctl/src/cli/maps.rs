//! `netctl maps [NAME]`: the instance's pinned maps, or one map's entries decoded, from
//! bpffs alone (no controller needed).

use std::{net::Ipv4Addr, process::ExitCode};

use anyhow::{Context, bail};
use aya::maps::{Array, HashMap, Map, MapData, MapInfo, PerCpuArray};
use netctl_common::{
    Backend, CtEntry, DropReason, FlowKey, FlowStats, ServiceKey, ServiceValue,
    event::DropPairKey,
    lb::BackendAddr,
    maps as names,
    policy::{
        Bucket, BucketKey, IdentityKey, PolicyKey, PolicyValue, RL_BY_IDENTITY, RateLimit,
        RateLimitKey, VERDICT_DENY,
    },
    sock::{SockRevNatKey, SockRevNatValue},
};
use serde_json::{Value, json};

use super::load_state;
use crate::{
    dataplane::ebpf::Pins, output, policy::identity, reconcile::preflight, topology::Plan,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A map to dump (e.g. CT, LB_SERVICES); without it, list them all.
    name: Option<String>,
    /// Machine-readable output (a dump is always JSON).
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, prefix: Option<&str>) -> anyhow::Result<ExitCode> {
    preflight::require_root("maps")?;
    let Some(state) = load_state(prefix)? else {
        bail!("no netctl platform is up");
    };
    super::require_ebpf(
        &state,
        "maps",
        "; `iptables-save` shows its rules and `netctl services` what they serve",
    )?;
    let pins = Pins::for_instance(&state.instance);
    match args.name {
        Some(name) => {
            if !pins.pinned_maps().contains(&name) {
                bail!(
                    "no pinned map {name:?}; pinned: {}",
                    pins.pinned_maps().join(", ")
                );
            }
            output::print_json(&dump(&pins, &state.plan, &name)?)?;
        }
        None => list(&pins, &state.plan, args.json)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn list(pins: &Pins, plan: &Plan, as_json: bool) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for name in pins.pinned_maps() {
        let path = pins.map(&name);
        let info =
            MapInfo::from_pin(&path).with_context(|| format!("reading {}", path.display()))?;
        let kind = info
            .map_type()
            .map_or_else(|_| "?".to_string(), |t| format!("{t:?}"));
        let entries = dump(pins, plan, &name)
            .ok()
            .and_then(|d| d.as_array().map(Vec::len));
        rows.push(json!({
            "name": name,
            "type": kind,
            "key_size": info.key_size(),
            "value_size": info.value_size(),
            "max_entries": info.max_entries(),
            "entries": entries,
            "pin": path,
        }));
    }
    if as_json {
        return output::print_json(&rows);
    }
    let mut t = output::table(&[
        "name",
        "type",
        "key",
        "value",
        "max entries",
        "entries",
        "pin",
    ]);
    for r in &rows {
        t.add_row(vec![
            r["name"].as_str().unwrap_or("").to_string(),
            r["type"].as_str().unwrap_or("").to_string(),
            format!("{} B", r["key_size"]),
            format!("{} B", r["value_size"]),
            r["max_entries"].to_string(),
            r["entries"].as_u64().map_or("-".into(), |n| n.to_string()),
            r["pin"].as_str().unwrap_or("").to_string(),
        ]);
    }
    output::print_table(&t).map_err(Into::into)
}

/// Every entry of a known map as `{key, value}` objects (every map but the `EVENTS` ring
/// buffer, which has no entries to look at, only a reader).
fn dump(pins: &Pins, plan: &Plan, name: &str) -> anyhow::Result<Value> {
    let data = MapData::from_pin(pins.map(name)).with_context(|| format!("opening {name}"))?;
    let entries: Vec<Value> = match name {
        names::FLOWS => HashMap::<_, FlowKey, FlowStats>::try_from(Map::LruHashMap(data))?
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| json!({ "key": tuple(&k), "value": {
                "packets": v.packets, "bytes": v.bytes, "first_seen_ns": v.first_seen_ns,
                "last_seen_ns": v.last_seen_ns, "tcp_flags": v.tcp_flags } }))
            .collect(),
        names::CT => HashMap::<_, FlowKey, CtEntry>::try_from(Map::LruHashMap(data))?
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| json!({ "key": tuple(&k), "value": {
                "created_ns": v.created_ns, "last_seen_ns": v.last_seen_ns,
                "nat_addr": Ipv4Addr::from(v.nat_addr), "nat_port": v.nat_port,
                "flags": v.flags, "tcp_flags": v.tcp_flags,
                "backend_id": v.backend_id, "service_id": v.service_id,
                "src_identity": v.src_identity, "dst_identity": v.dst_identity,
                "policy_port": v.policy_port, "policy_gen": v.policy_gen } }))
            .collect(),
        names::LB_SERVICES => HashMap::<_, ServiceKey, ServiceValue>::try_from(Map::HashMap(data))?
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| json!({ "key": {
                "addr": Ipv4Addr::from(k.addr), "port": k.port, "proto": k.proto, "slot": k.slot },
                "value": { "backend_id": v.backend_id, "service_id": v.service_id,
                "maglev_table": v.maglev_table, "rr_next": v.rr_next, "count": v.count,
                "algorithm": v.algorithm, "flags": v.flags } }))
            .collect(),
        names::LB_BACKENDS => HashMap::<_, u32, Backend>::try_from(Map::HashMap(data))?
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| json!({ "key": k, "value": {
                "addr": Ipv4Addr::from(v.addr), "port": v.port, "proto": v.proto, "state": v.state } }))
            .collect(),
        names::LB_BACKEND_ADDRS => HashMap::<_, BackendAddr, u32>::try_from(Map::HashMap(data))?
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| json!({ "key": {
                "addr": Ipv4Addr::from(k.addr), "port": k.port, "proto": k.proto },
                "value": { "backend_id": v } }))
            .collect(),
        names::SOCK_REVNAT => HashMap::<_, SockRevNatKey, SockRevNatValue>::try_from(Map::LruHashMap(data))?
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| json!({ "key": { "cookie": k.cookie,
                "backend_addr": Ipv4Addr::from(k.backend_addr), "backend_port": k.backend_port },
                "value": { "frontend_addr": Ipv4Addr::from(v.frontend_addr), "frontend_port": v.frontend_port } }))
            .collect(),
        names::DROPS | names::COUNTERS => PerCpuArray::<_, u64>::try_from(Map::PerCpuArray(data))?
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.ok().map(|v| (i, v.iter().sum::<u64>())))
            .filter(|(_, v)| *v != 0)
            .map(|(i, v)| json!({ "key": i, "value": v }))
            .collect(),
        names::CONFIG => Array::<_, u32>::try_from(Map::Array(data))?
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.ok().map(|v| json!({ "key": i, "value": v })))
            .collect(),
        names::LB_MAGLEV => Array::<_, u32>::try_from(Map::Array(data))?
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.ok().filter(|v| *v != 0).map(|v| json!({ "key": i, "value": v })))
            .collect(),
        names::IDENTITIES => HashMap::<_, IdentityKey, u32>::try_from(Map::HashMap(data))?
            .iter()
            .filter_map(Result::ok)
            .map(|(k, id)| json!({
                "key": { "addr": Ipv4Addr::from(k.addr), "generation": k.generation },
                "value": { "identity": id, "name": identity::name(plan, id) } }))
            .collect(),
        names::POLICY => HashMap::<_, PolicyKey, PolicyValue>::try_from(Map::HashMap(data))?
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| json!({
                "key": { "generation": k.generation, "src": k.src, "dst": k.dst,
                    "port": k.port, "proto": k.proto },
                "value": { "verdict": verdict(v.verdict), "rule": v.rule } }))
            .collect(),
        names::RATE_LIMITS => HashMap::<_, RateLimitKey, RateLimit>::try_from(Map::HashMap(data))?
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| json!({
                "key": { "generation": k.generation, "src": k.src, "dst": k.dst },
                "value": { "rate_milli": v.rate_milli, "burst": v.burst,
                    "by": if v.by == RL_BY_IDENTITY { "identity" } else { "address" } } }))
            .collect(),
        names::RATE_BUCKETS => HashMap::<_, BucketKey, Bucket>::try_from(Map::LruHashMap(data))?
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| json!({
                "key": { "source": k.source, "dst": k.dst,
                    "by": if k.by == RL_BY_IDENTITY { "identity" } else { "address" } },
                "value": { "nano_tokens": v.nano_tokens, "refilled_ns": v.refilled_ns } }))
            .collect(),
        names::DROP_PAIRS => HashMap::<_, DropPairKey, u64>::try_from(Map::LruHashMap(data))?
            .iter()
            .filter_map(Result::ok)
            .map(|(k, packets)| json!({
                "key": { "src_identity": k.src_identity, "dst_identity": k.dst_identity,
                    "reason": DropReason::from_u32(k.reason)
                        .map_or_else(|| format!("#{}", k.reason), |r| r.name().to_string()) },
                "value": packets }))
            .collect(),
        names::EVENTS => bail!(
            "EVENTS is a ring buffer, read once by its one reader: `netctl monitor` shows it"
        ),
        other => bail!("netctl does not know the layout of {other}"),
    };
    Ok(Value::Array(entries))
}

fn tuple(k: &FlowKey) -> Value {
    json!({ "src": Ipv4Addr::from(k.src_addr), "dst": Ipv4Addr::from(k.dst_addr),
            "src_port": k.src_port, "dst_port": k.dst_port, "proto": k.proto })
}

fn verdict(v: u8) -> &'static str {
    if v == VERDICT_DENY { "deny" } else { "allow" }
}
