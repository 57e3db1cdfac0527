//! Test hooks, named by `NETCTL_FAILPOINT`: `fail-after:N` makes `up`'s creation after the
//! N-th resource fail; `abort-after:N` kills the process right after creating the next
//! resource, before the journal says it is done (as a crash would), so tests can check
//! rollback and recovery. Any other value names one failpoint by itself, such as
//! `postgres-bootstrap`.

use anyhow::anyhow;

pub const FAILPOINT_ENV: &str = "NETCTL_FAILPOINT";

/// Whether `NETCTL_FAILPOINT` names the failpoint `name` (one that is not a count of
/// resources, such as `postgres-bootstrap`).
pub fn is(name: &str) -> bool {
    std::env::var(FAILPOINT_ENV).is_ok_and(|v| v == name)
}

/// A failpoint that counts the resources `up` creates.
pub enum ResourceFailpoint {
    None,
    FailAfter(usize),
    AbortAfter(usize),
}

impl ResourceFailpoint {
    pub fn from_env() -> Self {
        let Ok(spec) = std::env::var(FAILPOINT_ENV) else {
            return Self::None;
        };
        let parse = |n: &str| n.parse::<usize>().ok();
        match spec.split_once(':') {
            Some(("fail-after", n)) => parse(n).map_or(Self::None, Self::FailAfter),
            Some(("abort-after", n)) => parse(n).map_or(Self::None, Self::AbortAfter),
            _ => Self::None,
        }
    }

    /// Called before creating a resource, with how many this run created so far.
    pub fn before_create(&self, created: usize) -> anyhow::Result<()> {
        match *self {
            Self::FailAfter(n) if created == n => {
                Err(anyhow!("injected failure ({FAILPOINT_ENV}=fail-after:{n})"))
            }
            _ => Ok(()),
        }
    }

    /// Called after creating a resource (with the count from before it), before the journal
    /// marks it done.
    pub fn after_create(&self, created: usize) {
        if matches!(*self, Self::AbortAfter(n) if created == n) {
            std::process::abort();
        }
    }
}
