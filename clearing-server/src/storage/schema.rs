//! The schema of each engine, by version. The statements (in the operation modules) are shared; the
//! DDL is not, because the engines' types differ (`INTEGER`/`BLOB` and rowid tables in SQLite, `BIGINT`/
//! `BYTEA` and identity columns in PostgreSQL).
//!
//! Versions, applied in order by each driver's `migrate`, existing data kept:
//! 1. terminals, journal, batch closes, exceptions;
//! 2. merchants, cards, packages and items, the entitlement version counter, the
//!    `(terminal, card_ref) → card` index, scope history, deny lists, persistent nonces, and
//!    `journal.card_id` (the platform card a record was mapped to);
//! 3. every card status change with its time;
//! 4. the `(terminal, card_ref)` index is gone: a terminal's card reference is computed from the card
//!    number when a bundle is built and decrypted back to it when a record arrives, so storage grows
//!    with terminals plus cards, not their product;
//! 5. secrets sealed at rest under the platform master key (`crate::vault`): `card.number` becomes
//!    `number_key` (the number's keyed lookup hash) beside `number_sealed`; identity data and terminal
//!    secrets move to `identity_sealed` and `secret_sealed`; `sealed_with` names the key; `master_key`
//!    records which key the database is bound to. A database of version 4 is migrated by DDL, then
//!    sealed row by row the first time a server starts with the key (`super::sealing::bind`);
//! 6. the platform judges every record (`crate::core::judge`): `journal.held` (NULL payable, else the
//!    exception code that holds it) and `journal.void_of` (a void's original seq); `item_price`, the
//!    price of each card's item from each entitlement version on (a record is priced at its entry
//!    version; an existing database's prices count from version 0); `exception.resolved_ms` (a refused
//!    seq later stored correctly). Records stored before version 6 count as payable;
//! 7. the platform's people and its fleet (`crate::service`): API keys (`credential`, the secret's hash
//!    only) and console logins (`console_user`, argon2id), the audit log (`audit`), each terminal's
//!    latest health report (`terminal_health`), pairing codes (`pairing_code`, hashed) and the
//!    failed-guess counters that throttle them (`throttle`), the catalogue of packages the member app
//!    offers (`catalogue_offer`), and the cards granted to the member app (`card_grant`);
//! 8. the nonces of `GET` requests move out of the durable store (`super::terminals`): PostgreSQL keeps
//!    them in the `UNLOGGED` table `volatile_nonce` (no WAL, no flush at commit; emptied if the database
//!    crashes), SQLite in a separate file beside the database written without fsync
//!    ([`SQLITE_VOLATILE`]), so a sync pass that finds nothing new writes nothing durable. SQLite's main
//!    file does not change in this version;
//! 9. the web console (`crate::http::console`): cards searchable by masked number and holder
//!    (`card.number_head`, `number_tail`, `holder_key`: what the index may hold is said in
//!    `crate::core::card_search`; rows of an older database are filled by `super::sealing::bind`),
//!    console sessions (`console_session`, the cookie's hash only) and the resolutions of exceptions
//!    (`exception_resolution`).
//!
//! SQLite keeps the version in `PRAGMA user_version`, PostgreSQL in the one-row table `schema_version`.

/// The schema version this server reads and writes.
pub const SCHEMA_VERSION: i64 = 9;

pub(super) const SQLITE_V1: &str = "
CREATE TABLE terminal (
    id           TEXT PRIMARY KEY,
    merchant_id  TEXT NOT NULL,
    secret       BLOB NOT NULL,     -- the platform knows every terminal's secret (docs/keys-and-threat-model.md)
    enabled      INTEGER NOT NULL DEFAULT 1,
    enrolled_ms  INTEGER NOT NULL
);
CREATE TABLE journal (
    terminal_id  TEXT NOT NULL REFERENCES terminal(id),
    seq          INTEGER NOT NULL,
    record       BLOB NOT NULL,     -- canonical bytes exactly as MACed by the terminal
    mac          BLOB NOT NULL,
    received_ms  INTEGER NOT NULL,
    PRIMARY KEY (terminal_id, seq)
) WITHOUT ROWID;
CREATE TABLE batch_close (
    terminal_id   TEXT NOT NULL REFERENCES terminal(id),
    business_date TEXT NOT NULL,
    request       TEXT NOT NULL,    -- the close as received (re-serialized), to tell a resend from a change
    answer        TEXT NOT NULL,    -- the answer given, given again to a resend
    PRIMARY KEY (terminal_id, business_date)
) WITHOUT ROWID;
CREATE TABLE exception (
    id           INTEGER PRIMARY KEY,
    terminal_id  TEXT NOT NULL,
    seq          INTEGER,
    code         TEXT NOT NULL,
    detail       TEXT NOT NULL,
    at_ms        INTEGER NOT NULL
);
";

/// Version 2: the card model (`crate::cards`, `clearing-server/README.md` "Tables").
const SQLITE_V2: &str = "
CREATE TABLE merchant (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    commission_bps     INTEGER NOT NULL CHECK (commission_bps BETWEEN 0 AND 10000),
    categories         TEXT NOT NULL DEFAULT '[]',  -- JSON array of category names, sorted, unique
    full_from_version  INTEGER NOT NULL DEFAULT 0,  -- a delta from below this is answered with a full snapshot
    deny_version       INTEGER NOT NULL DEFAULT 0   -- the merchant's deny-list head
);
INSERT OR IGNORE INTO merchant (id, name, commission_bps)
    SELECT DISTINCT merchant_id, merchant_id, 0 FROM terminal;
-- One monotone counter for every entitlement change (docs: clearing-server/README.md, Versions).
CREATE TABLE version_counter (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    version    INTEGER NOT NULL,
    bumped_ms  INTEGER NOT NULL
);
INSERT INTO version_counter (id, version, bumped_ms) VALUES (1, 0, 0);
CREATE TABLE card (
    id             INTEGER PRIMARY KEY,           -- the platform card id
    number         TEXT NOT NULL UNIQUE,          -- full digits: never logged or printed (masked 6/4)
    status         INTEGER NOT NULL CHECK (status BETWEEN 1 AND 4),  -- CardStatus: 1 active 2 lost 3 frozen 4 cancelled
    holder_name    TEXT,                          -- named cards; shown masked
    identity_data  TEXT,                          -- e.g. phone last four; verifiers are computed per terminal
    reissued_to    INTEGER REFERENCES card(id),
    created_ms     INTEGER NOT NULL,
    version        INTEGER NOT NULL,              -- entitlement version of the card's last change
    body           BLOB NOT NULL                  -- derived: canonical Card body with uses_left, usage_through_seq 0, no verifier
);
CREATE INDEX card_by_version ON card(version);
CREATE TABLE package (
    card_id            INTEGER NOT NULL REFERENCES card(id),
    id                 TEXT NOT NULL,
    position           INTEGER NOT NULL,          -- order in the card body (entry index on the reader)
    title              TEXT NOT NULL,
    valid_from_ms      INTEGER NOT NULL,          -- inclusive
    valid_until_ms     INTEGER NOT NULL,          -- exclusive
    scope_kind         INTEGER NOT NULL CHECK (scope_kind BETWEEN 0 AND 2),  -- 0 all, 1 merchants, 2 categories
    scope_list         TEXT NOT NULL,             -- JSON array of merchant ids or categories
    daily_cap          INTEGER,
    identity_required  INTEGER NOT NULL,
    customized_ms      INTEGER NOT NULL,
    PRIMARY KEY (card_id, id)
) WITHOUT ROWID;
CREATE TABLE package_item (
    card_id       INTEGER NOT NULL,
    package_id    TEXT NOT NULL,
    service_code  TEXT NOT NULL,
    position      INTEGER NOT NULL,
    title         TEXT NOT NULL,
    uses_total    INTEGER NOT NULL CHECK (uses_total >= 0),
    price_fen     INTEGER NOT NULL CHECK (price_fen >= 0),
    used          INTEGER NOT NULL DEFAULT 0,     -- redeemed minus voided, every terminal (maintained by uploads)
    PRIMARY KEY (card_id, package_id, service_code),
    FOREIGN KEY (card_id, package_id) REFERENCES package(card_id, id)
) WITHOUT ROWID;
-- The card references computed for each terminal: card_ref = HMAC(terminal's card-token key, number).
CREATE TABLE card_ref (
    terminal_id  TEXT NOT NULL REFERENCES terminal(id),
    card_ref     BLOB NOT NULL,
    card_id      INTEGER NOT NULL REFERENCES card(id),
    PRIMARY KEY (terminal_id, card_ref)
) WITHOUT ROWID;
CREATE INDEX card_ref_by_card ON card_ref(terminal_id, card_id);
ALTER TABLE terminal ADD COLUMN card_refs_through INTEGER NOT NULL DEFAULT 0;  -- card ids indexed so far
-- The union of a card's package scopes before a change of them, to know what a terminal had.
CREATE TABLE scope_change (
    card_id        INTEGER NOT NULL REFERENCES card(id),
    version        INTEGER NOT NULL,
    scopes_before  TEXT NOT NULL,
    PRIMARY KEY (card_id, version)
) WITHOUT ROWID;
CREATE TABLE deny_entry (
    merchant_id     TEXT NOT NULL REFERENCES merchant(id),
    version         INTEGER NOT NULL,             -- per merchant, from 1
    card_id         INTEGER NOT NULL REFERENCES card(id),
    status          INTEGER NOT NULL CHECK (status BETWEEN 2 AND 4),
    entry_version   INTEGER NOT NULL,
    reported_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, version)
) WITHOUT ROWID;
CREATE TABLE nonce (
    terminal_id      TEXT NOT NULL,
    nonce            TEXT NOT NULL,
    forget_after_ms  INTEGER NOT NULL,
    PRIMARY KEY (terminal_id, nonce)
) WITHOUT ROWID;
CREATE INDEX nonce_by_time ON nonce(forget_after_ms);
ALTER TABLE journal ADD COLUMN card_id INTEGER;  -- the platform card of the record's card_ref (NULL: unknown)
CREATE INDEX journal_by_card ON journal(card_id) WHERE card_id IS NOT NULL;
";

/// SQLite version 3: every card status change with its time, so that clearing can tell whether a redemption
/// was made while the platform held the card as lost, frozen or cancelled (`super::statements`). A
/// database migrated from version 2 gets the lost/frozen/cancelled changes its deny lists recorded
/// (unlocks made before the migration are not known).
const SQLITE_V3: &str = "
CREATE TABLE card_status_change (
    id      INTEGER PRIMARY KEY,
    card_id INTEGER NOT NULL REFERENCES card(id),
    status  INTEGER NOT NULL CHECK (status BETWEEN 1 AND 4),
    at_ms   INTEGER NOT NULL
);
CREATE INDEX card_status_change_by_card ON card_status_change(card_id, at_ms);
INSERT INTO card_status_change (card_id, status, at_ms)
    SELECT DISTINCT card_id, status, reported_at_ms FROM deny_entry ORDER BY reported_at_ms;
";
/// Version 4, the same on both engines: card references are no longer stored per terminal.
const BOTH_V4: &str = "
DROP TABLE card_ref;
ALTER TABLE terminal DROP COLUMN card_refs_through;
";

/// Version 5 (SQLite): sealed columns; the clear ones are emptied by `sealing::bind`.
const SQLITE_V5: &str = "
ALTER TABLE card RENAME COLUMN number TO number_key;  -- hex HMAC lookup hash (clear digits until sealed)
ALTER TABLE card ADD COLUMN number_sealed BLOB;       -- AES-256-GCM under the master key
ALTER TABLE card ADD COLUMN identity_sealed BLOB;     -- identity data, sealed (identity_data then NULL)
ALTER TABLE card ADD COLUMN sealed_with BLOB;         -- the master key's fingerprint; NULL: not sealed yet
ALTER TABLE terminal ADD COLUMN secret_sealed BLOB;   -- the secret, sealed (secret then empty)
ALTER TABLE terminal ADD COLUMN sealed_with BLOB;
CREATE TABLE master_key (
    fingerprint  BLOB PRIMARY KEY,
    since_ms     INTEGER NOT NULL                     -- the latest is the database's current key
);
";

/// SQLite: `SQLITE_STEPS[i]` takes the schema from version `i` to `i + 1`.
pub(super) const SQLITE_STEPS: &[&str] = &[
    SQLITE_V1, SQLITE_V2, SQLITE_V3, BOTH_V4, SQLITE_V5, SQLITE_V6, SQLITE_V7, SQLITE_V8, SQLITE_V9,
];

/// Version 8 (SQLite): nothing in the main file; the volatile nonces live in [`SQLITE_VOLATILE`].
const SQLITE_V8: &str = "";

/// SQLite's volatile store: a file of its own beside the database (`<database>-nonces`), opened with
/// `synchronous=OFF` — what it holds may be lost in an operating-system crash, never corrupted — and
/// created on every open if missing (deleting it while the servers are stopped loses nothing else).
pub(super) const SQLITE_VOLATILE: &str = "
CREATE TABLE IF NOT EXISTS volatile_nonce (
    terminal_id      TEXT NOT NULL,
    nonce            TEXT NOT NULL,
    forget_after_ms  INTEGER NOT NULL,
    PRIMARY KEY (terminal_id, nonce)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS volatile_nonce_by_time ON volatile_nonce(forget_after_ms);
";

/// Version 6 (SQLite): verdicts, price history, resolved exceptions.
const SQLITE_V6: &str = "
ALTER TABLE journal ADD COLUMN held TEXT;        -- NULL: payable; else the exception code that holds it
ALTER TABLE journal ADD COLUMN void_of INTEGER;  -- a void's original seq
CREATE INDEX journal_voids ON journal(terminal_id, void_of) WHERE void_of IS NOT NULL;
ALTER TABLE exception ADD COLUMN resolved_ms INTEGER;
CREATE TABLE item_price (
    card_id       INTEGER NOT NULL,
    package_id    TEXT NOT NULL,
    service_code  TEXT NOT NULL,
    from_version  INTEGER NOT NULL,  -- the entitlement version the price was signed from
    price_fen     INTEGER,           -- NULL: the item was dropped from the package at this version
    PRIMARY KEY (card_id, package_id, service_code, from_version)
) WITHOUT ROWID;
INSERT INTO item_price (card_id, package_id, service_code, from_version, price_fen)
    SELECT card_id, package_id, service_code, 0, price_fen FROM package_item;
";

/// PostgreSQL starts at version 3 in one step: the tables of SQLite's versions 1 to 3 with
/// PostgreSQL's types (`BIGINT`, `BYTEA`, identity columns). Integer columns are all `BIGINT`, so the
/// statements bind the same 64-bit integers on both engines; flags are 0/1 like SQLite's.
const POSTGRES_V3: &str = "
CREATE TABLE terminal (
    id                 TEXT PRIMARY KEY,
    merchant_id        TEXT NOT NULL,
    secret             BYTEA NOT NULL,
    enabled            BIGINT NOT NULL DEFAULT 1,
    enrolled_ms        BIGINT NOT NULL,
    card_refs_through  BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE merchant (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    commission_bps     BIGINT NOT NULL CHECK (commission_bps BETWEEN 0 AND 10000),
    categories         TEXT NOT NULL DEFAULT '[]',
    full_from_version  BIGINT NOT NULL DEFAULT 0,
    deny_version       BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE version_counter (
    id         BIGINT PRIMARY KEY CHECK (id = 1),
    version    BIGINT NOT NULL,
    bumped_ms  BIGINT NOT NULL
);
INSERT INTO version_counter (id, version, bumped_ms) VALUES (1, 0, 0);
CREATE TABLE card (
    id             BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    number         TEXT NOT NULL UNIQUE,
    status         BIGINT NOT NULL CHECK (status BETWEEN 1 AND 4),
    holder_name    TEXT,
    identity_data  TEXT,
    reissued_to    BIGINT REFERENCES card(id),
    created_ms     BIGINT NOT NULL,
    version        BIGINT NOT NULL,
    body           BYTEA NOT NULL
);
CREATE INDEX card_by_version ON card(version);
CREATE TABLE journal (
    terminal_id  TEXT NOT NULL REFERENCES terminal(id),
    seq          BIGINT NOT NULL,
    record       BYTEA NOT NULL,
    mac          BYTEA NOT NULL,
    received_ms  BIGINT NOT NULL,
    card_id      BIGINT,
    PRIMARY KEY (terminal_id, seq)
);
CREATE INDEX journal_by_card ON journal(card_id) WHERE card_id IS NOT NULL;
CREATE TABLE batch_close (
    terminal_id   TEXT NOT NULL REFERENCES terminal(id),
    business_date TEXT NOT NULL,
    request       TEXT NOT NULL,
    answer        TEXT NOT NULL,
    PRIMARY KEY (terminal_id, business_date)
);
CREATE TABLE exception (
    id           BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    terminal_id  TEXT NOT NULL,
    seq          BIGINT,
    code         TEXT NOT NULL,
    detail       TEXT NOT NULL,
    at_ms        BIGINT NOT NULL
);
CREATE TABLE package (
    card_id            BIGINT NOT NULL REFERENCES card(id),
    id                 TEXT NOT NULL,
    position           BIGINT NOT NULL,
    title              TEXT NOT NULL,
    valid_from_ms      BIGINT NOT NULL,
    valid_until_ms     BIGINT NOT NULL,
    scope_kind         BIGINT NOT NULL CHECK (scope_kind BETWEEN 0 AND 2),
    scope_list         TEXT NOT NULL,
    daily_cap          BIGINT,
    identity_required  BIGINT NOT NULL,
    customized_ms      BIGINT NOT NULL,
    PRIMARY KEY (card_id, id)
);
CREATE TABLE package_item (
    card_id       BIGINT NOT NULL,
    package_id    TEXT NOT NULL,
    service_code  TEXT NOT NULL,
    position      BIGINT NOT NULL,
    title         TEXT NOT NULL,
    uses_total    BIGINT NOT NULL CHECK (uses_total >= 0),
    price_fen     BIGINT NOT NULL CHECK (price_fen >= 0),
    used          BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (card_id, package_id, service_code),
    FOREIGN KEY (card_id, package_id) REFERENCES package(card_id, id)
);
CREATE TABLE card_ref (
    terminal_id  TEXT NOT NULL REFERENCES terminal(id),
    card_ref     BYTEA NOT NULL,
    card_id      BIGINT NOT NULL REFERENCES card(id),
    PRIMARY KEY (terminal_id, card_ref)
);
CREATE INDEX card_ref_by_card ON card_ref(terminal_id, card_id);
CREATE TABLE scope_change (
    card_id        BIGINT NOT NULL REFERENCES card(id),
    version        BIGINT NOT NULL,
    scopes_before  TEXT NOT NULL,
    PRIMARY KEY (card_id, version)
);
CREATE TABLE deny_entry (
    merchant_id     TEXT NOT NULL REFERENCES merchant(id),
    version         BIGINT NOT NULL,
    card_id         BIGINT NOT NULL REFERENCES card(id),
    status          BIGINT NOT NULL CHECK (status BETWEEN 2 AND 4),
    entry_version   BIGINT NOT NULL,
    reported_at_ms  BIGINT NOT NULL,
    PRIMARY KEY (merchant_id, version)
);
CREATE TABLE nonce (
    terminal_id      TEXT NOT NULL,
    nonce            TEXT NOT NULL,
    forget_after_ms  BIGINT NOT NULL,
    PRIMARY KEY (terminal_id, nonce)
);
CREATE INDEX nonce_by_time ON nonce(forget_after_ms);
CREATE TABLE card_status_change (
    id      BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    card_id BIGINT NOT NULL REFERENCES card(id),
    status  BIGINT NOT NULL CHECK (status BETWEEN 1 AND 4),
    at_ms   BIGINT NOT NULL
);
CREATE INDEX card_status_change_by_card ON card_status_change(card_id, at_ms);
";

/// PostgreSQL: `(version, DDL)`, applied above the stored version.
pub(super) const POSTGRES_STEPS: &[(i64, &str)] = &[
    (3, POSTGRES_V3),
    (4, BOTH_V4),
    (5, POSTGRES_V5),
    (6, POSTGRES_V6),
    (7, POSTGRES_V7),
    (8, POSTGRES_V8),
    (9, POSTGRES_V9),
];

/// Version 8 (PostgreSQL): the nonces of `GET` requests in an unlogged table (shared by every server
/// process like the durable one; not written to the WAL, so remembering one costs no flush).
const POSTGRES_V8: &str = "
CREATE UNLOGGED TABLE volatile_nonce (
    terminal_id      TEXT NOT NULL,
    nonce            TEXT NOT NULL,
    forget_after_ms  BIGINT NOT NULL,
    PRIMARY KEY (terminal_id, nonce)
);
CREATE INDEX volatile_nonce_by_time ON volatile_nonce(forget_after_ms);
";

/// Version 6 (PostgreSQL): as SQLite's.
const POSTGRES_V6: &str = "
ALTER TABLE journal ADD COLUMN held TEXT;
ALTER TABLE journal ADD COLUMN void_of BIGINT;
CREATE INDEX journal_voids ON journal(terminal_id, void_of) WHERE void_of IS NOT NULL;
ALTER TABLE exception ADD COLUMN resolved_ms BIGINT;
CREATE TABLE item_price (
    card_id       BIGINT NOT NULL,
    package_id    TEXT NOT NULL,
    service_code  TEXT NOT NULL,
    from_version  BIGINT NOT NULL,
    price_fen     BIGINT,
    PRIMARY KEY (card_id, package_id, service_code, from_version)
);
INSERT INTO item_price (card_id, package_id, service_code, from_version, price_fen)
    SELECT card_id, package_id, service_code, 0, price_fen FROM package_item;
";

/// Version 5 (PostgreSQL): as SQLite's.
const POSTGRES_V5: &str = "
ALTER TABLE card RENAME COLUMN number TO number_key;
ALTER TABLE card ADD COLUMN number_sealed BYTEA;
ALTER TABLE card ADD COLUMN identity_sealed BYTEA;
ALTER TABLE card ADD COLUMN sealed_with BYTEA;
ALTER TABLE terminal ADD COLUMN secret_sealed BYTEA;
ALTER TABLE terminal ADD COLUMN sealed_with BYTEA;
CREATE TABLE master_key (
    fingerprint  BYTEA PRIMARY KEY,
    since_ms     BIGINT NOT NULL
);
";

/// Version 7 (SQLite): credentials, audit, health, pairing codes, throttling, catalogue, grants.
const SQLITE_V7: &str = "
CREATE TABLE credential (
    id           TEXT PRIMARY KEY,     -- k_<16 hex>: names the key in listings and the audit log
    role         TEXT NOT NULL,        -- operator, merchant, member_app
    subject      TEXT NOT NULL,        -- the operator's name, the merchant id, the member app's id
    label        TEXT NOT NULL,
    secret_hash  BLOB NOT NULL,        -- SHA-256 of the key's secret (core/credentials.rs)
    created_ms   INTEGER NOT NULL,
    created_by   TEXT NOT NULL,
    revoked_ms   INTEGER
) WITHOUT ROWID;
CREATE TABLE console_user (
    name           TEXT PRIMARY KEY,
    role           TEXT NOT NULL,
    subject        TEXT NOT NULL,
    password_hash  TEXT NOT NULL,      -- argon2id PHC string
    created_ms     INTEGER NOT NULL,
    created_by     TEXT NOT NULL,
    revoked_ms     INTEGER
) WITHOUT ROWID;
CREATE TABLE audit (
    id      INTEGER PRIMARY KEY,
    at_ms   INTEGER NOT NULL,
    actor   TEXT NOT NULL,             -- role, subject and means: operator alice (key k_…)
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    detail  TEXT NOT NULL              -- never a secret, a code or a card number
);
CREATE TABLE terminal_health (
    terminal_id  TEXT PRIMARY KEY REFERENCES terminal(id),
    received_ms  INTEGER NOT NULL,
    report       TEXT NOT NULL         -- the latest report's JSON, as checked
) WITHOUT ROWID;
CREATE TABLE pairing_code (
    code_hash    BLOB PRIMARY KEY,     -- SHA-256 of the code (core/pairing.rs)
    terminal_id  TEXT NOT NULL,
    merchant_id  TEXT NOT NULL,
    created_ms   INTEGER NOT NULL,
    created_by   TEXT NOT NULL,
    expires_ms   INTEGER NOT NULL,
    used_ms      INTEGER,
    used_from    TEXT
) WITHOUT ROWID;
CREATE INDEX pairing_code_by_merchant ON pairing_code(merchant_id, created_ms);
CREATE TABLE throttle (
    scope            TEXT NOT NULL,    -- what is throttled: pairing
    source           TEXT NOT NULL,    -- a client address, or * for the whole platform
    window_start_ms  INTEGER NOT NULL,
    failures         INTEGER NOT NULL,
    PRIMARY KEY (scope, source)
) WITHOUT ROWID;
CREATE TABLE catalogue_offer (
    id                 TEXT PRIMARY KEY,
    title              TEXT NOT NULL,
    valid_days         INTEGER NOT NULL,
    scope_kind         INTEGER NOT NULL CHECK (scope_kind BETWEEN 0 AND 2),
    scope_list         TEXT NOT NULL,
    daily_cap          INTEGER,
    identity_required  INTEGER NOT NULL,
    items              TEXT NOT NULL,  -- JSON [{service_code, title, uses_total, price_fen}]
    active             INTEGER NOT NULL,
    updated_ms         INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE card_grant (
    handle      TEXT PRIMARY KEY,      -- mc_<32 hex>: how the member app names the card
    card_id     INTEGER NOT NULL REFERENCES card(id),
    app_id      TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    revoked_ms  INTEGER
) WITHOUT ROWID;
CREATE UNIQUE INDEX card_grant_live ON card_grant(app_id, card_id) WHERE revoked_ms IS NULL;
";

/// Version 7 (PostgreSQL): as SQLite's.
const POSTGRES_V7: &str = "
CREATE TABLE credential (
    id           TEXT PRIMARY KEY,
    role         TEXT NOT NULL,
    subject      TEXT NOT NULL,
    label        TEXT NOT NULL,
    secret_hash  BYTEA NOT NULL,
    created_ms   BIGINT NOT NULL,
    created_by   TEXT NOT NULL,
    revoked_ms   BIGINT
);
CREATE TABLE console_user (
    name           TEXT PRIMARY KEY,
    role           TEXT NOT NULL,
    subject        TEXT NOT NULL,
    password_hash  TEXT NOT NULL,
    created_ms     BIGINT NOT NULL,
    created_by     TEXT NOT NULL,
    revoked_ms     BIGINT
);
CREATE TABLE audit (
    id      BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    at_ms   BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    detail  TEXT NOT NULL
);
CREATE TABLE terminal_health (
    terminal_id  TEXT PRIMARY KEY REFERENCES terminal(id),
    received_ms  BIGINT NOT NULL,
    report       TEXT NOT NULL
);
CREATE TABLE pairing_code (
    code_hash    BYTEA PRIMARY KEY,
    terminal_id  TEXT NOT NULL,
    merchant_id  TEXT NOT NULL,
    created_ms   BIGINT NOT NULL,
    created_by   TEXT NOT NULL,
    expires_ms   BIGINT NOT NULL,
    used_ms      BIGINT,
    used_from    TEXT
);
CREATE INDEX pairing_code_by_merchant ON pairing_code(merchant_id, created_ms);
CREATE TABLE throttle (
    scope            TEXT NOT NULL,
    source           TEXT NOT NULL,
    window_start_ms  BIGINT NOT NULL,
    failures         BIGINT NOT NULL,
    PRIMARY KEY (scope, source)
);
CREATE TABLE catalogue_offer (
    id                 TEXT PRIMARY KEY,
    title              TEXT NOT NULL,
    valid_days         BIGINT NOT NULL,
    scope_kind         BIGINT NOT NULL CHECK (scope_kind BETWEEN 0 AND 2),
    scope_list         TEXT NOT NULL,
    daily_cap          BIGINT,
    identity_required  BIGINT NOT NULL,
    items              TEXT NOT NULL,
    active             BIGINT NOT NULL,
    updated_ms         BIGINT NOT NULL
);
CREATE TABLE card_grant (
    handle      TEXT PRIMARY KEY,
    card_id     BIGINT NOT NULL REFERENCES card(id),
    app_id      TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    revoked_ms  BIGINT
);
CREATE UNIQUE INDEX card_grant_live ON card_grant(app_id, card_id) WHERE revoked_ms IS NULL;
";

/// Version 9 (SQLite): the web console's search index, sessions and resolutions.
const SQLITE_V9: &str = "
ALTER TABLE card ADD COLUMN number_head TEXT;  -- first six digits (NULL until sealing::bind fills an old row)
ALTER TABLE card ADD COLUMN number_tail TEXT;  -- last four: never anything of the digits between
ALTER TABLE card ADD COLUMN holder_key TEXT;   -- holder_name folded for search (core/card_search.rs)
CREATE INDEX card_by_tail ON card(number_tail, number_head);
CREATE INDEX card_by_holder ON card(holder_key) WHERE holder_key IS NOT NULL;
CREATE TABLE console_session (
    id_hash     BLOB PRIMARY KEY,    -- SHA-256 of the session cookie's secret
    user_name   TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    seen_ms     INTEGER NOT NULL,    -- last request (the idle timeout counts from it)
    expires_ms  INTEGER NOT NULL     -- the absolute end
) WITHOUT ROWID;
CREATE INDEX console_session_by_expiry ON console_session(expires_ms);
CREATE TABLE exception_resolution (
    exception_key  TEXT PRIMARY KEY, -- core/clearing.rs exception_key: kind, terminal, seq or card and item
    resolved_ms    INTEGER NOT NULL,
    resolved_by    TEXT NOT NULL,
    note           TEXT NOT NULL
) WITHOUT ROWID;
";

/// Version 9 (PostgreSQL): as SQLite's; the holder key compares by code point (`COLLATE \"C\"`), so
/// that a prefix search is one index range.
const POSTGRES_V9: &str = "
ALTER TABLE card ADD COLUMN number_head TEXT;
ALTER TABLE card ADD COLUMN number_tail TEXT;
ALTER TABLE card ADD COLUMN holder_key TEXT COLLATE \"C\";
CREATE INDEX card_by_tail ON card(number_tail, number_head);
CREATE INDEX card_by_holder ON card(holder_key) WHERE holder_key IS NOT NULL;
CREATE TABLE console_session (
    id_hash     BYTEA PRIMARY KEY,
    user_name   TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    seen_ms     BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL
);
CREATE INDEX console_session_by_expiry ON console_session(expires_ms);
CREATE TABLE exception_resolution (
    exception_key  TEXT PRIMARY KEY,
    resolved_ms    BIGINT NOT NULL,
    resolved_by    TEXT NOT NULL,
    note           TEXT NOT NULL
);
";
