//! Opening a backend connection: a non-blocking connect with a deadline,
//! and its failure classified (see [`ConnectFailure`]).

use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use crate::error::ConnectFailure;
use crate::fd::{self, Connection};
use crate::tcp::keepalive;

/// Connects a non-blocking socket (TCP_NODELAY and keepalive set before
/// the handshake) and waits for the handshake up to `timeout`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Connection, ConnectFailure> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), None)
        .map_err(|_| ConnectFailure::Local)?;
    // Failing to set these only costs the optimisations.
    let _ = socket.set_tcp_nodelay(true);
    let _ = socket.set_tcp_keepalive(&keepalive());
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INPROGRESS.raw_os_error()) => {}
        Err(e) => return Err(ConnectFailure::of(&e)),
    }
    let stream = fd::register_connection(socket.into()).map_err(|_| ConnectFailure::Local)?;
    let handshake = async {
        // A connecting socket turns writable when the handshake is done or
        // has failed. A failure (refused, reset, unreachable) also raises
        // EPOLLERR or EPOLLHUP, which tokio reports as write-closed; only
        // then is the error fetched (`SO_ERROR`), so a connect that worked
        // costs no system call for the check.
        let mut ready = stream.writable().await?;
        ready.retain_ready();
        if ready.ready().is_write_closed() {
            if let Some(error) = stream.get_ref().take_error()? {
                return Err(error);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(())) => Ok(stream),
        Ok(Err(e)) => Err(ConnectFailure::of(&e)),
        Err(_) => Err(ConnectFailure::Timeout),
    }
}
