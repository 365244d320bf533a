//! Stopping on a signal: a flag set by the signal handler, checked between orders, and
//! a sleep that wakes up early when the flag is set.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use std::ffi::c_int;

use crate::exit::Exit;

/// How often a sleep looks at the flag: short enough to stop within the 2 s promise,
/// long enough not to spin.
const SLICE: Duration = Duration::from_millis(50);

/// The signals that stop the worker gracefully (the order in flight is finished), with
/// their names. Besides SIGTERM and SIGINT: SIGHUP (a closed terminal or session) and
/// SIGQUIT (Ctrl-\), and SIGUSR1 and SIGUSR2, whose default action would end the
/// process at once, perhaps between a decrease and its status update. A second one
/// exits at once with 128 + its number.
pub const STOP_SIGNALS: [(c_int, &str); 6] = [
    (SIGTERM, "SIGTERM"),
    (SIGINT, "SIGINT"),
    (SIGHUP, "SIGHUP"),
    (SIGQUIT, "SIGQUIT"),
    (SIGUSR1, "SIGUSR1"),
    (SIGUSR2, "SIGUSR2"),
];

/// A stop request shared with the signal handlers (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Stop {
    requested: Arc<AtomicBool>,
    /// The number of the last stop signal received; 0 for none.
    signal: Arc<AtomicUsize>,
}

impl Stop {
    pub fn new() -> Stop {
        Stop::default()
    }

    /// Sets the flag on the first of the [`STOP_SIGNALS`]; a second one ends the process
    /// at once (exit 128 + the signal's number: 143 for SIGTERM, 130 for SIGINT, 129 for
    /// SIGHUP, 131 for SIGQUIT). Installing handlers is also what makes the process stop
    /// on SIGTERM when it runs as PID 1 in a container.
    pub fn install_signal_handlers(&self) -> std::io::Result<()> {
        use signal_hook::flag;
        for (signal, _) in STOP_SIGNALS {
            // Order matters: the conditional exit must see the flag before this signal sets it.
            flag::register_conditional_shutdown(
                signal,
                Exit::SecondSignal(signal).code(),
                Arc::clone(&self.requested),
            )?;
            flag::register(signal, Arc::clone(&self.requested))?;
            flag::register_usize(signal, Arc::clone(&self.signal), signal as usize)?;
        }
        Ok(())
    }

    /// Asks everything holding this flag to stop (what the signal handlers do).
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
    }

    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// The name of the signal that asked for the stop, if one did.
    pub fn signal(&self) -> Option<&'static str> {
        let number = self.signal.load(Ordering::SeqCst);
        STOP_SIGNALS
            .iter()
            .find(|(s, _)| *s as usize == number)
            .map(|(_, name)| *name)
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

    #[test]
    fn a_request_without_a_signal_names_none() {
        let stop = Stop::new();
        stop.request();
        assert_eq!(stop.signal(), None);
    }
}
