//! Free addresses of a network for endpoints the agent attaches: handed out from the top
//! of the subnet down, so that they stay clear of the topology's addresses, which are
//! planned from the bottom up.

use std::{collections::HashSet, net::Ipv4Addr};

use ipnet::Ipv4Net;

/// The highest host address of `subnet` not in `taken` (which holds the gateway and
/// every address in use), or `None` when the subnet is full.
pub fn allocate(subnet: Ipv4Net, taken: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    subnet.hosts().rev().find(|a| !taken.contains(a))
}

/// Whether `addr` may be given to an endpoint of `subnet`: a host address of it (not the
/// network or broadcast address).
pub fn is_host_address(subnet: Ipv4Net, addr: Ipv4Addr) -> bool {
    subnet.contains(&addr)
        && (subnet.prefix_len() >= 31 || (addr != subnet.network() && addr != subnet.broadcast()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("subnet")
    }

    #[test]
    fn hands_out_from_the_top_and_skips_what_is_taken() {
        let subnet = net("10.9.0.0/29");
        let mut taken: HashSet<Ipv4Addr> = HashSet::new();
        assert_eq!(allocate(subnet, &taken), Some(Ipv4Addr::new(10, 9, 0, 6)));
        taken.insert(Ipv4Addr::new(10, 9, 0, 6));
        assert_eq!(allocate(subnet, &taken), Some(Ipv4Addr::new(10, 9, 0, 5)));
    }

    #[test]
    fn a_full_subnet_has_nothing_left() {
        let subnet = net("10.9.0.0/30");
        let taken: HashSet<Ipv4Addr> = subnet.hosts().collect();
        assert_eq!(allocate(subnet, &taken), None);
    }

    #[test]
    fn network_and_broadcast_addresses_are_not_host_addresses() {
        let subnet = net("10.9.0.0/24");
        assert!(!is_host_address(subnet, Ipv4Addr::new(10, 9, 0, 0)));
        assert!(!is_host_address(subnet, Ipv4Addr::new(10, 9, 0, 255)));
        assert!(!is_host_address(subnet, Ipv4Addr::new(10, 9, 1, 1)));
        assert!(is_host_address(subnet, Ipv4Addr::new(10, 9, 0, 1)));
    }
}
