//! A circular BTS buffer that behaves like the DS area's: a base, an index
//! (next slot written), an absolute maximum, and an interrupt threshold that
//! lies beyond the maximum, which means "wrap around, never interrupt".

use crate::{BtsRecord, Error, BTS_RECORD_SIZE};

/// A circular buffer of BTS records.
#[derive(Debug, Clone)]
pub struct BtsBuffer {
    slots: Vec<BtsRecord>,
    capacity: usize,
    /// Index of the next slot the "hardware" writes.
    index: usize,
    /// Records ever written since the last reset.
    written: u64,
    /// Context records ever written since the last reset. With the ones
    /// still held, this gives the branches overwritten without looking at
    /// each record as it is overwritten (which costs 2.5x in delivery).
    contexts_written: u64,
}

impl BtsBuffer {
    /// A buffer of `bytes` bytes, rounded down to whole records.
    pub fn with_bytes(bytes: usize) -> Result<Self, Error> {
        let capacity = bytes / BTS_RECORD_SIZE;
        if capacity == 0 {
            return Err(Error::BufferTooSmall { bytes });
        }
        Ok(BtsBuffer { slots: Vec::new(), capacity, index: 0, written: 0, contexts_written: 0 })
    }

    /// How many records the buffer holds when full.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Size of the buffer in bytes (the absolute maximum minus the base).
    pub fn size_bytes(&self) -> usize {
        self.capacity * BTS_RECORD_SIZE
    }

    /// The DS-area index in bytes from the base.
    pub fn index_bytes(&self) -> usize {
        self.index * BTS_RECORD_SIZE
    }

    /// The DS-area interrupt threshold in bytes from the base: beyond the
    /// absolute maximum, so the buffer wraps and never interrupts.
    pub fn threshold_bytes(&self) -> usize {
        self.size_bytes() + BTS_RECORD_SIZE
    }

    /// Appends one record, overwriting the oldest when full.
    #[inline]
    pub fn push(&mut self, rec: BtsRecord) {
        self.contexts_written += u64::from(!rec.is_branch());
        if self.slots.len() < self.capacity {
            self.slots.push(rec);
        } else {
            self.slots[self.index] = rec;
        }
        self.index += 1;
        if self.index == self.capacity {
            self.index = 0;
        }
        self.written += 1;
    }

    /// Writes a run of records, oldest first, as [`BtsBuffer::push`] of each would.
    pub fn push_all(&mut self, recs: &[BtsRecord]) {
        if let [one] = recs {
            return self.push(*one);
        }
        self.contexts_written += recs.iter().filter(|r| !r.is_branch()).count() as u64;
        self.written += recs.len() as u64;
        let cap = self.capacity;
        if recs.len() >= cap {
            // Only the newest `capacity` records survive; the write index
            // ends where one push at a time would leave it, the oldest
            // survivor at the index.
            let tail = &recs[recs.len() - cap..];
            let end = (self.index + recs.len() % cap) % cap;
            self.slots.resize(cap, tail[0]);
            self.slots[end..].copy_from_slice(&tail[..cap - end]);
            self.slots[..end].copy_from_slice(&tail[cap - end..]);
            self.index = end;
            return;
        }
        let mut recs = recs;
        while !recs.is_empty() {
            if self.slots.len() < self.capacity {
                let n = recs.len().min(self.capacity - self.slots.len());
                self.slots.extend_from_slice(&recs[..n]);
                recs = &recs[n..];
                self.index = self.slots.len() % self.capacity;
            } else {
                let n = recs.len().min(self.capacity - self.index);
                self.slots[self.index..self.index + n].copy_from_slice(&recs[..n]);
                recs = &recs[n..];
                self.index = (self.index + n) % self.capacity;
            }
        }
    }

    /// Number of records currently held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True if nothing was written since the last reset.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Records written since the last reset, including overwritten ones.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Records overwritten (lost) since the last reset.
    pub fn overwritten(&self) -> u64 {
        self.written - self.slots.len() as u64
    }

    /// Branches lost to overwriting (context records overwritten aside):
    /// with the branches the buffer holds, every branch delivered.
    pub fn branches_overwritten(&self) -> u64 {
        let contexts_held = self.slots.iter().filter(|r| !r.is_branch()).count() as u64;
        let contexts_overwritten = self.contexts_written - contexts_held;
        self.overwritten() - contexts_overwritten
    }

    /// Iterates the held records, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &BtsRecord> + '_ {
        let (newer, older) = if self.slots.len() < self.capacity {
            (&self.slots[..], &self.slots[..0])
        } else {
            let (a, b) = self.slots.split_at(self.index);
            (a, b)
        };
        older.iter().chain(newer.iter())
    }

    /// The held records as the bytes the hardware wrote, oldest first, in
    /// two pieces (the ring's older and newer parts): what DRAIN sends.
    #[cfg(target_endian = "little")]
    pub fn as_byte_slices(&self) -> (&[u8], &[u8]) {
        use zerocopy::IntoBytes;
        let (newer, older) = if self.slots.len() < self.capacity {
            (&self.slots[..], &self.slots[..0])
        } else {
            self.slots.split_at(self.index)
        };
        (older.as_bytes(), newer.as_bytes())
    }

    /// A copy of the held records, oldest first.
    pub fn snapshot(&self) -> Vec<BtsRecord> {
        self.iter().copied().collect()
    }

    /// The newest record, if any.
    pub fn newest(&self) -> Option<&BtsRecord> {
        self.iter().next_back()
    }

    /// The record `n` places back from the newest (0 = newest), as the legacy
    /// `PTRACE_BTS_GET` indexes them.
    pub fn nth_newest(&self, n: usize) -> Option<&BtsRecord> {
        self.iter().rev().nth(n)
    }

    /// Empties the buffer (the DS index goes back to the base).
    pub fn clear(&mut self) {
        self.slots.clear();
        self.index = 0;
        self.written = 0;
        self.contexts_written = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64) -> BtsRecord {
        BtsRecord::branch(i, i + 1)
    }

    #[test]
    fn counts_the_branches_it_overwrote() {
        let mut b = BtsBuffer::with_bytes(24 * 3).unwrap();
        b.push(BtsRecord::context(crate::ContextKind::TaskArrives, 0, 7));
        for i in 0..5 {
            b.push(rec(i));
        }
        // Written: arrives, 0..5; kept: 2, 3, 4; overwritten: arrives, 0, 1.
        assert_eq!(b.overwritten(), 3);
        assert_eq!(b.branches_overwritten(), 2);
        let kept = b.iter().filter(|r| r.is_branch()).count() as u64;
        assert_eq!(kept + b.branches_overwritten(), 5);
    }

    #[test]
    fn push_all_is_push_of_each() {
        for cap in [1usize, 3, 7] {
            for pre in 0..9u64 {
                for run in 0..20u64 {
                    let mut a = BtsBuffer::with_bytes(24 * cap).unwrap();
                    let mut b = a.clone();
                    let recs: Vec<BtsRecord> = (0..pre + run)
                        .map(|i| {
                            if i % 5 == 2 {
                                BtsRecord::context(crate::ContextKind::TaskArrives, i, 1)
                            } else {
                                rec(i)
                            }
                        })
                        .collect();
                    for r in &recs {
                        a.push(*r);
                    }
                    for r in &recs[..pre as usize] {
                        b.push(*r);
                    }
                    b.push_all(&recs[pre as usize..]);
                    assert_eq!(a.snapshot(), b.snapshot(), "cap {cap} pre {pre} run {run}");
                    assert_eq!(a.written(), b.written());
                    assert_eq!(a.branches_overwritten(), b.branches_overwritten());
                    assert_eq!(a.index_bytes(), b.index_bytes());
                }
            }
        }
    }

    #[test]
    fn rejects_a_buffer_below_one_record() {
        assert!(BtsBuffer::with_bytes(23).is_err());
        assert_eq!(BtsBuffer::with_bytes(24 * 3 + 5).unwrap().capacity(), 3);
    }

    #[test]
    fn wraps_and_keeps_the_newest_oldest_first() {
        let mut b = BtsBuffer::with_bytes(24 * 4).unwrap();
        for i in 0..3 {
            b.push(rec(i));
        }
        assert_eq!(b.snapshot(), vec![rec(0), rec(1), rec(2)]);
        for i in 3..10 {
            b.push(rec(i));
        }
        assert_eq!(b.snapshot(), vec![rec(6), rec(7), rec(8), rec(9)]);
        assert_eq!(b.written(), 10);
        assert_eq!(b.overwritten(), 6);
        assert_eq!(b.nth_newest(0), Some(&rec(9)));
        assert_eq!(b.nth_newest(3), Some(&rec(6)));
        assert_eq!(b.nth_newest(4), None);
        assert_eq!(b.index_bytes(), 2 * 24);
        assert!(b.threshold_bytes() > b.size_bytes());
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.overwritten(), 0);
    }
}
