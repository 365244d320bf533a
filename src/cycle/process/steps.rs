//! Running a task's next step, at most one request: the stock decrease (or the
//! simulated failure in its place), the decision written to the journal, then the
//! status update; and the delay before a step's next attempt.

use std::time::Duration;

use opentelemetry::KeyValue;

use super::{Call, Journey, Ran, Step, StepEnd, Task};
use crate::cycle::outcome::{
    Deferral, Next, Outcome, SIMULATED_STOCK_FAILURE, after_decrease, after_status_update,
};
use crate::cycle::retry::{Attempts, pace};
use crate::cycle::schedule::{Service, Subject};
use crate::services::http::CallError;
use crate::services::orders::{Order, OrderStatus};
use crate::telemetry::instrument;

impl Journey {
    /// Runs the task's next step: at most one request.
    pub fn step(&mut self, mut task: Task) -> Ran {
        let _entered = task.enter();
        match task.step.clone() {
            Step::Decrease if self.dry_run => {
                let order = task.order;
                log::info!(
                    "order {}: would decrease {} {} and set it ready (dry run)",
                    order.id,
                    order.quantity,
                    order.wood_type
                );
                Ran {
                    end: StepEnd::Finished(task, Outcome::DryRun),
                    call: None,
                }
            }
            Step::Decrease => self.decrease(task),
            Step::Status {
                status,
                reason,
                recorded,
            } => {
                if !recorded {
                    if let Err(e) = self.journal.decided_in(&task.order, status, &task.trace()) {
                        let outcome = Outcome::Pending {
                            status,
                            reason: format!(
                                "{reason}; status not set: the state file could not record the decision: {e}"
                            ),
                        };
                        return Ran {
                            end: StepEnd::Finished(task, outcome),
                            call: None,
                        };
                    }
                    if let Step::Status { recorded, .. } = &mut task.step {
                        *recorded = true;
                    }
                }
                self.set_status(task, status, reason)
            }
        }
    }

    fn decrease(&mut self, mut task: Task) -> Ran {
        let order = task.order;
        if task.attempts.made == 0 && self.simulated_stock_failure(&order) {
            log::info!(
                "order {}: simulated failure at the stock step (ERROR_RATE {}), stock not touched",
                order.id,
                self.error_rate
            );
            instrument::event(
                "simulated failure",
                vec![KeyValue::new("ordermanagement.step", "stock")],
            );
            return self.decide(
                task,
                OrderStatus::Blocked,
                SIMULATED_STOCK_FAILURE.into(),
                None,
            );
        }
        if let Err(e) = self.journal.sending(&order) {
            let reason = format!("state file not writable, decrease not sent: {e}");
            return Ran {
                end: StepEnd::Finished(
                    task,
                    Outcome::Deferred {
                        reason,
                        cause: Deferral::Fatal,
                    },
                ),
                call: None,
            };
        }
        let started = std::time::Instant::now();
        let result = self.stock.decrease(&order, task.sent);
        task.sent += 1;

        let call = Some(Call::of(Service::Stock, Subject::Order(order.id), &result));
        if result.is_ok() && instrument::active() {
            instrument::count_stock_taken(u64::from(order.quantity), order.wood_type.as_str());
        }
        match after_decrease(&result) {
            Next::SetStatus(status, reason) => self.decide(task, status, reason, call),
            Next::Odd(reason) => {
                // Nothing was taken: the order is no longer in flight.
                self.journal_finished(&order);
                Ran {
                    end: StepEnd::Odd(task, Service::Stock, reason),
                    call,
                }
            }
            Next::Defer(reason, cause) => {
                // Nothing was taken: the order is no longer in flight.
                self.journal_finished(&order);
                Ran {
                    end: StepEnd::Finished(task, Outcome::Deferred { reason, cause }),
                    call,
                }
            }
            Next::Retry(reason) => {
                self.journal_finished(&order);
                // A retry follows a failure: `after_decrease` says so only for one.
                let Err(error) = result else {
                    return Ran {
                        end: StepEnd::Finished(
                            task,
                            Outcome::Deferred {
                                reason,
                                cause: Deferral::Unavailable,
                            },
                        ),
                        call,
                    };
                };
                let end = match self.retry(&mut task, &error, "stock decrease", started) {
                    Some(delay) => StepEnd::Again(task, Service::Stock, delay, pace(&error)),
                    None => StepEnd::Finished(
                        task,
                        Outcome::Deferred {
                            reason,
                            cause: Deferral::Unavailable,
                        },
                    ),
                };
                Ran { end, call }
            }
        }
    }

    /// The decrease's outcome is known: written down, then on to the status update.
    fn decide(
        &mut self,
        mut task: Task,
        status: OrderStatus,
        reason: String,
        call: Option<Call>,
    ) -> Ran {
        let recorded = match self
            .journal
            .decided_soon(&task.order, status, &task.trace())
        {
            Ok(mark) => {
                task.durable_at = mark;
                true
            }
            Err(e) => {
                log::error!(
                    "order {}: could not write its decision ({status}) to the state file: {e}; \
                     its status is not set until it can be",
                    task.order.id
                );
                false
            }
        };
        task.step = Step::Status {
            status,
            reason,
            recorded,
        };
        task.decided_at = Some(std::time::Instant::now());
        task.attempts = Attempts::default();
        task.sent = 0;
        Ran {
            end: StepEnd::Then(task, Service::Orders),
            call,
        }
    }

    /// One attempt of the status update of a decided order. It is never given up while
    /// the process lives (the stock of a `ready` order is taken: a new run would take it
    /// again): a failure schedules the next attempt, with a backoff capped at
    /// `--retry-cap`'s few seconds, and the Order Service's health decides when calls go
    /// (a service that is down hands the order back as pending, tried again later).
    /// Only a refusal (`400`/`404`) or an answer no retry fixes ends it. A simulated
    /// failure (at ERROR_RATE) is drawn on the step's first attempt only: it costs that
    /// one attempt, an event on the order's span, and the next attempt follows at once.
    fn set_status(&mut self, mut task: Task, status: OrderStatus, reason: String) -> Ran {
        let order = task.order;
        let started = std::time::Instant::now();
        let first = !std::mem::replace(&mut task.drawn, true);
        if first && self.error_rate > 0.0 && fastrand::f64() < self.error_rate {
            instrument::event(
                "simulated failure",
                vec![KeyValue::new("ordermanagement.step", "status")],
            );
            task.attempts.made += 1;
            log::info!(
                "order {}: simulated failure at the status step (ERROR_RATE {}); retrying at once",
                order.id,
                self.error_rate
            );
            return Ran {
                end: StepEnd::Then(task, Service::Orders),
                call: None,
            };
        }
        let result = self.orders.set_status(order.id, status, task.sent);
        task.sent += 1;
        let call = Some(Call::of(Service::Orders, Subject::Order(order.id), &result));
        let end = match result {
            Ok(()) => {
                self.journal_finished(&order);
                StepEnd::Finished(task, after_status_update(status, reason, Ok(())))
            }
            Err(error @ (CallError::Transient { .. } | CallError::InDoubt { .. })) => {
                let attempt = task.attempts.made + 1;
                let delay = self
                    .policy
                    .status_delay(&mut task.attempts, &error, fastrand::f64());
                log::debug!(
                    "order {}: status update failed (attempt {attempt}, after {} ms): {error}; \
                     retried until it lands",
                    order.id,
                    started.elapsed().as_millis(),
                );
                StepEnd::Again(task, Service::Orders, delay, pace(&error))
            }
            Err(CallError::Unexpected { detail, .. }) => {
                StepEnd::Odd(task, Service::Orders, detail)
            }
            Err(error) => StepEnd::Finished(task, after_status_update(status, reason, Err(error))),
        };
        Ran { end, call }
    }

    /// After a failed attempt: the delay before the next, logged, or `None` when spent.
    fn retry(
        &self,
        task: &mut Task,
        error: &CallError,
        what: &str,
        started: std::time::Instant,
    ) -> Option<Duration> {
        let attempt = task.attempts.made + 1;
        let delay = self
            .policy
            .after_failure(&mut task.attempts, error, fastrand::f64())?;
        log::debug!(
            "order {}: {what} failed (attempt {attempt} of {}, after {} ms): {error}; retrying",
            task.order.id,
            self.policy.max_retries + 1,
            started.elapsed().as_millis(),
        );
        Some(delay)
    }

    /// Takes `order` through every step at once, retries without their delays: for
    /// tests of the journal.
    #[cfg(test)]
    pub(crate) fn run_to_end(&mut self, order: Order) -> Outcome {
        let mut task = self.take(order, None, None);
        loop {
            match self.step(task).end {
                StepEnd::Finished(_, outcome) => return outcome,
                StepEnd::Then(next, _) | StepEnd::Again(next, ..) => task = next,
                StepEnd::Odd(task, _, reason) => {
                    return Outcome::Quarantined {
                        status: task.decided(),
                        reason,
                    };
                }
            }
        }
    }

    /// The simulated failure at the stock step is drawn once per order, from a generator
    /// seeded with its id: an order whose decrease was ever sent (and perhaps took the
    /// stock, then failed) is never blocked by a simulated failure in a later cycle,
    /// after a restart, or on another replica. Over many orders the rate is ERROR_RATE.
    fn simulated_stock_failure(&self, order: &Order) -> bool {
        self.error_rate > 0.0 && fastrand::Rng::with_seed(order.id).f64() < self.error_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::in_flight::NoJournal;

    #[test]
    fn the_simulated_stock_failure_is_the_same_for_an_order_every_time() {
        let journey = |error_rate| {
            let config = crate::Config {
                orders_url: "http://127.0.0.1:9".into(),
                stocks_url: "http://127.0.0.1:9".into(),
                error_rate,
                ..crate::Config::default()
            };
            Journey::new(&config, Box::new(NoJournal))
        };
        let j = journey(0.1);
        let order = |id| Order {
            id,
            wood_type: crate::services::orders::WoodType::Oak,
            quantity: 1,
        };
        let failed = (1..=20_000)
            .filter(|id| j.simulated_stock_failure(&order(*id)))
            .count();
        assert!(
            (1_700..=2_300).contains(&failed),
            "{failed} of 20000 at rate 0.1"
        );
        // Another journey (a later run, a restart, another replica) draws the same.
        let again = journey(0.1);
        for id in 1..=20_000 {
            assert_eq!(
                j.simulated_stock_failure(&order(id)),
                again.simulated_stock_failure(&order(id)),
                "order {id}"
            );
        }
        assert!(!(1..=1000).any(|id| journey(0.0).simulated_stock_failure(&order(id))));
        assert!((1..=1000).all(|id| journey(1.0).simulated_stock_failure(&order(id))));
    }
}
