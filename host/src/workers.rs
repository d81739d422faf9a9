//! Session workers, one thread per core: every client connection lives its
//! whole life on one single-threaded runtime with its own epoll, so a query's
//! hops (client read, plugin calls, upstream write, upstream read, client
//! write) never cross threads.
//!
//! On tokio's work-stealing runtime a connection's wakeups bounce between
//! workers: one parked on a futex is woken to steal, and a session's task
//! moves between cores. Measured under `pgbench -S -c4` on 2 cores: 0.5 futex
//! calls per transaction there, ~0.01 here, and 8–13 % more transactions per
//! second in interleaved A/B runs. The layout is Envoy's and pgbouncer's
//! (`so_reuseport`): connections are spread at accept time, to the worker
//! with the fewest live ones, and stay. The price: sessions on one worker
//! share its thread, so one session's long synchronous step (a masking batch,
//! a plugin running to its deadline) delays the others on that worker.
//!
//! Protocol-neutral: a listener hands over an accepted socket and the session
//! to run on it; the accept loop itself stays on the gateway's runtime.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// A fixed set of single-threaded runtimes that sessions are spread over.
/// The owner: dropping it stops them, and their sessions' sockets close.
pub struct Workers {
    spawner: Spawner,
    /// Dropped to stop each worker's runtime.
    stop: Vec<oneshot::Sender<()>>,
    /// One message per worker whose runtime (and sessions) has been dropped.
    stopped: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

/// How long a stopping worker waits for its sessions' blocking work, and how
/// long dropping [`Workers`] waits for the workers, before moving on.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Hands connections to the workers; cheap to clone, held by listeners.
/// It does not keep the workers alive: once [`Workers`] is dropped, a
/// connection handed over is closed at once.
#[derive(Clone)]
pub struct Spawner(Arc<[Worker]>, Arc<AtomicUsize>);

struct Worker {
    handle: tokio::runtime::Handle,
    /// Sessions running on this worker.
    live: Arc<AtomicUsize>,
}

impl Workers {
    /// Start `count` workers (at least one): `0` means one per available core.
    pub fn start(count: usize) -> std::io::Result<Self> {
        let count = match count {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        };
        let (done, stopped) = std::sync::mpsc::channel();
        let mut workers = Vec::with_capacity(count);
        let mut stop = Vec::with_capacity(count);
        for i in 0..count {
            let (worker, s) = Worker::start(i, done.clone())?;
            workers.push(worker);
            stop.push(s);
        }
        Ok(Workers {
            spawner: Spawner(workers.into(), Arc::new(AtomicUsize::new(0))),
            stop,
            stopped: std::sync::Mutex::new(stopped),
        })
    }

    /// How many workers run.
    pub fn len(&self) -> usize {
        self.stop.len()
    }

    /// Never true: there is always at least one worker.
    pub fn is_empty(&self) -> bool {
        self.stop.is_empty()
    }

    /// A handle for listeners.
    pub fn spawner(&self) -> Spawner {
        self.spawner.clone()
    }
}

impl Drop for Workers {
    /// Stop every worker and wait (bounded) until each has dropped its
    /// sessions, so that a gateway shutting down ends them before it exits.
    fn drop(&mut self) {
        let count = self.stop.len();
        self.stop.clear();
        let stopped = self.stopped.get_mut().unwrap_or_else(|p| p.into_inner());
        let deadline = std::time::Instant::now() + STOP_WAIT;
        for _ in 0..count {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if stopped.recv_timeout(left).is_err() {
                tracing::warn!("session workers still stopping after {STOP_WAIT:?}; not waiting longer");
                break;
            }
        }
    }
}

impl Spawner {
    /// Move an accepted socket to the least busy worker and run `session` on
    /// it there. The socket leaves the calling runtime's reactor; if the
    /// worker cannot take it, the connection is closed and the error logged.
    pub fn spawn<F, Fut>(&self, sock: TcpStream, session: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let sock = match sock.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand an accepted connection to a worker");
                return;
            }
        };
        let worker = self.pick();
        let live = LiveGuard::enter(worker.live.clone());
        worker.handle.spawn(async move {
            let _live = live;
            match TcpStream::from_std(sock) {
                Ok(sock) => session(sock).await,
                Err(e) => tracing::warn!(error = %e, "a worker cannot register an accepted connection"),
            }
        });
    }

    /// The worker with the fewest live sessions, scanning from a rotating
    /// start so that ties are spread round-robin.
    fn pick(&self) -> &Worker {
        let n = self.0.len();
        let start = self.1.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|i| &self.0[(start + i) % n])
            .min_by_key(|w| w.live.load(Ordering::Relaxed))
            .expect("at least one worker")
    }

    /// Live sessions per worker.
    pub fn live(&self) -> Vec<usize> {
        self.0.iter().map(|w| w.live.load(Ordering::Relaxed)).collect()
    }
}

impl Worker {
    fn start(index: usize, done: std::sync::mpsc::Sender<()>) -> std::io::Result<(Self, oneshot::Sender<()>)> {
        // I/O and timers only: sessions start no processes and handle no
        // signals (the main runtime does), and a process driver would look
        // for exited children on every park.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .thread_name(format!("wardgate-worker-{index}-blocking"))
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new().name(format!("wardgate-worker-{index}")).spawn(move || {
            // Runs until the Workers are dropped; shutting the runtime down
            // then drops (closes) every session still on it.
            let _ = rt.block_on(stopped);
            rt.shutdown_timeout(STOP_WAIT);
            let _ = done.send(());
        })?;
        Ok((Worker { handle, live: Arc::new(AtomicUsize::new(0)) }, stop))
    }
}

/// Counts a session on its worker from hand-over to end (or drop).
struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    fn enter(live: Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::Relaxed);
        LiveGuard(live)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo session on a worker, seen from a client on the test's runtime.
    #[tokio::test]
    async fn sessions_run_on_worker_threads_and_are_spread() {
        let workers = Workers::start(2).unwrap();
        assert_eq!(workers.len(), 2);
        let spawner = workers.spawner();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        for _ in 0..4 {
            let client = TcpStream::connect(addr).await.unwrap();
            let (sock, _) = listener.accept().await.unwrap();
            spawner.spawn(sock, |mut s| async move {
                let name = std::thread::current().name().unwrap_or("").to_string();
                let mut b = [0u8; 4];
                while s.read_exact(&mut b).await.is_ok() {
                    s.write_all(name.as_bytes()).await.unwrap();
                    s.write_all(b"\n").await.unwrap();
                }
            });
            clients.push(client);
        }
        let mut names = Vec::new();
        for c in &mut clients {
            c.write_all(b"ping").await.unwrap();
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while c.read_exact(&mut b).await.is_ok() && b[0] != b'\n' {
                line.push(b[0]);
            }
            names.push(String::from_utf8(line).unwrap());
        }
        names.sort();
        assert_eq!(names, ["wardgate-worker-0", "wardgate-worker-0", "wardgate-worker-1", "wardgate-worker-1"]);
        assert_eq!(spawner.live(), [2, 2]);
        // Closing the clients ends the sessions; the counts go back to zero.
        drop(clients);
        for _ in 0..200 {
            if spawner.live() == [0, 0] {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(spawner.live(), [0, 0]);
    }

    /// Dropping the workers closes the connections they hold.
    #[tokio::test]
    async fn dropping_the_workers_closes_their_sessions() {
        let workers = Workers::start(1).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (sock, _) = listener.accept().await.unwrap();
        let spawner = workers.spawner();
        spawner.spawn(sock, |s| async move {
            let _hold = s;
            std::future::pending::<()>().await;
        });
        drop(workers);
        // A connection handed over after the stop is closed at once.
        let mut late = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (sock, _) = listener.accept().await.unwrap();
        spawner.spawn(sock, |s| async move {
            let _hold = s;
            std::future::pending::<()>().await;
        });
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), late.read(&mut b)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "late connection left open: {n:?}");
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), client.read(&mut b)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "connection still open after the workers stopped: {n:?}");
    }
}
