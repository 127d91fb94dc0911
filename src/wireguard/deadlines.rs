//! Every peer's next deadline, ordered: the stage's next deadline and the peers due at a
//! moment cost O(log peers) to find, not a scan of every peer after every batch (with 10,000
//! peers, that scan was most of a packet's time through the tunnel).
//!
//! An indexed binary min-heap over vectors sized for every peer at start: an update moves one
//! entry up or down, and nothing is allocated while packets flow.

use super::clock::Instant;

/// Not in the heap.
const ABSENT: usize = usize::MAX;

/// Peers' deadlines: a min-heap of the peers that have one, and where each peer sits in it.
#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    /// Peers with a deadline, as a binary min-heap by `at`.
    heap: Vec<usize>,
    /// Each peer's place in `heap`, or `ABSENT`.
    place: Vec<usize>,
    /// Each peer's deadline.
    at: Vec<Option<Instant>>,
}

impl Deadlines {
    /// Room for `peers` peers, none with a deadline.
    pub fn new(peers: usize) -> Self {
        Deadlines {
            heap: Vec::with_capacity(peers),
            place: vec![ABSENT; peers],
            at: vec![None; peers],
        }
    }

    /// Records `peer`'s next deadline (`None`: it has none).
    /// Makes room for peers numbered below `peers`.
    pub fn grow(&mut self, peers: usize) {
        if peers > self.at.len() {
            self.place.resize(peers, ABSENT);
            self.at.resize(peers, None);
        }
    }

    pub fn set(&mut self, peer: usize, at: Option<Instant>) {
        if self.at[peer] == at {
            return;
        }
        self.at[peer] = at;
        let place = self.place[peer];
        match (place == ABSENT, at.is_some()) {
            (true, true) => {
                self.heap.push(peer);
                self.place[peer] = self.heap.len() - 1;
                self.up(self.heap.len() - 1);
            }
            (false, true) => {
                self.up(place);
                self.down(self.place[peer]);
            }
            (false, false) => {
                let last = self.heap.len() - 1;
                self.swap(place, last);
                self.heap.pop();
                self.place[peer] = ABSENT;
                if place < self.heap.len() {
                    self.up(place);
                    self.down(place);
                }
            }
            (true, false) => {}
        }
    }

    /// The earliest deadline of any peer.
    pub fn first(&self) -> Option<Instant> {
        self.heap.first().and_then(|&peer| self.at[peer])
    }

    /// The peer with the earliest deadline, if that deadline is at or before `now`.
    pub fn first_due(&self, now: Instant) -> Option<usize> {
        let &peer = self.heap.first()?;
        (self.at[peer]? <= now).then_some(peer)
    }

    /// Bytes per peer, about: its place, its deadline and its heap slot.
    pub const PER_PEER: usize = 48;

    fn key(&self, i: usize) -> Option<Instant> {
        self.at[self.heap[i]]
    }

    fn swap(&mut self, i: usize, j: usize) {
        self.heap.swap(i, j);
        self.place[self.heap[i]] = i;
        self.place[self.heap[j]] = j;
    }

    fn up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.key(i) >= self.key(parent) {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    fn down(&mut self, mut i: usize) {
        loop {
            let (left, right) = (2 * i + 1, 2 * i + 2);
            let mut least = i;
            for child in [left, right] {
                if child < self.heap.len() && self.key(child) < self.key(least) {
                    least = child;
                }
            }
            if least == i {
                break;
            }
            self.swap(i, least);
            i = least;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    proptest! {
        /// After any sequence of updates, the first deadline and the first due peer are what
        /// a scan of every peer finds.
        #[test]
        fn agrees_with_a_scan(updates in prop::collection::vec((0usize..8, prop::option::of(0u64..50)), 0..300)) {
            let base = Instant::now();
            let mut d = Deadlines::new(8);
            let mut model: Vec<Option<Instant>> = vec![None; 8];
            for (peer, at) in updates {
                let at = at.map(|ms| base + Duration::from_millis(ms));
                d.set(peer, at);
                model[peer] = at;
                let first = model.iter().flatten().min().copied();
                prop_assert_eq!(d.first(), first);
                let now = base + Duration::from_millis(25);
                match d.first_due(now) {
                    Some(p) => prop_assert!(model[p] == first && first.is_some_and(|f| f <= now)),
                    None => prop_assert!(first.is_none_or(|f| f > now)),
                }
            }
        }
    }
}
