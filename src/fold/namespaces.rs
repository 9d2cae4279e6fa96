//! The fold's namespaces: by name, in arrival order and in name order, with
//! the overflow series past `max_namespaces`.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Outcome, Sli, Slot, OVERFLOW_NAMESPACE};
use crate::config::Catalog;

#[derive(Clone)]
pub(super) struct Namespace {
    pub(super) name: Arc<str>,
    pub(super) slots: Vec<Slot>,
    /// One per `Catalog::slos`.
    pub(super) slis: Vec<Sli>,
}

/// Namespaces by name, in arrival order.
#[derive(Default)]
pub(super) struct Namespaces {
    /// foldhash, seeded at random per map, rather than SipHash: most of a
    /// lookup's cost per event went to SipHash (BENCHMARKS.md, "Per-event cost"). Names
    /// come from events, so the seed matters: it
    /// keeps collisions from being computed offline; and the map holds at
    /// most `max_namespaces` entries.
    pub(super) index: HashMap<Arc<str>, usize, foldhash::fast::RandomState>,
    /// Shared, copy-on-write: a checkpoint takes a copy of the list under
    /// the fold's lock (a pointer per namespace) and encodes it after; a
    /// namespace written to while that copy lives is copied first
    /// ([`Namespaces::get_mut`]), so the checkpoint sees it as it was.
    pub(super) list: Vec<Arc<Namespace>>,
    /// Indexes into `list`, by name: a scrape copies them out in the order
    /// every format renders them, and sorts nothing.
    pub(super) by_name: Vec<usize>,
}

impl Namespaces {
    /// The slot index for `name`, or for the overflow series past the limit.
    pub(super) fn find_or_insert(&mut self, name: &str, catalog: &Catalog) -> (usize, Outcome) {
        if let Some(&i) = self.index.get(name) {
            return (i, Outcome::Folded);
        }
        let live = self.list.len() - usize::from(self.index.contains_key(OVERFLOW_NAMESPACE));
        if live >= catalog.limits.max_namespaces {
            return (
                self.insert(OVERFLOW_NAMESPACE, catalog),
                Outcome::Overflowed,
            );
        }
        (self.insert(name, catalog), Outcome::Folded)
    }

    /// Namespace `i`, to write to: copied first if a checkpoint still holds
    /// it (otherwise this is one atomic compare on the count).
    pub(super) fn get_mut(&mut self, i: usize) -> &mut Namespace {
        Arc::make_mut(&mut self.list[i])
    }

    /// Keep only the namespaces `keep` names; returns how many went.
    pub(super) fn retain(&mut self, keep: impl Fn(&str) -> bool) -> usize {
        let before = self.list.len();
        let list = std::mem::take(&mut self.list);
        *self = Namespaces::default();
        for ns in list.into_iter().filter(|ns| keep(&ns.name)) {
            self.push(ns);
        }
        before - self.list.len()
    }

    /// Add a namespace whole (one this fold does not hold yet).
    pub(super) fn push(&mut self, ns: Arc<Namespace>) {
        let at = self
            .by_name
            .partition_point(|&i| *self.list[i].name < *ns.name);
        self.by_name.insert(at, self.list.len());
        self.index.insert(ns.name.clone(), self.list.len());
        self.list.push(ns);
    }

    pub(super) fn insert(&mut self, name: &str, catalog: &Catalog) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let name: Arc<str> = Arc::from(name);
        let slots = catalog.metrics.iter().map(|_| Slot::Empty).collect();
        let at = self
            .by_name
            .partition_point(|&i| *self.list[i].name < *name);
        self.by_name.insert(at, self.list.len());
        self.list.push(Arc::new(Namespace {
            name: name.clone(),
            slots,
            slis: vec![Sli::default(); catalog.slos.len()],
        }));
        self.index.insert(name, self.list.len() - 1);
        self.list.len() - 1
    }
}
