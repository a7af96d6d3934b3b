//! Text for a person: what `clearing-server admin` prints from the platform's operations
//! (`crate::service`; `--json` prints the same structures as JSON): statements, exceptions, cards,
//! the fleet's alerts, the audit log. Card numbers appear masked only.

use std::fmt::Write as _;

use crate::core::cards;
use crate::core::clearing::{MemberStatement, MerchantStatement};
use crate::service::cards::{CardView, ScopeView};
use crate::service::merchants::TerminalView;
use crate::storage::audit::AuditEntry;
use crate::storage::statements::{Exceptions, Window};

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

fn masked(e: &Exceptions, card_id: i64) -> String {
    e.cards
        .get(&card_id)
        .cloned()
        .unwrap_or_else(|| format!("#{card_id}"))
}

pub fn exceptions(e: &Exceptions) -> String {
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
            masked(e, d.card_id),
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
            masked(e, o.card_id),
            o.package_id,
            o.service_code,
            o.net_used,
            o.uses_total,
            o.terminals.join(", "),
            records.join(", ")
        );
    }
    out
}

/// `card show`: status, holder, packages, uses left. Never the full number.
pub fn card(c: &CardView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "card      {} (#{})",
        c.masked_number,
        c.card_id.unwrap_or_default()
    );
    let _ = writeln!(out, "status    {}", c.status);
    let holder = match (&c.holder, c.identity_on_file) {
        (Some(n), true) => format!("{n} (identity data on file)"),
        (Some(n), false) => n.clone(),
        _ => "anonymous".into(),
    };
    let _ = writeln!(out, "holder    {holder}");
    let _ = writeln!(out, "version   {}", c.version);
    if let Some(to) = &c.reissued_to {
        let _ = writeln!(out, "reissued  to {} (#{})", to.masked_number, to.card_id);
    }
    if c.packages.is_empty() {
        let _ = writeln!(out, "packages  none");
    }
    for p in &c.packages {
        let scope = match &p.scope {
            None => "all merchants".to_owned(),
            Some(ScopeView::Merchants(l)) => format!("merchants {}", l.join(", ")),
            Some(ScopeView::Categories(l)) => format!("categories {}", l.join(", ")),
        };
        let _ = writeln!(
            out,
            "package   {} {}  valid {} .. {}  {scope}{}{}",
            p.package_id,
            p.title,
            cards::rfc3339(p.valid_from_ms),
            cards::rfc3339(p.valid_until_ms),
            p.daily_cap
                .map(|c| format!("  daily cap {c}"))
                .unwrap_or_default(),
            if p.identity_required {
                "  identity required"
            } else {
                ""
            },
        );
        for i in &p.items {
            let _ = writeln!(
                out,
                "  item    {} {}  {} left of {}  ({} fen per use)",
                i.service_code, i.title, i.uses_left, i.uses_total, i.price_fen
            );
        }
    }
    out
}

/// `admin fleet`: one line per terminal, then its alerts.
pub fn fleet(terminals: &[TerminalView]) -> String {
    let mut out = String::new();
    let alerts: usize = terminals.iter().map(|t| t.alerts.len()).sum();
    let _ = writeln!(out, "terminals: {}  alerts: {alerts}", terminals.len());
    for t in terminals {
        let seen = t.last_report_at_ms.map_or_else(
            || "never reported".to_owned(),
            |at| format!("last report {}", time(at)),
        );
        let version = t
            .health
            .as_ref()
            .map(|h| format!("  redeemd {}", h.daemon_version))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{} ({}){}  {seen}{version}",
            t.terminal_id,
            t.merchant_id,
            if t.enabled { "" } else { "  DISABLED" }
        );
        if let Some(h) = &t.health {
            for r in &h.readers {
                let _ = writeln!(
                    out,
                    "    reader {:<12} {:<18} serial {}  firmware {}",
                    r.name,
                    format!("{:?}", r.state),
                    r.reader_serial.as_deref().unwrap_or("?"),
                    r.firmware.as_deref().unwrap_or("?")
                );
            }
            let cache = h.cache.as_ref().map_or_else(
                || "no cache".to_owned(),
                |c| format!("cache v{} expires {}", c.version, time(c.expires_at_ms)),
            );
            let _ = writeln!(
                out,
                "    {cache}  journal head {} ({} unsynced)",
                h.journal.head_seq, h.journal.unsynced
            );
        }
        for a in &t.alerts {
            let _ = writeln!(out, "  ALERT {}: {}", a.kind.as_str(), a.detail);
        }
    }
    out
}

/// `admin audit`: newest first.
pub fn audit(entries: &[AuditEntry]) -> String {
    let mut out = String::new();
    for e in entries {
        let _ = writeln!(
            out,
            "#{} {}  {}  {} {}{}",
            e.id,
            time(e.at_ms),
            e.actor,
            e.action,
            e.target,
            if e.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", e.detail)
            }
        );
    }
    out
}
