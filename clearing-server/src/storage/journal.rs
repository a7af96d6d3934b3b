//! The terminals' journals on the platform: upload (`POST journal`: every rule of
//! `docs/api/README.md`, all or nothing per batch), the head (`GET journal/head`), end-of-day closes
//! (`POST batch-close`) and the exceptions list of refused records.
//!
//! An upload is one read-committed transaction, and what must hold is held by keys and row locks, not
//! by serializable isolation: `(terminal, seq)` is the journal's primary key, so of two server
//! processes storing one terminal's batch at once one fails on the key and runs again, counting the
//! winner's rows as duplicates — a record is stored exactly once; a card's usage is an atomic increment
//! and its body is locked before it is patched; the version counter's row lock orders the uploads'
//! version bumps, which are committed in the order they are taken. (Serializable isolation made every
//! two concurrent uploads of the fleet conflict on that one counter row: under load on PostgreSQL they
//! ran out of retries.)

use std::collections::BTreeMap;

use redeemd_contract::journal::genesis_mac;
use redeemd_contract::keys::{TAG_LEN, Tag, TerminalKeys, tags_equal};
use redeemd_contract::{JournalRecord, RecordKind};

use super::sql::{StorageError, Tx, int};
use super::{Db, Isolation, MAX_RECORD_BYTES, cards};
use crate::core::close;
use crate::core::judge::{self, Verdict};
use crate::core::problem::Problem;
use crate::params;
use crate::vault::Vault;

/// The highest stored seq of a terminal and its MAC (0 and `None` when nothing is stored).
pub fn head(tx: &mut dyn Tx, terminal_id: &str) -> Result<(u64, Option<Tag>), StorageError> {
    let row = tx.query_opt(
        "SELECT seq, mac FROM journal WHERE terminal_id = $1 ORDER BY seq DESC LIMIT 1",
        params![terminal_id],
    )?;
    Ok(match row {
        Some(r) => (r.u64(0)?, tag(r.blob(1)?)),
        None => (0, None),
    })
}

fn tag(bytes: &[u8]) -> Option<Tag> {
    <[u8; TAG_LEN]>::try_from(bytes).ok()
}

/// One record of an upload, after the JSON envelope was parsed.
#[derive(Debug, Clone)]
pub struct UploadRecord {
    pub seq: u64,
    pub record: Vec<u8>,
    pub mac: Tag,
}

/// The answer to an accepted upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub acknowledged_seq: u64,
    pub acknowledged_mac: Tag,
    pub stored: u64,
    pub duplicates: u64,
}

/// One upload of a terminal: its records, which must be consecutive from `from_seq`.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub terminal_id: &'a str,
    /// The merchant the terminal is enrolled for: every record must name it.
    pub merchant_id: &'a str,
    pub keys: &'a TerminalKeys,
    pub from_seq: u64,
    pub records: &'a [UploadRecord],
    pub now_ms: i64,
}

/// Verifies, judges and stores a batch, all or nothing (`docs/api/README.md`, "`POST journal`"). A
/// record the server refuses as unverifiable is also written to the exceptions list (after the batch
/// rolled back).
pub fn store_batch(db: &Db, vault: &Vault, batch: &Batch<'_>) -> Result<Ack, Problem> {
    let (terminal_id, now_ms) = (batch.terminal_id, batch.now_ms);
    let result = db.transaction(Isolation::ReadCommitted, |tx| {
        store_batch_tx(tx, vault, batch)
    });
    if let Err(p) = &result
        && p.status == 422
    {
        db.write(|tx| {
            note_exception(tx, terminal_id, p.seq, p.code, &p.detail, now_ms).map_err(Problem::from)
        })
        .map_err(|e| Problem::internal(format!("recording exception: {}", e.detail)))?;
    }
    result
}

fn store_batch_tx(tx: &mut dyn Tx, vault: &Vault, batch: &Batch<'_>) -> Result<Ack, Problem> {
    let &Batch {
        terminal_id,
        merchant_id,
        keys,
        from_seq,
        records,
        now_ms,
    } = batch;
    let (head_seq, head_mac) = head(tx, terminal_id)?;
    let gap = records
        .iter()
        .enumerate()
        .find(|(i, r)| Some(r.seq) != from_seq.checked_add(*i as u64));
    if let Some((i, r)) = gap {
        return Err(Problem::new(
            409,
            "sequence_gap",
            format!(
                "records are not consecutive from from_seq {from_seq}: record {i} has seq {}",
                r.seq
            ),
        )
        .acknowledged(head_seq));
    }
    if from_seq > head_seq + 1 {
        return Err(Problem::new(
            409,
            "sequence_gap",
            format!(
                "batch starts at seq {from_seq} but the server holds {head_seq}: send from {}",
                head_seq + 1
            ),
        )
        .acknowledged(head_seq));
    }
    // The MAC the next record must chain to.
    let mut prev: Tag = if from_seq == 1 {
        genesis_mac(&keys.journal, terminal_id)
    } else if from_seq == head_seq + 1 {
        head_mac.ok_or_else(|| Problem::internal("head without MAC".into()))?
    } else {
        stored(tx, terminal_id, from_seq - 1)?
            .map(|(_, m)| m)
            .ok_or_else(|| Problem::internal(format!("seq {} missing", from_seq - 1)))?
    };
    let (mut new, mut duplicates) = (0u64, 0u64);
    let mut usage = Usage::default();
    for r in records {
        let at = |code, detail: String| {
            Problem::new(422, code, format!("journal seq {}: {detail}", r.seq))
                .with_seq(r.seq)
                .acknowledged(head_seq)
        };
        if r.seq <= head_seq {
            match stored(tx, terminal_id, r.seq)? {
                Some((bytes, mac)) if bytes == r.record && tags_equal(&mac, &r.mac) => {
                    duplicates += 1;
                    prev = mac;
                    continue;
                }
                _ => {
                    return Err(Problem::new(
                        409,
                        "sequence_conflict",
                        format!(
                            "journal seq {}: the server holds a different record at this seq",
                            r.seq
                        ),
                    )
                    .with_seq(r.seq)
                    .acknowledged(head_seq));
                }
            }
        }
        if r.record.len() > MAX_RECORD_BYTES {
            return Err(at(
                "record_malformed",
                format!("{} bytes, at most {MAX_RECORD_BYTES}", r.record.len()),
            ));
        }
        let rec =
            JournalRecord::decode(&r.record).map_err(|e| at("record_malformed", e.to_string()))?;
        if rec.terminal_id != terminal_id || rec.seq != r.seq {
            return Err(at(
                "record_mismatch",
                format!("record says terminal {} seq {}", rec.terminal_id, rec.seq),
            ));
        }
        if !rec.verify_mac(&keys.journal, &r.mac) {
            return Err(at(
                "record_mac_invalid",
                "MAC mismatch (record edited?)".into(),
            ));
        }
        if !tags_equal(&rec.prev_mac, &prev) {
            return Err(at(
                "chain_broken",
                format!("prev_mac does not equal the MAC of seq {}", r.seq - 1),
            ));
        }
        // A terminal books only to its own merchant: another merchant's id is refused, never paid to
        // the terminal's merchant under another name.
        if rec.kind != RecordKind::BatchClose && rec.merchant_id != merchant_id {
            return Err(at(
                "merchant_mismatch",
                format!(
                    "record names merchant {}, but terminal {terminal_id} is enrolled for {merchant_id}",
                    rec.merchant_id
                ),
            ));
        }
        let card = usage.apply(tx, vault, keys, &rec)?;
        let verdict = judge_record(tx, terminal_id, &rec, card.clone())?;
        let (held, void_of) = (
            match &verdict {
                Verdict::Payable => None,
                Verdict::Held { code, .. } => Some(*code),
            },
            (rec.kind == RecordKind::Void)
                .then(|| int("seq", rec.original_seq))
                .transpose()?,
        );
        tx.execute(
            "INSERT INTO journal (terminal_id, seq, record, mac, received_ms, card_id, held, void_of)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            params![
                terminal_id,
                int("seq", r.seq)?,
                &r.record,
                &r.mac,
                now_ms,
                card.ok(),
                held,
                void_of
            ],
        )?;
        if let Verdict::Held { code, detail } = &verdict {
            note_exception(tx, terminal_id, Some(r.seq), code, detail, now_ms)?;
        }
        // A record refused at this seq before (edited, chain broken, …) is now stored as the
        // terminal wrote it: those refusals are resolved.
        tx.execute(
            "UPDATE exception SET resolved_ms = $3
             WHERE terminal_id = $1 AND seq = $2 AND resolved_ms IS NULL AND code IN
                 ('record_malformed', 'record_mismatch', 'record_mac_invalid', 'chain_broken', 'merchant_mismatch')",
            params![terminal_id, int("seq", r.seq)?, now_ms],
        )?;
        new += 1;
        prev = r.mac;
    }
    usage.finish(tx, now_ms)?;
    let last = records
        .last()
        .ok_or_else(|| Problem::new(400, "malformed_request", "no records".into()))?;
    Ok(Ack {
        acknowledged_seq: last.seq,
        acknowledged_mac: last.mac,
        stored: new,
        duplicates,
    })
}

/// The verdict on a new record (`core::judge`), from the facts the platform holds: its card, the price
/// it signed for the item at the record's entry version, and for a void the line it voids.
fn judge_record(
    tx: &mut dyn Tx,
    terminal_id: &str,
    rec: &JournalRecord,
    card: Result<i64, String>,
) -> Result<Verdict, Problem> {
    let signed_price_fen = match &card {
        Ok(id) if rec.kind == RecordKind::Redeem => cards::signed_price(
            tx,
            *id,
            &rec.package_id,
            &rec.service_code,
            rec.entry_version,
        )?,
        _ => None,
    };
    let (mut original, mut voided_by) = (None, None);
    if rec.kind == RecordKind::Void && rec.original_seq < rec.seq {
        let o = int("seq", rec.original_seq)?;
        if let Some(row) = tx.query_opt(
            "SELECT record, held FROM journal WHERE terminal_id = $1 AND seq = $2",
            params![terminal_id, o],
        )? {
            let stored = JournalRecord::decode(row.blob(0)?).map_err(|e| {
                Problem::internal(format!(
                    "stored record {terminal_id} seq {o} does not decode: {e}"
                ))
            })?;
            original = Some((stored, row.opt_text(1)?));
        }
        voided_by = tx
            .query_opt(
                "SELECT seq FROM journal WHERE terminal_id = $1 AND void_of = $2 AND held IS NULL
                 ORDER BY seq LIMIT 1",
                params![terminal_id, o],
            )?
            .map(|r| r.u64(0))
            .transpose()?;
    }
    Ok(judge::judge(
        rec,
        &judge::Facts {
            card,
            signed_price_fen,
            original: original.as_ref().map(|(r, h)| (r, h.as_deref())),
            voided_by,
        },
    ))
}

/// What a batch's new records do to the platform's cards: each record is mapped to its card (its
/// reference decrypted under the terminal's card-token key, the card found by number), its quantity counted on the card's item (a void subtracts), and every
/// touched card gets one new entitlement version at the end of the batch, so that every shop learns
/// of the usage in its next delta. A record that cannot be mapped is stored all the same (a verified
/// record is never refused for what it says about cards) and held by its verdict.
#[derive(Default)]
struct Usage {
    /// Per touched card: (package, service code) → the item's new `uses_left`.
    touched: BTreeMap<i64, BTreeMap<(String, String), u32>>,
}

impl Usage {
    /// Counts the record on its card's item; returns the card, or why there is none.
    fn apply(
        &mut self,
        tx: &mut dyn Tx,
        vault: &Vault,
        keys: &TerminalKeys,
        rec: &JournalRecord,
    ) -> Result<Result<i64, String>, Problem> {
        let delta = match rec.kind {
            RecordKind::Redeem => i64::from(rec.quantity),
            RecordKind::Void => -i64::from(rec.quantity),
            // A close is about the terminal's day, not a card.
            RecordKind::BatchClose => return Ok(Err("a batch close names no card".into())),
        };
        let card_id = match cards::card_for_ref(tx, vault, keys, &rec.card_ref)? {
            Ok(id) => id,
            Err(why) => return Ok(Err(why)),
        };
        // The uses were consumed at the counter whatever the verdict on the money: counted, so that
        // every shop's `uses_left` agrees with what the shops did.
        if let Some(left) =
            cards::add_usage(tx, card_id, &rec.package_id, &rec.service_code, delta)?
        {
            self.touched
                .entry(card_id)
                .or_default()
                .insert((rec.package_id.clone(), rec.service_code.clone()), left);
        }
        Ok(Ok(card_id))
    }

    fn finish(self, tx: &mut dyn Tx, now_ms: i64) -> Result<(), Problem> {
        if self.touched.is_empty() {
            return Ok(());
        }
        let version = cards::bump_version(tx, now_ms)?;
        for (card, items) in &self.touched {
            let left: Vec<(&str, &str, u32)> = items
                .iter()
                .map(|((p, c), l)| (p.as_str(), c.as_str(), *l))
                .collect();
            cards::patch_uses_left(tx, *card, &left, version)
                .map_err(|e| Problem::internal(e.to_string()))?;
        }
        Ok(())
    }
}

fn note_exception(
    tx: &mut dyn Tx,
    terminal_id: &str,
    seq: Option<u64>,
    code: &str,
    detail: &str,
    now_ms: i64,
) -> Result<(), StorageError> {
    let seq = seq.map(|s| int("seq", s)).transpose()?;
    tx.execute(
        "INSERT INTO exception (terminal_id, seq, code, detail, at_ms) VALUES ($1, $2, $3, $4, $5)",
        params![terminal_id, seq, code, detail, now_ms],
    )?;
    Ok(())
}

fn stored(
    tx: &mut dyn Tx,
    terminal_id: &str,
    seq: u64,
) -> Result<Option<(Vec<u8>, Tag)>, StorageError> {
    let row = tx.query_opt(
        "SELECT record, mac FROM journal WHERE terminal_id = $1 AND seq = $2",
        params![terminal_id, int("seq", seq)?],
    )?;
    let Some(r) = row else { return Ok(None) };
    let Some(mac) = tag(r.blob(1)?) else {
        return Ok(None);
    };
    Ok(Some((r.blob(0)?.to_vec(), mac)))
}

/// Exceptions of a terminal, oldest first: `(seq, code, detail)`.
pub fn exceptions(
    tx: &mut dyn Tx,
    terminal_id: &str,
) -> Result<Vec<(Option<u64>, String, String)>, StorageError> {
    tx.query(
        "SELECT seq, code, detail FROM exception WHERE terminal_id = $1 ORDER BY id",
        params![terminal_id],
    )?
    .iter()
    .map(|r| {
        Ok((
            r.opt_i64(0)?.map(|s| u64::try_from(s).unwrap_or(0)),
            r.text(1)?,
            r.text(2)?,
        ))
    })
    .collect()
}

/// Reconciles an end-of-day close (`docs/api/README.md`, "`POST batch-close`"), idempotent by
/// (terminal, business date): one serializable transaction, so that two server processes answering
/// the same close store one answer.
pub fn batch_close(
    db: &Db,
    terminal_id: &str,
    close: &close::BatchClose,
) -> Result<close::BatchCloseResult, Problem> {
    let bad = |detail: String| Problem::new(400, "malformed_request", detail);
    let days = close::parse_date(&close.business_date).ok_or_else(|| {
        bad(format!(
            "business_date {:?} is not a valid YYYY-MM-DD",
            close.business_date
        ))
    })?;
    if !(-840..=840).contains(&close.utc_offset_minutes) {
        return Err(bad("utc_offset_minutes outside -840..=840".into()));
    }
    // The API's integers are int64: a count or seq beyond it is outside the schema, not a mismatch.
    let int64 = |what: String, v: u64| {
        if v > i64::MAX as u64 {
            Err(bad(format!("{what} {v} is above 2^63 - 1 (int64)")))
        } else {
            Ok(())
        }
    };
    int64("first_seq".into(), close.first_seq)?;
    int64("through_seq".into(), close.through_seq)?;
    for (i, item) in close.items.iter().enumerate() {
        int64(format!("items[{i}].redeemed"), item.redeemed)?;
        int64(format!("items[{i}].voided"), item.voided)?;
    }
    if close.first_seq > close.through_seq {
        return Err(Problem::new(
            422,
            "close_inconsistent",
            format!(
                "first_seq {} above through_seq {}",
                close.first_seq, close.through_seq
            ),
        ));
    }
    let request = serde_json::to_string(close).map_err(|e| Problem::internal(e.to_string()))?;
    db.write(|tx| {
        let (head_seq, _) = head(tx, terminal_id)?;
        if close.through_seq > head_seq {
            return Err(Problem::new(
                409,
                "journal_incomplete",
                format!(
                    "close covers seq {} but the server holds {head_seq}: upload first",
                    close.through_seq
                ),
            )
            .acknowledged(head_seq));
        }
        let before = tx.query_opt(
            "SELECT request, answer FROM batch_close WHERE terminal_id = $1 AND business_date = $2",
            params![terminal_id, &close.business_date],
        )?;
        if let Some(row) = before {
            if row.text(0)? != request {
                return Err(Problem::new(
                    409,
                    "batch_close_conflict",
                    format!(
                        "{} was already closed with other totals",
                        close.business_date
                    ),
                ));
            }
            return serde_json::from_str(&row.text(1)?)
                .map_err(|e| Problem::internal(e.to_string()));
        }
        let mut records = Vec::new();
        for row in tx.query(
            "SELECT record FROM journal WHERE terminal_id = $1 ORDER BY seq",
            params![terminal_id],
        )? {
            records.push(JournalRecord::decode(row.blob(0)?).map_err(|e| {
                Problem::internal(format!(
                    "stored record of {terminal_id} does not decode: {e}"
                ))
            })?);
        }
        let server = close::totals(&records, close::day_window(days, close.utc_offset_minutes));
        let result = close::reconcile(close, &server);
        let answer =
            serde_json::to_string(&result).map_err(|e| Problem::internal(e.to_string()))?;
        tx.execute(
            "INSERT INTO batch_close (terminal_id, business_date, request, answer) VALUES ($1, $2, $3, $4)",
            params![terminal_id, &close.business_date, &request, &answer],
        )?;
        Ok(result)
    })
}
