//! Writing and reading the policy maps (`IDENTITIES`, `POLICY`, `RATE_LIMITS`). A new
//! policy is a new *generation*: all its entries (identities, rules and rate limits) are
//! written first, then `CONFIG[CFG_POLICY_GEN]` switches to it in one write, then, once
//! every program that read the old generation has finished, the old entries go. The
//! dataplane never sees half a policy: not new rules with old limits, nor an entry removed
//! under a packet still judged by the old generation.

use std::net::Ipv4Addr;

use anyhow::Context;
use aya::maps::{Array, HashMap, Map, MapData};
use netctl_common::{
    maps::{CFG_POLICY_GEN, CONFIG, IDENTITIES, POLICY, RATE_LIMITS},
    policy::{IdentityKey, PolicyKey, PolicyValue, RateLimit, RateLimitKey},
};

use super::Pins;
use crate::policy::compile::{Compiled, EntryKey, EntryValue, LimitKey};

pub struct PolicyMaps {
    identities: HashMap<MapData, IdentityKey, u32>,
    policy: HashMap<MapData, PolicyKey, PolicyValue>,
    rate_limits: HashMap<MapData, RateLimitKey, RateLimit>,
    config: Array<MapData, u32>,
}

impl PolicyMaps {
    pub fn open(pins: &Pins) -> anyhow::Result<Self> {
        let open = |name: &str| -> anyhow::Result<MapData> {
            MapData::from_pin(pins.map(name))
                .with_context(|| format!("opening pinned map {name} (is the platform up?)"))
        };
        Self::from_maps(
            Map::HashMap(open(IDENTITIES)?),
            Map::HashMap(open(POLICY)?),
            Map::HashMap(open(RATE_LIMITS)?),
            Map::Array(open(CONFIG)?),
        )
    }

    pub fn from_maps(
        identities: Map,
        policy: Map,
        rate_limits: Map,
        config: Map,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            identities: HashMap::try_from(identities).context("IDENTITIES")?,
            policy: HashMap::try_from(policy).context("POLICY")?,
            rate_limits: HashMap::try_from(rate_limits).context("RATE_LIMITS")?,
            config: Array::try_from(config).context("CONFIG")?,
        })
    }

    /// The generation in force.
    pub fn generation(&self) -> anyhow::Result<u32> {
        self.config
            .get(&CFG_POLICY_GEN, 0)
            .context("reading CONFIG")
    }

    /// Installs identities, compiled rules and rate limits as a new generation and switches
    /// to it. Returns the new generation. When the kernel refuses an entry (a full map),
    /// nothing of the new generation stays and the old one remains in force.
    pub fn install(
        &mut self,
        identities: &[(Ipv4Addr, u32)],
        compiled: &Compiled,
    ) -> anyhow::Result<u32> {
        let old = self.generation()?;
        let new = old.wrapping_add(1);
        let written = self.write(new, identities, compiled).and_then(|()| {
            self.config
                .set(CFG_POLICY_GEN, new, 0)
                .context("switching the policy generation")
        });
        if let Err(e) = written {
            self.remove_other_generations(old);
            return Err(e);
        }
        // A packet that read the old generation just before the switch may still be
        // looking up its entries: let every running program finish before they go.
        wait_for_running_programs();
        self.remove_other_generations(new);
        Ok(new)
    }

    /// Writes generation `new`'s entries, not yet in force.
    fn write(
        &mut self,
        new: u32,
        identities: &[(Ipv4Addr, u32)],
        compiled: &Compiled,
    ) -> anyhow::Result<()> {
        for (addr, id) in identities {
            self.identities
                .insert(
                    IdentityKey {
                        addr: addr.octets(),
                        generation: new,
                    },
                    id,
                    0,
                )
                .context("writing IDENTITIES")?;
        }
        for (k, v) in &compiled.entries {
            let key = PolicyKey::new(new, k.src, k.dst, k.port, k.proto);
            let value = PolicyValue {
                verdict: v.verdict,
                _pad: 0,
                rule: v.rule,
            };
            self.policy
                .insert(key, value, 0)
                .context("writing POLICY")?;
        }
        for (key, limit) in limit_entries(new, compiled) {
            self.rate_limits
                .insert(key, limit, 0)
                .context("writing RATE_LIMITS")?;
        }
        Ok(())
    }

    /// Deletes entries of every generation but `keep` (the old one, or a crashed install's).
    /// Buckets (`RATE_BUCKETS`) have no generation and stay: see `BucketKey`.
    fn remove_other_generations(&mut self, keep: u32) {
        let ids: Vec<IdentityKey> =
            other_generations(self.identities.keys(), keep, |k| k.generation);
        for k in ids {
            let _ = self.identities.remove(&k);
        }
        let rules: Vec<PolicyKey> = other_generations(self.policy.keys(), keep, |k| k.generation);
        for k in rules {
            let _ = self.policy.remove(&k);
        }
        let limits: Vec<RateLimitKey> =
            other_generations(self.rate_limits.keys(), keep, |k| k.generation);
        for k in limits {
            let _ = self.rate_limits.remove(&k);
        }
    }

    /// The compiled policy as the kernel has it (current generation).
    pub fn read(&self) -> anyhow::Result<Installed> {
        let generation = self.generation()?;
        let mut compiled = Compiled::default();
        for (k, v) in self.policy.iter().filter_map(Result::ok) {
            if k.generation == generation {
                compiled.entries.insert(
                    EntryKey {
                        src: k.src,
                        dst: k.dst,
                        port: k.port,
                        proto: k.proto,
                    },
                    EntryValue {
                        verdict: v.verdict,
                        rule: v.rule,
                    },
                );
            }
        }
        for (k, limit) in self.rate_limits.iter().filter_map(Result::ok) {
            if k.generation == generation {
                compiled.rate_limits.insert(
                    LimitKey {
                        src: k.src,
                        dst: k.dst,
                    },
                    limit,
                );
            }
        }
        let identities = self
            .identities
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| k.generation == generation)
            .map(|(k, id)| (Ipv4Addr::from(k.addr), id))
            .collect();
        Ok(Installed {
            generation,
            compiled,
            identities,
        })
    }
}

/// What the policy maps hold for the generation in force.
pub struct Installed {
    pub generation: u32,
    pub compiled: Compiled,
    pub identities: Vec<(Ipv4Addr, u32)>,
}

/// The `RATE_LIMITS` entries of `compiled` in `generation`.
fn limit_entries(
    generation: u32,
    compiled: &Compiled,
) -> impl Iterator<Item = (RateLimitKey, RateLimit)> + '_ {
    compiled
        .rate_limits
        .iter()
        .map(move |(k, l)| (RateLimitKey::new(generation, k.src, k.dst), *l))
}

/// The keys (of those the kernel returned) whose generation is not `keep`.
fn other_generations<K, E>(
    keys: impl Iterator<Item = Result<K, E>>,
    keep: u32,
    generation: impl Fn(&K) -> u32,
) -> Vec<K> {
    keys.filter_map(Result::ok)
        .filter(|k| generation(k) != keep)
        .collect()
}

/// Returns once every BPF program that was running when it was called has finished: TC
/// programs run inside an RCU read-side section, and `membarrier(MEMBARRIER_CMD_GLOBAL)`
/// waits for an RCU grace period (`synchronize_rcu`) on a machine with more than one CPU.
/// It is refused on `nohz_full` kernels; a program runs for microseconds, so a pause of a
/// few milliseconds stands in there.
fn wait_for_running_programs() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes two integers and touches no memory of ours.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0) };
    if rc != 0 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use netctl_common::policy::{ID_ANY, RL_BY_ADDRESS, RL_BY_IDENTITY};

    use super::*;

    fn limit(burst: u32, by: u8) -> RateLimit {
        RateLimit {
            rate_milli: 1000,
            burst,
            by,
            _pad: [0; 3],
        }
    }

    #[test]
    fn limits_are_written_under_the_new_generation() {
        let compiled = Compiled {
            entries: BTreeMap::new(),
            rate_limits: [
                (
                    LimitKey {
                        src: ID_ANY,
                        dst: 257,
                    },
                    limit(20, RL_BY_ADDRESS),
                ),
                (LimitKey { src: 258, dst: 257 }, limit(3, RL_BY_IDENTITY)),
            ]
            .into_iter()
            .collect(),
        };
        let written: Vec<_> = limit_entries(7, &compiled).collect();
        assert_eq!(
            written,
            vec![
                (RateLimitKey::new(7, ID_ANY, 257), limit(20, RL_BY_ADDRESS)),
                (RateLimitKey::new(7, 258, 257), limit(3, RL_BY_IDENTITY)),
            ]
        );
    }

    #[test]
    fn every_generation_but_the_kept_one_is_removed_and_unreadable_keys_are_skipped() {
        let keys: Vec<Result<RateLimitKey, ()>> = vec![
            Ok(RateLimitKey::new(4, ID_ANY, 257)),
            Ok(RateLimitKey::new(5, ID_ANY, 257)),
            Err(()),
            Ok(RateLimitKey::new(5, 258, 257)),
            Ok(RateLimitKey::new(3, 258, 257)),
        ];
        let stale = other_generations(keys.into_iter(), 5, |k| k.generation);
        assert_eq!(
            stale,
            vec![
                RateLimitKey::new(4, ID_ANY, 257),
                RateLimitKey::new(3, 258, 257)
            ]
        );
    }
}
