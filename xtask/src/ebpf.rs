//! Building the eBPF object. Shared, with `#[path]`, by `cargo xtask build-ebpf` and by
//! netctl's build script, so there is exactly one way the object gets built.
//! Only `std` here: a build script has no other dependencies.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// Target triple of the eBPF crate (also set in its `.cargo/config.toml`).
pub const BPF_TARGET: &str = "bpfel-unknown-none";

/// Builds `netctl-ebpf` (release) with the nightly toolchain into `target_dir` and returns
/// the path of the object.
pub fn build(workspace_root: &Path, target_dir: &Path) -> Result<PathBuf, String> {
    let crate_dir = workspace_root.join("netctl-ebpf");
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--release",
        "--target",
        BPF_TARGET,
    ])
    .arg("--target-dir")
    .arg(target_dir)
    .current_dir(&crate_dir);
    // Settings of an outer cargo (the build script's) must not leak into the nightly build.
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTUP_TOOLCHAIN")
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS"
        {
            cmd.env_remove(key);
        }
    }
    let status = cmd.status().map_err(|e| {
        format!(
            "running `rustup run nightly cargo build` in {}: {e}",
            crate_dir.display()
        )
    })?;
    if !status.success() {
        return Err(format!(
            "building the eBPF object failed ({status}). It needs the nightly toolchain with \
             rust-src and bpf-linker: run `cargo xtask setup`."
        ));
    }
    Ok(target_dir
        .join(BPF_TARGET)
        .join("release")
        .join("netctl-ebpf"))
}
