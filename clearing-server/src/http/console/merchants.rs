//! The merchants pages: the list and a new merchant (operators); one merchant with its terminals — a
//! pairing code to enroll one (the secret never appears here: the shop PC fetches it with the code),
//! disable and enable (operators) — and its pairing codes. A merchant's login reaches its own page
//! only; another merchant's is not found.

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use maud::{Markup, html};

use super::i18n::T;
use super::layout::{self, Entered, Input, Section, csrf, done, empty, field, time_el, urlencode};
use super::session::{FormData, Posted, Viewer};
use super::{DoneQuery, fleet, problem_page, respond, run, see_other};
use crate::core::problem::Problem;
use crate::http::AppState;
use crate::http::platform::query;
use crate::service::merchants::{MerchantInput, MerchantView, NewPairingCode, TerminalView};
use crate::storage::pairing::CodeListing;

fn merchant_href(id: &str) -> String {
    format!("/console/merchants/{}", urlencode(id))
}

pub(super) async fn list(State(state): State<AppState>, v: Viewer) -> Response {
    match run(&state, &v, |s| s.merchants()).await {
        Ok(m) => list_response(&v, StatusCode::OK, &m, &Entered::default()),
        Err(p) => problem_page(v.lang, Some(&v), &p),
    }
}

fn merchant_fields(v: &Viewer, e: &Entered) -> Markup {
    html! {
        (field(e, "name", v.t(T::Name), Input::Text, "", ""))
        (field(e, "commission_bps", v.t(T::CommissionBps), Input::Number, "", "500"))
        (field(e, "categories", v.t(T::Categories), Input::Text, "", "car-wash"))
    }
}

fn list_response(
    v: &Viewer,
    status: StatusCode,
    merchants: &[MerchantView],
    e: &Entered,
) -> Response {
    let body = html! {
        h1 { (v.t(T::Merchants)) }
        @if merchants.is_empty() { (empty(v.t(T::NoMerchants))) }
        @else {
            div.table-wrap { table.merchants {
                thead { tr { th { (v.t(T::MerchantId)) } th { (v.t(T::Name)) } th.num { (v.t(T::Commission)) } th { (v.t(T::CategoryList)) } } }
                tbody {
                    @for m in merchants {
                        tr data-merchant=(m.merchant_id) {
                            td { a href=(merchant_href(&m.merchant_id)) { (m.merchant_id) } }
                            td data-name { (m.name) }
                            td.num { (bps_text(m.commission_bps)) }
                            td { (m.categories.join(", ")) }
                        }
                    }
                }
            } }
        }
        section #new-merchant {
            h2 { (v.t(T::NewMerchant)) }
            form.grid method="post" action="/console/merchants" {
                (csrf(v))
                (e.general(v.lang))
                (field(e, "merchant_id", v.t(T::MerchantId), Input::Text, "", "M-1"))
                (merchant_fields(v, e))
                div.actions { button type="submit" { (v.t(T::Save)) } }
            }
        }
    };
    respond(
        status,
        layout::frame(v, Section::Merchants, v.t(T::Merchants), body),
    )
}

/// `500` → `5.00 %`.
fn bps_text(bps: u32) -> String {
    format!("{}.{:02} %", bps / 100, bps % 100)
}

/// What a merchant form says, its numbers checked (the platform checks the rest).
fn input_of(form: &FormData) -> Result<MerchantInput, Problem> {
    let bps = form.get("commission_bps").trim();
    Ok(MerchantInput {
        name: form.get("name").trim().to_owned(),
        commission_bps: bps.parse().map_err(|_| {
            Problem::invalid(
                "commission_bps",
                format!("{bps:?}: a whole number from 0 to 10000"),
            )
        })?,
        categories: form
            .get("categories")
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

pub(super) async fn create(
    State(state): State<AppState>,
    Posted { viewer: v, form }: Posted,
) -> Response {
    let id = form.get("merchant_id").trim().to_owned();
    let made = match input_of(&form) {
        Ok(input) => {
            let id = id.clone();
            run(&state, &v, move |s| {
                crate::core::cards::check_id("merchant_id", &id)?;
                if s.merchant(&id).is_ok() {
                    return Err(Problem::conflict(
                        "already_exists",
                        format!("merchant {id} exists: change it on its page"),
                    ));
                }
                s.put_merchant(&id, &input)
            })
            .await
        }
        Err(p) => Err(p),
    };
    match made {
        Ok(_) => see_other(&format!("{}?done=saved", merchant_href(&id))),
        Err(p) if matches!(p.status, 409 | 422) => match run(&state, &v, |s| s.merchants()).await {
            Ok(m) => list_response(
                &v,
                StatusCode::UNPROCESSABLE_ENTITY,
                &m,
                &Entered::refused(&form, &p, v.lang),
            ),
            Err(p) => problem_page(v.lang, Some(&v), &p),
        },
        Err(p) => problem_page(v.lang, Some(&v), &p),
    }
}

/// A merchant with what its page shows.
struct Shown {
    merchant: MerchantView,
    terminals: Vec<TerminalView>,
    codes: Vec<CodeListing>,
}

async fn shown(state: &AppState, v: &Viewer, id: String) -> Result<Shown, Problem> {
    run(state, v, move |s| {
        Ok(Shown {
            merchant: s.merchant(&id)?,
            terminals: s.terminals(&id)?,
            codes: s.pairing_codes(&id)?,
        })
    })
    .await
}

pub(super) async fn page(
    State(state): State<AppState>,
    v: Viewer,
    Path(id): Path<String>,
    uri: Uri,
) -> Response {
    let done_text = query::<DoneQuery>(&uri).unwrap_or_default().text(v.lang);
    match shown(&state, &v, id).await {
        Ok(s) => page_response(
            &v,
            StatusCode::OK,
            &s,
            done_text,
            &Entered::default(),
            &Entered::default(),
            None,
        ),
        Err(p) => problem_page(v.lang, Some(&v), &p),
    }
}

/// The address a shop PC reaches this platform at, as this browser did.
fn platform_url(v: &Viewer) -> String {
    let host = v.host.as_str();
    let local =
        host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]");
    format!("{}://{host}", if local { "http" } else { "https" })
}

fn page_response(
    v: &Viewer,
    status: StatusCode,
    s: &Shown,
    done_text: Option<&str>,
    edit: &Entered,
    pairing: &Entered,
    code: Option<&NewPairingCode>,
) -> Response {
    let m = &s.merchant;
    let href = merchant_href(&m.merchant_id);
    let prefilled = prefill(m);
    let edit = if edit.is_refused() { edit } else { &prefilled };
    let body = html! {
        (done(done_text))
        h1 { span data-merchant-name { (m.name) } " " small { (m.merchant_id) } }
        p.links {
            a href=(format!("{href}/statement")) { (v.t(T::Statement)) } " · "
            a href="/console/exceptions" { (v.t(T::Exceptions)) }
        }
        dl.facts {
            dt { (v.t(T::Commission)) } dd { (bps_text(m.commission_bps)) }
            dt { (v.t(T::CategoryList)) } dd { (m.categories.join(", ")) }
        }
        @if let Some(c) = code {
            section #pairing-code.notice {
                h2 { (v.t(T::PairingCode)) }
                p.code data-code { (c.code) }
                p { (v.t(T::Terminal)) ": " strong data-terminal { (c.terminal_id) } " · " (v.t(T::Expires)) ": " (time_el(c.expires_at_ms)) }
                p { (v.t(T::RunOnShopPc)) ":" }
                pre { code { "sudo redeemd enroll --server " (platform_url(v)) " --code " (c.code) } }
                p.help { (v.t(T::PairingShownOnce)) }
            }
        }
        section #terminals {
            h2 { (v.t(T::Terminals)) }
            @if s.terminals.is_empty() { (empty(v.t(T::NoTerminals))) }
            @else {
                (fleet::table(v.lang, v, &s.terminals))
                @if v.is_operator() {
                    div.buttons {
                        @for t in &s.terminals {
                            @let action = if t.enabled { "disable" } else { "enable" };
                            form.inline method="post" action=(format!("{href}/terminals/{}/{action}", urlencode(&t.terminal_id))) {
                                (csrf(v))
                                button type="submit" class=(if t.enabled { "warn" } else { "" }) data-action=(action) data-terminal=(t.terminal_id) {
                                    (if t.enabled { v.t(T::Disable) } else { v.t(T::Enable) }) " " (t.terminal_id)
                                }
                            }
                        }
                    }
                }
            }
        }
        section #enroll {
            h2 { (v.t(T::EnrollTerminal)) }
            p.help { (v.t(T::EnrollHelp)) }
            pre { code { "sudo redeemd enroll --server " (platform_url(v)) " --code XXXX-XXXX" } }
            form.grid method="post" action=(format!("{href}/pairing-codes")) {
                (csrf(v))
                (pairing.general(v.lang))
                (field(pairing, "terminal_id", v.t(T::TerminalIdOptional), Input::Text, "", ""))
                (field(pairing, "ttl_minutes", v.t(T::TtlMinutes), Input::Number, "", "10"))
                div.actions { button type="submit" { (v.t(T::MakeCode)) } }
            }
            h3 { (v.t(T::PairingCodes)) }
            @if s.codes.is_empty() { (empty(v.t(T::NoCodes))) }
            @else {
                div.table-wrap { table.codes {
                    thead { tr { th { (v.t(T::Terminal)) } th { (v.t(T::CreatedBy)) } th { (v.t(T::Expires)) } th { (v.t(T::UsedAt)) } } }
                    tbody {
                        @for c in &s.codes {
                            tr {
                                td { (c.terminal_id) } td { (c.created_by) " " (time_el(c.created_ms)) } td { (time_el(c.expires_ms)) }
                                td { @match c.used_ms { Some(at) => (time_el(at)), None => (v.t(T::NotUsed)) } }
                            }
                        }
                    }
                } }
            }
        }
        @if v.is_operator() {
            section #edit-merchant {
                h2 { (v.t(T::EditMerchant)) }
                form.grid method="post" action=(href) {
                    (csrf(v))
                    (edit.general(v.lang))
                    (merchant_fields(v, edit))
                    div.actions { button type="submit" { (v.t(T::Save)) } }
                }
            }
        }
    };
    respond(status, layout::frame(v, Section::Merchants, &m.name, body))
}

fn prefill(m: &MerchantView) -> Entered {
    let mut f = FormData::default();
    f.push("name", &m.name);
    f.push("commission_bps", &m.commission_bps.to_string());
    f.push("categories", &m.categories.join(", "));
    Entered::shown(&f)
}

pub(super) async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { viewer: v, form }: Posted,
) -> Response {
    let saved = match input_of(&form) {
        Ok(input) => {
            let id = id.clone();
            run(&state, &v, move |s| {
                // An update, not a creation: an unknown merchant is not found.
                s.merchant(&id)?;
                s.put_merchant(&id, &input)
            })
            .await
        }
        Err(p) => Err(p),
    };
    match saved {
        Ok(_) => see_other(&format!("{}?done=saved", merchant_href(&id))),
        Err(p) if p.status == 422 => match shown(&state, &v, id).await {
            Ok(s) => {
                let e = Entered::refused(&form, &p, v.lang);
                page_response(
                    &v,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &s,
                    None,
                    &e,
                    &Entered::default(),
                    None,
                )
            }
            Err(p) => problem_page(v.lang, Some(&v), &p),
        },
        Err(p) => problem_page(v.lang, Some(&v), &p),
    }
}

pub(super) async fn terminal_action(
    State(state): State<AppState>,
    Path((merchant, terminal, action)): Path<(String, String, String)>,
    Posted { viewer: v, .. }: Posted,
) -> Response {
    let enabled = match action.as_str() {
        "disable" => false,
        "enable" => true,
        _ => return problem_page(v.lang, Some(&v), &Problem::not_found("no such action")),
    };
    let m = merchant.clone();
    match run(&state, &v, move |s| {
        s.set_terminal_enabled_of(&m, &terminal, enabled)
    })
    .await
    {
        Ok(_) => see_other(&format!(
            "{}?done={}",
            merchant_href(&merchant),
            if enabled { "enabled" } else { "disabled" }
        )),
        Err(p) => problem_page(v.lang, Some(&v), &p),
    }
}

pub(super) async fn pairing_code(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { viewer: v, form }: Posted,
) -> Response {
    let terminal = form.get("terminal_id").trim().to_owned();
    let ttl = form.get("ttl_minutes").trim().to_owned();
    let m = id.clone();
    let made = run(&state, &v, move |s| {
        let ttl = match ttl.as_str() {
            "" => None,
            t => Some(t.parse::<u32>().map_err(|_| {
                Problem::invalid("ttl_minutes", format!("{t:?}: a whole number of minutes"))
            })?),
        };
        s.create_pairing_code(&m, (!terminal.is_empty()).then_some(terminal.as_str()), ttl)
    })
    .await;
    match (made, shown(&state, &v, id).await) {
        (Ok(code), Ok(s)) => page_response(
            &v,
            StatusCode::CREATED,
            &s,
            None,
            &Entered::default(),
            &Entered::default(),
            Some(&code),
        ),
        (Err(p), Ok(s)) if matches!(p.status, 409 | 422) => {
            let e = Entered::refused(&form, &p, v.lang);
            page_response(
                &v,
                StatusCode::UNPROCESSABLE_ENTITY,
                &s,
                None,
                &Entered::default(),
                &e,
                None,
            )
        }
        (Err(p), _) | (_, Err(p)) => problem_page(v.lang, Some(&v), &p),
    }
}
