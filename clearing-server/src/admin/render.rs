//! Text for a person: statements and exceptions as `clearing-server admin` prints them (`--json`
//! prints the same structures as JSON), and `card show`. Card numbers appear masked only.

use std::fmt::Write as _;

use redeemd_contract::model::{CardNumber, MerchantScope};

use crate::core::clearing::{MemberStatement, MerchantStatement};
use crate::storage::Tx;
use crate::storage::cards::{self, CardError};
use crate::storage::statements::{Exceptions, Window, masked_card};
use crate::vault::Vault;

fn yuan(fen: impl Into<i128>) -> String {
    let fen: i128 = fen.into();
    let sign = if fen < 0 { "-" } else { "" };
    let abs = fen.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

fn time(ms: i64) -> String {
    cards::rfc3339(ms)
}

fn window_text((from, until): Window) -> String {
    match (from, until) {
        (i64::MIN, i64::MAX) => "all records".into(),
        (i64::MIN, u) => format!("before {}", time(u)),
        (f, i64::MAX) => format!("from {}", time(f)),
        (f, u) => format!("{} to {} (exclusive)", time(f), time(u)),
    }
}

pub fn merchant(s: &MerchantStatement, name: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "merchant statement  {} {}  {}",
        s.merchant_id,
        name,
        window_text((s.from_ms, s.until_ms))
    );
    let _ = writeln!(
        out,
        "{:<12} {:<8} {:<12} {:>8} {:>6} {:>5} {:>12}",
        "package", "item", "title", "redeemed", "voided", "net", "amount ¥"
    );
    for l in &s.lines {
        let _ = writeln!(
            out,
            "{:<12} {:<8} {:<12} {:>8} {:>6} {:>5} {:>12}",
            l.package_id,
            l.service_code,
            l.title,
            l.redeemed,
            l.voided,
            l.net_units,
            yuan(l.net_amount_fen)
        );
    }
    let _ = writeln!(
        out,
        "records {}  net amount ¥{}  commission {}.{:02} % ¥{}  payable to the merchant ¥{}",
        s.records,
        yuan(s.net_amount_fen),
        s.commission_bps / 100,
        s.commission_bps % 100,
        yuan(s.commission_fen),
        yuan(s.payable_fen)
    );
    if s.held_records > 0 {
        let reasons: Vec<String> = s
            .held
            .iter()
            .map(|h| format!("{} {} (¥{})", h.code, h.records, yuan(h.claimed_fen)))
            .collect();
        let _ = writeln!(
            out,
            "held, not payable: {} records claiming ¥{}: {}  (admin exceptions)",
            s.held_records,
            yuan(s.held_claimed_fen),
            reasons.join(", ")
        );
    }
    out
}

pub fn member(s: &MemberStatement, masked: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "member usage statement  card {masked}  {}",
        window_text((s.from_ms, s.until_ms))
    );
    for i in &s.items {
        let total = i.uses_total.map_or_else(|| "?".into(), |t| t.to_string());
        let _ = writeln!(
            out,
            "  {} {} {}: used {} (redeemed {}, voided {}) of {total}",
            i.package_id, i.service_code, i.title, i.net_units, i.redeemed, i.voided
        );
    }
    for r in &s.records {
        let _ = writeln!(
            out,
            "  {}  {} seq {}  {} {} {} ×{}  auth {}",
            time(r.wall_ms),
            r.terminal_id,
            r.seq,
            r.merchant_id,
            r.kind,
            r.service_code,
            r.quantity,
            r.auth_code
        );
    }
    out
}

pub fn exceptions(tx: &mut dyn Tx, e: &Exceptions) -> Result<String, CardError> {
    let mut out = String::new();
    let open = e
        .refused_or_unmapped
        .iter()
        .filter(|n| n.resolved_at_ms.is_none())
        .count();
    let total = open + e.redeemed_while_denied.len() + e.over_redeemed.len();
    let _ = writeln!(out, "exceptions: {total}");
    for n in &e.refused_or_unmapped {
        let seq = n.seq.map_or_else(|| "-".into(), |s| s.to_string());
        let resolved = n.resolved_at_ms.map_or_else(String::new, |at| {
            format!("; resolved {}: a later upload stored this seq", time(at))
        });
        let _ = writeln!(
            out,
            "  {}{} terminal {} seq {seq}: {} ({}{resolved})",
            if n.resolved_at_ms.is_some() {
                "(resolved) "
            } else {
                ""
            },
            n.code,
            n.terminal_id,
            n.detail,
            time(n.at_ms)
        );
    }
    for d in &e.redeemed_while_denied {
        let _ = writeln!(
            out,
            "  redeemed_while_{} card {}: terminal {} seq {} at {} ({} {} ×{}, auth {}); {} since {}",
            d.period.status,
            masked_card(tx, d.card_id)?,
            d.record.terminal_id,
            d.record.seq,
            time(d.record.wall_ms),
            d.record.package_id,
            d.record.service_code,
            d.record.quantity,
            d.record.auth_code,
            d.period.status,
            time(d.period.from_ms)
        );
    }
    for o in &e.over_redeemed {
        let records: Vec<String> = o
            .records
            .iter()
            .map(|r| format!("{}#{} {} ×{}", r.terminal_id, r.seq, r.kind, r.quantity))
            .collect();
        let _ = writeln!(
            out,
            "  over_redeemed card {} {} {}: {} used of {} across {}; records {}",
            masked_card(tx, o.card_id)?,
            o.package_id,
            o.service_code,
            o.net_used,
            o.uses_total,
            o.terminals.join(", "),
            records.join(", ")
        );
    }
    Ok(out)
}

/// `card show`: status, holder, packages, uses left. Never the full number.
pub fn card(tx: &mut dyn Tx, vault: &Vault, number: &CardNumber) -> Result<String, CardError> {
    let row = cards::card_by_number(tx, vault, number)?;
    let mut out = String::new();
    let _ = writeln!(out, "card      {} (#{})", row.masked(), row.id);
    let _ = writeln!(out, "status    {}", cards::status_name(row.status));
    let holder = match (&row.holder_name, &row.identity_sealed) {
        (Some(n), Some(_)) => format!("{} (identity data on file)", cards::mask_name(n)),
        (Some(n), None) => cards::mask_name(n),
        _ => "anonymous".into(),
    };
    let _ = writeln!(out, "holder    {holder}");
    let _ = writeln!(out, "version   {}", row.version);
    if let Some(to) = row.reissued_to {
        let new = cards::card_by_id(tx, to)?;
        let _ = writeln!(out, "reissued  to {}", new.masked());
    }
    let pk = cards::packages(tx, row.id)?;
    if pk.is_empty() {
        let _ = writeln!(out, "packages  none");
    }
    for p in &pk {
        let scope = match &p.spec.scope {
            MerchantScope::All => "all merchants".to_owned(),
            MerchantScope::Merchants(l) => format!("merchants {}", l.join(", ")),
            MerchantScope::Categories(l) => format!("categories {}", l.join(", ")),
        };
        let _ = writeln!(
            out,
            "package   {} {}  valid {} .. {}  {scope}{}{}",
            p.spec.id,
            p.spec.title,
            cards::rfc3339(p.spec.valid_from_ms),
            cards::rfc3339(p.spec.valid_until_ms),
            p.spec
                .daily_cap
                .map(|c| format!("  daily cap {c}"))
                .unwrap_or_default(),
            if p.spec.identity_required {
                "  identity required"
            } else {
                ""
            },
        );
        for (i, used) in p.spec.items.iter().zip(&p.used) {
            let _ = writeln!(
                out,
                "  item    {} {}  {} left of {}  ({} fen per use)",
                i.service_code,
                i.title,
                i.uses_total.saturating_sub(*used),
                i.uses_total,
                i.price_fen
            );
        }
    }
    Ok(out)
}
