//! Passing a pump's EOF on: the half-close that TCP forwarding needs.
//!
//! Both pumps of a connection (copy and splice alike) share one flag: the
//! first EOF half-closes the other socket, the second is left to the close
//! that ends the connection.

use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::fd::Connection;

/// Passes a pump's EOF on to `dst`. The first of the two is a half-close:
/// no more writes to `dst`, reads from it continue (a peer that has already
/// gone away makes the `shutdown` fail, which changes nothing). The second
/// needs no system call: both peers have sent their FIN and both receive
/// queues are drained, so the close that follows sends `dst` its FIN, not a
/// reset.
pub fn pass_eof(dst: &Connection, one_eof_passed: &AtomicBool) {
    if !one_eof_passed.swap(true, Ordering::Relaxed) {
        let _ = dst.get_ref().shutdown(Shutdown::Write);
    }
}
