//! `cargo xtask setup`: a fresh machine of this kind has stable + nightly Rust and nothing
//! else netctl needs. Each step checks first and does nothing when already done; only work
//! actually done is reported.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, anyhow, bail};

/// Debian packages netctl, its tests and benchmarks use.
pub const PACKAGES: &[&str] = &[
    "iproute2", // ip, for people and for test diagnostics (netctl itself uses netlink)
    "iptables", // the iptables dataplane and its baseline
    "nftables", // masquerade table of each instance
    "bpftool",  // inspecting programs, maps and TCX links
    "sudo",     // the README's `sudo netctl up`
    "curl",
    "conntrack", // clearing kernel conntrack entries when a dataplane changes
    "sockperf",  // the standard tool the benchmark cross-checks its load generator with
    // The reference platform's data stores and edge, run in their namespaces by netctl.
    "redis-server",      // product cache (also creates the `redis` user)
    "postgresql",        // catalog and orders (initdb, postgres, psql; the `postgres` user)
    "nginx-light",       // edge load balancer in front of the gateway
    "wrk",               // cross-check of `cargo xtask bench http`
    "fonts-dejavu-core", // text of PNG charts (netctl report)
    "graphviz",          // netctl topology --format svg; tests parse the DOT with `dot`
    "chromium",          // netctl report --pdf; tests render the HTML report headless
    // Docker Engine beside the platform (its FORWARD DROP); the tests start their own
    // dockerd, the package's service is not started here.
    "docker.io",
    "python3-venv", // the virtual environment schemathesis is installed in (below)
];

/// schemathesis (PyPI), which the platform test `api_schema` runs against the services
/// with the OpenAPI files of `api/`. Pinned: its checks and options change between releases.
pub const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// bpf-linker release that fits the nightly toolchain (see ../shared/TOOLCHAIN.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run(_root: &Path) -> anyhow::Result<()> {
    debian_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    nextest()?;
    schemathesis()?;
    Ok(())
}

/// Where schemathesis lives: its own virtual environment under the cargo home (Debian's
/// Python refuses `pip install` outside one). tests/platform/api_schema.rs looks here too.
pub fn schemathesis_venv() -> anyhow::Result<PathBuf> {
    Ok(cargo_home()?.join("netctl-schemathesis"))
}

/// schemathesis in its venv, at [`SCHEMATHESIS_VERSION`]. The check is a file read (the
/// marker written after a successful install) and the executable's presence, so a setup
/// with nothing to do starts no Python.
fn schemathesis() -> anyhow::Result<()> {
    let venv = schemathesis_venv()?;
    let marker = venv.join("netctl.installed");
    let wanted = format!("schemathesis=={SCHEMATHESIS_VERSION}");
    if venv.join("bin/st").is_file()
        && fs::read_to_string(&marker).is_ok_and(|m| m.trim() == wanted)
    {
        return Ok(());
    }
    eprintln!(
        "setup: installing {wanted} from PyPI into {}",
        venv.display()
    );
    quiet(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    quiet(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(&wanted),
    )?;
    fs::write(&marker, &wanted).with_context(|| format!("writing {}", marker.display()))
}

fn cargo_home() -> anyhow::Result<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .ok_or_else(|| anyhow!("neither CARGO_HOME nor HOME is set"))
}

/// `cargo xtask test` runs the suite with nextest (its test groups and timeouts).
pub fn nextest_works() -> bool {
    Command::new("cargo")
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn nextest() -> anyhow::Result<()> {
    if nextest_works() {
        return Ok(());
    }
    eprintln!("setup: installing cargo-nextest (a few minutes)");
    quiet(Command::new("cargo").args(["install", "--quiet", "--locked", "cargo-nextest"]))
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    quiet(as_root("apt-get")?.args(["update", "-qq"]))?;
    quiet(
        as_root("apt-get")?
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
}

/// `program` run as root: directly when we are root, through sudo otherwise.
fn as_root(program: &str) -> anyhow::Result<Command> {
    let is_root = output(Command::new("id").arg("-u"))?.trim() == "0";
    if is_root {
        return Ok(Command::new(program));
    }
    if !Command::new("sudo")
        .args(["-n", "true"])
        .status()
        .is_ok_and(|s| s.success())
    {
        bail!("installing Debian packages needs root or password-less sudo");
    }
    let mut cmd = Command::new("sudo");
    cmd.arg("--preserve-env=DEBIAN_FRONTEND").arg(program);
    Ok(cmd)
}

/// rust-src for `-Z build-std=core`; rustfmt and clippy for `cargo xtask lint`.
fn nightly_rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    let missing: Vec<&str> = ["rust-src", "rustfmt", "clippy"]
        .into_iter()
        .filter(|c| !installed.lines().any(|l| l.starts_with(c)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "setup: adding {} to the nightly toolchain",
        missing.join(", ")
    );
    quiet(
        Command::new("rustup")
            .args(["component", "add", "--toolchain", "nightly"])
            .args(&missing),
    )
}

/// bpf-linker links eBPF objects with LLVM; it must use the same LLVM as the nightly rustc
/// that produces the bitcode, so it is built against the nightly's own `libLLVM.so`.
fn bpf_linker() -> anyhow::Result<()> {
    let sysroot = PathBuf::from(
        output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))?
            .trim(),
    );
    let version = output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .ok_or_else(|| anyhow!("`rustc +nightly -vV` does not say its LLVM version"))?
        .to_string();
    let libllvm = fs::read_dir(sysroot.join("lib"))
        .with_context(|| format!("reading {}", sysroot.join("lib").display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so"))
            })
        })
        .ok_or_else(|| {
            anyhow!(
                "the nightly toolchain ships no libLLVM.so in {}",
                sysroot.display()
            )
        })?;

    let cargo_home = cargo_home()?;
    let prefix = cargo_home.join("netctl-llvm");
    let marker = prefix.join("bpf-linker.built-for");
    let wanted = format!("{} {}", BPF_LINKER_VERSION, libllvm.display());
    let works = Command::new("bpf-linker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works && fs::read_to_string(&marker).is_ok_and(|m| m.trim() == wanted) {
        return Ok(());
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} (about a minute)"
    );
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    // `libLLVM.so` for the build, and the library's own SONAME for running bpf-linker
    // outside a rustup-launched rustc (which would otherwise set LD_LIBRARY_PATH for it).
    let soname = libllvm.file_name().map(PathBuf::from).unwrap_or_default();
    for name in [PathBuf::from("libLLVM.so"), soname] {
        let link = lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {} to {}", link.display(), libllvm.display()))?;
    }
    quiet(
        Command::new("cargo")
            .args([
                "install",
                "--quiet",
                "--locked",
                "--force",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix)
            .env_remove("RUSTUP_TOOLCHAIN"),
    )?;
    fs::write(&marker, wanted).with_context(|| format!("writing {}", marker.display()))
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command, showing its output only if it fails.
fn quiet(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
