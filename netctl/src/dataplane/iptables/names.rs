//! Chain names of one instance. Every chain netctl makes starts with `NCTL-<tag>-`, so
//! `down` finds all of them (and only them) in `iptables-save`, as kube-proxy's `KUBE-`
//! chains are found. iptables allows 28 characters per chain name: the tag is the instance
//! name when it has at most 8 characters, else a shortened form with a hash; per-service
//! chains end in 10 characters of a hash of what they serve, as kube-proxy's do.

use crate::{
    dataplane::lb::{BackendKey, FrontendKey},
    topology::Proto,
};

/// Longest chain name iptables accepts.
pub const MAX_CHAIN: usize = 28;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chains {
    /// `NCTL-<tag>-`
    base: String,
    instance: String,
}

impl Chains {
    pub fn for_instance(instance: &str) -> Self {
        let tag = if instance.len() <= 8 {
            instance.to_string()
        } else {
            let head: String = instance.chars().take(3).collect();
            format!("{head}{}", &hash32(instance)[..5])
        };
        Self {
            base: format!("NCTL-{tag}-"),
            instance: instance.to_string(),
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// True for every chain of this instance.
    pub fn owns(&self, chain: &str) -> bool {
        chain.starts_with(&self.base)
    }

    /// nat: one rule per frontend with backends (VIP:port -> its SVC chain); filter: one
    /// REJECT per frontend without.
    pub fn services(&self) -> String {
        format!("{}SERVICES", self.base)
    }

    /// nat: host port -> its EXT chain.
    pub fn host_ports(&self) -> String {
        format!("{}HOSTPORTS", self.base)
    }

    /// nat: marks a connection for masquerade.
    pub fn mark_masq(&self) -> String {
        format!("{}MARK-MASQ", self.base)
    }

    /// nat POSTROUTING: masquerade of marked connections and of the platform's traffic
    /// leaving through the uplink.
    pub fn postrouting(&self) -> String {
        format!("{}POSTROUTING", self.base)
    }

    /// nat: a frontend's backend choice (`statistic` rules -> SEP chains).
    pub fn svc(&self, fe: &FrontendKey) -> String {
        self.hashed(
            "SVC-",
            &format!("{}:{}/{}", fe.addr, fe.port, fe.proto.name()),
        )
    }

    /// nat: one backend of one frontend (DNAT).
    pub fn sep(&self, fe: &FrontendKey, be: &BackendKey) -> String {
        self.hashed(
            "SEP-",
            &format!(
                "{}:{}/{} {}:{}/{}",
                fe.addr,
                fe.port,
                fe.proto.name(),
                be.addr,
                be.port,
                be.proto.name()
            ),
        )
    }

    /// nat: a host port (masquerade from localhost, then the service's SVC chain).
    pub fn ext(&self, host_port: u16, proto: Proto) -> String {
        self.hashed("EXT-", &format!("{host_port}/{}", proto.name()))
    }

    /// The tag in every chain name (`NCTL-<tag>-`), for log prefixes and hashlimit names.
    pub fn tag(&self) -> &str {
        self.base
            .strip_prefix("NCTL-")
            .and_then(|t| t.strip_suffix('-'))
            .unwrap_or(&self.base)
    }

    /// filter, from FORWARD, INPUT and OUTPUT (new connections): the platform's traffic
    /// (in or out of one of its bridges) goes on to [`Self::policy`].
    /// filter: the host-firewall accept chain of the instance, on both dataplanes
    /// (`net::host_firewall`). Deliberately outside `NCTL-<tag>-`, so that it is not
    /// [`Self::owns`]'s: it outlives a change of dataplane, and the iptables dataplane's
    /// clean-up leaves it alone.
    pub fn host_forward(&self) -> String {
        format!("NCTL-FWD-{}", self.tag())
    }

    pub fn firewall(&self) -> String {
        format!("{}FIREWALL", self.base)
    }

    /// filter: the policy's entry point (the controller writes it): verdicts, then rate
    /// limits.
    pub fn policy(&self) -> String {
        format!("{}POLICY", self.base)
    }

    /// filter: new connections by destination identity -> its `POL` chain.
    pub fn verdict(&self) -> String {
        format!("{}VERDICT", self.base)
    }

    /// filter: new connections by destination identity -> its `RL` chain.
    pub fn limit(&self) -> String {
        format!("{}LIMIT", self.base)
    }

    /// filter, never jumped to: the address -> identity table, for people and `netctl
    /// policy`.
    pub fn identities(&self) -> String {
        format!("{}IDENTITIES", self.base)
    }

    /// filter: one destination identity's policy: by source identity to `SRC`, else `ANY`.
    pub fn pol(&self, dst: u32) -> String {
        self.hashed("POL-", &format!("policy to {dst}"))
    }

    /// filter: the entries naming one source for one destination.
    pub fn src(&self, src: u32, dst: u32) -> String {
        self.hashed("SRC-", &format!("policy from {src} to {dst}"))
    }

    /// filter: the entries for any source of one destination.
    pub fn any(&self, dst: u32) -> String {
        self.hashed("ANY-", &format!("policy from any to {dst}"))
    }

    /// filter: one destination identity's rate limit.
    pub fn rl(&self, dst: u32) -> String {
        self.hashed("RL-", &format!("limit to {dst}"))
    }

    /// filter: the limit for any source of one destination, when the world has one of
    /// its own (so the world's dispatch can come last).
    pub fn rla(&self, dst: u32) -> String {
        self.hashed("RLA-", &format!("limit from any to {dst}"))
    }

    /// filter: the limit of its own a named source has for one destination
    /// (`[[policy.rate_limits]] from`).
    pub fn rlf(&self, src: u32, dst: u32) -> String {
        self.hashed("RLF-", &format!("own limit from {src} to {dst}"))
    }

    /// filter: ICMP that conntrack could not track (a reply without its request, a type
    /// it does not know): errors pass, the rest is judged as new.
    pub fn icmp(&self) -> String {
        format!("{}ICMP", self.base)
    }

    /// filter: the bucket one source identity shares for one destination (`per =
    /// "service"`).
    pub fn rls(&self, src: u32, dst: u32) -> String {
        self.hashed("RLS-", &format!("limit from {src} to {dst}"))
    }

    /// filter: log, then drop, a connection rule `n` denies.
    pub fn deny_rule(&self, n: u16) -> String {
        format!("{}DENY-R{n}", self.base)
    }

    /// filter: log, then drop, a connection a default-deny destination refuses.
    pub fn deny_default(&self) -> String {
        format!("{}DENY-DEFAULT", self.base)
    }

    /// filter: log, then drop, a connection over rate limit `n` (1-based, file order).
    pub fn deny_rate(&self, n: usize) -> String {
        format!("{}DENY-RL{n}", self.base)
    }

    fn hashed(&self, kind: &str, what: &str) -> String {
        let h = hash32(&format!("{} {what}", self.instance));
        format!("{}{kind}{}", self.base, &h[..10])
    }
}

/// FNV-1a (64 bits) of `text`, as 13 base32 characters (RFC 4648 alphabet).
pub fn hash32(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    (0..13)
        .map(|i| ALPHABET[((h >> (i * 5)) & 31) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, net::Ipv4Addr};

    use super::*;

    fn fe(i: u32) -> FrontendKey {
        FrontendKey {
            addr: Ipv4Addr::from(0x0a60_0000 + i),
            port: 80,
            proto: Proto::Tcp,
        }
    }

    #[test]
    fn names_fit_iptables_and_say_whose_they_are() {
        for instance in ["t07", "nc", "averyveryverylonginstance"] {
            let c = Chains::for_instance(instance);
            let be = BackendKey {
                addr: Ipv4Addr::new(10, 0, 2, 10),
                port: 8080,
                proto: Proto::Tcp,
            };
            for name in [
                c.services(),
                c.host_ports(),
                c.mark_masq(),
                c.postrouting(),
                c.svc(&fe(1)),
                c.sep(&fe(1), &be),
                c.ext(8080, Proto::Tcp),
                c.firewall(),
                c.policy(),
                c.verdict(),
                c.limit(),
                c.identities(),
                c.pol(u32::MAX),
                c.src(u32::MAX, u32::MAX),
                c.any(u32::MAX),
                c.rl(u32::MAX),
                c.rls(u32::MAX, u32::MAX),
                c.rla(u32::MAX),
                c.rlf(u32::MAX, u32::MAX),
                c.icmp(),
                c.deny_rule(u16::MAX),
                c.deny_default(),
                c.deny_rate(65_535),
            ] {
                assert!(name.len() <= MAX_CHAIN, "{name} is {} long", name.len());
                assert!(c.owns(&name), "{name}");
            }
        }
        assert_eq!(Chains::for_instance("t07").tag(), "t07");
        assert_eq!(
            Chains::for_instance("averyveryverylonginstance")
                .tag()
                .len(),
            8
        );
        let t07 = Chains::for_instance("t07");
        assert_eq!(t07.services(), "NCTL-t07-SERVICES");
        assert!(!t07.owns("NCTL-t070-SERVICES"));
        assert!(!t07.owns("KUBE-SERVICES"));
    }

    #[test]
    fn per_frontend_names_are_stable_and_distinct_at_scale() {
        let c = Chains::for_instance("bn");
        assert_eq!(c.svc(&fe(1)), Chains::for_instance("bn").svc(&fe(1)));
        let names: HashSet<String> = (0..40_000).map(|i| c.svc(&fe(i))).collect();
        assert_eq!(names.len(), 40_000);
        assert_ne!(
            Chains::for_instance("a").svc(&fe(1)),
            Chains::for_instance("b").svc(&fe(1))
        );
    }
}
