//! What one cycle did: the counts the summary line, the heartbeat and `once`'s exit
//! code are made of.

use std::time::Duration;

use crate::outcome::Outcome;

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
    /// The registered list could not be fetched (from the start, or part way).
    pub list_failed: bool,
    /// Why the cycle stopped taking orders before the end of the list, if it did.
    pub ended_early: Option<String>,
    pub duration: Duration,
}

impl CycleReport {
    /// True when every fetched order reached a final state and nothing is left to retry:
    /// `once` exits 0 then, 1 otherwise.
    pub fn complete(&self) -> bool {
        !self.list_failed
            && self.ended_early.is_none()
            && self.deferred == 0
            && self.pending == 0
            && self.skipped == 0
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
