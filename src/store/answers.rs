//! Stored answers (PROTOCOL.md §8.2, §8.5): what each reader was told, so that asking again gets
//! the same bytes and never a second deduction — across reboots of the reader and restarts of the
//! daemon.
//!
//! * `outcome`: one row per (reader serial, txn id, request type) that was answered with a stored
//!   answer: the request's keyed digest (to tell "the same request again" from "another request
//!   under the same key" without keeping a card number), the reply bytes as sent, and for a
//!   CARD_PRESENTED answered with a menu the card reference, cashier and entry version its REDEEM
//!   is decided from — after a daemon restart too. MACed with the journal key.
//! * `reader_last`: per reader, the transaction of its latest stored answer (QUERY LAST) and the
//!   cashier a VOID is recorded for. MACed with the journal key.
//!
//! Every row is checked before it is used: a row that fails its check is never sent; the request is
//! declined `INTEGRITY_FAILURE` (not stored) and the finding names the row
//! (`outcome reader R-1 txn 1042: MAC mismatch (REDEEM answer edited)`). [`verify`] checks them all,
//! for `journal verify`.
//!
//! The rules (which answer a request gets) are `crate::conversation::rules`; they are applied here,
//! inside the one `BEGIN IMMEDIATE … COMMIT` that reads the transaction's stored answers and writes
//! the new one. Answers to REDEEM and VOID are committed with `synchronous=FULL`, with the journal rows
//! they report. Answers to CARD_PRESENTED deduct nothing and are committed with `synchronous=NORMAL`:
//! they survive a crash, `kill -9` and a restart of the daemon (the WAL is in the kernel's hands),
//! a power cut may forget the latest of them, and the next FULL commit makes them durable too
//! (PROTOCOL.md §8.2 says what QUERY answers when one was forgotten).

use redeemd_contract::codec::Writer;
use redeemd_contract::keys::{MacKey, Tag, tags_equal};
use redeemd_contract::model::{CardNumber, CardRef};
use rusqlite::{Connection, OptionalExtension, params};

use super::{
    Decision, Declined, Fault, Integrity, MenuOutcome, Pending, RedeemFacts, Store, StoreError,
    VoidFacts, Write,
};
use crate::conversation::rules::{self, Earlier, RequestKind, Verdict};
use crate::engine::{DeclineReason, Now};

/// How decisions become reply bytes: the caller's language and the link's text encoding. The store
/// stores what it returns and sends it again byte for byte.
pub trait Replies {
    /// DECLINED for `txn_id`.
    fn declined(&self, txn_id: u32, reason: DeclineReason) -> Vec<u8>;
    /// The answer to a decision: CARD_MENU, APPROVED or DECLINED.
    fn decision(&self, txn_id: u32, decision: &Decision) -> Vec<u8>;
}

/// A request as a reader sent it: who, which transaction, and its payload bytes. "The same request
/// again" means a byte-identical payload (PROTOCOL.md §8.2); only a keyed digest of it is stored.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// The reader's serial number (HELLO).
    pub reader_id: &'a str,
    pub txn_id: u32,
    /// The message payload, as delivered (it may hold a card number: never stored or logged).
    pub payload: &'a [u8],
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("reader_id", &self.reader_id)
            .field("txn_id", &self.txn_id)
            .field("payload", &format_args!("<{} bytes>", self.payload.len()))
            .finish()
    }
}

/// An answer, and how it came about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Exactly the bytes to send: the type byte, then the payload.
    pub reply: Vec<u8>,
    /// The decision, when one was made now; `None` for a replay or a refusal by the rules.
    pub decision: Option<Decision>,
    pub source: Source,
}

/// How an answer came about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Decided now; stored with what it wrote before it was returned.
    Decided,
    /// Decided now and not stored: it describes the terminal, not the request (a stored row failed
    /// its check: `decision` names it). Nothing was written.
    NotStored,
    /// The same request again: its stored answer. Nothing was written.
    Replayed,
    /// Refused by PROTOCOL.md §8.2 (`TXN_ID_REUSED`, `NO_CARD`). Nothing was written.
    Refused(DeclineReason),
}

/// What QUERY gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Queried {
    /// The stored answer of that transaction's latest request.
    Stored { txn_id: u32, reply: Vec<u8> },
    /// Nothing stored for it (or, for LAST, for this reader).
    Unknown,
    /// A stored row failed its check: nothing may be sent from it.
    Unverified(Integrity),
}

/// What a CARD_PRESENTED answered with a menu keeps for its REDEEM (never the card number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwipeFacts {
    pub card_ref: CardRef,
    pub entry_version: u64,
}

/// One verified `outcome` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerRow {
    pub reader_id: String,
    pub txn_id: u32,
    pub kind: RequestKind,
    pub request_mac: Tag,
    pub reply: Vec<u8>,
    pub swipe: Option<SwipeFacts>,
    /// A CARD_PRESENTED whose REDEEM was answered: set in the REDEEM's transaction, so that a deleted
    /// REDEEM answer is caught (a REDEEM sent again would otherwise be decided again).
    pub redeemed: bool,
    pub cashier_id: String,
    pub first_seq: Option<u64>,
    pub wall_ms: i64,
}

impl AnswerRow {
    fn mac(&self, journal_key: &MacKey) -> Tag {
        let mut w = Writer::with_capacity(96 + self.reply.len());
        w.str(&self.reader_id)
            .u32(self.txn_id)
            .u8(self.kind.message_type().as_u8())
            .fixed(&self.request_mac)
            .bytes(&self.reply)
            .bool(self.swipe.is_some());
        if let Some(s) = &self.swipe {
            w.fixed(&s.card_ref.0).u64(s.entry_version);
        }
        w.bool(self.redeemed)
            .str(&self.cashier_id)
            .bool(self.first_seq.is_some());
        if let Some(seq) = self.first_seq {
            w.u64(seq);
        }
        w.i64(self.wall_ms);
        journal_key.mac(&[b"redeemd/answer/v1", w.as_bytes()])
    }
}

/// The reader's latest transaction (QUERY LAST) and the cashier a VOID is recorded for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderLast {
    pub txn_id: u32,
    pub cashier_id: String,
}

fn reader_last_mac(journal_key: &MacKey, reader_id: &str, last: &ReaderLast) -> Tag {
    let mut w = Writer::with_capacity(64);
    w.str(reader_id).u32(last.txn_id).str(&last.cashier_id);
    journal_key.mac(&[b"redeemd/reader-last/v1", w.as_bytes()])
}

/// The keyed digest of a request's payload: equal payloads, equal digests; a card number in it
/// cannot be recovered or guessed from the stored digest without the key.
pub fn request_mac(journal_key: &MacKey, kind: RequestKind, payload: &[u8]) -> Tag {
    journal_key.mac(&[
        b"redeemd/request/v1",
        &[kind.message_type().as_u8()],
        payload,
    ])
}

const ANSWER_COLUMNS: &str = "reader_id, reader_txn_id, request_type, request_mac, reply, card_ref, entry_version, redeemed, cashier_id, first_seq, wall_ms, mac";

/// `outcome reader R txn N`: how findings name a transaction's stored answers.
fn what(reader_id: &str, txn: impl std::fmt::Display) -> String {
    format!("outcome reader {reader_id} txn {txn}")
}

/// Reads one `outcome` row (selected with [`ANSWER_COLUMNS`]) and checks its types and its MAC.
fn answer_from_row(row: &rusqlite::Row<'_>, journal_key: &MacKey) -> Result<AnswerRow, Integrity> {
    use rusqlite::types::ValueRef;
    let reader_id = match row.get_ref(0) {
        Ok(ValueRef::Text(t)) => String::from_utf8_lossy(t).into_owned(),
        _ => {
            return Err(Integrity::new(
                what("?", "?"),
                "column reader_id is not text (row edited)",
            ));
        }
    };
    let txn = match row.get_ref(1) {
        Ok(ValueRef::Integer(t)) => t,
        _ => {
            return Err(Integrity::new(
                what(&reader_id, "?"),
                "column reader_txn_id is not an integer (row edited)",
            ));
        }
    };
    let at = what(&reader_id, txn);
    let bad = |reason: String| Integrity::new(at.clone(), reason);
    let txn_id =
        u32::try_from(txn).map_err(|_| bad(format!("txn id {txn} out of range (row edited)")))?;
    let int = |i: usize, name: &str| -> Result<Option<i64>, Integrity> {
        match row.get_ref(i) {
            Ok(ValueRef::Null) => Ok(None),
            Ok(ValueRef::Integer(v)) => Ok(Some(v)),
            _ => Err(bad(format!("column {name} is not an integer (row edited)"))),
        }
    };
    let blob = |i: usize, name: &str| -> Result<Option<Vec<u8>>, Integrity> {
        match row.get_ref(i) {
            Ok(ValueRef::Null) => Ok(None),
            Ok(ValueRef::Blob(b)) => Ok(Some(b.to_vec())),
            _ => Err(bad(format!("column {name} is not a blob (row edited)"))),
        }
    };
    let text = |i: usize, name: &str| -> Result<String, Integrity> {
        match row.get_ref(i) {
            Ok(ValueRef::Text(t)) => Ok(String::from_utf8_lossy(t).into_owned()),
            _ => Err(bad(format!("column {name} is not text (row edited)"))),
        }
    };
    let code = int(2, "request_type")?.unwrap_or(-1);
    let kind = u8::try_from(code)
        .ok()
        .and_then(RequestKind::from_code)
        .ok_or_else(|| bad(format!("request type {code} unknown (row edited)")))?;
    let request_mac: Tag = blob(3, "request_mac")?
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("request_mac is not 32 bytes (row edited)".into()))?;
    let reply = blob(4, "reply")?.ok_or_else(|| bad("reply is NULL (row edited)".into()))?;
    let swipe = match (blob(5, "card_ref")?, int(6, "entry_version")?) {
        (None, None) => None,
        (Some(card), Some(version)) => Some(SwipeFacts {
            card_ref: CardRef(
                card.try_into()
                    .map_err(|_| bad("card_ref is not 32 bytes (row edited)".into()))?,
            ),
            entry_version: u64::try_from(version)
                .map_err(|_| bad("negative entry_version (row edited)".into()))?,
        }),
        _ => {
            return Err(bad(
                "card_ref and entry_version: one NULL, one not (row edited)".into(),
            ));
        }
    };
    let redeemed = match int(7, "redeemed")? {
        Some(0) => false,
        Some(1) => true,
        _ => return Err(bad("redeemed is not 0 or 1 (row edited)".into())),
    };
    let cashier_id = text(8, "cashier_id")?;
    let first_seq = int(9, "first_seq")?
        .map(|s| u64::try_from(s).map_err(|_| bad("negative first_seq (row edited)".into())))
        .transpose()?;
    let wall_ms = int(10, "wall_ms")?.ok_or_else(|| bad("wall_ms is NULL (row edited)".into()))?;
    let mac = blob(11, "mac")?.unwrap_or_default();
    let answer = AnswerRow {
        reader_id,
        txn_id,
        kind,
        request_mac,
        reply,
        swipe,
        redeemed,
        cashier_id,
        first_seq,
        wall_ms,
    };
    if !tags_equal(&answer.mac(journal_key), &mac) {
        return Err(bad(format!("MAC mismatch ({} answer edited)", kind.name())));
    }
    Ok(answer)
}

/// The verified stored answers of one transaction of a reader.
pub(super) fn load_txn(
    conn: &Connection,
    journal_key: &MacKey,
    reader_id: &str,
    txn_id: u32,
) -> Result<Vec<AnswerRow>, Fault> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ANSWER_COLUMNS} FROM outcome WHERE reader_id = ?1 AND reader_txn_id = ?2"
    ))?;
    let mut rows = stmt.query(params![reader_id, i64::from(txn_id)])?;
    let mut out = Vec::with_capacity(2);
    while let Some(row) = rows.next()? {
        out.push(answer_from_row(row, journal_key)?);
    }
    let swiped_and_redeemed = out
        .iter()
        .any(|a| a.kind == RequestKind::CardPresented && a.redeemed);
    if swiped_and_redeemed && !out.iter().any(|a| a.kind == RequestKind::Redeem) {
        return Err(Integrity::new(
            what(reader_id, txn_id),
            "its REDEEM was answered, but that answer is missing (row deleted or moved)",
        )
        .into());
    }
    Ok(out)
}

/// The verified `reader_last` row of a reader, if any.
pub(super) fn load_reader_last(
    conn: &Connection,
    journal_key: &MacKey,
    reader_id: &str,
) -> Result<Option<ReaderLast>, Fault> {
    let row: Option<(rusqlite::types::Value, rusqlite::types::Value, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT reader_txn_id, cashier_id, mac FROM reader_last WHERE reader_id = ?1",
        )?
        .query_row([reader_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()
        .map_err(|e| match e {
            rusqlite::Error::InvalidColumnType(..) => Fault::Integrity(Integrity::new(
                format!("reader_last reader {reader_id}"),
                "a column has the wrong type (row edited)",
            )),
            e => Fault::Sql(e),
        })?;
    let Some((txn, cashier, mac)) = row else {
        return Ok(None);
    };
    let bad = || {
        Integrity::new(
            format!("reader_last reader {reader_id}"),
            "MAC mismatch (row edited)",
        )
    };
    let (rusqlite::types::Value::Integer(txn), rusqlite::types::Value::Text(cashier_id)) =
        (txn, cashier)
    else {
        return Err(bad().into());
    };
    let last = ReaderLast {
        txn_id: u32::try_from(txn).map_err(|_| bad())?,
        cashier_id,
    };
    if !tags_equal(&reader_last_mac(journal_key, reader_id, &last), &mac) {
        return Err(bad().into());
    }
    Ok(Some(last))
}

/// Checks every `outcome` and `reader_last` row: MAC, column types, and that each reader's latest
/// transaction has a stored answer. For `journal verify` (through `verify::journal`); every finding
/// names its row.
pub fn verify(conn: &Connection, journal_key: &MacKey) -> rusqlite::Result<Vec<Integrity>> {
    let mut findings = Vec::new();
    let mut answered = std::collections::BTreeSet::new();
    let mut redeems = std::collections::BTreeSet::new();
    let mut redeemed_swipes = Vec::new();
    let mut stmt = conn.prepare(&format!(
        "SELECT {ANSWER_COLUMNS} FROM outcome ORDER BY reader_id, reader_txn_id, request_type"
    ))?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        match answer_from_row(row, journal_key) {
            Ok(a) => {
                match a.kind {
                    RequestKind::Redeem => {
                        redeems.insert((a.reader_id.clone(), a.txn_id));
                    }
                    RequestKind::CardPresented if a.redeemed => {
                        redeemed_swipes.push((a.reader_id.clone(), a.txn_id));
                    }
                    _ => {}
                }
                answered.insert((a.reader_id, a.txn_id));
            }
            Err(finding) => findings.push(finding),
        }
    }
    for (reader_id, txn_id) in redeemed_swipes {
        if !redeems.contains(&(reader_id.clone(), txn_id)) {
            findings.push(Integrity::new(
                what(&reader_id, txn_id),
                "its REDEEM was answered, but that answer is missing (row deleted or moved)",
            ));
        }
    }
    let mut stmt = conn.prepare("SELECT reader_id FROM reader_last ORDER BY reader_id")?;
    let readers: Vec<rusqlite::types::Value> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for reader in readers {
        let rusqlite::types::Value::Text(reader_id) = reader else {
            findings.push(Integrity::new(
                "reader_last reader ?",
                "reader_id is not text (row edited)",
            ));
            continue;
        };
        match load_reader_last(conn, journal_key, &reader_id) {
            Ok(Some(last)) if !answered.contains(&(reader_id.clone(), last.txn_id)) => {
                findings.push(Integrity::new(
                    format!("reader_last reader {reader_id}"),
                    format!(
                        "points to txn {} but no answer of it is stored (rows deleted)",
                        last.txn_id
                    ),
                ));
            }
            Ok(_) => {}
            Err(Fault::Integrity(i)) => findings.push(i),
            Err(Fault::Sql(e)) => return Err(e),
            Err(Fault::Stale) => {}
        }
    }
    Ok(findings)
}

/// What a decision of a new request produced, for [`Store::answer`] to write.
pub(super) struct Decided {
    pub(super) decision: Decision,
    pub(super) write: Option<Write>,
    pub(super) swipe: Option<SwipeFacts>,
    pub(super) cashier_id: String,
}

impl Store {
    /// PROTOCOL.md §5.9: the menu for a presented card, or a decline; stored (its card reference,
    /// cashier and entry version with it) before it is returned.
    pub fn answer_card_presented(
        &mut self,
        request: Request<'_>,
        card_number: &str,
        cashier_id: &str,
        now: Now,
        replies: &dyn Replies,
    ) -> Result<Outcome, StoreError> {
        let card_ref = CardNumber::parse(card_number)
            .ok()
            .map(|n| n.card_ref(&self.keys.card_token));
        self.answer(
            request,
            RequestKind::CardPresented,
            now,
            replies,
            |store, _| {
                let decision = match store.menu_inner(card_ref.as_ref(), now)? {
                    MenuOutcome::Menu(menu) => Decision::Menu(menu),
                    MenuOutcome::Declined(d) => Decision::Declined(d),
                };
                let swipe = match (&decision, card_ref) {
                    (Decision::Menu(m), Some(card_ref)) => Some(SwipeFacts {
                        card_ref,
                        entry_version: m.entry_version,
                    }),
                    _ => None,
                };
                Ok(Decided {
                    decision,
                    write: None,
                    swipe,
                    cashier_id: cashier_id.to_owned(),
                })
            },
        )
    }

    /// PROTOCOL.md §5.11: redeems `items` (entry index from the menu, quantity) all or nothing, for
    /// the card of this transaction's stored CARD_PRESENTED; the answer is committed with the journal
    /// rows it reports.
    pub fn answer_redeem(
        &mut self,
        request: Request<'_>,
        items: &[(u16, u64)],
        identity: Option<&[u8]>,
        now: Now,
        replies: &dyn Replies,
    ) -> Result<Outcome, StoreError> {
        self.answer(
            request,
            RequestKind::Redeem,
            now,
            replies,
            |store, stored| {
                let swiped = stored.iter().find(|a| a.kind == RequestKind::CardPresented);
                let (Some(swipe), Some(row)) = (swiped.and_then(|a| a.swipe), swiped) else {
                    // The rules decide a REDEEM only after a swipe answered with a menu.
                    return Err(Integrity::new(
                        what(request.reader_id, request.txn_id),
                        "REDEEM decided without a stored menu",
                    )
                    .into());
                };
                let facts = RedeemFacts {
                    reader_id: request.reader_id,
                    txn_id: request.txn_id,
                    card_ref: swipe.card_ref,
                    entry_version: swipe.entry_version,
                    cashier_id: &row.cashier_id,
                    items,
                    identity,
                };
                let (decision, write) = store.decide_redeem(&facts, now)?;
                Ok(Decided {
                    decision,
                    write,
                    swipe: None,
                    cashier_id: row.cashier_id.clone(),
                })
            },
        )
    }

    /// PROTOCOL.md §5.14: voids the redemption approved with `original_auth_code`, recorded for the
    /// cashier of the reader's latest transaction (VOID names none).
    pub fn answer_void(
        &mut self,
        request: Request<'_>,
        original_auth_code: &str,
        now: Now,
        replies: &dyn Replies,
    ) -> Result<Outcome, StoreError> {
        self.answer(request, RequestKind::Void, now, replies, |store, _| {
            let cashier_id = load_reader_last(&store.conn, &store.keys.journal, request.reader_id)?
                .map(|l| l.cashier_id)
                .unwrap_or_default();
            let facts = VoidFacts {
                reader_id: request.reader_id,
                txn_id: request.txn_id,
                original_auth_code,
                cashier_id: &cashier_id,
            };
            let (decision, write) = store.decide_void(&facts, now)?;
            Ok(Decided {
                decision,
                write,
                swipe: None,
                cashier_id,
            })
        })
    }

    /// PROTOCOL.md §8.5: the stored answer of transaction `txn_id` of this reader (`None`: QUERY
    /// LAST, its latest transaction with a stored answer).
    pub fn answer_query(
        &mut self,
        reader_id: &str,
        txn_id: Option<u32>,
    ) -> Result<Queried, StoreError> {
        // One snapshot for the pointer and the rows it points to.
        self.conn.execute_batch("BEGIN DEFERRED")?;
        let found = self.query_in_snapshot(reader_id, txn_id);
        // A read transaction: ending it cannot lose anything.
        let _ = self.conn.execute_batch("COMMIT");
        match found {
            Ok(q) => Ok(q),
            Err(Fault::Integrity(i)) => Ok(Queried::Unverified(i)),
            Err(Fault::Sql(e)) => Err(e.into()),
            Err(Fault::Stale) => Ok(Queried::Unknown),
        }
    }

    fn query_in_snapshot(&self, reader_id: &str, txn_id: Option<u32>) -> Result<Queried, Fault> {
        let key = &self.keys.journal;
        let txn_id = match txn_id {
            Some(t) => t,
            None => match load_reader_last(&self.conn, key, reader_id)? {
                Some(last) => last.txn_id,
                None => return Ok(Queried::Unknown),
            },
        };
        let rows = load_txn(&self.conn, key, reader_id, txn_id)?;
        let kinds: Vec<RequestKind> = rows.iter().map(|r| r.kind).collect();
        let latest = rules::answer_for_query(&kinds)
            .and_then(|kind| rows.into_iter().find(|r| r.kind == kind));
        Ok(match latest {
            Some(row) => Queried::Stored {
                txn_id,
                reply: row.reply,
            },
            None => Queried::Unknown,
        })
    }

    /// The common shape of every stored answer: in one write transaction, read and verify the
    /// transaction's stored answers, apply the rules, and for a new request decide, write what the
    /// decision writes and its answer, and commit — with `synchronous=NORMAL` for a CARD_PRESENTED
    /// (it deducts nothing), `FULL` for the rest.
    fn answer(
        &mut self,
        request: Request<'_>,
        kind: RequestKind,
        now: Now,
        replies: &dyn Replies,
        decide: impl Fn(&Self, &[AnswerRow]) -> Result<Decided, Fault>,
    ) -> Result<Outcome, StoreError> {
        let relaxed = kind == RequestKind::CardPresented;
        self.set_synchronous_normal(relaxed)?;
        let result = self.answer_in_transaction(request, kind, now, replies, decide);
        if relaxed {
            // Every other write of this connection must be durable: back to FULL whatever happened.
            self.set_synchronous_normal(false)?;
        }
        // A full disk or an I/O error is shown by `redeemd status` until a write succeeds again.
        self.note_storage(result)
    }

    fn answer_in_transaction(
        &mut self,
        request: Request<'_>,
        kind: RequestKind,
        now: Now,
        replies: &dyn Replies,
        decide: impl Fn(&Self, &[AnswerRow]) -> Result<Decided, Fault>,
    ) -> Result<Outcome, StoreError> {
        let txn_id = request.txn_id;
        let digest = request_mac(&self.keys.journal, kind, request.payload);
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let stored = match load_txn(&self.conn, &self.keys.journal, request.reader_id, txn_id) {
            Ok(rows) => rows,
            Err(fault) => {
                self.end_transaction(false)?;
                return match fault {
                    Fault::Sql(e) => Err(e.into()),
                    Fault::Integrity(i) => Ok(not_stored(txn_id, i, replies)),
                    Fault::Stale => Ok(not_stored(
                        txn_id,
                        Integrity::new("cache", "entries newer than the installed manifest"),
                        replies,
                    )),
                };
            }
        };
        let earlier: Vec<Earlier> = stored
            .iter()
            .map(|a| Earlier {
                kind: a.kind,
                same_payload: tags_equal(&a.request_mac, &digest),
                gave_menu: a.swipe.is_some(),
            })
            .collect();
        match rules::judge(kind, &earlier) {
            Verdict::Replay => {
                self.end_transaction(false)?;
                let reply = stored
                    .into_iter()
                    .find(|a| a.kind == kind)
                    .map(|a| a.reply)
                    .unwrap_or_default();
                Ok(Outcome {
                    reply,
                    decision: None,
                    source: Source::Replayed,
                })
            }
            Verdict::Refuse(reason) => {
                self.end_transaction(false)?;
                Ok(Outcome {
                    reply: replies.declined(txn_id, reason),
                    decision: None,
                    source: Source::Refused(reason),
                })
            }
            Verdict::Decide => {
                let decided = match self.decide(true, now, |s| decide(s, &stored)) {
                    Ok(Ok(d)) => d,
                    Ok(Err(i)) => {
                        self.end_transaction(false)?;
                        return Ok(not_stored(txn_id, i, replies));
                    }
                    Err(e) => {
                        let _ = self.end_transaction(false);
                        return Err(e);
                    }
                };
                let swiped = stored
                    .into_iter()
                    .find(|a| a.kind == RequestKind::CardPresented);
                let written =
                    self.write_answer(request, kind, digest, decided, swiped, now, replies);
                let (outcome, pending) = match written {
                    Ok(done) => done,
                    Err(e) => {
                        let _ = self.end_transaction(false);
                        return Err(e);
                    }
                };
                self.end_transaction(true)?;
                // Committed: now the in-memory state may advance.
                self.commits_since_checkpoint = self.commits_since_checkpoint.saturating_add(1);
                self.state = pending.state;
                if pending.counts_as_redemption {
                    self.offline_redemptions += 1;
                }
                Ok(outcome)
            }
        }
    }

    /// Writes a decision in the open transaction: what it writes (journal rows, usage, identity
    /// counter, chain head) and its answer with the reader's latest-transaction pointer; for a
    /// REDEEM, its transaction's CARD_PRESENTED (`swiped`) is marked redeemed. The caller commits,
    /// then applies the returned state.
    #[allow(clippy::too_many_arguments)]
    fn write_answer(
        &self,
        request: Request<'_>,
        kind: RequestKind,
        request_mac: Tag,
        decided: Decided,
        swiped: Option<AnswerRow>,
        now: Now,
        replies: &dyn Replies,
    ) -> Result<(Outcome, Pending), StoreError> {
        let Decided {
            decision,
            write,
            swipe,
            cashier_id,
        } = decided;
        let (pending, first_seq) = self.write_decision(write, now)?;
        let reply = replies.decision(request.txn_id, &decision);
        let stored = match &decision {
            Decision::Declined(d) => rules::is_stored(d.reason),
            _ => true,
        };
        if stored {
            let row = AnswerRow {
                reader_id: request.reader_id.to_owned(),
                txn_id: request.txn_id,
                kind,
                request_mac,
                reply: reply.clone(),
                swipe,
                redeemed: false,
                cashier_id,
                first_seq,
                wall_ms: now.wall_ms,
            };
            self.put_answer(&row)?;
            if let Some(mut swiped) = swiped.filter(|_| kind == RequestKind::Redeem) {
                swiped.redeemed = true;
                self.put_answer(&swiped)?;
            }
            let last = ReaderLast {
                txn_id: request.txn_id,
                cashier_id: row.cashier_id,
            };
            self.conn
                .prepare_cached(
                    "INSERT INTO reader_last (reader_id, reader_txn_id, cashier_id, mac) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (reader_id) DO UPDATE SET reader_txn_id = excluded.reader_txn_id, \
                     cashier_id = excluded.cashier_id, mac = excluded.mac",
                )?
                .execute(params![
                    request.reader_id,
                    i64::from(last.txn_id),
                    last.cashier_id,
                    &reader_last_mac(&self.keys.journal, request.reader_id, &last)[..],
                ])?;
        }
        let source = if stored {
            Source::Decided
        } else {
            Source::NotStored
        };
        Ok((
            Outcome {
                reply,
                decision: Some(decision),
                source,
            },
            pending,
        ))
    }
}

impl Store {
    /// Inserts or replaces one answer row, with its MAC, in the open transaction.
    fn put_answer(&self, row: &AnswerRow) -> Result<(), StoreError> {
        let mac = row.mac(&self.keys.journal);
        self.conn
            .prepare_cached(&format!(
                "INSERT OR REPLACE INTO outcome ({ANSWER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
            ))?
            .execute(params![
                row.reader_id,
                i64::from(row.txn_id),
                row.kind.message_type().as_u8(),
                &row.request_mac[..],
                &row.reply,
                row.swipe.map(|s| s.card_ref.0.to_vec()),
                row.swipe
                    .map(|s| i64::try_from(s.entry_version).unwrap_or(i64::MAX)),
                i64::from(row.redeemed),
                row.cashier_id,
                row.first_seq.map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
                row.wall_ms,
                &mac[..],
            ])?;
        Ok(())
    }
}

/// A decline that describes the terminal: a stored row failed its check. Named for the log,
/// never stored.
fn not_stored(txn_id: u32, finding: Integrity, replies: &dyn Replies) -> Outcome {
    let reason = DeclineReason::IntegrityFailure;
    Outcome {
        reply: replies.declined(txn_id, reason),
        decision: Some(Decision::Declined(Declined {
            reason,
            remaining: None,
            detail: Some(finding.to_string()),
        })),
        source: Source::NotStored,
    }
}
