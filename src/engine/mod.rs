//! The redemption engine: pure decisions, no I/O, no clock (time is passed in as [`Now`]).
//!
//! Inputs are a verified card entry, that card's verified journal history, the installed cache's signed
//! facts, the terminal's trusted state and the configured [`Limits`]; outputs are a [`Menu`], redemption
//! [`Line`]s, or a [`DeclineReason`]. The store (`crate::store`) gathers and verifies the inputs and
//! commits the outputs; everything that decides lives here so that it can be tested exhaustively.
//!
//! Uses left for an entry = the signed `uses_left` − (redeemed − voided quantity in this terminal's
//! journal records after the entry's `usage_through_seq`), never below zero.

pub mod reason;

use std::collections::{BTreeMap, HashMap};

pub use reason::DeclineReason;
use redeemd_contract::deny::{DenyEntry, DenyStatus};
use redeemd_contract::model::{Card, CardStatus, Item, Package};
use redeemd_contract::{JournalRecord, RecordKind};

/// Largest quantity of one line (a cashier typo of 10000 must not go through as "uses left" allows).
pub const MAX_QUANTITY_PER_LINE: u64 = 999;
/// Most lines in one redemption.
pub const MAX_LINES: usize = 16;

/// The time of a request, read by the driver: wall clock and monotonic time since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Unix milliseconds (CLOCK_REALTIME): may be wrong or set back.
    pub wall_ms: i64,
    /// Milliseconds since boot (CLOCK_BOOTTIME): recorded for the platform's forensics.
    pub boot_ms: u64,
}

/// Offline risk limits and policy, from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Units one card may redeem at this terminal between two syncs.
    pub max_offline_uses_per_card: u32,
    /// Redemptions (requests, not lines) this terminal may make between two syncs.
    pub max_offline_redemptions: u32,
    pub identity_max_attempts: u32,
    pub identity_lockout_ms: i64,
    pub void_window_ms: i64,
    /// How far the wall clock may go back (NTP steps, drift) before it is not trusted.
    pub clock_tolerance_ms: i64,
    /// Local time offset of the business day, in minutes east of UTC (China: +480).
    pub utc_offset_minutes: i32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_offline_uses_per_card: 20,
            max_offline_redemptions: 2000,
            identity_max_attempts: 3,
            identity_lockout_ms: 30 * 60_000,
            void_window_ms: 24 * 3_600_000,
            clock_tolerance_ms: 5 * 60_000,
            utc_offset_minutes: 480,
        }
    }
}

/// Signed facts of the installed cache (from its verified manifest).
#[derive(Debug, Clone, Copy)]
pub struct CacheFacts<'a> {
    pub version: u64,
    pub merchant_id: &'a str,
    pub merchant_categories: &'a [String],
    pub issued_at_ms: i64,
    pub expires_at_ms: i64,
}

/// The terminal's trusted state (from its MACed state row).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TerminalFacts {
    /// Latest wall time this terminal has committed a record at, or seen in a manifest.
    pub last_trusted_wall_ms: i64,
    /// Journal records up to this seq have been acknowledged by the platform.
    pub synced_through_seq: u64,
    /// Redemptions (requests) made after `synced_through_seq`.
    pub offline_redemptions: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub limits: &'a Limits,
    pub cache: CacheFacts<'a>,
    pub terminal: TerminalFacts,
}

/// A verified card entry and its verified journal history (this terminal's records of this card, by seq).
#[derive(Debug, Clone, Copy)]
pub struct CardView<'a> {
    pub card: &'a Card,
    pub entry_version: u64,
    pub history: &'a [JournalRecord],
    /// A verified deny entry newer than this card entry ([`deny_overlay`]): it refuses the card with its
    /// status, whatever the entry says. There is no way to express "active" here: it can only refuse.
    pub denied: Option<DenyStatus>,
}

/// The deny status that applies to a card: the latest of its deny entries (ascending deny-list versions)
/// that is not superseded by its cache entry, i.e. whose `entry_version` is above the cache entry's
/// version (`None`: the card is not in the cache, so every entry applies). Rule of `docs/api/README.md`.
pub fn deny_overlay(entries: &[DenyEntry], cache_entry_version: Option<u64>) -> Option<DenyStatus> {
    entries
        .iter()
        .filter(|e| cache_entry_version.is_none_or(|v| e.entry_version > v))
        .max_by_key(|e| e.version)
        .map(|e| e.status)
}

/// Identity-confirmation attempt state of one card at this terminal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdentityState {
    pub failures: u32,
    pub locked_until_ms: i64,
}

/// The result of the keyed identity check, done by the caller (the engine holds no keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityInput {
    NotProvided,
    Matches,
    DoesNotMatch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MenuEntry {
    /// Position of (package, item) in the signed entry: stable for one entry version.
    pub index: u16,
    pub package_id: String,
    pub package_title: String,
    pub service_code: String,
    pub title: String,
    pub uses_left: u32,
    pub valid_until_ms: i64,
    pub identity_required: bool,
    pub price_fen: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Menu {
    pub masked_number: String,
    pub holder_name: Option<String>,
    /// The entry version the indexes refer to; a redemption quoting another version is refused.
    pub entry_version: u64,
    /// Only usable entries, in index order.
    pub entries: Vec<MenuEntry>,
}

/// One approved line of a redemption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub entry_index: u16,
    pub package_id: String,
    pub service_code: String,
    pub title: String,
    pub quantity: u32,
    pub amount_fen: u64,
    pub uses_left_after: u32,
    pub valid_until_ms: i64,
}

/// A redemption decision plus the identity-attempt state to persist (even when declined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedeemVerdict {
    pub result: Result<Vec<Line>, DeclineReason>,
    pub identity_update: Option<IdentityState>,
}

impl RedeemVerdict {
    fn decline(reason: DeclineReason) -> Self {
        Self {
            result: Err(reason),
            identity_update: None,
        }
    }
}

/// Local business day number of a wall time: the one calendar the terminal and the platform share.
pub use redeemd_contract::close::business_day;

/// Checks the wall clock and returns the effective time used for every rule: the latest of the wall clock,
/// the last trusted time and the cache's issued-at, so that setting the clock back cannot revive an
/// expired package, cache or void window.
pub fn effective_now(ctx: &Context<'_>, now: Now) -> Result<i64, DeclineReason> {
    let tol = ctx.limits.clock_tolerance_ms;
    if now.wall_ms < ctx.cache.issued_at_ms.saturating_sub(tol)
        || now.wall_ms < ctx.terminal.last_trusted_wall_ms.saturating_sub(tol)
    {
        return Err(DeclineReason::ClockNotTrusted);
    }
    Ok(now
        .wall_ms
        .max(ctx.terminal.last_trusted_wall_ms)
        .max(ctx.cache.issued_at_ms))
}

/// The checks every card decision starts with: clock, cache expiry, card status, terminal offline limit.
fn card_preconditions(
    ctx: &Context<'_>,
    view: CardView<'_>,
    now: Now,
) -> Result<i64, DeclineReason> {
    let eff = effective_now(ctx, now)?;
    if eff >= ctx.cache.expires_at_ms {
        return Err(DeclineReason::CacheExpired);
    }
    // A newer deny entry overrides the signed status (it can only refuse).
    let status = view
        .denied
        .map_or(view.card.status, DenyStatus::card_status);
    match status {
        CardStatus::Active => {}
        CardStatus::Lost => return Err(DeclineReason::CardLost),
        CardStatus::Frozen => return Err(DeclineReason::CardFrozen),
        CardStatus::Cancelled => return Err(DeclineReason::CardCancelled),
        CardStatus::Reissued => return Err(DeclineReason::CardReissued),
    }
    if ctx.terminal.offline_redemptions >= u64::from(ctx.limits.max_offline_redemptions) {
        return Err(DeclineReason::TerminalOfflineLimitReached);
    }
    Ok(eff)
}

/// Local usage of one card, folded from its journal history.
#[derive(Debug, Default)]
pub struct Usage<'h> {
    /// Net quantity per (package id, service code) after the entry's `usage_through_seq`.
    pub since_snapshot: HashMap<(&'h str, &'h str), i64>,
    /// Net quantity per package id redeemed on the current business day.
    pub today_by_package: HashMap<&'h str, i64>,
    /// Net quantity after the last platform acknowledgement.
    pub offline_units: i64,
}

impl<'h> Usage<'h> {
    pub fn fold(
        card: &Card,
        history: &'h [JournalRecord],
        synced_through_seq: u64,
        today: i64,
        utc_offset_minutes: i32,
    ) -> Self {
        let mut u = Usage::default();
        let by_seq: HashMap<u64, &JournalRecord> =
            if history.iter().any(|r| r.kind == RecordKind::Void) {
                history.iter().map(|r| (r.seq, r)).collect()
            } else {
                HashMap::new()
            };
        for r in history {
            let q = i64::from(r.quantity);
            let signed = match r.kind {
                RecordKind::Redeem => q,
                RecordKind::Void => -q,
                RecordKind::BatchClose => continue,
            };
            if r.seq > card.usage_through_seq {
                *u.since_snapshot
                    .entry((&r.package_id, &r.service_code))
                    .or_default() += signed;
            }
            if r.seq > synced_through_seq {
                u.offline_units += signed;
            }
            // A void counts against the day of the redemption it undoes.
            let day_of = match r.kind {
                RecordKind::Void => by_seq.get(&r.original_seq).map(|o| o.wall_ms),
                _ => Some(r.wall_ms),
            };
            if day_of.is_some_and(|w| business_day(w, utc_offset_minutes) == today) {
                *u.today_by_package.entry(&r.package_id).or_default() += signed;
            }
        }
        u
    }

    pub fn uses_left(&self, package: &Package, item: &Item) -> u32 {
        let used = self
            .since_snapshot
            .get(&(package.id.as_str(), item.service_code.as_str()))
            .copied()
            .unwrap_or(0);
        u32::try_from((i64::from(item.uses_left) - used).max(0)).unwrap_or(u32::MAX)
    }

    fn used_today(&self, package: &Package) -> i64 {
        self.today_by_package
            .get(package.id.as_str())
            .copied()
            .unwrap_or(0)
    }
}

/// The card's usage for a decision at effective time `eff`. The daily-cap counts are those of the
/// busier of two business days: the day of `eff` (the rules' clock) and the day of the wall clock,
/// which stamps the records this decision writes and so is the day the fold books them on. They
/// differ only while the wall clock is behind the last trusted time (within the tolerance) across
/// midnight; counting one day only would let every record written then escape the cap.
fn fold_usage<'h>(ctx: &Context<'_>, view: CardView<'h>, eff: i64, now: Now) -> Usage<'h> {
    let offset = ctx.limits.utc_offset_minutes;
    let fold = |day| {
        Usage::fold(
            view.card,
            view.history,
            ctx.terminal.synced_through_seq,
            day,
            offset,
        )
    };
    let today = business_day(eff, offset);
    let mut usage = fold(today);
    let booked = business_day(now.wall_ms, offset);
    if booked != today {
        for (package, used) in fold(booked).today_by_package {
            let n = usage.today_by_package.entry(package).or_default();
            *n = (*n).max(used);
        }
    }
    usage
}

/// Why an entry cannot be used at all right now (independent of quantity), if it cannot.
fn entry_blocked(
    ctx: &Context<'_>,
    package: &Package,
    usage: &Usage<'_>,
    eff: i64,
) -> Option<DeclineReason> {
    if eff < package.valid_from_ms {
        Some(DeclineReason::NotYetValid)
    } else if eff >= package.valid_until_ms {
        Some(DeclineReason::Expired)
    } else if !package
        .scope
        .allows(ctx.cache.merchant_id, ctx.cache.merchant_categories)
    {
        Some(DeclineReason::NotValidAtMerchant)
    } else if package
        .daily_cap
        .is_some_and(|cap| usage.used_today(package) >= i64::from(cap))
    {
        Some(DeclineReason::DailyCapReached)
    } else {
        None
    }
}

/// When nothing is usable, the reason closest to "usable" is the most useful one for the cashier.
fn closeness(reason: DeclineReason) -> u8 {
    match reason {
        DeclineReason::DailyCapReached => 4,
        DeclineReason::InsufficientUses => 3,
        DeclineReason::NotValidAtMerchant => 2,
        DeclineReason::NotYetValid => 1,
        _ => 0,
    }
}

/// Whether any redemption on `card` can ask for the holder's identity (else its attempt counter
/// plays no part in a decision and need not be read).
pub fn identity_ever_needed(card: &Card) -> bool {
    card.packages.iter().any(|p| identity_needed(card, p))
}

fn identity_needed(card: &Card, package: &Package) -> bool {
    package.identity_required
        && card
            .holder
            .as_ref()
            .is_some_and(|h| h.identity_verifier.is_some())
}

/// The menu shown when a card is presented: every usable entry with its uses left, or why there is none.
pub fn menu(ctx: &Context<'_>, view: CardView<'_>, now: Now) -> Result<Menu, DeclineReason> {
    let card = view.card;
    let eff = card_preconditions(ctx, view, now)?;
    let usage = fold_usage(ctx, view, eff, now);
    if usage.offline_units >= i64::from(ctx.limits.max_offline_uses_per_card) {
        return Err(DeclineReason::CardOfflineLimitReached);
    }
    let mut entries = Vec::new();
    let mut best = DeclineReason::InsufficientUses;
    let mut best_rank = 0;
    let mut any = false;
    for (i, p, it) in card.entries() {
        let Ok(index) = u16::try_from(i) else { break };
        let left = usage.uses_left(p, it);
        let blocked = entry_blocked(ctx, p, &usage, eff)
            .or((left == 0).then_some(DeclineReason::InsufficientUses));
        match blocked {
            None => entries.push(MenuEntry {
                index,
                package_id: p.id.clone(),
                package_title: p.title.clone(),
                service_code: it.service_code.clone(),
                title: it.title.clone(),
                uses_left: left,
                valid_until_ms: p.valid_until_ms,
                identity_required: identity_needed(card, p),
                price_fen: it.price_fen,
            }),
            Some(r) if !any || closeness(r) > best_rank => {
                any = true;
                best = r;
                best_rank = closeness(r);
            }
            Some(_) => {}
        }
    }
    if entries.is_empty() {
        return Err(best);
    }
    Ok(Menu {
        masked_number: card.masked_number.clone(),
        holder_name: card.holder.as_ref().map(|h| h.masked_name.clone()),
        entry_version: view.entry_version,
        entries,
    })
}

/// Decides a redemption of `items` = (entry index, quantity), all-or-nothing.
pub fn decide_redeem(
    ctx: &Context<'_>,
    view: CardView<'_>,
    items: &[(u16, u64)],
    identity_state: IdentityState,
    identity: IdentityInput,
    now: Now,
) -> RedeemVerdict {
    let card = view.card;
    let eff = match card_preconditions(ctx, view, now) {
        Ok(eff) => eff,
        Err(r) => return RedeemVerdict::decline(r),
    };
    if items.is_empty() || items.len() > MAX_LINES {
        return RedeemVerdict::decline(DeclineReason::BadQuantity);
    }
    // Structural checks first: every index exists, every quantity is sane; duplicates are summed.
    let flat: Vec<(&Package, &Item)> = card.entries().map(|(_, p, i)| (p, i)).collect();
    let mut wanted: BTreeMap<u16, u64> = BTreeMap::new();
    for &(index, qty) in items {
        if qty == 0 || qty > MAX_QUANTITY_PER_LINE {
            return RedeemVerdict::decline(DeclineReason::BadQuantity);
        }
        if usize::from(index) >= flat.len() {
            return RedeemVerdict::decline(DeclineReason::UnknownEntry);
        }
        let total = wanted.entry(index).or_default();
        *total += qty;
        if *total > MAX_QUANTITY_PER_LINE {
            return RedeemVerdict::decline(DeclineReason::BadQuantity);
        }
    }
    let usage = fold_usage(ctx, view, eff, now);
    let mut per_package: HashMap<&str, i64> = HashMap::new();
    let mut total_units: i64 = 0;
    let mut lines = Vec::with_capacity(wanted.len());
    let mut needs_identity = false;
    for (&index, &qty) in &wanted {
        let (p, it) = flat[usize::from(index)];
        if let Some(r) = entry_blocked(ctx, p, &usage, eff) {
            return RedeemVerdict::decline(r);
        }
        let left = usage.uses_left(p, it);
        // qty ≤ MAX_QUANTITY_PER_LINE, so these conversions and products cannot overflow.
        let qty32 = u32::try_from(qty).unwrap_or(u32::MAX);
        if qty32 > left {
            return RedeemVerdict::decline(DeclineReason::InsufficientUses);
        }
        // The journal keeps amounts in SQLite's signed 64-bit integers: a line that does not fit
        // would be committed as a row that reads back as tampered (and never reaches the platform).
        let Some(amount_fen) = it
            .price_fen
            .checked_mul(qty)
            .filter(|a| i64::try_from(*a).is_ok())
        else {
            return RedeemVerdict::decline(DeclineReason::BadQuantity);
        };
        *per_package.entry(&p.id).or_default() += i64::from(qty32);
        total_units += i64::from(qty32);
        needs_identity |= identity_needed(card, p);
        lines.push(Line {
            entry_index: index,
            package_id: p.id.clone(),
            service_code: it.service_code.clone(),
            title: it.title.clone(),
            quantity: qty32,
            amount_fen,
            uses_left_after: left - qty32,
            valid_until_ms: p.valid_until_ms,
        });
    }
    for p in &card.packages {
        if let (Some(cap), Some(req)) = (p.daily_cap, per_package.get(p.id.as_str()))
            && usage.used_today(p) + req > i64::from(cap)
        {
            return RedeemVerdict::decline(DeclineReason::DailyCapReached);
        }
    }
    if usage.offline_units + total_units > i64::from(ctx.limits.max_offline_uses_per_card) {
        return RedeemVerdict::decline(DeclineReason::CardOfflineLimitReached);
    }
    if !needs_identity {
        return RedeemVerdict {
            result: Ok(lines),
            identity_update: None,
        };
    }
    // Identity last, so that an attempt is only spent on a request that would otherwise be approved.
    let mut state = identity_state;
    if state.locked_until_ms > eff {
        return RedeemVerdict::decline(DeclineReason::IdentityLockedOut);
    }
    if state.failures >= ctx.limits.identity_max_attempts {
        state = IdentityState::default(); // the lockout has passed
    }
    match identity {
        IdentityInput::NotProvided => RedeemVerdict::decline(DeclineReason::IdentityRequired),
        IdentityInput::Matches => RedeemVerdict {
            result: Ok(lines),
            identity_update: (identity_state != IdentityState::default())
                .then_some(IdentityState::default()),
        },
        IdentityInput::DoesNotMatch => {
            state.failures += 1;
            let reason = if state.failures >= ctx.limits.identity_max_attempts {
                state.locked_until_ms = eff.saturating_add(ctx.limits.identity_lockout_ms);
                DeclineReason::IdentityLockedOut
            } else {
                DeclineReason::IdentityWrong
            };
            RedeemVerdict {
                result: Err(reason),
                identity_update: Some(state),
            }
        }
    }
}

/// Decides a void of the redemption whose lines are `originals` (all lines of one group, verified).
pub fn decide_void(
    limits: &Limits,
    terminal: TerminalFacts,
    originals: &[JournalRecord],
    already_voided: bool,
    now: Now,
) -> Result<(), DeclineReason> {
    if now.wall_ms
        < terminal
            .last_trusted_wall_ms
            .saturating_sub(limits.clock_tolerance_ms)
    {
        return Err(DeclineReason::ClockNotTrusted);
    }
    let eff = now.wall_ms.max(terminal.last_trusted_wall_ms);
    let Some(first) = originals.first() else {
        return Err(DeclineReason::UnknownAuthCode);
    };
    if originals.iter().any(|r| r.kind != RecordKind::Redeem) {
        return Err(DeclineReason::UnknownAuthCode);
    }
    if already_voided {
        return Err(DeclineReason::AlreadyVoided);
    }
    if eff.saturating_sub(first.wall_ms) > limits.void_window_ms {
        return Err(DeclineReason::VoidWindowPassed);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
