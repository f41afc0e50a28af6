//! A hashed timer wheel: one per reactor, O(1) arm, re-arm and cancel, no allocation per
//! timer once the node pool has grown to the number of live timers.
//!
//! Time is counted in ticks (the reactor picks the tick length). A timer due `d` ticks
//! from now goes into slot `(now + d) % SLOTS` with `d / SLOTS` full rotations left; each
//! [`Wheel::advance`] walks only the slots the clock passed. Nodes live in one pool and link
//! into their slot's doubly linked list by index, so cancelling is an unlink. A
//! [`TimerId`] carries the node's generation: cancelling a timer that already fired (and
//! whose node was reused) does nothing.

/// Slots per rotation; a power of two so the slot is a mask.
pub const SLOTS: usize = 512;
const MASK: u64 = SLOTS as u64 - 1;
const NIL: u32 = u32::MAX;

/// Names one armed timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId {
    index: u32,
    generation: u32,
}

#[derive(Debug)]
struct Node<T> {
    prev: u32,
    next: u32,
    /// Tick at which the timer is due.
    due: u64,
    generation: u32,
    /// `None` while the node is free.
    value: Option<T>,
}

/// The wheel. `T` is what an expiry hands back (a connection's slab key, for a reactor).
#[derive(Debug)]
pub struct Wheel<T> {
    heads: Box<[u32; SLOTS]>,
    nodes: Vec<Node<T>>,
    free: Vec<u32>,
    now: u64,
    len: usize,
}

impl<T> Default for Wheel<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Wheel<T> {
    /// An empty wheel at tick 0.
    pub fn new() -> Self {
        Wheel {
            heads: Box::new([NIL; SLOTS]),
            nodes: Vec::new(),
            free: Vec::new(),
            now: 0,
            len: 0,
        }
    }

    /// The current tick.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Armed timers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No timer armed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Arms a timer due at tick `due` (a tick in the past fires on the next advance).
    pub fn arm(&mut self, due: u64, value: T) -> TimerId {
        let due = due.max(self.now + 1);
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.nodes.push(Node {
                    prev: NIL,
                    next: NIL,
                    due: 0,
                    generation: 0,
                    value: None,
                });
                (self.nodes.len() - 1) as u32
            }
        };
        let slot = (due & MASK) as usize;
        let head = self.heads[slot];
        let node = &mut self.nodes[index as usize];
        node.prev = NIL;
        node.next = head;
        node.due = due;
        node.value = Some(value);
        let generation = node.generation;
        if head != NIL {
            self.nodes[head as usize].prev = index;
        }
        self.heads[slot] = index;
        self.len += 1;
        TimerId { index, generation }
    }

    /// Cancels a timer, returning its value; `None` if it already fired or was cancelled.
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        let node = self.nodes.get(id.index as usize)?;
        if node.generation != id.generation || node.value.is_none() {
            return None;
        }
        Some(self.remove(id.index))
    }

    /// Moves a timer to a new due tick; returns the new id (the old one is spent).
    pub fn rearm(&mut self, id: TimerId, due: u64) -> Option<TimerId> {
        let value = self.cancel(id)?;
        Some(self.arm(due, value))
    }

    /// A tick at or before the earliest due timer, for the poll timeout: the next tick whose
    /// slot holds any timer, within one rotation. Only slot heads are looked at, never the
    /// lists: with many far-off timers (the idle connections' heartbeats) walking the lists
    /// made this O(timers) on every loop turn. A slot whose timers still have rotations to
    /// go costs one early wakeup, in which `advance` walks that one slot anyway.
    pub fn next_due(&self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        (1..=SLOTS as u64)
            .map(|step| self.now + step)
            .find(|tick| self.heads[(tick & MASK) as usize] != NIL)
    }

    /// Advances the clock to tick `to`, pushing the value of every timer due by then onto
    /// `expired` (in no particular order within a tick).
    pub fn advance(&mut self, to: u64, expired: &mut Vec<T>) {
        if to <= self.now {
            return;
        }
        // Past a full rotation, every slot is visited once.
        let steps = (to - self.now).min(SLOTS as u64);
        let start = to - steps + 1;
        for tick in start..=to {
            let mut i = self.heads[(tick & MASK) as usize];
            while i != NIL {
                let next = self.nodes[i as usize].next;
                if self.nodes[i as usize].due <= to {
                    expired.push(self.remove(i));
                }
                i = next;
            }
        }
        self.now = to;
    }

    fn remove(&mut self, index: u32) -> T {
        let (prev, next, due) = {
            let n = &self.nodes[index as usize];
            (n.prev, n.next, n.due)
        };
        if prev == NIL {
            self.heads[(due & MASK) as usize] = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        }
        let node = &mut self.nodes[index as usize];
        node.generation = node.generation.wrapping_add(1);
        node.prev = NIL;
        node.next = NIL;
        self.free.push(index);
        self.len -= 1;
        // The node was live: remove is only called on linked nodes.
        match node.value.take() {
            Some(v) => v,
            None => unreachable!("wheel node {index} linked but empty"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_at_its_tick_not_before() {
        let mut w = Wheel::new();
        w.arm(5, "a");
        let mut out = Vec::new();
        w.advance(4, &mut out);
        assert!(out.is_empty());
        w.advance(5, &mut out);
        assert_eq!(out, ["a"]);
        assert!(w.is_empty());
    }

    #[test]
    fn long_timers_wait_their_rotations() {
        let mut w = Wheel::new();
        w.arm(3 * SLOTS as u64 + 7, 1);
        let mut out = Vec::new();
        for t in 1..3 * SLOTS as u64 + 7 {
            w.advance(t, &mut out);
            assert!(out.is_empty(), "fired early at {t}");
        }
        w.advance(3 * SLOTS as u64 + 7, &mut out);
        assert_eq!(out, [1]);
    }

    #[test]
    fn stale_ids_do_nothing() {
        let mut w = Wheel::new();
        let a = w.arm(2, 'a');
        let mut out = Vec::new();
        w.advance(2, &mut out);
        let b = w.arm(10, 'b'); // reuses a's node
        assert_eq!(w.cancel(a), None);
        assert_eq!(w.cancel(b), Some('b'));
        assert_eq!(w.cancel(b), None);
    }

    #[test]
    fn next_due_is_the_next_occupied_slot() {
        let mut w = Wheel::new();
        assert_eq!(w.next_due(), None);
        w.arm(40, ());
        w.arm(30, ());
        assert_eq!(w.next_due(), Some(30));
        let far = w.arm(10_000, ());
        assert_eq!(w.next_due(), Some(30));
        let mut out = Vec::new();
        w.advance(40, &mut out);
        // Only the far timer is left: its slot comes up at 10_000 mod 512 = 272, an early
        // wakeup that finds nothing due and moves on.
        assert_eq!(w.next_due(), Some(272));
        w.advance(272, &mut out);
        assert!(out.len() == 2, "the far timer did not fire early");
        assert!(w.cancel(far).is_some());
    }
}
