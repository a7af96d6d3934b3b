//! The web console: server-rendered pages for the platform's operators and its merchants, in Chinese
//! and English, over the same operations as the platform API (`crate::service` — the console is one
//! more client of them: the role is checked there, every change is audited there, no rule is written
//! twice).
//!
//! * [`session`] — login (throttled by the platform), the session cookie, the CSRF check every form
//!   passes ([`session::Posted`]), the language switch;
//! * [`i18n`] — the two languages and the choice between them;
//! * [`layout`] — the frame, navigation by role, form fields with their messages, money and times;
//! * the pages: [`fleet`] (terminals' health and alerts), [`cards`] (find by masked number or holder,
//!   show, issue, customize a package, report lost, freeze, unlock), [`merchants`] (merchants, their
//!   terminals — pairing codes to enroll one, disable, enable), [`statement`] (per period and per day,
//!   payable and held, with the chart of redemptions per day and item drawn as SVG on the server from
//!   `crate::core::chart`), [`exceptions`] (to resolve, and resolved).
//!
//! No JavaScript: every function is a link or a form. Every value is escaped by `maud`; the pages are
//! sent with a Content-Security-Policy that allows no script at all, and are never cached. A merchant
//! sees its own merchant, terminals, statement and exceptions; another merchant's page is "not found"
//! (`404`), as in the API. A refused form is shown again with what was entered and the message beside
//! the field it names (a card number is never shown back).

pub mod cards;
pub mod exceptions;
pub mod fleet;
pub mod i18n;
pub mod layout;
pub mod merchants;
pub mod session;
pub mod statement;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::{Markup, html};

use super::AppState;
use crate::core::problem::Problem;
use crate::service::Service;
use i18n::{Lang, T};
use session::Viewer;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { see_other("/console/") }))
        .route("/console", get(home))
        .route("/console/", get(home))
        .route(
            "/console/login",
            get(session::login_form).post(session::login),
        )
        .route("/console/logout", post(session::logout))
        .route("/console/lang/{lang}", get(session::switch_language))
        .route("/console/static/console.css", get(css))
        .route("/console/fleet", get(fleet::page))
        .route("/console/cards", get(cards::search_page).post(cards::issue))
        .route("/console/cards/search", post(cards::search))
        .route("/console/cards/{card_id}", get(cards::card_page))
        .route("/console/cards/{card_id}/status", post(cards::status))
        .route(
            "/console/cards/{card_id}/packages",
            get(cards::package_form).post(cards::customize),
        )
        .route(
            "/console/merchants",
            get(merchants::list).post(merchants::create),
        )
        .route(
            "/console/merchants/{merchant_id}",
            get(merchants::page).post(merchants::update),
        )
        .route(
            "/console/merchants/{merchant_id}/terminals/{terminal_id}/{action}",
            post(merchants::terminal_action),
        )
        .route(
            "/console/merchants/{merchant_id}/pairing-codes",
            post(merchants::pairing_code),
        )
        .route(
            "/console/merchants/{merchant_id}/statement",
            get(statement::page),
        )
        .route("/console/exceptions", get(exceptions::page))
        .route("/console/exceptions/resolve", post(exceptions::resolve))
        .route("/console/{*rest}", get(not_found))
}

/// A page: HTML, never cached, no script allowed, not framed.
pub fn respond(status: StatusCode, markup: Markup) -> Response {
    let mut r = (status, markup.into_string()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    r
}

/// `303 See Other` to a local address.
pub fn see_other(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// A refusal or failure as a page: not found (another merchant's too), not allowed, not possible
/// now, a refused value, too many attempts, or the server's failure (whose detail goes to the log,
/// not the page).
pub fn problem_page(lang: Lang, v: Option<&Viewer>, p: &Problem) -> Response {
    let (title, text) = match p.status {
        404 => (T::NotFoundTitle, Some(T::NotFoundText)),
        403 => (T::ForbiddenTitle, Some(T::ForbiddenText)),
        409 | 410 => (T::ConflictTitle, None),
        400 | 422 => (T::InvalidTitle, None),
        429 => (T::TooManyTitle, None),
        _ => (T::InternalTitle, Some(T::InternalText)),
    };
    if p.status >= 500 {
        eprintln!("clearing-server: console: {}", p.message());
    }
    let body = html! {
        h1 data-problem=(p.code) { (title.in_(lang)) }
        @if let Some(t) = text { p { (t.in_(lang)) } }
        @if p.status < 500 && !matches!(p.status, 403 | 404) {
            p.error role="alert" {
                @if let Some(f) = p.field() { (i18n::field_label(f, lang)) ": " }
                (p.detail)
            }
        }
        p { a href="/console/" { (T::Back.in_(lang)) } }
    };
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let markup = match v {
        Some(v) => layout::frame(v, layout::Section::None, title.in_(lang), body),
        None => layout::bare(lang, title.in_(lang), body),
    };
    respond(status, markup)
}

/// The server's failure before anything could be asked of the platform.
pub fn internal_page(lang: Lang, why: &str) -> Response {
    problem_page(lang, None, &Problem::internal(why.to_owned()))
}

/// Runs `f` as the viewer through the platform's operations.
pub async fn run<T: Send + 'static>(
    state: &AppState,
    v: &Viewer,
    f: impl FnOnce(&Service<'_>) -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    state.as_caller(v.caller.who.clone(), f).await
}

/// The start page of the role: the fleet.
async fn home(v: Viewer) -> Response {
    let _ = v;
    see_other("/console/fleet")
}

async fn css() -> Response {
    let mut r = layout::CSS.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

async fn not_found(headers: HeaderMap) -> Response {
    problem_page(
        Lang::of(&headers),
        None,
        &Problem::not_found("no such console page"),
    )
}

/// What `?done=…` of a redirect after a change says.
#[derive(Debug, Default, serde::Deserialize)]
pub struct DoneQuery {
    #[serde(default)]
    pub done: Option<String>,
}

impl DoneQuery {
    pub fn text(&self, lang: Lang) -> Option<&'static str> {
        let t = match self.done.as_deref()? {
            "saved" => T::DoneSaved,
            "lost" => T::DoneLost,
            "unlocked" => T::DoneUnlocked,
            "frozen" => T::DoneFrozen,
            "disabled" => T::DoneDisabled,
            "enabled" => T::DoneEnabled,
            "resolved" => T::DoneResolved,
            "issued" => T::DoneIssued,
            _ => return None,
        };
        Some(t.in_(lang))
    }
}
