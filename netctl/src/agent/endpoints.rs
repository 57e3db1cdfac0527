//! The endpoints component: attaches namespaces to the platform's networks on request and
//! keeps them attached.
//!
//! API (JSON):
//! - `POST /v1/endpoints` with an [`EndpointRequest`]: plumbs the veth, hooks the
//!   dataplane, records the endpoint, and answers with the [`Endpoint`] once the dataplane
//!   serves it (its identity installed). The same request again answers the same endpoint;
//!   the same id with other settings is refused (409).
//! - `GET /v1/endpoints`: every endpoint, the topology's and the attached ones.
//! - `GET /v1/endpoints/{id}`, `DELETE /v1/endpoints/{id}` (404 for an unknown id).
//!
//! The attached endpoints are recorded (see [`store`]) before anything is made, so that a
//! restarted agent adopts them: at start it plumbs again what vanished and forgets those
//! whose namespace is gone. Everything else (identity, policy, load balancing, flow names)
//! follows from the plan the other components get, to which the runtime adds the attached
//! endpoints.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};
use tokio::sync::{Mutex, watch};

use super::component::{AgentCtx, ApiError, Attached, ComponentFuture, Handler};
use crate::{
    dataplane,
    endpoint::{
        Endpoint, EndpointError, EndpointRequest, EndpointSummary, Owner,
        plumbing::{self, Plumbing},
        resolve, store,
    },
    net::{netlink::Netlink, netns},
    topology::Plan,
};

/// How long a create waits for the policy component to install the endpoint's identity.
const SERVED_WITHIN: Duration = Duration::from_secs(8);

pub fn component(ctx: AgentCtx) -> ComponentFuture {
    Box::pin(run(ctx))
}

async fn run(ctx: AgentCtx) -> anyhow::Result<()> {
    let host = Arc::new(Netlink::current()?);
    let recorded = ctx.recorded.clone();
    adopt(&ctx, &host).await;
    // Creates and deletes one at a time: each sees the addresses and names of the last.
    let lock = Arc::new(Mutex::new(()));
    let api = Api {
        instance: ctx.instance.clone(),
        recorded: recorded.clone(),
        attached: ctx.attached.clone(),
        effective: ctx.plan.clone(),
        host,
        lock,
    };
    register_routes(&ctx, api).await;
    ctx.board
        .publish(
            "endpoints",
            json!({ "attached": ctx.attached.current().len() }),
        )
        .await;
    let mut attached = ctx.attached.subscribe();
    loop {
        tokio::select! {
            () = ctx.shutdown.cancelled() => return Ok(()),
            changed = attached.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let n = attached.borrow_and_update().len();
                ctx.board.publish("endpoints", json!({ "attached": n })).await;
            }
        }
    }
}

/// What an earlier agent attached: plumbed again where the veth vanished, forgotten where
/// the namespace is gone (its container ended), hooked into the dataplane either way.
async fn adopt(ctx: &AgentCtx, host: &Netlink) {
    let plan = ctx.recorded.borrow().clone();
    let dp = dataplane::open(&plan, &ctx.instance);
    let mut kept = Vec::new();
    for ep in ctx.attached.current().iter() {
        let ns = match netns::open_path(&ep.netns) {
            Ok(f) => f,
            Err(e) => {
                tracing::info!(endpoint = ep.id, "forgetting the endpoint: {e:#}");
                let _ = dp.detach_endpoint(&ep.host_ifname);
                let _ = plumbing::delete(host, &ep.host_ifname).await;
                let _ = store::remove(&ctx.instance, &ep.id);
                continue;
            }
        };
        let present = plumbing::exists(host, &ep.host_ifname)
            .await
            .unwrap_or(false);
        let made = if present {
            Ok(())
        } else {
            // Its veth vanished, or its bridge was made again under it.
            tracing::info!(endpoint = ep.id, "plumbing the endpoint again");
            let _ = plumbing::delete(host, &ep.host_ifname).await;
            plumbing::create(host, &plumbing_of(ep, &ns))
                .await
                .map(drop)
        };
        match made.and_then(|()| dp.attach_endpoint(&ep.host_ifname)) {
            Ok(()) => kept.push(ep.clone()),
            Err(e) => tracing::error!(endpoint = ep.id, "not adopted: {e:#}"),
        }
    }
    ctx.attached.set(kept);
}

fn plumbing_of<'a>(ep: &'a Endpoint, ns: &'a std::fs::File) -> Plumbing<'a> {
    Plumbing {
        netns: ns,
        netns_label: ep.netns.to_str().unwrap_or("?"),
        ifname: &ep.ifname,
        host_ifname: &ep.host_ifname,
        bridge: &ep.bridge,
        address: ipnet::Ipv4Net::new(ep.address, ep.prefix_len).unwrap_or_default(),
        gateway: ep.gateway,
    }
}

#[derive(Clone)]
struct Api {
    instance: String,
    recorded: watch::Receiver<Arc<Plan>>,
    attached: Attached,
    effective: watch::Receiver<Arc<Plan>>,
    host: Arc<Netlink>,
    lock: Arc<Mutex<()>>,
}

fn refused(e: &EndpointError) -> ApiError {
    ApiError {
        status: e.http_status(),
        message: e.to_string(),
    }
}

fn failed(what: &str, e: &anyhow::Error) -> ApiError {
    ApiError {
        status: 500,
        message: format!("{what}: {e:#}"),
    }
}

impl Api {
    async fn create(&self, req: EndpointRequest) -> Result<Endpoint, ApiError> {
        let _one_at_a_time = self.lock.lock().await;
        let attached = self.attached.current();
        if let Some(ep) = attached.iter().find(|e| e.id == req.id) {
            return if crate::endpoint::model::satisfies(ep, &req) {
                Ok(ep.clone())
            } else {
                Err(refused(&EndpointError::Conflict(req.id.clone())))
            };
        }
        let plan = self.recorded.borrow().clone();
        let mut ep = resolve(&req, &plan, &attached).map_err(|e| refused(&e))?;
        let ns =
            netns::open_path(&ep.netns).map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
        // Recorded before it is made: a crash half-way leaves a record to clean up from.
        store::save(&self.instance, &ep).map_err(|e| failed("recording the endpoint", &e))?;
        let dp = dataplane::open(&plan, &self.instance);
        let made = match plumbing::create(&self.host, &plumbing_of(&ep, &ns)).await {
            Ok(mac) => {
                ep.mac = mac;
                dp.attach_endpoint(&ep.host_ifname)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = made.and_then(|()| store::save(&self.instance, &ep)) {
            let _ = dp.detach_endpoint(&ep.host_ifname);
            let _ = plumbing::delete(&self.host, &ep.host_ifname).await;
            let _ = store::remove(&self.instance, &ep.id);
            // A request that cannot be met (an interface name taken) is refused, not failed.
            return Err(match e.downcast_ref::<EndpointError>() {
                Some(refusal) => refused(refusal),
                None => failed(&format!("attaching endpoint {}", ep.id), &e),
            });
        }
        let mut list = attached.as_ref().clone();
        list.push(ep.clone());
        list.sort_by(|a, b| a.id.cmp(&b.id));
        self.attached.set(list);
        tracing::info!(endpoint = ep.id, address = %ep.address, "endpoint attached");
        self.wait_served(&ep).await?;
        Ok(ep)
    }

    /// Until the dataplane holds the endpoint's identity (nothing to wait for with the
    /// world's identity: that is what an address unknown to the policy has).
    async fn wait_served(&self, ep: &Endpoint) -> Result<(), ApiError> {
        if ep.identity == netctl_common::policy::ID_WORLD {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + SERVED_WITHIN;
        loop {
            let plan = self.effective.borrow().clone();
            let dp = dataplane::open(&plan, &self.instance);
            let installed = dp.has_identity(ep.address, ep.identity).unwrap_or(false);
            if installed {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError {
                    status: 504,
                    message: format!(
                        "endpoint {} is attached but its identity was not installed within {:?}",
                        ep.id, SERVED_WITHIN
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn delete(&self, id: &str) -> Result<Endpoint, ApiError> {
        let _one_at_a_time = self.lock.lock().await;
        let attached = self.attached.current();
        let ep = attached
            .iter()
            .find(|e| e.id == id)
            .cloned()
            .ok_or_else(|| refused(&EndpointError::NotFound(id.to_string())))?;
        let plan = self.recorded.borrow().clone();
        let dp = dataplane::open(&plan, &self.instance);
        dp.detach_endpoint(&ep.host_ifname)
            .map_err(|e| failed("unhooking the endpoint", &e))?;
        plumbing::delete(&self.host, &ep.host_ifname)
            .await
            .map_err(|e| failed("removing the endpoint's veth", &e))?;
        store::remove(&self.instance, id).map_err(|e| failed("forgetting the endpoint", &e))?;
        let list: Vec<Endpoint> = attached.iter().filter(|e| e.id != id).cloned().collect();
        self.attached.set(list);
        tracing::info!(endpoint = id, "endpoint detached");
        Ok(ep)
    }

    /// The topology's endpoints (described from the plan), then the attached ones.
    fn list(&self) -> Vec<EndpointSummary> {
        let plan = self.recorded.borrow().clone();
        let attached = self.attached.current();
        let topology = plan.endpoints.iter().map(|e| EndpointSummary {
            id: e.name.clone(),
            network: e.network.clone(),
            address: e.address,
            host_ifname: e.host_ifname.clone(),
            service: Some(e.service.clone()),
            owner: Owner::Topology,
            netns: crate::net::netns::path(&e.netns),
        });
        let others = attached.iter().map(|e| EndpointSummary {
            id: e.id.clone(),
            network: e.network.clone(),
            address: e.address,
            host_ifname: e.host_ifname.clone(),
            service: e.service.clone(),
            owner: e.owner.clone(),
            netns: e.netns.clone(),
        });
        topology.chain(others).collect()
    }

    fn get(&self, id: &str) -> Result<Value, ApiError> {
        let attached = self.attached.current();
        if let Some(ep) = attached.iter().find(|e| e.id == id) {
            return Ok(json!(ep));
        }
        self.list()
            .into_iter()
            .find(|e| e.id == id)
            .map(|e| json!(e))
            .ok_or_else(|| refused(&EndpointError::NotFound(id.to_string())))
    }
}

fn id_of(body: &Value) -> Result<String, ApiError> {
    body.get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ApiError::bad_request("missing the endpoint id"))
}

async fn register_routes(ctx: &AgentCtx, api: Api) {
    let create: Handler = {
        let api = api.clone();
        Arc::new(move |body: Value| {
            let api = api.clone();
            Box::pin(async move {
                let req: EndpointRequest = serde_json::from_value(body)
                    .map_err(|e| ApiError::bad_request(format!("not an endpoint request: {e}")))?;
                api.create(req).await.map(|ep| json!(ep))
            })
        })
    };
    let list: Handler = {
        let api = api.clone();
        Arc::new(move |_| {
            let api = api.clone();
            Box::pin(async move { Ok(json!(api.list())) })
        })
    };
    let get: Handler = {
        let api = api.clone();
        Arc::new(move |body: Value| {
            let api = api.clone();
            Box::pin(async move { api.get(&id_of(&body)?) })
        })
    };
    let delete: Handler = Arc::new(move |body: Value| {
        let api = api.clone();
        Box::pin(async move { api.delete(&id_of(&body)?).await.map(|ep| json!(ep)) })
    });
    ctx.routes.add("POST", "/v1/endpoints", create).await;
    ctx.routes.add("GET", "/v1/endpoints", list).await;
    ctx.routes.add("GET", "/v1/endpoints/{id}", get).await;
    ctx.routes.add("DELETE", "/v1/endpoints/{id}", delete).await;
}
