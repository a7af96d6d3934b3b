//! `docs/api/README.md` checked against the code, so that its numbers cannot drift: every worked
//! example of a key and a MAC (inputs and outputs in hex) is recomputed here twice — with textbook
//! HKDF-SHA256 and HMAC-SHA256 over the documented input bytes, and with the contract's own functions —
//! and the document must hold the block exactly as computed; the clearing arithmetic it states
//! (commission rounding, close counts, the business day) is recomputed with the server's rules; and
//! every limit the server enforces appears in its limits table.
//!
//! When a block is missing or differs, the failure prints every block as it should read: paste it in.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use hmac::{Hmac, KeyInit, Mac};
use redeemd_contract::journal::{auth_code, genesis_mac};
use redeemd_contract::keys::TerminalSecret;
use redeemd_contract::model::{
    Card, CardNumber, CardStatus, Holder, Item, MerchantScope, Package, identity_verifier,
};
use redeemd_contract::request::{RequestParts, SignedHeaders};
use redeemd_contract::snapshot::{BundleKind, EntryOp, Manifest, entry_mac};
use redeemd_contract::{CardRef, DenyEntry, JournalRecord, RecordKind};
use sha2::{Digest, Sha256};

const DOC: &str = include_str!("../../docs/api/README.md");
const TERMINAL: &str = "T-1";
const MERCHANT: &str = "M-1";
const NUMBER: &str = "6228480012345678";
const T: i64 = 1_795_000_000_000;

fn secret_bytes() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}

fn hkdf(info: &str, len: usize) -> Vec<u8> {
    let mut okm = vec![0u8; len];
    hkdf::Hkdf::<Sha256>::new(Some(b"redeemd/v1/terminal"), &secret_bytes())
        .expand(info.as_bytes(), &mut okm)
        .unwrap();
    okm
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// `label` in a 16-column field, then the bytes in hex, 32 bytes a line, later lines indented.
fn hex_line(label: &str, bytes: &[u8]) -> String {
    let hex = hex::encode(bytes);
    let mut out = String::new();
    for (i, chunk) in hex.as_bytes().chunks(64).enumerate() {
        let lead = if i == 0 {
            format!("{label:<16}")
        } else {
            " ".repeat(16)
        };
        out.push_str(&lead);
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    if hex.is_empty() {
        out.push_str(&format!("{label:<16}(none)\n"));
    }
    out
}

fn text_line(label: &str, text: &str) -> String {
    format!("{label:<16}{text}\n")
}

fn block(title: &str, body: &str) -> String {
    format!("```text\n-- worked example: {title}\n{body}```\n")
}

fn keys() -> redeemd_contract::keys::TerminalKeys {
    TerminalSecret::from_bytes(&secret_bytes())
        .unwrap()
        .derive_all(TERMINAL)
}

fn card_ref() -> CardRef {
    CardNumber::parse(NUMBER)
        .unwrap()
        .card_ref(&keys().card_token)
}

fn key_block() -> String {
    let mut b = hex_line("secret", &secret_bytes());
    b += &text_line("salt", "\"redeemd/v1/terminal\" (19 bytes, ASCII)");
    for (name, purpose, len) in [
        ("request key", "request-sign", 32),
        ("journal key", "journal-mac", 32),
        ("cache key", "cache-verify", 32),
        ("identity key", "identity", 32),
        ("card-token key", "card-ref-siv", 64),
    ] {
        let info = format!("redeemd/v1/{purpose}/{TERMINAL}");
        b += &text_line(
            name,
            &format!("HKDF-SHA256(salt, secret, info \"{info}\", L = {len})"),
        );
        b += &hex_line("  =", &hkdf(&info, len));
    }
    // The contract's keys are these: a MAC under each equals textbook HMAC under the bytes above.
    let k = keys();
    for (key, purpose) in [
        (&k.request, "request-sign"),
        (&k.journal, "journal-mac"),
        (&k.cache, "cache-verify"),
        (&k.identity, "identity"),
    ] {
        let okm = hkdf(&format!("redeemd/v1/{purpose}/{TERMINAL}"), 32);
        assert_eq!(key.mac(&[b"probe"]), hmac(&okm, b"probe"), "{purpose}");
    }
    assert_eq!(
        k.card_token.check_value(b"probe"),
        hmac(&hkdf("redeemd/v1/card-ref-siv/T-1", 64), b"probe")
    );
    block("the keys of terminal T-1", &b)
}

fn request_block() -> String {
    let body = br#"{"from_seq":1,"records":[]}"#;
    let path = "/v1/terminals/T-1/journal";
    let nonce: [u8; 16] = std::array::from_fn(|i| 0xa0 + i as u8);
    let signed = SignedHeaders::sign(&keys().request, TERMINAL, "POST", path, T, nonce, body);
    let body_sha256: [u8; 32] = Sha256::digest(body).into();
    let canonical = RequestParts {
        method: "POST",
        path_and_query: path,
        terminal_id: TERMINAL,
        timestamp_ms: T,
        nonce: &signed.nonce,
        body_sha256,
    }
    .canonical();
    // The canonical bytes by hand: raw domain tag, then u32-length-prefixed strings, i64 big-endian.
    let mut by_hand = b"redeemd/request/v1".to_vec();
    for s in ["POST", path, TERMINAL] {
        by_hand.extend_from_slice(&(s.len() as u32).to_be_bytes());
        by_hand.extend_from_slice(s.as_bytes());
    }
    by_hand.extend_from_slice(&T.to_be_bytes());
    by_hand.extend_from_slice(&32u32.to_be_bytes());
    by_hand.extend_from_slice(signed.nonce.as_bytes());
    by_hand.extend_from_slice(&body_sha256);
    assert_eq!(canonical, by_hand);
    let signature = hmac(&hkdf("redeemd/v1/request-sign/T-1", 32), &canonical);
    assert_eq!(signed.signature, hex::encode(signature));
    let mut b = text_line("method", "POST");
    b += &text_line("path_and_query", path);
    b += &text_line("terminal_id", TERMINAL);
    b += &text_line("timestamp_ms", &T.to_string());
    b += &text_line("nonce", &signed.nonce);
    b += &text_line("body", std::str::from_utf8(body).unwrap());
    b += &hex_line("body_sha256", &body_sha256);
    b += &hex_line("canonical", &canonical);
    b += &hex_line("signature", &signature);
    block(
        "request signature (HMAC-SHA256 under the request key above)",
        &b,
    )
}

fn record() -> JournalRecord {
    let k = keys();
    JournalRecord {
        terminal_id: TERMINAL.into(),
        seq: 1,
        kind: RecordKind::Redeem,
        auth_code: auth_code(&k.journal, TERMINAL, 1),
        merchant_id: MERCHANT.into(),
        card_ref: card_ref(),
        package_id: "P1".into(),
        service_code: "WASH".into(),
        item_title: "Wash".into(),
        quantity: 2,
        amount_fen: 7000,
        original_seq: 0,
        group_seq: 1,
        line: 0,
        line_count: 1,
        reader_id: "counter-1".into(),
        reader_txn_id: 1,
        cashier_id: "c1".into(),
        wall_ms: T,
        boot_ms: 1000,
        cache_version: 7,
        entry_version: 7,
        prev_mac: genesis_mac(&k.journal, TERMINAL),
    }
}

fn journal_block() -> String {
    let journal_key = hkdf("redeemd/v1/journal-mac/T-1", 32);
    let genesis_input = [&b"redeemd/journal/genesis/v1"[..], TERMINAL.as_bytes()].concat();
    let genesis = hmac(&journal_key, &genesis_input);
    assert_eq!(genesis, genesis_mac(&keys().journal, TERMINAL));
    let r = record();
    let encoded = r.encode();
    let mac = hmac(
        &journal_key,
        &[&b"redeemd/journal/v1"[..], &encoded].concat(),
    );
    assert_eq!(mac, r.mac(&keys().journal));
    let mut b = text_line(
        "genesis input",
        "\"redeemd/journal/genesis/v1\" ‖ \"T-1\" (raw bytes, no length prefix)",
    );
    b += &hex_line("  =", &genesis_input);
    b += &hex_line("genesis MAC", &genesis);
    b += &text_line(
        "record 1",
        &format!(
            "redeem, auth_code {}, M-1, the card reference below, P1, WASH, \"Wash\",",
            r.auth_code
        ),
    );
    b += &text_line(
        "",
        "quantity 2, amount_fen 7000, original_seq 0, group_seq 1, line 0 of 1, reader",
    );
    b += &text_line(
        "",
        "\"counter-1\" txn 1, cashier \"c1\", wall_ms 1795000000000, boot_ms 1000,",
    );
    b += &text_line(
        "",
        "cache_version 7, entry_version 7, prev_mac = the genesis MAC",
    );
    b += &hex_line("encode(record)", &encoded);
    b += &text_line(
        "MAC input",
        "\"redeemd/journal/v1\" ‖ encode(record) (the tag raw, no length prefix)",
    );
    b += &hex_line("record MAC", &mac);
    block(
        "journal chain (HMAC-SHA256 under the journal key above)",
        &b,
    )
}

fn card_ref_block() -> String {
    let n = CardNumber::parse(NUMBER).unwrap();
    let mut plain = [0u8; 16];
    plain[0] = NUMBER.len() as u8;
    plain[1..9].copy_from_slice(&NUMBER.parse::<u64>().unwrap().to_be_bytes());
    let r = card_ref();
    assert_eq!(keys().card_token.reveal(&r).unwrap(), n);
    let mut b = text_line("card number", NUMBER);
    b += &text_line(
        "block",
        "u8 digit count ‖ u64 value big-endian ‖ 7 zero bytes (16 bytes)",
    );
    b += &hex_line("  =", &plain);
    b += &text_line(
        "AD",
        "one associated-data string: \"redeemd/card-ref/v2\" (raw)",
    );
    b += &text_line(
        "card_ref",
        "AES-256-SIV (RFC 5297) under the card-token key: SIV ‖ ciphertext",
    );
    b += &hex_line("  =", &r.0);
    block(
        "card reference (AES-256-SIV under the card-token key above)",
        &b,
    )
}

fn auth_code_block() -> String {
    let input = [
        &b"redeemd/auth/v1"[..],
        TERMINAL.as_bytes(),
        &42u64.to_be_bytes(),
    ]
    .concat();
    let tag = hmac(&hkdf("redeemd/v1/journal-mac/T-1", 32), &input);
    let check = u16::from_be_bytes([tag[0], tag[1]]) % 100;
    let code = auth_code(&keys().journal, TERMINAL, 42);
    assert_eq!(code, format!("{:06}{check:02}", 42));
    let mut b = text_line("group_seq", "42");
    b += &text_line(
        "input",
        "\"redeemd/auth/v1\" ‖ \"T-1\" ‖ u64 group_seq big-endian (raw, no length prefixes)",
    );
    b += &hex_line("  =", &input);
    b += &hex_line("HMAC", &tag);
    b += &text_line(
        "check digits",
        &format!(
            "u16 of the first two bytes, big-endian ({}) mod 100 = {check:02}",
            u16::from_be_bytes([tag[0], tag[1]])
        ),
    );
    b += &text_line(
        "auth_code",
        &format!("group_seq in decimal, at least 6 digits, then the check digits = {code}"),
    );
    block(
        "authorization code (HMAC-SHA256 under the journal key above)",
        &b,
    )
}

fn identity_block() -> String {
    let r = card_ref();
    let input = [&b"redeemd/identity/v1"[..], &r.0, b"1234"].concat();
    let v = hmac(&hkdf("redeemd/v1/identity/T-1", 32), &input);
    assert_eq!(v, identity_verifier(&keys().identity, &r, b"1234"));
    let mut b = text_line("identity data", "\"1234\" (a phone number's last four)");
    b += &text_line(
        "input",
        "\"redeemd/identity/v1\" ‖ card_ref ‖ identity data (raw)",
    );
    b += &hex_line("  =", &input);
    b += &hex_line("verifier", &v);
    block(
        "identity verifier (HMAC-SHA256 under the identity key above)",
        &b,
    )
}

fn deny_block() -> String {
    let e = DenyEntry {
        version: 17,
        card_ref: card_ref(),
        status: redeemd_contract::deny::DenyStatus::Lost,
        entry_version: 43,
        reported_at_ms: T,
    };
    let mut input = b"redeemd/deny/v2".to_vec();
    input.extend_from_slice(&(MERCHANT.len() as u32).to_be_bytes());
    input.extend_from_slice(MERCHANT.as_bytes());
    input.extend_from_slice(&17u64.to_be_bytes());
    input.extend_from_slice(&e.card_ref.0);
    input.push(2);
    input.extend_from_slice(&43u64.to_be_bytes());
    input.extend_from_slice(&T.to_be_bytes());
    let mac = hmac(&hkdf("redeemd/v1/cache-verify/T-1", 32), &input);
    assert_eq!(mac, e.mac(&keys().cache, MERCHANT));
    let mut b = text_line(
        "entry",
        "merchant M-1, version 17, the card reference above, lost (2), entry_version 43,",
    );
    b += &text_line("", "reported_at_ms 1795000000000");
    b += &hex_line("MAC input", &input);
    b += &hex_line("deny_mac", &mac);
    block("deny entry (HMAC-SHA256 under the cache key above)", &b)
}

fn bundle_block() -> String {
    let card = Card {
        masked_number: "622848******5678".into(),
        status: CardStatus::Active,
        holder: Some(Holder {
            masked_name: "Z*".into(),
            identity_verifier: None,
        }),
        usage_through_seq: 1,
        packages: vec![Package {
            id: "P1".into(),
            title: "Wash".into(),
            items: vec![Item {
                service_code: "WASH".into(),
                title: "Wash".into(),
                uses_total: 10,
                uses_left: 8,
                price_fen: 3500,
            }],
            valid_from_ms: T,
            valid_until_ms: T + 86_400_000,
            scope: MerchantScope::All,
            daily_cap: None,
            identity_required: false,
        }],
    };
    let body = card.encode();
    let r = card_ref();
    let cache_key = hkdf("redeemd/v1/cache-verify/T-1", 32);
    let mut input = b"redeemd/entry/v2".to_vec();
    input.extend_from_slice(&(MERCHANT.len() as u32).to_be_bytes());
    input.extend_from_slice(MERCHANT.as_bytes());
    input.extend_from_slice(&9u64.to_be_bytes());
    input.extend_from_slice(&r.0);
    input.push(EntryOp::Upsert as u8);
    input.extend_from_slice(&(body.len() as u32).to_be_bytes());
    input.extend_from_slice(&body);
    let mac = hmac(&cache_key, &input);
    assert_eq!(
        mac,
        entry_mac(&keys().cache, MERCHANT, 9, &r, EntryOp::Upsert, &body)
    );
    let frame = [&[2u8, EntryOp::Upsert as u8][..], &r.0, &body, &mac].concat();
    let manifest = Manifest {
        kind: BundleKind::Full,
        terminal_id: TERMINAL.into(),
        merchant_id: MERCHANT.into(),
        merchant_categories: vec![],
        version: 9,
        prev_version: 0,
        entry_count: 1,
        digest: Sha256::digest(&frame).into(),
        issued_at_ms: T,
        expires_at_ms: T + 72 * 3_600_000,
    };
    let manifest_body = manifest.encode_body();
    let manifest_mac = hmac(
        &cache_key,
        &[&b"redeemd/manifest/v1"[..], &manifest_body].concat(),
    );
    assert_eq!(manifest_mac, manifest.mac(&keys().cache));
    let mut b = text_line(
        "card body",
        "a named card (\"Z*\", no identity data), active, usage_through_seq 1, package P1",
    );
    b += &text_line(
        "",
        "\"Wash\" valid for a day from 1795000000000, all merchants, no cap, one item WASH",
    );
    b += &text_line("", "\"Wash\" 10 uses, 8 left, 3500 fen");
    b += &hex_line("  =", &body);
    b += &text_line(
        "entry MAC input",
        "\"redeemd/entry/v2\" ‖ str M-1 ‖ u64 version 9 ‖ card_ref ‖ u8 op 1 (upsert)",
    );
    b += &text_line("", "‖ u32 len(body) ‖ body");
    b += &hex_line("  =", &input);
    b += &hex_line("entry MAC", &mac);
    b += &text_line(
        "entry frame",
        "0x02 ‖ op ‖ card_ref ‖ body ‖ entry MAC; digest = SHA-256 of the entry frames",
    );
    b += &text_line(
        "manifest",
        "full, T-1, M-1, no categories, version 9, prev 0, 1 entry, the digest,",
    );
    b += &text_line(
        "",
        "issued 1795000000000, expires 72 h later (1795259200000)",
    );
    b += &hex_line("  =", &manifest_body);
    b += &text_line(
        "manifest MAC",
        "HMAC(cache key, \"redeemd/manifest/v1\" ‖ manifest)",
    );
    b += &hex_line("  =", &manifest_mac);
    block(
        "bundle entry and manifest (HMAC-SHA256 under the cache key above)",
        &b,
    )
}

#[test]
fn every_worked_example_in_the_api_document_is_what_the_code_computes() {
    let blocks = [
        key_block(),
        request_block(),
        journal_block(),
        card_ref_block(),
        auth_code_block(),
        identity_block(),
        deny_block(),
        bundle_block(),
    ];
    let missing: Vec<&String> = blocks
        .iter()
        .filter(|b| !DOC.contains(b.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/api/README.md lacks {} of the worked examples as computed; each should read:\n\n{}",
        missing.len(),
        missing
            .iter()
            .map(|b| b.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The clearing arithmetic the document states, recomputed with the server's rules.
#[test]
fn the_clearing_arithmetic_in_the_api_document_is_the_servers() {
    use clearing_server::core::clearing::commission_fen;
    use redeemd_contract::close;
    // Commission: once on the payable net of the statement, half away from zero.
    assert_eq!(commission_fen(2060, 500), 103);
    assert_eq!(commission_fen(1030, 500) * 2, 104);
    assert!(DOC.contains("two payable lines of 1,030 fen at 500 bps: commission 103 fen (5 % of 2,060 = 103.0), not 52 + 52 = 104"));
    assert_eq!(
        commission_fen(-1030, 500),
        -52,
        "a net reversal rounds away from zero too"
    );
    // Close counts are units: 2 + 1 redeemed, 1 voided.
    let mut a = record();
    a.wall_ms = T;
    let mut b = a.clone();
    b.seq = 2;
    b.quantity = 1;
    b.amount_fen = 3500;
    let mut v = b.clone();
    v.seq = 3;
    v.kind = RecordKind::Void;
    v.original_seq = 2;
    let day = close::business_day(T, 480);
    let window = close::day_window(day, 480);
    let t = close::totals([&a, &b, &v], window);
    let t = t.values().next().unwrap();
    assert_eq!(
        (t.redeemed, t.voided, t.net_units, t.net_amount_fen),
        (3, 1, 2, 7000)
    );
    assert!(DOC.contains("`redeemed` 3, `voided` 1, `net_units` 2, `net_amount_fen` 7000"));
    // The business day of the examples' time at UTC+8.
    assert_eq!(close::format_date(day), "2026-11-18");
    assert_eq!(window, (1_794_931_200_000, 1_795_017_600_000));
    assert!(DOC.contains(
        "`business_date` 2026-11-18 at `utc_offset_minutes` 480 is the wall-clock window [1794931200000, 1795017600000)"
    ));
}

/// Every limit the server enforces is in the document's limits table, with the answer it gets.
#[test]
fn the_limits_the_server_enforces_are_the_documents() {
    use clearing_server::http::auth::{MAX_BODY_BYTES, MAX_INFLATED_BODY_BYTES};
    use clearing_server::http::terminal::{MAX_CLOSE_ITEMS, MAX_DENY_ENTRIES, MAX_RECORDS};
    assert_eq!(MAX_BODY_BYTES, 8 << 20);
    assert_eq!(MAX_INFLATED_BODY_BYTES, 32 << 20);
    assert_eq!(clearing_server::storage::MAX_RECORD_BYTES, 8192);
    for row in [
        "| request body (bytes as sent) | 8 MiB",
        "| decompressed request body (if `Content-Encoding: gzip`) | 32 MiB",
        &format!(
            "| records per upload | {} | `413 body_too_large` |",
            group(MAX_RECORDS)
        ),
        &format!(
            "| item lines per batch close | {} | `413 body_too_large` |",
            group(MAX_CLOSE_ITEMS)
        ),
        "| one record's canonical bytes | 8,192 (base64: at most 10,924 characters) | `422 record_malformed` |",
        &format!(
            "| deny-list entries per answer | {} |",
            group(MAX_DENY_ENTRIES)
        ),
    ] {
        assert!(DOC.contains(row), "the limits table lacks {row:?}");
    }
    // The schema says the same: a record's base64 is at most 4 × ⌈8192 / 3⌉ characters.
    let yaml = include_str!("../../docs/api/openapi.yaml");
    assert_eq!(8192usize.div_ceil(3) * 4, 10_924);
    assert!(yaml.contains("maxLength: 10924"));
    assert!(yaml.contains(&format!("maxItems: {MAX_RECORDS}")));
    assert!(yaml.contains(&format!("maxItems: {MAX_CLOSE_ITEMS}")));
}

/// 10000 → "10,000".
fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
