//! The checks opening the store makes, in one place. [`Store`](super::Store) runs them when it opens
//! (and reloads) and refuses at the first finding; `journal verify`, `cache verify` and `doctor`
//! run the very same functions through [`super::verify::database`] and list every finding. So
//! "verify says OK" means "the daemon will open it".
//!
//! * [`identify`]: whose database this is. The key check value ([`KeyCheck`]: a MAC of a fixed text
//!   under each derived key, stored when the database was created) tells a key that is not this
//!   terminal's, and a database of another terminal, from an edited row — so that a technician who
//!   installed the wrong key file is not told the database was tampered with.
//! * [`schema_findings`]: the tables, indexes and triggers are exactly those the migrations make (a
//!   dropped append-only trigger is named).
//! * [`load_state`]: the MACed terminal state, the chain head against the last journal row, the
//!   installed manifest (its signature, its version against the terminal state, the terminal's MAC over
//!   its row), every deny-list row and their count, every identity-attempt row and their count.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use redeemd_contract::journal::genesis_mac;
use redeemd_contract::keys::{Tag, TerminalKeys, tags_equal};
use redeemd_contract::snapshot::Manifest;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, params};

use super::rows::{Integrity, TerminalRow, identity_mac};
use super::{Fault, StoreError, deny};

/// The text whose MAC under each derived key is the key check value.
pub const KEY_CHECK_TEXT: &[u8] = b"redeemd/key-check/v1";

/// The key check value of a terminal's keys: HMAC([`KEY_CHECK_TEXT`]) under each derived key, in the
/// order of the `key_check` table's columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCheck {
    pub terminal_id: String,
    pub tags: [Tag; 5],
}

impl KeyCheck {
    pub fn of(keys: &TerminalKeys) -> KeyCheck {
        let text: &[&[u8]] = &[KEY_CHECK_TEXT];
        KeyCheck {
            terminal_id: keys.terminal_id.clone(),
            tags: [
                keys.cache.mac(text),
                keys.journal.mac(text),
                keys.request.mac(text),
                keys.card_token.check_value(KEY_CHECK_TEXT),
                keys.identity.mac(text),
            ],
        }
    }

    /// Stores the key check value of `keys` (the database's creation, or its sealing).
    pub(crate) fn write(conn: &Connection, keys: &TerminalKeys) -> rusqlite::Result<()> {
        let k = KeyCheck::of(keys);
        conn.execute(
            "INSERT OR REPLACE INTO key_check (id, terminal_id, cache, journal, request, card_token, identity) \
             VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                k.terminal_id,
                &k.tags[0][..],
                &k.tags[1][..],
                &k.tags[2][..],
                &k.tags[3][..],
                &k.tags[4][..]
            ],
        )?;
        Ok(())
    }
}

/// The `key_check` row as stored (a column of another type reads as `None`: it matches nothing).
struct StoredKeyCheck {
    terminal_id: Option<String>,
    tags: [Option<Vec<u8>>; 5],
}

/// How many of the stored values the keys reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyMatch {
    All,
    Some,
    None,
}

impl StoredKeyCheck {
    fn read(conn: &Connection) -> rusqlite::Result<Option<StoredKeyCheck>> {
        conn.query_row(
            "SELECT terminal_id, cache, journal, request, card_token, identity FROM key_check WHERE id = 1",
            [],
            |r| {
                let blob = |i: usize| -> rusqlite::Result<Option<Vec<u8>>> {
                    Ok(match r.get_ref(i)? {
                        ValueRef::Blob(b) => Some(b.to_vec()),
                        _ => None,
                    })
                };
                Ok(StoredKeyCheck {
                    terminal_id: match r.get_ref(0)? {
                        ValueRef::Text(t) => std::str::from_utf8(t).ok().map(str::to_owned),
                        _ => None,
                    },
                    tags: [blob(1)?, blob(2)?, blob(3)?, blob(4)?, blob(5)?],
                })
            },
        )
        .optional()
    }

    fn matches(&self, keys: &TerminalKeys) -> KeyMatch {
        let expected = KeyCheck::of(keys);
        let hits = self
            .tags
            .iter()
            .zip(&expected.tags)
            .filter(|(stored, want)| stored.as_deref().is_some_and(|s| tags_equal(s, &want[..])))
            .count();
        match hits {
            5 => KeyMatch::All,
            0 => KeyMatch::None,
            _ => KeyMatch::Some,
        }
    }
}

/// The terminal and merchant ids and MAC format the `terminal_state` row names, as stored (unverified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredIds {
    pub terminal_id: String,
    pub merchant_id: String,
    pub sealed: bool,
}

pub(crate) fn stored_ids(conn: &Connection) -> Result<Option<StoredIds>, StoreError> {
    let row = conn
        .query_row(
            "SELECT terminal_id, merchant_id, mac_format FROM terminal_state WHERE id = 1",
            [],
            |r| {
                let text = |i: usize| -> rusqlite::Result<Option<String>> {
                    Ok(match r.get_ref(i)? {
                        ValueRef::Text(t) => std::str::from_utf8(t).ok().map(str::to_owned),
                        _ => None,
                    })
                };
                Ok((text(0)?, text(1)?, r.get_ref(2)? == ValueRef::Integer(2)))
            },
        )
        .optional()?;
    match row {
        None => Ok(None),
        Some((Some(terminal_id), Some(merchant_id), sealed)) => Ok(Some(StoredIds {
            terminal_id,
            merchant_id,
            sealed,
        })),
        Some(_) => Err(StoreError::Integrity(Integrity::new(
            "terminal state",
            "column terminal_id or merchant_id is not text (row edited)",
        ))),
    }
}

/// Whose database this is: the ids it names and the keys that open it.
#[derive(Debug, Clone)]
pub struct Owner {
    pub terminal_id: String,
    pub merchant_id: String,
    pub keys: TerminalKeys,
}

/// Decides whose database this is before any MAC is trusted, so that the error says what a technician
/// can act on:
///
/// * `WrongTerminal`: the database is another terminal's (or merchant's) than the configuration's;
/// * `WrongKey`: the key given does not reproduce the key check value: not this terminal's secret;
/// * an integrity error naming the edited row (`terminal_state`'s ids, or the key check row itself),
///   when the key check value shows which terminal and key the database was created with.
///
/// `keys_for` derives the keys of a terminal id (the tools hold the secret and may try the ids the
/// database names; the daemon holds only its own terminal's keys). `expected` is the configured
/// terminal and merchant, when known. `Ok(None)`: the database has no terminal state yet.
pub fn identify(
    conn: &Connection,
    keys_for: &dyn Fn(&str) -> Option<TerminalKeys>,
    expected: Option<(&str, &str)>,
) -> Result<Option<Owner>, StoreError> {
    let Some(ids) = stored_ids(conn)? else {
        return Ok(None);
    };
    let stored_check = StoredKeyCheck::read(conn)?;
    let wrong_terminal = |found_terminal: &str| StoreError::WrongTerminal {
        expected: expected.map(|e| e.0.to_owned()).unwrap_or_default(),
        found: found_terminal.to_owned(),
        expected_merchant: expected.map(|e| e.1.to_owned()).unwrap_or_default(),
        found_merchant: ids.merchant_id.clone(),
    };
    // Which terminal's keys reproduce the key check: the configured one, the one the check row names,
    // the one the state row names.
    let mut candidates: Vec<&str> = Vec::new();
    for id in [
        expected.map(|e| e.0),
        stored_check.as_ref().and_then(|k| k.terminal_id.as_deref()),
        Some(ids.terminal_id.as_str()),
    ]
    .into_iter()
    .flatten()
    {
        if !candidates.contains(&id) {
            candidates.push(id);
        }
    }
    let mut partial = false;
    let mut owner: Option<(String, TerminalKeys)> = None;
    if let Some(check) = &stored_check {
        for id in &candidates {
            let Some(keys) = keys_for(id) else { continue };
            match check.matches(&keys) {
                KeyMatch::All => {
                    owner = Some(((*id).to_owned(), keys));
                    break;
                }
                KeyMatch::Some => partial = true,
                KeyMatch::None => {}
            }
        }
    }
    if let Some((id, keys)) = owner {
        // The key check proves whose database this is, and that the key is its own.
        if let Some((terminal, _)) = expected
            && id != terminal
        {
            return Err(wrong_terminal(&id));
        }
        if ids.terminal_id != id {
            return Err(Integrity::new(
                "terminal state",
                format!(
                    "column terminal_id says {:?}, but the key check shows the database was created for {id:?} (row edited)",
                    ids.terminal_id
                ),
            )
            .into());
        }
        if stored_check
            .as_ref()
            .is_some_and(|k| k.terminal_id.as_deref() != Some(id.as_str()))
        {
            return Err(Integrity::new(
                "key check",
                format!(
                    "column terminal_id does not name {id:?}, whose keys it holds (row edited)"
                ),
            )
            .into());
        }
        if let Some((_, merchant)) = expected
            && ids.merchant_id != merchant
            && state_mac_verifies(conn, &keys)
        {
            // The row is authentic: the configuration names another merchant.
            return Err(wrong_terminal(&id));
        }
        return Ok(Some(Owner {
            terminal_id: id,
            merchant_id: ids.merchant_id,
            keys,
        }));
    }
    if let Some((terminal, merchant)) = expected
        && (ids.terminal_id != terminal || ids.merchant_id != merchant)
    {
        return Err(wrong_terminal(&ids.terminal_id));
    }
    let Some(keys) = keys_for(&ids.terminal_id) else {
        return Err(wrong_terminal(&ids.terminal_id));
    };
    let state_verifies = state_mac_verifies(conn, &keys);
    match (&stored_check, ids.sealed) {
        (Some(_), _) if state_verifies || partial => Err(Integrity::new(
            "key check",
            "this terminal's key opens the terminal state but does not reproduce the key check value (row edited)",
        )
        .into()),
        (Some(_), _) => Err(StoreError::WrongKey {
            terminal: ids.terminal_id,
        }),
        (None, true) if state_verifies => Err(Integrity::new(
            "key check",
            "row missing (deleted): every database since schema 7 has one",
        )
        .into()),
        (None, true) => Err(Integrity::new(
            "key check",
            "row missing (deleted), and the terminal state does not verify with this key: an edited database, or another terminal's key",
        )
        .into()),
        // A database from before key checks: `load_state` checks the state's MAC (and names both causes).
        (None, false) => Ok(Some(Owner {
            terminal_id: ids.terminal_id,
            merchant_id: ids.merchant_id,
            keys,
        })),
    }
}

fn state_mac_verifies(conn: &Connection, keys: &TerminalKeys) -> bool {
    super::read_terminal_row(conn, keys).is_ok()
}

/// A schema object as `sqlite_schema` holds it: (type, table, SQL text).
type SchemaObject = (String, String, Option<String>);

/// The objects the migrations make, by name, each with the forms it may take: built once, in memory.
/// `cache_entry` has two: as migration 5 made it, and as a full install leaves it (the staging table
/// renamed, `install`), whose SQL text differs.
fn expected_schema() -> &'static Result<BTreeMap<String, Vec<SchemaObject>>, String> {
    static EXPECTED: OnceLock<Result<BTreeMap<String, Vec<SchemaObject>>, String>> =
        OnceLock::new();
    EXPECTED.get_or_init(|| {
        let built = || -> Result<BTreeMap<String, Vec<SchemaObject>>, StoreError> {
            let mut conn = Connection::open_in_memory()?;
            super::schema::migrate_with(&mut conn, super::schema::MIGRATIONS)?;
            let mut expected: BTreeMap<String, Vec<SchemaObject>> = schema_objects(&conn)?
                .into_iter()
                .map(|(name, o)| (name, vec![o]))
                .collect();
            conn.execute_batch(&super::install::full_install_swap_ddl())?;
            if let Some(after_install) = schema_objects(&conn)?.remove("cache_entry") {
                expected
                    .entry("cache_entry".into())
                    .or_default()
                    .push(after_install);
            }
            Ok(expected)
        };
        built().map_err(|e| e.to_string())
    })
}

/// Tables a crash may leave behind, dropped by the next install: not part of the checked schema.
const TRANSIENT_TABLES: [&str; 2] = ["cache_staging", "cache_delta_staging"];

fn schema_objects(conn: &Connection) -> rusqlite::Result<BTreeMap<String, SchemaObject>> {
    let mut stmt = conn.prepare("SELECT type, name, tbl_name, sql FROM sqlite_schema")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(1)?,
            (
                r.get::<_, String>(0)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
            ),
        ))
    })?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (name, object) = row?;
        if !TRANSIENT_TABLES.contains(&object.1.as_str()) {
            out.insert(name, object);
        }
    }
    Ok(out)
}

/// Findings of the opening checks, by what they do to the store.
#[derive(Debug, Default)]
pub struct Findings {
    /// The store refuses to open (a running store, to decide).
    pub refusing: Vec<Integrity>,
    /// Decisions that need the row decline: an identity-attempt counter that does not verify (a
    /// moved or deleted counter cannot be told apart from a card's own, so every decision that
    /// needs one declines).
    pub declining: Vec<Integrity>,
    /// The journal's append-only triggers dropped: the footprint of an edit made with a SQLite tool
    /// (the edit itself is caught by the MACs). Reported, and put back by the next open that may
    /// write ([`restore_guards`]).
    pub guards_dropped: Vec<Integrity>,
}

impl Findings {
    /// Every finding, refusing ones first.
    pub fn all(self) -> Vec<Integrity> {
        let mut all = self.refusing;
        all.extend(self.declining);
        all.extend(self.guards_dropped);
        all
    }
}

/// Findings for every table, index and trigger that differs from what the migrations make: an
/// added or altered object refuses; a dropped append-only trigger is reported (see [`Findings`]).
pub fn schema_findings(conn: &Connection, findings: &mut Findings) -> rusqlite::Result<()> {
    let expected = match expected_schema() {
        Ok(e) => e,
        Err(e) => {
            findings.refusing.push(Integrity::new(
                "schema",
                format!("cannot build the expected schema: {e}"),
            ));
            return Ok(());
        }
    };
    let actual = schema_objects(conn)?;
    for (name, forms) in expected {
        let kind = forms.first().map_or("object", |f| f.0.as_str());
        let what = format!("schema {kind} {name}");
        match actual.get(name) {
            None if kind == "trigger" => findings.guards_dropped.push(Integrity::new(
                what,
                "missing (dropped, as a SQLite tool's user does to edit the journal); the daemon puts it back when it next opens the database",
            )),
            None => findings
                .refusing
                .push(Integrity::new(what, "missing (dropped)")),
            Some(a) if !forms.contains(a) => findings.refusing.push(Integrity::new(
                what,
                "differs from the one redeemd creates (edited)",
            )),
            Some(_) => {}
        }
    }
    for (name, (kind, _, _)) in &actual {
        if !expected.contains_key(name) {
            findings.refusing.push(Integrity::new(
                format!("schema {kind} {name}"),
                "not one redeemd creates (added)",
            ));
        }
    }
    Ok(())
}

/// Puts back the journal's append-only triggers where they were dropped; returns their names.
pub(crate) fn restore_guards(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let Ok(expected) = expected_schema() else {
        return Ok(Vec::new());
    };
    let actual = schema_objects(conn)?;
    let mut restored = Vec::new();
    for (name, forms) in expected {
        if let Some((kind, _, Some(sql))) = forms.first()
            && kind == "trigger"
            && !actual.contains_key(name)
        {
            conn.execute_batch(sql)?;
            restored.push(name.clone());
        }
    }
    Ok(restored)
}

/// What opening the store establishes, once every check passed.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub state: TerminalRow,
    /// The installed manifest and when it was installed.
    pub manifest: Option<(Manifest, i64)>,
    pub deny: deny::DenySet,
    pub offline_redemptions: u64,
}

/// Runs the store's opening checks on `conn` (inside the caller's read snapshot), sorting each
/// finding by what it does ([`Findings`]). Returns what was loaded when nothing refusing was found;
/// a database error ends it.
pub(crate) fn load_state(
    conn: &Connection,
    keys: &TerminalKeys,
    all: &mut Findings,
) -> rusqlite::Result<Option<Loaded>> {
    schema_findings(conn, all)?;
    let before = all.refusing.len();
    let findings = &mut all.refusing;
    let state = match super::read_terminal_row(conn, keys) {
        Ok(s) => s,
        Err(Fault::Sql(e)) => return Err(e),
        Err(Fault::Integrity(i)) => {
            let i = if i.reason.starts_with("MAC mismatch") && !unverified_sealed(conn) {
                Integrity::new(
                    i.what,
                    "MAC mismatch: the row was edited, or the key is not this terminal's (this database predates key checks, which would tell the two apart)",
                )
            } else {
                i
            };
            findings.push(i);
            return Ok(None);
        }
        Err(Fault::Stale) => return Ok(None),
    };
    if let Some(f) = chain_head_finding(conn, keys, &state)? {
        findings.push(f);
    }
    let manifest = match super::read_manifest(conn, keys, &state) {
        Ok(m) => m,
        Err(Fault::Sql(e)) => return Err(e),
        Err(Fault::Integrity(i)) => {
            findings.push(i);
            None
        }
        Err(Fault::Stale) => None,
    };
    let manifest_version = manifest.as_ref().map_or(0, |(m, _)| m.version);
    if manifest_version != state.cache_version && findings.len() == before {
        findings.push(Integrity::new(
            "cache manifest",
            format!(
                "installed manifest is version {manifest_version} but the MACed terminal state says {}: manifest replaced or removed",
                state.cache_version
            ),
        ));
    }
    let deny = deny_rows(conn, keys, &state, findings)?;
    identity_rows(conn, keys, &state, &mut all.declining)?;
    if !all.refusing.is_empty() {
        return Ok(None);
    }
    let offline_redemptions = conn.query_row(
        "SELECT count(*) FROM journal WHERE kind = 1 AND line = 0 AND seq > ?1",
        [i64::try_from(state.synced_through_seq).unwrap_or(i64::MAX)],
        |r| r.get::<_, i64>(0),
    )?;
    Ok(Some(Loaded {
        state,
        manifest,
        deny,
        offline_redemptions: u64::try_from(offline_redemptions).unwrap_or(0),
    }))
}

fn unverified_sealed(conn: &Connection) -> bool {
    stored_ids(conn).ok().flatten().is_some_and(|i| i.sealed)
}

/// The chain head in the MACed state against the journal's last row.
pub(crate) fn chain_head_finding(
    conn: &Connection,
    keys: &TerminalKeys,
    state: &TerminalRow,
) -> rusqlite::Result<Option<Integrity>> {
    let last: Option<(Option<i64>, Option<Vec<u8>>)> = conn
        .query_row(
            "SELECT seq, mac FROM journal ORDER BY seq DESC LIMIT 1",
            [],
            |r| {
                Ok((
                    match r.get_ref(0)? {
                        ValueRef::Integer(i) => Some(i),
                        _ => None,
                    },
                    match r.get_ref(1)? {
                        ValueRef::Blob(b) => Some(b.to_vec()),
                        _ => None,
                    },
                ))
            },
        )
        .optional()?;
    let (seq, mac) = last.unwrap_or_else(|| {
        (
            Some(0),
            Some(genesis_mac(&keys.journal, &state.terminal_id).to_vec()),
        )
    });
    let matches = seq.and_then(|s| u64::try_from(s).ok()) == Some(state.head_seq)
        && mac
            .as_deref()
            .is_some_and(|m| tags_equal(m, &state.head_mac));
    Ok((!matches).then(|| {
        Integrity::new(
            "journal head",
            format!(
                "the journal ends at seq {}, but the MACed chain head says seq {}: rows removed or added at the end, or the head edited",
                seq.map_or_else(|| "(not an integer)".to_owned(), |s| s.to_string()),
                state.head_seq
            ),
        )
    }))
}

/// Every deny row's MAC, then their count and highest version against the MACed state.
fn deny_rows(
    conn: &Connection,
    keys: &TerminalKeys,
    state: &TerminalRow,
    findings: &mut Vec<Integrity>,
) -> rusqlite::Result<deny::DenySet> {
    let mut set = deny::DenySet::new();
    let (mut count, mut max_version, mut bad) = (0u64, 0u64, false);
    deny::each_row(conn, &keys.cache, &state.merchant_id, |r| match r {
        Ok(e) => {
            count += 1;
            max_version = max_version.max(e.version);
            set.entry(e.card_ref).or_default().push(e);
        }
        Err(i) => {
            bad = true;
            findings.push(i);
        }
    })?;
    if !bad && let Err(i) = deny::count_matches(count, max_version, state) {
        findings.push(i);
    }
    Ok(set)
}

/// Every identity-attempt row's MAC, and (sealed state) their count against the MACed state: a
/// counter edited, moved to another card or deleted would reset a lockout.
fn identity_rows(
    conn: &Connection,
    keys: &TerminalKeys,
    state: &TerminalRow,
    findings: &mut Vec<Integrity>,
) -> rusqlite::Result<()> {
    let mut stmt = conn
        .prepare_cached("SELECT card_ref, failures, locked_until_ms, mac FROM identity_attempt")?;
    let mut rows = stmt.query([])?;
    let (mut count, mut bad) = (0u64, false);
    while let Some(r) = rows.next()? {
        count += 1;
        let card = match r.get_ref(0)? {
            ValueRef::Blob(b) => <[u8; 32]>::try_from(b).ok(),
            _ => None,
        };
        let what = card.map_or_else(
            || "identity attempts ?".to_owned(),
            |c| format!("identity attempts {}", hex::encode(c)),
        );
        let (
            Some(card),
            ValueRef::Integer(failures),
            ValueRef::Integer(locked),
            ValueRef::Blob(mac),
        ) = (card, r.get_ref(1)?, r.get_ref(2)?, r.get_ref(3)?)
        else {
            bad = true;
            findings.push(Integrity::new(
                what,
                "a column has the wrong type (row edited)",
            ));
            continue;
        };
        let s = crate::engine::IdentityState {
            failures: u32::try_from(failures).unwrap_or(u32::MAX),
            locked_until_ms: locked,
        };
        let card = redeemd_contract::model::CardRef(card);
        if u32::try_from(failures).is_err()
            || !tags_equal(&identity_mac(&keys.journal, &card, &s), mac)
        {
            bad = true;
            findings.push(Integrity::new(what, "MAC mismatch (row edited)"));
        }
    }
    if state.sealed && !bad && count != state.identity_count {
        findings.push(Integrity::new(
            "identity attempts",
            format!(
                "{count} rows, but the MACed terminal state says {}: rows were removed or added (a lockout reset?)",
                state.identity_count
            ),
        ));
    }
    Ok(())
}
