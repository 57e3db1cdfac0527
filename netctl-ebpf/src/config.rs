//! The `CONFIG` array: settings the controller writes (flags, host netns cookie, policy
//! generation).

use aya_ebpf::{macros::map, maps::Array};
use netctl_common::maps::{self, CFG_FLAGS, CFG_POLICY_GEN};

#[map(name = "CONFIG")]
pub static CONFIG: Array<u32> = Array::with_max_entries(maps::CONFIG_MAX_ENTRIES, 0);

#[inline(always)]
pub fn get(index: u32) -> u32 {
    CONFIG.get(index).copied().unwrap_or(0)
}

#[inline(always)]
pub fn flag(bit: u32) -> bool {
    get(CFG_FLAGS) & bit != 0
}

/// The generation of identities and policy in force.
#[inline(always)]
pub fn policy_generation() -> u32 {
    get(CFG_POLICY_GEN)
}
