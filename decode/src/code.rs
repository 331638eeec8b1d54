//! The code bytes a trace carries, by address.

use std::collections::BTreeMap;

/// Non-overlapping ranges of code bytes.
#[derive(Debug, Clone, Default)]
pub struct CodeMap {
    ranges: BTreeMap<u64, Vec<u8>>,
}

impl CodeMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes at `addr`; later additions do not replace earlier bytes.
    pub fn insert(&mut self, addr: u64, bytes: Vec<u8>) {
        if bytes.is_empty() || addr.checked_add(bytes.len() as u64).is_none() {
            return;
        }
        self.ranges.entry(addr).or_insert(bytes);
    }

    /// Copies up to `buf.len()` contiguous bytes at `addr`; returns the count.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() {
            let a = match addr.checked_add(done as u64) {
                Some(a) => a,
                None => break,
            };
            let Some((&start, bytes)) = self.ranges.range(..=a).next_back() else {
                break;
            };
            let off = (a - start) as usize;
            if off >= bytes.len() {
                break;
            }
            let n = (bytes.len() - off).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&bytes[off..off + n]);
            done += n;
        }
        done
    }

    /// The contiguous bytes from `addr` to the end of the range holding it.
    #[inline]
    pub fn slice_at(&self, addr: u64) -> Option<&[u8]> {
        let (&start, bytes) = self.ranges.range(..=addr).next_back()?;
        bytes.get((addr - start) as usize..).filter(|s| !s.is_empty())
    }

    /// The map holds the byte at `addr`.
    pub fn contains(&self, addr: u64) -> bool {
        self.read(addr, &mut [0u8; 1]) == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_across_adjacent_ranges() {
        let mut m = CodeMap::new();
        m.insert(0x1000, vec![1; 0x1000]);
        m.insert(0x2000, vec![2; 0x1000]);
        let mut b = [0u8; 4];
        assert_eq!(m.read(0x1ffe, &mut b), 4);
        assert_eq!(b, [1, 1, 2, 2]);
        assert_eq!(m.read(0x2ffe, &mut b), 2);
        assert_eq!(m.read(0x500, &mut b), 0);
        assert!(!m.contains(0x3000));
        m.insert(u64::MAX - 1, vec![0; 4]);
        assert!(!m.contains(u64::MAX - 1));
    }
}
