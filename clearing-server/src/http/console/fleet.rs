//! The fleet page: every terminal's latest health report and the alerts the platform derives from it
//! (`crate::core::fleet`) — an operator's whole fleet, a merchant's own terminals.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};

use super::i18n::{Lang, T, code};
use super::layout::{self, Section, badge, detail, empty, time_el, urlencode};
use super::session::Viewer;
use super::{problem_page, respond, run};
use crate::http::AppState;
use crate::service::merchants::TerminalView;

pub(super) async fn page(State(state): State<AppState>, v: Viewer) -> Response {
    let own = v.own_merchant().map(str::to_owned);
    let terminals = run(&state, &v, move |s| match own {
        Some(m) => s.terminals(&m),
        None => s.fleet(),
    })
    .await;
    match terminals {
        Ok(t) => respond(
            StatusCode::OK,
            layout::frame(&v, Section::Fleet, v.t(T::Fleet), body(&v, &t)),
        ),
        Err(p) => problem_page(v.lang, Some(&v), &p),
    }
}

fn body(v: &Viewer, terminals: &[TerminalView]) -> Markup {
    let lang = v.lang;
    let alerts: Vec<_> = terminals.iter().flat_map(|t| &t.alerts).collect();
    html! {
        h1 { (v.t(T::Fleet)) }
        p.summary {
            span data-count="terminals" { (v.t(T::Terminals)) ": " (terminals.len()) }
            " · "
            span data-count="alerts" { (v.t(T::Alerts)) ": " (alerts.len()) }
        }
        section #alerts {
            h2 { (v.t(T::Alerts)) }
            @if alerts.is_empty() { (empty(v.t(T::NoAlerts))) }
            @else {
                ul.alerts {
                    @for a in &alerts {
                        li.alert data-alert=(a.kind.as_str()) data-terminal=(a.terminal_id) {
                            strong { (code(a.kind.as_str(), lang)) }
                            " · " (a.terminal_id)
                            @if v.is_operator() { " (" (a.merchant_id) ")" }
                            br;
                            (detail(&a.detail))
                        }
                    }
                }
            }
        }
        section #terminals {
            h2 { (v.t(T::Terminals)) }
            @if terminals.is_empty() { (empty(v.t(T::NoTerminals))) }
            @else { (table(lang, v, terminals)) }
        }
    }
}

/// The terminals' table (also on a merchant's page).
pub fn table(lang: Lang, v: &Viewer, terminals: &[TerminalView]) -> Markup {
    html! {
        div.table-wrap {
            table.terminals {
                thead { tr {
                    th { (T::Terminal.in_(lang)) }
                    @if v.is_operator() { th { (T::Merchant.in_(lang)) } }
                    th { (T::Status.in_(lang)) }
                    th { (T::LastReport.in_(lang)) }
                    th { (T::Readers.in_(lang)) }
                    th { (T::CacheExpires.in_(lang)) }
                    th { (T::Backlog.in_(lang)) }
                    th { (T::Alerts.in_(lang)) }
                } }
                tbody {
                    @for t in terminals {
                        tr data-terminal=(t.terminal_id) {
                            td { (t.terminal_id) }
                            @if v.is_operator() {
                                td { a href=(format!("/console/merchants/{}", urlencode(&t.merchant_id))) { (t.merchant_id) } }
                            }
                            td {
                                @if t.enabled { (badge(lang, "enabled")) } @else { (badge(lang, "disabled")) }
                            }
                            td { @match t.last_report_at_ms { Some(at) => (time_el(at)), None => (T::Never.in_(lang)) } }
                            td {
                                @if let Some(h) = &t.health {
                                    @for r in &h.readers {
                                        @let state = serde_json::to_value(r.state).ok().and_then(|s| s.as_str().map(str::to_owned)).unwrap_or_default();
                                        div.reader data-reader=(r.name) data-state=(state) {
                                            (r.name) " " (badge(lang, &state))
                                            @if let Some(s) = &r.reader_serial { " " small { (s) } }
                                        }
                                    }
                                }
                            }
                            td {
                                @if let Some(c) = t.health.as_ref().and_then(|h| h.cache.as_ref()) {
                                    (time_el(c.expires_at_ms)) " " small { "v" (c.version) }
                                }
                            }
                            td { @if let Some(h) = &t.health { (h.journal.unsynced) } }
                            td {
                                @for a in &t.alerts {
                                    span.badge.alert data-alert=(a.kind.as_str()) { (code(a.kind.as_str(), lang)) } " "
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
