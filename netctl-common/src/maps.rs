//! Map names, capacities and pinning layout: the one place both sides take them from.
//!
//! Maps are pinned by name under `<pin root>/<instance>/maps/`, links under
//! `<pin root>/<instance>/links/`; see `bpf-maps.md`.

/// bpffs directory under which every netctl instance keeps its pins.
pub const PIN_ROOT: &str = "/sys/fs/bpf/netctl";

/// `FLOWS`: LRU hash, [`crate::FlowKey`] -> [`crate::FlowStats`].
pub const FLOWS: &str = "FLOWS";
pub const FLOWS_MAX_ENTRIES: u32 = 65_536;

/// `CT`: LRU hash, [`crate::FlowKey`] -> [`crate::CtEntry`]; two entries per connection.
pub const CT: &str = "CT";
/// Default capacity (entries, so half as many connections); `up` may size it differently.
pub const CT_MAX_ENTRIES: u32 = 262_144;

/// `LB_SERVICES`: hash, [`crate::ServiceKey`] -> [`crate::ServiceValue`].
pub const LB_SERVICES: &str = "LB_SERVICES";
pub const LB_SERVICES_MAX_ENTRIES: u32 = 131_072;
/// `LB_BACKENDS`: hash, backend id (`u32`) -> [`crate::Backend`].
pub const LB_BACKENDS: &str = "LB_BACKENDS";
pub const LB_BACKENDS_MAX_ENTRIES: u32 = 65_536;
/// `LB_BACKEND_ADDRS`: hash, [`crate::lb::BackendAddr`] -> backend id (`u32`); one entry
/// per `LB_BACKENDS` entry.
pub const LB_BACKEND_ADDRS: &str = "LB_BACKEND_ADDRS";
/// `LB_MAGLEV`: array of backend ids, `MAGLEV_TABLES` tables of `MAGLEV_M` cells.
pub const LB_MAGLEV: &str = "LB_MAGLEV";
/// `SOCK_REVNAT`: LRU hash, [`crate::sock::SockRevNatKey`] -> [`crate::sock::SockRevNatValue`].
pub const SOCK_REVNAT: &str = "SOCK_REVNAT";
pub const SOCK_REVNAT_MAX_ENTRIES: u32 = 65_536;

/// `DROPS`: per-CPU array, drop reason -> packets dropped for it.
pub const DROPS: &str = "DROPS";
/// `COUNTERS`: per-CPU array of event counters (`stats::CNT_*`).
pub const COUNTERS: &str = "COUNTERS";
/// `CONFIG`: array of `u32` settings (`CFG_*` indexes).
pub const CONFIG: &str = "CONFIG";
pub const CONFIG_MAX_ENTRIES: u32 = 8;
/// `CONFIG[CFG_FLAGS]`: bit set of `CFG_F_*`.
pub const CFG_FLAGS: u32 = 0;
/// `CONFIG[CFG_HOST_NETNS_LO/HI]`: the host network namespace's cookie, low and high
/// 32 bits. Socket-level LB serves host ports only to sockets of the host's namespace
/// (`localhost:8080`); a namespace standing in for another machine must not be redirected.
pub const CFG_HOST_NETNS_LO: u32 = 1;
pub const CFG_HOST_NETNS_HI: u32 = 2;
/// `CONFIG[CFG_POLICY_GEN]`: the generation of `IDENTITIES` and `POLICY` entries in force.
pub const CFG_POLICY_GEN: u32 = 3;
/// Send an event for every new connection (drops are always sent).
pub const CFG_F_FLOW_EVENTS: u32 = 0x2;
/// Socket-level load balancing on (connect/sendmsg go straight to a backend).
pub const CFG_F_SOCKET_LB: u32 = 0x1;

/// `IDENTITIES`: hash, [`crate::policy::IdentityKey`] -> identity (`u32`).
pub const IDENTITIES: &str = "IDENTITIES";
pub const IDENTITIES_MAX_ENTRIES: u32 = 65_536;
/// `POLICY`: hash, [`crate::policy::PolicyKey`] -> [`crate::policy::PolicyValue`].
pub const POLICY: &str = "POLICY";
pub const POLICY_MAX_ENTRIES: u32 = 262_144;
/// `RATE_LIMITS`: hash, [`crate::policy::RateLimitKey`] (source, destination identity) ->
/// [`crate::policy::RateLimit`].
pub const RATE_LIMITS: &str = "RATE_LIMITS";
pub const RATE_LIMITS_MAX_ENTRIES: u32 = 4096;
/// `RATE_BUCKETS`: LRU hash, [`crate::policy::BucketKey`] -> [`crate::policy::Bucket`].
pub const RATE_BUCKETS: &str = "RATE_BUCKETS";
pub const RATE_BUCKETS_MAX_ENTRIES: u32 = 65_536;
/// `EVENTS`: ring buffer of [`crate::event::Event`].
pub const EVENTS: &str = "EVENTS";
/// `DROP_PAIRS`: LRU hash, [`crate::event::DropPairKey`] -> packets dropped (`u64`).
pub const DROP_PAIRS: &str = "DROP_PAIRS";
pub const DROP_PAIRS_MAX_ENTRIES: u32 = 16_384;

/// Every map of the eBPF object. The loader pins exactly these (the object declares no
/// pinning itself, so tests can load it without bpffs) and refuses an object with others.
pub const ALL: &[&str] = &[
    FLOWS,
    CT,
    LB_SERVICES,
    LB_BACKENDS,
    LB_BACKEND_ADDRS,
    LB_MAGLEV,
    SOCK_REVNAT,
    DROPS,
    COUNTERS,
    CONFIG,
    IDENTITIES,
    POLICY,
    RATE_LIMITS,
    RATE_BUCKETS,
    EVENTS,
    DROP_PAIRS,
];

/// Bit of `skb->mark` the TC program sets on a packet it counted at the ingress of a
/// host-side veth, so that the egress hook of the destination veth does not count it again.
/// Chosen clear of kube-proxy's 0x4000/0x8000 and Cilium's 0x0F00 ranges.
pub const MARK_COUNTED: u32 = 0x0100_0000;
/// Bit of `skb->mark` set on a packet conntrack has seen (at a veth's or an uplink's
/// ingress), so that the egress hook tracks only what comes from the host or outside.
pub const MARK_TRACKED: u32 = 0x0200_0000;
/// Bit of `skb->mark` that netctl's own health probes carry (`SO_MARK` on their sockets):
/// a new connection from the host with it is tracked but never judged by the policy or a
/// rate limit, as kubelet's probes are not in Kubernetes. Only the host's own sockets can
/// carry it: the kernel scrubs the mark of a packet that leaves a namespace, so no
/// container can claim it.
pub const MARK_PROBE: u32 = 0x0800_0000;

/// Names of the TC programs in the eBPF object.
pub const PROG_TC_INGRESS: &str = "netctl_tc_ingress";
pub const PROG_TC_EGRESS: &str = "netctl_tc_egress";
pub const PROG_UPLINK_INGRESS: &str = "netctl_uplink_ingress";
pub const PROG_UPLINK_EGRESS: &str = "netctl_uplink_egress";
/// Names of the cgroup socket programs (socket-level load balancing).
pub const PROG_SOCK_CONNECT4: &str = "netctl_sock_connect4";
pub const PROG_SOCK_SENDMSG4: &str = "netctl_sock_sendmsg4";
pub const PROG_SOCK_RECVMSG4: &str = "netctl_sock_recvmsg4";
pub const PROG_SOCK_GETPEERNAME4: &str = "netctl_sock_getpeername4";
