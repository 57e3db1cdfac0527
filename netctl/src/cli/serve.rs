//! `netctl serve registry|gateway|product|order`: one of the reference services, in this
//! process (the supervisor runs them in their namespaces; settings come from the
//! environment, see docs/services.md).

use std::process::ExitCode;

use crate::{services, topology::Kind};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Which service.
    #[arg(value_enum)]
    service: Service,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Service {
    Registry,
    Gateway,
    Product,
    Order,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // The services are the platform's: the supervisor starts them as root in their
    // namespaces (PostgreSQL alone runs as its own user).
    crate::reconcile::preflight::require_root("serve")?;
    let kind = match args.service {
        Service::Registry => Kind::Registry,
        Service::Gateway => Kind::Gateway,
        Service::Product => Kind::Product,
        Service::Order => Kind::Order,
    };
    services::serve(kind).await?;
    Ok(ExitCode::SUCCESS)
}
