//! Test backends: TCP servers on loopback that identify themselves, echo,
//! count or hang up, and the clients that ask who answered.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::addrs::LOCALHOST;
use crate::wait::WAIT;

/// What a test backend does with each connection.
#[derive(Clone, Copy, Debug)]
pub enum Behavior {
    /// Writes its name and a newline, then closes.
    Identify,
    /// Writes its name and a newline, then echoes every byte until the client
    /// closes.
    IdentifyThenEcho,
    /// Echoes every byte; on EOF from the client, closes its write side.
    Echo,
    /// Reads until EOF, then answers `got N bytes` and closes.
    CountThenReply,
    /// Reads a line and answers `NAME: LINE`, then closes.
    AnswerLine,
    /// Reads what the client sent, then closes without a word (a task killed
    /// while serving a request).
    HangUpAfterRead,
    /// Reads until the client's EOF, then closes without a word (a sink for
    /// one-way messages).
    HangUpAtEof,
    /// Reads what the client sends and never answers or closes (a host cut
    /// off in the middle of a request).
    SilentAfterRead,
}

/// A backend server run by the test.
pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TestBackend {
    pub async fn start(name: &str, behavior: Behavior) -> Self {
        let listener = TcpListener::bind((LOCALHOST, 0))
            .await
            .expect("bind backend");
        Self::serve(name, listener, behavior)
    }

    /// Starts serving on a specific address (e.g. one that refused before).
    pub async fn start_on(name: &str, addr: SocketAddr, behavior: Behavior) -> Self {
        let listener = TcpListener::bind(addr)
            .await
            .expect("rebind backend address");
        Self::serve(name, listener, behavior)
    }

    fn serve(name: &str, listener: TcpListener, behavior: Behavior) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let label = format!("{name}\n");
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let label = label.clone();
                tokio::spawn(handle(stream, behavior, label));
            }
        });
        Self {
            name: name.to_owned(),
            addr,
            accepted,
            task,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes the listening socket.
    pub fn stop(self) {
        self.task.abort();
    }
}

async fn handle(mut stream: TcpStream, behavior: Behavior, label: String) {
    match behavior {
        Behavior::Identify => {
            let _ = stream.write_all(label.as_bytes()).await;
        }
        Behavior::IdentifyThenEcho => {
            let _ = stream.write_all(label.as_bytes()).await;
            echo(&mut stream).await;
        }
        Behavior::Echo => echo(&mut stream).await,
        Behavior::AnswerLine => {
            let request = read_line(&mut stream).await;
            let answer = format!("{}: {request}\n", label.trim_end());
            let _ = stream.write_all(answer.as_bytes()).await;
        }
        Behavior::HangUpAfterRead => {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
        }
        Behavior::HangUpAtEof | Behavior::SilentAfterRead => {
            let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
        }
        Behavior::CountThenReply => {
            let mut total = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                total += n;
            }
            let _ = stream
                .write_all(format!("got {total} bytes").as_bytes())
                .await;
        }
    }
}

async fn echo(stream: &mut TcpStream) {
    let (mut r, mut w) = stream.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

/// Connects and reads the first line (a test backend's name).
pub async fn who_answers(addr: SocketAddr) -> String {
    let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    read_line(&mut stream).await
}

/// Connects from a chosen source address and reads the first line.
pub async fn who_answers_from(source: IpAddr, addr: SocketAddr) -> String {
    let mut stream = connect_from(source, addr).await;
    read_line(&mut stream).await
}

/// Connects to `addr` from a chosen source address (any port).
pub async fn connect_from(source: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind source");
    tokio::time::timeout(WAIT, socket.connect(addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Reads up to a newline or EOF; the stream stays open.
pub async fn read_line(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("reply in time")
            .expect("read");
        if n == 0 || byte[0] == b'\n' {
            break;
        }
        out.push(byte[0]);
    }
    String::from_utf8(out).expect("utf-8 name")
}
