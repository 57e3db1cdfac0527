//! `netctl serve registry|gateway|product|order`: one of the reference shop's services
//! (the netctl-shop crate), in this process (the supervisor runs them in their
//! namespaces; settings come from the environment, see docs/services.md). The one place
//! the networking core reaches the shop, and only with the feature `shop` (the default):
//! without it netctl has no PostgreSQL or Redis client, and this command fails saying why.

use std::process::ExitCode;

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

#[cfg(feature = "shop")]
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    use netctl_shop::Service as Shop;

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

/// Built without the shop: the supervisor still starts what a topology names (it
/// configures the shop's programs from netctl-shop-contract alone), and each of them ends
/// here, with this message in its log and a failed start.
#[cfg(not(feature = "shop"))]
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    use clap::ValueEnum as _;

    let name = args
        .service
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
    anyhow::bail!(
        "this netctl was built without the reference shop (feature `shop`): \
         `netctl serve {name}` is not available; build it with the default features"
    )
}
