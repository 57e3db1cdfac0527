//! `netctl endpoints [add|rm|show]`: the endpoints the controller serves. `add` attaches a
//! namespace (a container's, `ip netns add`'s, `/proc/PID/ns/net`) to one of the
//! platform's networks, optionally as a member of a service; `rm` detaches it. Asks the
//! running controller, which does the work (see `agent::endpoints`).

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf, process::ExitCode};

use anyhow::{Context, bail};
use clap::Subcommand;

use super::resolve_instance;
use crate::{
    endpoint::{Endpoint, EndpointRequest, EndpointSummary, Owner},
    instance::agent_client as api,
    output,
    reconcile::preflight,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Attach a namespace to a network.
    Add {
        /// A name for the endpoint, unique in the platform.
        id: String,
        /// The namespace: a path (`/proc/PID/ns/net`, `/run/netns/NAME`) or an
        /// `ip netns` name.
        #[arg(long)]
        netns: String,
        /// A network of the topology.
        #[arg(long)]
        network: String,
        /// The address (default: a free one of the network).
        #[arg(long)]
        address: Option<Ipv4Addr>,
        /// Make it a member of this service: its identity, and a backend of its VIP.
        #[arg(long)]
        service: Option<String>,
        /// The interface name inside the namespace.
        #[arg(long, default_value = "eth0")]
        ifname: String,
        /// Labels, `KEY=VALUE` (repeatable; `netctl.service=NAME` works as --service).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Detach an endpoint (removes its veth; the namespace stays).
    Rm { id: String },
    /// One endpoint, in full.
    Show { id: String },
}

pub async fn run(args: Args, prefix: Option<&str>) -> anyhow::Result<ExitCode> {
    preflight::require_root("endpoints")?;
    let Some(instance) = resolve_instance(prefix)? else {
        bail!("no netctl platform is up");
    };
    let ask = "asking the controller (is it running? `netctl up` restarts it)";
    match args.action {
        None => {
            let list = api::get(&instance, "/v1/endpoints").await.context(ask)?;
            let list: Vec<EndpointSummary> = serde_json::from_value(list)
                .context("the controller's answer is not a list of endpoints")?;
            if args.json {
                return output::print_json(&list).map(|()| ExitCode::SUCCESS);
            }
            let mut t = output::table(&[
                "ENDPOINT", "NETWORK", "ADDRESS", "SERVICE", "OWNER", "HOST IF",
            ]);
            for e in list {
                t.add_row(vec![
                    e.id,
                    e.network,
                    e.address.to_string(),
                    e.service.unwrap_or_else(|| "-".into()),
                    e.owner.kind().to_string(),
                    e.host_ifname,
                ]);
            }
            output::print_table(&t)?;
        }
        Some(Action::Add {
            id,
            netns,
            network,
            address,
            service,
            ifname,
            labels,
        }) => {
            let req = EndpointRequest {
                id,
                netns: netns_path(&netns),
                ifname,
                network,
                address,
                service,
                labels: parse_labels(&labels)?,
                owner: Owner::Api,
            };
            let body = serde_json::to_value(&req).context("encoding the request")?;
            let made = api::post(&instance, "/v1/endpoints", &body)
                .await
                .context(ask)?;
            let ep: Endpoint = serde_json::from_value(made)
                .context("the controller's answer is not an endpoint")?;
            if args.json {
                output::print_json(&ep)?;
            } else {
                output::print_line(&format!(
                    "endpoint {} attached: {}/{} on {} via {} ({} on the host)",
                    ep.id, ep.address, ep.prefix_len, ep.network, ep.gateway, ep.host_ifname
                ))?;
            }
        }
        Some(Action::Rm { id }) => {
            api::delete(&instance, &format!("/v1/endpoints/{id}"))
                .await
                .context(ask)?;
            output::print_line(&format!("endpoint {id} detached"))?;
        }
        Some(Action::Show { id }) => {
            let ep = api::get(&instance, &format!("/v1/endpoints/{id}"))
                .await
                .context(ask)?;
            output::print_json(&ep)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A path as given, or an `ip netns` name's path.
fn netns_path(text: &str) -> PathBuf {
    if text.contains('/') {
        PathBuf::from(text)
    } else {
        crate::net::netns::path(text)
    }
}

fn parse_labels(labels: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("a label is KEY=VALUE, got {l:?}"),
        })
        .collect()
}
