//! The cards a simulated terminal redeems against: a bounded, uniform sample of the cards its bundles
//! gave it (reservoir sampling over every active card it was sent), each with the terminal's own uses
//! since the platform signed the entry.
//!
//! A real terminal keeps every card of its merchant's scope (a million at the load model); the
//! simulator keeps at most [`Pool::capacity`] of them, which is enough to spread its redemptions over
//! the fleet's cards (every terminal samples independently), and keeps 10,000 terminals in memory.
//!
//! **Uses left** follow the real terminal's rule (`docs/entitlement-format.md`, "Usage accounting"):
//! the entry's `uses_left` counts this terminal's records up to the entry's `usage_through_seq`; the
//! terminal subtracts its own records after it. A newer entry of the card replaces the figure and
//! drops the local uses it already counts.

use std::collections::HashMap;

use rand::{Rng, RngExt};
use redeemd_contract::{Card, CardRef};

/// Reservoir sampling's decision for the `seen`-th card offered when `filled` slots are taken: the
/// next slot while the pool is not full, else a uniformly random slot with probability
/// `capacity / seen` (`None`: the card is not kept). Every card offered ends up kept with the same
/// probability, whatever its place in the stream.
pub fn reservoir_slot(
    filled: usize,
    capacity: usize,
    seen: u64,
    rng: &mut impl Rng,
) -> Option<usize> {
    if filled < capacity {
        return Some(filled);
    }
    let j = rng.random_range(0..seen.max(1));
    usize::try_from(j).ok().filter(|&j| j < capacity)
}

/// One card in the pool.
#[derive(Debug, Clone)]
pub struct PoolCard {
    pub card_ref: CardRef,
    /// The version of the bundle that delivered the entry (what a record quotes as `entry_version`).
    pub entry_version: u64,
    pub card: Card,
    /// This terminal's uses not yet counted in `card`: `(seq, package id, service code, units)`,
    /// units negative for a void.
    pub local_uses: Vec<(u64, String, String, i64)>,
}

impl PoolCard {
    pub fn new(card_ref: CardRef, entry_version: u64, card: Card) -> PoolCard {
        PoolCard {
            card_ref,
            entry_version,
            card,
            local_uses: Vec::new(),
        }
    }

    /// Uses left of one item by the terminal's rule (never below 0).
    pub fn uses_left(&self, package_id: &str, service_code: &str) -> u32 {
        let Some(item) = self
            .card
            .packages
            .iter()
            .find(|p| p.id == package_id)
            .and_then(|p| p.items.iter().find(|i| i.service_code == service_code))
        else {
            return 0;
        };
        let used: i64 = self
            .local_uses
            .iter()
            .filter(|(seq, p, s, _)| {
                *seq > self.card.usage_through_seq && p == package_id && s == service_code
            })
            .map(|(_, _, _, units)| units)
            .sum();
        u32::try_from((i64::from(item.uses_left) - used).max(0)).unwrap_or(0)
    }

    /// A newer signed entry of this card: its figures replace the old ones, and the local uses it
    /// already counts are dropped.
    pub fn replace(&mut self, entry_version: u64, card: Card) {
        let through = card.usage_through_seq;
        self.entry_version = entry_version;
        self.card = card;
        self.local_uses.retain(|(seq, ..)| *seq > through);
    }
}

/// A reservoir sample of the active cards a terminal was sent.
#[derive(Debug, Clone, Default)]
pub struct Pool {
    cards: Vec<PoolCard>,
    index: HashMap<CardRef, usize>,
    /// Active cards offered to the reservoir since the last full snapshot.
    seen: u64,
    capacity: usize,
}

impl Pool {
    pub fn new(capacity: usize) -> Pool {
        Pool {
            capacity: capacity.max(1),
            ..Pool::default()
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.cards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cards.is_empty()
    }

    pub fn contains(&self, card_ref: &CardRef) -> bool {
        self.index.contains_key(card_ref)
    }

    pub fn get(&self, slot: usize) -> Option<&PoolCard> {
        self.cards.get(slot)
    }

    pub fn get_mut(&mut self, card_ref: &CardRef) -> Option<&mut PoolCard> {
        let slot = *self.index.get(card_ref)?;
        self.cards.get_mut(slot)
    }

    pub fn iter(&self) -> impl Iterator<Item = &PoolCard> {
        self.cards.iter()
    }

    /// Where the reservoir puts the next offered card ([`reservoir_slot`]); `None`: not kept.
    pub fn offer(&mut self, rng: &mut impl Rng) -> Option<usize> {
        self.seen += 1;
        reservoir_slot(self.cards.len(), self.capacity, self.seen, rng)
    }

    /// Cards offered since the last full snapshot.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// After a delta staged its offers against a copy of [`Pool::seen`].
    pub fn set_seen(&mut self, seen: u64) {
        self.seen = seen;
    }

    /// Puts `card` at `slot` (as [`Pool::offer`] chose it): appended when the slot is past the end,
    /// else replacing the card there.
    pub fn put(&mut self, slot: usize, card: PoolCard) {
        if slot >= self.cards.len() {
            self.index.insert(card.card_ref, self.cards.len());
            self.cards.push(card);
        } else {
            self.index.remove(&self.cards[slot].card_ref);
            self.index.insert(card.card_ref, slot);
            self.cards[slot] = card;
        }
    }

    /// Drops a card (a delta removed it from the merchant's scope).
    pub fn remove(&mut self, card_ref: &CardRef) {
        let Some(slot) = self.index.remove(card_ref) else {
            return;
        };
        self.cards.swap_remove(slot);
        if let Some(moved) = self.cards.get(slot) {
            self.index.insert(moved.card_ref, slot);
        }
    }

    /// Empties the pool for a full snapshot (which replaces the whole cache), keeping the capacity.
    pub fn clear(&mut self) {
        self.cards.clear();
        self.index.clear();
        self.seen = 0;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;
    use redeemd_contract::{CardStatus, Item, MerchantScope, Package};

    pub(crate) fn card(uses_left: u32, usage_through_seq: u64) -> Card {
        Card {
            masked_number: "628899******0001".into(),
            status: CardStatus::Active,
            holder: None,
            usage_through_seq,
            packages: vec![Package {
                id: "P1".into(),
                title: "套餐".into(),
                items: vec![
                    Item {
                        service_code: "WASH".into(),
                        title: "精洗".into(),
                        uses_total: 1000,
                        uses_left,
                        price_fen: 3500,
                    },
                    Item {
                        service_code: "OIL".into(),
                        title: "换机油".into(),
                        uses_total: 1000,
                        uses_left,
                        price_fen: 12_000,
                    },
                ],
                valid_from_ms: 0,
                valid_until_ms: i64::MAX,
                scope: MerchantScope::All,
                daily_cap: None,
                identity_required: false,
            }],
        }
    }

    #[test]
    fn uses_left_subtracts_only_local_uses_after_the_entry() {
        let mut c = PoolCard::new(CardRef([1; 32]), 5, card(10, 3));
        c.local_uses.push((3, "P1".into(), "WASH".into(), 1)); // counted by the entry already
        c.local_uses.push((4, "P1".into(), "WASH".into(), 2));
        c.local_uses.push((5, "P1".into(), "WASH".into(), -1)); // a void gives one back
        assert_eq!(c.uses_left("P1", "WASH"), 9);
        assert_eq!(c.uses_left("P1", "OIL"), 10);
        assert_eq!(c.uses_left("P2", "WASH"), 0);
        // The platform has now counted through seq 4 (uses_left 7): only seq 5 is still local.
        c.replace(9, card(7, 4));
        assert_eq!(c.local_uses.len(), 1);
        assert_eq!(c.uses_left("P1", "WASH"), 8);
        assert_eq!(c.entry_version, 9);
    }

    #[test]
    fn the_reservoir_stays_bounded_and_samples_the_whole_stream() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut pool = Pool::new(8);
        let mut late = 0;
        for i in 0..1000u32 {
            let mut r = [0u8; 32];
            r[..4].copy_from_slice(&i.to_be_bytes());
            if let Some(slot) = pool.offer(&mut rng) {
                pool.put(slot, PoolCard::new(CardRef(r), 1, card(1, 0)));
            }
        }
        assert_eq!(pool.len(), 8);
        for c in pool.iter() {
            if u32::from_be_bytes([
                c.card_ref.0[0],
                c.card_ref.0[1],
                c.card_ref.0[2],
                c.card_ref.0[3],
            ]) >= 500
            {
                late += 1;
            }
            assert!(pool.contains(&c.card_ref));
        }
        // A uniform sample of 1,000 keeps cards from the second half too, not just the first 8.
        assert!(late > 0, "only the first cards were kept");
        let first = pool.get(0).unwrap().card_ref;
        pool.remove(&first);
        assert_eq!(pool.len(), 7);
        assert!(!pool.contains(&first));
        for (slot, c) in pool.iter().enumerate() {
            assert_eq!(pool.index[&c.card_ref], slot);
        }
    }
}
