//! Paging through a list that shrinks as statuses change.

// Parses what a peer or a file sends: no index or slice that could panic.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::collections::HashSet;

/// Where the next page of the `registered` list starts, and which entries are new.
///
/// Orders that leave the list (ready, blocked, unknown) shift the ones behind them
/// forward, so the next page starts after the orders that are still registered: `skip`
/// counts each order this worker holds from the moment it takes it ([`Pager::holds`])
/// until it leaves the list ([`Pager::left`]), so an order waiting for a retry keeps its
/// place. Other replicas' orders (with `--shard`) do not count: their replicas remove
/// them at their own pace; they are remembered, and only a full page holding nothing new
/// moves `skip` past the ones on it. An id this worker holds is never admitted twice,
/// whatever the list returns (the same id twice on a page, a page repeated); one listed
/// again after it left is the worker's to recognise (it remembers its recent
/// decisions). A page identical to the one before ends the paging, so no page is
/// fetched forever, even from a service that ignores `skip`.
#[derive(Debug, Default)]
pub struct Pager {
    skip: u64,
    /// The ids this worker took and counts in `skip` (not known to have left the list).
    held: HashSet<u64>,
    passed: HashSet<u64>,
    new_in_page: u32,
    passed_in_page: u64,
    page_hash: u64,
    last_hash: Option<u64>,
}

/// What to do after a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageEnd {
    /// Fetch the next page at [`Pager::skip`].
    Fetch,
    /// The page was not full: the list is done.
    Last,
    /// The list is not moving (nothing new, or the same page again): stop.
    NothingNew,
}

impl Pager {
    /// Where the next page starts.
    pub fn skip(&self) -> u64 {
        self.skip
    }

    /// True if the entry is new to this cycle and must be handled (an entry without a
    /// valid id always is).
    pub fn admit(&mut self, id: Option<u64>) -> bool {
        self.page_hash = self
            .page_hash
            .wrapping_mul(0x100_0000_01b3)
            .wrapping_add(id.unwrap_or(0) + 1);
        match id {
            Some(id) if self.passed.contains(&id) => {
                self.passed_in_page += 1;
                false
            }
            Some(id) if self.held.contains(&id) => false,
            _ => {
                self.new_in_page += 1;
                true
            }
        }
    }

    /// The admitted entry is this worker's: later pages start behind it while it stays
    /// in the list, and it is never admitted again in this cycle.
    pub fn holds(&mut self, id: Option<u64>) {
        self.skip += 1;
        if let Some(id) = id {
            self.held.insert(id);
        }
    }

    /// An order this worker holds has left the list: the ones behind it moved forward.
    /// An id not held (not listed yet in this cycle) changes nothing.
    pub fn left(&mut self, id: u64) {
        if self.held.remove(&id) {
            self.skip = self.skip.saturating_sub(1);
        }
    }

    /// The admitted entry is another replica's: remembered, `skip` unchanged.
    pub fn passes(&mut self, id: u64) {
        self.passed.insert(id);
        self.passed_in_page += 1;
    }

    /// After a page of `len` entries, when `page_size` were asked for.
    pub fn after_page(&mut self, len: usize, page_size: u32) -> PageEnd {
        let new = std::mem::take(&mut self.new_in_page);
        let passed = std::mem::take(&mut self.passed_in_page);
        let hash = std::mem::take(&mut self.page_hash);
        if len < page_size as usize {
            return PageEnd::Last;
        }
        if self.last_hash.replace(hash) == Some(hash) {
            return PageEnd::NothingNew;
        }
        if new == 0 {
            if passed == 0 {
                return PageEnd::NothingNew;
            }
            self.skip += passed;
        }
        PageEnd::Fetch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One cycle of replicas sharing a registered list (ascending ids), each draining it
    /// with its own `Pager` one page at a time, in turns; `stays` decides which orders
    /// stay registered. Returns, per replica, the ids it handled and the pages it fetched.
    fn simulate_cycle(
        registered: &mut Vec<u64>,
        page_size: u32,
        shards: u64,
        stays: &dyn Fn(u64) -> bool,
    ) -> (Vec<Vec<u64>>, Vec<usize>) {
        let mut pagers: Vec<Pager> = (0..shards).map(|_| Pager::default()).collect();
        let mut done = vec![false; shards as usize];
        let mut handled = vec![Vec::new(); shards as usize];
        let mut pages = vec![0; shards as usize];
        while done.iter().any(|d| !d) {
            for r in 0..shards as usize {
                if done[r] {
                    continue;
                }
                pages[r] += 1;
                assert!(pages[r] < 10_000, "paging does not end");
                let pager = &mut pagers[r];
                let page: Vec<u64> = registered
                    .iter()
                    .copied()
                    .skip(pager.skip() as usize)
                    .take(page_size as usize)
                    .collect();
                for &id in &page {
                    if !pager.admit(Some(id)) {
                        continue;
                    }
                    if id % shards != r as u64 {
                        pager.passes(id);
                        continue;
                    }
                    handled[r].push(id);
                    pager.holds(Some(id));
                    if !stays(id) {
                        registered.retain(|x| *x != id);
                        pager.left(id);
                    }
                }
                done[r] = pager.after_page(page.len(), page_size) != PageEnd::Fetch;
            }
        }
        (handled, pages)
    }

    fn simulate(total: u64, page_size: u32, stays: impl Fn(u64) -> bool) -> (Vec<u64>, usize) {
        let mut registered: Vec<u64> = (1..=total).collect();
        let (mut handled, pages) = simulate_cycle(&mut registered, page_size, 1, &stays);
        (handled.remove(0), pages[0])
    }

    #[test]
    fn paging_a_shrinking_list_handles_every_order_once() {
        let (handled, pages) = simulate(1050, 100, |_| false);
        assert_eq!(handled, (1..=1050).collect::<Vec<_>>());
        assert_eq!(pages, 11);
        let (handled, _) = simulate(1000, 100, |id| id % 3 == 0);
        assert_eq!(handled, (1..=1000).collect::<Vec<_>>());
        let (handled, pages) = simulate(500, 50, |_| true);
        assert_eq!(handled, (1..=500).collect::<Vec<_>>());
        assert_eq!(pages, 11);
    }

    /// Replicas paging at once may step past a few of their own orders in one cycle
    /// (the others remove orders behind their back); those stay registered for the next
    /// cycle. Across cycles each order is handled exactly once, by its own replica.
    #[test]
    fn sharded_replicas_paging_together_handle_each_of_their_orders_once() {
        for shards in [2, 3, 4] {
            let mut registered: Vec<u64> = (1..=2000).collect();
            let mut handled = vec![Vec::new(); shards as usize];
            let mut cycles = 0;
            while !registered.is_empty() {
                cycles += 1;
                assert!(
                    cycles <= 4,
                    "{shards} replicas: {} left after {cycles} cycles",
                    registered.len()
                );
                let (ids, _) = simulate_cycle(&mut registered, 100, shards, &|_| false);
                for (r, ids) in ids.into_iter().enumerate() {
                    handled[r].extend(ids);
                }
            }
            for (r, ids) in handled.iter_mut().enumerate() {
                ids.sort_unstable();
                let mine: Vec<u64> = (1..=2000).filter(|id| id % shards == r as u64).collect();
                assert_eq!(ids, &mine, "replica {r} of {shards}");
            }
        }
    }

    #[test]
    fn a_list_that_ignores_skip_ends_the_paging() {
        let mut pager = Pager::default();
        for id in 1..=10 {
            assert!(pager.admit(Some(id)));
            pager.holds(Some(id));
        }
        assert_eq!(pager.after_page(10, 10), PageEnd::Fetch);
        for id in 1..=10 {
            assert!(!pager.admit(Some(id)));
        }
        assert_eq!(pager.after_page(10, 10), PageEnd::NothingNew);
        // Entries without an id are new every time, but the same page twice ends it.
        let mut pager = Pager::default();
        let mut ends = Vec::new();
        for _ in 0..2 {
            for id in [None, Some(1), Some(2)] {
                if pager.admit(id) {
                    pager.holds(id);
                }
            }
            ends.push(pager.after_page(3, 3));
        }
        assert_eq!(ends, [PageEnd::Fetch, PageEnd::NothingNew]);
    }

    #[test]
    fn a_full_page_of_known_other_replicas_orders_is_stepped_over() {
        let mut pager = Pager::default();
        for id in 1..=10 {
            assert!(pager.admit(Some(id)));
            pager.passes(id);
        }
        assert_eq!(pager.after_page(10, 10), PageEnd::Fetch);
        assert_eq!(pager.skip(), 0, "the other replicas may still remove those");
        // The next page: the same ten, already known, and nothing new: step over them.
        for id in (1..=10).rev() {
            assert!(!pager.admit(Some(id)));
        }
        assert_eq!(pager.after_page(10, 10), PageEnd::Fetch);
        assert_eq!(pager.skip(), 10);
    }

    #[test]
    fn a_short_page_is_the_last_and_entries_without_id_always_count() {
        let mut pager = Pager::default();
        assert!(pager.admit(None));
        pager.holds(None);
        assert!(pager.admit(None));
        assert_eq!(pager.skip(), 1);
        assert_eq!(pager.after_page(2, 100), PageEnd::Last);
    }

    #[test]
    fn an_id_held_is_never_admitted_twice() {
        let mut pager = Pager::default();
        // The same id four times on one page: taken once.
        let taken: Vec<bool> = [7, 7, 7, 7]
            .into_iter()
            .map(|id| {
                let new = pager.admit(Some(id));
                if new {
                    pager.holds(Some(id));
                }
                new
            })
            .collect();
        assert_eq!(taken, [true, false, false, false]);
        assert_eq!(pager.skip(), 1);
        // It left the list: listed again, it is the worker's recent decisions that
        // recognise it.
        pager.left(7);
        assert_eq!(pager.skip(), 0);
        assert!(pager.admit(Some(7)));
    }

    #[test]
    fn an_order_that_leaves_after_a_later_page_was_fetched_still_pages_exactly() {
        // Ten registered orders, pages of 3; order 2 waits for a retry while the worker
        // takes the next page, and leaves after it: every order is seen once, none skipped.
        let mut registered: Vec<u64> = (1..=10).collect();
        let mut pager = Pager::default();
        let mut handled = Vec::new();
        for page_number in 1.. {
            assert!(page_number < 20, "paging does not end");
            let page: Vec<u64> = registered
                .iter()
                .copied()
                .skip(pager.skip() as usize)
                .take(3)
                .collect();
            for &id in &page {
                if !pager.admit(Some(id)) {
                    continue;
                }
                pager.holds(Some(id));
                handled.push(id);
                if id != 2 {
                    registered.retain(|x| *x != id);
                    pager.left(id);
                }
            }
            if page_number == 2 {
                registered.retain(|x| *x != 2);
                pager.left(2);
            }
            if pager.after_page(page.len(), 3) != PageEnd::Fetch {
                break;
            }
        }
        assert_eq!(handled, (1..=10).collect::<Vec<_>>());
        assert!(registered.is_empty());
    }
}
