//! The web console over real HTTP on loopback, on both engines, as a browser speaks to it (cookies,
//! forms, redirects followed by hand): logins and sessions (a hashed cookie, `Secure; HttpOnly;
//! SameSite=Strict`, ended idle, by logout or by revoking the user), the CSRF token every form needs,
//! what a merchant can and cannot open, card search by masked number and holder, exceptions resolved
//! once with a note, both languages, and everything from a request or the database escaped. The
//! browser itself drives the console in the workspace's `tests/it/console_e2e.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};

use clearing_server::core::access::Role;
use clearing_server::core::card_search::CardQuery;
use clearing_server::core::cards::NewCard;
use clearing_server::core::session::IDLE_MS;
use clearing_server::service::cards::CardSel;
use clearing_server::service::merchants::MerchantInput;
use clearing_server::service::{Service, cli_principal};
use clearing_server::storage::Db;
use common::engines::{Engine, blocking, database, vault};
use common::{Line, Signed, T0, lines_of, serve_on_loopback, wash_package};
use redeemd_contract::keys::{TerminalKeys, TerminalSecret};
use redeemd_contract::model::{CardNumber, MerchantScope};
use redeemd_contract::request::SignedHeaders;

mod common;

const CARD_A: &str = "6228480012345678";
const CARD_B: &str = "6228480099995678";
const CARD_C: &str = "6228481234560003";
/// A name with markup and characters only GB18030 (not GBK) encodes.
const HOSTILE: &str = "<script>alert(1)</script>𠀀䶵";

struct Console {
    base: String,
    db: Arc<Db>,
    clock: Arc<AtomicI64>,
    http: reqwest::Client,
    card_a: i64,
    _dir: tempfile::TempDir,
}

/// A browser's state: its cookies.
#[derive(Default)]
struct Jar(BTreeMap<String, String>);

struct Page {
    status: u16,
    location: Option<String>,
    set_cookies: Vec<String>,
    headers: reqwest::header::HeaderMap,
    body: String,
}

/// Two merchants (M-2 named with markup) with a terminal each, three cards, a console login per role,
/// and records uploaded by both terminals — one of T-2's at a price it was not signed (held).
async fn start(engine: Engine) -> Console {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(blocking(|| {
        Db::open(&database(engine, dir.path())).unwrap()
    }));
    let v = vault();
    let who = cli_principal();
    let svc = Service::new(&db, &v, &who, T0);
    let card_a = blocking(|| {
        for (m, name) in [("M-1", "城东洗车"), ("M-2", HOSTILE)] {
            svc.put_merchant(
                m,
                &MerchantInput {
                    name: name.into(),
                    commission_bps: 500,
                    categories: vec![],
                },
            )
            .unwrap();
        }
        svc.enroll_terminal("T-1", "M-1", &[1; 32]).unwrap();
        svc.enroll_terminal("T-2", "M-2", &[2; 32]).unwrap();
        let mut ids = Vec::new();
        for (n, holder) in [
            (CARD_A, Some("张三")),
            (CARD_B, Some(HOSTILE)),
            (CARD_C, None),
        ] {
            let number = CardNumber::parse(n).unwrap();
            let c = svc
                .create_card(&NewCard {
                    number: number.clone(),
                    holder_name: holder.map(str::to_owned),
                    identity_data: None,
                })
                .unwrap();
            svc.customize(
                CardSel::Number(&number),
                &wash_package("P1", MerchantScope::All),
            )
            .unwrap();
            ids.push(c.card_id.unwrap());
        }
        for (name, role, subject) in [
            ("alice", Role::Operator, "alice"),
            ("m1", Role::Merchant, "M-1"),
            ("m2", Role::Merchant, "M-2"),
        ] {
            svc.create_user(name, role, subject, "a long passphrase")
                .unwrap();
        }
        ids[0]
    });
    let clock = Arc::new(AtomicI64::new(T0 + 3_600_000));
    let base = serve_on_loopback(db.clone(), &clock).await;
    let console = Console {
        base,
        db,
        clock,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        card_a,
        _dir: dir,
    };
    let keys = |t: &str, s: u8| TerminalSecret::from_bytes(&[s; 32]).unwrap().derive_all(t);
    let (t1, t2) = (keys("T-1", 1), keys("T-2", 2));
    let card = |k: &TerminalKeys| CardNumber::parse(CARD_A).unwrap().card_ref(&k.card_token);
    let r1 = lines_of(
        &t1,
        "M-1",
        None,
        &[Line::redeem(card(&t1), "P1", "WASH", 2)],
    );
    let r2 = lines_of(
        &t2,
        "M-2",
        None,
        &[
            Line::redeem(card(&t2), "P1", "WASH", 1),
            Line::redeem(card(&t2), "P1", "WASH", 1).at(9999),
        ],
    );
    let nonce = AtomicU8::new(0);
    for (k, recs) in [(&t1, r1), (&t2, r2)] {
        let path = format!("/v1/terminals/{}/journal", k.terminal_id);
        let body = redeemd::sync::wire::upload_body(&recs);
        let h = SignedHeaders::sign(
            &k.request,
            &k.terminal_id,
            "POST",
            &path,
            console.clock.load(Ordering::SeqCst),
            [nonce.fetch_add(1, Ordering::SeqCst); 16],
            &body,
        );
        let req = console
            .http
            .post(format!("{}{path}", console.base))
            .header("content-type", "application/json")
            .body(body)
            .signed(&h);
        assert_eq!(req.send().await.unwrap().status(), 200);
    }
    console
}

impl Console {
    async fn send(
        &self,
        jar: &mut Jar,
        method: &str,
        path: &str,
        form: Option<&[(&str, &str)]>,
        lang: Option<&str>,
    ) -> Page {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if !jar.0.is_empty() {
            let cookies: Vec<String> = jar.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req = req.header("cookie", cookies.join("; "));
        }
        if let Some(l) = lang {
            req = req.header("accept-language", l);
        }
        if let Some(f) = form {
            req = req
                .header("content-type", "application/x-www-form-urlencoded")
                .body(serde_urlencoded::to_string(f).unwrap());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let set_cookies: Vec<String> = headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        for c in &set_cookies {
            let (pair, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = pair.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                jar.0.remove(k);
            } else {
                jar.0.insert(k.to_owned(), v.to_owned());
            }
        }
        Page {
            status,
            location: headers
                .get("location")
                .map(|l| l.to_str().unwrap().to_owned()),
            set_cookies,
            headers,
            body: resp.text().await.unwrap(),
        }
    }

    async fn get(&self, jar: &mut Jar, path: &str) -> Page {
        self.send(jar, "GET", path, None, None).await
    }

    async fn post(&self, jar: &mut Jar, path: &str, form: &[(&str, &str)]) -> Page {
        self.send(jar, "POST", path, Some(form), None).await
    }

    /// Posts the login form (fetched first, for its token) as `name` with `password`, to come back
    /// to `next`.
    async fn try_login(&self, jar: &mut Jar, name: &str, password: &str, next: &str) -> Page {
        let form = self.get(jar, "/console/login").await;
        let token = hidden(&form.body, "csrf");
        self.post(
            jar,
            "/console/login",
            &[
                ("csrf", &token),
                ("name", name),
                ("password", password),
                ("next", next),
            ],
        )
        .await
    }

    /// Logs in as `name` through the login form; the jar then holds the session.
    async fn login(&self, name: &str) -> Jar {
        let mut jar = Jar::default();
        let p = self
            .try_login(&mut jar, name, "a long passphrase", "/console/")
            .await;
        assert_eq!(p.status, 303, "{}", p.body);
        assert!(jar.0.contains_key("__Host-redeemd_session"));
        jar
    }

    /// Posts the resolution of exception `key` with `note`.
    async fn resolve(&self, jar: &mut Jar, csrf: &str, key: &str, note: &str) -> Page {
        self.post(
            jar,
            "/console/exceptions/resolve",
            &[("csrf", csrf), ("key", key), ("note", note)],
        )
        .await
    }

    /// The CSRF token of the session's forms, from a page.
    async fn csrf(&self, jar: &mut Jar) -> String {
        hidden(&self.get(jar, "/console/fleet").await.body, "csrf")
    }

    fn sql_count(&self, sql: &str) -> i64 {
        blocking(|| self.db.read(|tx| tx.query_one(sql, &[])?.i64(0)).unwrap())
    }
}

/// The value of the hidden input `name` in a page.
fn hidden(body: &str, name: &str) -> String {
    let at = body
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no {name} in {body}"));
    let rest = &body[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_owned()
}

on_both_engines!(
    async a_session_is_a_hashed_cookie_that_ends_idle_on_logout_or_when_revoked,
    every_form_needs_its_csrf_token_and_a_refused_one_changes_nothing,
    a_merchant_opens_only_its_own_pages,
    cards_are_found_by_masked_number_or_holder_and_changed_from_their_page,
    imported_cards_are_found_at_once,
    exceptions_are_resolved_once_with_a_note_and_audited,
    pages_speak_both_languages_and_escape_what_they_show,
    the_statement_chart_counts_the_payable_units_per_day_and_item,
    console_logins_are_throttled,
);

async fn console_logins_are_throttled(engine: Engine) {
    let c = start(engine).await;
    let mut jar = Jar::default();
    let mut last = 0;
    for _ in 0..11 {
        let p = c.try_login(&mut jar, "alice", "guess", "/console/").await;
        last = p.status;
        if last == 429 {
            assert!(p.headers.contains_key("retry-after"));
            break;
        }
        assert_eq!(last, 401);
    }
    assert_eq!(last, 429);
    // Even the right password waits now.
    let p = c
        .try_login(&mut jar, "alice", "a long passphrase", "/console/")
        .await;
    assert_eq!(p.status, 429);
    assert!(!jar.0.contains_key("__Host-redeemd_session"));
}

async fn a_session_is_a_hashed_cookie_that_ends_idle_on_logout_or_when_revoked(engine: Engine) {
    let c = start(engine).await;
    let mut none = Jar::default();
    let p = c.get(&mut none, "/console/cards/1").await;
    assert_eq!(p.status, 303);
    assert_eq!(
        p.location.as_deref(),
        Some("/console/login?next=%2Fconsole%2Fcards%2F1")
    );
    // The login form sets its own token cookie; a wrong password is one answer, the form again.
    let mut jar = Jar::default();
    let form = c.get(&mut jar, "/console/login").await;
    assert_eq!(form.status, 200);
    let token = hidden(&form.body, "csrf");
    let bad = c
        .post(
            &mut jar,
            "/console/login",
            &[("csrf", &token), ("name", "alice"), ("password", "wrong")],
        )
        .await;
    assert_eq!(bad.status, 401);
    assert!(bad.body.contains("data-problem=\"login\""), "{}", bad.body);
    let token = hidden(&bad.body, "csrf");
    let ok = c
        .post(
            &mut jar,
            "/console/login",
            &[
                ("csrf", &token),
                ("name", "alice"),
                ("password", "a long passphrase"),
                ("next", "/console/cards/1"),
            ],
        )
        .await;
    assert_eq!(ok.status, 303);
    assert_eq!(ok.location.as_deref(), Some("/console/cards/1"));
    let session = ok
        .set_cookies
        .iter()
        .find(|s| s.starts_with("__Host-redeemd_session="))
        .unwrap();
    assert!(
        session.ends_with("; Path=/; Secure; HttpOnly; SameSite=Strict"),
        "{session}"
    );
    let cookie = jar.0["__Host-redeemd_session"].clone();
    // The database keeps the cookie's hash, never the cookie.
    assert_eq!(c.sql_count("SELECT count(*) FROM console_session"), 1);
    let stored = blocking(|| {
        c.db.read(|tx| {
            Ok::<_, clearing_server::storage::StorageError>(
                tx.query_one("SELECT id_hash FROM console_session", &[])?
                    .blob(0)?
                    .to_vec(),
            )
        })
        .unwrap()
    });
    assert_ne!(stored, cookie.as_bytes());
    assert!(!hex::encode(&stored).contains(&cookie));
    let page = c.get(&mut jar, "/console/cards/1").await;
    assert_eq!(page.status, 200);
    for (h, v) in [
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
    ] {
        assert_eq!(page.headers[h], v);
    }
    assert!(
        page.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'none'")
    );
    // Logged in audited; a redirect to another site after login is not followed.
    assert_eq!(
        c.sql_count("SELECT count(*) FROM audit WHERE action = 'console.login'"),
        1
    );
    let mut other = Jar::default();
    let p = c
        .try_login(
            &mut other,
            "m1",
            "a long passphrase",
            "https://evil.example/",
        )
        .await;
    assert_eq!(p.location.as_deref(), Some("/console/"));
    // Idle for longer than the idle timeout: back to the login page.
    c.clock.fetch_add(IDLE_MS, Ordering::SeqCst);
    assert_eq!(c.get(&mut jar, "/console/fleet").await.status, 303);
    // A fresh session ends at logout (audited), and the cookie no longer opens anything.
    let mut jar = c.login("alice").await;
    let csrf = c.csrf(&mut jar).await;
    let cookie = jar.0["__Host-redeemd_session"].clone();
    let out = c
        .post(&mut jar, "/console/logout", &[("csrf", &csrf)])
        .await;
    assert_eq!(out.status, 303);
    assert!(!jar.0.contains_key("__Host-redeemd_session"));
    jar.0.insert("__Host-redeemd_session".into(), cookie);
    assert_eq!(c.get(&mut jar, "/console/fleet").await.status, 303);
    // Revoking the user ends its sessions at once, and the pairing codes it made and nobody used.
    let mut m1 = c.login("m1").await;
    assert_eq!(c.get(&mut m1, "/console/fleet").await.status, 200);
    let csrf = c.csrf(&mut m1).await;
    let made = c
        .post(
            &mut m1,
            "/console/merchants/M-1/pairing-codes",
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let v = vault();
    let who = cli_principal();
    let now = c.clock.load(Ordering::SeqCst);
    let codes = blocking(|| {
        let svc = Service::new(&c.db, &v, &who, now);
        svc.revoke_user("m1").unwrap();
        svc.pairing_codes("M-1").unwrap()
    });
    let m1s: Vec<_> = codes
        .iter()
        .filter(|k| k.created_by.ends_with("(console login m1)"))
        .collect();
    assert_eq!(m1s.len(), 1, "{codes:?}");
    assert_eq!(m1s[0].expires_ms, now, "{codes:?}");
    assert_eq!(c.get(&mut m1, "/console/fleet").await.status, 303);
}

async fn every_form_needs_its_csrf_token_and_a_refused_one_changes_nothing(engine: Engine) {
    let c = start(engine).await;
    let mut jar = c.login("alice").await;
    let path = format!("/console/cards/{}/status", c.card_a);
    for form in [
        vec![("action", "report_lost")],
        vec![("action", "report_lost"), ("csrf", "")],
        vec![
            ("action", "report_lost"),
            ("csrf", "00000000000000000000000000000000"),
        ],
    ] {
        let p = c.post(&mut jar, &path, &form).await;
        assert_eq!(p.status, 403, "{form:?}");
        assert!(p.body.contains("data-problem=\"csrf\""), "{}", p.body);
    }
    // Another session's token is not this one's.
    let mut other = c.login("alice").await;
    let others = c.csrf(&mut other).await;
    assert_eq!(
        c.post(
            &mut jar,
            &path,
            &[("action", "report_lost"), ("csrf", &others)]
        )
        .await
        .status,
        403
    );
    let card = c
        .get(&mut jar, &format!("/console/cards/{}", c.card_a))
        .await;
    assert!(card.body.contains("data-state=\"active\""), "{}", card.body);
    assert_eq!(
        c.sql_count("SELECT count(*) FROM audit WHERE action = 'card.report_lost'"),
        0
    );
    // With its token the same form works.
    let csrf = c.csrf(&mut jar).await;
    let p = c
        .post(
            &mut jar,
            &path,
            &[("action", "report_lost"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(p.status, 303);
    let card = c.get(&mut jar, p.location.as_deref().unwrap()).await;
    assert!(card.body.contains("data-state=\"lost\""), "{}", card.body);
    assert!(card.body.contains("data-done"), "{}", card.body);
    // The login form's token must be the one its cookie holds.
    let mut fresh = Jar::default();
    let form = c.get(&mut fresh, "/console/login").await;
    let token = hidden(&form.body, "csrf");
    fresh.0.clear();
    let p = c
        .post(
            &mut fresh,
            "/console/login",
            &[
                ("csrf", &token),
                ("name", "alice"),
                ("password", "a long passphrase"),
            ],
        )
        .await;
    assert_eq!(p.status, 403);
    assert!(!fresh.0.contains_key("__Host-redeemd_session"));
}

async fn a_merchant_opens_only_its_own_pages(engine: Engine) {
    let c = start(engine).await;
    let mut m1 = c.login("m1").await;
    for own in [
        "/console/fleet",
        "/console/merchants/M-1",
        "/console/merchants/M-1/statement",
        "/console/exceptions",
    ] {
        let p = c.get(&mut m1, own).await;
        assert_eq!(p.status, 200, "{own}: {}", p.body);
        assert!(!p.body.contains("T-2"), "{own} shows M-2's terminal");
    }
    // Another merchant's pages are not found (its existence is not confirmed); the operators' not
    // allowed.
    for (path, status) in [
        ("/console/merchants/M-2", 404),
        ("/console/merchants/M-2/statement", 404),
        ("/console/merchants/M-9", 404),
        ("/console/cards", 403),
        ("/console/cards/1", 403),
        ("/console/merchants", 403),
    ] {
        let p = c.get(&mut m1, path).await;
        assert_eq!(p.status, status, "{path}");
        assert!(!p.body.contains("alert(1)"), "{path}: {}", p.body);
    }
    let csrf = c.csrf(&mut m1).await;
    for (path, form, status) in [
        (
            "/console/merchants/M-1/terminals/T-1/disable",
            vec![("csrf", csrf.as_str())],
            403,
        ),
        (
            "/console/merchants/M-2/pairing-codes",
            vec![("csrf", csrf.as_str())],
            404,
        ),
        (
            "/console/exceptions/resolve",
            vec![
                ("csrf", csrf.as_str()),
                ("key", "amount_mismatch:T-2:2"),
                ("note", "mine now"),
            ],
            403,
        ),
    ] {
        assert_eq!(c.post(&mut m1, path, &form).await.status, status, "{path}");
    }
    // Its own pairing code: shown once, with the command for the shop PC; never a secret.
    let p = c
        .post(
            &mut m1,
            "/console/merchants/M-1/pairing-codes",
            &[("csrf", &csrf), ("terminal_id", "T-9")],
        )
        .await;
    assert_eq!(p.status, 201, "{}", p.body);
    assert!(
        p.body
            .contains("sudo redeemd enroll --server http://127.0.0.1:")
    );
    assert!(p.body.contains("data-terminal>T-9<"), "{}", p.body);
    let p = c
        .post(
            &mut m1,
            "/console/merchants/M-1/pairing-codes",
            &[("csrf", &csrf), ("ttl_minutes", "600")],
        )
        .await;
    assert_eq!(p.status, 422);
    assert!(
        p.body.contains("data-error-for=\"ttl_minutes\""),
        "{}",
        p.body
    );
}

/// Cards issued in bulk (`admin card import`) are in the search index as they are issued: a running
/// server finds them without waiting for the next start's filling of old rows.
async fn imported_cards_are_found_at_once(engine: Engine) {
    let c = start(engine).await;
    let v = vault();
    let who = cli_principal();
    let svc = Service::new(&c.db, &v, &who, T0);
    let file = "number,holder,identity,package,title,valid_from,valid_until,scope,daily_cap,identity_required,items\n\
                6228480012340001,王五,,P1,洗车套餐,2026-01-01,2030-12-31,,,,WASH:精洗:10:3500\n\
                6228480012340002,,,,,,,,,,\n";
    blocking(|| svc.import_cards(file.as_bytes()).unwrap());
    let found = |number: &str, holder: &str| {
        let q = CardQuery::parse(number, holder).unwrap();
        blocking(|| svc.find_cards(&q).unwrap())
            .cards
            .into_iter()
            .map(|m| m.masked_number)
            .collect::<Vec<_>>()
    };
    assert_eq!(found("0001", ""), ["622848******0001"]);
    assert_eq!(found("622848******0002", ""), ["622848******0002"]);
    assert_eq!(found("", "王"), ["622848******0001"]);
}

async fn cards_are_found_by_masked_number_or_holder_and_changed_from_their_page(engine: Engine) {
    let c = start(engine).await;
    let v = vault();
    let who = cli_principal();
    let svc = Service::new(&c.db, &v, &who, T0);
    let found = |number: &str, holder: &str| {
        let q = CardQuery::parse(number, holder).unwrap();
        blocking(|| svc.find_cards(&q).unwrap())
            .cards
            .into_iter()
            .map(|m| m.masked_number)
            .collect::<Vec<_>>()
    };
    assert_eq!(found("5678", ""), ["622848******5678", "622848******5678"]);
    assert_eq!(found("622848******5678", "张"), ["622848******5678"]);
    assert_eq!(found("622848…0003", ""), ["622848******0003"]);
    assert_eq!(found("", "<SCRIPT>"), ["622848******5678"]);
    assert_eq!(found(CARD_A, ""), ["622848******5678"]);
    assert_eq!(found(CARD_A, "李"), Vec::<String>::new());
    assert_eq!(found("1111", ""), Vec::<String>::new());
    // The index holds the first six and last four only.
    assert_eq!(
        c.sql_count(
            "SELECT count(*) FROM card WHERE length(number_head) = 6 AND length(number_tail) = 4"
        ),
        3
    );
    // A database from before the index: its rows are filled when the server starts with the key.
    blocking(|| {
        c.db.write(|tx| {
            tx.execute(
                "UPDATE card SET number_head = NULL, number_tail = NULL, holder_key = NULL",
                &[],
            )
        })
        .unwrap();
        clearing_server::storage::sealing::bind(&c.db, &v, T0).unwrap();
    });
    assert_eq!(found("", "张三"), ["622848******5678"]);
    // A merchant may not search.
    let m1 = clearing_server::core::access::Principal::new(Role::Merchant, "M-1", "test");
    let q = CardQuery::parse("5678", "").unwrap();
    let refused = blocking(|| Service::new(&c.db, &v, &m1, T0).find_cards(&q).unwrap_err());
    assert_eq!(refused.status, 403);

    // Through the console: a search posted (a number never in an address), results masked.
    let mut jar = c.login("alice").await;
    let csrf = c.csrf(&mut jar).await;
    let p = c
        .post(
            &mut jar,
            "/console/cards/search",
            &[("csrf", &csrf), ("number", CARD_A), ("holder", "")],
        )
        .await;
    assert_eq!(p.status, 200);
    assert!(p.body.contains("622848******5678"));
    assert!(!p.body.contains(CARD_A), "a whole number shown back");
    let p = c
        .post(
            &mut jar,
            "/console/cards/search",
            &[("csrf", &csrf), ("number", "62284"), ("holder", "")],
        )
        .await;
    assert_eq!(p.status, 422);
    assert!(p.body.contains("data-error-for=\"number\""), "{}", p.body);
    // Customizing a package: a refused value is named at its form row, then a good one is saved.
    let path = format!("/console/cards/{}/packages", c.card_a);
    let mut form = vec![
        ("csrf", csrf.as_str()),
        ("package_id", "P2"),
        ("title", "打蜡套餐"),
        ("valid_from", "2026-01-01"),
        ("valid_until", "2027-12-31"),
        ("scope", "all"),
        ("scope_list", ""),
        ("daily_cap", ""),
        ("items[0].service_code", ""),
        ("items[0].title", ""),
        ("items[0].uses_total", ""),
        ("items[0].price", ""),
        ("items[1].service_code", "WAX"),
        ("items[1].title", "打蜡"),
        ("items[1].uses_total", "0"),
        ("items[1].price", "80"),
    ];
    let p = c.post(&mut jar, &path, &form).await;
    assert_eq!(p.status, 422, "{}", p.body);
    assert!(
        p.body.contains("data-error-for=\"items[1].uses_total\""),
        "{}",
        p.body
    );
    assert!(p.body.contains("value=\"打蜡套餐\""), "entered values kept");
    form[14] = ("items[1].uses_total", "4");
    let p = c.post(&mut jar, &path, &form).await;
    assert_eq!(p.status, 303, "{}", p.body);
    let card = c.get(&mut jar, p.location.as_deref().unwrap()).await;
    assert!(card.body.contains("data-package=\"P2\""), "{}", card.body);
    assert!(card.body.contains("¥80.00"));
    assert_eq!(
        c.sql_count("SELECT count(*) FROM audit WHERE action = 'card.customize' AND actor LIKE '%console login alice%'"),
        1
    );
    // Issuing a card: a wrong number is named and never shown back.
    let p = c
        .post(
            &mut jar,
            "/console/cards",
            &[
                ("csrf", &csrf),
                ("number", "62284800123"),
                ("holder", "王五"),
            ],
        )
        .await;
    assert_eq!(p.status, 422, "{}", p.body);
    assert!(p.body.contains("data-error-for=\"number\""));
    assert!(!p.body.contains("62284800123"));
}

async fn exceptions_are_resolved_once_with_a_note_and_audited(engine: Engine) {
    let c = start(engine).await;
    let key = "amount_mismatch:T-2:2";
    let mut jar = c.login("alice").await;
    let page = c.get(&mut jar, "/console/exceptions").await;
    assert!(
        page.body.contains(&format!("data-key=\"{key}\"")),
        "{}",
        page.body
    );
    let csrf = c.csrf(&mut jar).await;
    let p = c.resolve(&mut jar, &csrf, key, "   ").await;
    assert_eq!(p.status, 422);
    assert!(p.body.contains("data-error-for=\"note\""), "{}", p.body);
    let note = "shop called: the price was mistyped <b>";
    let p = c.resolve(&mut jar, &csrf, key, note).await;
    assert_eq!(p.status, 303);
    let again = c.resolve(&mut jar, &csrf, key, note).await;
    assert_eq!(again.status, 409);
    let unknown = c.resolve(&mut jar, &csrf, "chain_broken:T-1:1", "x").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(
        c.sql_count(
            "SELECT count(*) FROM audit WHERE action = 'exception.resolve' AND target = 'exception amount_mismatch:T-2:2'"
        ),
        1
    );
    // M-2 sees its exception resolved, with who and why; M-1 does not see it at all.
    let mut m2 = c.login("m2").await;
    let page = c.get(&mut m2, "/console/exceptions").await;
    let resolved = &page.body[page.body.find("id=\"resolved\"").unwrap()..];
    assert!(resolved.contains(key), "{}", page.body);
    assert!(resolved.contains("shop called: the price was mistyped &lt;b&gt;"));
    assert!(resolved.contains("console login alice"));
    assert!(!page.body.contains("<form class=\"resolve\""));
    let mut m1 = c.login("m1").await;
    assert!(
        !c.get(&mut m1, "/console/exceptions")
            .await
            .body
            .contains(key)
    );
    // Resolving changes no money: the record is still held on M-2's statement.
    let st = c.get(&mut m2, "/console/merchants/M-2/statement").await;
    assert!(
        st.body.contains("data-held=\"amount_mismatch\""),
        "{}",
        st.body
    );
}

async fn pages_speak_both_languages_and_escape_what_they_show(engine: Engine) {
    let c = start(engine).await;
    let mut jar = c.login("alice").await;
    let en = c
        .send(
            &mut jar,
            "GET",
            "/console/fleet",
            None,
            Some("en-US,en;q=0.9"),
        )
        .await;
    assert!(en.body.contains("<html lang=\"en\">"));
    assert!(en.body.contains("<h1>Fleet</h1>"), "{}", en.body);
    let zh = c
        .send(
            &mut jar,
            "GET",
            "/console/fleet",
            None,
            Some("zh-CN,zh;q=0.9,en;q=0.5"),
        )
        .await;
    assert!(zh.body.contains("<h1>终端状态</h1>"), "{}", zh.body);
    // The switch remembers the choice over the browser's.
    let sw = c
        .get(&mut jar, "/console/lang/en?next=%2Fconsole%2Fmerchants")
        .await;
    assert_eq!(sw.location.as_deref(), Some("/console/merchants"));
    let chosen = c
        .send(&mut jar, "GET", "/console/merchants", None, Some("zh-CN"))
        .await;
    assert!(
        chosen.body.contains("<h1>Merchants</h1>"),
        "{}",
        chosen.body
    );
    let away = c
        .get(&mut jar, "/console/lang/zh?next=https%3A%2F%2Fevil.example")
        .await;
    assert_eq!(away.location.as_deref(), Some("/console/"));
    // Markup in a merchant name and a holder name is text, and GB18030-only characters are kept.
    let escaped = "&lt;script&gt;alert(1)&lt;/script&gt;𠀀䶵";
    for path in [
        "/console/merchants",
        "/console/merchants/M-2",
        "/console/merchants/M-2/statement",
    ] {
        let p = c.get(&mut jar, path).await;
        assert_eq!(p.status, 200);
        assert!(p.body.contains(escaped), "{path}: {}", p.body);
        assert!(!p.body.contains("<script>"), "{path}");
    }
    let csrf = c.csrf(&mut jar).await;
    let p = c
        .post(
            &mut jar,
            "/console/cards/search",
            &[("csrf", &csrf), ("number", ""), ("holder", HOSTILE)],
        )
        .await;
    assert_eq!(p.status, 200);
    assert!(p.body.contains("622848******5678"), "{}", p.body);
    assert!(
        p.body.contains(&format!("value=\"{escaped}\"")),
        "{}",
        p.body
    );
    assert!(!p.body.contains("<script>"));
    // A page that does not exist is a page, in the person's language.
    let missing = c
        .send(&mut jar, "GET", "/console/nowhere/<b>", None, None)
        .await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("data-problem=\"not_found\""));
}

async fn the_statement_chart_counts_the_payable_units_per_day_and_item(engine: Engine) {
    let c = start(engine).await;
    let mut jar = c.login("alice").await;
    let p = c
        .get(
            &mut jar,
            "/console/merchants/M-2/statement?from=2026-11-01&until=2026-11-30",
        )
        .await;
    assert_eq!(p.status, 200);
    // Thirty bars; M-2's records are on the day of T0 (2026-11-18 in China): one payable unit of
    // P1/WASH (the other is held, and not drawn).
    assert!(p.body.contains("data-days=\"30\""), "{}", p.body);
    assert_eq!(p.body.matches("<g class=\"bar\"").count(), 30);
    assert!(
        p.body.contains("data-day=\"2026-11-18\" data-total=\"1\""),
        "{}",
        p.body
    );
    assert_eq!(p.body.matches("<rect class=\"seg\"").count(), 1);
    assert!(p.body.contains("data-item=\"P1/WASH\" data-units=\"1\""));
    assert!(
        p.body.contains("data-total=\"payable\">¥33.25<"),
        "{}",
        p.body
    );
    // A period longer than a year is refused by field.
    let p = c
        .get(
            &mut jar,
            "/console/merchants/M-2/statement?from=2024-01-01&until=2026-11-30",
        )
        .await;
    assert_eq!(p.status, 422);
    assert!(p.body.contains("data-error-for=\"until\""), "{}", p.body);
}
