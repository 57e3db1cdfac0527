//! Maglev consistent hashing (Eisenbud et al., NSDI 2016).
//!
//! Each backend derives a permutation of the table's `M` cells (M prime) from two hashes
//! of its name: `offset` and `skip`. Backends take turns (as many per round as their
//! weight) claiming their next preferred cell that is still free, until the table is
//! full. With equal weights every backend ends up with `M/N` cells, give or take one; when a
//! backend leaves, the cells of the others mostly stay where they were, so few flows move.

/// One backend as Maglev sees it: a stable name (e.g. `10.0.0.5:5000/tcp`) and a weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub weight: u32,
}

/// The lookup table: for each of the `m` cells, the index of its backend in `backends`.
/// Empty when there is no backend with a weight.
pub fn table(backends: &[Candidate], m: u32) -> Vec<u32> {
    let m = m as u64;
    let live: Vec<(usize, u64, u64, u32)> = backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.weight > 0)
        .map(|(i, b)| {
            let offset = fnv1a(b.name.as_bytes(), 0xcbf2_9ce4_8422_2325) % m;
            let skip = fnv1a(b.name.as_bytes(), 0x84222325_cbf29ce4) % (m - 1) + 1;
            (i, offset, skip, b.weight)
        })
        .collect();
    if live.is_empty() || m == 0 {
        return Vec::new();
    }
    const FREE: u32 = u32::MAX;
    let mut cells = vec![FREE; m as usize];
    let mut next = vec![0u64; live.len()];
    let mut filled = 0u64;
    loop {
        for (k, &(index, offset, skip, weight)) in live.iter().enumerate() {
            for _ in 0..weight {
                let mut c = (offset + next[k] * skip) % m;
                while cells[c as usize] != FREE {
                    next[k] += 1;
                    c = (offset + next[k] * skip) % m;
                }
                cells[c as usize] = index as u32;
                next[k] += 1;
                filled += 1;
                if filled == m {
                    return cells;
                }
            }
        }
    }
}

/// FNV-1a, 64-bit, with a chosen basis: stable across builds and Rust versions (unlike
/// `DefaultHasher`), so a restarted controller computes the same tables.
fn fnv1a(bytes: &[u8], basis: u64) -> u64 {
    bytes.iter().fold(basis, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netctl_common::lb::MAGLEV_M;

    fn backends(n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                name: format!("10.{}.{}.{}:5000/tcp", i / 65536, (i / 256) % 256, i % 256),
                weight: 1,
            })
            .collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &i in table {
            c[i as usize] += 1;
        }
        c
    }

    /// The table is even within 1% for every backend count of the range (98
    /// tables of 16,381 cells: a quarter of a second in a debug build).
    #[test]
    fn every_backend_gets_an_even_share() {
        for n in 3..=100 {
            assert_even(&table(&backends(n), MAGLEV_M), n, &format!("n={n}"));
        }
    }

    fn assert_even(t: &[u32], n: usize, what: &str) {
        assert_eq!(t.len(), MAGLEV_M as usize);
        let ideal = f64::from(MAGLEV_M) / n as f64;
        for (i, c) in counts(t, n).into_iter().enumerate() {
            let off = (c as f64 - ideal).abs() / ideal;
            assert!(
                off <= 0.01,
                "{what}: backend {i} has {c} cells, ideal {ideal:.1}"
            );
        }
    }

    /// Removing one backend moves its own cells and few others: at most 1.5% of the table
    /// belongs to a staying backend before and to another one after (Maglev's disruption;
    /// 1.46% is the worst case here, at n=100), and the table is still even.
    #[test]
    fn removing_one_of_n_backends_moves_its_cells_and_few_others() {
        for n in [3, 5, 10, 20, 50, 100] {
            let all = backends(n);
            let before = table(&all, MAGLEV_M);
            for gone in 0..n {
                let mut rest = all.clone();
                rest.remove(gone);
                let after = table(&rest, MAGLEV_M);
                // Compare by backend name: indices shift when one is removed.
                let mut own = 0;
                let mut others = 0;
                for (b, a) in before.iter().zip(&after) {
                    if *b as usize == gone {
                        own += 1;
                    } else if all[*b as usize].name != rest[*a as usize].name {
                        others += 1;
                    }
                }
                let share = own as f64 / f64::from(MAGLEV_M);
                assert!(
                    (share - 1.0 / n as f64).abs() <= 0.01 / n as f64,
                    "n={n}: the removed backend had {own} cells"
                );
                let disruption = others as f64 / f64::from(MAGLEV_M);
                assert!(
                    disruption <= 0.015,
                    "n={n}, removed {gone}: {:.2}% of the cells moved between staying backends",
                    disruption * 100.0
                );
                assert_even(&after, n - 1, &format!("n={n} without {gone}"));
            }
        }
    }

    #[test]
    fn weights_shape_the_shares() {
        let mut b = backends(3);
        b[0].weight = 2;
        let c = counts(&table(&b, MAGLEV_M), 3);
        let share0 = c[0] as f64 / f64::from(MAGLEV_M);
        assert!(
            (share0 - 0.5).abs() < 0.01,
            "weight 2 of 4 -> half the cells, got {share0:.3}"
        );
        b[1].weight = 0;
        let t = table(&b, MAGLEV_M);
        assert!(t.iter().all(|&i| i != 1), "weight 0 gets no cell");
    }

    #[test]
    fn tables_are_deterministic_and_empty_without_backends() {
        assert_eq!(table(&backends(5), 101), table(&backends(5), 101));
        assert!(table(&[], MAGLEV_M).is_empty());
    }
}
