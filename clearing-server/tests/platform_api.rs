//! The platform API per role over real HTTP on loopback (`docs/api/README.md`, "Platform API"), on
//! both engines: what an operator, a merchant and the member app can and cannot see or change, API keys
//! stored hashed and revocable, the audit log, fields named when refused, and the pairing code's
//! rules (one use, expiry, throttled guessing).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};

use clearing_server::core::access::Role;
use clearing_server::core::cards::{ItemSpec, NewCard};
use clearing_server::core::catalogue::Offer;
use clearing_server::service::cards::CardSel;
use clearing_server::service::merchants::MerchantInput;
use clearing_server::service::{Service, cli_principal};
use clearing_server::storage::Db;
use common::engines::{Engine, blocking, database, database_files, vault};
use common::{Line, Signed, T0, json_answer, lines_of, serve_on_loopback, wash_package};
use redeemd_contract::keys::{TerminalKeys, TerminalSecret};
use redeemd_contract::model::{CardNumber, MerchantScope};
use redeemd_contract::request::SignedHeaders;
use serde_json::{Value, json};

mod common;

const CARD_A: &str = "6228480012345678";
const CARD_B: &str = "6228480012349999";
const CARD_C: &str = "6228480012340003";

struct Platform {
    base: String,
    db: Arc<Db>,
    clock: Arc<AtomicI64>,
    http: reqwest::Client,
    nonce: AtomicU8,
    operator: String,
    merchant_1: String,
    merchant_2: String,
    app: String,
    other_app: String,
    /// Card A, granted to the member app `app`; card B granted to `other-app`.
    handle_a: String,
    handle_b: String,
    card_a: i64,
    t1: TerminalKeys,
    t2: TerminalKeys,
    dir: tempfile::TempDir,
}

/// Two merchants with a terminal each, three cards (A granted to `app`, B to `other-app`), a catalogue
/// offer, a key per role — set up through the operations the admin CLI calls — and records uploaded
/// by both terminals.
async fn start(engine: Engine) -> Platform {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(blocking(|| {
        Db::open(&database(engine, dir.path())).unwrap()
    }));
    let v = vault();
    let who = cli_principal();
    let svc = Service::new(&db, &v, &who, T0);
    let (operator, merchant_1, merchant_2, app, other_app, handle_a, handle_b, card_a) =
        blocking(|| {
            for m in ["M-1", "M-2"] {
                svc.put_merchant(
                    m,
                    &MerchantInput {
                        name: format!("商户 {m}"),
                        commission_bps: 500,
                        categories: vec![],
                    },
                )
                .unwrap();
            }
            svc.enroll_terminal("T-1", "M-1", &[1; 32]).unwrap();
            svc.enroll_terminal("T-2", "M-2", &[2; 32]).unwrap();
            let mut ids = Vec::new();
            for n in [CARD_A, CARD_B, CARD_C] {
                let number = CardNumber::parse(n).unwrap();
                let c = svc
                    .create_card(&NewCard {
                        number: number.clone(),
                        holder_name: Some("张三".into()),
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
            svc.put_offer(&Offer {
                id: "WASH10".into(),
                title: "洗车十次".into(),
                valid_days: 365,
                scope: MerchantScope::All,
                daily_cap: None,
                identity_required: false,
                items: vec![ItemSpec {
                    service_code: "WASH".into(),
                    title: "精洗".into(),
                    uses_total: 10,
                    price_fen: 3000,
                }],
                active: true,
            })
            .unwrap();
            let key =
                |role, subject: &str| svc.create_credential(role, subject, "test").unwrap().token;
            let handle_a = svc.grant_card(CardSel::Id(ids[0]), "app").unwrap().handle;
            let handle_b = svc
                .grant_card(CardSel::Id(ids[1]), "other-app")
                .unwrap()
                .handle;
            (
                key(Role::Operator, "alice"),
                key(Role::Merchant, "M-1"),
                key(Role::Merchant, "M-2"),
                key(Role::MemberApp, "app"),
                key(Role::MemberApp, "other-app"),
                handle_a,
                handle_b,
                ids[0],
            )
        });
    let clock = Arc::new(AtomicI64::new(T0 + 3_600_000));
    let base = serve_on_loopback(db.clone(), &clock).await;
    let keys = |t: &str, s: u8| TerminalSecret::from_bytes(&[s; 32]).unwrap().derive_all(t);
    let p = Platform {
        base,
        db,
        clock,
        http: reqwest::Client::new(),
        nonce: AtomicU8::new(0),
        operator,
        merchant_1,
        merchant_2,
        app,
        other_app,
        handle_a,
        handle_b,
        card_a,
        t1: keys("T-1", 1),
        t2: keys("T-2", 2),
        dir,
    };
    // Card A redeemed at T-1 (M-1) and at T-2 (M-2); T-2 also claims a price it was not signed.
    let card = |keys: &TerminalKeys| {
        CardNumber::parse(CARD_A)
            .unwrap()
            .card_ref(&keys.card_token)
    };
    let r1 = lines_of(
        &p.t1,
        "M-1",
        None,
        &[Line::redeem(card(&p.t1), "P1", "WASH", 2)],
    );
    let r2 = lines_of(
        &p.t2,
        "M-2",
        None,
        &[
            Line::redeem(card(&p.t2), "P1", "WASH", 1),
            Line::redeem(card(&p.t2), "P1", "WASH", 1).at(9999),
        ],
    );
    for (keys, recs) in [(&p.t1, r1), (&p.t2, r2)] {
        let path = format!("/v1/terminals/{}/journal", keys.terminal_id);
        let (st, v) = p
            .signed(keys, "POST", &path, redeemd::sync::wire::upload_body(&recs))
            .await;
        assert_eq!(st, 200, "{v}");
    }
    p
}

impl Platform {
    async fn call(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let (status, headers, v) = json_answer(req.send().await.unwrap()).await;
        let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap());
        // An answer that carries a credential (an API token, a pairing code, a terminal's
        // secret) is kept by no cache on the way.
        if status < 300 && ["token", "code", "secret"].iter().any(|k| v[k].is_string()) {
            assert_eq!(
                header("cache-control"),
                Some("no-store"),
                "{method} {path}: {v}"
            );
        }
        if status < 300 && status != 204 {
            assert_eq!(
                header("content-type"),
                Some("application/json"),
                "{method} {path}"
            );
        }
        (status, v)
    }

    async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        self.call(Some(token), "GET", path, None).await
    }

    async fn post(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        self.call(Some(token), "POST", path, Some(body)).await
    }

    async fn signed(
        &self,
        keys: &TerminalKeys,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let n = self.nonce.fetch_add(1, Ordering::SeqCst);
        let h = SignedHeaders::sign(
            &keys.request,
            &keys.terminal_id,
            method,
            path,
            self.clock.load(Ordering::SeqCst),
            [n; 16],
            &body,
        );
        let req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        let (status, _, v) = json_answer(req.signed(&h).send().await.unwrap()).await;
        (status, v)
    }
}

fn code(v: &Value) -> &str {
    v["code"].as_str().unwrap_or("")
}

on_both_engines!(
    async an_operator_does_what_admin_does,
    a_merchant_sees_and_changes_only_its_own,
    the_member_app_acts_only_on_cards_it_was_given,
    keys_are_stored_hashed_revocable_and_every_change_is_audited,
    every_refused_field_is_named_and_nothing_is_echoed_unescaped,
    a_pairing_code_works_once_expires_and_is_throttled,
    a_terminals_health_report_is_kept_and_judged_into_alerts,
);

async fn an_operator_does_what_admin_does(engine: Engine) {
    let p = start(engine).await;
    let op = p.operator.as_str();
    let (st, v) = p
        .call(
            Some(op),
            "PUT",
            "/v1/merchants/M-3",
            Some(json!({"name": "城东洗车", "commission_bps": 300, "categories": ["car-wash"]})),
        )
        .await;
    assert_eq!(
        (st, v["categories"][0].as_str()),
        (200, Some("car-wash")),
        "{v}"
    );
    let (_, v) = p.get(op, "/v1/merchants").await;
    assert_eq!(v["merchants"].as_array().unwrap().len(), 3, "{v}");
    // A card issued, customized, reported lost, unlocked, reissued; numbers only ever masked.
    let (st, c) = p
        .post(
            op,
            "/v1/cards",
            json!({"number": "6228480099990001", "holder": "李四", "identity": "1234"}),
        )
        .await;
    assert_eq!(st, 201, "{c}");
    assert_eq!(c["masked_number"], "622848******0001");
    assert_eq!(c["holder"], "李*");
    let id = c["card_id"].as_i64().unwrap();
    let (st, v) = p
        .call(
            Some(op),
            "PUT",
            &format!("/v1/cards/{id}/packages/P9"),
            Some(json!({
                "title": "保养", "valid_from": "2026-01-01", "valid_until": "2027-12-31",
                "scope": {"categories": ["car-wash"]}, "daily_cap": 2, "identity_required": true,
                "items": [{"service_code": "OIL", "title": "换机油", "uses_total": 3, "price_fen": 12000}]
            })),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["packages"][0]["items"][0]["uses_left"], 3);
    assert_eq!(v["packages"][0]["scope"]["categories"][0], "car-wash");
    let (st, v) = p
        .post(
            op,
            &format!("/v1/cards/{id}/status"),
            json!({"action": "report_lost"}),
        )
        .await;
    assert_eq!((st, v["status"].as_str()), (200, Some("lost")), "{v}");
    let (st, v) = p
        .post(
            op,
            &format!("/v1/cards/{id}/status"),
            json!({"action": "report_lost"}),
        )
        .await;
    assert_eq!((st, code(&v)), (409, "bad_transition"), "{v}");
    let (st, _) = p
        .post(
            op,
            &format!("/v1/cards/{id}/status"),
            json!({"action": "unlock"}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, found) = p
        .post(
            op,
            "/v1/cards/search",
            json!({"number": "6228480099990001"}),
        )
        .await;
    assert_eq!((st, found["card_id"].as_i64()), (200, Some(id)));
    let (st, new) = p
        .post(
            op,
            &format!("/v1/cards/{id}/reissue"),
            json!({"to_number": "6228480099990002"}),
        )
        .await;
    assert_eq!(
        (st, new["masked_number"].as_str()),
        (200, Some("622848******0002")),
        "{new}"
    );
    let (_, old) = p.get(op, &format!("/v1/cards/{id}")).await;
    assert_eq!(old["status"], "cancelled");
    assert_eq!(old["reissued_to"]["masked_number"], "622848******0002");
    // Usage, statements, exceptions, the fleet, the catalogue: everything admin prints.
    let (st, u) = p.get(op, &format!("/v1/cards/{}/usage", p.card_a)).await;
    assert_eq!(
        (st, u["records"].as_array().unwrap().len()),
        (200, 3),
        "{u}"
    );
    let (_, s) = p
        .get(
            op,
            "/v1/merchants/M-2/statement?from=2026-01-01&until=2027-01-01",
        )
        .await;
    assert_eq!(
        (s["records"].as_u64(), s["held_records"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    let (_, d) = p
        .get(
            op,
            "/v1/merchants/M-1/statement/daily?from=2026-11-01&until=2026-11-30",
        )
        .await;
    assert_eq!(d["days"].as_array().unwrap().len(), 1, "{d}");
    assert_eq!(d["days"][0]["lines"][0]["net_units"], 2, "{d}");
    let (_, e) = p.get(op, "/v1/exceptions").await;
    assert_eq!(
        e["refused_or_unmapped"][0]["code"], "amount_mismatch",
        "{e}"
    );
    let (_, f) = p.get(op, "/v1/fleet").await;
    assert_eq!(f["terminals"].as_array().unwrap().len(), 2, "{f}");
    assert!(
        f["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "amount_held" && a["terminal_id"] == "T-2"),
        "{f}"
    );
    let (st, _) = p
        .post(op, "/v1/merchants/M-1/terminals/T-1/disable", json!({}))
        .await;
    assert_eq!(st, 200);
    let (_, t) = p.get(op, "/v1/merchants/M-1/terminals/T-1").await;
    assert_eq!(t["enabled"], false);
    let (_, c) = p.get(op, "/v1/catalogue").await;
    assert_eq!(c["offers"][0]["offer_id"], "WASH10");
    let (st, _) = p.post(op, "/v1/catalogue/WASH10/retire", json!({})).await;
    assert_eq!(st, 200);
    let (_, c) = p.get(op, "/v1/catalogue").await;
    assert!(c["offers"].as_array().unwrap().is_empty(), "{c}");
    let (_, c) = p.get(op, "/v1/catalogue?all=true").await;
    assert_eq!(c["offers"][0]["active"], false);
    // Console logins: a password of the rules, never listed.
    let (st, u) = p
        .post(op, "/v1/users", json!({"name": "bob", "role": "merchant", "subject": "M-1", "password": "a long enough secret"}))
        .await;
    assert_eq!(st, 201, "{u}");
    let (_, u) = p.get(op, "/v1/users").await;
    assert!(
        !u.to_string().contains("argon2") && !u.to_string().contains("secret"),
        "{u}"
    );
    let login = |password: &str, source: &str| {
        blocking(|| clearing_server::service::people::login(&p.db, "bob", password, source, T0))
    };
    let principal = login("a long enough secret", "10.0.0.1").unwrap();
    assert_eq!(
        (principal.role, principal.subject.as_str()),
        (Role::Merchant, "M-1")
    );
    // Guessing a password is throttled per address: ten wrong ones, then even the right one waits.
    for _ in 0..10 {
        assert_eq!(
            login("wrong guess 12345", "10.0.0.9").unwrap_err().code,
            "bad_credentials"
        );
    }
    let p429 = login("a long enough secret", "10.0.0.9").unwrap_err();
    assert_eq!((p429.status, p429.code), (429, "rate_limited"));
    assert!(p429.retry_after_secs().is_some());
    assert!(
        login("a long enough secret", "10.0.0.1").is_ok(),
        "another address is not held"
    );
}

async fn a_merchant_sees_and_changes_only_its_own(engine: Engine) {
    let p = start(engine).await;
    let m1 = p.merchant_1.as_str();
    // Its own: the merchant, terminals, statement (its records only), exceptions, pairing codes.
    assert_eq!(p.get(m1, "/v1/merchants/M-1").await.0, 200);
    let (_, t) = p.get(m1, "/v1/merchants/M-1/terminals").await;
    let ids: Vec<&str> = t["terminals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["terminal_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["T-1"]);
    let (_, s) = p.get(m1, "/v1/merchants/M-1/statement").await;
    assert_eq!(
        (s["records"].as_u64(), s["net_amount_fen"].as_i64()),
        (Some(1), Some(7000)),
        "{s}"
    );
    let (_, e) = p.get(m1, "/v1/merchants/M-1/exceptions").await;
    assert!(
        e["refused_or_unmapped"].as_array().unwrap().is_empty(),
        "{e}"
    );
    let (st, c) = p
        .post(m1, "/v1/merchants/M-1/pairing-codes", json!({}))
        .await;
    assert_eq!(st, 201, "{c}");
    assert!(c["terminal_id"].as_str().unwrap().starts_with("T-"));
    // Another merchant's terminal id is not "taken" to a merchant (that would confirm it exists):
    // not found, as its paths are; to an operator it is taken.
    let (st, v) = p
        .post(
            m1,
            "/v1/merchants/M-1/pairing-codes",
            json!({"terminal_id": "T-2"}),
        )
        .await;
    assert_eq!((st, code(&v)), (404, "not_found"), "{v}");
    assert!(!v.to_string().contains("M-2"), "{v}");
    let (st, v) = p
        .post(
            p.operator.as_str(),
            "/v1/merchants/M-1/pairing-codes",
            json!({"terminal_id": "T-2"}),
        )
        .await;
    assert_eq!((st, code(&v)), (409, "terminal_exists"), "{v}");
    // Another merchant's: not found, whatever the path, never forbidden.
    for path in [
        "/v1/merchants/M-2",
        "/v1/merchants/M-2/terminals",
        "/v1/merchants/M-2/terminals/T-2",
        "/v1/merchants/M-1/terminals/T-2",
        "/v1/merchants/M-2/statement",
        "/v1/merchants/M-2/statement/daily?from=2026-11-01&until=2026-11-30",
        "/v1/merchants/M-2/exceptions",
        "/v1/merchants/M-2/pairing-codes",
        "/v1/merchants/M-404",
    ] {
        let (st, v) = p.get(m1, path).await;
        assert_eq!((st, code(&v)), (404, "not_found"), "{path}: {v}");
        assert!(!v.to_string().contains("商户 M-2"), "{v}");
    }
    let (st, _) = p
        .post(m1, "/v1/merchants/M-2/pairing-codes", json!({}))
        .await;
    assert_eq!(st, 404);
    let (st, _) = p
        .post(m1, "/v1/merchants/M-2/terminals/T-2/disable", json!({}))
        .await;
    assert_eq!(st, 404);
    // What no merchant may do: forbidden, and nothing changed.
    for (method, path, body) in [
        (
            "POST",
            "/v1/merchants/M-1/terminals/T-1/disable",
            Some(json!({})),
        ),
        (
            "PUT",
            "/v1/merchants/M-1",
            Some(json!({"name": "x", "commission_bps": 0})),
        ),
        ("GET", "/v1/merchants", None),
        ("GET", "/v1/fleet", None),
        ("GET", "/v1/exceptions", None),
        ("GET", "/v1/audit", None),
        ("GET", "/v1/credentials", None),
        (
            "POST",
            "/v1/cards",
            Some(json!({"number": "6228480099990009"})),
        ),
        ("GET", &format!("/v1/cards/{}", p.card_a), None),
        ("GET", "/v1/catalogue", None),
        ("GET", &format!("/v1/member/cards/{}", p.handle_a), None),
    ] {
        let (st, v) = p.call(Some(m1), method, path, body).await;
        assert_eq!((st, code(&v)), (403, "forbidden"), "{method} {path}: {v}");
    }
    let (_, t) = p.get(&p.operator, "/v1/merchants/M-1/terminals/T-1").await;
    assert_eq!(t["enabled"], true);
    let (_, m) = p.get(&p.operator, "/v1/merchants/M-1").await;
    assert_eq!(m["commission_bps"], 500);
    // The other merchant sees its held record and its own card exceptions only.
    let (_, e) = p.get(&p.merchant_2, "/v1/merchants/M-2/exceptions").await;
    assert_eq!(e["refused_or_unmapped"][0]["terminal_id"], "T-2", "{e}");
    assert!(!e.to_string().contains("T-1"), "{e}");
}

async fn the_member_app_acts_only_on_cards_it_was_given(engine: Engine) {
    let p = start(engine).await;
    let app = p.app.as_str();
    let a = format!("/v1/member/cards/{}", p.handle_a);
    // Its card: packages and uses left (what every shop redeemed), usage with shop and time.
    let (st, c) = p.get(app, &a).await;
    assert_eq!(st, 200, "{c}");
    assert!(c.get("card_id").is_none(), "{c}");
    assert_eq!(c["masked_number"], "622848******5678");
    assert_eq!(c["packages"][0]["items"][0]["uses_left"], 6, "{c}");
    let (_, u) = p.get(app, &format!("{a}/usage")).await;
    assert_eq!(u["records"].as_array().unwrap().len(), 3, "{u}");
    assert!(u.get("card_id").is_none());
    // Customize from the catalogue: once while usable, again after it is used up.
    let (st, c) = p
        .post(app, &format!("{a}/packages"), json!({"offer_id": "WASH10"}))
        .await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["packages"][1]["package_id"], "WASH10");
    let (st, v) = p
        .post(app, &format!("{a}/packages"), json!({"offer_id": "WASH10"}))
        .await;
    assert_eq!((st, code(&v)), (409, "package_still_usable"), "{v}");
    let (st, v) = p
        .post(app, &format!("{a}/packages"), json!({"offer_id": "NOPE"}))
        .await;
    assert_eq!(st, 404, "{v}");
    // Report lost: on the deny list every shop fetches at its next pass.
    let (st, c) = p.post(app, &format!("{a}/report-lost"), json!({})).await;
    assert_eq!((st, c["status"].as_str()), (200, Some("lost")), "{c}");
    let (st, deny) = p
        .signed(
            &p.t1,
            "GET",
            "/v1/terminals/T-1/deny-list?since=0",
            Vec::new(),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(deny["entries"][0]["status"], "lost", "{deny}");
    let (st, v) = p
        .post(app, &format!("{a}/packages"), json!({"offer_id": "WASH10"}))
        .await;
    assert_eq!((st, code(&v)), (409, "card_not_active"), "{v}");
    // Not given to it: another app's card, a made-up handle, the same handle under another app's key.
    for handle in [
        p.handle_b.as_str(),
        "mc_00000000000000000000000000000000",
        "1",
    ] {
        for path in [
            format!("/v1/member/cards/{handle}"),
            format!("/v1/member/cards/{handle}/usage"),
        ] {
            let (st, v) = p.get(app, &path).await;
            assert_eq!((st, code(&v)), (404, "not_found"), "{path}: {v}");
        }
        let (st, _) = p
            .post(
                app,
                &format!("/v1/member/cards/{handle}/report-lost"),
                json!({}),
            )
            .await;
        assert_eq!(st, 404);
    }
    let (st, _) = p.get(&p.other_app, &a).await;
    assert_eq!(st, 404);
    let (_, b) = p.get(&p.operator, "/v1/cards/2").await;
    assert_eq!(
        b["status"], "active",
        "another app's card was not touched: {b}"
    );
    // Nothing of the operator's or merchants' API.
    for path in ["/v1/cards/1", "/v1/merchants/M-1", "/v1/fleet", "/v1/audit"] {
        assert_eq!(p.get(app, path).await.0, 403, "{path}");
    }
    assert_eq!(p.get(app, "/v1/catalogue").await.0, 200);
    // An operator's key does not act as the member app.
    assert_eq!(p.get(&p.operator, &a).await.0, 403);
    // A grant taken back: its handle stops working.
    let (st, _) = p
        .call(
            Some(&p.operator),
            "DELETE",
            &format!("/v1/cards/{}/grants/app", p.card_a),
            None,
        )
        .await;
    assert_eq!(st, 204);
    assert_eq!(p.get(app, &a).await.0, 404);
}

async fn keys_are_stored_hashed_revocable_and_every_change_is_audited(engine: Engine) {
    let p = start(engine).await;
    let op = p.operator.as_str();
    let (st, issued) = p
        .post(
            op,
            "/v1/credentials",
            json!({"role": "merchant", "subject": "M-1", "label": "back office"}),
        )
        .await;
    assert_eq!(st, 201, "{issued}");
    let token = issued["token"].as_str().unwrap().to_owned();
    let id = issued["credential"]["id"].as_str().unwrap().to_owned();
    assert_eq!(p.get(&token, "/v1/merchants/M-1").await.0, 200);
    // Listed without any secret; the database holds no token, only a hash.
    let (_, list) = p.get(op, "/v1/credentials").await;
    assert!(!list.to_string().contains(&token[20..]), "{list}");
    assert!(list.to_string().contains(&id));
    let secret = token.rsplit('_').next().unwrap().to_owned();
    if engine == Engine::Sqlite {
        drop(blocking(|| p.db.read(|tx| tx.query("PRAGMA wal_checkpoint(FULL)", &[]))).unwrap());
    }
    for file in database_files(engine, p.dir.path()) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} holds an API key's secret",
            file.display()
        );
    }
    // A pairing code the key made, and one an operator made for the same merchant.
    let make_code = async |who: &str, terminal: &str| {
        let (st, c) = p
            .post(
                who,
                "/v1/merchants/M-1/pairing-codes",
                json!({"terminal_id": terminal}),
            )
            .await;
        assert_eq!(st, 201, "{c}");
        c["code"].as_str().unwrap().to_owned()
    };
    let keys_code = make_code(&token, "T-77").await;
    let operators_code = make_code(op, "T-78").await;
    // Revoked: refused from the next request on, like a wrong or made-up key.
    let (st, _) = p
        .call(Some(op), "DELETE", &format!("/v1/credentials/{id}"), None)
        .await;
    assert_eq!(st, 204);
    // The codes it handed out and nobody used end with it; others' codes still work.
    let enroll = |code: String| p.call(None, "POST", "/v1/enroll", Some(json!({"code": code})));
    let (st, v) = enroll(keys_code).await;
    assert_eq!((st, code(&v)), (410, "pairing_code_expired"), "{v}");
    let (st, v) = enroll(operators_code).await;
    assert_eq!((st, v["terminal_id"].as_str()), (200, Some("T-78")), "{v}");
    for bad in [
        token.as_str(),
        "rdk_0000000000000000_0000000000000000000000000000000000000000000000000000000000000000",
        "nonsense",
    ] {
        let (st, v) = p.get(bad, "/v1/merchants/M-1").await;
        assert_eq!((st, code(&v)), (401, "bad_credentials"), "{v}");
    }
    let (st, v) = p.call(None, "GET", "/v1/merchants/M-1", None).await;
    assert_eq!((st, code(&v)), (401, "auth_missing"));
    // Who did what and when: the setup's CLI changes, the key made and revoked by operator alice.
    let (_, log) = p.get(op, "/v1/audit?limit=1000").await;
    let entries = log["entries"].as_array().unwrap();
    let actions: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    // Newest first: the shop PC's enrolment, the revocation, the two codes, the key made.
    let newest: Vec<&str> = actions.iter().take(5).map(|(a, _)| *a).collect();
    assert_eq!(
        newest,
        [
            "terminal.pair",
            "credential.revoke",
            "pairing_code.create",
            "pairing_code.create",
            "credential.create"
        ],
        "{actions:?}"
    );
    assert!(
        actions[1].1.starts_with("operator alice (key k_"),
        "{actions:?}"
    );
    assert_eq!(
        entries[1]["detail"], "1 unused pairing code(s) it made ended",
        "{}",
        entries[1]
    );
    for want in [
        "merchant.create",
        "terminal.enroll",
        "card.create",
        "card.customize",
        "card.grant",
        "offer.create",
    ] {
        assert!(
            actions
                .iter()
                .any(|(a, who)| *a == want && who.starts_with("operator admin (admin CLI")),
            "{want} not in {actions:?}"
        );
    }
    assert!(entries.iter().all(|e| e["at_ms"].as_i64().unwrap() >= T0));
    assert!(
        !log.to_string().contains(&secret) && !log.to_string().contains(CARD_A),
        "{log}"
    );
    // A member app's and a merchant's key cannot read it.
    assert_eq!(p.get(&p.app, "/v1/audit").await.0, 403);
    assert_eq!(p.get(&p.merchant_2, "/v1/audit").await.0, 403);
}

async fn every_refused_field_is_named_and_nothing_is_echoed_unescaped(engine: Engine) {
    let p = start(engine).await;
    let op = p.operator.as_str();
    let put = |path: &'static str, body: Value| p.call(Some(op), "PUT", path, Some(body));
    let cases: Vec<(u16, &str, Value, &str)> = vec![
        (
            422,
            "commission_bps",
            json!({"name": "x", "commission_bps": 20000}),
            "/v1/merchants/M-9",
        ),
        (
            400,
            "commission_bps",
            json!({"name": "x", "commission_bps": "five"}),
            "/v1/merchants/M-9",
        ),
        (
            400,
            "commission_bps",
            json!({"name": "x"}),
            "/v1/merchants/M-9",
        ),
        (
            400,
            "colour",
            json!({"name": "x", "commission_bps": 1, "colour": 1}),
            "/v1/merchants/M-9",
        ),
        (
            422,
            "name",
            json!({"name": "  ", "commission_bps": 1}),
            "/v1/merchants/M-9",
        ),
        (
            422,
            "categories[1]",
            json!({"name": "x", "commission_bps": 1, "categories": ["a", "b c"]}),
            "/v1/merchants/M-9",
        ),
    ];
    for (status, field, body, path) in cases {
        let (st, v) = put(path, body).await;
        assert_eq!((st, v["field"].as_str()), (status, Some(field)), "{v}");
        assert!(v["detail"].as_str().unwrap().starts_with(field), "{v}");
    }
    let pkg = |items: Value| json!({"title": "t", "valid_from": "2026-01-01", "valid_until": "2027-01-01", "items": items});
    let path = format!("/v1/cards/{}/packages/P2", p.card_a);
    for (body, field) in [
        (
            pkg(
                json!([{"service_code": "A", "title": "a", "uses_total": 1, "price_fen": 1},
                    {"service_code": "B", "title": "b", "uses_total": 0, "price_fen": 1}]),
            ),
            "items[1].uses_total",
        ),
        (
            pkg(json!([{"service_code": "A", "title": "a", "uses_total": 1, "price_fen": -1}])),
            "items[0].price_fen",
        ),
        (pkg(json!([])), "items"),
        (
            json!({"title": "t", "valid_from": "soon", "valid_until": "2027-01-01", "items": []}),
            "valid_from",
        ),
        (
            json!({"title": "t", "valid_from": "2026-01-01", "valid_until": "2027-01-01",
                "scope": {"merchants": ["M-1"], "categories": ["x"]},
                "items": [{"service_code": "A", "title": "a", "uses_total": 1, "price_fen": 1}]}),
            "scope",
        ),
    ] {
        let (st, v) = p.call(Some(op), "PUT", &path, Some(body)).await;
        assert!(matches!(st, 400 | 422), "{v}");
        assert_eq!(v["field"].as_str(), Some(field), "{v}");
    }
    let (st, v) = p.post(op, "/v1/cards", json!({"number": "1234"})).await;
    assert_eq!((st, v["field"].as_str()), (422, Some("number")), "{v}");
    let (st, v) = p
        .post(
            op,
            "/v1/cards/search",
            json!({"number": "6228480000000001"}),
        )
        .await;
    assert_eq!(st, 404, "{v}");
    assert!(
        !v.to_string().contains("6228480000000001"),
        "a typed number is never echoed: {v}"
    );
    let (st, _) = p.call(Some(op), "GET", "/v1/cards/abc", None).await;
    assert_eq!(st, 404);
    // A holder and a merchant name with markup and characters only GB18030 (not GBK) encodes: kept
    // as they are, and sent as JSON data (application/json), never as markup.
    let name = "<script>alert(1)</script>𠀀䶵";
    let (st, m) = p
        .call(
            Some(op),
            "PUT",
            "/v1/merchants/M-X",
            Some(json!({"name": name, "commission_bps": 0})),
        )
        .await;
    assert_eq!((st, m["name"].as_str()), (200, Some(name)), "{m}");
    let (st, c) = p
        .post(
            op,
            "/v1/cards",
            json!({"number": "6228480099990005", "holder": name}),
        )
        .await;
    let masked = format!("<{}", "*".repeat(name.chars().count() - 1));
    assert_eq!(
        (st, c["holder"].as_str()),
        (201, Some(masked.as_str())),
        "{c}"
    );
    let (st, v) = p
        .call(
            Some(op),
            "PUT",
            "/v1/merchants/a%3Cb%3E",
            Some(json!({"name": "x", "commission_bps": 0})),
        )
        .await;
    // Markup in an id: refused (ids are what a terminal can be configured with), named as data.
    assert_eq!((st, v["field"].as_str()), (422, Some("merchant_id")), "{v}");
    let (_, log) = p.get(op, "/v1/audit").await;
    assert!(log.to_string().contains("merchant M-X"));
    // Bodies that are not JSON, too big, or another media type.
    let resp = p
        .http
        .put(format!("{}/v1/merchants/M-9", p.base))
        .bearer_auth(op)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    let (st, v) = p
        .call(
            Some(op),
            "POST",
            "/v1/cards",
            Some(json!("x".repeat(2 << 20))),
        )
        .await;
    assert_eq!((st, code(&v)), (413, "body_too_large"));
}

async fn a_pairing_code_works_once_expires_and_is_throttled(engine: Engine) {
    let p = start(engine).await;
    let op = p.operator.as_str();
    let (st, c) = p
        .post(
            op,
            "/v1/merchants/M-1/pairing-codes",
            json!({"terminal_id": "T-9", "ttl_minutes": 5}),
        )
        .await;
    assert_eq!(st, 201, "{c}");
    let code_text = c["code"].as_str().unwrap().to_owned();
    assert!(
        code_text.len() == 9 && code_text.as_bytes()[4] == b'-',
        "{code_text}"
    );
    // Listed without the code.
    let (_, list) = p.get(op, "/v1/merchants/M-1/pairing-codes").await;
    assert_eq!(list["pairing_codes"][0]["terminal_id"], "T-9");
    assert!(!list.to_string().contains(&code_text[..4]), "{list}");
    let enroll = |code: String| p.call(None, "POST", "/v1/enroll", Some(json!({"code": code})));
    // Typed loosely, it works once: the terminal is enrolled with a fresh secret that signs.
    let (st, e) = enroll(code_text.to_lowercase().replace('-', "")).await;
    assert_eq!(st, 200, "{e}");
    assert_eq!(
        (e["terminal_id"].as_str(), e["merchant_id"].as_str()),
        (Some("T-9"), Some("M-1"))
    );
    let secret = TerminalSecret::from_hex_text(e["secret"].as_str().unwrap()).unwrap();
    let keys = secret.derive_all("T-9");
    let (st, head) = p
        .signed(&keys, "GET", "/v1/terminals/T-9/journal/head", Vec::new())
        .await;
    assert_eq!(st, 200, "{head}");
    let (st, v) = enroll(code_text.clone()).await;
    assert_eq!((st, code(&v)), (410, "pairing_code_used"), "{v}");
    assert!(
        v["detail"].as_str().unwrap().contains("already used"),
        "{v}"
    );
    // The secret is in that one answer only: not in listings, the audit log or the database.
    let (_, fleet) = p.get(op, "/v1/fleet").await;
    let (_, log) = p.get(op, "/v1/audit").await;
    let hex = e["secret"].as_str().unwrap();
    assert!(!fleet.to_string().contains(hex) && !log.to_string().contains(hex));
    assert!(!log.to_string().contains(&code_text), "{log}");
    // A code that expired, and a code for a terminal that uploaded records.
    let (_, late) = p
        .post(
            op,
            "/v1/merchants/M-1/pairing-codes",
            json!({"ttl_minutes": 1}),
        )
        .await;
    p.clock.fetch_add(61_000, Ordering::SeqCst);
    let (st, v) = enroll(late["code"].as_str().unwrap().to_owned()).await;
    assert_eq!((st, code(&v)), (410, "pairing_code_expired"), "{v}");
    let (st, v) = p
        .post(
            op,
            "/v1/merchants/M-1/pairing-codes",
            json!({"terminal_id": "T-1"}),
        )
        .await;
    assert_eq!((st, code(&v)), (409, "terminal_exists"), "{v}");
    let (st, v) = p
        .post(
            op,
            "/v1/merchants/M-1/pairing-codes",
            json!({"ttl_minutes": 61}),
        )
        .await;
    assert_eq!((st, v["field"].as_str()), (422, Some("ttl_minutes")), "{v}");
    let (st, v) = enroll("ABCD-EFG?".into()).await;
    assert_eq!((st, v["field"].as_str()), (422, Some("code")), "{v}");
    // Guessing: ten wrong codes from one address, then every attempt is refused for a while — the
    // right code too — with Retry-After.
    let (_, good) = p
        .post(op, "/v1/merchants/M-1/pairing-codes", json!({}))
        .await;
    for n in 0..10 {
        let (st, v) = enroll(format!("ZZZZ-ZZ{n:02}")).await;
        assert_eq!((st, code(&v)), (404, "pairing_code_unknown"), "{v}");
    }
    let resp = p
        .http
        .post(format!("{}/v1/enroll", p.base))
        .header("content-type", "application/json")
        .body(json!({"code": good["code"]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let wait: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=600).contains(&wait), "{wait}");
    // The window passes: the right code works.
    p.clock.fetch_add(600_000, Ordering::SeqCst);
    let (_, fresh) = p
        .post(op, "/v1/merchants/M-1/pairing-codes", json!({}))
        .await;
    assert_eq!(
        enroll(fresh["code"].as_str().unwrap().to_owned()).await.0,
        200
    );
}

async fn a_terminals_health_report_is_kept_and_judged_into_alerts(engine: Engine) {
    let p = start(engine).await;
    let now = p.clock.load(Ordering::SeqCst);
    let report = |reported_at_ms: i64, state: &str| {
        json!({
            "daemon_version": "0.1.0", "started_at_ms": now - 600_000, "reported_at_ms": reported_at_ms,
            "sync_interval_secs": 60,
            "readers": [{"name": "counter-1", "state": state, "detail": "No such file or directory",
                         "reader_serial": "SIM-0001", "firmware": "sim-1.0", "last_transaction_at_ms": null}],
            "cache": {"version": 7, "installed_at_ms": now - 3_600_000, "expires_at_ms": now + 3_600_000},
            "journal": {"head_seq": 12, "unsynced": 2, "oldest_unsynced_at_ms": now - 60_000},
            "halted": "journal diverged at seq 4",
            "last_close": {"business_date": "2026-11-27", "result": "mismatched"}
        })
        .to_string()
        .into_bytes()
    };
    let path = "/v1/terminals/T-1/health";
    let (st, v) = p
        .signed(&p.t1, "POST", path, report(now - 1000, "port_error"))
        .await;
    assert_eq!(st, 204, "{v}");
    // An older report of the same daemon (another server answered it late) does not replace it.
    let (st, _) = p
        .signed(&p.t1, "POST", path, report(now - 5000, "link_up"))
        .await;
    assert_eq!(st, 204);
    let (_, t) = p.get(&p.operator, "/v1/merchants/M-1/terminals/T-1").await;
    assert_eq!(t["health"]["readers"][0]["state"], "port_error", "{t}");
    let kinds: Vec<&str> = t["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "reader_down",
            "cache_expiring",
            "uploads_halted",
            "close_mismatched"
        ],
        "{t}"
    );
    // The merchant sees its terminal's health; T-2 never reported and is silent only after its
    // enrolment grows older than three default intervals.
    let (_, mine) = p.get(&p.merchant_1, "/v1/merchants/M-1/terminals").await;
    assert_eq!(mine["terminals"][0]["health"]["daemon_version"], "0.1.0");
    let (_, f) = p.get(&p.operator, "/v1/fleet").await;
    assert!(
        f["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "silent" && a["terminal_id"] == "T-2"),
        "{f}"
    );
    // Out of bounds, unknown fields, another terminal's path: refused, nothing kept.
    let mut big: Value = serde_json::from_slice(&report(now, "link_up")).unwrap();
    big["journal"]["unsynced"] = json!(u64::MAX);
    let (st, v) = p
        .signed(&p.t1, "POST", path, big.to_string().into_bytes())
        .await;
    assert_eq!(
        (st, v["field"].as_str()),
        (422, Some("journal.unsynced")),
        "{v}"
    );
    let (st, v) = p
        .signed(
            &p.t1,
            "POST",
            path,
            br#"{"daemon_version":"x","extra":1}"#.to_vec(),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    let (st, _) = p.signed(&p.t2, "POST", path, report(now, "link_up")).await;
    assert_eq!(st, 403);
    let (_, t) = p.get(&p.operator, "/v1/merchants/M-1/terminals/T-1").await;
    assert_eq!(t["health"]["readers"][0]["state"], "port_error");
}
