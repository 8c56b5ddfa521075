//! Bytes through the proxy: bulk integrity, half-close, PROXY protocol,
//! idle timeout and the connection cap.
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use sha2::{Digest, Sha256};
use test_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MIB: usize = 1024 * 1024;

/// Deterministic, non-repeating-looking bytes (xorshift), so a dropped or
/// reordered chunk changes the digest.
fn pattern(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way_arrive_byte_exact() {
    let echo = TestBackend::start("echo", Behavior::Echo).await;
    let addr = listen_addr();
    let lbd = TestLbd::start(&service("bulk", addr, &[(echo.addr, 1)], "")).await;
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let payload = pattern(64 * MIB, 0x1234_5678_9abc_def1);
    let sent_digest = Sha256::digest(&payload);

    let send = tokio::spawn(async move {
        for chunk in payload.chunks(256 * 1024) {
            writer.write_all(chunk).await.expect("send");
        }
        writer.shutdown().await.expect("half-close");
    });
    let receive = tokio::spawn(async move {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0usize;
        loop {
            let n = reader.read(&mut buf).await.expect("receive");
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n;
        }
        (total, hasher.finalize())
    });
    tokio::time::timeout(Duration::from_secs(120), send)
        .await
        .expect("sent in time")
        .expect("sender");
    let (total, received_digest) = tokio::time::timeout(Duration::from_secs(120), receive)
        .await
        .expect("received in time")
        .expect("receiver");
    assert_eq!(total, 64 * MIB);
    assert_eq!(received_digest, sent_digest);

    let label = echo.addr.to_string();
    let metrics = lbd.metrics().await;
    let labels = [("service", "bulk"), ("backend", label.as_str())];
    assert_eq!(
        metric(&metrics, "lbmesh_bytes_in_total", &labels),
        Some((64 * MIB) as f64)
    );
    assert_eq!(
        metric(&metrics, "lbmesh_bytes_out_total", &labels),
        Some((64 * MIB) as f64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_lets_the_backend_reply_after_client_eof() {
    let counter = TestBackend::start("count", Behavior::CountThenReply).await;
    let addr = listen_addr();
    let _lbd = TestLbd::start(&service("half", addr, &[(counter.addr, 1)], "")).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = pattern(300_000, 7);
    stream.write_all(&request).await.expect("send");
    stream
        .shutdown()
        .await
        .expect("client write side shut down");
    let mut reply = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut reply))
        .await
        .expect("reply in time")
        .expect("read reply");
    assert_eq!(reply, "got 300000 bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_lets_the_client_send_after_backend_eof() {
    // The backend greets, shuts down its write side at once, then reads what
    // the client still sends and reports the count out of band.
    let listener = TcpListener::bind((LOCALHOST, 0)).await.expect("bind");
    let backend = listener.local_addr().expect("addr");
    let counted = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        stream.write_all(b"bye").await.expect("greet");
        stream.shutdown().await.expect("backend half-close");
        let mut total = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            if n == 0 {
                return total;
            }
            total += n;
        }
    });
    let addr = listen_addr();
    let _lbd = TestLbd::start(&service("reverse", addr, &[(backend, 1)], "")).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut greeting = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut greeting))
        .await
        .expect("EOF in time")
        .expect("read");
    assert_eq!(greeting, b"bye");
    stream
        .write_all(&pattern(200_000, 3))
        .await
        .expect("send after EOF");
    stream.shutdown().await.expect("client half-close");
    let total = tokio::time::timeout(WAIT, counted)
        .await
        .expect("count in time")
        .expect("backend");
    assert_eq!(total, 200_000);
}

/// A backend that parses one PROXY header (v1 or v2) and returns the source
/// and destination addresses it carries.
async fn parse_proxy_header(listener: TcpListener) -> (SocketAddr, SocketAddr) {
    let (mut stream, _) = listener.accept().await.expect("accept");
    let mut first = [0u8; 16];
    stream.read_exact(&mut first[..5]).await.expect("read");
    if &first[..5] == b"PROXY" {
        let mut line = b"PROXY".to_vec();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            stream.read_exact(&mut byte).await.expect("read line");
            line.push(byte[0]);
        }
        let text = String::from_utf8(line).expect("ascii");
        let fields: Vec<&str> = text.trim_end().split(' ').collect();
        assert_eq!(fields.len(), 6, "{text:?}");
        assert_eq!(fields[1], "TCP4");
        let source = format!("{}:{}", fields[2], fields[4])
            .parse()
            .expect("source");
        let destination = format!("{}:{}", fields[3], fields[5])
            .parse()
            .expect("destination");
        (source, destination)
    } else {
        stream.read_exact(&mut first[5..]).await.expect("read v2");
        assert_eq!(&first[..12], &lbmesh_proxy::proxy_protocol::V2_SIGNATURE);
        assert_eq!(first[12], 0x21, "version 2, PROXY command");
        assert_eq!(first[13], 0x11, "TCP over IPv4");
        let len = u16::from_be_bytes([first[14], first[15]]) as usize;
        assert_eq!(len, 12);
        let mut block = [0u8; 12];
        stream.read_exact(&mut block).await.expect("address block");
        let source_ip = std::net::Ipv4Addr::new(block[0], block[1], block[2], block[3]);
        let destination_ip = std::net::Ipv4Addr::new(block[4], block[5], block[6], block[7]);
        let source_port = u16::from_be_bytes([block[8], block[9]]);
        let destination_port = u16::from_be_bytes([block[10], block[11]]);
        (
            SocketAddr::new(source_ip.into(), source_port),
            SocketAddr::new(destination_ip.into(), destination_port),
        )
    }
}

async fn proxy_protocol_carries_client_address(version: &str) {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.expect("bind");
    let backend = listener.local_addr().expect("addr");
    let parsed = tokio::spawn(parse_proxy_header(listener));
    let addr = listen_addr();
    let _lbd = TestLbd::start(&service(
        "pp",
        addr,
        &[(backend, 1)],
        &format!("proxy_protocol = \"{version}\""),
    ))
    .await;
    let stream = TcpStream::connect(addr).await.expect("connect");
    let client = stream.local_addr().expect("client addr");
    let (source, destination) = tokio::time::timeout(WAIT, parsed)
        .await
        .expect("header in time")
        .expect("parser");
    assert_eq!(source, client);
    assert_eq!(destination, addr, "the address the client connected to");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v1_carries_client_address() {
    proxy_protocol_carries_client_address("v1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v2_carries_client_address() {
    proxy_protocol_carries_client_address("v2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_only_idle_connections() {
    let echo = TestBackend::start("echo", Behavior::Echo).await;
    let addr = listen_addr();
    let _lbd = TestLbd::start(&service(
        "idle",
        addr,
        &[(echo.addr, 1)],
        "idle_timeout = \"400ms\"",
    ))
    .await;

    // A connection that talks every 100 ms outlives the timeout several times.
    let mut busy = TcpStream::connect(addr).await.expect("connect");
    for i in 0..15u8 {
        busy.write_all(&[i]).await.expect("write");
        let mut echo_byte = [0u8; 1];
        tokio::time::timeout(WAIT, busy.read_exact(&mut echo_byte))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(echo_byte[0], i);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A silent one is closed by the proxy.
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(WAIT, idle.read(&mut buf))
        .await
        .expect("closed within the wait")
        .unwrap_or(0);
    assert_eq!(n, 0, "an idle connection must see EOF");
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_is_never_exceeded() {
    let holder = TestBackend::start("holder", Behavior::IdentifyThenEcho).await;
    let addr = listen_addr();
    let lbd = TestLbd::start(&service(
        "capped",
        addr,
        &[(holder.addr, 1)],
        "max_connections = 3",
    ))
    .await;

    // Ten clients connect at once; the kernel completes their handshakes
    // (the backlog), but lbd serves only three at a time.
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let mut served = Vec::new();
    let mut waiting = Vec::new();
    for mut client in clients {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(300), client.read(&mut byte)).await {
            Ok(Ok(1)) => served.push(client),
            _ => waiting.push(client),
        }
    }
    assert_eq!(served.len(), 3, "exactly the cap is served");
    let text = lbd.metrics().await;
    assert_eq!(
        metric(
            &text,
            "lbmesh_service_active_connections",
            &[("service", "capped")]
        ),
        Some(3.0)
    );
    assert_eq!(holder.accepted(), 3);

    // Closing one served client lets exactly one waiting client through.
    drop(served.pop());
    let mut progressed = 0;
    for client in &mut waiting {
        let mut byte = [0u8; 1];
        if let Ok(Ok(1)) =
            tokio::time::timeout(Duration::from_millis(500), client.read(&mut byte)).await
        {
            progressed += 1;
        }
    }
    assert_eq!(progressed, 1);
    let text = lbd.metrics().await;
    assert_eq!(
        metric(
            &text,
            "lbmesh_service_active_connections",
            &[("service", "capped")]
        ),
        Some(3.0)
    );
}

/// A connection that ends in a reset counts against the side that reset it:
/// a backend's reset is `side="backend"`, a client's is `side="client"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_counts_as_a_forward_error_of_the_side_that_sent_it() {
    // A backend that answers its first read with a reset.
    let backend = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let backend_addr = backend.local_addr().expect("addr");
    tokio::spawn(async move {
        for _ in 0..2 {
            let Ok((mut stream, _)) = backend.accept().await else {
                return;
            };
            let mut buf = [0u8; 16];
            let _ = stream.read(&mut buf).await;
            if &buf[..5] == b"reset" {
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                drop(stream);
            } else {
                // Holds the connection until the client resets it.
                let _ = stream.read(&mut buf).await;
            }
        }
    });
    let addr = listen_addr();
    let lbd = TestLbd::start(&service("resets", addr, &[(backend_addr, 1)], "")).await;
    let errors = |side: &'static str| {
        let lbd = &lbd;
        async move {
            let text = lbd.metrics().await;
            metric(
                &text,
                "lbmesh_forward_errors_total",
                &[("service", "resets"), ("side", side)],
            )
        }
    };

    let mut by_backend = TcpStream::connect(addr).await.expect("connect");
    by_backend.write_all(b"reset").await.expect("send");
    let mut buf = [0u8; 1];
    let ended = by_backend.read(&mut buf).await;
    assert!(
        matches!(ended, Ok(0) | Err(_)),
        "the backend's reset ends the client's connection: {ended:?}"
    );
    eventually("one backend-side error", || async {
        errors("backend").await == Some(1.0)
    })
    .await;
    assert_eq!(errors("client").await, Some(0.0));

    let by_client = TcpStream::connect(addr).await.expect("connect");
    let mut by_client = by_client.into_std().expect("std stream");
    std::io::Write::write_all(&mut by_client, b"hold").expect("send");
    // Give the proxy time to connect and forward before the reset.
    tokio::time::sleep(Duration::from_millis(100)).await;
    socket2::SockRef::from(&by_client)
        .set_linger(Some(Duration::ZERO))
        .expect("linger 0");
    drop(by_client);
    eventually("one client-side error", || async {
        errors("client").await == Some(1.0)
    })
    .await;
    assert_eq!(errors("backend").await, Some(1.0));
}

/// Silent clients from one address can hold only their share of a service
/// with `max_connections_per_client`: a connection over it is closed at once
/// and counted, and other addresses are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_per_client_share() {
    let holder = TestBackend::start("holder", Behavior::IdentifyThenEcho).await;
    let addr = listen_addr();
    let lbd = TestLbd::start(&service(
        "shared",
        addr,
        &[(holder.addr, 1)],
        "max_connections = 5\nmax_connections_per_client = 2",
    ))
    .await;
    let (one, other): (IpAddr, IpAddr) =
        ("127.0.0.1".parse().unwrap(), "127.0.0.3".parse().unwrap());
    // Two silent clients from one address are served (the backend names
    // itself to each)...
    let mut silent = Vec::new();
    for _ in 0..2 {
        let mut stream = connect_from(one, addr).await;
        assert_eq!(read_line(&mut stream).await, "holder");
        silent.push(stream);
    }
    // ...a third from the same address is closed at once...
    let mut third = connect_from(one, addr).await;
    let mut byte = [0u8; 1];
    let ended = tokio::time::timeout(WAIT, third.read(&mut byte)).await;
    assert!(
        matches!(ended, Ok(Ok(0) | Err(_))),
        "over the share: closed, not served: {ended:?}"
    );
    // ...while another address is served.
    let mut other = connect_from(other, addr).await;
    assert_eq!(read_line(&mut other).await, "holder");
    eventually("the refusal counted", || async {
        let text = lbd.metrics().await;
        metric(
            &text,
            "lbmesh_connections_refused_total",
            &[("service", "shared"), ("reason", "per_client")],
        ) == Some(1.0)
    })
    .await;
    assert_eq!(holder.accepted(), 3);
    // A freed place is taken again.
    drop(silent.pop());
    eventually("a place freed", || async {
        let mut again = connect_from(one, addr).await;
        let mut name = [0u8; 6];
        matches!(
            tokio::time::timeout(Duration::from_millis(300), again.read_exact(&mut name)).await,
            Ok(Ok(_))
        )
    })
    .await;
}
