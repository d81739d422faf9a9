//! Give the heap that closed sessions freed back to the operating system.
//!
//! glibc's allocator keeps freed memory in its arenas (one per thread that
//! allocated, so each session worker has its own) and by itself returns only
//! free space at the top of each; freed blocks between live ones stay
//! resident. After a burst of sessions closes, the gateway would keep their
//! buffers' pages: measured with `scripts/load.sh`'s
//! 220 sessions, 171 MiB resident after they closed, 48 MiB after one
//! `malloc_trim(0)` (the start was 50 MiB). So a task on the main runtime
//! checks the open sessions every [`INTERVAL`] and trims once they fell to
//! half the most seen since the last trim: once after a burst ends, never
//! under a steady load whose sessions come and go (each trim walks every
//! arena under its lock, and the pages it returns are faulted in again).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Stats;

/// How often the open sessions are checked.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// When to trim: after the open sessions fell to half the most seen since
/// the last trim.
#[derive(Debug, Default)]
pub struct TrimPolicy {
    most: u64,
}

impl TrimPolicy {
    /// Look at the sessions open now; `true` when it is time to trim.
    pub fn sessions_now(&mut self, open: u64) -> bool {
        self.most = self.most.max(open);
        let trim = open * 2 <= self.most && open < self.most;
        if trim {
            self.most = open;
        }
        trim
    }
}

/// Run the trimming task on the current runtime (a no-op where the
/// allocator is not glibc's).
pub fn spawn_trimmer(stats: Arc<Stats>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut policy = TrimPolicy::default();
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // It walks every arena, taking each one's lock in turn: off the
            // async threads.
            if policy.sessions_now(stats.sessions_active.load(Ordering::Relaxed))
                && tokio::task::spawn_blocking(trim).await.unwrap_or(false)
            {
                stats.heap_trims.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

/// Return the free pages of every arena to the OS; false where the allocator
/// is not glibc's (nothing was done).
fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let t = std::time::Instant::now();
        // SAFETY: malloc_trim only releases memory the allocator holds free;
        // it takes the arenas' own locks.
        let released = unsafe { libc::malloc_trim(0) };
        tracing::debug!(released = released != 0, took_us = t.elapsed().as_micros() as u64, "heap trimmed");
        true
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_a_burst_ends_never_while_sessions_come_and_go() {
        let mut p = TrimPolicy::default();
        let open = [0, 50, 220, 219, 221, 180, 111, 110, 90, 0, 0, 10, 6, 5, 1, 0];
        let trims =
            [false, false, false, false, false, false, false, true, false, true, false, false, false, true, true, true];
        let seen: Vec<bool> = open.iter().map(|&n| p.sessions_now(n)).collect();
        assert_eq!(seen, trims);
    }

    #[test]
    fn a_trim_returns_freed_heap() {
        // 2048 blocks of 64 KiB on another thread (its own arena); every
        // other one is freed, between blocks that stay, where glibc never
        // trims by itself (as a closed session's buffers sit between other
        // sessions' allocations). Blocks this size fit no small hole an
        // earlier test left in the arena, so they are laid out in turn.
        let rss = || {
            let s = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap().to_string();
            line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()
        };
        let kept = std::thread::spawn(|| {
            let mut blocks: Vec<Vec<u8>> = (0..2048).map(|i| vec![i as u8; 64 << 10]).collect();
            let mut i = 0;
            blocks.retain(|_| {
                i += 1;
                i % 2 == 0
            });
            blocks
        })
        .join()
        .unwrap();
        let before = rss();
        assert!(trim(), "glibc trims");
        let after = rss();
        drop(kept);
        assert!(before.saturating_sub(after) > 32 * 1024, "RSS {before} KiB -> {after} KiB");
    }
}
