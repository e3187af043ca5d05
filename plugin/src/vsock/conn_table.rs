//! The connections of one VM: a slab plus the key index. Both change only through these
//! methods, so they cannot drift apart. Each slot counts its occupants (its *generation*), so an
//! event token naming (slot, generation) cannot reach a later occupant of the same slot.

use std::collections::HashMap;

use super::connection::Connection;
use super::status::ConnKey;

#[derive(Default)]
pub struct ConnTable {
    slots: Vec<Option<Connection>>,
    /// Per slot: how many connections have occupied it (wrapping).
    generations: Vec<u32>,
    free: Vec<u32>,
    by_key: HashMap<ConnKey, u32>,
}

impl ConnTable {
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub fn slot_of(&self, key: &ConnKey) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    pub fn contains(&self, key: &ConnKey) -> bool {
        self.by_key.contains_key(key)
    }

    /// Inserts a connection whose key is not in use; returns its slot.
    pub fn insert(&mut self, conn: Connection) -> u32 {
        let key = conn.key;
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(conn);
                let g = &mut self.generations[s as usize];
                *g = g.wrapping_add(1);
                s
            }
            None => {
                self.slots.push(Some(conn));
                self.generations.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        self.by_key.insert(key, slot);
        slot
    }

    /// The generation of the connection now in `slot` (of the last one, if it is free).
    pub fn generation(&self, slot: u32) -> u32 {
        self.generations.get(slot as usize).copied().unwrap_or(0)
    }

    pub fn get_mut(&mut self, slot: u32) -> Option<&mut Connection> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    pub fn get(&self, slot: u32) -> Option<&Connection> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    pub fn remove(&mut self, slot: u32) -> Option<Connection> {
        let conn = self.slots.get_mut(slot as usize)?.take()?;
        self.by_key.remove(&conn.key);
        self.free.push(slot);
        Some(conn)
    }

    /// Occupied slot ids, starting after `start` and wrapping (round-robin fairness).
    pub fn slots_from(&self, start: u32) -> Vec<u32> {
        let n = self.slots.len() as u32;
        (0..n)
            .map(|i| (start + 1 + i) % n.max(1))
            .filter(|&s| self.slots[s as usize].is_some())
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Connection> {
        self.slots.iter().flatten()
    }

    pub fn drain(&mut self) -> Vec<Connection> {
        // Slots are kept (free) so that their generations keep counting: an event for a
        // drained connection must not match the next occupant.
        self.by_key.clear();
        self.free = (0..self.slots.len() as u32).rev().collect();
        self.slots.iter_mut().filter_map(Option::take).collect()
    }
}
