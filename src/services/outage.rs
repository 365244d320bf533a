//! How a service that stays unreachable is logged: once when it goes (an error line
//! with what happened and what to check), then at most once a minute while it stays so
//! ("still unreachable since T; N calls failed"), then once when it answers again. The
//! lines a failing call would write meanwhile go to debug. Time is an argument, so the
//! tests drive a fake clock.

use std::time::{Duration, Instant, SystemTime};

/// At most one "still unreachable" line per service this often.
pub const REMINDER: Duration = Duration::from_secs(60);

/// One service's outage, across cycles.
#[derive(Debug, Default)]
pub struct Outage {
    /// When the first failed call of this outage came (wall clock for the line, and
    /// monotonic for the durations).
    since: Option<(SystemTime, Instant)>,
    failed: u64,
    last_line: Option<Instant>,
}

/// What to log for an event of an outage.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// Nothing at info or above: the outage was told already.
    Quiet,
    /// The service just became unreachable: the caller logs the error itself.
    Down,
    /// A reminder, at most once a minute.
    Still(String),
    /// It answered again after an outage.
    Back(String),
}

impl Outage {
    /// True while the service is unreachable.
    pub fn ongoing(&self) -> bool {
        self.since.is_some()
    }

    /// A call got no answer (refused, unreachable, timed out).
    pub fn failed(&mut self, name: &str, now: Instant) -> Line {
        self.failed += 1;
        let Some((wall, _)) = self.since else {
            self.since = Some((SystemTime::now(), now));
            self.last_line = Some(now);
            return Line::Down;
        };
        if self
            .last_line
            .is_some_and(|at| now.saturating_duration_since(at) < REMINDER)
        {
            return Line::Quiet;
        }
        self.last_line = Some(now);
        Line::Still(format!(
            "{name} still unreachable since {}; {} calls failed",
            clock(wall),
            self.failed
        ))
    }

    /// A call was answered (whatever the answer).
    pub fn answered(&mut self, name: &str, now: Instant) -> Line {
        let Some((_, started)) = self.since.take() else {
            return Line::Quiet;
        };
        let failed = std::mem::take(&mut self.failed);
        self.last_line = None;
        Line::Back(format!(
            "{name} answers again, after {} s unreachable; {failed} calls failed",
            now.saturating_duration_since(started).as_secs()
        ))
    }
}

/// `HH:MM:SS` UTC of a wall-clock time.
fn clock(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{:02}:{:02}:{:02} UTC",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_told_once_then_once_a_minute_then_when_it_ends() {
        let t0 = Instant::now();
        let mut o = Outage::default();
        assert_eq!(o.answered("Order Service", t0), Line::Quiet);
        assert_eq!(o.failed("Order Service", t0), Line::Down);
        assert!(o.ongoing());
        let s = Duration::from_secs(1);
        for i in 1..60 {
            assert_eq!(o.failed("Order Service", t0 + i * s), Line::Quiet, "{i}");
        }
        match o.failed("Order Service", t0 + 60 * s) {
            Line::Still(line) => {
                assert!(
                    line.starts_with("Order Service still unreachable since "),
                    "{line}"
                );
                assert!(line.ends_with("; 61 calls failed"), "{line}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(o.failed("Order Service", t0 + 61 * s), Line::Quiet);
        match o.answered("Order Service", t0 + 90 * s) {
            Line::Back(line) => assert_eq!(
                line,
                "Order Service answers again, after 90 s unreachable; 62 calls failed"
            ),
            other => panic!("{other:?}"),
        }
        assert!(!o.ongoing());
        // A new outage is told again at once.
        assert_eq!(o.failed("Order Service", t0 + 91 * s), Line::Down);
    }
}
