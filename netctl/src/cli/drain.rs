//! `netctl drain SERVICE/INSTANCE [--undo]`: no new connections to one instance; the
//! established ones finish. Asks the running controller.

use std::process::ExitCode;

use anyhow::{Context, bail};

use super::resolve_instance;
use crate::{instance::agent_client as api, output, reconcile::preflight};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The instance, as `service/instance` (e.g. `product/product-2`).
    target: String,
    /// Put the instance back into service.
    #[arg(long)]
    undo: bool,
}

pub async fn run(args: Args, prefix: Option<&str>) -> anyhow::Result<ExitCode> {
    preflight::require_root("drain")?;
    let Some((service, instance)) = args.target.split_once('/') else {
        bail!(
            "expected SERVICE/INSTANCE (e.g. product/product-2), got {:?}",
            args.target
        );
    };
    if service.is_empty() || instance.is_empty() {
        bail!(
            "expected SERVICE/INSTANCE (e.g. product/product-2), got {:?}",
            args.target
        );
    }
    let Some(name) = resolve_instance(prefix)? else {
        bail!("no netctl platform is up");
    };
    let state = crate::reconcile::state::State::load(&name)?
        .with_context(|| format!("instance {name} is not up"))?;
    if !state
        .plan
        .endpoints
        .iter()
        .any(|e| e.service == service && e.name == instance)
    {
        bail!("{service}/{instance} is not an instance of this platform");
    }
    api::post(
        &name,
        "/v1/lb/drain",
        &serde_json::json!({ "service": service, "instance": instance, "drain": !args.undo }),
    )
    .await
    .context("asking the controller (is it running? `netctl up` restarts it)")?;
    output::print_line(&if args.undo {
        format!("{service}/{instance} is back in service")
    } else {
        format!("{service}/{instance} is draining: no new connections, established ones continue")
    })?;
    Ok(ExitCode::SUCCESS)
}
