//! Interest changes waiting for the bus thread: the users and rooms that gained their first
//! or lost their last local connection since the bus thread last looked.
//!
//! A set keyed by subject, not a log of events: the bus thread asks the registry what is
//! true *now* for each ID, so how often an ID changed does not matter, and a reconnect
//! storm, or a NATS outage of any length (nothing is taken while disconnected), costs
//! memory for the distinct IDs only.

use std::collections::HashSet;
use std::sync::Arc;

use super::subject::Kind;

/// A user or room subject, as the bus thread tracks it.
pub(super) type Key = (Kind, Arc<str>);

/// IDs whose local presence changed, each once.
#[derive(Debug, Default)]
pub(super) struct Changed {
    ids: HashSet<Key>,
}

impl Changed {
    /// Notes that `id` changed; a no-op if it is already waiting.
    pub(super) fn mark(&mut self, kind: Kind, id: &Arc<str>) {
        self.ids.insert((kind, Arc::clone(id)));
    }

    /// How many distinct IDs are waiting.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Everything waiting, leaving the set empty and without its capacity: a set that
    /// grew during an outage gives its memory back once it has been worked off.
    pub(super) fn take(&mut self) -> Vec<Key> {
        std::mem::take(&mut self.ids).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_of_few_ids_keeps_the_set_small() {
        let ids: Vec<Arc<str>> = (0..10).map(|i| Arc::from(format!("u{i}"))).collect();
        let mut c = Changed::default();
        for round in 0..10_000 {
            let id = &ids[round % ids.len()];
            c.mark(Kind::User, id);
            c.mark(Kind::Room, id);
        }
        assert_eq!(c.len(), 20);
        let mut taken = c.take();
        taken.sort();
        assert_eq!(taken.len(), 20);
        assert!(c.is_empty());
        assert_eq!(c.ids.capacity(), 0);
    }
}
