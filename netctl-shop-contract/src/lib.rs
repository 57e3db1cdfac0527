//! The contract between netctl's supervisor and the programs of the reference shop it
//! starts (`netctl serve registry|gateway|product|order`): the environment variables the
//! supervisor sets for them and the largest request body, which the shop's services
//! enforce and the nginx edge netctl configures in front of the gateway refuses the same
//! way.
//!
//! Its own crate so that every name is written once: the shop (netctl-shop) must not
//! depend on the networking core, and the core must know these names even when it is
//! built without the shop (`cargo build -p netctl --no-default-features`), where it still
//! configures the programs a topology names (they then fail at `netctl serve`, saying why).
//! No dependencies, so it costs the core nothing.
#![no_std]

/// The environment the supervisor gives each of the shop's programs.
pub mod env {
    /// Where a service listens: `LISTEN=address:port`.
    pub const LISTEN: &str = "LISTEN";
    /// Its instance id, e.g. `product-2` (shown in headers and the registry).
    pub const INSTANCE_ID: &str = "INSTANCE_ID";
    /// The service name it registers under, e.g. `product`.
    pub const SERVICE_NAME: &str = "SERVICE_NAME";
    /// Base URL of the registry, e.g. `http://172.21.0.5:8500`; without it, no registration.
    pub const REGISTRY_URL: &str = "REGISTRY_URL";
    /// `postgresql://user:password@host:port/db` for product and order.
    pub const DATABASE_URL: &str = "DATABASE_URL";
    /// `redis://host:port` for product.
    pub const REDIS_URL: &str = "REDIS_URL";
    /// The gateway's: the edge's addresses (comma-separated), whose `X-Real-IP` and
    /// `X-Forwarded-For` it passes on; the supervisor sets it to the nginx endpoints.
    pub const TRUSTED_PROXIES: &str = "TRUSTED_PROXIES";
}

/// Largest request body any service reads; above it the answer is 413 (from the service,
/// or from the nginx edge before it reaches the gateway).
pub const MAX_BODY: usize = 16 * 1024;
