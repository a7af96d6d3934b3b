//! The cards pages (operators): find a card by its masked number or its holder, issue one, show it
//! with its packages, uses left and usage, customize a package (or customize one again), report it
//! lost, freeze or unlock it. Card numbers are shown masked; a typed number is never shown back, and
//! searches are posted (a number never ends up in an address, a browser's history or a proxy's log).

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use maud::{Markup, html};
use redeemd_contract::model::{CardNumber, CardStatus, MerchantScope};

use super::i18n::{T, code};
use super::layout::{
    self, Entered, Input, Section, badge, csrf, day, done, empty, field, money, time_el,
};
use super::session::{FormData, Posted, Viewer};
use super::{DoneQuery, problem_page, respond, run, see_other};
use crate::core::access::Want;
use crate::core::card_search::{CardQuery, NumberQuery};
use crate::core::cards::{
    ItemSpec, NewCard, PackageSpec, StatusAction, parse_time, status_name, transition,
};
use crate::core::clearing::MemberStatement;
use crate::core::problem::Problem;
use crate::http::AppState;
use crate::http::platform::query;
use crate::service::cards::{CardMatches, CardSel, CardView, PackageView, ScopeView};

/// A card id in a path: a positive integer, else there is no such card.
fn card_id(raw: &str) -> Result<i64, Problem> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| Problem::not_found(format!("card {raw:?} not found")))
}

fn card_href(id: i64) -> String {
    format!("/console/cards/{id}")
}

// ---------------------------------------------------------------------------------------------
// Search and issue

pub(super) async fn search_page(State(state): State<AppState>, v: Viewer) -> Response {
    match run(&state, &v, |s| s.allowed(Want::Operate)).await {
        Ok(()) => search_response(
            &v,
            StatusCode::OK,
            &Entered::default(),
            &Entered::default(),
            None,
        ),
        Err(p) => problem_page(v.lang, Some(&v), &p),
    }
}

fn search_response(
    v: &Viewer,
    status: StatusCode,
    search: &Entered,
    issue: &Entered,
    found: Option<&CardMatches>,
) -> Response {
    let body = html! {
        h1 { (v.t(T::Cards)) }
        section #search {
            h2 { (v.t(T::FindCard)) }
            form.grid method="post" action="/console/cards/search" {
                (csrf(v))
                (search.general(v.lang))
                (field(search, "number", v.t(T::CardNumber), Input::Hint(v.t(T::CardNumberHelp)), "", "622848******5678"))
                (field(search, "holder", v.t(T::Holder), Input::Hint(v.t(T::HolderHelp)), "", ""))
                div.actions { button type="submit" { (v.t(T::Search)) } }
            }
        }
        @if let Some(found) = found {
            section #results {
                h2 { (v.t(T::Results)) }
                @if found.cards.is_empty() { (empty(v.t(T::NoMatch))) }
                @else {
                    div.table-wrap { table.cards {
                        thead { tr { th { (v.t(T::CardNumber)) } th { (v.t(T::Holder)) } th { (v.t(T::Status)) } } }
                        tbody {
                            @for c in &found.cards {
                                tr data-card=(c.card_id) {
                                    td { a href=(card_href(c.card_id)) { (c.masked_number) } }
                                    td { @match &c.holder { Some(h) => (h), None => (v.t(T::Anonymous)) } }
                                    td { (badge(v.lang, c.status)) }
                                }
                            }
                        }
                    } }
                    @if found.more { p.help { (v.t(T::MoreMatches)) } }
                }
            }
        }
        section #issue {
            h2 { (v.t(T::IssueCard)) }
            form.grid method="post" action="/console/cards" {
                (csrf(v))
                (issue.general(v.lang))
                // The number is never filled back in.
                (field(&Entered::default(), "number", v.t(T::CardNumber), Input::Text, "", ""))
                @if let Some(e) = issue.error("number") { p.field-error role="alert" data-error-for="number" { (e) } }
                (field(issue, "holder", v.t(T::Holder), Input::Text, "", ""))
                (field(issue, "identity", v.t(T::Identity), Input::Hint(v.t(T::IdentityHelp)), "", ""))
                div.actions { button type="submit" { (v.t(T::Issue)) } }
            }
        }
    };
    respond(
        status,
        layout::frame(v, Section::Cards, v.t(T::Cards), body),
    )
}

pub(super) async fn search(
    State(state): State<AppState>,
    Posted { viewer: v, form }: Posted,
) -> Response {
    let q = match CardQuery::parse(form.get("number"), form.get("holder")) {
        Ok(q) => q,
        Err(p) => return search_refused(&v, &form, &p),
    };
    let shown = shown_search(&form, &q);
    match run(&state, &v, move |s| s.find_cards(&q)).await {
        Ok(found) => search_response(
            &v,
            StatusCode::OK,
            &shown,
            &Entered::default(),
            Some(&found),
        ),
        Err(p) if p.status == 422 => search_refused(&v, &form, &p),
        Err(p) => problem_page(v.lang, Some(&v), &p),
    }
}

/// The search form as shown back: a masked number and the holder, never a whole number.
fn shown_search(form: &FormData, q: &CardQuery) -> Entered {
    let mut shown = FormData::default();
    if matches!(q.number, Some(NumberQuery::Masked { .. })) {
        shown.push("number", form.get("number"));
    }
    shown.push("holder", form.get("holder"));
    Entered::shown(&shown)
}

fn search_refused(v: &Viewer, form: &FormData, p: &Problem) -> Response {
    let mut kept = FormData::default();
    kept.push("holder", form.get("holder"));
    let mut e = Entered::shown(&kept);
    e.note(p, v.lang);
    search_response(
        v,
        StatusCode::UNPROCESSABLE_ENTITY,
        &e,
        &Entered::default(),
        None,
    )
}

fn optional(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

pub(super) async fn issue(
    State(state): State<AppState>,
    Posted { viewer: v, form }: Posted,
) -> Response {
    let refused = |p: &Problem| {
        let mut kept = FormData::default();
        kept.push("holder", form.get("holder"));
        kept.push("identity", form.get("identity"));
        let mut e = Entered::shown(&kept);
        e.note(p, v.lang);
        search_response(
            &v,
            StatusCode::UNPROCESSABLE_ENTITY,
            &Entered::default(),
            &e,
            None,
        )
    };
    let number = match CardNumber::parse(form.get("number").trim()) {
        Ok(n) => n,
        Err(e) => return refused(&Problem::invalid("number", e.to_string())),
    };
    let new = NewCard {
        number,
        holder_name: optional(form.get("holder")),
        identity_data: optional(form.get("identity")),
    };
    match run(&state, &v, move |s| s.create_card(&new)).await {
        Ok(card) => see_other(&format!(
            "{}?done=issued",
            card_href(card.card_id.unwrap_or_default())
        )),
        Err(p) if matches!(p.status, 409 | 422) => refused(&p),
        Err(p) => problem_page(v.lang, Some(&v), &p),
    }
}

// ---------------------------------------------------------------------------------------------
// One card

pub(super) async fn card_page(
    State(state): State<AppState>,
    v: Viewer,
    Path(raw): Path<String>,
    uri: Uri,
) -> Response {
    let done_text = query::<DoneQuery>(&uri).unwrap_or_default().text(v.lang);
    let id = match card_id(&raw) {
        Ok(id) => id,
        Err(p) => return problem_page(v.lang, Some(&v), &p),
    };
    let shown = run(&state, &v, move |s| {
        Ok((
            s.card(CardSel::Id(id))?,
            s.card_usage(CardSel::Id(id), (i64::MIN, i64::MAX))?,
        ))
    })
    .await;
    match shown {
        Ok((card, usage)) => respond(
            StatusCode::OK,
            layout::frame(
                &v,
                Section::Cards,
                &card.masked_number,
                card_body(&v, id, &card, &usage, done_text),
            ),
        ),
        Err(p) => problem_page(v.lang, Some(&v), &p),
    }
}

fn status_of(view: &CardView) -> Option<CardStatus> {
    [
        CardStatus::Active,
        CardStatus::Lost,
        CardStatus::Frozen,
        CardStatus::Cancelled,
    ]
    .into_iter()
    .find(|s| status_name(*s) == view.status)
}

/// Most usage records shown on a card's page (newest first).
const USAGE_SHOWN: usize = 50;

fn card_body(
    v: &Viewer,
    id: i64,
    card: &CardView,
    usage: &MemberStatement,
    done_text: Option<&str>,
) -> Markup {
    let lang = v.lang;
    let status = status_of(card);
    let actions = [
        (StatusAction::ReportLost, "report_lost", T::ReportLost),
        (StatusAction::Freeze, "freeze", T::Freeze),
        (StatusAction::Unlock, "unlock", T::Unlock),
    ];
    html! {
        (done(done_text))
        h1 { span data-masked { (card.masked_number) } " " (badge(lang, card.status)) }
        dl.facts {
            dt { (v.t(T::Holder)) }
            dd data-holder { @match &card.holder { Some(h) => (h), None => (v.t(T::Anonymous)) } }
            @if card.identity_on_file { dt { (v.t(T::Identity)) } dd { (v.t(T::IdentityOnFile)) } }
            dt { (v.t(T::Version)) } dd data-version { (card.version) }
            @if let Some(r) = &card.reissued_to {
                dt { (v.t(T::ReissuedTo)) }
                dd { a href=(card_href(r.card_id)) { (r.masked_number) } }
            }
        }
        section #actions {
            h2 { (v.t(T::Actions)) }
            div.buttons {
                @for (action, name, label) in actions {
                    @if status.is_some_and(|s| transition(action, s).is_some()) {
                        form.inline method="post" action=(format!("/console/cards/{id}/status")) {
                            (csrf(v))
                            input type="hidden" name="action" value=(name);
                            button type="submit" data-action=(name) class=(if name == "unlock" { "" } else { "warn" }) { (label.in_(lang)) }
                        }
                    }
                }
                a.button href=(format!("/console/cards/{id}/packages")) { (v.t(T::Customize)) }
            }
        }
        section #packages {
            h2 { (v.t(T::Packages)) }
            @if card.packages.is_empty() { (empty(v.t(T::NoPackages))) }
            @for p in &card.packages { (package(v, id, p)) }
        }
        section #usage {
            h2 { (v.t(T::Usage)) }
            @if usage.records.is_empty() { (empty(v.t(T::NoUsage))) }
            @else {
                div.table-wrap { table.usage {
                    thead { tr {
                        th { (v.t(T::Time)) } th { (v.t(T::Terminal)) } th { (v.t(T::Seq)) } th { (v.t(T::Kind)) }
                        th { (v.t(T::Item)) } th.num { (v.t(T::Quantity)) } th.num { (v.t(T::Amount)) } th { (v.t(T::AuthCode)) }
                    } }
                    tbody {
                        @for r in usage.records.iter().rev().take(USAGE_SHOWN) {
                            tr {
                                td { (time_el(r.wall_ms)) } td { (r.terminal_id) } td { (r.seq) } td { (code(r.kind, lang)) }
                                td { (r.package_id) "/" (r.service_code) } td.num { (r.quantity) } td.num { (money(r.amount_fen)) } td { (r.auth_code) }
                            }
                        }
                    }
                } }
            }
        }
    }
}

fn scope_text(v: &Viewer, scope: Option<&ScopeView>) -> String {
    match scope {
        None => v.t(T::EveryMerchant).to_owned(),
        Some(ScopeView::Merchants(l)) => format!("{}: {}", v.t(T::ScopeMerchants), l.join(", ")),
        Some(ScopeView::Categories(l)) => format!("{}: {}", v.t(T::ScopeCategories), l.join(", ")),
    }
}

fn package(v: &Viewer, id: i64, p: &PackageView) -> Markup {
    html! {
        article.package data-package=(p.package_id) {
            h3 { (p.title) " " small { (p.package_id) } }
            dl.facts {
                dt { (v.t(T::Validity)) } dd { (day(p.valid_from_ms)) " – " (day(p.valid_until_ms.saturating_sub(1))) }
                dt { (v.t(T::Scope)) } dd { (scope_text(v, p.scope.as_ref())) }
                dt { (v.t(T::DailyCap)) } dd { @match p.daily_cap { Some(c) => (c), None => (v.t(T::None_)) } }
                dt { (v.t(T::IdentityRequired)) } dd { @if p.identity_required { (v.t(T::Yes)) } @else { (v.t(T::No)) } }
            }
            div.table-wrap { table.items {
                thead { tr {
                    th { (v.t(T::ServiceCode)) } th { (v.t(T::Title)) } th.num { (v.t(T::Used)) }
                    th.num { (v.t(T::UsesTotal)) } th.num { (v.t(T::UsesLeft)) } th.num { (v.t(T::Price)) }
                } }
                tbody {
                    @for i in &p.items {
                        tr data-item=(i.service_code) {
                            td { (i.service_code) } td { (i.title) }
                            td.num { (i.uses_total.saturating_sub(i.uses_left)) }
                            td.num { (i.uses_total) }
                            td.num data-left { (i.uses_left) }
                            td.num { (money(i.price_fen)) }
                        }
                    }
                }
            } }
            p { a href=(format!("/console/cards/{id}/packages?{}", serde_urlencoded::to_string([("package", p.package_id.as_str())]).unwrap_or_default())) { (v.t(T::CustomizeAgain)) } }
        }
    }
}

pub(super) async fn status(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Posted { viewer: v, form }: Posted,
) -> Response {
    let id = match card_id(&raw) {
        Ok(id) => id,
        Err(p) => return problem_page(v.lang, Some(&v), &p),
    };
    let (action, done_key) = match form.get("action") {
        "report_lost" => (StatusAction::ReportLost, "lost"),
        "freeze" => (StatusAction::Freeze, "frozen"),
        "unlock" => (StatusAction::Unlock, "unlocked"),
        _ => {
            return problem_page(
                v.lang,
                Some(&v),
                &Problem::invalid("action", "report_lost, freeze or unlock"),
            );
        }
    };
    match run(&state, &v, move |s| {
        s.set_card_status(CardSel::Id(id), action)
    })
    .await
    {
        Ok(_) => see_other(&format!("{}?done={done_key}", card_href(id))),
        Err(p) => problem_page(v.lang, Some(&v), &p),
    }
}

// ---------------------------------------------------------------------------------------------
// Customizing a package

/// Item rows a package form has at least (blank ones are left out).
const ITEM_ROWS: usize = 5;

#[derive(Debug, Default, serde::Deserialize)]
pub struct PackageQuery {
    #[serde(default)]
    package: Option<String>,
}

pub(super) async fn package_form(
    State(state): State<AppState>,
    v: Viewer,
    Path(raw): Path<String>,
    uri: Uri,
) -> Response {
    let id = match card_id(&raw) {
        Ok(id) => id,
        Err(p) => return problem_page(v.lang, Some(&v), &p),
    };
    let wanted = query::<PackageQuery>(&uri).unwrap_or_default().package;
    match run(&state, &v, move |s| s.card(CardSel::Id(id))).await {
        Ok(card) => {
            let existing = wanted
                .as_deref()
                .and_then(|w| card.packages.iter().find(|p| p.package_id == w));
            package_response(&v, StatusCode::OK, id, &card, &prefill(existing))
        }
        Err(p) => problem_page(v.lang, Some(&v), &p),
    }
}

/// Fen as yuan for a form (`3500` → `35.00`).
fn yuan_text(fen: u64) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

/// An amount in yuan as typed (`35`, `35.5`, `35.50`) in fen; `None` when it is not one.
pub fn fen_of(s: &str) -> Option<u64> {
    let s = s.trim();
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty()
        || frac.len() > 2
        || !whole
            .bytes()
            .chain(frac.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: u64 = whole.parse().ok()?;
    let frac: u64 = format!("{frac:0<2}").parse().ok()?;
    whole.checked_mul(100)?.checked_add(frac)
}

/// The form of a package that exists (customized again), or an empty one.
fn prefill(p: Option<&PackageView>) -> Entered {
    let mut f = FormData::default();
    let Some(p) = p else {
        return Entered::default();
    };
    f.push("package_id", &p.package_id);
    f.push("title", &p.title);
    f.push("valid_from", &day(p.valid_from_ms));
    f.push("valid_until", &day(p.valid_until_ms.saturating_sub(1)));
    let (kind, list) = match &p.scope {
        None => ("all", String::new()),
        Some(ScopeView::Merchants(l)) => ("merchants", l.join(", ")),
        Some(ScopeView::Categories(l)) => ("categories", l.join(", ")),
    };
    f.push("scope", kind);
    f.push("scope_list", &list);
    f.push(
        "daily_cap",
        &p.daily_cap.map(|c| c.to_string()).unwrap_or_default(),
    );
    if p.identity_required {
        f.push("identity_required", "on");
    }
    for (n, i) in p.items.iter().enumerate() {
        f.push(&format!("items[{n}].service_code"), &i.service_code);
        f.push(&format!("items[{n}].title"), &i.title);
        f.push(&format!("items[{n}].uses_total"), &i.uses_total.to_string());
        f.push(&format!("items[{n}].price"), &yuan_text(i.price_fen));
    }
    Entered::shown(&f)
}

fn package_response(
    v: &Viewer,
    status: StatusCode,
    id: i64,
    card: &CardView,
    e: &Entered,
) -> Response {
    let filled = (0..64)
        .filter(|n| !e.value(&format!("items[{n}].service_code"), "").is_empty())
        .max()
        .map_or(0, |n| n + 1);
    let rows = (filled + 1).clamp(ITEM_ROWS, 64);
    let scope = e.value("scope", "all");
    let body = html! {
        p { a href=(card_href(id)) { "← " (card.masked_number) } }
        h1 { (v.t(T::Customize)) }
        p.help { (v.t(T::CustomizeHelp)) }
        form.grid.package method="post" action=(format!("/console/cards/{id}/packages")) {
            (csrf(v))
            (e.general(v.lang))
            (field(e, "package_id", v.t(T::Package), Input::Text, "", "P1"))
            (field(e, "title", v.t(T::Title), Input::Text, "", ""))
            (field(e, "valid_from", v.t(T::ValidFrom), Input::Date, "", ""))
            (field(e, "valid_until", v.t(T::ValidUntil), Input::Date, "", ""))
            fieldset.field data-field="scope" {
                legend.label { (v.t(T::Scope)) }
                @for (value, label) in [("all", T::ScopeAll), ("merchants", T::ScopeMerchants), ("categories", T::ScopeCategories)] {
                    label.choice { input type="radio" name="scope" value=(value) checked[scope == value]; (label.in_(v.lang)) }
                }
                (field(e, "scope_list", v.t(T::ScopeList), Input::Text, "", ""))
                @if let Some(err) = e.error("scope") { span.field-error role="alert" data-error-for="scope" { (err) } }
            }
            (field(e, "daily_cap", v.t(T::DailyCap), Input::Number, "", ""))
            label.choice { input type="checkbox" name="identity_required" checked[e.checked("identity_required", false)]; (v.t(T::IdentityRequired)) }
            fieldset.items {
                legend.label { (v.t(T::Items)) }
                @for n in 0..rows {
                    div.item-row data-row=(n) {
                        (field(e, &format!("items[{n}].service_code"), v.t(T::ServiceCode), Input::Text, "", "WASH"))
                        (field(e, &format!("items[{n}].title"), v.t(T::Title), Input::Text, "", ""))
                        (field(e, &format!("items[{n}].uses_total"), v.t(T::UsesTotal), Input::Number, "", ""))
                        (field(e, &format!("items[{n}].price"), v.t(T::Price), Input::Text, "", "35.00"))
                    }
                }
                @if let Some(err) = e.error("items") { span.field-error role="alert" data-error-for="items" { (err) } }
            }
            div.actions { button type="submit" { (v.t(T::Save)) } }
        }
    };
    respond(
        status,
        layout::frame(v, Section::Cards, v.t(T::Customize), body),
    )
}

/// The package a form describes, and the form row of each of its items (blank rows are left out, so
/// the platform's `items[k]` is the form's row `rows[k]`).
fn spec_of(form: &FormData) -> Result<(PackageSpec, Vec<usize>), Problem> {
    let list: Vec<String> = form
        .get("scope_list")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let scope = match form.get("scope") {
        "" | "all" => MerchantScope::All,
        "merchants" => MerchantScope::Merchants(list),
        "categories" => MerchantScope::Categories(list),
        _ => {
            return Err(Problem::invalid(
                "scope",
                "every merchant, these merchants or these categories",
            ));
        }
    };
    let daily_cap = match form.get("daily_cap").trim() {
        "" => None,
        s => Some(s.parse::<u32>().map_err(|_| {
            Problem::invalid(
                "daily_cap",
                format!("{s:?}: a whole number, or empty for no cap"),
            )
        })?),
    };
    let (mut items, mut rows) = (Vec::new(), Vec::new());
    for n in 0..64 {
        let get = |f: &str| form.get(&format!("items[{n}].{f}")).trim().to_owned();
        if !form.has(&format!("items[{n}].service_code")) {
            break;
        }
        let (code, title, uses, price) = (
            get("service_code"),
            get("title"),
            get("uses_total"),
            get("price"),
        );
        if code.is_empty() && title.is_empty() && uses.is_empty() && price.is_empty() {
            continue;
        }
        let uses_total = uses.parse::<u32>().map_err(|_| {
            Problem::invalid(
                format!("items[{n}].uses_total"),
                format!("{uses:?}: a whole number of uses"),
            )
        })?;
        let price_fen = fen_of(&price).ok_or_else(|| {
            Problem::invalid(
                format!("items[{n}].price"),
                format!("{price:?}: yuan, e.g. 35 or 35.50"),
            )
        })?;
        items.push(ItemSpec {
            service_code: code,
            title,
            uses_total,
            price_fen,
        });
        rows.push(n);
    }
    let spec = PackageSpec {
        id: form.get("package_id").trim().to_owned(),
        title: form.get("title").trim().to_owned(),
        valid_from_ms: parse_time("valid_from", form.get("valid_from").trim(), false)?,
        valid_until_ms: parse_time("valid_until", form.get("valid_until").trim(), true)?,
        scope,
        daily_cap,
        identity_required: form.has("identity_required"),
        items,
    };
    Ok((spec, rows))
}

/// A refusal naming `items[k]` of the package, named by its form row instead.
fn at_form_row(mut p: Problem, rows: &[usize]) -> Problem {
    if let Some(f) = p.field().map(str::to_owned)
        && let Some(rest) = f.strip_prefix("items[")
        && let Some((k, tail)) = rest.split_once(']')
        && let Some(row) = k.parse::<usize>().ok().and_then(|k| rows.get(k))
    {
        p = Problem::invalid(format!("items[{row}]{tail}"), p.detail);
    }
    p
}

pub(super) async fn customize(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Posted { viewer: v, form }: Posted,
) -> Response {
    let id = match card_id(&raw) {
        Ok(id) => id,
        Err(p) => return problem_page(v.lang, Some(&v), &p),
    };
    let result = match spec_of(&form) {
        Ok((spec, rows)) => run(&state, &v, move |s| s.customize(CardSel::Id(id), &spec))
            .await
            .map_err(|p| at_form_row(p, &rows)),
        Err(p) => Err(p),
    };
    match result {
        Ok(_) => see_other(&format!("{}?done=saved", card_href(id))),
        Err(p) if matches!(p.status, 409 | 422) => {
            match run(&state, &v, move |s| s.card(CardSel::Id(id))).await {
                Ok(card) => package_response(
                    &v,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    id,
                    &card,
                    &Entered::refused(&form, &p, v.lang),
                ),
                Err(p) => problem_page(v.lang, Some(&v), &p),
            }
        }
        Err(p) => problem_page(v.lang, Some(&v), &p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_typed_in_yuan() {
        assert_eq!(fen_of("35"), Some(3500));
        assert_eq!(fen_of("35.5"), Some(3550));
        assert_eq!(fen_of(" 0.05 "), Some(5));
        for bad in ["", "-1", "1.234", "1,5", "¥3", ".5", "1e3"] {
            assert_eq!(fen_of(bad), None, "{bad}");
        }
        assert_eq!(yuan_text(3550), "35.50");
    }

    #[test]
    fn a_refused_item_is_named_by_its_form_row() {
        let p = at_form_row(
            Problem::invalid("items[1].uses_total", "0: 1 to 100000"),
            &[0, 3],
        );
        assert_eq!(p.field(), Some("items[3].uses_total"));
        let p = at_form_row(Problem::invalid("title", "x"), &[0]);
        assert_eq!(p.field(), Some("title"));
    }
}
