//! Thread-per-core proxy workers.
//!
//! Each worker is an OS thread driving its own single-threaded tokio
//! runtime. Every listen address is one socket with one descriptor per
//! worker (`dup`), each registered with that worker's event loop: a pending
//! connection wakes every worker and the first one free accepts it (the
//! others find nothing and go back to sleep), so a busy worker does not
//! hold up new clients while another idles, as SO_REUSEPORT's fixed hash
//! would. A connection accepted by a worker is served on that thread to its
//! end: nothing on its data path crosses threads (no work stealing, no
//! wake-up of another thread), and each thread's buffer pool serves only its
//! own connections. The control plane (admin API, registry, scheduler,
//! agent) runs on the main runtime.
//!
//! ```text
//! daemon ── bind addr, dup × N ──> worker i: accept loop ─> connections
//! drop   ── stop ──> each worker's runtime ends (open connections close) ─> join
//! ```

use std::future::Future;
use std::io;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// The running workers; dropping this stops them.
pub struct ProxyWorkers {
    handles: Vec<Handle>,
    threads: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl ProxyWorkers {
    /// Starts `count` workers (at least one).
    pub fn start(count: usize) -> io::Result<Self> {
        let stop = CancellationToken::new();
        let mut workers = Self {
            handles: Vec::new(),
            threads: Vec::new(),
            stop: stop.clone(),
        };
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            workers.handles.push(runtime.handle().clone());
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("lbd-proxy-{index}"))
                .spawn(move || runtime.block_on(stop.cancelled()))?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// How many workers run.
    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// Runs `future` on worker `index` (modulo the count); what it spawns
    /// stays on that worker.
    pub fn spawn_on<F>(&self, index: usize, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = &self.handles[index % self.handles.len()];
        handle.spawn(future);
    }
}

impl Drop for ProxyWorkers {
    fn drop(&mut self) {
        self.stop.cancel();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn each_worker_runs_on_its_own_thread_and_stops_on_drop() {
        let workers = ProxyWorkers::start(3).expect("workers start");
        assert_eq!(workers.count(), 3);
        let (sender, receiver) = mpsc::channel();
        for index in 0..3 {
            let sender = sender.clone();
            workers.spawn_on(index, async move {
                let name = std::thread::current().name().map(str::to_owned);
                // A task spawned from a worker stays on that worker.
                let inner =
                    tokio::spawn(async { std::thread::current().name().map(str::to_owned) })
                        .await
                        .ok()
                        .flatten();
                let _ = sender.send((name, inner));
            });
        }
        let mut names: Vec<String> = (0..3)
            .map(|_| {
                let (name, inner) = receiver
                    .recv_timeout(std::time::Duration::from_secs(10))
                    .expect("every worker runs its task");
                assert_eq!(name, inner);
                name.expect("named thread")
            })
            .collect();
        names.sort();
        assert_eq!(names, ["lbd-proxy-0", "lbd-proxy-1", "lbd-proxy-2"]);

        // A task parked on a worker is dropped when the workers stop.
        let (parked_sender, parked_receiver) = mpsc::channel::<()>();
        workers.spawn_on(0, async move {
            let _keep = parked_sender;
            std::future::pending::<()>().await;
        });
        drop(workers);
        assert!(
            parked_receiver.recv().is_err(),
            "the parked task's sender was dropped"
        );
    }
}
