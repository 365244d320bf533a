//! Stopping on SIGTERM/SIGINT: a flag set by the signal handler, checked between orders,
//! and a sleep that wakes up early when the flag is set.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often a sleep looks at the flag: short enough to stop within the 2 s promise,
/// long enough not to spin.
const SLICE: Duration = Duration::from_millis(50);

/// A stop request shared with the signal handlers (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn new() -> Stop {
        Stop::default()
    }

    /// Sets the flag on the first SIGTERM or SIGINT; a second one ends the process at
    /// once (exit 143 or 130). Installing handlers is also what makes the process stop
    /// on SIGTERM when it runs as PID 1 in a container.
    pub fn install_signal_handlers(&self) -> std::io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        use signal_hook::flag;
        for (signal, code) in [(SIGTERM, 143), (SIGINT, 130)] {
            // Order matters: the conditional exit must see the flag before this signal sets it.
            flag::register_conditional_shutdown(signal, code, Arc::clone(&self.0))?;
            flag::register(signal, Arc::clone(&self.0))?;
        }
        Ok(())
    }

    /// Asks everything holding this flag to stop (what the signal handlers do).
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Sleeps for `duration` unless a stop is requested first; returns false if it was.
    pub fn sleep(&self, duration: Duration) -> bool {
        let end = Instant::now() + duration;
        loop {
            if self.requested() {
                return false;
            }
            let now = Instant::now();
            if now >= end {
                return true;
            }
            std::thread::sleep(SLICE.min(end - now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_is_cut_short_by_a_request() {
        let stop = Stop::new();
        let other = stop.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            other.request();
        });
        let start = Instant::now();
        assert!(!stop.sleep(Duration::from_secs(10)));
        assert!(start.elapsed() < Duration::from_secs(2));
        t.join().unwrap();
    }

    #[test]
    fn sleep_runs_its_course_without_a_request() {
        let start = Instant::now();
        assert!(Stop::new().sleep(Duration::from_millis(120)));
        assert!(start.elapsed() >= Duration::from_millis(120));
    }
}
