//! Builds the eBPF object from `../netctl-ebpf` and puts it in OUT_DIR for
//! `include_bytes_aligned!`. Set NETCTL_EBPF_OBJECT to use a prebuilt object instead.

#[path = "../xtask/src/ebpf.rs"]
mod ebpf;

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let root = manifest.parent().map(PathBuf::from).unwrap_or_default();
    let out = PathBuf::from(env::var("OUT_DIR").unwrap_or_default()).join("netctl.bpf.o");
    for p in [
        "netctl-ebpf/src",
        "netctl-ebpf/Cargo.toml",
        "netctl-ebpf/Cargo.lock",
        "netctl-ebpf/.cargo/config.toml",
        "netctl-common/src",
        "xtask/src/ebpf.rs",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=NETCTL_EBPF_OBJECT");

    let object = match env::var_os("NETCTL_EBPF_OBJECT") {
        Some(prebuilt) => PathBuf::from(prebuilt),
        None => {
            // One eBPF target dir for every profile of the workspace, so that debug, release
            // and clippy builds share the (35 s cold) nightly build.
            let target_dir = env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"))
                .join("bpf");
            match ebpf::build(&root, &target_dir) {
                Ok(path) => path,
                Err(e) => {
                    println!("cargo:warning={e}");
                    std::process::exit(1);
                }
            }
        }
    };
    if let Err(e) = fs::copy(&object, &out) {
        println!(
            "cargo:warning=copying {} to {}: {e}",
            object.display(),
            out.display()
        );
        std::process::exit(1);
    }
}
