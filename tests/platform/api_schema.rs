//! The OpenAPI files of `api/` held against the running reference platform with
//! schemathesis (PyPI, installed by `cargo xtask setup`): the agent, product, order,
//! gateway and registry, each at its own address from the host, with valid and invalid
//! (negative) inputs. A 5xx, an answer whose status the file does not list, or whose body
//! or content type is not the documented one, fails the test; so does a bad input that is
//! accepted.
//!
//! Short in the suite (`NETCTL_SCHEMA_EXAMPLES`, default 10 cases per operation and
//! phase, a fixed seed, about a minute); by hand, e.g.
//! `NETCTL_SCHEMA_EXAMPLES=500 cargo test -p netctl --test platform api_schema`, for a long
//! run (not under nextest, which stops a test after 5 minutes).

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use common::{Platform, Slot};
use netctl::topology::{DEFAULT_TOPOLOGY, Topology};

/// schemathesis's seed: the same cases every run, so that a failure reproduces
/// (`NETCTL_TEST_SEED` picks another, as for the other generated tests).
const SEED: u64 = 14;
/// Cases per operation (per generation phase) unless `NETCTL_SCHEMA_EXAMPLES` says.
const SHORT_EXAMPLES: u32 = 10;
/// What schemathesis checks on each answer.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,negative_data_rejection";

#[test]
fn the_agent_and_the_shop_answer_as_their_openapi_files_say() {
    require_root!();
    let st = schemathesis();
    let slot = Slot::acquire();
    let mut topology = Topology::parse(DEFAULT_TOPOLOGY).expect("default parses");
    common::relocate(&mut topology, slot.block());
    // From the host, every schemathesis request is a new connection to the gateway at
    // times: the per-source limit on new connections (100 a minute) would drop some of
    // them. The limits are tested by the policy tests; here they are only in the way.
    topology.policy.rate_limits.clear();
    let platform = Platform::from_topology(&slot, &topology);
    platform.up_ok();

    let agent = UnixForward::start(&netctl::instance::agent_client::socket_path(
        &slot.instance(),
    ));
    let at = |name: &str, port: u16| format!("http://{}:{port}", platform.endpoint(name).address);
    // The registry last: what schemathesis registers there from the host (alive for up
    // to 300 s) would be discovered by the gateway as product or order instances.
    let runs = [
        // The event stream never ends; a drain changes the load balancing of whatever
        // instance it names: both stay out. Endpoint creation cannot make anything here
        // (no generated network or namespace file exists: 400) and a DELETE reaches only
        // attached endpoints, of which this platform has none: both are kept in.
        Run {
            spec: "agent.yaml",
            url: agent.url(),
            exclude: &["/v1/events", "/v1/lb/drain"],
        },
        Run {
            spec: "product.yaml",
            url: at("product-1", 5000),
            exclude: &[],
        },
        Run {
            spec: "order.yaml",
            url: at("order", 5000),
            exclude: &[],
        },
        Run {
            spec: "gateway.yaml",
            url: at("gateway", 3000),
            exclude: &[],
        },
        Run {
            spec: "registry.yaml",
            url: at("registry", 8500),
            exclude: &[],
        },
    ];
    let mut failed = Vec::new();
    for run in &runs {
        let started = Instant::now();
        let out = run.command(&st).output().expect("running schemathesis");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "schemathesis {} against {}: {} in {:.1}s\n{text}",
            run.spec,
            run.url,
            if out.status.success() { "ok" } else { "FAILED" },
            started.elapsed().as_secs_f64(),
        );
        if !out.status.success() {
            failed.push(format!("api/{} against {}", run.spec, run.url));
        }
    }
    assert!(
        failed.is_empty(),
        "these do not answer as their OpenAPI file says (schemathesis's report of each is above): {}",
        failed.join("; ")
    );
}

/// One schemathesis run: a file of `api/` against a base URL.
struct Run {
    spec: &'static str,
    url: String,
    /// Paths left out (see where the runs are listed).
    exclude: &'static [&'static str],
}

impl Run {
    fn command(&self, st: &Path) -> Command {
        let examples = std::env::var("NETCTL_SCHEMA_EXAMPLES")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(SHORT_EXAMPLES);
        let seed = std::env::var("NETCTL_TEST_SEED")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(SEED);
        let report =
            std::env::temp_dir().join(format!("netctl-schemathesis-{}", std::process::id()));
        let mut cmd = Command::new(st);
        cmd.arg("run")
            .arg(api_dir().join(self.spec))
            .args(["--url", &self.url])
            .args(["--mode", "all"])
            .args(["--checks", CHECKS])
            .args(["--max-examples", &examples.to_string()])
            .args(["--seed", &seed.to_string()])
            .args(["--workers", "1"])
            .args(["--request-timeout", "20"])
            .args(["--generation-database", "none"])
            .arg("--no-color")
            .arg("--report-dir")
            .arg(report)
            // Its own files (a cache of found cases) go nowhere near the worktree.
            .current_dir(std::env::temp_dir());
        for path in self.exclude {
            cmd.args(["--exclude-path", path]);
        }
        cmd
    }
}

/// `api/` at the repository's root.
fn api_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate is in the workspace")
        .join("api")
}

/// The schemathesis `cargo xtask setup` installs (its venv under the cargo home), or
/// `NETCTL_SCHEMATHESIS`. Missing is a failure, not a skip: a suite that checked nothing
/// must not pass.
fn schemathesis() -> PathBuf {
    let st = std::env::var_os("NETCTL_SCHEMATHESIS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("CARGO_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
                .map(|home| home.join("netctl-schemathesis/bin/st"))
        })
        .expect("neither CARGO_HOME nor HOME is set");
    let works = Command::new(&st)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        works,
        "schemathesis is missing ({} does not run): run `cargo xtask setup`, which installs it",
        st.display()
    );
    st
}

/// A TCP port on 127.0.0.1 forwarding each connection to a unix socket: schemathesis
/// speaks TCP only, the agent listens on its socket. Stops with the test (its runtime).
struct UnixForward {
    port: u16,
    _rt: tokio::runtime::Runtime,
}

impl UnixForward {
    fn start(socket: &Path) -> UnixForward {
        let rt = common::http::runtime();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("binding the forwarder");
        let port = listener.local_addr().expect("local address").port();
        let socket = socket.to_path_buf();
        rt.spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let socket = socket.clone();
                tokio::spawn(async move {
                    if let Ok(mut unix) = tokio::net::UnixStream::connect(&socket).await {
                        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                    }
                });
            }
        });
        UnixForward { port, _rt: rt }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
