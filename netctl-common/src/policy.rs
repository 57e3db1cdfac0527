//! Network policy: identities (`IDENTITIES`), compiled rules (`POLICY`) and rate limits
//! (`RATE_LIMITS`, `RATE_BUCKETS`).
//!
//! A packet without ports (ICMP, any other IP protocol) is judged with port `ANY_PORT`
//! and its own protocol, so only entries for any port decide it; ICMP errors are not
//! judged (they belong to another connection).
//!
//! Every address the dataplane meets has a numeric *identity*: each service (all its
//! replicas and its VIP) has one, the host has one, and anything else is the world. A new
//! connection's verdict is looked up by (source identity, destination identity, port,
//! protocol), most specific entry first:
//!
//! 1. `{src, dst, port, proto}`  2. `{src, dst, *, proto}`  3. `{src, dst, *, *}`
//! 4. `{*, dst, port, proto}`    5. `{*, dst, *, proto}`    6. `{*, dst, *, *}`
//!
//! and no entry means allow. The controller compiles the topology's rules into these
//! entries. Both maps carry a generation in their keys: the controller writes a complete new
//! generation, then switches `CONFIG[CFG_POLICY_GEN]`, so a policy change is atomic.

/// Wildcard identity in policy keys ("any source").
pub const ID_ANY: u32 = 0;
/// The host itself (its bridge gateway addresses and uplink addresses).
pub const ID_HOST: u32 = 1;
/// Anything that is neither the host nor a service of the platform.
pub const ID_WORLD: u32 = 2;
/// Service identities are `ID_SERVICE_BASE + service id`.
pub const ID_SERVICE_BASE: u32 = 256;

/// Wildcard protocol / port in policy keys.
pub const ANY_PROTO: u8 = 0;
pub const ANY_PORT: u16 = 0;

pub const VERDICT_ALLOW: u8 = 1;
pub const VERDICT_DENY: u8 = 2;

/// Key of `IDENTITIES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct IdentityKey {
    pub addr: [u8; 4],
    pub generation: u32,
}
crate::assert_size!(IdentityKey, 8);

/// Key of `POLICY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PolicyKey {
    pub generation: u32,
    pub src: u32,
    pub dst: u32,
    /// Host byte order; `ANY_PORT` = any.
    pub port: u16,
    /// `ANY_PROTO` = any.
    pub proto: u8,
    pub _pad: u8,
}
crate::assert_size!(PolicyKey, 16);

impl PolicyKey {
    pub const fn new(generation: u32, src: u32, dst: u32, port: u16, proto: u8) -> Self {
        Self {
            generation,
            src,
            dst,
            port,
            proto,
            _pad: 0,
        }
    }
}

/// Value of `POLICY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyValue {
    /// `VERDICT_ALLOW` or `VERDICT_DENY`.
    pub verdict: u8,
    pub _pad: u8,
    /// Number of the topology rule that produced the entry (1-based; 0 = a default).
    pub rule: u16,
}
crate::assert_size!(PolicyValue, 4);

/// Key of `RATE_LIMITS`: the limit of new connections from `src` to `dst` in policy
/// generation `generation`. Limits carry the generation as `PolicyKey` does, so one write
/// of `CONFIG[CFG_POLICY_GEN]` switches rules and limits together. `src` is a source
/// identity, or `ID_ANY` for the limit of every source without one of its own: the
/// dataplane looks up `{generation, src, dst}` first, then `{generation, ID_ANY, dst}`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RateLimitKey {
    pub generation: u32,
    pub src: u32,
    pub dst: u32,
}
crate::assert_size!(RateLimitKey, 12);

impl RateLimitKey {
    pub const fn new(generation: u32, src: u32, dst: u32) -> Self {
        Self {
            generation,
            src,
            dst,
        }
    }
}

/// Value of `RATE_LIMITS`: a token bucket per source for new connections to that
/// destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RateLimit {
    /// Tokens per second, in thousandths (100/minute = 1667).
    pub rate_milli: u32,
    /// Bucket size in tokens.
    pub burst: u32,
    /// `RL_BY_ADDRESS` or `RL_BY_IDENTITY`.
    pub by: u8,
    pub _pad: [u8; 3],
}
crate::assert_size!(RateLimit, 12);

/// One bucket per source address.
pub const RL_BY_ADDRESS: u8 = 0;
/// One bucket per source identity (all replicas of a service share it).
pub const RL_BY_IDENTITY: u8 = 1;
/// Nanotokens per token: buckets count in billionths so that slow rates refill smoothly.
pub const NANO_TOKENS: u64 = 1_000_000_000;

/// Key of `RATE_BUCKETS`: whose bucket (`by` says whether `source` is an address or an
/// identity, so an address and an identity with the same 32 bits never share one) for
/// which destination identity.
///
/// No generation: a bucket outlives a policy change. A limit that is unchanged keeps its
/// tokens (a reload must not hand every source a fresh burst); a changed limit takes the
/// bucket over, its tokens capped at the new burst on the next connection and refilled at
/// the new rate. A limit that changes `by` uses other buckets.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct BucketKey {
    /// Source address (as a `u32` of its wire bytes) or source identity, as `by` says.
    pub source: u32,
    pub dst: u32,
    /// `RL_BY_ADDRESS` or `RL_BY_IDENTITY`.
    pub by: u8,
    pub _pad: [u8; 3],
}
crate::assert_size!(BucketKey, 12);

impl BucketKey {
    /// The bucket of source address `addr` (wire bytes) for `dst`.
    pub const fn by_address(addr: [u8; 4], dst: u32) -> Self {
        Self {
            source: u32::from_ne_bytes(addr),
            dst,
            by: RL_BY_ADDRESS,
            _pad: [0; 3],
        }
    }

    /// The bucket of source identity `identity` for `dst`.
    pub const fn by_identity(identity: u32, dst: u32) -> Self {
        Self {
            source: identity,
            dst,
            by: RL_BY_IDENTITY,
            _pad: [0; 3],
        }
    }

    /// The bucket `limit` counts a new connection from `src_addr` (identity `src`) to
    /// `dst` in: per identity or per address, as the limit says.
    #[inline(always)]
    pub const fn of(limit: &RateLimit, src_addr: [u8; 4], src: u32, dst: u32) -> Self {
        if limit.by == RL_BY_IDENTITY {
            Self::by_identity(src, dst)
        } else {
            Self::by_address(src_addr, dst)
        }
    }
}

/// Value of `RATE_BUCKETS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Bucket {
    /// Tokens left, in `NANO_TOKENS`.
    pub nano_tokens: u64,
    /// `CLOCK_BOOTTIME` of the last refill.
    pub refilled_ns: u64,
}
crate::assert_size!(Bucket, 16);

impl Bucket {
    /// Refills for the time since the last refill and takes one token if there is one.
    /// Shared by the dataplane and the unit tests so both agree on the arithmetic.
    #[inline(always)]
    pub fn take(&mut self, limit: &RateLimit, now_ns: u64) -> bool {
        let cap = limit.burst as u64 * NANO_TOKENS;
        // Capped so the product below cannot overflow (a full bucket needs no more).
        let mut elapsed = now_ns.saturating_sub(self.refilled_ns);
        if elapsed > 1_000_000_000_000 {
            elapsed = 1_000_000_000_000;
        }
        let refill = elapsed * limit.rate_milli as u64 / 1000;
        let tokens = self.nano_tokens + refill;
        self.nano_tokens = if tokens > cap { cap } else { tokens };
        self.refilled_ns = now_ns;
        if self.nano_tokens >= NANO_TOKENS {
            self.nano_tokens -= NANO_TOKENS;
            true
        } else {
            false
        }
    }

    /// A full bucket (a source's first connection).
    pub const fn full(limit: &RateLimit, now_ns: u64) -> Self {
        Self {
            nano_tokens: limit.burst as u64 * NANO_TOKENS,
            refilled_ns: now_ns,
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `#[repr(C)]` integers and byte arrays with explicit padding.
    unsafe impl aya::Pod for super::IdentityKey {}
    unsafe impl aya::Pod for super::PolicyKey {}
    unsafe impl aya::Pod for super::PolicyValue {}
    unsafe impl aya::Pod for super::RateLimit {}
    unsafe impl aya::Pod for super::RateLimitKey {}
    unsafe impl aya::Pod for super::BucketKey {}
    unsafe impl aya::Pod for super::Bucket {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_minute: u32, burst: u32) -> RateLimit {
        RateLimit {
            rate_milli: per_minute * 1000 / 60,
            burst,
            by: RL_BY_ADDRESS,
            _pad: [0; 3],
        }
    }

    #[test]
    fn rate_limit_and_bucket_key_fields_sit_where_bpf_maps_md_says() {
        use core::mem::offset_of;
        assert_eq!(offset_of!(RateLimitKey, generation), 0);
        assert_eq!(offset_of!(RateLimitKey, src), 4);
        assert_eq!(offset_of!(RateLimitKey, dst), 8);
        assert_eq!(offset_of!(BucketKey, source), 0);
        assert_eq!(offset_of!(BucketKey, dst), 4);
        assert_eq!(offset_of!(BucketKey, by), 8);
        assert_eq!(offset_of!(BucketKey, _pad), 9);
    }

    #[test]
    fn an_address_and_an_identity_with_the_same_bits_are_different_buckets() {
        let id = ID_SERVICE_BASE + 1;
        let addr = id.to_ne_bytes();
        let (a, i) = (
            BucketKey::by_address(addr, 7),
            BucketKey::by_identity(id, 7),
        );
        assert_eq!(a.source, i.source, "the same 32 bits");
        assert_ne!(a, i);
        assert_eq!((a.by, i.by), (RL_BY_ADDRESS, RL_BY_IDENTITY));
        assert_eq!((a._pad, i._pad), ([0; 3], [0; 3]), "padding is zero");
        // The limit decides which one a connection counts in.
        let mut per_service = limit(60, 1);
        per_service.by = RL_BY_IDENTITY;
        assert_eq!(BucketKey::of(&per_service, addr, id, 7), i);
        assert_eq!(BucketKey::of(&limit(60, 1), addr, 99, 7), a);
        assert_eq!(
            RateLimitKey::new(3, ID_ANY, 7),
            RateLimitKey {
                generation: 3,
                src: ID_ANY,
                dst: 7
            }
        );
    }

    #[test]
    fn a_bucket_lets_the_burst_through_then_the_rate() {
        let l = limit(100, 20);
        let mut b = Bucket::full(&l, 0);
        let allowed = (0..200).filter(|i| b.take(&l, i * 5_000_000)).count(); // 200 in 1 s
        // 20 at once, then 1.67 per second refilled during that second.
        assert_eq!(allowed, 21);
        // After a minute idle: full again (capped at the burst).
        let later = 61 * NANO_TOKENS;
        let again = (0..100).filter(|_| b.take(&l, later)).count();
        assert_eq!(again, 20);
    }

    #[test]
    fn slow_rates_refill_exactly_over_time() {
        let l = limit(60, 1); // one per second
        let mut b = Bucket::full(&l, 0);
        assert!(b.take(&l, 0));
        assert!(!b.take(&l, NANO_TOKENS / 2));
        assert!(b.take(&l, NANO_TOKENS + 1));
    }
}
