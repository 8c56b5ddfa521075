//! test-support: what lbmesh's integration tests share, so that each
//! helper exists once.
//!
//! - [`addrs`]: listen addresses on 127.0.0.N, never fixed ports.
//! - [`backend`]: TCP test backends and the clients that ask who answered.
//! - [`lbd`]: an in-process lbd from a config file; metric parsing.
//! - [`cluster`]: a cluster of `lbd` processes on 127.A.0.N driven with
//!   `lbctl`; [`mesh`]: tasks as `service ps` shows them and a steady
//!   client loop; [`images`]: the test images for the Docker runtime.
//! - [`http`]: the one HTTP/1 client of the tests; [`wait`]: bounded polls.
//! - [`bins`]: where the workspace's binaries are.
//! - [`udp`]: a UDP echo backend that records its flows, and a UDP client
//!   exchange.
//!
//! Every wait and loop is bounded in count and time.

pub mod addrs;
pub mod backend;
pub mod bins;
pub mod cluster;
pub mod http;
pub mod images;
pub mod lbd;
pub mod mesh;
pub mod udp;
pub mod wait;

pub use addrs::*;
pub use backend::*;
pub use http::*;
pub use lbd::*;
pub use wait::*;
