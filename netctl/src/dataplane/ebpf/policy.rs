//! Writing and reading the policy maps (`IDENTITIES`, `POLICY`, `RATE_LIMITS`). A new
//! policy is a new *generation*: all its entries are written first, then
//! `CONFIG[CFG_POLICY_GEN]` switches to it in one write, then the old entries go. The
//! dataplane never sees half a policy.

use std::net::Ipv4Addr;

use anyhow::Context;
use aya::maps::{Array, HashMap, Map, MapData};
use netctl_common::{
    maps::{CFG_POLICY_GEN, CONFIG, IDENTITIES, POLICY, RATE_LIMITS},
    policy::{IdentityKey, PolicyKey, PolicyValue, RateLimit, RateLimitKey},
};

use super::Pins;
use crate::policy::compile::{Compiled, EntryKey, EntryValue};

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

    /// Installs identities and compiled rules as a new generation and switches to it.
    /// Returns the new generation. When the kernel refuses an entry (a full map), nothing
    /// of the new generation stays and the old one remains in force.
    pub fn install(
        &mut self,
        identities: &[(Ipv4Addr, u32)],
        compiled: &Compiled,
    ) -> anyhow::Result<u32> {
        let old = self.generation()?;
        let new = old.wrapping_add(1);
        let limits_before: Vec<(RateLimitKey, RateLimit)> =
            self.rate_limits.iter().filter_map(Result::ok).collect();
        let written = self.write(new, identities, compiled).and_then(|()| {
            self.config
                .set(CFG_POLICY_GEN, new, 0)
                .context("switching the policy generation")
        });
        if let Err(e) = written {
            self.remove_other_generations(old);
            self.restore_rate_limits(&limits_before);
            return Err(e);
        }
        self.remove_other_generations(new);
        Ok(new)
    }

    /// Writes generation `new`'s entries (not yet in force) and the rate limits.
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
        // Rate limits are one entry per (source, destination): updated in place.
        let stale: Vec<RateLimitKey> = self
            .rate_limits
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !compiled.rate_limits.contains_key(k))
            .collect();
        for (key, limit) in &compiled.rate_limits {
            self.rate_limits
                .insert(key, limit, 0)
                .context("writing RATE_LIMITS")?;
        }
        for key in stale {
            let _ = self.rate_limits.remove(&key);
        }
        Ok(())
    }

    /// Puts the rate limits back as they were before a failed install.
    fn restore_rate_limits(&mut self, before: &[(RateLimitKey, RateLimit)]) {
        let now: Vec<RateLimitKey> = self.rate_limits.keys().filter_map(Result::ok).collect();
        for key in now {
            if !before.iter().any(|(k, _)| *k == key) {
                let _ = self.rate_limits.remove(&key);
            }
        }
        for (key, limit) in before {
            let _ = self.rate_limits.insert(key, limit, 0);
        }
    }

    /// Deletes entries of every generation but `keep` (the old one, or a crashed install's).
    fn remove_other_generations(&mut self, keep: u32) {
        let ids: Vec<IdentityKey> = self
            .identities
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.generation != keep)
            .collect();
        for k in ids {
            let _ = self.identities.remove(&k);
        }
        let rules: Vec<PolicyKey> = self
            .policy
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.generation != keep)
            .collect();
        for k in rules {
            let _ = self.policy.remove(&k);
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
        for (key, limit) in self.rate_limits.iter().filter_map(Result::ok) {
            compiled.rate_limits.insert(key, limit);
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
