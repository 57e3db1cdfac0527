//! One module per benchmark.

pub mod all;
pub mod control;
pub mod crosscheck;
pub mod http;
pub mod lb;
pub mod packet;
pub mod scale;

/// For the quick runs in the test suite: `None` (skip) without root; else a fresh output
/// directory, with `NETCTL_BIN` pointing at the `netctl` built next to the test binary.
#[cfg(test)]
pub fn test_env(name: &str) -> Option<std::path::PathBuf> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return None;
    }
    let exe = std::env::current_exe().ok()?;
    let netctl = exe.parent()?.parent()?.join("netctl");
    // SAFETY: every test sets the same value before it reads the environment.
    unsafe { std::env::set_var("NETCTL_BIN", &netctl) };
    let dir = std::env::temp_dir().join(format!("netctl-bench-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    Some(dir)
}

/// The files a report wrote, by extension.
#[cfg(test)]
pub fn written(dir: &std::path::Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.path()
                .extension()
                .and_then(|x| x.to_str())
                .map(str::to_string)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}
