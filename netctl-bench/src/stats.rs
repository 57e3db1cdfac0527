//! Percentiles and medians of measurements.

use std::time::Duration;

/// The `q`-quantile (0..=1) of `samples`, nearest rank.
pub fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1]
}

pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// `f(a) / f(b)` over paired rounds: the median of each round's own ratio (`None` when the
/// rounds do not pair up or a figure is missing). The paths of one round run seconds
/// apart, so a slow spell of the machine cancels out instead of moving one path's median.
pub fn paired_ratio<R>(a: &[R], b: &[R], f: impl Fn(&R) -> f64) -> Option<f64> {
    if a.is_empty() || a.len() != b.len() {
        return None;
    }
    let mut per_round: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(x, y)| crate::report::ratio(f(x), f(y)))
        .collect::<Option<_>>()?;
    Some(median(&mut per_round))
}

pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let mut s: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(quantile(&mut s, 0.5), Duration::from_micros(50));
        assert_eq!(quantile(&mut s, 0.99), Duration::from_micros(99));
        assert_eq!(quantile(&mut s, 1.0), Duration::from_micros(100));
        assert_eq!(quantile(&mut [], 0.5), Duration::ZERO);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
