//! Schema and migrations, versioned with `PRAGMA user_version`.
//!
//! Each migration runs in its own `BEGIN IMMEDIATE` transaction together with its `user_version` bump.
//! Around each one the journal is fingerprinted (row count and a hash over every `(seq, prev_mac, mac)`);
//! a migration that would drop or rewrite a single journal row is rolled back and refused — the guard a
//! payment SDK lacked when a migration deleted its unforwarded payments.

use rusqlite::{Connection, TransactionBehavior};
use sha2::{Digest, Sha256};

use super::StoreError;

/// One schema step: applied when `user_version` is below `version`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub sql: &'static str,
}

/// The card table: the platform's signed cache entry and this terminal's usage of the card, in one row
/// (schema 5), so that a menu is one B-tree probe. Also the shape of a full install's staging table.
///
/// * entry columns (`version`, `body`, `mac`): all set, or all NULL for a card the installed cache no
///   longer holds but whose usage this terminal keeps (a void may still name it; it may come back);
/// * usage columns (`usage_*`): all NULL until the card's first journal record here, then the MACed
///   anchor and history copy (`rows::UsageRow`), rewritten by every redemption or void of the card.
pub(crate) const CACHE_ENTRY_DDL: &str = "CREATE TABLE cache_entry (
    card_ref        BLOB PRIMARY KEY,   -- HMAC(card-token key, card number): never the number
    version         INTEGER,            -- bundle version that signed this entry
    body            BLOB,               -- canonical card encoding, as signed
    mac             BLOB,               -- entry MAC (docs/entitlement-format.md), checked on every lookup
    usage_rows      INTEGER,            -- journal rows of this card
    usage_last_seq  INTEGER,            -- the latest of them
    usage_net_units INTEGER,            -- redeemed minus voided quantity, all time
    usage_history   BLOB,               -- copies of the card's journal records
    usage_mac       BLOB                -- HMAC(journal key) over the usage columns, history by SHA-256
) WITHOUT ROWID";

/// SQL: the five usage columns of a cache-entry row, in the order the store reads them (anchor,
/// history copy, MAC). A macro so that the statements using it are built at compile time.
macro_rules! usage_columns {
    () => {
        "usage_rows, usage_last_seq, usage_net_units, usage_history, usage_mac"
    };
}
pub(crate) use usage_columns;

/// SQL: the cache-entry row holds usage of this terminal (any usage column set; all or none unless
/// edited, which the usage checks name).
pub(crate) const HAS_USAGE: &str = concat!("coalesce(", usage_columns!(), ") IS NOT NULL");

/// SQL: upsert of one card's usage columns (`?1` card, `?2`…`?6` the columns) into a table of the
/// cache-entry shape, leaving its entry columns alone.
macro_rules! upsert_usage_into {
    ($table:literal) => {
        concat!(
            "INSERT INTO ",
            $table,
            " (card_ref, ",
            usage_columns!(),
            ") ",
            "VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (card_ref) DO UPDATE SET ",
            "usage_rows = excluded.usage_rows, usage_last_seq = excluded.usage_last_seq, ",
            "usage_net_units = excluded.usage_net_units, usage_history = excluded.usage_history, ",
            "usage_mac = excluded.usage_mac"
        )
    };
}
/// Into the installed cache (a redemption or void extending the card's usage).
pub(crate) const UPSERT_USAGE: &str = upsert_usage_into!("cache_entry");
/// Into a full install's staging table (`install::STAGING_FULL`), carrying usage over.
pub(crate) const UPSERT_USAGE_STAGING: &str = upsert_usage_into!("cache_staging");

const V1: &str = "
CREATE TABLE terminal_state (
    id                   INTEGER PRIMARY KEY CHECK (id = 1),
    terminal_id          TEXT NOT NULL,
    merchant_id          TEXT NOT NULL,
    head_seq             INTEGER NOT NULL,   -- last journal seq (0: empty)
    head_mac             BLOB NOT NULL,      -- its MAC (genesis MAC when empty)
    last_trusted_wall_ms INTEGER NOT NULL,   -- latest wall time committed: the clock may not go back past it
    synced_through_seq   INTEGER NOT NULL,   -- platform acknowledged the journal up to here
    cache_version        INTEGER NOT NULL,   -- installed cache version (0: none): a swapped-in older manifest is caught
    mac                  BLOB NOT NULL       -- HMAC(journal key) over the row
);
CREATE TABLE cache_manifest (
    id                INTEGER PRIMARY KEY CHECK (id = 1),
    version           INTEGER NOT NULL,
    signed            BLOB NOT NULL,         -- manifest body ‖ MAC, as the platform signed it
    installed_wall_ms INTEGER NOT NULL
);
CREATE TABLE cache_entry (
    card_ref BLOB PRIMARY KEY,
    version  INTEGER NOT NULL,
    body     BLOB NOT NULL,
    mac      BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE journal (
    seq           INTEGER PRIMARY KEY,       -- gap-free from 1
    record_id     TEXT NOT NULL,             -- <terminal id>-<seq> (unique because seq is; checked with the MAC)
    kind          INTEGER NOT NULL,          -- 1 redeem, 2 void, 3 batch close
    auth_code     TEXT NOT NULL,
    merchant_id   TEXT NOT NULL,
    card_ref      BLOB NOT NULL,
    package_id    TEXT NOT NULL,
    service_code  TEXT NOT NULL,
    item_title    TEXT NOT NULL,
    quantity      INTEGER NOT NULL,
    amount_fen    INTEGER NOT NULL,
    original_seq  INTEGER NOT NULL,
    group_seq     INTEGER NOT NULL,
    line          INTEGER NOT NULL,
    line_count    INTEGER NOT NULL,
    reader_id     TEXT NOT NULL,
    reader_txn_id INTEGER NOT NULL,
    cashier_id    TEXT NOT NULL,
    wall_ms       INTEGER NOT NULL,
    boot_ms       INTEGER NOT NULL,
    cache_version INTEGER NOT NULL,
    entry_version INTEGER NOT NULL,
    prev_mac      BLOB NOT NULL,
    mac           BLOB NOT NULL
);
CREATE TRIGGER journal_append_only_update BEFORE UPDATE ON journal
    BEGIN SELECT RAISE(ABORT, 'journal is append-only: UPDATE refused'); END;
CREATE TRIGGER journal_append_only_delete BEFORE DELETE ON journal
    BEGIN SELECT RAISE(ABORT, 'journal is append-only: DELETE refused'); END;
CREATE TABLE card_usage (
    card_ref  BLOB PRIMARY KEY,
    rows      INTEGER NOT NULL,              -- journal rows of this card
    last_seq  INTEGER NOT NULL,              -- the latest of them
    net_units INTEGER NOT NULL,              -- redeemed minus voided quantity, all time
    history   BLOB NOT NULL,                 -- copies of the card's journal records (record ‖ MAC each)
    mac       BLOB NOT NULL                  -- HMAC over the above, history by SHA-256
) WITHOUT ROWID;
";

const V2: &str = "
CREATE TABLE outcome (
    reader_id      TEXT NOT NULL,
    reader_txn_id  INTEGER NOT NULL,
    request_digest BLOB NOT NULL,            -- SHA-256 of the request, to flag a reused id with other content
    reply          BLOB NOT NULL,            -- the exact reply bytes the reader got
    first_seq      INTEGER,                  -- first journal seq written, if any
    wall_ms        INTEGER NOT NULL,
    PRIMARY KEY (reader_id, reader_txn_id)
);
CREATE INDEX outcome_by_reader ON outcome (reader_id);
CREATE TABLE identity_attempt (
    card_ref        BLOB PRIMARY KEY,
    failures        INTEGER NOT NULL,
    locked_until_ms INTEGER NOT NULL,
    mac             BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX journal_voids ON journal (original_seq) WHERE kind = 2;
";

/// Outcomes in one B-tree instead of three: a redemption wrote a row into the rowid table, its primary-key
/// index and the by-reader index (three WAL pages per commit). Now the row lives in its primary key
/// (`WITHOUT ROWID`), and "the reader's latest outcome" is a pointer in a one-row-per-reader table whose
/// single page stays hot: two pages per commit. Existing outcomes are copied, the latest per reader
/// taken in insertion (rowid) order.
const V3: &str = "
CREATE TABLE outcome_v3 (
    reader_id      TEXT NOT NULL,
    reader_txn_id  INTEGER NOT NULL,
    request_digest BLOB NOT NULL,            -- SHA-256 of the request, to flag a reused id with other content
    reply          BLOB NOT NULL,            -- the exact reply bytes the reader got
    first_seq      INTEGER,                  -- first journal seq written, if any
    wall_ms        INTEGER NOT NULL,
    PRIMARY KEY (reader_id, reader_txn_id)
) WITHOUT ROWID;
INSERT INTO outcome_v3 (reader_id, reader_txn_id, request_digest, reply, first_seq, wall_ms)
    SELECT reader_id, reader_txn_id, request_digest, reply, first_seq, wall_ms FROM outcome;
CREATE TABLE reader_last (
    reader_id     TEXT PRIMARY KEY,
    reader_txn_id INTEGER NOT NULL           -- the reader's latest stored outcome
) WITHOUT ROWID;
INSERT OR REPLACE INTO reader_last (reader_id, reader_txn_id)
    SELECT reader_id, reader_txn_id FROM outcome ORDER BY rowid;
DROP TABLE outcome;
ALTER TABLE outcome_v3 RENAME TO outcome;
";

/// The deny overlay (`docs/api/README.md`, "GET deny-list"): verified deny entries, one row per
/// deny-list version, each with the platform's MAC. The MACed terminal state gains the highest applied
/// deny-list version and the number of rows, so that a deleted row is caught when the store loads the
/// list (at open, and whenever another connection changed the database). Existing rows get 0/0, which
/// the terminal-state MAC encodes exactly as version 3 did, so no row needs re-MACing here.
const V4: &str = "
CREATE TABLE deny_entry (
    version        INTEGER PRIMARY KEY,      -- deny-list version (per merchant, strictly increasing)
    card_ref       BLOB NOT NULL,
    status         INTEGER NOT NULL,         -- 2 lost, 3 frozen, 4 cancelled
    entry_version  INTEGER NOT NULL,         -- a cache entry of this card at this version or later supersedes it
    reported_at_ms INTEGER NOT NULL,
    mac            BLOB NOT NULL             -- the platform's deny MAC (cache key)
);
ALTER TABLE terminal_state ADD COLUMN deny_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE terminal_state ADD COLUMN deny_count INTEGER NOT NULL DEFAULT 0;
";

/// One probe per menu: the card's usage anchor moves from `card_usage` into its cache-entry row (see
/// [`CACHE_ENTRY_DDL`]); a card with usage but no entry keeps a row with NULL entry columns. The usage
/// MAC does not cover where the columns live, so every row moves as it is, MACs and all. Rewrites the
/// cache table once (a million-card cache: the time of a full install).
const V5: &str = "
CREATE TABLE cache_entry_v5 (
    card_ref        BLOB PRIMARY KEY,
    version         INTEGER,
    body            BLOB,
    mac             BLOB,
    usage_rows      INTEGER,
    usage_last_seq  INTEGER,
    usage_net_units INTEGER,
    usage_history   BLOB,
    usage_mac       BLOB
) WITHOUT ROWID;
INSERT INTO cache_entry_v5
    SELECT e.card_ref, e.version, e.body, e.mac, u.rows, u.last_seq, u.net_units, u.history, u.mac
    FROM cache_entry e LEFT JOIN card_usage u ON u.card_ref = e.card_ref;
INSERT INTO cache_entry_v5 (card_ref, usage_rows, usage_last_seq, usage_net_units, usage_history, usage_mac)
    SELECT card_ref, rows, last_seq, net_units, history, mac FROM card_usage
    WHERE card_ref NOT IN (SELECT card_ref FROM cache_entry);
DROP TABLE cache_entry;
DROP TABLE card_usage;
DROP TABLE IF EXISTS cache_staging;
ALTER TABLE cache_entry_v5 RENAME TO cache_entry;
";

/// End-of-day closes sent to the platform (`store::close`): which business days are closed, through
/// which journal seq, and the platform's answer. Bookkeeping, not MACed: an edited row can only make
/// the terminal close a day again (the platform answers a resent close with its stored answer) or skip
/// one (the platform's own clearing does not depend on closes).
const V6: &str = "
CREATE TABLE batch_close (
    business_date      TEXT NOT NULL,        -- YYYY-MM-DD at the offset below
    utc_offset_minutes INTEGER NOT NULL,
    first_seq          INTEGER NOT NULL,
    through_seq        INTEGER NOT NULL,     -- the day's last journal seq: the next close starts after it
    result             TEXT NOT NULL,        -- matched | mismatched | conflict | refused
    answer             TEXT NOT NULL,        -- the platform's answer (JSON), or its problem
    closed_wall_ms     INTEGER NOT NULL,
    PRIMARY KEY (business_date, through_seq) -- a day closed again (records stamped into it later) adds a row
) WITHOUT ROWID;
";

/// Schema 7: stored answers as PROTOCOL.md 1.1 defines them, and every stored byte the daemon acts on
/// MACed (one release, two parts).
///
/// **Stored answers** (`store::answers`): keyed by (reader, txn id, request type), answers to
/// CARD_PRESENTED included, each row MACed with the journal key, and the reader's latest transaction
/// MACed too. The unMACed answers of version 6 (keyed by reader and txn
/// only, their request type unknown) are kept as `outcome_v6` for an investigator: no MAC can be
/// given to them here (a migration holds no key), so they are never sent to a reader again.
///
/// **The rest of the state**: every other stored byte the daemon acts on is MACed, and a key check
/// value tells a wrong key from an edited row:
///
/// * `key_check`: one row, written when the database is created, holding HMAC(key, key-check text)
///   under each of the terminal's derived keys (`store::check::KeyCheck`);
/// * `terminal_state.identity_count`: the number of `identity_attempt` rows, so that a deleted
///   lockout counter is caught when the store loads (as `deny_count` does for loss reports);
/// * `cache_manifest.mac`: the terminal's MAC over the manifest row, `installed_wall_ms` included;
/// * `batch_close.mac`: the terminal's MAC over each close record;
/// * `terminal_state.mac_format`: 1 for a row MACed as before (a database migrated here: the new
///   columns are unset, since a migration holds no key), 2 once the terminal's MAC covers
///   `identity_count` and the rows above are MACed. The first open with the key seals a migrated
///   database (`Store::seal`); the MAC of a format-2 row covers its format, so it cannot be set back.
const V7: &str = "
ALTER TABLE outcome RENAME TO outcome_v6;
DROP TABLE reader_last;
CREATE TABLE outcome (
    reader_id      TEXT NOT NULL,
    reader_txn_id  INTEGER NOT NULL,
    request_type   INTEGER NOT NULL,         -- 32 CARD_PRESENTED, 33 REDEEM, 34 VOID (PROTOCOL.md §5.2)
    request_mac    BLOB NOT NULL,            -- HMAC(journal key) over the request payload: same payload or not
    reply          BLOB NOT NULL,            -- the answer as sent: type byte, then payload
    card_ref       BLOB,                     -- a CARD_PRESENTED answered with a menu: the card, for its REDEEM
    entry_version  INTEGER,                  -- ... and the entry version that menu showed
    redeemed       INTEGER NOT NULL,         -- a CARD_PRESENTED whose REDEEM was answered: 1 (its deletion is caught)
    cashier_id     TEXT NOT NULL,
    first_seq      INTEGER,                  -- first journal seq written, if any
    wall_ms        INTEGER NOT NULL,
    mac            BLOB NOT NULL,            -- HMAC(journal key) over every column above
    PRIMARY KEY (reader_id, reader_txn_id, request_type)
) WITHOUT ROWID;
CREATE TABLE reader_last (
    reader_id     TEXT PRIMARY KEY,
    reader_txn_id INTEGER NOT NULL,          -- the transaction of the reader's latest stored answer
    cashier_id    TEXT NOT NULL,             -- the cashier of that answer (a VOID names none: it keeps it)
    mac           BLOB NOT NULL              -- HMAC(journal key) over the row
) WITHOUT ROWID;
CREATE TABLE key_check (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    terminal_id TEXT NOT NULL,               -- the terminal the keys below were derived for
    cache      BLOB NOT NULL,                -- HMAC(cache key, key-check text)
    journal    BLOB NOT NULL,                -- HMAC(journal key, key-check text)
    request    BLOB NOT NULL,
    card_token BLOB NOT NULL,
    identity   BLOB NOT NULL
);
ALTER TABLE terminal_state ADD COLUMN identity_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE terminal_state ADD COLUMN mac_format INTEGER NOT NULL DEFAULT 1;
ALTER TABLE cache_manifest ADD COLUMN mac BLOB;  -- HMAC(journal key) over the row (format 2)
ALTER TABLE batch_close ADD COLUMN mac BLOB;     -- HMAC(journal key) over the row (format 2)
";

/// Every migration, in order. Append new ones; never edit a released one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: V1,
    },
    Migration {
        version: 2,
        sql: V2,
    },
    Migration {
        version: 3,
        sql: V3,
    },
    Migration {
        version: 4,
        sql: V4,
    },
    Migration {
        version: 5,
        sql: V5,
    },
    Migration {
        version: 6,
        sql: V6,
    },
    Migration {
        version: 7,
        sql: V7,
    },
];

pub fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Applies `migrations` above the database's `user_version`, each in one transaction, refusing any step
/// that changes the journal.
pub fn migrate_with(conn: &mut Connection, migrations: &[Migration]) -> Result<(), StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let latest = migrations.last().map_or(0, |m| m.version);
    if current > latest {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported: latest,
        });
    }
    for m in migrations.iter().filter(|m| m.version > current) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let fail = |detail: String| StoreError::Migration {
            version: m.version,
            detail,
        };
        let before = journal_fingerprint(&tx).map_err(|e| fail(e.to_string()))?;
        tx.execute_batch(m.sql).map_err(|e| fail(e.to_string()))?;
        let after = journal_fingerprint(&tx).map_err(|e| fail(e.to_string()))?;
        if let (Some(b), a) = (&before, &after)
            && Some(b) != a.as_ref()
        {
            let rows_after = a.as_ref().map_or(0, |a| a.0);
            // Dropping `tx` rolls the migration back.
            return Err(fail(format!(
                "would change the journal ({} rows before, {rows_after} after): refused",
                b.0
            )));
        }
        tx.pragma_update(None, "user_version", m.version)?;
        tx.commit()?;
    }
    Ok(())
}

/// Row count and a hash over every journal row's chain fields; `None` before the journal exists.
fn journal_fingerprint(conn: &Connection) -> rusqlite::Result<Option<(u64, [u8; 32])>> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'journal')",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(None);
    }
    let mut stmt = conn.prepare("SELECT seq, prev_mac, mac FROM journal ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    let mut h = Sha256::new();
    let mut n = 0u64;
    while let Some(r) = rows.next()? {
        let seq: i64 = r.get(0)?;
        h.update(seq.to_be_bytes());
        h.update(r.get::<_, Vec<u8>>(1)?);
        h.update(r.get::<_, Vec<u8>>(2)?);
        n += 1;
    }
    Ok(Some((n, h.finalize().into())))
}
