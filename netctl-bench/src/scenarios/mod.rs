//! One module per benchmark.

pub mod all;
pub mod control;
pub mod crosscheck;
pub mod http;
pub mod lb;
pub mod packet;
pub mod scale;

/// For the quick runs in the test suite: a fresh output directory, with `NETCTL_BIN`
/// pointing at the `netctl` built next to the test binary. Without root the test fails
/// (as the integration tests' `require_root!`), or is skipped (`None`) with
/// NETCTL_SKIP_ROOT_TESTS=1.
#[cfg(test)]
pub fn test_env(name: &str) -> Option<std::path::PathBuf> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var("NETCTL_SKIP_ROOT_TESTS").as_deref() == Ok("1"),
            "the quick benchmarks bring up platforms: run them as root, or set \
             NETCTL_SKIP_ROOT_TESTS=1 to skip them"
        );
        eprintln!("skipped: needs root");
        return None;
    }
    crate::report::mark_quick();
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
