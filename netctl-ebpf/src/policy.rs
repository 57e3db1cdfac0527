//! Identities, policy verdicts and per-source rate limits for new connections. See
//! `netctl_common::policy` for the lookup order and the map layouts.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap},
};
use netctl_common::{
    maps,
    policy::{
        ANY_PORT, ANY_PROTO, Bucket, BucketKey, ID_ANY, ID_WORLD, IdentityKey, PolicyKey,
        PolicyValue, RateLimit, RateLimitKey, VERDICT_DENY,
    },
};

#[map(name = "IDENTITIES")]
static IDENTITIES: HashMap<IdentityKey, u32> =
    HashMap::with_max_entries(maps::IDENTITIES_MAX_ENTRIES, 0);

#[map(name = "POLICY")]
static POLICY: HashMap<PolicyKey, PolicyValue> =
    HashMap::with_max_entries(maps::POLICY_MAX_ENTRIES, 0);

#[map(name = "RATE_LIMITS")]
static RATE_LIMITS: HashMap<RateLimitKey, RateLimit> =
    HashMap::with_max_entries(maps::RATE_LIMITS_MAX_ENTRIES, 0);

#[map(name = "RATE_BUCKETS")]
static RATE_BUCKETS: LruHashMap<BucketKey, Bucket> =
    LruHashMap::with_max_entries(maps::RATE_BUCKETS_MAX_ENTRIES, 0);

/// The identity of `addr`: a service's, the host's, or the world's.
#[inline(always)]
pub fn identity(addr: [u8; 4], generation: u32) -> u32 {
    let key = IdentityKey { addr, generation };
    // SAFETY: plain read of a map value.
    unsafe { IDENTITIES.get(key) }.copied().unwrap_or(ID_WORLD)
}

/// Whether a new connection from `src` to `dst` on `port`/`proto` is allowed: the most
/// specific entry decides; no entry allows.
#[inline(always)]
pub fn allowed(generation: u32, src: u32, dst: u32, port: u16, proto: u8) -> bool {
    let keys = [
        PolicyKey::new(generation, src, dst, port, proto),
        PolicyKey::new(generation, src, dst, ANY_PORT, proto),
        PolicyKey::new(generation, src, dst, ANY_PORT, ANY_PROTO),
        PolicyKey::new(generation, ID_ANY, dst, port, proto),
        PolicyKey::new(generation, ID_ANY, dst, ANY_PORT, proto),
        PolicyKey::new(generation, ID_ANY, dst, ANY_PORT, ANY_PROTO),
    ];
    for key in keys {
        // SAFETY: plain read of a map value.
        if let Some(v) = unsafe { POLICY.get(key) } {
            return v.verdict != VERDICT_DENY;
        }
    }
    true
}

/// Whether a new connection to `dst` exceeds its source's rate limit in `generation` (and
/// so must be dropped): the limits of the generation the rules came from, never a mix. The
/// limit naming the source identity beats the one for any source. Takes a token when it
/// does not.
#[inline(always)]
pub fn rate_limited(generation: u32, src_addr: [u8; 4], src: u32, dst: u32, now: u64) -> bool {
    let own = RateLimitKey::new(generation, src, dst);
    let any = RateLimitKey::new(generation, ID_ANY, dst);
    // SAFETY: plain reads of map values.
    let limit = match unsafe { RATE_LIMITS.get(own) } {
        Some(l) => *l,
        None => match unsafe { RATE_LIMITS.get(any) } {
            Some(l) => *l,
            None => return false,
        },
    };
    let key = BucketKey::of(&limit, src_addr, src, dst);
    match RATE_BUCKETS.get_ptr_mut(key) {
        // SAFETY: `b` points into a map value valid for this program run. Two CPUs may
        // race on one bucket; the result errs by at most a token, which a rate limit of
        // new connections tolerates.
        Some(b) => !unsafe { (*b).take(&limit, now) },
        None => {
            let mut fresh = Bucket::full(&limit, now);
            let ok = fresh.take(&limit, now);
            let _ = RATE_BUCKETS.insert(key, fresh, 0);
            !ok
        }
    }
}
