//! Endpoints attached through the agent's API (`netctl endpoints add`): a namespace the
//! platform did not make (a container's, here one the test makes) joins a network as a
//! member of a service, is served like the topology's instances (reachable, a backend of
//! the VIP, named), survives a controller restart, and goes with `endpoints rm` and
//! `down`. Bad requests are refused with nothing made. On both dataplanes.

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::common;

use std::{collections::HashSet, net::Ipv4Addr, process::Output, time::Duration};

use common::{
    Platform, Slot, assert_success, block_on, kill_controller,
    snapshot::Snapshot,
    traffic::{NamedServer, greetings},
    wait_for,
};
use netctl::{
    endpoint::Endpoint,
    net::{netlink::Netlink, netns},
    topology::TopologyBuilder,
};
use serde_json::Value;

const PORT: u16 = 7000;
const DB_PORT: u16 = 7100;

fn topology(mode: &str) -> TopologyBuilder {
    TopologyBuilder::new()
        .network("front", "10.0.1.0/24")
        .network("back", "10.0.2.0/24")
        .service("client", |s| s.network("front").address("10.0.1.10"))
        .service("web", |s| s.network("back").address("10.0.2.10").tcp(PORT))
        .service("db", |s| {
            s.network("back").address("10.0.2.20").tcp(DB_PORT)
        })
        .default_deny(&["db"])
        .allow(&["web"], "db", &[&DB_PORT.to_string()])
        .mode(mode)
}

/// A namespace made outside netctl (as a container runtime makes one), removed on drop.
struct Foreign {
    name: String,
}

impl Foreign {
    fn create(slot: &Slot, tag: &str) -> Foreign {
        let name = format!("{}{tag}", slot.prefix());
        netns::create(&name).expect("a namespace of the test's own");
        Foreign { name }
    }

    fn path(&self) -> String {
        netns::path(&self.name).display().to_string()
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        let _ = netns::delete(&self.name);
    }
}

fn link_exists(name: &str) -> bool {
    block_on(async {
        Netlink::current()
            .expect("netlink")
            .link(name)
            .await
            .expect("link lookup")
            .is_some()
    })
}

fn endpoints(slot: &Slot) -> Vec<Value> {
    let out = slot.netctl(&["endpoints", "--json"]);
    assert_success(&out, "netctl endpoints");
    serde_json::from_slice::<Value>(&out.stdout)
        .expect("json")
        .as_array()
        .expect("a list")
        .clone()
}

fn ids(slot: &Slot) -> Vec<String> {
    let mut v: Vec<String> = endpoints(slot)
        .iter()
        .map(|e| e["id"].as_str().unwrap_or("").to_string())
        .collect();
    v.sort();
    v
}

fn active_backends(slot: &Slot) -> HashSet<Ipv4Addr> {
    let out = slot.netctl(&["services", "--json", "--service", "web"]);
    assert_success(&out, "netctl services");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    v["frontends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["port"] == PORT && f["host_port"] != true)
        .flat_map(|f| f["backends"].as_array().cloned().unwrap_or_default())
        .filter(|b| b["state"] == "active")
        .filter_map(|b| b["addr"].as_str().and_then(|a| a.parse().ok()))
        .collect()
}

fn refused(out: &Output, what: &str, needle: &str) {
    assert!(!out.status.success(), "{what} must be refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "{what}: expected {needle:?} in {err}");
}

fn attach_serve_restart_detach(mode: &str) {
    require_root!();
    let slot = Slot::acquire();
    let before = Snapshot::take(&slot.prefix());
    {
        let platform = Platform::build(&slot, topology(mode));
        platform.up_ok();
        let web = platform.endpoint("web");
        let _web_server = NamedServer::start(&web.netns, web.address, PORT, "web");
        let db = platform.endpoint("db");
        let _db_server = NamedServer::start(&db.netns, db.address, DB_PORT, "db");
        let client = platform.endpoint("client").netns.clone();
        let vip = platform.plan.service("web").expect("web").vip;
        let back = platform
            .plan
            .networks
            .iter()
            .find(|n| n.name == "back")
            .expect("back")
            .clone();
        wait_for("web active", Duration::from_secs(10), || {
            active_backends(&slot).len() == 1
        });

        let c1 = Foreign::create(&slot, "c1");
        let out = slot.netctl(&[
            "endpoints",
            "add",
            "c1",
            "--netns",
            &c1.path(),
            "--network",
            "back",
            "--service",
            "web",
            "--json",
        ]);
        assert_success(&out, "endpoints add");
        let ep: Endpoint = serde_json::from_slice(&out.stdout).expect("an endpoint");
        assert!(back.subnet.contains(&ep.address), "{ep:?}");
        assert_eq!(ep.gateway, back.gateway);
        assert!(
            ep.mac.is_some(),
            "the answer names the interface's MAC: {ep:?}"
        );
        assert!(link_exists(&ep.host_ifname), "the veth is on the host");

        // Served when the answer comes: its identity is web's, which may reach db (which
        // no one else may); reachable from another tier through the dataplane.
        let to_db = greetings(&c1.name, db.address, DB_PORT, 1);
        assert_eq!(to_db, vec![Ok("db".to_string())], "c1 has web's identity");
        let _c1_server = NamedServer::start(&c1.name, ep.address, PORT, "c1");
        let direct = greetings(&client, ep.address, PORT, 3);
        assert!(
            direct.iter().all(|g| g.as_deref() == Ok("c1")),
            "{direct:?}"
        );

        // A backend of web's VIP beside the topology's instance.
        wait_for("c1 becomes a web backend", Duration::from_secs(15), || {
            active_backends(&slot) == HashSet::from([web.address, ep.address])
        });
        let seen: HashSet<String> = greetings(&client, vip, PORT, 40)
            .into_iter()
            .map(|g| g.expect("greeting through the VIP"))
            .collect();
        assert_eq!(seen, HashSet::from(["web".into(), "c1".into()]));

        // Listed with its owner; named in the flows.
        let listed = endpoints(&slot);
        let c1_listed = listed.iter().find(|e| e["id"] == "c1").expect("c1 listed");
        assert_eq!(c1_listed["owner"]["kind"], "api");
        assert_eq!(c1_listed["service"], "web");
        assert!(
            listed
                .iter()
                .any(|e| e["id"] == "web" && e["owner"]["kind"] == "topology")
        );
        if mode == "ebpf" {
            let flows = common::flows(&slot);
            assert!(
                flows.iter().any(|f| f.to_string().contains("\"c1\"")),
                "a flow names c1: {flows:?}"
            );
        }

        // The same request again is the same endpoint; the same id otherwise is refused.
        let again = slot.netctl(&[
            "endpoints",
            "add",
            "c1",
            "--netns",
            &c1.path(),
            "--network",
            "back",
            "--service",
            "web",
            "--json",
        ]);
        assert_success(&again, "repeated add");
        let same: Endpoint = serde_json::from_slice(&again.stdout).expect("an endpoint");
        assert_eq!(same, ep);
        refused(
            &slot.netctl(&[
                "endpoints",
                "add",
                "c1",
                "--netns",
                &c1.path(),
                "--network",
                "front",
            ]),
            "the same id elsewhere",
            "already exists",
        );

        // A new controller adopts it: still listed, still served.
        kill_controller(&slot);
        platform.up_ok();
        assert!(ids(&slot).contains(&"c1".to_string()), "adopted");
        let direct = greetings(&client, ep.address, PORT, 3);
        assert!(
            direct.iter().all(|g| g.as_deref() == Ok("c1")),
            "{direct:?}"
        );
        wait_for("c1 still a backend", Duration::from_secs(15), || {
            active_backends(&slot).contains(&ep.address)
        });

        // Detached: veth gone, backend gone, the namespace (not ours) stays.
        assert_success(&slot.netctl(&["endpoints", "rm", "c1"]), "endpoints rm");
        assert!(!link_exists(&ep.host_ifname), "the veth is gone");
        assert!(!ids(&slot).contains(&"c1".to_string()));
        wait_for("c1 no longer a backend", Duration::from_secs(15), || {
            active_backends(&slot) == HashSet::from([web.address])
        });
        assert!(netns::exists(&c1.name), "the runtime's namespace stays");
        refused(
            &slot.netctl(&["endpoints", "rm", "c1"]),
            "rm of an unknown id",
            "no endpoint",
        );

        // `down` removes what is still attached.
        let c2 = Foreign::create(&slot, "c2");
        let out = slot.netctl(&[
            "endpoints",
            "add",
            "c2",
            "--netns",
            &c2.path(),
            "--network",
            "front",
            "--json",
        ]);
        assert_success(&out, "add c2");
        let c2_ep: Endpoint = serde_json::from_slice(&out.stdout).expect("an endpoint");
        assert_eq!(c2_ep.service, None);
        let to_db = greetings(&c2.name, db.address, DB_PORT, 1);
        assert!(
            to_db[0].is_err(),
            "an endpoint of no service is the world: {to_db:?}"
        );
        assert_success(&slot.netctl(&["down"]), "down");
        assert!(!link_exists(&c2_ep.host_ifname), "down detached c2");
    }
    before.assert_same(&Snapshot::take(&slot.prefix()));
}

#[test]
fn an_attached_namespace_is_served_like_an_instance_on_ebpf() {
    attach_serve_restart_detach("ebpf");
}

#[test]
fn an_attached_namespace_is_served_like_an_instance_on_iptables() {
    attach_serve_restart_detach("iptables");
}

#[test]
fn bad_endpoint_requests_are_refused_and_make_nothing() {
    require_root!();
    let slot = Slot::acquire();
    let platform = Platform::build(&slot, topology("ebpf"));
    platform.up_ok();
    let c1 = Foreign::create(&slot, "c1");
    let web = platform.endpoint("web").address;
    let add = |extra: &[&str]| {
        let mut args = vec!["endpoints", "add"];
        args.extend_from_slice(extra);
        slot.netctl(&args)
    };
    let path = c1.path();
    let web_text = web.to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["x", "--netns", &path, "--network", "nope"],
            "not a network of this platform",
        ),
        (
            vec![
                "x",
                "--netns",
                &path,
                "--network",
                "back",
                "--service",
                "nope",
            ],
            "not a service",
        ),
        (
            vec![
                "x",
                "--netns",
                &path,
                "--network",
                "back",
                "--address",
                "192.0.2.1",
            ],
            "not a host address",
        ),
        (
            vec![
                "x",
                "--netns",
                &path,
                "--network",
                "back",
                "--address",
                &web_text,
            ],
            "already in use",
        ),
        (
            vec!["x/y", "--netns", &path, "--network", "back"],
            "invalid endpoint",
        ),
        (
            vec!["x", "--netns", "/proc/self/status", "--network", "back"],
            "not a network namespace",
        ),
        (
            vec!["x", "--netns", "/nonexistent/ns", "--network", "back"],
            "not a network namespace",
        ),
        (
            vec![
                "x",
                "--netns",
                &path,
                "--network",
                "back",
                "--label",
                "novalue",
            ],
            "KEY=VALUE",
        ),
        // Every namespace has `lo`: the veth's inner end cannot take that name.
        (
            vec!["x", "--netns", &path, "--network", "back", "--ifname", "lo"],
            "already has an interface lo",
        ),
    ];
    for (args, needle) in cases {
        refused(&add(&args), &format!("{args:?}"), needle);
    }
    let ours = format!("{}x", slot.prefix());
    let links =
        block_on(async { Netlink::current().expect("netlink").links().await }).expect("links");
    assert!(
        !links.iter().any(|l| l.name.starts_with(&ours)),
        "no endpoint link was made"
    );
    assert_eq!(
        ids(&slot),
        ["client", "db", "web"].map(String::from).to_vec()
    );
    let records = netctl::endpoint::store::load_all(&slot.instance()).expect("records");
    assert!(records.is_empty(), "nothing recorded: {records:?}");
}
