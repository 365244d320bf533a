//! The cycle's scheduling decisions, kept pure: whether a service is usable, what runs
//! next, and how long to sleep when nothing can. Time is an argument (`now`), never
//! read here, so the tests drive a fake clock.
//!
//! The worker has one thread and one request in flight. A call that fails transiently
//! does not put that thread to sleep: the order's next attempt is *scheduled* (it waits
//! here, keyed by the time it is due and the service it needs) and the worker goes on
//! with other orders. What runs next, in this order of preference:
//!
//! 1. a waiting order whose retry is due and whose service is usable (earliest first);
//! 2. a new order from the current page, if both services are usable and fewer than
//!    the scheduler's cap of orders wait;
//! 3. the next page of the list, when the page is used up (same conditions), or
//!    before the remaining new orders once fewer than half a page of them are left;
//! 4. otherwise sleep until the earliest of those can run, or end when nothing can.
//!
//! Each service has a [`Health`]: the results of its recent calls decide whether it gets
//! new calls. One that is failing is *out* for a cool-down, then gets one probe call;
//! after [`Rules::failed_probes`] failed probes in a row it is *down* for the rest of
//! the cycle, and the orders that need it stay for the next cycle.
//!
//! A failed attempt waits for its backoff, except where waiting protects nothing
//! ([`Scheduler::retry_at`]): a quick error answer (`500`, `502`) from a service that
//! answers most of its calls is retried as soon as the worker reaches it again, behind
//! what is already due, within a [`Budget`] of retries per recent calls; the attempt
//! after a decrease that stalled goes after a short settle ([`STALL_SETTLE`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// The two services the worker calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    Orders,
    Stock,
}

impl Service {
    pub const ALL: [Service; 2] = [Service::Orders, Service::Stock];

    /// The service's name in log lines.
    pub fn name(self) -> &'static str {
        match self {
            Service::Orders => "Order Service",
            Service::Stock => "Stock Service",
        }
    }

    fn index(self) -> usize {
        match self {
            Service::Orders => 0,
            Service::Stock => 1,
        }
    }
}

/// What one call told about its service's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The service answered (a success, or a business refusal such as `400`).
    Answered,
    /// A fast transient failure (`5xx`, connection refused...).
    Failed,
    /// The call took longer than the HTTP timeout, or got no reply at all: the service
    /// is overloaded or hung, and the next call would most likely wait as long.
    Stalled,
    /// An answer no retry fixes (a wrong URL, `415`...): down for this cycle at once.
    Broken(String),
    /// An answer the contract does not list (`409`, `422`, an unknown `400`...): about
    /// the list it is [`Verdict::Broken`]; about one order, see [`Health::record_from`].
    Odd(String),
}

/// What a call was about: the list, or one order (by id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    List,
    Order(u64),
}

/// Whose problem a failed call about one order is (see [`Health::record_from`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Blame {
    /// Nothing to say about the order: the call went well, or failed as any call may.
    #[default]
    Nobody,
    /// The order's own: the service answers other calls. The order is quarantined and
    /// the service keeps its state.
    Order,
    /// The service's: it fails for other orders too (or nothing shows it answers
    /// others). The orders listed were blamed earlier in the same run of failures and
    /// were not at fault: they leave quarantine.
    Service(Vec<u64>),
}

/// Orders in a row answered outside the contract by one service, with no answer
/// within it between, that take the service down for the cycle (a wrong base URL
/// answers every order so).
pub const ODD_ORDERS_DOWN: usize = 3;

/// How long a good answer about another subject counts as evidence that a service
/// answers, when one order's call fails.
pub const EVIDENCE_AGE: Duration = Duration::from_secs(60);

/// The thresholds of [`Health`]. See docs/how-it-works.md, "When a service fails".
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Recent calls remembered per service.
    pub window: u32,
    /// Failures among those that put the service out. With calls failing at random,
    /// as the demo's services do, this practically never happens by chance: at 30%,
    /// about once in 200,000 calls (at 10%, never); a service that refuses every call
    /// is out after 16 quick failures.
    pub failures: u32,
    /// The first cool-down; doubled after each failed probe.
    pub cool_down: Duration,
    /// The longest cool-down.
    pub cool_down_cap: Duration,
    /// Failed probes in a row after which the service is down for the cycle.
    pub failed_probes: u32,
    /// Stock Service stalls in a row after which it is down for the cycle.
    pub stalls_down: u32,
    /// The pause after a Stock Service stall before its next call.
    pub stall_settle: Duration,
    /// Retries at once allowed per call to the service in the budget's window.
    pub retry_budget: f64,
    /// Retries at once allowed per second whatever the calls (so that a service with
    /// few calls, such as the last orders of a drain, still gets them).
    pub retry_floor_per_second: u32,
}

impl Rules {
    /// Cool-downs scaled from the retry policy's delays: four times the first backoff,
    /// capped by the longest (0.8 s, 1.6 s with the defaults).
    pub fn from_backoff(base: Duration, cap: Duration) -> Rules {
        Rules {
            window: 20,
            failures: 16,
            cool_down: base.saturating_mul(4).min(cap),
            cool_down_cap: cap,
            failed_probes: 2,
            stalls_down: STALLS_DOWN,
            stall_settle: STALL_SETTLE,
            retry_budget: RETRY_BUDGET,
            retry_floor_per_second: RETRY_FLOOR_PER_SECOND,
        }
    }
}

/// Stock Service stalls in a row that take it out for the rest of the cycle: a service
/// stalling every call costs two stalls a cycle. In `run` the next cycle then starts
/// at once (see `Worker::between_cycles`).
pub const STALLS_DOWN: u32 = 2;

/// The pause after a Stock Service stall before its next decrease (the stalled order's
/// or another's), instead of the backoff: the real service is still tearing the
/// stalled request down when its answer arrives, and a call sent then can make it keep
/// a database connection out of its pool (docs/how-it-works.md, "when a service
/// fails", with the figures).
pub const STALL_SETTLE: Duration = Duration::from_millis(150);

/// Retries at once per call, over the last [`BUDGET_WINDOW`]: at most one retry for
/// every call that was not a retry, so a service answering more than half of its calls
/// gets its quick failures retried at once, and one failing more gets the backoff
/// (then the health rules take it out). With one request in flight a retry takes the
/// place of another order's call: it adds no load, it only decides which call goes
/// next. Envoy's retry budgets, Finagle's `RetryBudget` and gRPC's retry throttling
/// bound retries the same way, by a share of recent calls.
pub const RETRY_BUDGET: f64 = 0.5;

/// The budget's floor, as Finagle's `minRetriesPerSec` (its default, 10).
pub const RETRY_FLOOR_PER_SECOND: u32 = 10;

/// The window the budget counts calls and retries over, in one-second buckets.
pub const BUDGET_WINDOW: Duration = Duration::from_secs(10);

const BUCKETS: usize = 10;

/// Calls and retries at once of one service over the last [`BUDGET_WINDOW`].
#[derive(Debug, Clone, Default)]
pub struct Budget {
    /// Per bucket: (the second it counts, calls, retries at once).
    buckets: [(u64, u32, u32); BUCKETS],
    /// The instant seconds are counted from (set at the first use).
    epoch: Option<Instant>,
}

impl Budget {
    fn second(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        now.saturating_duration_since(epoch).as_secs()
    }

    fn bucket(&mut self, now: Instant) -> &mut (u64, u32, u32) {
        let second = self.second(now);
        let slot = &mut self.buckets[(second % BUCKETS as u64) as usize];
        if slot.0 != second {
            *slot = (second, 0, 0);
        }
        slot
    }

    /// Counts one call.
    pub fn call(&mut self, now: Instant) {
        let slot = self.bucket(now);
        slot.1 = slot.1.saturating_add(1);
    }

    /// (calls, retries at once) in the window.
    pub fn counts(&mut self, now: Instant) -> (u64, u64) {
        let second = self.second(now);
        self.buckets
            .iter()
            .filter(|(s, _, _)| second.saturating_sub(*s) < BUCKETS as u64 && *s <= second)
            .fold((0, 0), |(c, r), (_, calls, retries)| {
                (c + u64::from(*calls), r + u64::from(*retries))
            })
    }

    /// Takes one retry at once from the budget if there is one left.
    pub fn try_spend(&mut self, rules: &Rules, now: Instant) -> bool {
        let (calls, retries) = self.counts(now);
        let floor = u64::from(rules.retry_floor_per_second) * BUDGET_WINDOW.as_secs();
        let allowed = (calls as f64 * rules.retry_budget) as u64 + floor;
        if retries >= allowed {
            return false;
        }
        let slot = self.bucket(now);
        slot.2 = slot.2.saturating_add(1);
        true
    }
}

/// How soon a failed attempt may go again, as the retry policy sees the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// After the backoff.
    Backoff,
    /// A quick error answer from a service that answered: at once, within the budget.
    Budgeted,
    /// After [`STALL_SETTLE`], not the backoff: the attempt took the whole timeout (a
    /// stall), so the service had a long rest already.
    AfterStall,
}

/// Where a service stands.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Calls go out.
    Up,
    /// No calls before `until`; then one probe.
    Out { until: Instant, why: String },
    /// No calls for the rest of the cycle.
    Down { why: String },
}

/// One service's recent results and what follows from them.
#[derive(Debug, Clone)]
pub struct Health {
    service: Service,
    /// The last `window` results, newest in the low bit (1: a failure).
    recent: u64,
    seen: u32,
    failed_probes: u32,
    /// Stalls in a row, up to the last call.
    stalls: u32,
    /// No call before this, after a stall ([`STALL_SETTLE`]).
    settle_until: Option<Instant>,
    /// Down for the cycle because it stalled [`Rules::stalls_down`] times in a row.
    stalled_out: bool,
    state: State,
    budget: Budget,
    /// The subject of the last call answered within the contract, and when: evidence
    /// that the service answers, kept across cycles ([`Scheduler::reset_health`]).
    last_fine: Option<(Subject, Instant)>,
    /// The orders whose calls failed in a way one order can cause (an odd answer, a
    /// stall of the Order Service) since the last answer within the contract.
    streak: Vec<u64>,
}

impl Health {
    pub fn new(service: Service) -> Health {
        Health {
            service,
            recent: 0,
            seen: 0,
            failed_probes: 0,
            stalls: 0,
            settle_until: None,
            stalled_out: false,
            state: State::Up,
            budget: Budget::default(),
            last_fine: None,
            streak: Vec::new(),
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// True if a call may go out now (the probe, once a cool-down has passed).
    pub fn usable(&self, now: Instant) -> bool {
        self.usable_at(now) == Some(now)
    }

    /// When a call may go out; `None` when down.
    pub fn usable_at(&self, now: Instant) -> Option<Instant> {
        let settled = self.settle_until.map_or(now, |t| t.max(now));
        match &self.state {
            State::Up => Some(settled),
            State::Out { until, .. } => Some((*until).max(settled)),
            State::Down { .. } => None,
        }
    }

    /// Down for the cycle because it stalled [`Rules::stalls_down`] times in a row.
    pub fn stalled_out(&self) -> bool {
        self.stalled_out
    }

    pub fn down(&self) -> Option<&str> {
        match &self.state {
            State::Down { why } => Some(why),
            _ => None,
        }
    }

    /// Records the result of a call about the list ([`Health::record_from`]).
    pub fn record(&mut self, rules: &Rules, now: Instant, verdict: Verdict, detail: &str) {
        self.record_from(rules, now, verdict, detail, Subject::List);
    }

    /// Records the result of a call about `subject` that went out at a time it was
    /// [`Health::usable`]; `detail` says what went wrong, for the log lines.
    ///
    /// A service is judged by its failures across calls and orders, never by one
    /// order's answers. A failure one order can cause (an answer outside the contract;
    /// a stall of the Order Service) is that order's ([`Blame::Order`]: the service
    /// keeps its state) when the service answered another subject within the contract
    /// in the last [`EVIDENCE_AGE`] and no other order failed so since. Otherwise it
    /// counts against the service ([`Blame::Service`]): out for a cool-down, so that a
    /// call about another subject probes it; [`ODD_ORDERS_DOWN`] orders in a row
    /// answered outside the contract take it down for the cycle.
    pub fn record_from(
        &mut self,
        rules: &Rules,
        now: Instant,
        verdict: Verdict,
        detail: &str,
        subject: Subject,
    ) -> Blame {
        let verdict = match (verdict, subject) {
            (Verdict::Odd(why), Subject::List) => Verdict::Broken(why),
            (verdict, _) => verdict,
        };
        let order_kind = match (&verdict, subject) {
            (Verdict::Odd(_), Subject::Order(id)) => Some(id),
            (Verdict::Stalled, Subject::Order(id)) if self.service == Service::Orders => Some(id),
            _ => None,
        };
        let mut blame = Blame::Nobody;
        if verdict == Verdict::Answered {
            self.last_fine = Some((subject, now));
            self.streak.clear();
        }
        if let Some(id) = order_kind {
            let alone = self.streak.iter().all(|&o| o == id);
            let evidence = self.last_fine.is_some_and(|(s, at)| {
                s != subject && now.saturating_duration_since(at) <= EVIDENCE_AGE
            });
            if !self.streak.contains(&id) {
                self.streak.push(id);
            }
            if alone && evidence {
                // The order's own trouble: counted in the window, nothing more.
                self.budget.call(now);
                let mask = (1u64 << rules.window.clamp(1, 63)) - 1;
                self.recent = ((self.recent << 1) | 1) & mask;
                self.seen = (self.seen + 1).min(rules.window);
                return Blame::Order;
            }
            blame = Blame::Service(self.streak.iter().copied().filter(|&o| o != id).collect());
        }
        let verdict = match verdict {
            Verdict::Odd(why) if self.streak.len() >= ODD_ORDERS_DOWN => {
                let why = format!(
                    "{} answered {} orders in a row outside its contract; last: {why}",
                    self.service.name(),
                    self.streak.len()
                );
                Verdict::Broken(why)
            }
            verdict => verdict,
        };
        self.record_verdict(rules, now, verdict, detail);
        blame
    }

    fn record_verdict(&mut self, rules: &Rules, now: Instant, verdict: Verdict, detail: &str) {
        let probe = matches!(self.state, State::Out { .. });
        let failed = verdict != Verdict::Answered;
        self.budget.call(now);
        self.stalls = if verdict == Verdict::Stalled {
            self.stalls.saturating_add(1)
        } else {
            0
        };
        if verdict == Verdict::Stalled && self.service == Service::Stock {
            // Every stall, also the one that takes the service out: the next cycle
            // keeps it (see [`Scheduler::reset_health`]).
            self.settle_until = Some(now + rules.stall_settle);
        }
        let mask = (1u64 << rules.window.clamp(1, 63)) - 1;
        self.recent = ((self.recent << 1) | u64::from(failed)) & mask;
        self.seen = (self.seen + 1).min(rules.window);
        let name = self.service.name();
        match verdict {
            Verdict::Answered => {
                if probe {
                    log::info!("{name} answered the probe: back in use");
                }
                self.failed_probes = 0;
                self.state = State::Up;
            }
            Verdict::Broken(why) => {
                self.state = State::Down { why };
            }
            // The real Stock Service stalls when its pool of database connections is
            // used up, and only a garbage collection in its process frees the pool.
            // Requests bring the collection on (each stalled one counts), idle time
            // never does: the next decrease goes after [`STALL_SETTLE`], not a backoff.
            // [`STALLS_DOWN`] stalls in a row take it out until the next cycle, so that
            // a service stalling every call costs that many stalls a cycle, not one per
            // order.
            Verdict::Stalled
                if self.service == Service::Stock && self.stalls < rules.stalls_down =>
            {
                log::info!(
                    "{name} stalled ({} in a row); the next decrease goes in {} ms ({} in a \
                     row leave it alone until the next cycle); last: {detail}",
                    self.stalls,
                    rules.stall_settle.as_millis(),
                    rules.stalls_down
                );
            }
            Verdict::Stalled if self.service == Service::Stock => {
                self.stalled_out = true;
                self.state = State::Down {
                    why: format!(
                        "{name} stalled {} times in a row (its database pool is exhausted); \
                         it is called again next cycle; last: {detail}",
                        self.stalls
                    ),
                };
            }
            // An odd answer not blamed on its order: out, so that a call about another
            // subject probes the service.
            Verdict::Failed | Verdict::Stalled | Verdict::Odd(_) => {
                let stalled = verdict == Verdict::Stalled;
                let odd = matches!(verdict, Verdict::Odd(_));
                let tripped = stalled || odd || self.recent.count_ones() >= rules.failures;
                if !(probe || tripped) {
                    return;
                }
                if probe {
                    self.failed_probes += 1;
                }
                let what = if stalled {
                    "stalled".to_string()
                } else if odd {
                    "answered outside its contract".to_string()
                } else {
                    format!(
                        "failed {} of its last {} calls",
                        self.recent.count_ones(),
                        self.seen
                    )
                };
                if self.failed_probes >= rules.failed_probes {
                    let why = format!(
                        "{name} {what}, and {} probes in a row failed; last: {detail}",
                        self.failed_probes
                    );
                    self.state = State::Down { why };
                    return;
                }
                let pause = rules
                    .cool_down
                    .saturating_mul(1 << self.failed_probes.min(16))
                    .min(rules.cool_down_cap);
                log::info!(
                    "{name} {what}: no new calls for {} ms, then one probe; last: {detail}",
                    pause.as_millis()
                );
                self.state = State::Out {
                    until: now + pause,
                    why: format!("{name} {what}; last: {detail}"),
                };
            }
        }
    }
}

/// What the worker does next.
#[derive(Debug, PartialEq)]
pub enum Next<T> {
    /// Run this waiting order's next attempt.
    Run(T),
    /// Take the next order of the current page.
    NewOrder,
    /// Fetch the next page of the list.
    FetchPage,
    /// Nothing can run for this long (always more than zero).
    Sleep(Duration),
    /// This service is down: the orders waiting for it are handed back, to be left for
    /// the next cycle.
    Abandon(Service, Vec<T>),
    /// New orders are left: this service is down and they need it, so the cycle takes
    /// no more of them.
    EndList(Service),
    /// Nothing is left that can run in this cycle.
    Done,
}

/// New work the worker has, besides the waiting orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Work {
    /// Orders of the current page not taken yet.
    pub new_orders: bool,
    /// Few enough of them are left (or none) that the next page may be fetched.
    pub page_low: bool,
    /// When the next page may be fetched (`now` for at once, later after a failed
    /// fetch); `None` when the list is done.
    pub next_page: Option<Instant>,
}

/// A waiting order, ordered by the time it is due (and by arrival among equals).
#[derive(Debug)]
struct Entry<T> {
    due: Instant,
    seq: u64,
    task: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// The waiting orders of one cycle and the two services' health.
#[derive(Debug)]
pub struct Scheduler<T> {
    waiting: [BinaryHeap<Reverse<Entry<T>>>; 2],
    health: [Health; 2],
    rules: Rules,
    cap: usize,
    seq: u64,
}

impl<T> Scheduler<T> {
    /// At most `cap` orders wait at once; at the cap, no new order is taken until one
    /// of them is done.
    pub fn new(rules: Rules, cap: usize) -> Scheduler<T> {
        Scheduler {
            waiting: [BinaryHeap::new(), BinaryHeap::new()],
            health: [Health::new(Service::Orders), Health::new(Service::Stock)],
            rules,
            cap: cap.max(1),
            seq: 0,
        }
    }

    /// Orders waiting, for both services.
    pub fn len(&self) -> usize {
        self.waiting.iter().map(BinaryHeap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn health(&self, service: Service) -> &Health {
        &self.health[service.index()]
    }

    /// Records what a call to `service` told about it.
    pub fn record(&mut self, service: Service, now: Instant, verdict: Verdict, detail: &str) {
        self.health[service.index()].record(&self.rules, now, verdict, detail);
    }

    /// Records what a call about `subject` told about `service`, and whose problem a
    /// failure is ([`Health::record_from`]).
    pub fn record_from(
        &mut self,
        service: Service,
        now: Instant,
        verdict: Verdict,
        detail: &str,
        subject: Subject,
    ) -> Blame {
        self.health[service.index()].record_from(&self.rules, now, verdict, detail, subject)
    }

    /// Puts a task to wait until `due`, for `service`. The cap is enforced by
    /// [`Scheduler::next`] not taking new orders, so a retry is never refused.
    pub fn wait(&mut self, service: Service, due: Instant, task: T) {
        self.seq += 1;
        self.waiting[service.index()].push(Reverse(Entry {
            due,
            seq: self.seq,
            task,
        }));
    }

    /// The waiting tasks, in no particular order.
    pub fn tasks(&self) -> impl Iterator<Item = &T> {
        self.waiting
            .iter()
            .flat_map(|heap| heap.iter().map(|Reverse(e)| &e.task))
    }

    /// A new cycle: both services are given a fresh start (their waiting tasks stay),
    /// except that the Stock Service's settle after its last stall still runs: in
    /// `run` a new cycle follows two stalls at once, and its first decrease must not
    /// reach the service while the stalled request is still torn down.
    pub fn reset_health(&mut self) {
        let settle = self.health[Service::Stock.index()].settle_until;
        let fine = self.health.each_ref().map(|h| h.last_fine);
        self.health = [Health::new(Service::Orders), Health::new(Service::Stock)];
        self.health[Service::Stock.index()].settle_until = settle;
        for (health, fine) in self.health.iter_mut().zip(fine) {
            health.last_fine = fine;
        }
    }

    /// When a failed attempt at `service` goes again: at once where [`Pace`] allows it
    /// and the service is usable (a quick error answer only within its [`Budget`]; a
    /// stall's retry once its [`STALL_SETTLE`] has passed), after `backoff` otherwise.
    /// Behind what is already due either way: due now, it runs after the tasks due
    /// earlier.
    pub fn retry_at(
        &mut self,
        service: Service,
        now: Instant,
        backoff: Duration,
        pace: Pace,
    ) -> Instant {
        let health = &mut self.health[service.index()];
        match pace {
            // After a stall: as soon as its settle has passed.
            Pace::AfterStall => health.usable_at(now).unwrap_or(now + backoff),
            Pace::Budgeted if health.usable(now) && health.budget.try_spend(&self.rules, now) => {
                now
            }
            Pace::Budgeted | Pace::Backoff => now + backoff,
        }
    }

    /// The waiting tasks of one service, earliest first.
    pub fn drain_service(&mut self, service: Service) -> Vec<T> {
        let mut all: Vec<Entry<T>> = self.waiting[service.index()]
            .drain()
            .map(|Reverse(e)| e)
            .collect();
        all.sort();
        all.into_iter().map(|e| e.task).collect()
    }

    /// Every waiting task, earliest first (for a stop request).
    pub fn drain(&mut self) -> Vec<T> {
        let mut all: Vec<Entry<T>> = self
            .waiting
            .iter_mut()
            .flat_map(|heap| heap.drain().map(|Reverse(e)| e))
            .collect();
        all.sort();
        all.into_iter().map(|e| e.task).collect()
    }

    /// The decision; see the module's documentation.
    pub fn next(&mut self, now: Instant, work: Work) -> Next<T> {
        for service in Service::ALL {
            let i = service.index();
            if self.health[i].down().is_some() && !self.waiting[i].is_empty() {
                let mut tasks: Vec<Entry<T>> =
                    self.waiting[i].drain().map(|Reverse(e)| e).collect();
                tasks.sort();
                return Next::Abandon(service, tasks.into_iter().map(|e| e.task).collect());
            }
        }
        let due = Service::ALL
            .into_iter()
            .filter(|s| self.health[s.index()].usable(now))
            .filter_map(|s| {
                let top = self.waiting[s.index()].peek()?;
                (top.0.due <= now).then_some((top.0.due, top.0.seq, s))
            })
            .min();
        if let Some((_, _, service)) = due
            && let Some(Reverse(entry)) = self.waiting[service.index()].pop()
        {
            return Next::Run(entry.task);
        }
        let orders = self.health(Service::Orders);
        let stock = self.health(Service::Stock);
        let room = self.len() < self.cap;
        // The earliest time something can run, among what is not runnable now.
        let mut wake: Option<Instant> = None;
        let mut later = |at: Option<Instant>| {
            if let Some(at) = at {
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
        };
        if work.new_orders || work.next_page.is_some() {
            for service in [Service::Stock, Service::Orders] {
                if self.health(service).down().is_some() {
                    return Next::EndList(service);
                }
            }
        }
        // The next page is fetched when the current one runs low, so that a failed
        // fetch waiting for its retry leaves orders to go on with.
        if let Some(page_at) = work.next_page
            && (work.page_low || !work.new_orders)
            && room
        {
            if page_at <= now && orders.usable(now) {
                return Next::FetchPage;
            }
            later(orders.usable_at(now).map(|at| at.max(page_at)));
        }
        if work.new_orders && room {
            if orders.usable(now) && stock.usable(now) {
                return Next::NewOrder;
            }
            later(orders.usable_at(now).max(stock.usable_at(now)));
        }
        for service in Service::ALL {
            if let Some(top) = self.waiting[service.index()].peek() {
                later(
                    self.health(service)
                        .usable_at(now)
                        .map(|at| at.max(top.0.due)),
                );
            }
        }
        match wake {
            Some(at) => Next::Sleep((at - now).max(Duration::from_millis(1))),
            None => Next::Done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn rules() -> Rules {
        Rules {
            window: 10,
            failures: 9,
            cool_down: 100 * MS,
            cool_down_cap: 1000 * MS,
            failed_probes: 2,
            stalls_down: 2,
            stall_settle: 150 * MS,
            retry_budget: 0.5,
            retry_floor_per_second: 1,
        }
    }

    fn odd() -> Verdict {
        Verdict::Odd("answered 409".into())
    }

    #[test]
    fn an_odd_answer_about_one_order_is_the_orders_when_the_service_answers_others() {
        let r = rules();
        let t0 = Instant::now();
        for service in Service::ALL {
            let mut h = Health::new(service);
            h.record_from(&r, t0, Verdict::Answered, "", Subject::List);
            // Again and again for the same order: always its own, the service stays up.
            for _ in 0..30 {
                let blame = h.record_from(&r, t0, odd(), "409", Subject::Order(1));
                assert_eq!(blame, Blame::Order);
                assert!(h.usable(t0), "{:?}", h.state());
            }
            // A stall of the Order Service on one order's call, likewise.
            if service == Service::Orders {
                let blame = h.record_from(&r, t0, Verdict::Stalled, "", Subject::Order(1));
                assert_eq!(blame, Blame::Order);
                assert!(h.usable(t0));
            }
        }
    }

    #[test]
    fn odd_answers_for_several_orders_are_the_services_and_release_the_first() {
        let r = rules();
        let t0 = Instant::now();
        let mut h = Health::new(Service::Stock);
        h.record_from(&r, t0, Verdict::Answered, "", Subject::Order(9));
        assert_eq!(
            h.record_from(&r, t0, odd(), "", Subject::Order(1)),
            Blame::Order
        );
        // A second order without a good answer between: the service's, order 1 released.
        let blame = h.record_from(&r, t0, odd(), "", Subject::Order(2));
        assert_eq!(blame, Blame::Service(vec![1]));
        assert!(!h.usable(t0), "out, so that another call probes it");
        let later = t0 + Duration::from_secs(2);
        assert!(h.usable(later));
        let blame = h.record_from(&r, later, odd(), "", Subject::Order(3));
        assert_eq!(blame, Blame::Service(vec![1, 2]));
        assert!(
            h.down()
                .is_some_and(|why| why.contains("3 orders in a row")),
            "{:?}",
            h.state()
        );
    }

    #[test]
    fn without_a_good_answer_to_another_subject_an_odd_answer_is_the_services() {
        let r = rules();
        let t0 = Instant::now();
        let mut h = Health::new(Service::Stock);
        assert_eq!(
            h.record_from(&r, t0, odd(), "", Subject::Order(1)),
            Blame::Service(vec![])
        );
        assert!(!h.usable(t0));
        // Its own good answer shows nothing about others; old evidence expires.
        let mut h = Health::new(Service::Orders);
        h.record_from(&r, t0, Verdict::Answered, "", Subject::Order(1));
        assert_eq!(
            h.record_from(&r, t0, odd(), "", Subject::Order(1)),
            Blame::Service(vec![])
        );
        let mut h = Health::new(Service::Orders);
        h.record_from(&r, t0, Verdict::Answered, "", Subject::List);
        let late = t0 + EVIDENCE_AGE + Duration::from_secs(1);
        assert_eq!(
            h.record_from(&r, late, Verdict::Stalled, "", Subject::Order(1)),
            Blame::Service(vec![])
        );
        // About the list, an odd answer is a broken service at once.
        let mut h = Health::new(Service::Orders);
        h.record_from(&r, t0, odd(), "404", Subject::List);
        assert!(h.down().is_some());
    }

    #[test]
    fn evidence_outlives_a_new_cycle() {
        let mut s: Scheduler<u32> = Scheduler::new(rules(), 10);
        let t0 = Instant::now();
        s.record_from(Service::Orders, t0, Verdict::Answered, "", Subject::List);
        s.reset_health();
        let blame = s.record_from(Service::Orders, t0, odd(), "", Subject::Order(4));
        assert_eq!(blame, Blame::Order);
    }

    fn open(new_orders: bool, next_page: Option<Instant>) -> Work {
        Work {
            new_orders,
            page_low: !new_orders,
            next_page,
        }
    }

    #[test]
    fn a_due_retry_goes_before_new_orders_and_pages() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(rules(), 10);
        s.wait(Service::Stock, t0 + 50 * MS, "retry");
        let work = open(true, Some(t0));
        assert_eq!(s.next(t0, work), Next::NewOrder, "not due yet");
        assert_eq!(s.next(t0 + 50 * MS, work), Next::Run("retry"));
        assert_eq!(s.next(t0 + 50 * MS, work), Next::NewOrder);
    }

    #[test]
    fn the_earliest_due_runs_first_across_services() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(rules(), 10);
        s.wait(Service::Stock, t0 + 30 * MS, "stock late");
        s.wait(Service::Orders, t0 + 20 * MS, "status");
        s.wait(Service::Stock, t0 + 10 * MS, "stock early");
        let idle = open(false, None);
        let at = t0 + 40 * MS;
        assert_eq!(s.next(at, idle), Next::Run("stock early"));
        assert_eq!(s.next(at, idle), Next::Run("status"));
        assert_eq!(s.next(at, idle), Next::Run("stock late"));
        assert_eq!(s.next(at, idle), Next::Done);
    }

    #[test]
    fn with_nothing_due_it_sleeps_until_the_earliest() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(rules(), 10);
        s.wait(Service::Orders, t0 + 70 * MS, 1);
        s.wait(Service::Stock, t0 + 30 * MS, 2);
        assert_eq!(s.next(t0, open(false, None)), Next::Sleep(30 * MS));
        // A failed page fetch due sooner wakes it sooner.
        assert_eq!(
            s.next(t0, open(false, Some(t0 + 5 * MS))),
            Next::Sleep(5 * MS)
        );
        assert_eq!(
            s.next(t0 + 5 * MS, open(false, Some(t0 + 5 * MS))),
            Next::FetchPage
        );
    }

    #[test]
    fn at_the_cap_no_new_order_is_taken_until_one_waiting_is_done() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(rules(), 2);
        s.wait(Service::Stock, t0 + 40 * MS, 1);
        s.wait(Service::Stock, t0 + 60 * MS, 2);
        let work = open(true, Some(t0));
        assert_eq!(s.next(t0, work), Next::Sleep(40 * MS));
        assert_eq!(s.next(t0 + 40 * MS, work), Next::Run(1));
        assert_eq!(s.next(t0 + 40 * MS, work), Next::NewOrder);
        // The page is used up: at the cap, the next page waits too.
        s.wait(Service::Stock, t0 + 90 * MS, 3);
        assert_eq!(
            s.next(t0 + 40 * MS, open(false, Some(t0))),
            Next::Sleep(20 * MS)
        );
    }

    #[test]
    fn a_page_running_low_is_refilled_before_its_last_orders() {
        let t0 = Instant::now();
        let mut s: Scheduler<u8> = Scheduler::new(rules(), 4);
        let mut work = open(true, Some(t0));
        assert_eq!(s.next(t0, work), Next::NewOrder);
        work.page_low = true;
        assert_eq!(s.next(t0, work), Next::FetchPage);
        // The fetch failed and waits for its retry: the orders left go on meanwhile.
        work.next_page = Some(t0 + 100 * MS);
        assert_eq!(s.next(t0, work), Next::NewOrder);
    }

    #[test]
    fn nothing_left_is_done_and_a_sleep_is_never_zero() {
        let t0 = Instant::now();
        let mut s: Scheduler<u8> = Scheduler::new(rules(), 4);
        assert_eq!(s.next(t0, open(false, None)), Next::Done);
        assert_eq!(s.next(t0, open(false, Some(t0))), Next::FetchPage);
        assert_eq!(s.next(t0, open(true, None)), Next::NewOrder);
        // A task due a few nanoseconds from now: the sleep is rounded up, never zero.
        s.wait(Service::Orders, t0 + Duration::from_nanos(10), 1);
        assert_eq!(s.next(t0, open(false, None)), Next::Sleep(MS));
        // A page fetch that waits for a service out of use sleeps until the cool-down.
        let mut s: Scheduler<u8> = Scheduler::new(rules(), 4);
        s.record(Service::Orders, t0, Verdict::Stalled, "timed out");
        match s.next(t0, open(false, Some(t0))) {
            Next::Sleep(d) => assert!(d > Duration::ZERO && d <= 100 * MS, "{d:?}"),
            other => panic!("expected a sleep, got {other:?}"),
        }
    }

    #[test]
    fn scattered_failures_keep_a_service_up() {
        let t0 = Instant::now();
        let mut h = Health::new(Service::Stock);
        // 30% failing, evenly spread: never nine of the last ten.
        for i in 0..1000 {
            let v = if i % 10 < 3 {
                Verdict::Failed
            } else {
                Verdict::Answered
            };
            h.record(&rules(), t0, v, "502");
            assert_eq!(h.state(), &State::Up, "call {i}");
        }
    }

    #[test]
    fn most_recent_calls_failing_puts_a_service_out_then_one_probe() {
        let t0 = Instant::now();
        let mut s: Scheduler<u8> = Scheduler::new(rules(), 4);
        for _ in 0..8 {
            s.record(Service::Stock, t0, Verdict::Failed, "502");
        }
        assert!(
            s.health(Service::Stock).usable(t0),
            "eight of ten is not out"
        );
        s.record(Service::Stock, t0, Verdict::Failed, "502");
        assert!(!s.health(Service::Stock).usable(t0));
        // New orders need the Stock Service: they wait for the cool-down, page fetches
        // and status updates (Order Service) do not.
        assert_eq!(s.next(t0, open(true, None)), Next::Sleep(100 * MS));
        s.wait(Service::Orders, t0, 7);
        assert_eq!(s.next(t0, open(true, None)), Next::Run(7));
        // After the cool-down: the probe.
        assert_eq!(s.next(t0 + 100 * MS, open(true, None)), Next::NewOrder);
        s.record(Service::Stock, t0 + 100 * MS, Verdict::Answered, "");
        assert_eq!(s.health(Service::Stock).state(), &State::Up);
    }

    #[test]
    fn one_stall_keeps_the_stock_service_up_and_a_second_in_a_row_takes_it_down() {
        let t0 = Instant::now();
        let mut s: Scheduler<u8> = Scheduler::new(rules(), 4);
        // A stall, an answer, a stall: never two in a row, still up.
        for verdict in [Verdict::Stalled, Verdict::Answered, Verdict::Stalled] {
            s.record(Service::Stock, t0, verdict, "30 s, 500");
            assert_eq!(s.health(Service::Stock).state(), &State::Up);
        }
        // The stalled order's next attempt goes once the settle has passed, not after
        // the backoff; no decrease goes before it, a new order's neither.
        let settled = t0 + 150 * MS;
        assert_eq!(
            s.retry_at(Service::Stock, t0, 400 * MS, Pace::AfterStall),
            settled
        );
        assert!(!s.health(Service::Stock).usable(t0 + 149 * MS));
        assert_eq!(s.next(t0, open(true, None)), Next::Sleep(150 * MS));
        s.wait(Service::Stock, settled, 1);
        assert_eq!(s.next(settled, open(true, None)), Next::Run(1));
        s.record(Service::Stock, settled, Verdict::Stalled, "30 s, 500");
        s.wait(Service::Stock, settled, 1);
        assert!(
            s.health(Service::Stock)
                .down()
                .unwrap()
                .contains("stalled 2 times in a row")
        );
        assert!(s.health(Service::Stock).stalled_out());
        assert_eq!(
            s.next(t0, open(true, None)),
            Next::Abandon(Service::Stock, vec![1])
        );
        assert_eq!(s.next(t0, open(true, None)), Next::EndList(Service::Stock));
        // A new cycle calls it again, once the last stall's settle has passed.
        s.reset_health();
        assert!(!s.health(Service::Stock).stalled_out());
        assert_eq!(s.next(settled, open(true, None)), Next::Sleep(150 * MS));
        let later = settled + 150 * MS;
        assert_eq!(s.next(later, open(true, None)), Next::NewOrder);
    }

    #[test]
    fn failed_probes_double_the_cool_down_then_the_service_is_down() {
        let t0 = Instant::now();
        let mut s: Scheduler<u8> = Scheduler::new(rules(), 4);
        // An Order Service call that took longer than the timeout puts it out at once.
        s.record(Service::Orders, t0, Verdict::Stalled, "timed out");
        assert!(!s.health(Service::Orders).usable(t0));
        for _ in 0..9 {
            s.record(Service::Stock, t0, Verdict::Failed, "500");
        }
        let until = |s: &Scheduler<u8>| match s.health(Service::Stock).state() {
            State::Out { until, .. } => *until,
            other => panic!("{other:?}"),
        };
        assert_eq!(until(&s), t0 + 100 * MS, "nine of ten put it out");
        let t1 = t0 + 100 * MS;
        s.record(Service::Stock, t1, Verdict::Failed, "500");
        assert_eq!(
            until(&s),
            t1 + 200 * MS,
            "the first failed probe doubles it"
        );
        s.wait(Service::Stock, t1, 1);
        s.wait(Service::Stock, t1, 2);
        let t2 = t1 + 200 * MS;
        s.record(Service::Stock, t2, Verdict::Failed, "500");
        assert!(
            s.health(Service::Stock)
                .down()
                .unwrap()
                .contains("2 probes")
        );
        // Down for failed probes, not stalls: the next cycle waits its interval.
        assert!(!s.health(Service::Stock).stalled_out());
        // Down: its waiting orders are handed back, and new orders end the list.
        assert_eq!(
            s.next(t2, open(true, None)),
            Next::Abandon(Service::Stock, vec![1, 2])
        );
        assert_eq!(s.next(t2, open(true, None)), Next::EndList(Service::Stock));
        assert_eq!(s.next(t2, open(false, None)), Next::Done);
    }

    #[test]
    fn a_down_order_service_ends_the_list_and_a_broken_one_is_down_at_once() {
        let t0 = Instant::now();
        let mut s: Scheduler<u8> = Scheduler::new(rules(), 4);
        s.record(Service::Orders, t0, Verdict::Broken("415".into()), "");
        assert_eq!(s.health(Service::Orders).down(), Some("415"));
        assert_eq!(
            s.next(t0, open(false, Some(t0))),
            Next::EndList(Service::Orders)
        );
        assert_eq!(s.next(t0, open(true, None)), Next::EndList(Service::Orders));
    }

    #[test]
    fn quick_failures_are_retried_at_once_within_the_budget_then_after_the_backoff() {
        let t0 = Instant::now();
        let mut s: Scheduler<u8> = Scheduler::new(rules(), 4);
        let backoff = 150 * MS;
        // 100 calls in the window: 50 retries at once, plus the floor of 1 a second
        // over the 10 s window.
        for _ in 0..100 {
            s.record(Service::Stock, t0, Verdict::Answered, "");
        }
        let at_once = (0..100)
            .filter(|_| s.retry_at(Service::Stock, t0, backoff, Pace::Budgeted) == t0)
            .count();
        assert_eq!(at_once, 60);
        assert_eq!(
            s.retry_at(Service::Stock, t0, backoff, Pace::Budgeted),
            t0 + backoff
        );
        // The backoff pace never goes at once; a stall's goes as soon as the service
        // may be called (the settle is set when the stall is recorded), budget or not.
        assert_eq!(
            s.retry_at(Service::Stock, t0, backoff, Pace::Backoff),
            t0 + backoff
        );
        assert_eq!(
            s.retry_at(Service::Stock, t0, backoff, Pace::AfterStall),
            t0
        );
        // Calls and retries older than the window no longer count.
        let later = t0 + BUDGET_WINDOW + Duration::from_secs(1);
        assert_eq!(
            s.retry_at(Service::Stock, later, backoff, Pace::Budgeted),
            later
        );
        // The other service has a budget of its own.
        assert_eq!(s.retry_at(Service::Orders, t0, backoff, Pace::Budgeted), t0);
        // A service out of use gets no retry at once.
        for _ in 0..9 {
            s.record(Service::Orders, t0, Verdict::Failed, "502");
        }
        assert_eq!(
            s.retry_at(Service::Orders, t0, backoff, Pace::Budgeted),
            t0 + backoff
        );
    }

    #[test]
    fn drain_returns_every_waiting_task_earliest_first() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(rules(), 4);
        s.wait(Service::Stock, t0 + 9 * MS, 'c');
        s.wait(Service::Orders, t0 + MS, 'a');
        s.wait(Service::Stock, t0 + 5 * MS, 'b');
        assert_eq!(s.drain(), vec!['a', 'b', 'c']);
        assert!(s.is_empty());
    }
}
