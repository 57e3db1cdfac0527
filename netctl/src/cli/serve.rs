//! `netctl serve registry|gateway|product|order`: one of the reference shop's services
//! (the netctl-shop crate), in this process (the supervisor runs them in their
//! namespaces; settings come from the environment, see docs/services.md). The one place
//! the networking core reaches the shop.

use std::process::ExitCode;

use netctl_shop::Service as Shop;

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
    let service = match args.service {
        Service::Registry => Shop::Registry,
        Service::Gateway => Shop::Gateway,
        Service::Product => Shop::Product,
        Service::Order => Shop::Order,
    };
    netctl_shop::serve(service).await?;
    Ok(ExitCode::SUCCESS)
}
