//! A slab whose keys carry a generation, so a key to a freed slot never
//! reaches the value that reuses it.

/// A slab key: slot index and the slot's generation when it was issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    index: u32,
    generation: u32,
}

struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

pub struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab { slots: Vec::new(), free: Vec::new(), len: 0 }
    }
}

impl<T> Slab<T> {
    pub fn insert(&mut self, value: T) -> Key {
        self.len += 1;
        if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index as usize];
            slot.value = Some(value);
            return Key { index, generation: slot.generation };
        }
        self.slots.push(Slot { generation: 0, value: Some(value) });
        Key { index: (self.slots.len() - 1) as u32, generation: 0 }
    }

    pub fn get(&self, k: Key) -> Option<&T> {
        let s = self.slots.get(k.index as usize)?;
        if s.generation == k.generation {
            s.value.as_ref()
        } else {
            None
        }
    }

    pub fn get_mut(&mut self, k: Key) -> Option<&mut T> {
        let s = self.slots.get_mut(k.index as usize)?;
        if s.generation == k.generation {
            s.value.as_mut()
        } else {
            None
        }
    }

    pub fn remove(&mut self, k: Key) -> Option<T> {
        let s = self.slots.get_mut(k.index as usize)?;
        if s.generation != k.generation {
            return None;
        }
        let v = s.value.take()?;
        s.generation = s.generation.wrapping_add(1);
        self.free.push(k.index);
        self.len -= 1;
        Some(v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (Key, &T)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.value.as_ref().map(|v| (Key { index: i as u32, generation: s.generation }, v))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_keys_miss_after_reuse() {
        let mut s = Slab::default();
        let a = s.insert("a");
        assert_eq!(s.remove(a), Some("a"));
        let b = s.insert("b");
        assert_ne!(a, b);
        assert_eq!(s.get(a), None);
        assert_eq!(s.remove(a), None);
        assert_eq!(s.get(b), Some(&"b"));
        assert_eq!(s.iter().count(), 1);
        assert_eq!(s.len, 1);
    }
}
