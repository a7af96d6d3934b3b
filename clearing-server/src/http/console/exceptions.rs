//! The exceptions page: what needs a person before money moves (`crate::service::exceptions`) — to
//! resolve, each with its records, and resolved, with who decided what. Operators resolve with a note;
//! a merchant sees the exceptions about its own records.

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use maud::{Markup, html};

use super::i18n::{T, code};
use super::layout::{self, Entered, Section, csrf, detail, done, empty, money, time_el};
use super::session::{Posted, Viewer};
use super::{DoneQuery, problem_page, respond, run, see_other};
use crate::http::AppState;
use crate::http::platform::query;
use crate::service::exceptions::{ExceptionBoard, ExceptionItem};

async fn board(
    state: &AppState,
    v: &Viewer,
) -> Result<ExceptionBoard, crate::core::problem::Problem> {
    let own = v.own_merchant().map(str::to_owned);
    run(state, v, move |s| match own {
        Some(m) => s.merchant_exception_board(&m),
        None => s.exception_board(),
    })
    .await
}

pub(super) async fn page(State(state): State<AppState>, v: Viewer, uri: Uri) -> Response {
    let done_text = query::<DoneQuery>(&uri).unwrap_or_default().text(v.lang);
    match board(&state, &v).await {
        Ok(b) => response(&v, StatusCode::OK, &b, done_text, None),
        Err(p) => problem_page(v.lang, Some(&v), &p),
    }
}

fn response(
    v: &Viewer,
    status: StatusCode,
    b: &ExceptionBoard,
    done_text: Option<&str>,
    refused: Option<(&str, &Entered)>,
) -> Response {
    let body = html! {
        (done(done_text))
        h1 { (v.t(T::Exceptions)) }
        section #open {
            h2 { (v.t(T::OpenExceptions)) " (" (b.open.len()) ")" }
            @if b.open.is_empty() { (empty(v.t(T::NoOpen))) }
            @else {
                @if v.is_operator() { p.help { (v.t(T::ResolveHelp)) } }
                @for i in &b.open { (item(v, i, refused.filter(|(k, _)| *k == i.key).map(|(_, e)| e))) }
            }
        }
        section #resolved {
            h2 { (v.t(T::ResolvedExceptions)) " (" (b.resolved.len()) ")" }
            @if b.resolved.is_empty() { (empty(v.t(T::NoneResolved))) }
            @for i in &b.resolved { (item(v, i, None)) }
        }
    };
    respond(
        status,
        layout::frame(v, Section::Exceptions, v.t(T::Exceptions), body),
    )
}

fn item(v: &Viewer, i: &ExceptionItem, refused: Option<&Entered>) -> Markup {
    let lang = v.lang;
    let blank = Entered::default();
    let e = refused.unwrap_or(&blank);
    html! {
        article.exception data-key=(i.key) data-code=(i.code) {
            h3 { (code(&i.code, lang)) " " small { (i.code) } }
            dl.facts {
                @if let Some(t) = &i.terminal_id { dt { (v.t(T::Terminal)) } dd { (t) } }
                @if let Some(s) = i.seq { dt { (v.t(T::Seq)) } dd { (s) } }
                @if let Some(c) = &i.card { dt { (v.t(T::Card)) } dd { (c) } }
                @if let Some(at) = i.at_ms { dt { (v.t(T::Time)) } dd { (time_el(at)) } }
                @if i.occurrences > 1 { dt { (v.t(T::Occurrences)) } dd { (i.occurrences) } }
                dt { (v.t(T::Detail)) } dd { (detail(&i.detail)) }
            }
            @if !i.records.is_empty() {
                div.table-wrap { table.records {
                    thead { tr {
                        th { (v.t(T::Time)) } th { (v.t(T::Terminal)) } th { (v.t(T::Seq)) } th { (v.t(T::Kind)) }
                        th { (v.t(T::Item)) } th.num { (v.t(T::Quantity)) } th.num { (v.t(T::Amount)) }
                    } }
                    tbody {
                        @for r in &i.records {
                            tr { td { (time_el(r.wall_ms)) } td { (r.terminal_id) } td { (r.seq) } td { (code(r.kind, lang)) }
                                 td { (r.package_id) "/" (r.service_code) } td.num { (r.quantity) } td.num { (money(r.amount_fen)) } }
                        }
                    }
                } }
            }
            @match &i.resolved {
                Some(r) => {
                    p.resolution data-resolved {
                        (v.t(T::ResolvedBy)) ": "
                        @match (&r.by, &r.note) {
                            (Some(by), Some(note)) => { (by) " · " (time_el(r.at_ms)) br; (note) }
                            _ => { (v.t(T::ResolvedByUpload)) " · " (time_el(r.at_ms)) }
                        }
                    }
                }
                None => {
                    @if v.is_operator() {
                        form.resolve method="post" action="/console/exceptions/resolve" {
                            (csrf(v))
                            input type="hidden" name="key" value=(i.key);
                            (e.general(lang))
                            label.field data-field="note" {
                                span.label { (v.t(T::ResolveNote)) }
                                textarea name="note" rows="2" maxlength="500" aria-invalid=[e.error("note").map(|_| "true")] { (e.value("note", "")) }
                                @if let Some(err) = e.error("note") { span.field-error role="alert" data-error-for="note" { (err) } }
                            }
                            button type="submit" { (v.t(T::Resolve)) }
                        }
                    }
                }
            }
        }
    }
}

pub(super) async fn resolve(
    State(state): State<AppState>,
    Posted { viewer: v, form }: Posted,
) -> Response {
    let key = form.get("key").to_owned();
    let note = form.get("note").to_owned();
    let k = key.clone();
    match run(&state, &v, move |s| s.resolve_exception(&k, &note)).await {
        Ok(_) => see_other("/console/exceptions?done=resolved"),
        Err(p) if p.status == 422 => match board(&state, &v).await {
            Ok(b) => {
                let e = Entered::refused(&form, &p, v.lang);
                response(
                    &v,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &b,
                    None,
                    Some((&key, &e)),
                )
            }
            Err(p) => problem_page(v.lang, Some(&v), &p),
        },
        Err(p) => problem_page(v.lang, Some(&v), &p),
    }
}
