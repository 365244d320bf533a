//! What one cycle did: the counts the summary line, the heartbeat and `once`'s exit
//! code are made of.

use std::time::Duration;

use crate::cycle::outcome::Outcome;
use crate::state::heartbeat::CycleBeat;

/// What one cycle did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CycleReport {
    /// Orders seen in the registered list (each once per cycle).
    pub fetched: u64,
    pub ready: u64,
    pub blocked: u64,
    pub unknown: u64,
    /// Left `registered` with nothing taken, for a later cycle.
    pub deferred: u64,
    /// Decided but status not set (stock taken for `ready`), after this cycle's retries.
    pub pending: u64,
    /// `run` only: orders still waiting for a retry when the cycle ended; they go on
    /// during the interval and in the next cycle.
    pub waiting: u64,
    /// Listed entries that could not be acted on (bad data) or whose status update was refused.
    pub skipped: u64,
    /// Orders only logged because of `--dry-run`.
    pub dry_run: u64,
    /// Of the outcomes counted, those of orders carried over from an earlier cycle (a
    /// retry that waited across the interval, a pending status update resumed), not
    /// listed in this one.
    pub carried: u64,
    /// The registered list could not be fetched (from the start, or part way).
    pub list_failed: bool,
    /// Orders in quarantine at the end of the cycle (held back after an answer about
    /// them alone went wrong; see `Outcome::Quarantined`).
    pub quarantined: u64,
    /// Quarantined orders seen in the list and left alone (their quarantine not over).
    pub held: u64,
    /// Why the cycle stopped taking orders before the end of the list, if it did.
    pub ended_early: Option<String>,
    pub duration: Duration,
}

/// `n` and its noun, in the plural but for one: `1 order`, `3 orders`.
pub fn counted(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

impl CycleReport {
    /// The counts the heartbeat keeps of this cycle.
    pub fn beat(&self) -> CycleBeat {
        CycleBeat {
            ended_ms: 0,
            duration_ms: u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
            fetched: self.fetched,
            ready: self.ready,
            blocked: self.blocked,
            unknown: self.unknown,
            deferred: self.deferred,
            pending: self.pending,
            skipped: self.skipped,
            list_failed: self.list_failed,
        }
    }

    /// True when every fetched order reached a final state and nothing is left to retry:
    /// `once` exits 0 then, 1 otherwise.
    pub fn complete(&self) -> bool {
        self.went_through() && self.pending == 0 && self.quarantined == 0
    }

    /// True when the cycle went through its list and left nothing new behind: orders
    /// pending or quarantined were named when they got stuck (and in the reminders),
    /// so a cycle that only carries them is not a warning again.
    pub fn went_through(&self) -> bool {
        !self.list_failed && self.ended_early.is_none() && self.deferred == 0 && self.skipped == 0
    }

    /// Adds the outcomes of a later round of the same run (`once`'s wait for pending
    /// status updates) to this report.
    pub fn absorb(&mut self, later: &CycleReport) {
        self.ready += later.ready;
        self.blocked += later.blocked;
        self.unknown += later.unknown;
        self.deferred += later.deferred;
        self.skipped += later.skipped;
        self.dry_run += later.dry_run;
        self.carried += later.carried;
    }

    /// The counts in words, leaving out the zeros: `75 listed, 70 ready, 5 blocked; 3
    /// of them carried over from earlier cycles`.
    pub fn prose(&self) -> String {
        let mut parts: Vec<String> = [
            (self.fetched, "listed"),
            (self.ready, "ready"),
            (self.blocked, "blocked"),
            (self.unknown, "unknown"),
            (self.deferred, "deferred"),
            (self.pending, "pending"),
            (self.quarantined, "quarantined"),
            (self.waiting, "waiting"),
            (self.skipped, "skipped"),
            (self.dry_run, "dry run"),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        if parts.is_empty() {
            parts.push("nothing to do".into());
        }
        let mut text = parts.join(", ");
        if self.carried > 0 {
            text.push_str(&format!(
                "; {} of the outcomes for orders carried over from earlier cycles",
                self.carried
            ));
        }
        if self.list_failed {
            text.push_str(" (the order list could not be fetched)");
        }
        text
    }

    /// Counts one order's outcome.
    pub fn count(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Ready => self.ready += 1,
            Outcome::Blocked { .. } => self.blocked += 1,
            Outcome::Unknown { .. } => self.unknown += 1,
            Outcome::Deferred { .. } => self.deferred += 1,
            Outcome::Pending { .. } => {} // counted from the pending list at the end
            Outcome::StatusRefused { .. } => self.skipped += 1,
            Outcome::DryRun => self.dry_run += 1,
            // Counted from the quarantine at the end.
            Outcome::Quarantined { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prose_says_each_count_once_and_leaves_out_the_zeros() {
        assert_eq!(CycleReport::default().prose(), "nothing to do");
        let r = CycleReport {
            fetched: 0,
            ready: 75,
            carried: 75,
            ..Default::default()
        };
        assert_eq!(
            r.prose(),
            "75 ready; 75 of the outcomes for orders carried over from earlier cycles"
        );
        let r = CycleReport {
            fetched: 10,
            ready: 7,
            blocked: 2,
            pending: 1,
            list_failed: true,
            ..Default::default()
        };
        assert_eq!(
            r.prose(),
            "10 listed, 7 ready, 2 blocked, 1 pending (the order list could not be fetched)"
        );
    }

    #[test]
    fn only_a_clean_cycle_is_complete() {
        assert!(CycleReport::default().complete());
        assert!(
            !CycleReport {
                deferred: 1,
                ..Default::default()
            }
            .complete()
        );
        assert!(
            !CycleReport {
                pending: 1,
                ..Default::default()
            }
            .complete()
        );
        assert!(
            !CycleReport {
                list_failed: true,
                ..Default::default()
            }
            .complete()
        );
        assert!(
            !CycleReport {
                ended_early: Some("x".into()),
                ..Default::default()
            }
            .complete()
        );
        assert!(
            CycleReport {
                unknown: 2,
                ready: 3,
                blocked: 1,
                ..Default::default()
            }
            .complete()
        );
    }
}
