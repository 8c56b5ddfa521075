//! A UDP echo backend and a request/response load generator for
//! `loadtest/udp.py`, in one file with the standard library only, so the
//! harness builds it with `rustc -O` and needs no crate.
//!
//! ```text
//! udp_load echo ADDR THREADS             echo every datagram back to its sender
//! udp_load load TARGET CLIENTS SECONDS SIZE
//!     CLIENTS threads, each with its own socket (one flow), send SIZE bytes
//!     and wait for the echo (lockstep), for SECONDS; a reply not back in
//!     200 ms counts as lost and the client sends the next. Prints one line:
//!     RESULT {"requests": N, "lost": N, "rate": R, "p50_us": X, "p99_us": Y}
//! ```
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// Latency histogram resolution: 1 µs buckets up to 100 ms.
const BUCKETS: usize = 100_000;
const LOST_AFTER: Duration = Duration::from_millis(200);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("echo") if args.len() == 4 => echo(parse(&args[2]), args[3].parse().expect("threads")),
        Some("load") if args.len() == 6 => load(
            parse(&args[2]),
            args[3].parse().expect("clients"),
            Duration::from_secs(args[4].parse().expect("seconds")),
            args[5].parse().expect("size"),
        ),
        _ => {
            eprintln!("usage: udp_load echo ADDR THREADS | load TARGET CLIENTS SECONDS SIZE");
            std::process::exit(2);
        }
    }
}

fn parse(text: &str) -> SocketAddr {
    text.parse().expect("an ip:port address")
}

fn echo(addr: SocketAddr, threads: usize) {
    let socket = UdpSocket::bind(addr).expect("bind echo");
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let socket = socket.try_clone().expect("clone socket");
            std::thread::spawn(move || {
                let mut buffer = [0u8; 65_536];
                loop {
                    if let Ok((len, from)) = socket.recv_from(&mut buffer) {
                        let _ = socket.send_to(&buffer[..len], from);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
}

fn load(target: SocketAddr, clients: usize, duration: Duration, size: usize) {
    let start = Instant::now() + Duration::from_millis(100);
    let runs: Vec<_> = (0..clients)
        .map(|i| {
            std::thread::spawn(move || {
                let socket = UdpSocket::bind("127.0.0.1:0").expect("client socket");
                socket.connect(target).expect("connect");
                socket.set_read_timeout(Some(LOST_AFTER)).expect("timeout");
                let mut histogram = vec![0u64; BUCKETS + 1];
                let mut payload = vec![0u8; size.max(8)];
                let mut reply = vec![0u8; 65_536];
                let (mut requests, mut lost) = (0u64, 0u64);
                while Instant::now() < start {
                    std::thread::yield_now();
                }
                let end = start + duration;
                let mut seq: u64 = (i as u64) << 40;
                while Instant::now() < end {
                    seq += 1;
                    payload[..8].copy_from_slice(&seq.to_be_bytes());
                    let sent = Instant::now();
                    if socket.send(&payload).is_err() {
                        lost += 1;
                        continue;
                    }
                    // Skip late echoes of earlier, lost requests.
                    loop {
                        match socket.recv(&mut reply) {
                            Ok(len) if len >= 8 && reply[..8] == payload[..8] => {
                                let micros = sent.elapsed().as_micros() as usize;
                                histogram[micros.min(BUCKETS)] += 1;
                                requests += 1;
                                break;
                            }
                            Ok(_) => continue,
                            Err(_) => {
                                lost += 1;
                                break;
                            }
                        }
                    }
                }
                (requests, lost, histogram)
            })
        })
        .collect();
    let mut total = vec![0u64; BUCKETS + 1];
    let (mut requests, mut lost) = (0u64, 0u64);
    for run in runs {
        let (r, l, histogram) = run.join().expect("client thread");
        requests += r;
        lost += l;
        for (sum, count) in total.iter_mut().zip(histogram) {
            *sum += count;
        }
    }
    let quantile = |q: f64| -> usize {
        let wanted = (requests as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (micros, count) in total.iter().enumerate() {
            seen += count;
            if seen >= wanted.max(1) {
                return micros;
            }
        }
        BUCKETS
    };
    println!(
        "RESULT {{\"requests\": {requests}, \"lost\": {lost}, \"rate\": {:.0}, \"p50_us\": {}, \"p99_us\": {}}}",
        requests as f64 / duration.as_secs_f64(),
        quantile(0.50),
        quantile(0.99)
    );
}
