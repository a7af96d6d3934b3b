//! Everything the simulator asks of the platform besides the terminal API, in one place: enrolling
//! terminals, issuing cards with packages, reporting cards lost, and reading merchant statements.
//! Today the only interface for these is the admin command line (`clearing-server [--db …] admin …`,
//! one process per command); [`Admin`] runs it.
//!
//! **Cards.** The fleet's cards are generated from their index ([`card`]): a 16-digit number with
//! a Luhn check digit under a prefix, a holder for every other card, one package valid at every
//! merchant with three items and uses that a run never exhausts. [`write_cards_csv`] writes them as
//! the CSV a bulk import takes (`number,holder,package,title,valid_from,valid_until,items`, items as
//! `CODE:TITLE:USES:PRICE_FEN` joined by `;`) and [`Admin::issue_cards`] issues them either through
//! `admin card create` + `admin card customize` (about 5 ms a card: fine for thousands) or, with
//! [`CardIssue::Import`], through `admin card import FILE.csv` once the platform has it.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Why a platform command failed.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("{command}: cannot start {program}: {source}")]
    Spawn {
        command: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command}: exited with {status}: {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{command}: unexpected output: {reason}")]
    Output { command: String, reason: String },
    #[error("{path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn file_error(path: &Path, source: std::io::Error) -> PlatformError {
    PlatformError::File {
        path: path.display().to_string(),
        source,
    }
}

/// The admin command line of the platform: `PROGRAM --db DB [GLOBAL_ARGS…] admin …`.
#[derive(Debug, Clone)]
pub struct Admin {
    pub program: PathBuf,
    pub db: String,
    /// More arguments before `admin` (a master-key file, say), passed as given.
    pub global_args: Vec<String>,
    /// Commands run at once at most (the database serialises their writes anyway).
    pub parallel: usize,
}

/// A package item: `CODE:TITLE:USES:PRICE_FEN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemSpec {
    pub code: &'static str,
    pub title: &'static str,
    pub uses: u32,
    pub price_fen: u64,
}

impl ItemSpec {
    fn arg(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.code, self.title, self.uses, self.price_fen
        )
    }
}

/// One card of the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardSpec {
    pub number: String,
    pub holder: Option<String>,
}

/// The package every fleet card carries: valid everywhere, for years, never used up in a run.
pub const PACKAGE_ID: &str = "FLEET";
pub const PACKAGE_TITLE: &str = "车主会员套餐";
pub const VALID_FROM: &str = "2020-01-01";
pub const VALID_UNTIL: &str = "2099-12-31";
pub const ITEMS: [ItemSpec; 3] = [
    ItemSpec {
        code: "WASH",
        title: "精洗",
        uses: 100_000,
        price_fen: 3500,
    },
    ItemSpec {
        code: "OIL",
        title: "换机油",
        uses: 100_000,
        price_fen: 12_000,
    },
    ItemSpec {
        code: "TIRE",
        title: "轮胎换位",
        uses: 100_000,
        price_fen: 5000,
    },
];

/// The number of card `index` under `prefix`: the prefix, the index zero-padded to 15 digits in all,
/// and a Luhn check digit (16 digits, like a bank card).
pub fn card_number(prefix: &str, index: u64) -> String {
    let width = 15usize.saturating_sub(prefix.len());
    let body = format!("{prefix}{index:0width$}");
    let check = luhn_check_digit(&body);
    format!("{body}{check}")
}

/// The Luhn check digit of a string of decimal digits: every second digit from the right doubled
/// (less 9 above 9), the check digit brings the sum to a multiple of ten.
pub fn luhn_check_digit(digits: &str) -> u32 {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b.wrapping_sub(b'0')) % 10;
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

/// Card `index` of a fleet whose numbers start with `prefix`.
pub fn card(prefix: &str, index: u64) -> CardSpec {
    CardSpec {
        number: card_number(prefix, index),
        holder: index.is_multiple_of(2).then(|| format!("会员{index}")),
    }
}

/// Writes the fleet's cards `range` as the CSV a bulk import takes.
pub fn write_cards_csv(
    path: &Path,
    prefix: &str,
    range: std::ops::Range<u64>,
) -> Result<(), PlatformError> {
    use std::io::Write;
    let f = std::fs::File::create(path).map_err(|e| file_error(path, e))?;
    let mut w = std::io::BufWriter::new(f);
    let items: Vec<String> = ITEMS.iter().map(ItemSpec::arg).collect();
    let items = items.join(";");
    let write = |w: &mut std::io::BufWriter<std::fs::File>| -> std::io::Result<()> {
        writeln!(
            w,
            "number,holder,package,title,valid_from,valid_until,items"
        )?;
        for i in range.clone() {
            let c = card(prefix, i);
            writeln!(
                w,
                "{},{},{PACKAGE_ID},{PACKAGE_TITLE},{VALID_FROM},{VALID_UNTIL},{items}",
                c.number,
                c.holder.as_deref().unwrap_or("")
            )?;
        }
        w.flush()
    };
    write(&mut w).map_err(|e| file_error(path, e))
}

/// How cards reach the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CardIssue {
    /// `admin card create` and `admin card customize`, two commands a card.
    Cli,
    /// `admin card import FILE.csv`, one command for all (a platform that has it).
    Import,
}

/// A merchant statement as `admin statement merchant --json` prints it (fields the reconciliation
/// reads; others are ignored): the payable records and lines, and the records held for a person by
/// reason. Amounts are i128, as the platform sums them.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Statement {
    pub merchant_id: String,
    /// Payable records.
    pub records: u64,
    pub lines: Vec<StatementLine>,
    pub net_amount_fen: i128,
    #[serde(default)]
    pub held_records: u64,
    #[serde(default)]
    pub held: Vec<HeldLine>,
}

/// Records held, by the exception code that holds them.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct HeldLine {
    pub code: String,
    pub records: u64,
    pub claimed_fen: i128,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct StatementLine {
    pub package_id: String,
    pub service_code: String,
    pub redeemed: u64,
    pub voided: u64,
    pub net_units: i64,
    pub net_amount_fen: i128,
}

impl Admin {
    /// The command line of `admin ARGS…`, for messages (card numbers in it are masked).
    fn describe(args: &[&str]) -> String {
        let masked: Vec<String> = args
            .iter()
            .map(|a| {
                if a.len() >= 12 && a.bytes().all(|b| b.is_ascii_digit()) {
                    format!("{}******{}", &a[..6], &a[a.len() - 4..])
                } else {
                    (*a).to_owned()
                }
            })
            .collect();
        format!("admin {}", masked.join(" "))
    }

    /// Runs `admin ARGS…`; its stdout on success.
    pub async fn run(&self, args: &[&str]) -> Result<Vec<u8>, PlatformError> {
        let command = Self::describe(args);
        let out = tokio::process::Command::new(&self.program)
            .arg("--db")
            .arg(&self.db)
            .args(&self.global_args)
            .arg("admin")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|source| PlatformError::Spawn {
                command: command.clone(),
                program: self.program.display().to_string(),
                source,
            })?;
        if !out.status.success() {
            return Err(PlatformError::Failed {
                command,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(out.stdout)
    }

    /// Runs `jobs` (each a list of argument lists run in order), [`Admin::parallel`] at once; stops
    /// at the first failure. `progress` is called with the count done now and then.
    pub async fn run_all(
        &self,
        jobs: Vec<Vec<Vec<String>>>,
        progress: impl Fn(usize),
    ) -> Result<(), PlatformError> {
        let mut set = tokio::task::JoinSet::new();
        let total = jobs.len();
        let mut done = 0;
        let mut jobs = jobs.into_iter();
        loop {
            while set.len() < self.parallel.max(1) {
                let Some(job) = jobs.next() else { break };
                let admin = self.clone();
                set.spawn(async move {
                    for args in job {
                        let args: Vec<&str> = args.iter().map(String::as_str).collect();
                        admin.run(&args).await?;
                    }
                    Ok::<(), PlatformError>(())
                });
            }
            let Some(joined) = set.join_next().await else {
                break;
            };
            joined.map_err(|e| PlatformError::Output {
                command: "admin".into(),
                reason: format!("a setup task failed: {e}"),
            })??;
            done += 1;
            if done % 500 == 0 || done == total {
                progress(done);
            }
        }
        Ok(())
    }

    /// Enrolls `terminal` for `merchant`, its secret written to `key_file`.
    pub fn enroll_args(terminal: &str, merchant: &str, key_file: &Path) -> Vec<String> {
        vec![
            "enroll".into(),
            "--terminal".into(),
            terminal.into(),
            "--merchant".into(),
            merchant.into(),
            "--key-file".into(),
            key_file.display().to_string(),
        ]
    }

    /// The two commands that issue one card with the fleet's package.
    pub fn card_args(c: &CardSpec) -> Vec<Vec<String>> {
        let mut create = vec![
            "card".into(),
            "create".into(),
            "--number".into(),
            c.number.clone(),
        ];
        if let Some(h) = &c.holder {
            create.extend(["--holder".into(), h.clone()]);
        }
        let mut customize: Vec<String> = [
            "card",
            "customize",
            "--number",
            &c.number,
            "--package",
            PACKAGE_ID,
            "--title",
            PACKAGE_TITLE,
            "--valid-from",
            VALID_FROM,
            "--valid-until",
            VALID_UNTIL,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        for i in &ITEMS {
            customize.extend(["--item".into(), i.arg()]);
        }
        vec![create, customize]
    }

    /// Issues cards `0..cards` (written to `csv` first, whatever the way). An import is split
    /// into `import_files` imports of consecutive cards: each import is one version of the
    /// platform's cards, and a warm start draws its terminals' pools from the last few versions, so
    /// one import of every card would give them all one card's worth of pool.
    pub async fn issue_cards(
        &self,
        how: CardIssue,
        prefix: &str,
        cards: u64,
        import_files: u64,
        csv: &Path,
        progress: impl Fn(usize),
    ) -> Result<(), PlatformError> {
        write_cards_csv(csv, prefix, 0..cards)?;
        match how {
            CardIssue::Import if import_files <= 1 => {
                let path = csv.display().to_string();
                self.run(&["card", "import", path.as_str()]).await?;
                progress(usize::try_from(cards).unwrap_or(usize::MAX));
                Ok(())
            }
            CardIssue::Import => {
                let per_file = cards.div_ceil(import_files);
                let part = csv.with_extension("part.csv");
                let mut start = 0;
                while start < cards {
                    let end = (start + per_file).min(cards);
                    write_cards_csv(&part, prefix, start..end)?;
                    let path = part.display().to_string();
                    self.run(&["card", "import", path.as_str()]).await?;
                    progress(usize::try_from(end).unwrap_or(usize::MAX));
                    start = end;
                }
                std::fs::remove_file(&part).map_err(|e| file_error(&part, e))
            }
            CardIssue::Cli => {
                let jobs = (0..cards)
                    .map(|i| Self::card_args(&card(prefix, i)))
                    .collect();
                self.run_all(jobs, progress).await
            }
        }
    }

    /// `admin card lost --number N`.
    pub async fn report_lost(&self, number: &str) -> Result<(), PlatformError> {
        self.run(&["card", "lost", "--number", number])
            .await
            .map(|_| ())
    }

    /// `admin statement merchant --merchant M --json`.
    pub async fn merchant_statement(&self, merchant: &str) -> Result<Statement, PlatformError> {
        let args = ["statement", "merchant", "--merchant", merchant, "--json"];
        let out = self.run(&args).await?;
        serde_json::from_slice(&out).map_err(|e| PlatformError::Output {
            command: Self::describe(&args),
            reason: e.to_string(),
        })
    }
}

/// What `fleet-sim setup` leaves in its directory for `fleet-sim run` (`setup.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupRecord {
    pub cards: u64,
    pub card_prefix: String,
}

impl SetupRecord {
    pub const FILE: &'static str = "setup.json";

    pub fn load(dir: &Path) -> Result<SetupRecord, PlatformError> {
        let path = dir.join(Self::FILE);
        let text = std::fs::read(&path).map_err(|e| file_error(&path, e))?;
        serde_json::from_slice(&text).map_err(|e| {
            file_error(
                &path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
            )
        })
    }

    pub fn save(&self, dir: &Path) -> Result<(), PlatformError> {
        let path = dir.join(Self::FILE);
        let text = serde_json::to_vec_pretty(self).unwrap_or_default();
        std::fs::write(&path, text).map_err(|e| file_error(&path, e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn card_numbers_are_unique_16_digit_luhn_numbers() {
        let a = card_number("628899", 0);
        let b = card_number("628899", 123_456_789);
        assert_eq!((a.len(), b.len()), (16, 16));
        assert!(a.starts_with("628899000000000") && b.starts_with("628899123456789"));
        // The textbook example: 7992739871 takes check digit 3.
        assert_eq!(luhn_check_digit("7992739871"), 3);
        assert_eq!(luhn_check_digit("411111111111111"), 1);
        let n = card_number("628899", 42);
        assert_eq!(n[15..].parse::<u32>().unwrap(), luhn_check_digit(&n[..15]));
        let all: std::collections::HashSet<String> =
            (0..2000).map(|i| card_number("628899", i)).collect();
        assert_eq!(all.len(), 2000);
        assert!(redeemd_contract::model::CardNumber::parse(&b).is_ok());
        assert_eq!(card("628899", 2).holder.as_deref(), Some("会员2"));
        assert_eq!(card("628899", 3).holder, None);
    }

    #[test]
    fn the_csv_has_a_header_and_one_card_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cards.csv");
        write_cards_csv(&path, "628899", 0..3).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[0],
            "number,holder,package,title,valid_from,valid_until,items"
        );
        assert_eq!(
            lines[1],
            format!(
                "{},会员0,FLEET,车主会员套餐,2020-01-01,2099-12-31,WASH:精洗:100000:3500;OIL:换机油:100000:12000;TIRE:轮胎换位:100000:5000",
                card_number("628899", 0)
            )
        );
        assert!(lines[2].starts_with(&format!("{},,FLEET", card_number("628899", 1))));
        // A part of an import split in files: its header, then exactly its cards.
        write_cards_csv(&path, "628899", 5..7).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let numbers: Vec<&str> = text.lines().skip(1).map(|l| &l[..16]).collect();
        assert_eq!(
            numbers,
            [card_number("628899", 5), card_number("628899", 6)]
        );
    }

    #[test]
    fn commands_are_described_with_card_numbers_masked() {
        let d = Admin::describe(&["card", "lost", "--number", "6288990000000011"]);
        assert_eq!(d, "admin card lost --number 628899******0011");
    }
}
