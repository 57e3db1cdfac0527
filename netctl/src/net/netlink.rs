//! A small rtnetlink client: the link, address and route operations netctl needs, with
//! errors that say what was being done. A [`Netlink`] talks to the namespace its socket was
//! opened in; [`Netlink::in_netns`] opens one inside another namespace.

use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd, BorrowedFd},
};

use anyhow::{Context, anyhow};
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::AddressAttribute,
        link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
        route::{RouteAddress, RouteAttribute, RouteMessage},
    },
};
use tokio::task::JoinHandle;

use super::netns;

const ENODEV: i32 = 19;
const ENOENT: i32 = 2;
const EEXIST: i32 = 17;

/// A link as netctl cares about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `bridge`, `veth`, ... (`None` for kinds without link info, such as loopback).
    pub kind: Option<String>,
    pub master: Option<u32>,
    pub up: bool,
    /// The hardware address, `aa:bb:cc:dd:ee:ff` (`None` for links without one).
    pub mac: Option<String>,
}

/// An IPv4 route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destination: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

pub struct Netlink {
    handle: Handle,
    connection: JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Netlink {
    /// A connection in the namespace of the calling thread (the host's, for the controller).
    /// Must be called inside a tokio runtime.
    pub fn current() -> anyhow::Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        Ok(Self {
            handle,
            connection: tokio::spawn(conn),
        })
    }

    /// A connection whose socket lives in namespace `name`: the socket is opened on a thread
    /// that entered the namespace and then used from here.
    pub fn in_netns(name: &str) -> anyhow::Result<Self> {
        Self::in_netns_file(netns::open(name)?, name)
    }

    /// A connection in the namespace `ns` (an open namespace file; `label` names it).
    pub fn in_netns_file(ns: std::fs::File, label: &str) -> anyhow::Result<Self> {
        let name = label;
        let runtime = tokio::runtime::Handle::current();
        let (conn, handle) = netns::run_in_file(ns, name, move || {
            // Registering the socket with the reactor needs the runtime's context.
            let _guard = runtime.enter();
            let (conn, handle, _) =
                rtnetlink::new_connection().context("opening a netlink socket")?;
            Ok((conn, handle))
        })
        .with_context(|| format!("opening netlink in namespace {name}"))?;
        Ok(Self {
            handle,
            connection: tokio::spawn(conn),
        })
    }

    pub async fn links(&self) -> anyhow::Result<Vec<Link>> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .context("listing links")?;
        Ok(msgs.iter().map(to_link).collect())
    }

    pub async fn link(&self, name: &str) -> anyhow::Result<Option<Link>> {
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match stream.try_next().await {
            Ok(Some(msg)) => Ok(Some(to_link(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(anyhow!(e)).with_context(|| format!("looking up link {name}")),
        }
    }

    pub async fn index_of(&self, name: &str) -> anyhow::Result<u32> {
        self.link(name)
            .await?
            .map(|l| l.index)
            .ok_or_else(|| anyhow!("link {name} does not exist"))
    }

    /// Creates an up bridge `name` and returns its index.
    pub async fn create_bridge(&self, name: &str) -> anyhow::Result<u32> {
        self.handle
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
            .with_context(|| format!("creating bridge {name}"))?;
        self.index_of(name).await
    }

    /// Creates veth `host_name` here with its peer, named `peer_name`, directly inside the
    /// namespace `peer_netns` (so the peer name never clashes on the host).
    pub async fn create_veth_into(
        &self,
        host_name: &str,
        peer_name: &str,
        peer_netns: BorrowedFd<'_>,
    ) -> anyhow::Result<u32> {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer_name.to_string())
            .setns_by_fd(peer_netns.as_raw_fd())
            .build();
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(host_name.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .with_context(|| format!("creating veth {host_name} (peer {peer_name})"))?;
        self.index_of(host_name).await
    }

    /// Enslaves link `index` to bridge `master` and sets it up.
    pub async fn attach_to_bridge(&self, index: u32, master: u32) -> anyhow::Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .controller(master)
            .up()
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .with_context(|| format!("adding link {index} to bridge {master}"))
    }

    pub async fn set_up(&self, index: u32) -> anyhow::Result<()> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .with_context(|| format!("setting link {index} up"))
    }

    /// Deletes link `name`; false when it did not exist.
    pub async fn delete_link(&self, name: &str) -> anyhow::Result<bool> {
        let Some(link) = self.link(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(false),
            Err(e) => Err(anyhow!(e)).with_context(|| format!("deleting link {name}")),
        }
    }

    /// Adds `addr/prefix_len` to link `index`; an address already there is fine.
    pub async fn add_address(
        &self,
        index: u32,
        addr: Ipv4Addr,
        prefix_len: u8,
    ) -> anyhow::Result<()> {
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(addr), prefix_len)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(anyhow!(e))
                .with_context(|| format!("adding {addr}/{prefix_len} to link {index}")),
        }
    }

    /// IPv4 addresses of link `index`.
    pub async fn addresses(&self, index: u32) -> anyhow::Result<Vec<Ipv4Net>> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .with_context(|| format!("listing addresses of link {index}"))?;
        let mut out = Vec::new();
        for msg in msgs {
            for attr in &msg.attributes {
                if let AddressAttribute::Address(IpAddr::V4(a)) = attr
                    && let Ok(net) = Ipv4Net::new(*a, msg.header.prefix_len)
                {
                    out.push(net);
                }
            }
        }
        Ok(out)
    }

    /// `ip route add default via GATEWAY`.
    pub async fn add_default_route(&self, gateway: Ipv4Addr) -> anyhow::Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => {
                Err(anyhow!(e)).with_context(|| format!("adding default route via {gateway}"))
            }
        }
    }

    /// IPv4 routes of the main table.
    pub async fn routes(&self) -> anyhow::Result<Vec<Route>> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .context("listing routes")?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.address_family == AddressFamily::Inet)
            .filter(|m| m.header.table == RouteMessageHeaderTable::MAIN)
            .filter_map(to_route)
            .collect())
    }
}

/// `RT_TABLE_MAIN`.
struct RouteMessageHeaderTable;
impl RouteMessageHeaderTable {
    const MAIN: u8 = 254;
}

fn to_route(msg: &RouteMessage) -> Option<Route> {
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut oif = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(*a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let destination = Ipv4Net::new(dst, msg.header.destination_prefix_length).ok()?;
    Some(Route {
        destination,
        gateway,
        oif,
    })
}

fn to_link(msg: &LinkMessage) -> Link {
    let mut name = String::new();
    let mut kind = None;
    let mut master = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Address(bytes) if bytes.len() == 6 => {
                let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
                mac = Some(hex.join(":"));
            }
            LinkAttribute::Controller(m) => master = Some(*m),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    Link {
        index: msg.header.index,
        name,
        kind,
        master,
        up: msg.header.flags.contains(LinkFlags::Up),
        mac,
    }
}

/// The positive errno of a netlink error, if it is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

/// True for "no such device/file" errors, which teardown treats as already done.
pub fn is_not_found(e: &rtnetlink::Error) -> bool {
    matches!(errno(e), Some(ENODEV) | Some(ENOENT))
}
