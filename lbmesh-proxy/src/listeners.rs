//! Listening sockets: how lbd binds an address it serves.
//!
//! Every socket is non-blocking, `SO_REUSEADDR` (a restarted lbd rebinds at
//! once despite connections in TIME_WAIT), v6-only for IPv6 addresses, and
//! carries the options accepted connections inherit (no delay, keepalive).
//! A VIP is bound with `SO_REUSEPORT` as well, so that several nodes sharing
//! a machine share it, and an IPv6 VIP with `IPV6_FREEBIND` too: no v6
//! range is local by itself (127.0.0.0/8 is), so a v6 VIP binds whether or
//! not its `local` route is there yet, and serves once it is. [`bind_copies`] returns one descriptor per proxy
//! thread, all for one socket; [`describe_bind_error`] words a failure for
//! reports.
//!
//! A UDP address is bound differently ([`bind_udp_copies`]): one socket per
//! proxy thread, each `SO_REUSEPORT`, so the kernel hashes every flow
//! (client address and port) to one thread's socket, and each thread's
//! session table sees all of a flow's datagrams without sharing a lock.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};

use crate::tcp::keepalive;

/// Listen backlog: room for a burst of connections while the cap is reached
/// or the accept loop is busy; the kernel clamps it to `somaxconn`.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Options for a listening socket.
#[derive(Debug, Clone, Copy)]
pub struct ListenOptions {
    pub backlog: i32,
    /// Lets several sockets (in one process or several) share the address;
    /// the kernel spreads connections over them.
    pub reuse_port: bool,
    /// Binds an address that is not (yet) local (`IP_FREEBIND` or
    /// `IPV6_FREEBIND`): a v6 VIP, reached through a `local` route.
    pub free_bind: bool,
}

impl Default for ListenOptions {
    fn default() -> Self {
        Self {
            backlog: LISTEN_BACKLOG,
            reuse_port: false,
            free_bind: false,
        }
    }
}

/// Binds a non-blocking listening TCP socket with `SO_REUSEADDR` (a
/// restarted lbd rebinds at once despite connections in TIME_WAIT).
pub fn bind_listener(
    addr: SocketAddr,
    options: ListenOptions,
) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if options.reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if options.free_bind {
        set_free_bind(&socket, addr)?;
    }
    // Accepted connections inherit these from the listener on Linux, which
    // saves four setsockopt calls per client connection.
    socket.set_tcp_nodelay(true)?;
    socket.set_tcp_keepalive(&keepalive())?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(options.backlog)?;
    Ok(socket.into())
}

/// Binds `addr` and returns `copies` (at least one) descriptors of the one
/// socket, one per proxy thread: every thread's event loop hears of a
/// pending connection and the first free one takes it.
pub fn bind_copies(
    addr: SocketAddr,
    options: ListenOptions,
    copies: usize,
) -> io::Result<Vec<std::net::TcpListener>> {
    let listener = bind_listener(addr, options)?;
    let mut listeners = (1..copies)
        .map(|_| listener.try_clone())
        .collect::<io::Result<Vec<_>>>()?;
    listeners.push(listener);
    Ok(listeners)
}

/// Binds `copies` (at least one) non-blocking UDP sockets on `addr`, all
/// `SO_REUSEPORT` (and v6-only for IPv6), one per proxy thread: the kernel
/// sends each flow to one of them. Sockets of another process bound there
/// without `SO_REUSEPORT` make this fail with "address in use".
/// `free_bind` as in [`ListenOptions::free_bind`].
pub fn bind_udp_copies(
    addr: SocketAddr,
    free_bind: bool,
    copies: usize,
) -> io::Result<Vec<std::net::UdpSocket>> {
    (0..copies.max(1))
        .map(|_| {
            let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            if addr.is_ipv6() {
                socket.set_only_v6(true)?;
            }
            if free_bind {
                set_free_bind(&socket, addr)?;
            }
            socket.set_nonblocking(true)?;
            socket.bind(&addr.into())?;
            Ok(socket.into())
        })
        .collect()
}

fn set_free_bind(socket: &Socket, addr: SocketAddr) -> io::Result<()> {
    match addr {
        SocketAddr::V4(_) => socket.set_freebind_v4(true),
        SocketAddr::V6(_) => socket.set_freebind_v6(true),
    }
}

/// A bind error as the short phrase reports show (`cannot bind ADDR:
/// address in use`): the common causes in words, anything else as the OS
/// puts it.
pub fn describe_bind_error(error: &io::Error) -> String {
    let phrase = match error.kind() {
        io::ErrorKind::AddrInUse => "address in use",
        io::ErrorKind::AddrNotAvailable => "address not available",
        io::ErrorKind::PermissionDenied => "permission denied",
        _ => return error.to_string(),
    };
    phrase.to_owned()
}
