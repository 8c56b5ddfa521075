//! Registering sockets lbd owns with tokio's reactor: the one place in lbmesh
//! that needs `unsafe`.
//!
//! The proxy drives its sockets through [`AsyncFd`] rather than tokio's
//! `TcpStream` because the readiness guard lets it clear readiness after a
//! short read or write (the socket was drained or filled) without the extra
//! `read` that would otherwise return `EAGAIN` on every message. Clearing is
//! safe against races: the guard only clears the readiness it observed, so an
//! event that arrived since is kept.
#![allow(unsafe_code)]

use std::io;
use std::net::{TcpListener, TcpStream};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A non-blocking TCP connection registered for reads and writes.
pub type Connection = AsyncFd<TcpStream>;

/// Registers a non-blocking listener for readability.
pub fn register_listener(listener: TcpListener) -> io::Result<AsyncFd<TcpListener>> {
    // SAFETY: the AsyncFd takes ownership of the listener. A std TcpListener
    // owns its descriptor, always reports that same descriptor, and closes it
    // only when dropped, which the AsyncFd does after deregistering it.
    unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }
        .map_err(|error| error.into_parts().1)
}

/// Registers a non-blocking connection for reads and writes.
pub fn register_connection(stream: TcpStream) -> io::Result<Connection> {
    // SAFETY: as for `register_listener`: the AsyncFd owns the stream, whose
    // descriptor stays open and unchanged until the AsyncFd drops it.
    unsafe { AsyncFd::register_with_interest(stream, Interest::READABLE | Interest::WRITABLE) }
        .map_err(|error| error.into_parts().1)
}
