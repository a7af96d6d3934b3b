//! The SQLite store: signed entitlement cache, HMAC-chained append-only journal, the stored answers
//! to each reader's requests, identity-attempt counters and per-card usage anchors, in one database
//! file.
//!
//! A [`Store`] is synchronous, with one connection. In the daemon it has one owner, [`owner::StoreHandle`]
//! (a mutex that every reader thread and the sync task take in turn). Each answer to a reader's request
//! (`answers`: `Store::answer_card_presented`, `answer_redeem`, `answer_void`) reads and verifies its
//! inputs, applies the idempotency rules (`crate::conversation::rules`), asks the pure [`crate::engine`],
//! and commits journal rows, chain head, usage anchor, identity counter and the reply bytes in **one**
//! `BEGIN IMMEDIATE … COMMIT` — with `synchronous=FULL` for a REDEEM or VOID, `NORMAL` for a
//! CARD_PRESENTED (it deducts nothing) — before the reply leaves the store. WAL checkpoints are not
//! part of any commit: the owner calls [`Store::maintenance`] when idle.
//!
//! Invariants (tested in `tests/it`):
//! * no card number is ever written: only its keyed reference and the masked number;
//! * no journal row is ever updated or deleted (triggers refuse it), and seqs are gap-free;
//! * the answer to a (reader, transaction id, request type) is stored with the rows it reports, and
//!   replayed byte-identically; a request under that key with another payload deducts nothing;
//! * every row the daemon acts on carries a MAC and is verified before it is used; a failed check
//!   refuses the store or declines with `IntegrityFailure` and names the row, it never decides from
//!   (or sends) tampered data. Opening runs [`check`]'s checks, the same that `journal verify` /
//!   `cache verify` run ([`verify::database`]);
//! * a key that is not the database's, or another terminal's database, is named as such, not as an
//!   edit ([`check::identify`], the key check value);
//! * a database is created only in an existing, empty state directory, never over a missing or
//!   emptied one ([`state_dir`]).

pub mod answers;
pub mod check;
pub mod close;
pub mod deny;
mod install;
pub mod owner;
pub mod rows;
pub mod schema;
pub mod state_dir;
pub mod verify;

use std::path::{Path, PathBuf};

use redeemd_contract::journal::{auth_code, genesis_mac, parse_auth_code};
use redeemd_contract::keys::{Tag, TerminalKeys, tags_equal};
use redeemd_contract::model::{Card, CardNumber, CardRef, identity_matches};
use redeemd_contract::snapshot::{BundleError, EntryOp, Manifest, verify_entry_mac};
use redeemd_contract::{JournalRecord, RecordKind};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use thiserror::Error;

use crate::engine::{
    self, CacheFacts, CardView, Context, DeclineReason, IdentityInput, IdentityState, Limits, Line,
    Menu, Now, TerminalFacts, Usage,
};
pub use answers::{Outcome, Queried, Replies, Request, Source, SwipeFacts};
pub use deny::{DenyError, DenyInfo, DenyList, DenyReport};
pub use install::{
    BundleInstall, CARRY_SCAN_ROWS, CHUNK_ENTRIES, Exclusive, InstallReport, StoreAccess,
    install_from_reader,
};
pub use rows::Integrity;

/// Journal rows with their MACs, as stored, and the findings of the rows that failed their check.
pub type RowsAsStored = (Vec<(JournalRecord, Tag)>, Vec<Integrity>);
use rows::{
    JOURNAL_FROM, JOURNAL_GROUP, JOURNAL_INSERT, TerminalRow, UsageRow, check_record,
    decode_history, encode_history, identity_mac, record_from_row,
};

/// Name of the database file inside the state directory.
pub const DB_FILE: &str = "redeemd.sqlite3";

/// WAL size (pages) at which a commit checkpoints by itself, when [`Store::maintenance`] was not called.
pub const WAL_AUTOCHECKPOINT_PAGES: i64 = 4096;

/// Commits after which [`Store::maintenance`] checkpoints (about 7 WAL pages each).
pub const CHECKPOINT_EVERY_COMMITS: u32 = 32;

/// What [`Store::maintenance`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// A checkpoint ran (false: fewer than [`CHECKPOINT_EVERY_COMMITS`] commits since the last one).
    pub checkpointed: bool,
    /// WAL frames before the checkpoint.
    pub wal_frames: u64,
    /// Of those, frames now copied into the database file.
    pub checkpointed_frames: u64,
    /// Another connection (e.g. a `journal verify` reading) kept the checkpoint from finishing.
    pub busy: bool,
}

/// Errors at the store boundary. Business refusals are not errors: they are [`Declined`] decisions.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "state directory {path} does not exist: redeemd never creates it on its own (a typo in state_dir or --state-dir?). systemd creates it when the service starts (StateDirectory=); for a hand-run daemon create it (install -d -m 0700 {path}) or run `redeemd init`"
    )]
    StateDirMissing { path: PathBuf },
    #[error(
        "state directory {path} is not a directory (a file of that name is in the way): point state_dir at a directory (default /var/lib/redeemd)"
    )]
    NotADirectory { path: PathBuf },
    #[error(
        "cannot create state directory {path}: its parent directory does not exist (a typo?); redeemd creates the state directory itself, never its parents"
    )]
    ParentMissing { path: PathBuf },
    #[error(
        "no database at {path} yet: the daemon creates it at its first start (or check state_dir / --state-dir)"
    )]
    Missing { path: PathBuf },
    #[error(
        "database {path} is {how}, but this state directory held {held}: refusing to start a new, empty journal over it. Restore {} (with its -wal file, if any) from a backup and start again; if it is truly lost, tell the platform (it holds what was uploaded), move the state directory aside and run `redeemd init`. If this is a new install that never served a card, remove the file and {} and start again",
        DB_FILE,
        state_dir::MARKER_FILE
    )]
    DatabaseLost {
        path: PathBuf,
        how: String,
        held: String,
    },
    #[error(
        "state directory {dir} holds no database but is not empty ({}): a database that was here is gone (a daemon ran here before). redeemd creates a database only in an empty state directory: restore {} from a backup, or for a new install empty the directory",
        entries.join(", "),
        DB_FILE
    )]
    NotEmpty { dir: PathBuf, entries: Vec<String> },
    #[error(
        "state directory {dir} is in use by another redeemd{}: one daemon per state directory (stop it first: systemctl stop redeemd, or end the one started by hand)",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    InUse { dir: PathBuf, pid: Option<u32> },
    #[error("state directory {path} already holds a database: nothing to initialise")]
    Exists { path: PathBuf },
    #[error(
        "this database of terminal {terminal} was created with another key: the key given is not this terminal's secret (another terminal's key file, or a secret issued later). Install the terminal's own key; the database itself is not at fault"
    )]
    WrongKey { terminal: String },
    #[error("database {path} is corrupt or not a redeemd database: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "database schema version {found} is newer than this redeemd supports ({supported}); refusing to downgrade"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("migration to schema version {version} failed and was rolled back: {detail}")]
    Migration { version: i64, detail: String },
    #[error(
        "this database belongs to terminal {found:?} / merchant {found_merchant:?}, but the configuration is for {expected:?} / {expected_merchant:?}: check state_dir and terminal_id (a database copied from another terminal cannot serve this one)"
    )]
    WrongTerminal {
        expected: String,
        found: String,
        expected_merchant: String,
        found_merchant: String,
    },
    #[error("integrity check failed: {0}")]
    Integrity(#[from] Integrity),
    #[error("bundle refused, cache unchanged: {0}")]
    Bundle(#[from] BundleError),
    #[error("bundle refused, cache unchanged: reading it failed: {0}")]
    BundleRead(std::io::Error),
    #[error(
        "bundle refused, cache unchanged: version {offered} is not newer than the installed {installed} (rollback)"
    )]
    Rollback { offered: u64, installed: u64 },
    #[error(
        "bundle refused, cache unchanged: version {offered} is larger than the store can hold (at most {})",
        i64::MAX
    )]
    VersionTooLarge { offered: u64 },
    #[error(
        "bundle refused, cache unchanged: entry {card} counts this terminal's journal through seq {through}, but the local journal ends at seq {head}: this database is older than what the platform holds (restored from a backup?); entitlements wait for an operator, as uploading does"
    )]
    AheadOfJournal {
        card: String,
        through: u64,
        head: u64,
    },
    #[error(
        "bundle refused, cache unchanged: delta applies to version {base}, installed is {installed}"
    )]
    DeltaBase { base: u64, installed: u64 },
    #[error(
        "bundle refused, cache unchanged: it is for merchant {found:?}, this terminal is {expected:?}"
    )]
    WrongMerchant { expected: String, found: String },
    #[error(
        "sync acknowledgement through seq {through} is beyond the journal head {head} or behind {current}"
    )]
    BadSyncAck {
        through: u64,
        head: u64,
        current: u64,
    },
    #[error("deny list refused, nothing applied: {0}")]
    Deny(#[from] DenyError),
    #[error("the store is not usable (a panic poisoned its lock)")]
    Unavailable,
    #[error("sqlite: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// Static configuration of a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub terminal_id: String,
    pub merchant_id: String,
    pub limits: Limits,
}

/// A refusal, with what is still usable on the card when known (for the screen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declined {
    pub reason: DeclineReason,
    pub remaining: Option<Menu>,
    /// For logs: the failing row and check, for integrity failures.
    pub detail: Option<String>,
}

/// An approved redemption: committed to disk before this value exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub auth_code: String,
    pub first_seq: u64,
    pub masked_number: String,
    pub entry_version: u64,
    pub wall_ms: i64,
    pub lines: Vec<Line>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoidLine {
    pub original_seq: u64,
    pub package_id: String,
    pub service_code: String,
    pub title: String,
    pub quantity: u32,
    pub amount_fen: u64,
    /// Uses left after the void, when the card is still in the cache.
    pub uses_left_after: Option<u32>,
}

/// An approved void: committed to disk before this value exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoidApproval {
    pub auth_code: String,
    pub original_auth_code: String,
    pub first_seq: u64,
    pub wall_ms: i64,
    pub lines: Vec<VoidLine>,
}

/// A decision, which the caller's [`Replies`] turns into reply bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A CARD_PRESENTED's menu.
    Menu(Menu),
    Redeemed(Approval),
    Voided(VoidApproval),
    Declined(Declined),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MenuOutcome {
    Menu(Menu),
    Declined(Declined),
}

/// What a redemption is decided from: the REDEEM's items and identity data, and its
/// transaction's stored swipe (card reference, cashier, the entry version its menu showed).
#[derive(Clone, Copy)]
struct RedeemFacts<'a> {
    reader_id: &'a str,
    txn_id: u32,
    card_ref: CardRef,
    /// A different current version declines with `MenuChanged` instead of redeeming indexes that
    /// may now mean other items.
    entry_version: u64,
    cashier_id: &'a str,
    /// (entry index from the menu, quantity).
    items: &'a [(u16, u64)],
    /// Identity confirmation data typed by the member, if asked.
    identity: Option<&'a [u8]>,
}

/// What a void is decided from.
#[derive(Clone, Copy)]
struct VoidFacts<'a> {
    reader_id: &'a str,
    txn_id: u32,
    original_auth_code: &'a str,
    cashier_id: &'a str,
}

/// Summary of the installed cache, for `cache info` and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheInfo {
    pub manifest: Manifest,
    pub installed_wall_ms: i64,
    pub entries: u64,
}

/// Journal status, for status displays and the sync driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalInfo {
    pub head_seq: u64,
    pub synced_through_seq: u64,
    pub offline_redemptions: u64,
    pub last_trusted_wall_ms: i64,
}

/// A failed lookup: tampered data (declined, named) or a database error (returned).
enum Fault {
    Integrity(Integrity),
    Sql(rusqlite::Error),
    /// An entry is newer than the manifest in memory: another connection installed a cache; reload.
    Stale,
}

impl From<rusqlite::Error> for Fault {
    fn from(e: rusqlite::Error) -> Self {
        Fault::Sql(e)
    }
}
impl From<Fault> for StoreError {
    fn from(f: Fault) -> Self {
        match f {
            Fault::Integrity(i) => StoreError::Integrity(i),
            Fault::Sql(e) => StoreError::Sql(e),
            Fault::Stale => StoreError::Integrity(Integrity::new(
                "cache",
                "entries newer than the installed manifest",
            )),
        }
    }
}

impl From<Integrity> for Fault {
    fn from(e: Integrity) -> Self {
        Fault::Integrity(e)
    }
}

/// A verified card entry and its verified journal history.
struct LoadedCard {
    card: Card,
    entry_version: u64,
    history: Vec<JournalRecord>,
    /// The card's usage anchor and history blob as stored, to extend on commit.
    usage: UsageRow,
    history_blob: Vec<u8>,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
    keys: TerminalKeys,
    cfg: StoreConfig,
    state: TerminalRow,
    offline_redemptions: u64,
    cache: Option<Manifest>,
    /// When the installed manifest was installed (from its MACed row).
    cache_installed_wall_ms: i64,
    /// Verified deny entries by card (see [`deny`]), loaded with the terminal state.
    deny: deny::DenySet,
    data_version: i64,
    /// Boot time of the last `data_version` check by a menu.
    checked_at_boot_ms: u64,
    /// Write transactions since the last complete checkpoint (see [`Store::maintenance`]).
    commits_since_checkpoint: u32,
    /// The connection commits with `synchronous=NORMAL` (only while a CARD_PRESENTED's answer is
    /// written: see `answers`).
    synchronous_normal: bool,
    /// The last write that failed for want of storage (a full disk, an I/O error), for `status`.
    storage_error: Option<StorageError>,
    /// An identity-attempt counter failed its check at the last load (`check::load_state`):
    /// decisions that need a counter decline with it.
    identity_fault: Option<Integrity>,
}

/// A write the disk refused (`SQLITE_FULL`, an I/O error, a read-only file): shown by `redeemd status`
/// until a later write succeeds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StorageError {
    pub message: String,
    pub at_wall_ms: i64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("terminal", &self.cfg.terminal_id)
            .finish_non_exhaustive()
    }
}

/// Opens an existing database file with WAL and `synchronous=FULL`, and migrates it. Never creates
/// one: a missing file, an empty one, or a SQLite file without redeemd's schema is refused by name.
pub fn open_database(path: &Path) -> Result<Connection, StoreError> {
    open_file(path, false)
}

/// Creates the database file (the caller checked that the state directory is new and empty) and
/// gives it the schema.
fn create_database(path: &Path) -> Result<Connection, StoreError> {
    open_file(path, true)
}

fn open_file(path: &Path, create: bool) -> Result<Connection, StoreError> {
    use rusqlite::OpenFlags;
    let corrupt = |e: &rusqlite::Error| StoreError::Corrupt {
        path: path.to_owned(),
        detail: e.to_string(),
    };
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    } else if !path.is_file() {
        return Err(missing_or_lost(path));
    }
    let mut conn = Connection::open_with_flags(path, flags).map_err(|e| match e {
        e if is_corruption(&e) => corrupt(&e),
        e => StoreError::Sql(e),
    })?;
    let setup = |conn: &Connection| -> rusqlite::Result<()> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(rusqlite::Error::InvalidParameterName(format!(
                "journal_mode is {mode}, WAL required"
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Query-planner stability: without it the bundled SQLite (STAT4) marks bound parameters as
        // plan-relevant and re-prepares the lookup statements on every new card reference (10× slower).
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )?;
        // 64 MiB of page cache: the hot part of a million-card cache and its journal index.
        conn.pragma_update(None, "cache_size", -65_536)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Checkpoints belong off the commit path: the daemon calls `Store::maintenance` when idle. The
        // automatic checkpoint stays as a backstop (16 MiB of WAL, ~600 redemptions) for a caller that
        // never does, so the WAL cannot grow without bound.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
        conn.set_prepared_statement_cache_capacity(64);
        // Touch the schema so that a file that is not a database fails here, by name.
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })?;
        Ok(())
    };
    setup(&conn).map_err(|e| corrupt(&e))?;
    if !create {
        // A file SQLite reads as a database without redeemd's schema is not ours to migrate: an
        // empty database (a file cut to nothing, a first start that crashed before its schema) or
        // another program's.
        let (version, objects): (i64, i64) = conn
            .query_row(
                "SELECT (SELECT user_version FROM pragma_user_version), (SELECT count(*) FROM sqlite_master)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| corrupt(&e))?;
        if version == 0 && objects > 0 {
            return Err(StoreError::Corrupt {
                path: path.to_owned(),
                detail: "an SQLite database, but not a redeemd one (it holds other tables)".into(),
            });
        }
        if version == 0 {
            return Err(StoreError::DatabaseLost {
                path: path.to_owned(),
                how: "a database without redeemd's schema (nothing in it)".into(),
                held: lost_journal(path),
            });
        }
    }
    schema::migrate_with(&mut conn, schema::MIGRATIONS).map_err(|e| match e {
        StoreError::Sql(ref s) if is_corruption(s) => corrupt(s),
        other => other,
    })?;
    Ok(conn)
}

/// The error for a database file that is not there: missing where a journal was, or not created yet.
fn missing_or_lost(path: &Path) -> StoreError {
    let dir = path.parent().unwrap_or(Path::new("."));
    match state_dir::presence(dir) {
        Err(e) => e,
        Ok(_) => StoreError::Missing {
            path: path.to_owned(),
        },
    }
}

/// What the state directory's marker says was there, for [`StoreError::DatabaseLost`].
fn lost_journal(path: &Path) -> String {
    match path.parent().and_then(state_dir::read_marker) {
        Some(Ok(m)) => format!(
            "the journal of terminal {} (journal head seq {} when the daemon last opened it)",
            m.terminal_id, m.journal_head_seq
        ),
        Some(Err(_)) => "a journal (its marker is unreadable)".into(),
        None => "no journal that redeemd recorded".into(),
    }
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// Whether an SQLite error means the storage refused the write (disk full, I/O error, read-only
/// file), as opposed to a bug or a busy database.
fn is_storage_failure(e: &StoreError) -> bool {
    let StoreError::Sql(e) = e else {
        return false;
    };
    matches!(
        e.sqlite_error_code(),
        Some(
            rusqlite::ErrorCode::DiskFull
                | rusqlite::ErrorCode::SystemIoFailure
                | rusqlite::ErrorCode::ReadOnly
                | rusqlite::ErrorCode::CannotOpen
        )
    )
}

/// Whether a missing database may be created by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// As a first start: only in an empty state directory (created if missing, never its parents).
    FirstStart,
    /// Never (`redeemd sync`, the tools).
    Never,
}

impl Store {
    /// Opens the store in `state_dir`, creating the directory itself (mode 0700, never its parents)
    /// if it is missing; a database is created only when the directory is empty (a first start).
    /// Checks that the database is this terminal's and made with this key, seals a database migrated
    /// from before schema 7, and runs every opening check ([`check::load_state`]).
    ///
    /// `redeemd run` creates no directory at all: it takes the directory's lock first
    /// ([`state_dir::DaemonLock`]), which requires it to exist (systemd's `StateDirectory=` makes it).
    pub fn open(
        state_dir: &Path,
        keys: TerminalKeys,
        cfg: StoreConfig,
    ) -> Result<Store, StoreError> {
        Self::open_with(state_dir, keys, cfg, Create::FirstStart)
    }

    /// As [`Store::open`], choosing whether a first start may create the database.
    pub fn open_with(
        state_dir: &Path,
        keys: TerminalKeys,
        cfg: StoreConfig,
        create: Create,
    ) -> Result<Store, StoreError> {
        let path = state_dir.join(DB_FILE);
        if create == Create::FirstStart {
            state_dir::create_dir(state_dir)?;
        }
        let presence = state_dir::presence(state_dir)?;
        let creating = presence == state_dir::Presence::Empty;
        if creating && create == Create::Never {
            return Err(StoreError::Missing { path });
        }
        let conn = if creating {
            create_database(&path)?
        } else {
            open_database(&path)?
        };
        // Owner-only: SQLite gives the -wal and -shm files the same mode as the database.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| StoreError::StateDir {
                path: path.clone(),
                source,
            },
        )?;
        let expected = (cfg.terminal_id.clone(), cfg.merchant_id.clone());
        let own = keys.clone();
        let keys_for = move |id: &str| (id == own.terminal_id).then(|| own.clone());
        let store = Self::from_connection(
            conn,
            path,
            &keys_for,
            Some((&expected.0, &expected.1)),
            cfg.limits.clone(),
            creating,
        )?;
        // The daemon's opens (and `init`) keep the marker; `redeemd sync` (often root) leaves it.
        if create == Create::FirstStart {
            store.update_marker();
        }
        Ok(store)
    }

    /// `redeemd init`: creates the state directory (never its parents) if it is missing, and the
    /// database in it, which must be empty; an existing database is refused.
    pub fn init(
        state_dir: &Path,
        keys: TerminalKeys,
        cfg: StoreConfig,
    ) -> Result<Store, StoreError> {
        state_dir::create_dir(state_dir)?;
        if state_dir::presence(state_dir)? == state_dir::Presence::Database {
            return Err(StoreError::Exists {
                path: state_dir.join(DB_FILE),
            });
        }
        Self::open_with(state_dir, keys, cfg, Create::FirstStart)
    }

    /// Opens an existing store for the tools, deriving the keys of the terminal the database was
    /// created for (`expected`: the configured terminal and merchant, when a configuration is known;
    /// a database of another is then refused by name). Never creates one.
    pub fn open_existing(
        state_dir: &Path,
        secret: &redeemd_contract::TerminalSecret,
        limits: Limits,
        expected: Option<(&str, &str)>,
    ) -> Result<Store, StoreError> {
        let path = state_dir.join(DB_FILE);
        if state_dir::presence(state_dir)? == state_dir::Presence::Empty {
            return Err(StoreError::Missing { path });
        }
        let conn = open_database(&path)?;
        Self::from_connection(
            conn,
            path,
            &|id: &str| Some(secret.derive_all(id)),
            expected,
            limits,
            false,
        )
    }

    fn from_connection(
        conn: Connection,
        path: PathBuf,
        keys_for: &dyn Fn(&str) -> Option<TerminalKeys>,
        expected: Option<(&str, &str)>,
        limits: Limits,
        creating: bool,
    ) -> Result<Store, StoreError> {
        let owner = check::identify(&conn, keys_for, expected)?;
        let (keys, terminal_id, merchant_id) = match (owner, expected) {
            (Some(o), _) => (o.keys, o.terminal_id, o.merchant_id),
            (None, Some((terminal, merchant))) => {
                // No terminal state: a database being created here, or one whose first start
                // stopped after the schema and before its first row (then its journal is empty and
                // no marker vouches for a journal).
                let unfinished = !creating
                    && conn
                        .query_row("SELECT count(*) FROM journal", [], |r| r.get::<_, i64>(0))?
                        == 0
                    && path.parent().and_then(state_dir::read_marker).is_none();
                if !creating && !unfinished {
                    return Err(StoreError::DatabaseLost {
                        how: "without its terminal state row".into(),
                        held: lost_journal(&path),
                        path,
                    });
                }
                let keys = keys_for(terminal).ok_or_else(|| StoreError::WrongKey {
                    terminal: terminal.to_owned(),
                })?;
                (keys, terminal.to_owned(), merchant.to_owned())
            }
            (None, None) => return Err(StoreError::Missing { path }),
        };
        let mut store = Store {
            conn,
            path,
            keys,
            cfg: StoreConfig {
                terminal_id,
                merchant_id,
                limits,
            },
            state: TerminalRow {
                terminal_id: String::new(),
                merchant_id: String::new(),
                head_seq: 0,
                head_mac: [0; 32],
                last_trusted_wall_ms: 0,
                synced_through_seq: 0,
                cache_version: 0,
                deny_version: 0,
                deny_count: 0,
                identity_count: 0,
                sealed: true,
            },
            offline_redemptions: 0,
            cache: None,
            cache_installed_wall_ms: 0,
            deny: deny::DenySet::new(),
            data_version: 0,
            checked_at_boot_ms: 0,
            // Unknown WAL contents at open: let the first maintenance call checkpoint.
            commits_since_checkpoint: CHECKPOINT_EVERY_COMMITS,
            synchronous_normal: false,
            storage_error: None,
            identity_fault: None,
        };
        let has_state: bool =
            store
                .conn
                .query_row("SELECT EXISTS (SELECT 1 FROM terminal_state)", [], |r| {
                    r.get(0)
                })?;
        if !has_state {
            store.create_terminal_row()?;
        }
        store.seal()?;
        store.restore_guards();
        store.reload().map_err(|f| match f {
            Fault::Integrity(i) => StoreError::Integrity(i),
            Fault::Stale => StoreError::Integrity(Integrity::new(
                "cache",
                "entries newer than the installed manifest",
            )),
            Fault::Sql(e) if is_corruption(&e) => StoreError::Corrupt {
                path: store.path.clone(),
                detail: e.to_string(),
            },
            Fault::Sql(e) => StoreError::Sql(e),
        })?;
        Ok(store)
    }

    /// A new database's first rows: the terminal state (sealed: its MAC covers every field) and the
    /// key check value; then a checkpoint, so that the database file itself holds them.
    fn create_terminal_row(&mut self) -> Result<(), StoreError> {
        let row = TerminalRow {
            terminal_id: self.cfg.terminal_id.clone(),
            merchant_id: self.cfg.merchant_id.clone(),
            head_seq: 0,
            head_mac: genesis_mac(&self.keys.journal, &self.cfg.terminal_id),
            last_trusted_wall_ms: 0,
            synced_through_seq: 0,
            cache_version: 0,
            deny_version: 0,
            deny_count: 0,
            identity_count: 0,
            sealed: true,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        write_terminal_row(&tx, &row, &self.keys)?;
        check::KeyCheck::write(&tx, &self.keys)?;
        tx.commit()?;
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        tracing::info!(path = %self.path.display(), terminal = %self.cfg.terminal_id, "created a new database");
        Ok(())
    }

    /// Seals a database migrated from before schema 7 (a migration holds no key): once its terminal
    /// state verifies as it was written, MACs the rows that had none (the manifest row, the close
    /// records), counts the identity-attempt rows into the state, stores the key check value and
    /// re-MACs the state in the form that covers every field. Rows edited before this open are
    /// sealed as they are: nothing guarded them before. A read-only database stays unsealed (and is
    /// checked as before).
    fn seal(&mut self) -> Result<(), StoreError> {
        let result = (|| -> Result<bool, StoreError> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut state = read_terminal_row(&tx, &self.keys)?;
            if state.sealed {
                return Ok(false);
            }
            let manifest: Option<(i64, Vec<u8>, i64)> = tx
                .query_row(
                    "SELECT version, signed, installed_wall_ms FROM cache_manifest WHERE id = 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(|e| match e {
                    rusqlite::Error::InvalidColumnType(..) => StoreError::Integrity(
                        Integrity::new("cache manifest", format!("{e} (row edited)")),
                    ),
                    e => StoreError::Sql(e),
                })?;
            if let Some((version, signed, installed)) = manifest {
                let mac = rows::manifest_row_mac(&self.keys.journal, version, &signed, installed);
                tx.execute(
                    "UPDATE cache_manifest SET mac = ?1 WHERE id = 1",
                    [&mac[..]],
                )?;
            }
            close::seal_rows(&tx, &self.keys)?;
            state.identity_count =
                tx.query_row("SELECT count(*) FROM identity_attempt", [], |r| {
                    r.get::<_, i64>(0)
                })? as u64;
            state.sealed = true;
            write_terminal_row(&tx, &state, &self.keys)?;
            check::KeyCheck::write(&tx, &self.keys)?;
            tx.commit()?;
            Ok(true)
        })();
        match result {
            Ok(true) => {
                tracing::info!(path = %self.path.display(), "sealed a database migrated to schema 7: every row the daemon acts on now carries a MAC");
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(StoreError::Sql(e))
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ReadOnly) =>
            {
                Ok(())
            }
            // The checks that follow name what is wrong (a state that does not verify, a row edited).
            Err(StoreError::Integrity(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Puts back the journal's append-only triggers if they were dropped (the edit that came with it
    /// is caught by the MACs), logging it. A read-only database keeps what it has (verify names it).
    fn restore_guards(&self) {
        match check::restore_guards(&self.conn) {
            Ok(restored) if restored.is_empty() => {}
            Ok(restored) => tracing::error!(
                triggers = %restored.join(", "),
                "the journal's append-only triggers had been dropped (the database was edited with a SQLite tool): put back; run `redeemd journal verify` and keep the database as evidence"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot put back the journal's append-only triggers")
            }
        }
    }

    /// Records in the state directory's marker that this database holds this terminal's journal, and
    /// its head now (see [`state_dir`]). A failure is logged, not fatal: the database itself is fine.
    fn update_marker(&self) {
        let Some(dir) = self.path.parent() else {
            return;
        };
        let now = owner::wall_clock_ms();
        let created_at_ms = match state_dir::read_marker(dir) {
            Some(Ok(m)) => {
                if m.journal_head_seq > self.state.head_seq {
                    tracing::warn!(
                        marker_head = m.journal_head_seq,
                        journal_head = self.state.head_seq,
                        "the journal ends before the head recorded when the daemon last opened it: a database restored from an older backup? Sync resolves it with the platform"
                    );
                }
                m.created_at_ms
            }
            _ => now,
        };
        let marker = state_dir::Marker {
            terminal_id: self.cfg.terminal_id.clone(),
            merchant_id: self.cfg.merchant_id.clone(),
            created_at_ms,
            journal_head_seq: self.state.head_seq,
            seen_at_ms: now,
        };
        if let Err(e) = state_dir::write_marker(dir, &marker) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot write the state directory's marker");
        }
    }

    /// (Re)reads and verifies the terminal row, chain head and manifest: at open, and whenever another
    /// connection (e.g. `redeemd cache install`) changed the database.
    fn reload(&mut self) -> Result<(), Fault> {
        if !self.conn.is_autocommit() {
            return self.reload_in_transaction();
        }
        // Every read from one snapshot: another connection (the daemon beside `redeemd sync`) may
        // commit between two statements, and a chain head and a last row from different moments
        // would read as rows removed or added.
        self.conn.execute_batch("BEGIN")?;
        let result = self.reload_in_transaction();
        let end = self.conn.execute_batch("ROLLBACK");
        result?;
        Ok(end?)
    }

    /// The opening checks ([`check::load_state`]); the first finding refuses.
    fn reload_in_transaction(&mut self) -> Result<(), Fault> {
        self.data_version = self
            .conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?;
        let mut findings = check::Findings::default();
        let loaded = check::load_state(&self.conn, &self.keys, &mut findings)?;
        let Some(loaded) = loaded else {
            return Err(findings
                .refusing
                .into_iter()
                .next()
                .map_or(Fault::Stale, Fault::Integrity));
        };
        for i in &findings.guards_dropped {
            tracing::error!(finding = %i, "the database was edited with a SQLite tool (run `redeemd journal verify`; keep the database as evidence)");
        }
        self.state = loaded.state;
        (self.cache, self.cache_installed_wall_ms) = match loaded.manifest {
            Some((m, installed)) => (Some(m), installed),
            None => (None, 0),
        };
        self.deny = loaded.deny;
        self.offline_redemptions = loaded.offline_redemptions;
        self.identity_fault = findings.declining.into_iter().next();
        if let Some(i) = &self.identity_fault {
            tracing::error!(finding = %i, "identity-attempt counters do not verify: every redemption that needs an identity check is declined until the database is restored");
        }
        Ok(())
    }

    /// Notes a write the storage refused (see [`StorageError`]), or that writes work again.
    fn note_storage<T>(&mut self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match &result {
            Err(e) if is_storage_failure(e) => {
                self.storage_error = Some(StorageError {
                    message: e.to_string(),
                    at_wall_ms: owner::wall_clock_ms(),
                });
            }
            Ok(_) => self.storage_error = None,
            Err(_) => {}
        }
        result
    }

    /// The last write the storage refused, if no write succeeded since (for `status`).
    pub fn storage_error(&self) -> Option<&StorageError> {
        self.storage_error.as_ref()
    }

    /// Reloads if another connection committed since we last looked (`PRAGMA data_version` does not
    /// change for this connection's own commits).
    fn refresh_if_changed(&mut self) -> Result<(), Fault> {
        let v: i64 = self
            .conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?;
        if v != self.data_version {
            self.reload()
        } else {
            Ok(())
        }
    }

    /// Catches up with what other connections committed since this one last looked: the daemon's
    /// redemptions and uploads when `redeemd sync` opened its store before it got the sync lock, or an
    /// acknowledgement `redeemd sync` recorded beside the daemon. A sync step plans from
    /// [`Self::journal_info`], the deny version and the cache version, so it refreshes first: a view
    /// older than the server's head looks like a database restored from a backup.
    pub fn refresh(&mut self) -> Result<(), StoreError> {
        self.refresh_if_changed().map_err(StoreError::from)
    }

    /// Runs a read-only decision step: after a refresh when forced or when a second of boot time has
    /// passed since the last check (menus are frequent; an external install is noticed within a second,
    /// or at once when a newer entry than the manifest in memory is met), retrying once after a reload.
    fn decide<T>(
        &mut self,
        force_refresh: bool,
        now: Now,
        f: impl Fn(&Self) -> Result<T, Fault>,
    ) -> Result<Result<T, Integrity>, StoreError> {
        let due =
            now.boot_ms < self.checked_at_boot_ms || now.boot_ms - self.checked_at_boot_ms >= 1000;
        let mut refresh = force_refresh || due;
        for _ in 0..2 {
            if refresh {
                self.checked_at_boot_ms = now.boot_ms;
                match self.refresh_if_changed() {
                    Ok(()) => {}
                    Err(Fault::Integrity(i)) => return Ok(Err(i)),
                    Err(Fault::Sql(e)) => return Err(e.into()),
                    Err(Fault::Stale) => {}
                }
            }
            // No explicit read transaction: a menu is one statement (entry and usage joined), and
            // BEGIN/COMMIT around it cost more than they saved.
            let result = f(self);
            match result {
                Ok(v) => return Ok(Ok(v)),
                Err(Fault::Integrity(i)) => return Ok(Err(i)),
                Err(Fault::Sql(e)) => return Err(e.into()),
                Err(Fault::Stale) => {
                    // Force a full reload on the retry.
                    self.data_version = i64::MIN;
                    refresh = true;
                }
            }
        }
        Ok(Err(Integrity::new(
            "cache",
            "entries newer than the installed manifest",
        )))
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }
    pub fn keys(&self) -> &TerminalKeys {
        &self.keys
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn journal_info(&self) -> JournalInfo {
        JournalInfo {
            head_seq: self.state.head_seq,
            synced_through_seq: self.state.synced_through_seq,
            offline_redemptions: self.offline_redemptions,
            last_trusted_wall_ms: self.state.last_trusted_wall_ms,
        }
    }

    pub fn cache_info(&self) -> Result<Option<CacheInfo>, StoreError> {
        let Some(m) = &self.cache else {
            return Ok(None);
        };
        let installed_wall_ms = self.cache_installed_wall_ms;
        let entries: i64 = self
            .conn
            // Cards the cache holds, not the usage-only rows of cards it dropped.
            .query_row(
                "SELECT count(*) FROM cache_entry WHERE version IS NOT NULL",
                [],
                |r| r.get(0),
            )?;
        Ok(Some(CacheInfo {
            manifest: m.clone(),
            installed_wall_ms,
            entries: entries as u64,
        }))
    }

    fn context<'a>(&'a self, cache: &'a Manifest) -> Context<'a> {
        Context {
            limits: &self.cfg.limits,
            cache: CacheFacts {
                version: cache.version,
                merchant_id: &self.cfg.merchant_id,
                merchant_categories: &cache.merchant_categories,
                issued_at_ms: cache.issued_at_ms,
                expires_at_ms: cache.expires_at_ms,
            },
            terminal: self.terminal_facts(),
        }
    }

    fn terminal_facts(&self) -> TerminalFacts {
        TerminalFacts {
            last_trusted_wall_ms: self.state.last_trusted_wall_ms,
            synced_through_seq: self.state.synced_through_seq,
            offline_redemptions: self.offline_redemptions,
        }
    }

    /// Loads and verifies a card's entry (MAC re-checked on every lookup) and its history (the card's
    /// journal records kept with its MACed usage anchor), from one row: one B-tree probe. The columns
    /// are verified where SQLite holds them (no copies); only the decoded card, the history and the
    /// history blob (to extend on commit) are kept. A row with usage but no entry is a card the cache
    /// no longer holds: unknown here.
    fn load_card(&self, card_ref: &CardRef, cache: &Manifest) -> Result<Option<LoadedCard>, Fault> {
        let what = || format!("cache entry {}", card_ref.to_hex());
        let mut stmt = self.conn.prepare_cached(concat!(
            "SELECT version, body, mac, ",
            schema::usage_columns!(),
            " FROM cache_entry WHERE card_ref = ?1"
        ))?;
        let mut rows = stmt.query([&card_ref.0[..]])?;
        let Some(row) = rows.next()? else {
            return Ok(None);
        };
        if entry_columns_absent(row)? {
            return Ok(None);
        }
        let version = column_i64(row, 0, &what, "version")?;
        let body = column_blob(row, 1, &what, "body")?;
        let mac = column_blob(row, 2, &what, "mac")?;
        let version =
            u64::try_from(version).map_err(|_| Integrity::new(what(), "negative version"))?;
        if !verify_entry_mac(
            &self.keys.cache,
            &cache.merchant_id,
            version,
            card_ref,
            EntryOp::Upsert,
            body,
            mac,
        ) {
            return Err(Integrity::new(what(), "MAC mismatch (row edited)").into());
        }
        if version > cache.version {
            return Err(Fault::Stale);
        }
        let card = Card::decode(body).map_err(|e| Integrity::new(what(), format!("body: {e}")))?;
        let (usage, history, history_blob) =
            self.check_usage(card_ref, UsageColumns::at(row, 3)?)?;
        Ok(Some(LoadedCard {
            card,
            entry_version: version,
            history,
            usage,
            history_blob,
        }))
    }

    /// Verifies a card's usage row (MAC over anchor and history, anchor = fold of history).
    /// No row means no local usage.
    fn check_usage(
        &self,
        card_ref: &CardRef,
        row: UsageColumns<'_>,
    ) -> Result<(UsageRow, Vec<JournalRecord>, Vec<u8>), Fault> {
        let what = || format!("card usage {}", card_ref.to_hex());
        let (Some(rows), Some(last_seq), Some(net_units), Some(blob), Some(mac)) =
            (row.rows, row.last_seq, row.net_units, row.history, row.mac)
        else {
            return if row.is_absent() {
                Ok((UsageRow::default(), Vec::new(), Vec::new()))
            } else {
                Err(Integrity::new(what(), "NULL column (row edited)").into())
            };
        };
        let u = UsageRow {
            rows: rows as u64,
            last_seq: last_seq as u64,
            net_units,
        };
        if rows < 0 || last_seq < 0 || !tags_equal(&u.mac(&self.keys.journal, card_ref, blob), mac)
        {
            return Err(Integrity::new(what(), "MAC mismatch (row edited)").into());
        }
        let history = decode_history(blob, card_ref, &self.cfg.terminal_id)?;
        let implied = UsageRow::fold(&history);
        if implied != u {
            return Err(Integrity::new(
                what(),
                format!("history implies {implied:?}, anchor says {u:?}"),
            )
            .into());
        }
        Ok((u, history, blob.to_vec()))
    }

    fn load_usage(
        &self,
        card_ref: &CardRef,
    ) -> Result<(UsageRow, Vec<JournalRecord>, Vec<u8>), Fault> {
        let mut stmt = self.conn.prepare_cached(concat!(
            "SELECT ",
            schema::usage_columns!(),
            " FROM cache_entry WHERE card_ref = ?1"
        ))?;
        let mut rows = stmt.query([&card_ref.0[..]])?;
        match rows.next()? {
            Some(row) => self.check_usage(card_ref, UsageColumns::at(row, 0)?),
            None => self.check_usage(card_ref, UsageColumns::default()),
        }
    }

    /// The card's identity-attempt counter, and whether it has a row (a new row counts in the
    /// terminal state).
    fn load_identity_state(&self, card_ref: &CardRef) -> Result<(IdentityState, bool), Fault> {
        if let Some(i) = &self.identity_fault {
            return Err(Fault::Integrity(i.clone()));
        }
        let row: Option<(i64, i64, Vec<u8>)> = self
            .conn
            .prepare_cached(
                "SELECT failures, locked_until_ms, mac FROM identity_attempt WHERE card_ref = ?1",
            )?
            .query_row([&card_ref.0[..]], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()
            .map_err(|e| match e {
                rusqlite::Error::InvalidColumnType(..) => Fault::Integrity(Integrity::new(
                    format!("identity attempts {}", card_ref.to_hex()),
                    "a column has the wrong type (row edited)",
                )),
                e => Fault::Sql(e),
            })?;
        let Some((failures, locked_until_ms, mac)) = row else {
            return Ok((IdentityState::default(), false));
        };
        let s = IdentityState {
            failures: u32::try_from(failures).unwrap_or(u32::MAX),
            locked_until_ms,
        };
        if !tags_equal(&identity_mac(&self.keys.journal, card_ref, &s), &mac) {
            return Err(Integrity::new(
                format!("identity attempts {}", card_ref.to_hex()),
                "MAC mismatch (row edited)",
            )
            .into());
        }
        Ok((s, true))
    }

    /// The menu for a presented card: usable entries with uses left, or a decline. Stores nothing
    /// (a reader's CARD_PRESENTED is answered by [`Store::answer_card_presented`], which stores it).
    pub fn menu(&mut self, card_number: &str, now: Now) -> Result<MenuOutcome, StoreError> {
        let card_ref = CardNumber::parse(card_number)
            .ok()
            .map(|n| n.card_ref(&self.keys.card_token));
        Ok(
            match self.decide(false, now, |s| s.menu_inner(card_ref.as_ref(), now))? {
                Ok(o) => o,
                Err(i) => MenuOutcome::Declined(integrity_decline(&i)),
            },
        )
    }

    /// The menu for a card reference (`None`: the card number did not parse).
    fn menu_inner(&self, card_ref: Option<&CardRef>, now: Now) -> Result<MenuOutcome, Fault> {
        let declined = |reason| {
            Ok(MenuOutcome::Declined(Declined {
                reason,
                remaining: None,
                detail: None,
            }))
        };
        let Some(card_ref) = card_ref.copied() else {
            return declined(DeclineReason::BadCardNumber);
        };
        let Some(cache) = self.cache.as_ref() else {
            return declined(DeclineReason::NoCache);
        };
        let Some(loaded) = self.load_card(&card_ref, cache)? else {
            return declined(unknown_card_reason(self.deny_status(&card_ref, None)));
        };
        let view = CardView {
            card: &loaded.card,
            entry_version: loaded.entry_version,
            history: &loaded.history,
            denied: self.deny_status(&card_ref, Some(loaded.entry_version)),
        };
        Ok(match engine::menu(&self.context(cache), view, now) {
            Ok(m) => MenuOutcome::Menu(m),
            Err(reason) => MenuOutcome::Declined(Declined {
                reason,
                remaining: None,
                detail: None,
            }),
        })
    }

    fn decide_redeem(
        &self,
        req: &RedeemFacts<'_>,
        now: Now,
    ) -> Result<(Decision, Option<Write>), Fault> {
        let card_ref = req.card_ref;
        let Some(cache) = self.cache.as_ref() else {
            return decline(DeclineReason::NoCache);
        };
        let Some(loaded) = self.load_card(&card_ref, cache)? else {
            return decline(unknown_card_reason(self.deny_status(&card_ref, None)));
        };
        if req.entry_version != loaded.entry_version {
            return decline(DeclineReason::MenuChanged);
        }
        // The attempt counter only matters (and its row is only read and MAC-checked) when the
        // card can ask for identity at all: one B-tree probe less for every other redemption.
        let (identity_state, identity_row) = if engine::identity_ever_needed(&loaded.card) {
            self.load_identity_state(&card_ref)?
        } else {
            (IdentityState::default(), false)
        };
        let verifier = loaded
            .card
            .holder
            .as_ref()
            .and_then(|h| h.identity_verifier);
        let identity = match (req.identity, verifier) {
            (None, _) => IdentityInput::NotProvided,
            (Some(_), None) => IdentityInput::Matches, // nothing to check against: the engine will not ask
            (Some(data), Some(v)) if identity_matches(&self.keys.identity, &card_ref, data, &v) => {
                IdentityInput::Matches
            }
            (Some(_), Some(_)) => IdentityInput::DoesNotMatch,
        };
        let ctx = self.context(cache);
        let view = CardView {
            card: &loaded.card,
            entry_version: loaded.entry_version,
            history: &loaded.history,
            denied: self.deny_status(&card_ref, Some(loaded.entry_version)),
        };
        let verdict = engine::decide_redeem(&ctx, view, req.items, identity_state, identity, now);
        let identity_write = verdict.identity_update.map(|s| (card_ref, s, identity_row));
        match verdict.result {
            Err(reason) => {
                let remaining = engine::menu(&ctx, view, now).ok();
                let write = identity_write.map(|identity| Write {
                    records: Vec::new(),
                    usage: None,
                    identity: Some(identity),
                    counts_as_redemption: false,
                });
                Ok((
                    Decision::Declined(Declined {
                        reason,
                        remaining,
                        detail: None,
                    }),
                    write,
                ))
            }
            Ok(lines) => {
                let group = self.state.head_seq + 1;
                let code = auth_code(&self.keys.journal, &self.cfg.terminal_id, group);
                let count = u16::try_from(lines.len()).unwrap_or(u16::MAX);
                let records: Vec<JournalRecord> = lines
                    .iter()
                    .enumerate()
                    .map(|(i, l)| JournalRecord {
                        terminal_id: self.cfg.terminal_id.clone(),
                        seq: group + i as u64,
                        kind: RecordKind::Redeem,
                        auth_code: code.clone(),
                        merchant_id: self.cfg.merchant_id.clone(),
                        card_ref,
                        package_id: l.package_id.clone(),
                        service_code: l.service_code.clone(),
                        item_title: l.title.clone(),
                        quantity: l.quantity,
                        amount_fen: l.amount_fen,
                        original_seq: 0,
                        group_seq: group,
                        line: i as u16,
                        line_count: count,
                        reader_id: req.reader_id.to_owned(),
                        reader_txn_id: u64::from(req.txn_id),
                        cashier_id: req.cashier_id.to_owned(),
                        wall_ms: now.wall_ms,
                        boot_ms: now.boot_ms,
                        cache_version: cache.version,
                        entry_version: loaded.entry_version,
                        prev_mac: [0; 32],
                    })
                    .collect();
                let usage = (card_ref, loaded.usage, loaded.history_blob.clone());
                let approval = Approval {
                    auth_code: code,
                    first_seq: group,
                    masked_number: loaded.card.masked_number.clone(),
                    entry_version: loaded.entry_version,
                    wall_ms: now.wall_ms,
                    lines,
                };
                Ok((
                    Decision::Redeemed(approval),
                    Some(Write {
                        records,
                        usage: Some(usage),
                        identity: identity_write,
                        counts_as_redemption: true,
                    }),
                ))
            }
        }
    }

    /// Voids the redemption with `original_auth_code`: a new journal record per line that restores
    /// the uses. Allowed once, within the configured window.
    fn decide_void(
        &self,
        req: &VoidFacts<'_>,
        now: Now,
    ) -> Result<(Decision, Option<Write>), Fault> {
        let Some(group) = parse_auth_code(
            &self.keys.journal,
            &self.cfg.terminal_id,
            req.original_auth_code,
        ) else {
            return decline(DeclineReason::UnknownAuthCode);
        };
        let originals = self.group_rows(group)?;
        let Some(first) = originals.first() else {
            return decline(DeclineReason::UnknownAuthCode);
        };
        let card_ref = first.card_ref;
        let last = group + originals.len() as u64 - 1;
        let already: bool = self.conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM journal WHERE kind = 2 AND original_seq BETWEEN ?1 AND ?2)")?.query_row(
            params![group as i64, last as i64],
            |r| r.get(0),
        )?;
        if let Err(reason) = engine::decide_void(
            &self.cfg.limits,
            self.terminal_facts(),
            &originals,
            already,
            now,
        ) {
            return decline(reason);
        }
        let (old_usage, history, history_blob) = self.load_usage(&card_ref)?;
        let first_seq = self.state.head_seq + 1;
        let code = auth_code(&self.keys.journal, &self.cfg.terminal_id, first_seq);
        let count = u16::try_from(originals.len()).unwrap_or(u16::MAX);
        let cache_version = self.cache.as_ref().map_or(0, |c| c.version);
        let records: Vec<JournalRecord> = originals
            .iter()
            .enumerate()
            .map(|(i, o)| JournalRecord {
                seq: first_seq + i as u64,
                kind: RecordKind::Void,
                auth_code: code.clone(),
                original_seq: o.seq,
                group_seq: first_seq,
                line: i as u16,
                line_count: count,
                reader_id: req.reader_id.to_owned(),
                reader_txn_id: u64::from(req.txn_id),
                cashier_id: req.cashier_id.to_owned(),
                wall_ms: now.wall_ms,
                boot_ms: now.boot_ms,
                cache_version,
                prev_mac: [0; 32],
                ..o.clone()
            })
            .collect();
        let usage = (card_ref, old_usage, history_blob);
        // Uses left after the void, if the card is still cached.
        let cached = match &self.cache {
            Some(cache) => self.load_card(&card_ref, cache)?,
            None => None,
        };
        let mut after = history.clone();
        after.extend(records.iter().cloned());
        let lines = records
            .iter()
            .map(|r| {
                let uses_left_after = cached.as_ref().and_then(|c| {
                    let usage = Usage::fold(&c.card, &after, 0, 0, 0);
                    c.card
                        .entries()
                        .find(|(_, p, it)| {
                            p.id == r.package_id && it.service_code == r.service_code
                        })
                        .map(|(_, p, it)| usage.uses_left(p, it))
                });
                VoidLine {
                    original_seq: r.original_seq,
                    package_id: r.package_id.clone(),
                    service_code: r.service_code.clone(),
                    title: r.item_title.clone(),
                    quantity: r.quantity,
                    amount_fen: r.amount_fen,
                    uses_left_after,
                }
            })
            .collect();
        let approval = VoidApproval {
            auth_code: code,
            original_auth_code: first.auth_code.clone(),
            first_seq,
            wall_ms: now.wall_ms,
            lines,
        };
        Ok((
            Decision::Voided(approval),
            Some(Write {
                records,
                usage: Some(usage),
                identity: None,
                counts_as_redemption: false,
            }),
        ))
    }

    /// The verified lines of the redemption group starting at `group` (empty if there is none).
    fn group_rows(&self, group: u64) -> Result<Vec<JournalRecord>, Fault> {
        let mut stmt = self.conn.prepare_cached(JOURNAL_GROUP)?;
        let mut rows = stmt.query(params![group as i64, engine::MAX_LINES as i64])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let (rec, mac, record_id) = record_from_row(row, &self.cfg.terminal_id)?;
            check_record(&rec, &mac, &record_id, &self.keys.journal)?;
            out.push(rec);
        }
        if out
            .first()
            .is_some_and(|r| r.seq != group || usize::from(r.line_count) != out.len())
        {
            return Ok(Vec::new());
        }
        Ok(out)
    }

    /// Commits (or rolls back) the transaction an answer opened (`answers`); after a failed COMMIT,
    /// rolls back whatever SQLite left open.
    fn end_transaction(&self, commit: bool) -> Result<(), StoreError> {
        if self.conn.is_autocommit() {
            return Ok(());
        }
        let result = self
            .conn
            .execute_batch(if commit { "COMMIT" } else { "ROLLBACK" });
        if result.is_err() && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        Ok(result?)
    }

    /// Writes what a decision writes, in the open transaction: journal rows (chained), usage anchor,
    /// identity counter, chain head. Returns the state to apply once committed and the first journal
    /// seq written.
    fn write_decision(
        &self,
        write: Option<Write>,
        now: Now,
    ) -> Result<(Pending, Option<u64>), StoreError> {
        let tx = &self.conn;
        let mut pending = Pending {
            state: self.state.clone(),
            counts_as_redemption: false,
        };
        let mut first_seq = None;
        if let Some(w) = write {
            let (mut state, first, written) = append(tx, &self.keys, &self.state, w.records, now)?;
            first_seq = first;
            if let Some((card, usage, blob)) = w.usage {
                write_usage(tx, &self.keys, &card, usage, blob, &written)?;
            }
            if let Some((card, s, had_row)) = w.identity {
                tx.prepare_cached("INSERT INTO identity_attempt (card_ref, failures, locked_until_ms, mac) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (card_ref) DO UPDATE SET failures = excluded.failures, locked_until_ms = excluded.locked_until_ms, mac = excluded.mac")?
                    .execute(params![&card.0[..], s.failures, s.locked_until_ms, &identity_mac(&self.keys.journal, &card, &s)[..]])?;
                if !had_row {
                    state.identity_count += 1;
                }
            }
            if state != self.state {
                write_terminal_row(tx, &state, &self.keys)?;
            }
            pending.state = state;
            pending.counts_as_redemption = w.counts_as_redemption;
        }
        Ok((pending, first_seq))
    }

    /// Switches the connection's commits between `synchronous=NORMAL` (a CARD_PRESENTED's answer,
    /// `answers`) and `FULL` (everything else), between transactions.
    fn set_synchronous_normal(&mut self, normal: bool) -> Result<(), StoreError> {
        if self.synchronous_normal != normal {
            self.conn.execute_batch(if normal {
                "PRAGMA synchronous = NORMAL"
            } else {
                "PRAGMA synchronous = FULL"
            })?;
            self.synchronous_normal = normal;
        }
        Ok(())
    }

    /// Whether [`Self::maintenance`] has work to do (a checkpoint is due): the daemon asks while it
    /// holds the store for a decision, and hands the maintenance to its blocking pool only then.
    pub fn maintenance_due(&self) -> bool {
        self.commits_since_checkpoint >= CHECKPOINT_EVERY_COMMITS
    }

    /// Housekeeping for idle moments: the daemon calls it whenever no request is waiting (after each
    /// reply is sent is fine; it is cheap when there is nothing to do). It keeps WAL checkpoints off the
    /// commit path:
    ///
    /// * once [`CHECKPOINT_EVERY_COMMITS`] commits have accumulated in the WAL, a PASSIVE checkpoint
    ///   copies them into the database file and syncs it (never waiting for other connections);
    /// * when that emptied the WAL, a no-op write transaction (it rewrites `user_version` with its own
    ///   value) restarts the WAL from its beginning now. Otherwise the next redemption would restart it,
    ///   and a restart costs an extra fsync of the new WAL header inside that redemption's commit.
    ///
    /// Nothing is at stake for durability: every committed transaction is already synced in the WAL.
    /// Skipping it is safe too (a commit then checkpoints by itself at [`WAL_AUTOCHECKPOINT_PAGES`]).
    pub fn maintenance(&mut self) -> Result<Maintenance, StoreError> {
        let result = self.maintenance_inner();
        match result {
            // An idle checkpoint that did nothing says nothing about the disk.
            Ok(m) if !m.checkpointed => Ok(m),
            r => self.note_storage(r),
        }
    }

    fn maintenance_inner(&mut self) -> Result<Maintenance, StoreError> {
        if self.commits_since_checkpoint < CHECKPOINT_EVERY_COMMITS {
            return Ok(Maintenance::default());
        }
        let (busy, log, done): (i64, i64, i64) =
            self.conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
        let complete = busy == 0 && done >= log;
        if complete {
            self.commits_since_checkpoint = 0;
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let v: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            tx.pragma_update(None, "user_version", v)?;
            tx.commit()?;
        }
        Ok(Maintenance {
            checkpointed: true,
            wal_frames: u64::try_from(log).unwrap_or(0),
            checkpointed_frames: u64::try_from(done).unwrap_or(0),
            busy: !complete,
        })
    }

    /// Records that the platform acknowledged the journal through `through_seq` (offline allowances reset).
    pub fn mark_synced(&mut self, through_seq: u64) -> Result<(), StoreError> {
        let result = self.mark_synced_inner(through_seq);
        self.note_storage(result)
    }

    fn mark_synced_inner(&mut self, through_seq: u64) -> Result<(), StoreError> {
        if through_seq > self.state.head_seq || through_seq < self.state.synced_through_seq {
            return Err(StoreError::BadSyncAck {
                through: through_seq,
                head: self.state.head_seq,
                current: self.state.synced_through_seq,
            });
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // The row as committed now: another connection may have written it since we loaded it.
        let mut next = read_terminal_row(&tx, &self.keys)?;
        if through_seq <= next.synced_through_seq {
            // Another connection (`redeemd sync` beside the daemon) recorded it first: nothing to
            // write, but our view must catch up, or the caller would see the records as still
            // unacknowledged and send them again, and again.
            drop(tx);
            return self.reload().map_err(StoreError::from);
        }
        if through_seq > next.head_seq {
            return Err(StoreError::BadSyncAck {
                through: through_seq,
                head: next.head_seq,
                current: next.synced_through_seq,
            });
        }
        next.synced_through_seq = through_seq;
        write_terminal_row(&tx, &next, &self.keys)?;
        tx.commit()?;
        self.reload().map_err(StoreError::from)
    }

    /// Wall time of the oldest record the platform has not acknowledged, if any.
    pub fn oldest_unsynced_wall_ms(&self) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT wall_ms FROM journal WHERE seq = ?1")?
            .query_row([self.state.synced_through_seq as i64 + 1], |r| r.get(0))
            .optional()?)
    }

    /// Journal records with seq ≥ `from_seq`, in order, each verified on its own (not the chain: use
    /// [`verify::journal`]). For the sync driver and exports.
    pub fn journal_records(
        &self,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<(JournalRecord, Tag)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(JOURNAL_FROM)?;
        let mut rows = stmt.query(params![seq_param(from_seq), limit as i64])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let (rec, mac, record_id) = record_from_row(row, &self.cfg.terminal_id)?;
            check_record(&rec, &mac, &record_id, &self.keys.journal)?;
            out.push((rec, mac));
        }
        Ok(out)
    }

    /// Journal rows `from_seq..` (at most `limit`) **as stored**, for upload: a row whose MAC or record id
    /// does not check is returned anyway, with its finding. The platform verifies every record itself and
    /// refuses such a row (`record_mac_invalid`), which names it (terminal, seq) in its exceptions list and
    /// keeps it out of clearing; withholding it would only leave the platform with a silent gap. A row whose
    /// columns cannot make a record at all is an error, as in [`Self::journal_records`].
    pub fn journal_records_as_stored(
        &self,
        from_seq: u64,
        limit: usize,
    ) -> Result<RowsAsStored, StoreError> {
        let mut stmt = self.conn.prepare_cached(JOURNAL_FROM)?;
        let mut rows = stmt.query(params![seq_param(from_seq), limit as i64])?;
        let (mut out, mut findings) = (Vec::new(), Vec::new());
        while let Some(row) = rows.next()? {
            let (rec, mac, record_id) = record_from_row(row, &self.cfg.terminal_id)?;
            if let Err(finding) = check_record(&rec, &mac, &record_id, &self.keys.journal) {
                findings.push(finding);
            }
            out.push((rec, mac));
        }
        Ok((out, findings))
    }

    /// Bench/test support: appends `n` approved single-line redemptions in one transaction through the
    /// normal chain and anchor code, bypassing the engine (to build a million-row journal quickly).
    #[doc(hidden)]
    pub fn seed_redemptions(
        &mut self,
        redemptions: &mut dyn Iterator<Item = (CardRef, String, String, u32)>,
        now: Now,
    ) -> Result<u64, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut state = self.state.clone();
        let mut n = 0;
        for (card_ref, package_id, service_code, quantity) in redemptions {
            let seq = state.head_seq + 1;
            let rec = JournalRecord {
                terminal_id: self.cfg.terminal_id.clone(),
                seq,
                kind: RecordKind::Redeem,
                auth_code: auth_code(&self.keys.journal, &self.cfg.terminal_id, seq),
                merchant_id: self.cfg.merchant_id.clone(),
                card_ref,
                package_id,
                service_code,
                item_title: String::new(),
                quantity,
                amount_fen: 0,
                original_seq: 0,
                group_seq: seq,
                line: 0,
                line_count: 1,
                reader_id: "seed".into(),
                reader_txn_id: seq,
                cashier_id: "seed".into(),
                wall_ms: now.wall_ms,
                boot_ms: now.boot_ms,
                cache_version: 0,
                entry_version: 0,
                prev_mac: [0; 32],
            };
            let prev: Option<(i64, i64, i64, Vec<u8>)> = tx
                .prepare_cached(
                    "SELECT coalesce(usage_rows, 0), coalesce(usage_last_seq, 0), \
                     coalesce(usage_net_units, 0), coalesce(usage_history, x'') \
                     FROM cache_entry WHERE card_ref = ?1",
                )?
                .query_row([&card_ref.0[..]], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()?;
            let (usage, blob) = prev.map_or((UsageRow::default(), Vec::new()), |(r, l, u, h)| {
                (
                    UsageRow {
                        rows: r as u64,
                        last_seq: l as u64,
                        net_units: u,
                    },
                    h,
                )
            });
            let (next, _, written) = append(&tx, &self.keys, &state, vec![rec], now)?;
            state = next;
            write_usage(&tx, &self.keys, &card_ref, usage, blob, &written)?;
            n += 1;
        }
        write_terminal_row(&tx, &state, &self.keys)?;
        tx.commit()?;
        self.state = state;
        self.reload().map_err(StoreError::from)?;
        Ok(n)
    }
}

/// What the in-memory state becomes once a decision's transaction commits.
struct Pending {
    state: TerminalRow,
    counts_as_redemption: bool,
}

/// What a decision writes besides its answer.
struct Write {
    records: Vec<JournalRecord>,
    /// The card whose usage row to extend: its anchor and history blob as loaded.
    usage: Option<(CardRef, UsageRow, Vec<u8>)>,
    /// The card's identity counter, and whether it already had a row.
    identity: Option<(CardRef, IdentityState, bool)>,
    counts_as_redemption: bool,
}

/// Chains and inserts `records` (seqs already assigned from `state.head_seq + 1`). Returns the new
/// state (chain head, last trusted time), which the caller writes, and the first seq written.
fn append(
    tx: &Connection,
    keys: &TerminalKeys,
    state: &TerminalRow,
    records: Vec<JournalRecord>,
    now: Now,
) -> rusqlite::Result<Appended> {
    let mut next = state.clone();
    let first = records.first().map(|r| r.seq);
    let mut written = Vec::with_capacity(records.len());
    let mut stmt = tx.prepare_cached(JOURNAL_INSERT)?;
    for mut rec in records {
        rec.seq = next.head_seq + 1;
        rec.prev_mac = next.head_mac;
        let mac = rec.mac(&keys.journal);
        stmt.execute(params![
            rec.seq as i64,
            rec.record_id(),
            rec.kind as u8,
            rec.auth_code,
            rec.merchant_id,
            &rec.card_ref.0[..],
            rec.package_id,
            rec.service_code,
            rec.item_title,
            rec.quantity,
            rec.amount_fen as i64,
            rec.original_seq as i64,
            rec.group_seq as i64,
            rec.line,
            rec.line_count,
            rec.reader_id,
            rec.reader_txn_id as i64,
            rec.cashier_id,
            rec.wall_ms,
            rec.boot_ms as i64,
            rec.cache_version as i64,
            rec.entry_version as i64,
            &rec.prev_mac[..],
            &mac[..],
        ])?;
        next.head_seq = rec.seq;
        next.head_mac = mac;
        written.push((rec, mac));
    }
    if first.is_some() {
        next.last_trusted_wall_ms = next.last_trusted_wall_ms.max(now.wall_ms);
    }
    Ok((next, first, written))
}

/// The chain head after an append, the first seq written, and the records with their MACs.
type Appended = (TerminalRow, Option<u64>, Vec<(JournalRecord, Tag)>);

/// Extends a card's usage row with newly written records, in the caller's transaction.
fn write_usage(
    tx: &Connection,
    keys: &TerminalKeys,
    card: &CardRef,
    mut usage: UsageRow,
    mut blob: Vec<u8>,
    written: &[(JournalRecord, Tag)],
) -> rusqlite::Result<()> {
    for (rec, _) in written.iter().filter(|(r, _)| r.card_ref == *card) {
        encode_history(&mut blob, rec);
        usage.add(rec);
    }
    tx.prepare_cached(schema::UPSERT_USAGE)?.execute(params![
        &card.0[..],
        usage.rows as i64,
        usage.last_seq as i64,
        usage.net_units,
        &blob,
        &usage.mac(&keys.journal, card, &blob)[..]
    ])?;
    Ok(())
}

pub(crate) fn write_terminal_row(
    tx: &Connection,
    row: &TerminalRow,
    keys: &TerminalKeys,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO terminal_state (id, terminal_id, merchant_id, head_seq, head_mac, last_trusted_wall_ms, synced_through_seq, cache_version, deny_version, deny_count, identity_count, mac_format, mac)
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (id) DO UPDATE SET terminal_id = excluded.terminal_id, merchant_id = excluded.merchant_id,
             head_seq = excluded.head_seq, head_mac = excluded.head_mac,
             last_trusted_wall_ms = excluded.last_trusted_wall_ms,
             synced_through_seq = excluded.synced_through_seq, cache_version = excluded.cache_version,
             deny_version = excluded.deny_version, deny_count = excluded.deny_count,
             identity_count = excluded.identity_count, mac_format = excluded.mac_format,
             mac = excluded.mac",
    )?
    .execute(params![
        row.terminal_id,
        row.merchant_id,
        row.head_seq as i64,
        &row.head_mac[..],
        row.last_trusted_wall_ms,
        row.synced_through_seq as i64,
        row.cache_version as i64,
        i64::try_from(row.deny_version).unwrap_or(i64::MAX),
        i64::try_from(row.deny_count).unwrap_or(i64::MAX),
        i64::try_from(row.identity_count).unwrap_or(i64::MAX),
        row.mac_format(),
        &row.mac(&keys.journal)[..],
    ])?;
    Ok(())
}

/// Reads and verifies the terminal state row: every column of its type, its MAC in the form its
/// `mac_format` names.
fn read_terminal_row(conn: &Connection, keys: &TerminalKeys) -> Result<TerminalRow, Fault> {
    let what = "terminal state";
    let mut stmt = conn.prepare_cached(
        "SELECT terminal_id, merchant_id, head_seq, head_mac, last_trusted_wall_ms, synced_through_seq, \
         cache_version, deny_version, deny_count, identity_count, mac_format, mac FROM terminal_state WHERE id = 1",
    )?;
    let mut rows = stmt.query([])?;
    let Some(r) = rows.next()? else {
        return Err(Integrity::new(what, "row missing (deleted)").into());
    };
    let name = || what.to_owned();
    let text = |i: usize, col: &str| -> Result<String, Fault> {
        match r.get_ref(i)? {
            rusqlite::types::ValueRef::Text(t) => {
                std::str::from_utf8(t).map(str::to_owned).map_err(|_| {
                    Integrity::new(what, format!("bad column: {col} is not UTF-8")).into()
                })
            }
            other => Err(Integrity::new(
                what,
                format!("bad column: {col} is {}, not text", other.data_type()),
            )
            .into()),
        }
    };
    let unsigned = |i: usize, col: &str| -> Result<u64, Fault> {
        let v = column_i64(r, i, &name, col)?;
        u64::try_from(v)
            .map_err(|_| Integrity::new(what, format!("column {col}: {v} is negative")).into())
    };
    let format = column_i64(r, 10, &name, "mac_format")?;
    if !matches!(format, 1 | 2) {
        return Err(
            Integrity::new(what, format!("column mac_format: {format} is not 1 or 2")).into(),
        );
    }
    let head_mac: Tag = column_blob(r, 3, &name, "head_mac")?
        .try_into()
        .map_err(|_| Integrity::new(what, "head MAC is not 32 bytes"))?;
    let row = TerminalRow {
        terminal_id: text(0, "terminal_id")?,
        merchant_id: text(1, "merchant_id")?,
        head_seq: unsigned(2, "head_seq")?,
        head_mac,
        last_trusted_wall_ms: column_i64(r, 4, &name, "last_trusted_wall_ms")?,
        synced_through_seq: unsigned(5, "synced_through_seq")?,
        cache_version: unsigned(6, "cache_version")?,
        deny_version: unsigned(7, "deny_version")?,
        deny_count: unsigned(8, "deny_count")?,
        identity_count: unsigned(9, "identity_count")?,
        sealed: format == 2,
    };
    let mac = column_blob(r, 11, &name, "mac")?;
    if !tags_equal(&row.mac(&keys.journal), mac) {
        return Err(Integrity::new(what, "MAC mismatch (row edited)").into());
    }
    Ok(row)
}

/// Reads and verifies the installed manifest: the platform's signature, the version column against
/// it, its terminal and merchant, and (sealed state) the terminal's MAC over the row, which covers
/// the install time. Returns the manifest and when it was installed.
fn read_manifest(
    conn: &Connection,
    keys: &TerminalKeys,
    state: &TerminalRow,
) -> Result<Option<(Manifest, i64)>, Fault> {
    let what = || "cache manifest".to_owned();
    let mut stmt = conn.prepare_cached(
        "SELECT version, signed, installed_wall_ms, mac FROM cache_manifest WHERE id = 1",
    )?;
    let mut rows = stmt.query([])?;
    let Some(r) = rows.next()? else {
        return Ok(None);
    };
    let version = column_i64(r, 0, &what, "version")?;
    let signed = column_blob(r, 1, &what, "signed")?;
    let installed = column_i64(r, 2, &what, "installed_wall_ms")?;
    let m = Manifest::verify_signed(&keys.cache, signed)
        .map_err(|e| Integrity::new(what(), e.to_string()))?;
    if u64::try_from(version).ok() != Some(m.version) {
        return Err(Integrity::new(
            what(),
            format!(
                "version column {version} differs from the signed version {}",
                m.version
            ),
        )
        .into());
    }
    if m.merchant_id != state.merchant_id || m.terminal_id != keys.terminal_id {
        return Err(Integrity::new(what(), "signed for another merchant or terminal").into());
    }
    match r.get_ref(3)? {
        rusqlite::types::ValueRef::Null if !state.sealed => {}
        rusqlite::types::ValueRef::Blob(mac)
            if tags_equal(
                &rows::manifest_row_mac(&keys.journal, version, signed, installed),
                mac,
            ) => {}
        rusqlite::types::ValueRef::Null => {
            return Err(Integrity::new(what(), "row MAC missing (row edited)").into());
        }
        _ => return Err(Integrity::new(what(), "MAC mismatch (row edited)").into()),
    }
    Ok(Some((m, installed)))
}

/// Whether a cache-entry row's entry columns (the first three selected: version, body, mac) are all
/// NULL: a card whose usage this terminal keeps but that the installed cache no longer holds. Some NULL
/// and some not is an edited row, caught by the column checks that follow.
fn entry_columns_absent(row: &rusqlite::Row<'_>) -> Result<bool, Fault> {
    for i in 0..3 {
        if row.get_ref(i)? != rusqlite::types::ValueRef::Null {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A card's usage-row columns as SQLite holds them (all `None`: the card has no row).
#[derive(Default)]
struct UsageColumns<'r> {
    rows: Option<i64>,
    last_seq: Option<i64>,
    net_units: Option<i64>,
    history: Option<&'r [u8]>,
    mac: Option<&'r [u8]>,
}

impl<'r> UsageColumns<'r> {
    /// The five usage columns starting at `first` (rows, last_seq, net_units, history, mac).
    fn at(row: &'r rusqlite::Row<'r>, first: usize) -> Result<Self, Fault> {
        let card = || "card usage".to_owned();
        let int = |i: usize, name: &str| -> Result<Option<i64>, Fault> {
            match row.get_ref(first + i)? {
                rusqlite::types::ValueRef::Null => Ok(None),
                _ => column_i64(row, first + i, &card, name).map(Some),
            }
        };
        let blob = |i: usize, name: &str| -> Result<Option<&'r [u8]>, Fault> {
            match row.get_ref(first + i)? {
                rusqlite::types::ValueRef::Null => Ok(None),
                _ => column_blob(row, first + i, &card, name).map(Some),
            }
        };
        Ok(Self {
            rows: int(0, "rows")?,
            last_seq: int(1, "last_seq")?,
            net_units: int(2, "net_units")?,
            history: blob(3, "history")?,
            mac: blob(4, "mac")?,
        })
    }

    fn is_absent(&self) -> bool {
        self.rows.is_none()
            && self.last_seq.is_none()
            && self.net_units.is_none()
            && self.history.is_none()
            && self.mac.is_none()
    }
}

/// An integer column of a MACed row; another type is tampering, named.
fn column_i64(
    row: &rusqlite::Row<'_>,
    idx: usize,
    what: &dyn Fn() -> String,
    name: &str,
) -> Result<i64, Fault> {
    match row.get_ref(idx)? {
        rusqlite::types::ValueRef::Integer(v) => Ok(v),
        other => Err(Integrity::new(
            what(),
            format!(
                "bad column: {name} is {}, not an integer",
                other.data_type()
            ),
        )
        .into()),
    }
}

/// A blob column of a MACed row, borrowed from SQLite; another type is tampering, named.
fn column_blob<'r>(
    row: &'r rusqlite::Row<'_>,
    idx: usize,
    what: &dyn Fn() -> String,
    name: &str,
) -> Result<&'r [u8], Fault> {
    match row.get_ref(idx)? {
        rusqlite::types::ValueRef::Blob(b) => Ok(b),
        other => Err(Integrity::new(
            what(),
            format!("bad column: {name} is {}, not a blob", other.data_type()),
        )
        .into()),
    }
}

/// A seq bound as SQLite holds it: seqs are below `i64::MAX`, so a larger `from_seq` (a typo on
/// `journal export --from-seq`) selects nothing, instead of wrapping to a negative bound that selects
/// everything.
fn seq_param(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// The refusal for a card that is not in the cache: its deny status when the platform reported it
/// (more useful at the counter than "unknown"), else `CardUnknown`.
fn unknown_card_reason(denied: Option<redeemd_contract::DenyStatus>) -> DeclineReason {
    match denied {
        Some(redeemd_contract::DenyStatus::Lost) => DeclineReason::CardLost,
        Some(redeemd_contract::DenyStatus::Frozen) => DeclineReason::CardFrozen,
        Some(redeemd_contract::DenyStatus::Cancelled) => DeclineReason::CardCancelled,
        Some(redeemd_contract::DenyStatus::Reissued) => DeclineReason::CardReissued,
        None => DeclineReason::CardUnknown,
    }
}

/// A plain refusal that writes nothing but its outcome.
fn decline(reason: DeclineReason) -> Result<(Decision, Option<Write>), Fault> {
    Ok((
        Decision::Declined(Declined {
            reason,
            remaining: None,
            detail: None,
        }),
        None,
    ))
}

fn integrity_decline(i: &Integrity) -> Declined {
    Declined {
        reason: DeclineReason::IntegrityFailure,
        remaining: None,
        detail: Some(i.to_string()),
    }
}
