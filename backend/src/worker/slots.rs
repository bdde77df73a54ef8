//! In-flight queue operations, keyed by the tag handed to the image queue.

/// What one queue operation does for its request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SlotKind {
    /// Data read into guest pages.
    Read,
    /// Data written (or discarded) from guest pages; `seq` orders it against flushes.
    Write { seq: u64 },
    /// A discard.
    Discard { seq: u64 },
    /// A flush with no data.
    Flush,
    /// A step of the exclusive (barrier) request.
    Exclusive,
}

/// One in-flight operation.
#[derive(Clone, Copy, Debug)]
pub(super) struct Slot {
    /// The guest's request id.
    pub id: u64,
    /// The operation code to answer with.
    pub op: u8,
    /// Bytes moved, for statistics.
    pub bytes: u64,
    /// What it is.
    pub kind: SlotKind,
    /// When its request left the ring.
    pub since: std::time::Instant,
}

/// A slab of slots; the tag is the index.
#[derive(Debug, Default)]
pub(super) struct Slots {
    entries: Vec<Option<Slot>>,
    free: Vec<usize>,
    used: usize,
}

impl Slots {
    pub fn insert(&mut self, slot: Slot) -> u64 {
        self.used += 1;
        if let Some(i) = self.free.pop() {
            self.entries[i] = Some(slot);
            return i as u64;
        }
        self.entries.push(Some(slot));
        (self.entries.len() - 1) as u64
    }

    pub fn remove(&mut self, tag: u64) -> Option<Slot> {
        let i = usize::try_from(tag).ok()?;
        let slot = self.entries.get_mut(i)?.take()?;
        self.free.push(i);
        self.used -= 1;
        Some(slot)
    }

    pub fn is_empty(&self) -> bool {
        self.used == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(id: u64) -> Slot {
        Slot {
            id,
            op: 0,
            bytes: 0,
            kind: SlotKind::Read,
            since: std::time::Instant::now(),
        }
    }

    #[test]
    fn tags_are_reused_and_unknown_tags_are_ignored() {
        let mut s = Slots::default();
        let a = s.insert(slot(1));
        let b = s.insert(slot(2));
        assert_ne!(a, b);
        assert_eq!(s.remove(a).map(|x| x.id), Some(1));
        assert!(s.remove(a).is_none());
        assert!(s.remove(999).is_none());
        let c = s.insert(slot(3));
        assert_eq!(c, a);
        assert!(!s.is_empty());
    }
}
