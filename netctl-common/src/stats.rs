//! Drop reasons and dataplane counters (`DROPS`, `COUNTERS`: per-CPU arrays).

/// Why the dataplane dropped a packet. The numbers are part of the map format: never
/// renumber, only add.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A new connection to a frontend whose service has no usable backend.
    NoBackend = 1,
    /// A new connection the conntrack table had no room for.
    CtFull = 2,
    /// A packet too short or malformed to parse.
    Malformed = 3,
    /// Rewriting the packet (NAT, checksums) failed.
    NatFailed = 4,
    /// A new connection the policy does not allow.
    PolicyDenied = 5,
    /// A new connection over its source's rate limit.
    RateLimited = 6,
    /// An established connection the policy no longer allows (after a policy change).
    PolicyRevoked = 7,
    /// A new connection whose tuple, seen from the backend, is another live connection's:
    /// one client port used both through a VIP and straight to its backend.
    NatCollision = 8,
}

impl DropReason {
    /// Every reason, in number order.
    pub const ALL: [DropReason; 8] = [
        DropReason::NoBackend,
        DropReason::CtFull,
        DropReason::Malformed,
        DropReason::NatFailed,
        DropReason::PolicyDenied,
        DropReason::RateLimited,
        DropReason::PolicyRevoked,
        DropReason::NatCollision,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::NoBackend => "no-backend",
            DropReason::CtFull => "conntrack-full",
            DropReason::Malformed => "malformed",
            DropReason::NatFailed => "nat-failed",
            DropReason::PolicyDenied => "policy-denied",
            DropReason::RateLimited => "rate-limited",
            DropReason::PolicyRevoked => "policy-revoked",
            DropReason::NatCollision => "nat-collision",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    pub fn from_u32(n: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|r| *r as u32 == n)
    }
}

/// Size of `DROPS` (index = reason number).
pub const DROP_REASONS_MAX: u32 = 64;

/// Indexes of `COUNTERS`.
pub const CNT_CT_CREATED: u32 = 0;
/// A packet of an established connection found no conntrack entry: a TCP packet without
/// SYN, or a UDP packet from a service backend's address and port (a reply). Its
/// connection's entry was evicted (table pressure) or expired, and a NATed connection
/// breaks (the reply leaves un-NATed).
pub const CNT_CT_MISS_ESTABLISHED: u32 = 1;
/// Entries found expired on lookup and replaced.
pub const CNT_CT_EXPIRED: u32 = 2;
/// New connections load-balanced by the TC programs.
pub const CNT_LB_TC: u32 = 3;
/// Connections load-balanced at connect()/sendmsg() by the socket programs.
pub const CNT_LB_SOCK: u32 = 4;
/// Events that did not fit in the `EVENTS` ring buffer (the reader was too slow).
pub const CNT_EVENTS_LOST: u32 = 5;
/// Connections re-checked against a changed policy.
pub const CNT_POLICY_RECHECKED: u32 = 6;
/// New connections of netctl's own health probes (`MARK_PROBE`), let in unjudged.
pub const CNT_PROBE_EXEMPT: u32 = 7;
pub const COUNTERS_MAX: u32 = 16;

pub const COUNTER_NAMES: [(u32, &str); 8] = [
    (CNT_CT_CREATED, "ct_created"),
    (CNT_CT_MISS_ESTABLISHED, "ct_miss_established"),
    (CNT_CT_EXPIRED, "ct_expired"),
    (CNT_LB_TC, "lb_tc"),
    (CNT_LB_SOCK, "lb_sock"),
    (CNT_EVENTS_LOST, "events_lost"),
    (CNT_POLICY_RECHECKED, "policy_rechecked"),
    (CNT_PROBE_EXEMPT, "probe_exempt"),
];
