//! A namespace standing in for the internet: a veth to the host, an address of the
//! benchmarking range 198.18.0.0/15 on each side. Outside traffic comes from here.

use std::net::Ipv4Addr;

use netctl::net::{netlink::Netlink, netns};

use super::{Slot, block_on};

/// A namespace with a veth to the host, standing in for the internet. Removed on drop.
pub struct Internet {
    pub name: String,
    pub host_addr: Ipv4Addr,
    pub addr: Ipv4Addr,
}

impl Internet {
    pub fn create(slot: &Slot) -> Internet {
        let name = format!("{}inet", slot.prefix());
        let host_addr = Ipv4Addr::new(198, 18, slot.n as u8, 1);
        let addr = Ipv4Addr::new(198, 18, slot.n as u8, 2);
        let internet = Internet {
            name: name.clone(),
            host_addr,
            addr,
        };
        netns::create(&name).expect("internet namespace");
        block_on(async {
            let host = Netlink::current().expect("netlink");
            let ns = netns::open(&name).expect("open");
            let idx = host
                .create_veth_into(&name, "eth0", std::os::fd::AsFd::as_fd(&ns))
                .await
                .expect("veth");
            host.add_address(idx, host_addr, 30)
                .await
                .expect("host address");
            host.set_up(idx).await.expect("up");
            let inside = Netlink::in_netns(&name).expect("netlink inside");
            let eth = inside.index_of("eth0").await.expect("eth0");
            inside.add_address(eth, addr, 30).await.expect("address");
            inside.set_up(eth).await.expect("up");
            let lo = inside.index_of("lo").await.expect("lo");
            inside.set_up(lo).await.expect("lo up");
        });
        internet
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        block_on(async {
            if let Ok(host) = Netlink::current() {
                let _ = host.delete_link(&self.name).await;
            }
        });
        let _ = netns::delete(&self.name);
    }
}
