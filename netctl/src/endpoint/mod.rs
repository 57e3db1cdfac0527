//! Endpoints: the unit the dataplane serves. An endpoint is a network namespace joined to
//! one of the platform's networks by a veth pair (host end on the network's bridge), with
//! an address, an identity (a service's, or none) and an owner: the topology's reconcile
//! (a service instance), or whoever asked the agent for it (`POST /v1/endpoints`: the
//! command line today; a CNI call, a Docker driver call or a remote node tomorrow).
//!
//! Everything an endpoint gets is made by the same functions, whoever asks: [`plumbing`]
//! makes the veth, addresses and routes; the dataplane's
//! [`attach_endpoint`](crate::dataplane::Dataplane::attach_endpoint) hooks its interface;
//! policy, load balancing and flow naming follow the plan the agent runs with, to which
//! attached endpoints are added ([`attached_plan`]).
//!
//! - [`model`]: requests and endpoints, and the pure resolution of one into the other;
//! - [`ipam`]: free addresses of a network;
//! - [`store`]: one file per attached endpoint, so a restarted agent adopts them.

pub mod ipam;
pub mod model;
pub mod plumbing;
pub mod store;

pub use model::{
    Endpoint, EndpointError, EndpointRequest, EndpointSummary, Owner, attached_plan, resolve,
};
