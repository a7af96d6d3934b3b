//! Shared by the clearing-server benches (`mod support;`): the card numbers, the package and the
//! N-card seeding of the database, a signed-request client for terminal `T-1`, and the benches' settings
//! (`BENCH_CARDS`, `BENCH_DIR`) and table rows.
#![allow(clippy::unwrap_used)]
// Each bench uses some of it.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use clearing_server::storage::Db;
use clearing_server::storage::cards::{self, CardError, ItemSpec, NewCard, PackageSpec};
use clearing_server::vault::{MasterKey, Vault};
use redeemd_contract::keys::TerminalKeys;
use redeemd_contract::model::{CardNumber, MerchantScope};
use redeemd_contract::request::SignedHeaders;

/// Cards to seed: `BENCH_CARDS`, default 1,000,000.
pub fn bench_cards() -> u64 {
    std::env::var("BENCH_CARDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// A scratch directory under `BENCH_DIR` (default /tmp), removed when dropped.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/tmp".into())).unwrap()
}

/// One row of a results table.
pub fn row(what: &str, figure: String, note: String) {
    println!("| {what} | {figure} | {note} |");
}

/// The merchant category every seeded package is scoped to: a merchant of it sees every card.
pub const CATEGORY: &str = "car-wash";

pub fn number(i: u64) -> CardNumber {
    CardNumber::parse(&format!("62284800{i:08}")).unwrap()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub fn package(now: i64) -> PackageSpec {
    PackageSpec {
        id: "P1".into(),
        title: "洗车保养套餐".into(),
        valid_from_ms: now - 86_400_000,
        valid_until_ms: now + 365 * 86_400_000,
        scope: MerchantScope::Categories(vec![CATEGORY.into()]),
        daily_cap: Some(2),
        identity_required: false,
        items: vec![
            ItemSpec::parse("WASH:精洗:10:3500").unwrap(),
            ItemSpec::parse("OIL:换机油:3:12000").unwrap(),
        ],
    }
}

/// The master key the benches seal with (in process, and in [`master_key_file`] for the binary).
pub const MASTER_KEY: [u8; 32] = [77; 32];

pub fn vault() -> Vault {
    Vault::new(MasterKey::from_bytes(&MASTER_KEY).unwrap())
}

/// [`MASTER_KEY`] in `dir/master.key`, mode 0600, for `clearing-server --master-key-file`.
pub fn master_key_file(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("master.key");
    std::fs::write(&path, format!("{}\n", hex::encode(MASTER_KEY))).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// N cards, every tenth named with identity data, in one transaction with one version.
pub fn seed(db: &Db, n: u64) -> Duration {
    let now = now_ms();
    let t = Instant::now();
    let p = [package(now)];
    let vault = vault();
    db.write(|tx| -> Result<(), CardError> {
        let version = cards::bump_version(tx, now)?;
        for i in 0..n {
            let named = i % 10 == 0;
            let new = NewCard {
                number: number(i),
                holder_name: named.then(|| "张三".to_owned()),
                identity_data: named.then(|| "1234".to_owned()),
            };
            cards::insert_card(tx, &vault, &new, &p, version, now)?;
        }
        Ok(())
    })
    .unwrap();
    t.elapsed()
}

/// A terminal `T-1` speaking the signed API over reqwest.
pub struct Client {
    pub base: String,
    pub keys: TerminalKeys,
    pub http: reqwest::Client,
    pub nonce: u64,
}

impl Client {
    pub fn headers(&mut self, method: &str, path: &str, body: &[u8]) -> SignedHeaders {
        self.nonce += 1;
        let mut n = [0u8; 16];
        n[..8].copy_from_slice(&self.nonce.to_be_bytes());
        SignedHeaders::sign(&self.keys.request, "T-1", method, path, now_ms(), n, body)
    }

    /// Streams a bundle, dropping the bytes. Returns (wire bytes, kind header, last frame).
    pub async fn bundle(&mut self, since: u64, accept: Option<&str>) -> (u64, String, Vec<u8>) {
        let path = format!("/v1/terminals/T-1/entitlements?since={since}");
        let h = self.headers("GET", &path, b"");
        let mut req = self.http.get(format!("{}{path}", self.base));
        for (k, v) in h.pairs() {
            req = req.header(k, v);
        }
        if let Some(a) = accept {
            req = req.header("accept-encoding", a);
        }
        let mut resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let kind = resp.headers()["x-redeemd-bundle-kind"]
            .to_str()
            .unwrap()
            .to_owned();
        let (mut bytes, mut tail) = (0u64, Vec::new());
        while let Some(chunk) = resp.chunk().await.unwrap() {
            bytes += chunk.len() as u64;
            tail.extend_from_slice(&chunk);
            let keep = tail.len().saturating_sub(4096);
            tail.drain(..keep);
        }
        (bytes, kind, tail)
    }
}

/// An import file (`admin card import`) of `n` cards: one package of two items each, scoped to
/// [`CATEGORY`], every tenth named with identity data; numbers as [`number`].
pub fn write_import_csv(path: &std::path::Path, n: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(
        f,
        "number,holder,identity,package,title,valid_from,valid_until,scope,daily_cap,identity_required,items"
    )
    .unwrap();
    for i in 0..n {
        let (holder, identity) = if i % 10 == 0 {
            ("张三", format!("{:04}", i % 10_000))
        } else {
            ("", String::new())
        };
        writeln!(
            f,
            "{},{holder},{identity},P1,洗车保养套餐,2026-01-01,2030-12-31,categories:{CATEGORY},2,,WASH:精洗:10:3500;OIL:换机油:3:12000",
            number(i).digits()
        )
        .unwrap();
    }
    f.flush().unwrap();
}
