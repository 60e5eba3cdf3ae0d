//! One shard of the engine: a hash table, a dense slab of entries and a deadline heap.
//!
//! # Layout
//!
//! * `slots` is a dense `Vec<Slot>`: one slot per stored key, holding the key and the value
//!   in a single allocation. It has no holes: removing a slot moves the last slot into its
//!   place (`swap_remove`) and re-points the two structures that refer to the moved slot.
//! * `table` maps a key to its slot index (4 bytes a bucket). Hashes are not stored; they
//!   are recomputed from the key when the table resizes, which is rare.
//! * `heap` is the expiry index: a binary min-heap of `(deadline, slot)` with one entry per
//!   slot that has a deadline and none for slots without. Each slot records its heap position,
//!   so a deadline is changed or dropped in place in O(log n).
//!
//! # Invariants (checked by [`Shard::check_invariants`] in tests)
//!
//! 1. `table` holds exactly one index per slot, and `slots[i]` is found by its key's hash.
//! 2. `slots[i].heap_pos == NO_DEADLINE` or `heap[slots[i].heap_pos].slot == i`, and every heap
//!    entry is pointed back at by its slot. So the heap never holds more than one entry per key:
//!    setting one key with a TTL a million times leaves one entry.
//! 3. **A deadline is stored in exactly one place: the slot's own heap entry.** There is no
//!    second copy that could go stale. The sweeper removes the slot that the heap's minimum
//!    points at, and that entry *is* that slot's current deadline, because overwriting a key,
//!    changing or dropping its deadline, deleting it and clearing the shard all update the heap
//!    under the same lock. Hence a deadline that was replaced can never remove newer data.
//! 4. A slot whose deadline is `<= now` is expired: reads treat it as absent whatever the
//!    sweeper has done, so correctness never depends on sweeper timing.

use hashbrown::HashTable;

use crate::clock::Millis;

/// Sentinel heap position: the slot has no deadline.
const NO_DEADLINE: u32 = u32::MAX;

/// Capacity below which tables are never shrunk (shrinking tiny tables saves nothing).
const MIN_SHRINK_CAPACITY: usize = 64;

/// One stored key: key and value side by side in one heap allocation.
struct Slot {
    bytes: Box<[u8]>,
    key_len: u32,
    heap_pos: u32,
}

impl Slot {
    fn key(&self) -> &[u8] {
        &self.bytes[..self.key_len as usize]
    }

    fn value(&self) -> &[u8] {
        &self.bytes[self.key_len as usize..]
    }
}

fn concat(key: &[u8], value: &[u8]) -> Box<[u8]> {
    let mut bytes = Vec::with_capacity(key.len() + value.len());
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(value);
    bytes.into_boxed_slice()
}

/// An entry of the expiry index.
#[derive(Clone, Copy, Debug)]
struct HeapEntry {
    deadline: Millis,
    slot: u32,
}

/// Counters describing one shard, summed by [`crate::Engine::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Stored keys, including expired ones the sweeper has not removed yet.
    pub keys: usize,
    /// Entries in the expiry index (keys that have a deadline).
    pub index_entries: usize,
    /// Bytes of keys and values held.
    pub data_bytes: usize,
    /// Bucket capacity of the hash tables.
    pub table_capacity: usize,
    /// Capacity of the slot slabs.
    pub slot_capacity: usize,
    /// Capacity of the expiry index.
    pub index_capacity: usize,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.keys += o.keys;
        self.index_entries += o.index_entries;
        self.data_bytes += o.data_bytes;
        self.table_capacity += o.table_capacity;
        self.slot_capacity += o.slot_capacity;
        self.index_capacity += o.index_capacity;
    }
}

/// A key lookup in a shard: the hash of the key (computed once by the engine) and the key.
#[derive(Clone, Copy)]
pub(crate) struct Probe<'a> {
    pub hash: u64,
    pub key: &'a [u8],
}

/// See the module documentation.
#[derive(Default)]
pub(crate) struct Shard {
    table: HashTable<u32>,
    slots: Vec<Slot>,
    heap: Vec<HeapEntry>,
    data_bytes: usize,
}

impl Shard {
    fn find(&self, probe: Probe<'_>) -> Option<usize> {
        let slots = &self.slots;
        self.table
            .find(probe.hash, |&i| slots[i as usize].key() == probe.key)
            .map(|&i| i as usize)
    }

    fn deadline_at(&self, idx: usize) -> Option<Millis> {
        match self.slots[idx].heap_pos {
            NO_DEADLINE => None,
            pos => Some(self.heap[pos as usize].deadline),
        }
    }

    /// The slot of a key that is stored and not expired at `now`.
    fn find_live(&self, probe: Probe<'_>, now: Millis) -> Option<usize> {
        let idx = self.find(probe)?;
        match self.deadline_at(idx) {
            Some(deadline) if deadline <= now => None,
            _ => Some(idx),
        }
    }

    /// Calls `f` with the value and deadline of a live key.
    pub fn read<R>(
        &self,
        probe: Probe<'_>,
        now: Millis,
        f: impl FnOnce(&[u8], Option<Millis>) -> R,
    ) -> Option<R> {
        let idx = self.find_live(probe, now)?;
        Some(f(self.slots[idx].value(), self.deadline_at(idx)))
    }

    /// Stores `value` under the key with `deadline` (`None`: never expires). The caller has
    /// already turned a deadline at or before now into a removal.
    pub fn set(
        &mut self,
        probe: Probe<'_>,
        value: &[u8],
        deadline: Option<Millis>,
        hash_key: &impl Fn(&[u8]) -> u64,
    ) {
        let idx = match self.find(probe) {
            Some(idx) => {
                let slot = &mut self.slots[idx];
                if slot.bytes.len() == probe.key.len() + value.len() {
                    // Same size: overwrite in place, no allocation.
                    slot.bytes[probe.key.len()..].copy_from_slice(value);
                } else {
                    self.data_bytes -= slot.bytes.len();
                    slot.bytes = concat(probe.key, value);
                    self.data_bytes += slot.bytes.len();
                }
                idx
            }
            None => {
                let idx = self.slots.len();
                assert!(idx < NO_DEADLINE as usize, "shard holds 2^32-1 keys");
                self.slots.push(Slot {
                    bytes: concat(probe.key, value),
                    key_len: probe.key.len() as u32,
                    heap_pos: NO_DEADLINE,
                });
                self.data_bytes += probe.key.len() + value.len();
                let slots = &self.slots;
                self.table.insert_unique(probe.hash, idx as u32, |&i| {
                    hash_key(slots[i as usize].key())
                });
                idx
            }
        };
        self.set_deadline(idx, deadline);
    }

    /// Gives a live key a new deadline. Returns whether the key was live.
    pub fn expire(&mut self, probe: Probe<'_>, now: Millis, deadline: Millis) -> bool {
        match self.find_live(probe, now) {
            Some(idx) => {
                self.set_deadline(idx, Some(deadline));
                true
            }
            None => false,
        }
    }

    /// Removes a key. Returns whether it was live (an expired key is removed too, but counts
    /// as absent, exactly as a read would see it).
    pub fn remove(
        &mut self,
        probe: Probe<'_>,
        now: Millis,
        hash_key: &impl Fn(&[u8]) -> u64,
    ) -> bool {
        let Some(idx) = self.find(probe) else {
            return false;
        };
        let was_live = self.deadline_at(idx).is_none_or(|d| d > now);
        self.remove_slot(probe.hash, idx, hash_key);
        self.maybe_shrink(hash_key);
        was_live
    }

    /// Removes at most `max` expired keys, earliest deadline first. Returns how many were
    /// removed and the earliest deadline still in the index.
    pub fn purge_expired(
        &mut self,
        now: Millis,
        max: usize,
        hash_key: &impl Fn(&[u8]) -> u64,
    ) -> (usize, Option<Millis>) {
        let mut removed = 0;
        while removed < max {
            let Some(&HeapEntry { deadline, slot }) = self.heap.first() else {
                break;
            };
            if deadline > now {
                break;
            }
            let hash = hash_key(self.slots[slot as usize].key());
            self.remove_slot(hash, slot as usize, hash_key);
            removed += 1;
        }
        if removed > 0 {
            self.maybe_shrink(hash_key);
        }
        (removed, self.heap.first().map(|e| e.deadline))
    }

    /// The earliest deadline in the index.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.heap.first().map(|e| e.deadline)
    }

    pub fn stats(&self) -> Stats {
        Stats {
            keys: self.slots.len(),
            index_entries: self.heap.len(),
            data_bytes: self.data_bytes,
            table_capacity: self.table.capacity(),
            slot_capacity: self.slots.capacity(),
            index_capacity: self.heap.capacity(),
        }
    }

    /// Removes slot `idx`, whose key hashes to `hash`, from the table, the heap and the slab.
    fn remove_slot(&mut self, hash: u64, idx: usize, hash_key: &impl Fn(&[u8]) -> u64) {
        self.set_deadline(idx, None);
        match self.table.find_entry(hash, |&i| i as usize == idx) {
            Ok(entry) => {
                entry.remove();
            }
            Err(_) => unreachable!("invariant 1: every slot is in the table"),
        }
        let last = self.slots.len() - 1;
        let removed = self.slots.swap_remove(idx);
        self.data_bytes -= removed.bytes.len();
        if idx != last {
            // The slot that was last now lives at `idx`: re-point the table and the heap.
            let moved = &self.slots[idx];
            let moved_hash = hash_key(moved.key());
            match self.table.find_mut(moved_hash, |&i| i as usize == last) {
                Some(i) => *i = idx as u32,
                None => unreachable!("invariant 1: every slot is in the table"),
            }
            if moved.heap_pos != NO_DEADLINE {
                self.heap[moved.heap_pos as usize].slot = idx as u32;
            }
        }
    }

    /// Sets, changes or drops the deadline of slot `idx`, keeping invariant 2.
    fn set_deadline(&mut self, idx: usize, deadline: Option<Millis>) {
        let pos = self.slots[idx].heap_pos;
        match (pos, deadline) {
            (NO_DEADLINE, None) => {}
            (NO_DEADLINE, Some(deadline)) => {
                let pos = self.heap.len();
                self.heap.push(HeapEntry {
                    deadline,
                    slot: idx as u32,
                });
                self.slots[idx].heap_pos = pos as u32;
                self.sift_up(pos);
            }
            (pos, Some(deadline)) => {
                let pos = pos as usize;
                let old = std::mem::replace(&mut self.heap[pos].deadline, deadline);
                if deadline < old {
                    self.sift_up(pos);
                } else {
                    self.sift_down(pos);
                }
            }
            (pos, None) => {
                let pos = pos as usize;
                self.slots[idx].heap_pos = NO_DEADLINE;
                let last = self.heap.len() - 1;
                self.heap.swap_remove(pos);
                if pos != last {
                    self.slots[self.heap[pos].slot as usize].heap_pos = pos as u32;
                    let pos = self.sift_up(pos);
                    self.sift_down(pos);
                }
            }
        }
    }

    fn swap_heap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.slots[self.heap[a].slot as usize].heap_pos = a as u32;
        self.slots[self.heap[b].slot as usize].heap_pos = b as u32;
    }

    fn sift_up(&mut self, mut pos: usize) -> usize {
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if self.heap[pos].deadline >= self.heap[parent].deadline {
                break;
            }
            self.swap_heap(pos, parent);
            pos = parent;
        }
        pos
    }

    fn sift_down(&mut self, mut pos: usize) {
        let len = self.heap.len();
        loop {
            let left = 2 * pos + 1;
            if left >= len {
                break;
            }
            let right = left + 1;
            let child = if right < len && self.heap[right].deadline < self.heap[left].deadline {
                right
            } else {
                left
            };
            if self.heap[child].deadline >= self.heap[pos].deadline {
                break;
            }
            self.swap_heap(pos, child);
            pos = child;
        }
    }

    /// Gives memory back once a structure has fallen to a quarter of its capacity. Shrinking
    /// to twice the length leaves room to grow again before the next reallocation, so a shard
    /// that hovers around one size does not resize back and forth.
    fn maybe_shrink(&mut self, hash_key: &impl Fn(&[u8]) -> u64) {
        fn wants_shrink(len: usize, capacity: usize) -> bool {
            capacity > MIN_SHRINK_CAPACITY && len * 4 < capacity
        }
        if wants_shrink(self.slots.len(), self.slots.capacity()) {
            self.slots.shrink_to(self.slots.len() * 2);
        }
        if wants_shrink(self.heap.len(), self.heap.capacity()) {
            self.heap.shrink_to(self.heap.len() * 2);
        }
        if wants_shrink(self.table.len(), self.table.capacity()) {
            let slots = &self.slots;
            self.table
                .shrink_to(self.table.len() * 2, |&i| hash_key(slots[i as usize].key()));
        }
    }

    /// Panics if an invariant of the module documentation does not hold. For tests.
    pub fn check_invariants(&self, hash_key: &impl Fn(&[u8]) -> u64) {
        assert_eq!(
            self.table.len(),
            self.slots.len(),
            "one table entry per slot"
        );
        let mut data_bytes = 0;
        for (idx, slot) in self.slots.iter().enumerate() {
            data_bytes += slot.bytes.len();
            let hash = hash_key(slot.key());
            assert_eq!(
                self.table.find(hash, |&i| i as usize == idx).copied(),
                Some(idx as u32),
                "slot {idx} reachable through its key's hash"
            );
            if slot.heap_pos != NO_DEADLINE {
                assert_eq!(self.heap[slot.heap_pos as usize].slot as usize, idx);
            }
        }
        assert_eq!(data_bytes, self.data_bytes, "data byte count");
        for (pos, entry) in self.heap.iter().enumerate() {
            assert_eq!(self.slots[entry.slot as usize].heap_pos as usize, pos);
            if pos > 0 {
                assert!(
                    self.heap[(pos - 1) / 2].deadline <= entry.deadline,
                    "heap order"
                );
            }
        }
    }
}
