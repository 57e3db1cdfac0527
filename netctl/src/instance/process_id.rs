//! The identity of a process of an instance (its controller, a supervised service) that
//! survives pid reuse, so that a recycled pid is never mistaken for (or signalled as) one
//! of them.

use std::fs;

/// A process identity that survives pid reuse: pid + start time (clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: u32,
    pub start_time: u64,
}

impl ProcessId {
    /// The identity of a live process (zombies, which only wait to be reaped, are dead).
    pub fn of(pid: u32) -> Option<Self> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name (which may hold spaces): state is
        // field 3, start time field 22.
        let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
        let state = fields.next()?;
        if state == "Z" || state == "X" {
            return None;
        }
        let start_time = fields.nth(18)?.parse().ok()?;
        Some(Self { pid, start_time })
    }

    pub fn current() -> Option<Self> {
        Self::of(std::process::id())
    }

    pub fn is_alive(&self) -> bool {
        Self::of(self.pid).is_some_and(|now| now == *self)
    }
}
