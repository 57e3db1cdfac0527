//! Socket-level load balancing: the `SOCK_REVNAT` map, which lets `recvmsg`/`getpeername`
//! report the service address to a socket whose `connect`/`sendmsg` went to a backend.

/// Key of `SOCK_REVNAT`: a socket (by cookie) and the backend it was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockRevNatKey {
    pub cookie: u64,
    pub backend_addr: [u8; 4],
    /// Host byte order.
    pub backend_port: u16,
    pub _pad: u16,
}
crate::assert_size!(SockRevNatKey, 16);

/// Value of `SOCK_REVNAT`: the frontend the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockRevNatValue {
    pub frontend_addr: [u8; 4],
    /// Host byte order.
    pub frontend_port: u16,
    pub _pad: u16,
}
crate::assert_size!(SockRevNatValue, 8);

#[cfg(feature = "user")]
mod user {
    // SAFETY: `#[repr(C)]` integers and byte arrays with explicit padding.
    unsafe impl aya::Pod for super::SockRevNatKey {}
    unsafe impl aya::Pod for super::SockRevNatValue {}
}
