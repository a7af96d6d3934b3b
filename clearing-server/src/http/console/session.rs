//! Who is looking at the console, and whether a form really came from it.
//!
//! * [`Viewer`] — the person behind a request: its session cookie (`__Host-redeemd_session`:
//!   `Secure; HttpOnly; SameSite=Strict`, stored hashed, `crate::core::session`) turned into the caller
//!   of the platform's operations, and the page language. Without a live session a page answers with
//!   the login page's address.
//! * [`Posted`] — a form sent to the console: the viewer, and the form's fields once its CSRF token
//!   was found to be the session's. Every handler that changes something takes a `Posted`, so none
//!   can forget the check; a form without the token (or with another) is refused with `403` and
//!   changes nothing.
//! * The login form comes before a session: its token must equal the one in a cookie set with the
//!   form (`__Host-redeemd_login`, double submit). Logins are throttled by the platform
//!   (`crate::service::people::login`).

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use super::i18n::{LANG_COOKIE, Lang, T};
use super::{layout, see_other};
use crate::core::session::{self, TOKEN_BYTES};
use crate::http::AppState;
use crate::http::caller::Source;
use crate::service::people::{self, ConsoleCaller};

/// The session cookie.
pub const SESSION_COOKIE: &str = "__Host-redeemd_session";
/// The login form's double-submit cookie.
pub const LOGIN_COOKIE: &str = "__Host-redeemd_login";
/// Largest form body.
pub const MAX_FORM_BODY: usize = 64 * 1024;

/// A cookie of the request, by name (the first of that name).
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_owned())
}

/// A `Set-Cookie` for the console: `Secure` and `Path=/` always (the `__Host-` prefix needs both);
/// `HttpOnly; SameSite=Strict` for the session and login cookies.
fn set_cookie(name: &str, value: &str, max_age: Option<i64>) -> HeaderValue {
    let age = max_age.map_or_else(String::new, |a| format!("; Max-Age={a}"));
    let strict = if name == LANG_COOKIE {
        "; SameSite=Lax"
    } else {
        "; HttpOnly; SameSite=Strict"
    };
    HeaderValue::from_str(&format!("{name}={value}; Path=/; Secure{strict}{age}"))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The person behind a console request.
pub struct Viewer {
    pub caller: ConsoleCaller,
    /// The session's token (logging out ends it).
    token: String,
    pub lang: Lang,
    /// The page asked for, path and query (the language switch comes back to it).
    pub here: String,
    /// The `Host` the browser asked (the platform's address shown in the enroll command).
    pub host: String,
    pub now_ms: i64,
}

impl Viewer {
    pub fn t(&self, t: T) -> &'static str {
        t.in_(self.lang)
    }

    pub fn is_operator(&self) -> bool {
        self.caller.who.role == crate::core::access::Role::Operator
    }

    /// The merchant a merchant's login acts for (`None` for an operator).
    pub fn own_merchant(&self) -> Option<&str> {
        (self.caller.who.role == crate::core::access::Role::Merchant)
            .then_some(self.caller.who.subject.as_str())
    }
}

/// A local console address to come back to, or the console's start.
pub fn local_next(next: &str) -> &str {
    let ok = next.starts_with("/console")
        && !next.contains("//")
        && !next.contains('\\')
        && !next.chars().any(char::is_control);
    if ok { next } else { "/console/" }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let here = parts
            .uri
            .path_and_query()
            .map_or_else(|| "/console/".to_owned(), |p| p.as_str().to_owned());
        let to_login = || {
            let next = if parts.method == axum::http::Method::GET {
                here.clone()
            } else {
                "/console/".to_owned()
            };
            let query = serde_urlencoded::to_string([("next", next)]).unwrap_or_default();
            see_other(&format!("/console/login?{query}"))
        };
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(to_login());
        };
        let now_ms = (state.clock)();
        let lang = Lang::of(&parts.headers);
        let looked_up = token.clone();
        let caller = state
            .with_db(move |db, _| people::console_session(db, &looked_up, now_ms))
            .await
            .map_err(|p| super::problem_page(lang, None, &p))?;
        match caller {
            Some(caller) => Ok(Viewer {
                caller,
                token,
                lang,
                here,
                host: parts
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("clearing.example.com")
                    .to_owned(),
                now_ms,
            }),
            None => Err(to_login()),
        }
    }
}

/// A form's fields, in the order sent.
#[derive(Debug, Default)]
pub struct FormData(Vec<(String, String)>);

impl FormData {
    /// A field's value ("" when absent; the first when repeated).
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// Adds a field (a form built by the console itself: a prefilled or re-shown one).
    pub fn push(&mut self, name: &str, value: &str) {
        self.0.push((name.to_owned(), value.to_owned()));
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    /// Every field, for re-showing a refused form (never the password).
    pub fn values(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .filter(|(k, _)| k != "password" && k != "csrf")
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

async fn read_form(headers: &HeaderMap, body: Body, state: &AppState) -> Option<FormData> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return None;
    }
    let bytes = tokio::time::timeout(
        state.limits.body_timeout,
        axum::body::to_bytes(body, MAX_FORM_BODY),
    )
    .await
    .ok()?
    .ok()?;
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
        .ok()
        .map(FormData)
}

/// A form posted to the console by a live session, its CSRF token checked.
pub struct Posted {
    pub viewer: Viewer,
    pub form: FormData,
}

impl FromRequest<AppState> for Posted {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let viewer = Viewer::from_request_parts(&mut parts, state).await?;
        let Some(form) = read_form(&parts.headers, body, state).await else {
            return Err(refused_form(viewer.lang));
        };
        if !session::tokens_match(&viewer.caller.csrf, form.get("csrf")) {
            return Err(refused_form(viewer.lang));
        }
        Ok(Posted { viewer, form })
    }
}

/// `403`: a form without this session's token (or not a form at all). Nothing was changed.
fn refused_form(lang: Lang) -> Response {
    super::respond(
        StatusCode::FORBIDDEN,
        layout::bare(
            lang,
            T::CsrfTitle.in_(lang),
            maud::html! {
                h1 data-problem="csrf" { (T::CsrfTitle.in_(lang)) }
                p { (T::CsrfText.in_(lang)) }
                p { a href="/console/" { (T::Back.in_(lang)) } }
            },
        ),
    )
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    next: Option<String>,
}

/// The login page, with a fresh form token in its cookie. `problem`: why the last try failed.
fn login_page(
    lang: Lang,
    next: &str,
    name: &str,
    status: StatusCode,
    problem: Option<&'static str>,
) -> Response {
    let Ok(random) = crate::service::random::<TOKEN_BYTES>() else {
        return super::internal_page(lang, "no randomness for the login form");
    };
    let token = session::new_token(&random);
    let mut response = super::respond(
        status,
        layout::bare(
            lang,
            T::LoginTitle.in_(lang),
            maud::html! {
                form.login method="post" action="/console/login" {
                    h1 { (T::LoginTitle.in_(lang)) }
                    p.help { (T::LoginHelp.in_(lang)) }
                    @if let Some(p) = problem {
                        p.error role="alert" data-problem="login" { (p) }
                    }
                    input type="hidden" name="csrf" value=(token);
                    input type="hidden" name="next" value=(local_next(next));
                    label { (T::UserName.in_(lang))
                        input name="name" value=(name) autocomplete="username" required maxlength="64";
                    }
                    label { (T::Password.in_(lang))
                        input type="password" name="password" autocomplete="current-password" required maxlength="1024";
                    }
                    button type="submit" { (T::LogIn.in_(lang)) }
                }
            },
        ),
    );
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, &token, Some(3600)),
    );
    response
}

pub(super) async fn login_form(headers: HeaderMap, uri: axum::http::Uri) -> Response {
    let lang = Lang::of(&headers);
    let next = crate::http::platform::query::<LoginQuery>(&uri)
        .ok()
        .and_then(|q| q.next)
        .unwrap_or_default();
    login_page(lang, &next, "", StatusCode::OK, None)
}

pub(super) async fn login(
    State(state): State<AppState>,
    Source(source): Source,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let lang = Lang::of(&parts.headers);
    let Some(form) = read_form(&parts.headers, body, &state).await else {
        return refused_form(lang);
    };
    let expected = cookie(&parts.headers, LOGIN_COOKIE).unwrap_or_default();
    if !session::tokens_match(&expected, form.get("csrf")) {
        return refused_form(lang);
    }
    let (name, password) = (form.get("name").to_owned(), form.get("password").to_owned());
    let next = local_next(form.get("next")).to_owned();
    let now_ms = (state.clock)();
    let shown_name = name.clone();
    let opened = state
        .with_db(move |db, vault| {
            people::open_session(db, vault, &name, &password, &source, now_ms)
        })
        .await;
    match opened {
        Ok(opened) => {
            let mut r = see_other(&next);
            let h = r.headers_mut();
            h.append(
                header::SET_COOKIE,
                set_cookie(SESSION_COOKIE, &opened.token, None),
            );
            h.append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, "", Some(0)));
            r
        }
        Err(p) if p.status == 401 => login_page(
            lang,
            &next,
            &shown_name,
            StatusCode::UNAUTHORIZED,
            Some(T::BadLogin.in_(lang)),
        ),
        Err(p) if p.status == 429 => {
            let mut r = login_page(
                lang,
                &next,
                &shown_name,
                StatusCode::TOO_MANY_REQUESTS,
                Some(T::TooManyTitle.in_(lang)),
            );
            if let Some(secs) = p.retry_after_secs()
                && let Ok(v) = HeaderValue::from_str(&secs.to_string())
            {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        Err(p) => super::problem_page(lang, None, &p),
    }
}

pub(super) async fn logout(State(state): State<AppState>, posted: Posted) -> Response {
    let v = posted.viewer;
    let (token, name) = (v.token.clone(), v.caller.user_name.clone());
    let closed = state
        .as_caller(v.caller.who.clone(), move |s| {
            s.close_session(&token, &name)
        })
        .await;
    if let Err(p) = closed {
        return super::problem_page(v.lang, Some(&v), &p);
    }
    let mut r = see_other("/console/login");
    r.headers_mut()
        .append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", Some(0)));
    r
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct LangQuery {
    #[serde(default)]
    next: Option<String>,
}

/// The language switch: remembers the choice for a year and goes back to the page.
pub(super) async fn switch_language(
    axum::extract::Path(tag): axum::extract::Path<String>,
    uri: axum::http::Uri,
) -> Response {
    let next = crate::http::platform::query::<LangQuery>(&uri)
        .ok()
        .and_then(|q| q.next)
        .unwrap_or_default();
    let mut r = see_other(local_next(&next));
    if let Some(lang) = Lang::parse(&tag) {
        r.headers_mut().append(
            header::SET_COOKIE,
            set_cookie(LANG_COOKIE, lang.tag(), Some(365 * 86_400)),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_by_name_and_set_secure() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-redeemd_session=abc; redeemd_lang=en"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, LANG_COOKIE).as_deref(), Some("en"));
        assert_eq!(cookie(&h, "b"), None);
        assert_eq!(
            set_cookie(SESSION_COOKIE, "t", None),
            "__Host-redeemd_session=t; Path=/; Secure; HttpOnly; SameSite=Strict"
        );
        assert_eq!(
            set_cookie(LANG_COOKIE, "zh", Some(5)),
            "redeemd_lang=zh; Path=/; Secure; SameSite=Lax; Max-Age=5"
        );
    }

    #[test]
    fn only_console_addresses_are_followed_after_login() {
        assert_eq!(local_next("/console/cards/3"), "/console/cards/3");
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/console//x",
            "/v1/fleet",
            "/console\\x",
            "",
        ] {
            assert_eq!(local_next(bad), "/console/", "{bad}");
        }
    }
}
