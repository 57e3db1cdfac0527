//! `netctl connectivity`, the platform's self-test (as `cilium connectivity test`): every
//! source tries every other service ([`checks`]), for real ([`probe`]), and each result is
//! held against what the compiled policy says. A check blocked against the policy is tried
//! once more, alone, between two reads of the dataplane's drop counters: what grew for its
//! pair explains it, or else it was dropped outside netctl.

pub mod checks;
pub mod probe;

use serde::Serialize;

pub use checks::{Check, ChecksError, Kind, Options, Via};
pub use probe::Seen;

/// A check, what it saw, and whether that is what the policy says.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    #[serde(flatten)]
    pub check: Check,
    #[serde(flatten)]
    pub seen: Seen,
    pub verdict: Verdict,
    /// For a mismatch: why, as far as netctl can tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Seen as the policy says.
    Match,
    /// Not as the policy says.
    Mismatch,
    /// Allowed, but a UDP service that does not answer cannot show it.
    Unverified,
}

/// Drop counters that grew during the run: (source identity, destination identity,
/// reason, packets); `*` as the source of drops by a rule for any source.
pub type GrownDrops = Vec<(String, String, &'static str, u64)>;

/// Judges what each check saw against its expectation. A blocked check that should have
/// passed is left without a cause: [`blocked_cause`] gives it one.
pub fn judge(checks: Vec<Check>, seen: Vec<Seen>) -> Vec<Outcome> {
    checks
        .into_iter()
        .zip(seen)
        .map(|(check, seen)| {
            let (verdict, cause) = match (seen.passed(check.kind), check.expected_allow) {
                (Some(true), true) | (Some(false), false) => (Verdict::Match, None),
                (None, true) => (Verdict::Unverified, None),
                // Silence where the policy denies: as it should be.
                (None, false) => (Verdict::Match, None),
                (Some(true), false) => (
                    Verdict::Mismatch,
                    Some(match check.rule {
                        Some(r) => format!("passed although policy rule {r} denies it"),
                        None => "passed although the destination denies by default".into(),
                    }),
                ),
                (Some(false), _) => (Verdict::Mismatch, None),
            };
            Outcome {
                check,
                seen,
                verdict,
                cause,
            }
        })
        .collect()
}

/// Why `check` was blocked: the drop counters of its pair that grew while it alone was
/// tried again, or else what was found outside netctl (`outside`: the host's firewall).
pub fn blocked_cause(check: &Check, grown: &GrownDrops, outside: Option<&str>) -> String {
    let reasons: Vec<String> = grown
        .iter()
        .filter(|(src, dst, reason, _)| {
            (src == check.source_identity() || src == "*")
                && dst == &check.destination
                // Only a frontend lacks backends; a check by address never meets it.
                && !(check.via == Via::Address && *reason == "no-backend")
        })
        .map(|(_, _, reason, n)| format!("{reason} ({n} packets)"))
        .collect();
    if !reasons.is_empty() {
        let also = outside.map_or(String::new(), |o| format!("; outside netctl: {o}"));
        return format!("dropped by netctl: {}{also}", reasons.join(", "));
    }
    match outside {
        Some(what) => format!("dropped outside netctl: {what}"),
        None => "dropped outside netctl".into(),
    }
}

/// The counters in `after` that grew since `before`, by how much.
pub fn grown(
    before: &[(String, String, &'static str, u64)],
    after: &[(String, String, &'static str, u64)],
) -> GrownDrops {
    after
        .iter()
        .filter_map(|(s, d, r, n)| {
            let was = before
                .iter()
                .find(|(bs, bd, br, _)| bs == s && bd == d && br == r)
                .map_or(0, |b| b.3);
            (*n > was).then(|| (s.clone(), d.clone(), *r, n - was))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use super::*;

    fn check(src: Option<&str>, allow: bool, kind: Kind) -> Check {
        Check {
            source: src.map_or("host".into(), |s| format!("{s}-1")),
            source_service: src.map(String::from),
            netns: None,
            destination: "db".into(),
            via: Via::Address,
            kind,
            target: SocketAddrV4::new([10, 9, 0, 30].into(), 5432),
            expected_allow: allow,
            rule: Some(3),
        }
    }

    #[test]
    fn checks_are_held_against_the_policy_and_blocked_ones_explained() {
        let out = judge(
            vec![
                check(Some("web"), true, Kind::Tcp),
                check(Some("api"), false, Kind::Tcp),
                check(None, false, Kind::Tcp),
                check(Some("api"), true, Kind::Udp),
                check(Some("api"), true, Kind::Tcp),
            ],
            vec![
                Seen::NoAnswer,
                Seen::NoAnswer,
                Seen::Connected,
                Seen::NoAnswer,
                Seen::Refused,
            ],
        );
        let verdicts: Vec<Verdict> = out.iter().map(|o| o.verdict).collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Mismatch,
                Verdict::Match,
                Verdict::Mismatch,
                Verdict::Unverified,
                Verdict::Match
            ]
        );
        assert_eq!(out[0].cause, None, "left for blocked_cause");
        assert_eq!(
            out[2].cause.as_deref(),
            Some("passed although policy rule 3 denies it")
        );
        let web = &out[0].check;
        let grown: GrownDrops = vec![("web".into(), "db".into(), "rate-limited", 2)];
        assert_eq!(
            blocked_cause(web, &grown, None),
            "dropped by netctl: rate-limited (2 packets)"
        );
        assert_eq!(
            blocked_cause(web, &grown, Some("FORWARD policy DROP")),
            "dropped by netctl: rate-limited (2 packets); outside netctl: FORWARD policy DROP"
        );
        let no_backend: GrownDrops = vec![("web".into(), "db".into(), "no-backend", 3)];
        assert_eq!(
            blocked_cause(web, &no_backend, None),
            "dropped outside netctl",
            "a check by address never meets no-backend"
        );
        let other: GrownDrops = vec![("api".into(), "db".into(), "policy-denied", 1)];
        assert_eq!(
            blocked_cause(web, &other, Some("FORWARD policy DROP")),
            "dropped outside netctl: FORWARD policy DROP"
        );
        let any: GrownDrops = vec![("*".into(), "db".into(), "rate-limited", 1)];
        assert!(blocked_cause(web, &any, None).starts_with("dropped by netctl"));
        assert_eq!(
            blocked_cause(web, &Vec::new(), None),
            "dropped outside netctl"
        );
    }

    #[test]
    fn only_counters_that_grew_count_and_by_how_much() {
        let before = vec![("web".into(), "db".into(), "policy-denied", 5)];
        let after = vec![
            ("web".into(), "db".into(), "policy-denied", 5),
            ("*".into(), "db".into(), "rate-limited", 3),
            ("api".into(), "db".into(), "policy-denied", 1),
        ];
        let g = grown(&before, &after);
        assert_eq!(
            g,
            vec![
                ("*".into(), "db".into(), "rate-limited", 3),
                ("api".into(), "db".into(), "policy-denied", 1)
            ]
        );
    }
}
