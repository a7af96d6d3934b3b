//! Installing a signed snapshot or delta without blocking the counter: stream, verify every entry,
//! stage it in short chunks, swap in one short transaction.
//!
//! The bundle is read frame by frame (constant memory for a million cards) by a [`BundleInstall`],
//! which verifies each entry's MAC *outside* the store and writes verified entries into a staging table
//! in chunks of [`CHUNK_ENTRIES`], each chunk one short `BEGIN IMMEDIATE … COMMIT` taken through a
//! [`StoreAccess`]. Between chunks the store (its lock in the daemon, and SQLite's write lock) is free,
//! so redemptions interleave with a million-card install instead of waiting ~10 s behind it.
//!
//! Only after the manifest verified (MAC, count, digest, terminal, merchant, kind, version) does one
//! short transaction swap the staged entries in, together with the manifest row and the MACed terminal
//! state:
//!
//! * **full snapshot**: `DROP TABLE cache_entry` and `ALTER TABLE cache_staging RENAME TO cache_entry`
//!   — the cost of freeing the old table's pages, not of copying a million rows. The terminal's own
//!   usage columns live in the same rows (one probe per menu, `schema::CACHE_ENTRY_DDL`), so before the
//!   swap they are carried into the staging table in short chunks too ([`CARRY_SCAN_ROWS`] rows of the
//!   old table visited per store call, cards the new snapshot dropped kept as usage-only rows), and the
//!   swap transaction carries again only the cards whose usage changed since the carrying began
//!   (those with journal rows above the head seq it began at);
//! * **delta**: the staged upserts and removals are applied to `cache_entry` in that transaction. Its
//!   time grows with the delta's size (a 1,000-card delta into a million-card cache: `BENCHMARKS.md`,
//!   "Sync"); the platform sends a full snapshot when it has no delta from the installed version.
//!
//! Any failure — bad magic, a truncated stream, a bad entry MAC, unsorted or duplicate card references,
//! a body that does not decode, a count or digest mismatch, another terminal or merchant, a rollback, a
//! delta on the wrong base, data after the manifest — drops the staging table: **the old cache is
//! untouched** and the error names the bad entry. The rollback and delta-base checks are made again
//! inside the swap transaction against the state as committed then, so an install that raced another
//! connection's cannot go backwards. A staging table left by a crash is dropped by the next install.

use std::io::Read;

use redeemd_contract::snapshot::{
    BundleError, BundleKind, BundleVerifier, Entry, EntryOp, MAGIC, MAX_FRAME, Manifest, Preamble,
    Verified, check_magic,
};
use rusqlite::types::Value;
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::schema::{CACHE_ENTRY_DDL, HAS_USAGE, UPSERT_USAGE_STAGING};
use super::{Store, StoreError};
use crate::engine::Now;

/// Entries written per store call: about 250 KB of rows, a few milliseconds under the lock.
pub const CHUNK_ENTRIES: usize = 1000;
/// Staged bytes per store call at most (entries with large bodies).
const CHUNK_BYTES: usize = 1 << 20;
/// Rows of the old cache table visited per store call when carrying usage into a full install's
/// staging table: bounded by rows visited, not rows carried, so that a cache where few cards have
/// usage does not scan a million rows under the lock in one call.
pub const CARRY_SCAN_ROWS: usize = 4096;

const STAGING_FULL: &str = "cache_staging";
/// The swap of a full install: the staged table becomes the cache.
const SWAP_FULL: &str = "DROP TABLE cache_entry; ALTER TABLE cache_staging RENAME TO cache_entry;";

/// The DDL of a full install's staging table followed by its swap: what a full install does to the
/// schema (`check::schema_findings` accepts the cache table in the form it leaves).
pub(super) fn full_install_swap_ddl() -> String {
    format!(
        "{};\n{SWAP_FULL}",
        CACHE_ENTRY_DDL.replacen("cache_entry", STAGING_FULL, 1)
    )
}
/// Columns `carry_selected` reads from the old cache table (followed by `HAS_USAGE`).
const CARRY_COLUMNS: &str = concat!("card_ref, ", super::schema::usage_columns!());
const STAGING_DELTA: &str = "cache_delta_staging";

/// What an install changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    pub manifest: Manifest,
    pub upserts: u64,
    pub removals: u64,
}

/// How a long operation reaches the store: one short call per step, the store free for others in
/// between. The daemon implements it with its store lock (`store::owner::StoreHandle`); a tool
/// that owns the store uses [`Exclusive`].
pub trait StoreAccess {
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut Store, Now) -> Result<T, StoreError>,
    ) -> Result<T, StoreError>;
}

/// [`StoreAccess`] to a store owned by the caller, at a fixed time.
pub struct Exclusive<'a> {
    pub store: &'a mut Store,
    pub now: Now,
}

impl StoreAccess for Exclusive<'_> {
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut Store, Now) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        f(self.store, self.now)
    }
}

/// One install in progress: feed it the bundle's bytes as they arrive, then [`BundleInstall::finish`].
/// On any error it has already dropped its staging table; a caller that gives up for another reason
/// (a network timeout) calls [`BundleInstall::abort`].
pub struct BundleInstall {
    verifier: BundleVerifier,
    /// Unparsed input (at most one partial frame plus what the last feed brought).
    input: Vec<u8>,
    magic_checked: bool,
    frames: u64,
    preamble: Option<Preamble>,
    staged: bool,
    pending: Vec<Entry>,
    pending_bytes: usize,
    upserts: u64,
    removals: u64,
    manifest: Option<Manifest>,
    chunks_written: u64,
    /// The local journal's head when the install began (it only grows). An entry that counts this
    /// terminal's records beyond it was signed from another journal than this one: after a restore
    /// from an older backup, the records this terminal writes at those seqs would be taken as
    /// already counted, and a card could be redeemed beyond its uses.
    journal_head: u64,
}

impl BundleInstall {
    /// A new install for `store`'s terminal (the verifier needs only its cache key).
    pub fn new(store: &Store) -> BundleInstall {
        BundleInstall {
            verifier: BundleVerifier::new(&store.keys.cache, &store.cfg.terminal_id),
            input: Vec::new(),
            magic_checked: false,
            frames: 0,
            preamble: None,
            staged: false,
            pending: Vec::new(),
            pending_bytes: 0,
            upserts: 0,
            removals: 0,
            manifest: None,
            chunks_written: 0,
            journal_head: store.journal_info().head_seq,
        }
    }

    /// Chunks written to the staging table so far (for tests and benches).
    pub fn chunks_written(&self) -> u64 {
        self.chunks_written
    }

    /// Feeds the next bytes of the bundle. Verifies every complete frame and writes full chunks.
    pub fn feed<A: StoreAccess>(&mut self, access: &mut A, bytes: &[u8]) -> Result<(), StoreError> {
        match self.feed_inner(access, bytes) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(access, e)),
        }
    }

    /// The input ended: checks that the manifest came last, writes the rest and swaps the cache in.
    pub fn finish<A: StoreAccess>(mut self, access: &mut A) -> Result<InstallReport, StoreError> {
        match self.finish_inner(access) {
            Ok(r) => Ok(r),
            Err(e) => Err(self.fail(access, e)),
        }
    }

    /// Gives up: drops the staging table, the old cache stays.
    pub fn abort<A: StoreAccess>(mut self, access: &mut A) {
        self.drop_staging(access);
    }

    fn fail<A: StoreAccess>(&mut self, access: &mut A, e: StoreError) -> StoreError {
        self.drop_staging(access);
        e
    }

    fn drop_staging<A: StoreAccess>(&mut self, access: &mut A) {
        if self.staged {
            self.staged = false;
            if let Err(e) = access.with(|s, _| s.drop_staging()) {
                // The next install drops it; nothing of it is ever read.
                tracing::warn!(error = %e, "cannot drop the cache staging table");
            }
        }
        self.pending.clear();
    }

    fn feed_inner<A: StoreAccess>(
        &mut self,
        access: &mut A,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        self.input.extend_from_slice(bytes);
        let mut pos = 0usize;
        if !self.magic_checked {
            if self.input.len() < MAGIC.len() {
                return Ok(());
            }
            check_magic(&self.input[..MAGIC.len()])?;
            self.magic_checked = true;
            pos = MAGIC.len();
        }
        loop {
            let rest = &self.input[pos..];
            if rest.is_empty() {
                break;
            }
            if self.manifest.is_some() {
                return Err(BundleError::Frame {
                    index: self.frames,
                    reason: "data after the manifest".into(),
                }
                .into());
            }
            let Some(len) = rest.get(..4) else { break };
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            if len > MAX_FRAME {
                return Err(BundleError::Frame {
                    index: self.frames,
                    reason: format!("frame of {len} bytes exceeds {MAX_FRAME}"),
                }
                .into());
            }
            let Some(frame) = rest.get(4..4 + len) else {
                break;
            };
            self.frames += 1;
            let verified = self.verifier.frame(frame)?;
            pos += 4 + len;
            match verified {
                Verified::Preamble(p) => {
                    access.with(|s, _| s.begin_staging(&p))?;
                    self.staged = true;
                    self.preamble = Some(p);
                }
                Verified::Entry(e) => {
                    if e.usage_through_seq > self.journal_head {
                        return Err(StoreError::AheadOfJournal {
                            card: e.card_ref.to_hex(),
                            through: e.usage_through_seq,
                            head: self.journal_head,
                        });
                    }
                    self.pending_bytes += e.body.len() + 80;
                    self.pending.push(e);
                    if self.pending.len() >= CHUNK_ENTRIES || self.pending_bytes >= CHUNK_BYTES {
                        self.write_pending(access)?;
                    }
                }
                Verified::Manifest(m) => self.manifest = Some(m),
            }
        }
        self.input.drain(..pos);
        Ok(())
    }

    fn write_pending<A: StoreAccess>(&mut self, access: &mut A) -> Result<(), StoreError> {
        let Some(p) = &self.preamble else {
            return Ok(());
        };
        if self.pending.is_empty() {
            return Ok(());
        }
        let (kind, version) = (p.kind, p.version);
        let pending = &self.pending;
        access.with(|s, _| s.write_staging(kind, version, pending))?;
        for e in &self.pending {
            match e.op {
                EntryOp::Upsert => self.upserts += 1,
                EntryOp::Remove => self.removals += 1,
            }
        }
        self.pending.clear();
        self.pending_bytes = 0;
        self.chunks_written += 1;
        Ok(())
    }

    fn finish_inner<A: StoreAccess>(
        &mut self,
        access: &mut A,
    ) -> Result<InstallReport, StoreError> {
        let Some(manifest) = self.manifest.clone() else {
            if !self.magic_checked {
                // Fewer bytes than the magic: name it as the old reader did.
                return Err(StoreError::BundleRead(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "bundle shorter than its magic",
                )));
            }
            return Err(BundleError::Frame {
                index: self.frames,
                reason: "bundle ends before its manifest (truncated)".into(),
            }
            .into());
        };
        if !self.input.is_empty() {
            return Err(BundleError::Frame {
                index: self.frames,
                reason: "data after the manifest".into(),
            }
            .into());
        }
        self.write_pending(access)?;
        let carried_from = match manifest.kind {
            BundleKind::Full => Some(self.carry_usage(access)?),
            BundleKind::Delta => None,
        };
        access.with(|s, now| s.swap_staging(&manifest, now, carried_from))?;
        self.staged = false;
        Ok(InstallReport {
            manifest,
            upserts: self.upserts,
            removals: self.removals,
        })
    }
}

impl BundleInstall {
    /// Carries the old cache's usage columns into the staging table, a bounded number of rows per
    /// store call. Returns the journal seq it began at, for the swap to carry what changed since.
    fn carry_usage<A: StoreAccess>(&mut self, access: &mut A) -> Result<i64, StoreError> {
        let from_seq = access.with(|s, _| {
            Ok(s.conn
                .query_row("SELECT coalesce(max(seq), 0) FROM journal", [], |r| {
                    r.get(0)
                })?)
        })?;
        // The last card reference of the old table visited, as stored (an edited one of another
        // type sorts, and is carried, like any other).
        let mut after: Option<Value> = None;
        loop {
            let (visited, last) = access.with(|s, _| s.carry_usage_chunk(after.as_ref()))?;
            self.chunks_written += 1;
            if visited < CARRY_SCAN_ROWS {
                return Ok(from_seq);
            }
            after = last;
        }
    }
}

/// Upserts into the staging table the usage columns of the rows `select` yields (card_ref, the five
/// usage columns, whether the row has usage), copied as stored: an edited value stays edited and is
/// caught by the lookup's MAC check in the new table as it would have been in the old. Returns the
/// rows visited and the last card reference.
fn carry_selected(
    tx: &rusqlite::Connection,
    select: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
) -> rusqlite::Result<(usize, Option<Value>)> {
    let mut upsert = tx.prepare_cached(UPSERT_USAGE_STAGING)?;
    let mut rows = select.query(params)?;
    let (mut visited, mut last) = (0, None);
    while let Some(r) = rows.next()? {
        visited += 1;
        let card: Value = r.get(0)?;
        if r.get::<_, bool>(6)? {
            upsert.execute(rusqlite::params![
                card,
                r.get::<_, Value>(1)?,
                r.get::<_, Value>(2)?,
                r.get::<_, Value>(3)?,
                r.get::<_, Value>(4)?,
                r.get::<_, Value>(5)?,
            ])?;
        }
        last = Some(card);
    }
    Ok((visited, last))
}

/// Installs the bundle read from `input` through `access`, in chunks.
pub fn install_from_reader<A: StoreAccess>(
    access: &mut A,
    mut input: impl Read,
) -> Result<InstallReport, StoreError> {
    let mut install = access.with(|s, _| Ok(BundleInstall::new(s)))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                install.abort(access);
                return Err(StoreError::BundleRead(e));
            }
        };
        install.feed(access, &buf[..n])?;
    }
    install.finish(access)
}

/// The installed version that a new bundle must exceed: the version in the MACed terminal state, and
/// also the manifest row's version column, so that neither editing that row nor the state can let an
/// old snapshot in. Read from `conn` (inside the caller's transaction when there is one).
fn rollback_floor(
    conn: &rusqlite::Connection,
    keys: &redeemd_contract::TerminalKeys,
) -> Result<u64, StoreError> {
    let state = super::read_terminal_row(conn, keys)?;
    let column: Option<i64> = conn
        .query_row("SELECT version FROM cache_manifest WHERE id = 1", [], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(column
        .map_or(0, |v| u64::try_from(v).unwrap_or(u64::MAX))
        .max(state.cache_version))
}

impl Store {
    /// Verifies and installs the bundle read from `input` (the caller owns the store meanwhile; the
    /// daemon uses [`install_from_reader`] or [`BundleInstall`] with its lock instead).
    pub fn install_bundle(
        &mut self,
        input: impl Read,
        now: Now,
    ) -> Result<InstallReport, StoreError> {
        install_from_reader(&mut Exclusive { store: self, now }, input)
    }

    /// Checks a preamble against the installed cache and creates an empty staging table.
    fn begin_staging(&mut self, p: &Preamble) -> Result<(), StoreError> {
        if p.merchant_id != self.cfg.merchant_id {
            return Err(StoreError::WrongMerchant {
                expected: self.cfg.merchant_id.clone(),
                found: p.merchant_id.clone(),
            });
        }
        // Versions live in SQLite's signed integers (manifest row, terminal state, entries): a
        // larger one would be committed as rows that no longer verify, and the store not open.
        if i64::try_from(p.version).is_err() {
            return Err(StoreError::VersionTooLarge { offered: p.version });
        }
        let floor = rollback_floor(&self.conn, &self.keys)?;
        if floor > 0 && p.version <= floor {
            return Err(StoreError::Rollback {
                offered: p.version,
                installed: floor,
            });
        }
        if p.kind == BundleKind::Delta && self.cache.is_none() {
            return Err(StoreError::DeltaBase {
                base: 0,
                installed: floor,
            });
        }
        let ddl = match p.kind {
            BundleKind::Full => CACHE_ENTRY_DDL.replacen("cache_entry", STAGING_FULL, 1),
            BundleKind::Delta => format!(
                "CREATE TABLE {STAGING_DELTA} (card_ref BLOB PRIMARY KEY, op INTEGER NOT NULL, \
                 version INTEGER NOT NULL, body BLOB NOT NULL, mac BLOB NOT NULL) WITHOUT ROWID"
            ),
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(&format!(
            "DROP TABLE IF EXISTS {STAGING_FULL}; DROP TABLE IF EXISTS {STAGING_DELTA}; {ddl};"
        ))?;
        tx.commit()?;
        Ok(())
    }

    /// Writes verified entries into the staging table, in one short transaction.
    fn write_staging(
        &mut self,
        kind: BundleKind,
        version: u64,
        entries: &[Entry],
    ) -> Result<(), StoreError> {
        let version = i64::try_from(version).unwrap_or(i64::MAX);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt = match kind {
                BundleKind::Full => tx.prepare_cached(
                    "INSERT INTO cache_staging (card_ref, version, body, mac) VALUES (?1, ?2, ?3, ?4)",
                )?,
                BundleKind::Delta => tx.prepare_cached(
                    "INSERT INTO cache_delta_staging (card_ref, op, version, body, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?,
            };
            for e in entries {
                match kind {
                    BundleKind::Full => {
                        stmt.execute(params![&e.card_ref.0[..], version, &e.body, &e.mac[..]])?
                    }
                    BundleKind::Delta => stmt.execute(params![
                        &e.card_ref.0[..],
                        e.op as u8,
                        version,
                        &e.body,
                        &e.mac[..]
                    ])?,
                };
            }
        }
        tx.commit()?;
        self.checkpoint_after_chunk()
    }

    /// Copies a staged chunk's pages into the database file while we hold the store anyway: SQLite
    /// would otherwise checkpoint the whole WAL (16 MiB) inside some chunk's commit, the longest wait a
    /// redemption would see during an install. Measured at a million cards (BENCHMARKS.md, "Sync"):
    /// the worst hold is 27–58 ms this way, 46–124 ms checkpointing every 8 chunks, 138–211 ms never.
    fn checkpoint_after_chunk(&self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Drops the staging tables (a failed or abandoned install).
    fn drop_staging(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch(&format!(
            "DROP TABLE IF EXISTS {STAGING_FULL}; DROP TABLE IF EXISTS {STAGING_DELTA};"
        ))?;
        Ok(())
    }

    /// Carries the usage of up to [`CARRY_SCAN_ROWS`] rows of the installed cache after `after` into
    /// the staging table, in one short transaction. Returns the rows visited and the last card ref.
    fn carry_usage_chunk(
        &mut self,
        after: Option<&Value>,
    ) -> Result<(usize, Option<Value>), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let limit = CARRY_SCAN_ROWS as i64;
        let carried = match after {
            None => {
                let mut first = tx.prepare_cached(&format!(
                    "SELECT {CARRY_COLUMNS}, {HAS_USAGE} FROM cache_entry ORDER BY card_ref LIMIT ?1"
                ))?;
                carry_selected(&tx, &mut first, [limit])?
            }
            Some(after) => {
                let mut next = tx.prepare_cached(&format!(
                    "SELECT {CARRY_COLUMNS}, {HAS_USAGE} FROM cache_entry WHERE card_ref > ?1 ORDER BY card_ref LIMIT ?2"
                ))?;
                carry_selected(&tx, &mut next, params![after, limit])?
            }
        };
        tx.commit()?;
        self.checkpoint_after_chunk()?;
        Ok(carried)
    }

    /// The one short transaction that makes a verified bundle the installed cache.
    ///
    /// `carried_from`: for a full snapshot, the journal seq at which carrying usage into the staging
    /// table began; the usage of cards with journal rows above it is carried again here, under the
    /// same lock as the swap, so that no redemption made during the install is lost from its card.
    fn swap_staging(
        &mut self,
        manifest: &Manifest,
        now: Now,
        carried_from: Option<i64>,
    ) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Again, against the state as committed now.
        let mut state = super::read_terminal_row(&tx, &self.keys)?;
        let floor = rollback_floor(&tx, &self.keys)?;
        if floor > 0 && manifest.version <= floor {
            return Err(StoreError::Rollback {
                offered: manifest.version,
                installed: floor,
            });
        }
        match manifest.kind {
            BundleKind::Full => {
                // Without a chunked carry before, everything is carried here (from seq 0).
                let from_seq = carried_from.unwrap_or(0);
                let mut changed = tx.prepare(&format!(
                    "SELECT {CARRY_COLUMNS}, {HAS_USAGE} FROM cache_entry WHERE card_ref IN \
                     (SELECT card_ref FROM journal WHERE seq > ?1)"
                ))?;
                carry_selected(&tx, &mut changed, [from_seq])?;
                drop(changed);
                tx.execute_batch(SWAP_FULL)?
            }
            BundleKind::Delta => {
                let installed =
                    super::read_manifest(&tx, &self.keys, &state)?.map(|(m, _)| m.version);
                if Some(manifest.prev_version) != installed {
                    return Err(StoreError::DeltaBase {
                        base: manifest.prev_version,
                        installed: installed.unwrap_or(0),
                    });
                }
                // Upserts replace the entry columns and keep the usage columns; a removed card
                // keeps its row, entry columns NULL, if it has usage here.
                tx.execute_batch(&format!(
                    "INSERT INTO cache_entry (card_ref, version, body, mac) \
                         SELECT card_ref, version, body, mac FROM {STAGING_DELTA} WHERE op = 1 \
                         ON CONFLICT (card_ref) DO UPDATE SET version = excluded.version, \
                         body = excluded.body, mac = excluded.mac; \
                     UPDATE cache_entry SET version = NULL, body = NULL, mac = NULL WHERE card_ref IN \
                         (SELECT card_ref FROM {STAGING_DELTA} WHERE op = 2) AND {HAS_USAGE}; \
                     DELETE FROM cache_entry WHERE card_ref IN \
                         (SELECT card_ref FROM {STAGING_DELTA} WHERE op = 2) AND NOT {HAS_USAGE}; \
                     DROP TABLE {STAGING_DELTA};"
                ))?;
            }
        }
        state.cache_version = manifest.version;
        state.last_trusted_wall_ms = state
            .last_trusted_wall_ms
            .max(now.wall_ms.min(manifest.issued_at_ms));
        super::write_terminal_row(&tx, &state, &self.keys)?;
        let (version, signed) = (
            manifest.version as i64,
            manifest.signed_bytes(&self.keys.cache),
        );
        let mac = super::rows::manifest_row_mac(&self.keys.journal, version, &signed, now.wall_ms);
        tx.execute(
            "INSERT OR REPLACE INTO cache_manifest (id, version, signed, installed_wall_ms, mac) VALUES (1, ?1, ?2, ?3, ?4)",
            params![version, signed, now.wall_ms, &mac[..]],
        )?;
        tx.commit()?;
        self.commits_since_checkpoint = self.commits_since_checkpoint.saturating_add(1);
        self.reload().map_err(StoreError::from)?;
        Ok(())
    }
}
