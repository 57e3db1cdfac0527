//! One entry point for fuzzing the topology parser and validator (the `fuzz/` cargo-fuzz
//! target and the mutation test below call it): any input either fails with errors or
//! yields a plan that keeps every promise validation makes. A panic is a bug.

use std::collections::HashSet;

use super::{Source, error::MAX_IFNAME_LEN, plan::Plan};

pub fn check(input: &[u8]) {
    let source = Source {
        name: "fuzz".into(),
        text: String::from_utf8_lossy(input).into_owned(),
    };
    match source.plan(None) {
        Ok(plan) => invariants(&plan),
        Err(e) => assert!(
            !e.errors.is_empty(),
            "a failed validation names its problems"
        ),
    }
}

/// What a valid plan guarantees to `up`.
pub fn invariants(plan: &Plan) {
    let mut addrs = HashSet::new();
    let mut ifnames = HashSet::new();
    for n in &plan.networks {
        assert!(n.subnet.contains(&n.gateway), "gateway in its subnet");
        assert!(n.bridge.len() <= MAX_IFNAME_LEN, "bridge name fits");
        assert!(addrs.insert(n.gateway), "unique addresses");
        assert!(ifnames.insert(n.bridge.clone()), "unique interface names");
    }
    for (i, a) in plan.networks.iter().enumerate() {
        for b in &plan.networks[i + 1..] {
            assert!(
                !a.subnet.contains(&b.subnet) && !b.subnet.contains(&a.subnet),
                "no overlap"
            );
        }
    }
    for e in &plan.endpoints {
        let Some(net) = plan.network(&e.network) else {
            panic!("endpoint {} on an unplanned network", e.name);
        };
        assert!(net.subnet.contains(&e.address), "address in its subnet");
        assert!(e.address != net.subnet.network() && e.address != net.subnet.broadcast());
        assert!(addrs.insert(e.address), "unique addresses");
        assert!(e.host_ifname.len() <= MAX_IFNAME_LEN, "veth name fits");
        assert!(
            ifnames.insert(e.host_ifname.clone()),
            "unique interface names"
        );
    }
    for s in &plan.services {
        assert!(
            plan.service_cidr.contains(&s.vip),
            "VIP in the service CIDR"
        );
        assert!(!s.ports.is_empty(), "a VIP has ports");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Thousands of mutations of the real topology files: byte flips, cuts, splices of
    /// lines. (`cargo xtask fuzz topology` runs libFuzzer on the same entry point.)
    #[test]
    fn mutated_topologies_never_panic_and_valid_ones_keep_their_promises() {
        let seeds = [
            super::super::DEFAULT_TOPOLOGY.as_bytes().to_vec(),
            include_bytes!("../../../examples/flat.toml").to_vec(),
        ];
        let mut r = 0x853c_49e6_748f_ea9bu64;
        let mut next = move |n: usize| {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            (r % n.max(1) as u64) as usize
        };
        let mut valid = 0;
        for i in 0..2000 {
            let mut input = seeds[i % seeds.len()].clone();
            for _ in 0..next(4) + 1 {
                match next(5) {
                    0 => {
                        let at = next(input.len());
                        input[at] = b"0123456789./-=\"[]# \nabz"[next(23)];
                    }
                    1 => {
                        let at = next(input.len());
                        input.truncate(at);
                    }
                    2 => {
                        // Duplicate a line somewhere else.
                        let text = String::from_utf8_lossy(&input).into_owned();
                        let lines: Vec<&str> = text.lines().collect();
                        if !lines.is_empty() {
                            let line = lines[next(lines.len())].to_string();
                            let at = next(lines.len());
                            let mut out: Vec<String> =
                                lines.iter().map(|s| s.to_string()).collect();
                            out.insert(at, line);
                            input = out.join("\n").into_bytes();
                        }
                    }
                    3 => {
                        // Change a number.
                        let text = String::from_utf8_lossy(&input).into_owned();
                        let digits: Vec<usize> = text
                            .char_indices()
                            .filter(|(_, c)| c.is_ascii_digit())
                            .map(|(i, _)| i)
                            .collect();
                        if !digits.is_empty() {
                            let at = digits[next(digits.len())];
                            input[at] = b"0123456789"[next(10)];
                        }
                    }
                    _ => {
                        let at = next(input.len());
                        input.remove(at.min(input.len().saturating_sub(1)));
                    }
                }
                if input.is_empty() {
                    break;
                }
            }
            let ok = Source {
                name: "m".into(),
                text: String::from_utf8_lossy(&input).into_owned(),
            }
            .plan(None)
            .is_ok();
            check(&input);
            valid += usize::from(ok);
        }
        assert!(
            valid > 100,
            "the mutations also produce valid topologies ({valid})"
        );
    }
}
