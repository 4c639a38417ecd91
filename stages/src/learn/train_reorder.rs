//! A reorder buffer: samples arrive in an order that depends on thread timing; training consumes them in
//! feed order (`seq`), so batches, and therefore the weights, do not depend on the thread count.
//!
//! Pieces of one case (a stage that expands) share its `seq` and are released together, ordered by id.
//! Because a piece may still be in flight when its sibling arrives, a `seq` is released only once some
//! later `seq` has arrived (or the stream has ended). A `seq` that never arrives (its case failed under
//! `on_error: skip`) is given up once `window` samples wait behind it.

use std::collections::BTreeMap;

/// Orders items by `(seq, id)`.
#[derive(Debug)]
pub struct Reorder<T> {
    next: u64,
    window: usize,
    items: BTreeMap<(u64, String), T>,
    /// Sequence numbers given up as missing.
    pub skipped: Vec<u64>,
}

impl<T> Reorder<T> {
    /// Starts expecting `next` (0 for a new run, the checkpoint's position on resume).
    pub fn new(next: u64, window: usize) -> Self {
        Reorder {
            next,
            window: window.max(1),
            items: BTreeMap::new(),
            skipped: Vec::new(),
        }
    }

    /// The next `seq` expected.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Adds an item.
    pub fn push(&mut self, seq: u64, id: String, item: T) {
        self.items.insert((seq, id), item);
    }

    /// The next item in feed order, if it may be released now. `ended`: no more items will come.
    pub fn pop(&mut self, ended: bool) -> Option<(u64, T)> {
        let (&(first, _), _) = self.items.first_key_value()?;
        let last = self.items.last_key_value().map_or(first, |(k, _)| k.0);
        if first < self.next {
            // a late piece of a case already released: keep it rather than lose it
            return self.take_first();
        }
        if first > self.next {
            if !ended && self.items.len() < self.window {
                return None;
            }
            // the expected case never came (failed or dropped upstream)
            self.skipped.extend(self.next..first);
            self.next = first;
        }
        // `first == next`: release once a later seq shows that this one's pieces have had time to arrive
        if ended || last > first {
            let item = self.take_first();
            let more = self
                .items
                .first_key_value()
                .is_some_and(|(k, _)| k.0 == first);
            if !more {
                self.next = first + 1;
            }
            return item;
        }
        None
    }

    fn take_first(&mut self) -> Option<(u64, T)> {
        self.items.pop_first().map(|((seq, _), item)| (seq, item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(r: &mut Reorder<u64>, ended: bool) -> Vec<u64> {
        std::iter::from_fn(|| r.pop(ended).map(|(_, x)| x)).collect()
    }

    #[test]
    fn any_arrival_order_comes_out_in_feed_order() {
        let mut r = Reorder::new(0, 16);
        let mut out = Vec::new();
        for seq in [3u64, 1, 0, 2, 5, 4, 6] {
            r.push(seq, format!("c{seq}"), seq);
            out.extend(drain(&mut r, false));
        }
        // the newest seq waits for a later one
        assert_eq!(out, vec![0, 1, 2, 3, 4, 5]);
        out.extend(drain(&mut r, true));
        assert_eq!(out, vec![0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn pieces_of_one_case_come_out_together_by_id() {
        let mut r = Reorder::new(0, 16);
        r.push(0, "a#c1".into(), 1);
        r.push(1, "b#c0".into(), 2);
        r.push(0, "a#c0".into(), 0);
        assert_eq!(drain(&mut r, false), vec![0, 1]);
        assert_eq!(r.next(), 1);
        assert_eq!(drain(&mut r, true), vec![2]);
    }

    #[test]
    fn a_missing_case_is_given_up_after_the_window() {
        let mut r = Reorder::new(0, 3);
        r.push(1, "b".into(), 1);
        r.push(2, "c".into(), 2);
        assert!(drain(&mut r, false).is_empty(), "seq 0 may still come");
        r.push(3, "d".into(), 3);
        assert_eq!(drain(&mut r, false), vec![1, 2]);
        assert_eq!(r.skipped, vec![0]);
    }

    #[test]
    fn a_resumed_buffer_starts_at_its_position() {
        let mut r = Reorder::new(5, 8);
        r.push(6, "g".into(), 6);
        r.push(5, "f".into(), 5);
        assert_eq!(drain(&mut r, false), vec![5]);
        assert_eq!(drain(&mut r, true), vec![6]);
    }
}
