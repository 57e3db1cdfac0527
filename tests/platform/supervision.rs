//! Supervision of any command (not only the built-ins): environment, health check,
//! crash loops with backoff, programs that cannot start, `up` saying which service is not
//! healthy and why, a changed file restarting exactly what changed, and `down` leaving no
//! process.

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::common;

use std::time::{Duration, Instant};

use common::{NETCTL, Platform, Slot, assert_success, block_on, snapshot::Snapshot};
use netctl::{
    instance::agent_client as api,
    supervisor::{ServiceState, ServiceStatus, status::from_status, stop},
    topology::Topology,
};

fn topology(slot: &Slot, with_broken: bool, web_env: &str) -> Topology {
    let net = slot.block().network();
    let [a, b, _, _] = net.octets();
    let web_addr = format!("{a}.{b}.0.5");
    let mut text = format!(
        r#"
[networks.app]
subnet = "{a}.{b}.0.0/24"

[services.web]
network = "app"
address = "{web_addr}"
ports = [8080]
command = ["{NETCTL}", "serve", "registry"]
env = {{ LISTEN = "{web_addr}:8080", MARK = "{web_env}" }}
health = {{ check = "http", path = "/health", interval = "500ms", timeout = "200ms", retries = 2 }}
"#
    );
    if with_broken {
        text.push_str(
            r#"
[services.flaky]
network = "app"
ports = [9000]
command = ["/bin/sh", "-c", "echo about to fail; exit 3"]
health = { check = "tcp" }

[services.missing]
network = "app"
command = ["/nonexistent/program", "--flag"]
"#,
        );
    }
    Topology::parse(&text).expect("test topology parses")
}

fn services(slot: &Slot) -> Vec<ServiceStatus> {
    let v = block_on(api::get(&slot.instance(), "/v1/status")).expect("controller answers");
    from_status(&v).expect("services on the board")
}

fn find(slot: &Slot, name: &str) -> ServiceStatus {
    services(slot)
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no {name}"))
}

/// The most restarts the supervisor's backoff (0.25 s, doubling up to 10 s) allows in
/// `elapsed`, plus one for the start itself: a slow machine makes fewer, never more.
fn restarts_within(elapsed: Duration) -> u32 {
    let (mut t, mut delay, mut n) = (Duration::ZERO, Duration::from_millis(250), 0);
    while t + delay <= elapsed {
        t += delay;
        n += 1;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
    n + 1
}

#[test]
fn commands_are_supervised_and_failures_are_explained() {
    require_root!();
    let slot = Slot::acquire();
    let before = Snapshot::take(&slot.prefix());
    {
        let platform = Platform::from_topology(&slot, &topology(&slot, true, "one"));
        let file = platform.file.to_str().unwrap().to_string();
        let started = Instant::now();
        let out = slot.netctl(&["up", "-f", &file, "--wait-timeout", "4"]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "up fails while services are broken"
        );
        // It waited its 4 s for health before giving up (it gives up: the test ends).
        assert!(started.elapsed() >= Duration::from_secs(4));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not every service is healthy after 4s"),
            "{err}"
        );
        assert!(
            err.contains("exited with status 3 (netctl logs flaky)"),
            "{err}"
        );
        assert!(
            err.contains(
                "\"/nonexistent/program\" is not an executable program (netctl logs missing)"
            ),
            "{err}"
        );
        assert!(!err.contains("web:"), "web is healthy: {err}");
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("web") && l.contains("healthy")),
            "{table}"
        );

        // The platform stays up; the crash loop backs off.
        let flaky = find(&slot, "flaky");
        assert!(flaky.restarts >= 2, "{flaky:?}");
        let most = restarts_within(started.elapsed());
        assert!(
            flaky.restarts <= most,
            "restarts back off: {flaky:?}, at most {most} in {:?}",
            started.elapsed()
        );
        let web = find(&slot, "web");
        assert_eq!(web.state, ServiceState::Healthy);
        let health = web.health.as_ref().expect("checked");
        assert!(health.ok && health.latency_ms > 0.0, "{health:?}");
        let logs = slot.netctl(&["logs", "flaky"]);
        let text = String::from_utf8_lossy(&logs.stdout);
        assert!(
            text.contains("about to fail"),
            "the program's output: {text}"
        );
        assert!(text.contains("exited with status 3; restarting"), "{text}");

        // Following a log prints what is written from then on.
        let mut follow = std::process::Command::new(NETCTL)
            .args(["--prefix", &slot.prefix(), "logs", "flaky", "-f", "-n", "0"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = follow.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut seen = Vec::new();
        while !seen.iter().any(|l: &String| l.contains("about to fail")) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => seen.push(l),
                Err(_) => panic!("logs -f printed no new run of flaky: {seen:?}"),
            }
        }
        let _ = follow.kill();
        let _ = follow.wait();

        // The environment given in the file reached the process, in its namespace.
        let web_pid = web.pid.expect("web runs");
        let environ = std::fs::read(format!("/proc/{web_pid}/environ")).unwrap();
        let environ = String::from_utf8_lossy(&environ);
        assert!(environ.split('\0').any(|v| v == "MARK=one"), "{environ}");
        let inode = stop::netns_inode(&platform.endpoint("web").netns).unwrap();
        assert!(stop::processes_in(inode).iter().any(|p| p.pid == web_pid));

        // Fix the file: the broken services go, web restarts with its new environment.
        let fixed = Platform::from_topology(&slot, &topology(&slot, false, "two"));
        let out = slot.netctl(&["up", "-f", fixed.file.to_str().unwrap()]);
        assert_success(&out, "up with the fixed file");
        let names: Vec<String> = services(&slot).into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["web"]);
        let web2 = find(&slot, "web");
        assert_ne!(web2.pid, Some(web_pid), "changed env: restarted");
        assert!(!netctl::instance::ProcessId::of(web_pid).is_some_and(|p| p.is_alive()));
        let environ = std::fs::read(format!("/proc/{}/environ", web2.pid.unwrap())).unwrap();
        assert!(
            String::from_utf8_lossy(&environ)
                .split('\0')
                .any(|v| v == "MARK=two")
        );

        // The same file again changes nothing, not even the process.
        let out = slot.netctl(&["up", "-f", fixed.file.to_str().unwrap()]);
        assert_success(&out, "up again");
        assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to change"));
        assert_eq!(find(&slot, "web").pid, web2.pid);

        let pid = web2.pid.unwrap();
        assert_success(&slot.netctl(&["down"]), "down");
        assert!(
            netctl::instance::ProcessId::of(pid).is_none(),
            "web stopped"
        );
        drop(fixed);
        drop(platform);
    }
    before.assert_same(&Snapshot::take(&slot.prefix()));
}
