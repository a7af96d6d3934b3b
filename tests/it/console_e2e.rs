//! The web console in a real browser: headless Chromium driven over WebDriver (`chromedriver`,
//! `fantoccini`) against the real `clearing-server` binary, with the real `redeemd run` syncing a
//! simulated reader over a pty. An operator logs in, finds cards, customizes a package and reports a
//! card lost — and the shop's reader offers the package and declines the card after the daemon's next
//! pass; the statement's chart is checked against the redemptions made at the reader; a form without
//! its CSRF token is refused; markup and GB18030-only characters in a holder's and a merchant's name
//! are shown as text; a merchant's login sees its own shop and not another's (not found), in English;
//! the reader unplugged at the shop becomes an alert on the fleet page.
//!
//! The browser runs under SCHED_IDLE (`chrt --idle`): it takes no CPU time from the timing-bound tests
//! running beside it in this binary, and on a machine busy with other work it only waits longer.
//!
//! Every page is photographed at 1280×800 and at a phone's 390 px (where no page may scroll
//! sideways) into `target/console-screenshots/` (the path is printed); `docs/console-statement.png` is
//! one of them. Every step waits for a DOM condition (an element of the next page), never for a
//! time; what the shop's daemon does is awaited in its published status, and the fleet page is
//! reloaded once a second until it shows the alert, as a person would.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (`cargo xtask test` installs them).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use redeemd::engine::DeclineReason;
use redeemd::simulator::{SimReader, SwipeResult};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use redeemd_contract::close;

use crate::daemon::{approved, menu, reader, swipe, wire};
use crate::shop::{Daemon, wall_now};
use crate::support::{self, MERCHANT, TERMINAL};
use crate::sync_e2e::{Server, Setup, admin, platform_command, server_journal, setup, wait_for};

/// Markup and characters that GB18030 encodes and GBK does not (U+20000, U+4DB5).
const HOSTILE: &str = "<script>alert(1)</script>𠀀䶵";
const OTHER_MERCHANT: &str = "M-0002";
const PASSWORD: &str = "a long passphrase";
/// Longest wait for a page's element: long, as the browser runs on idle CPU time only (every wait
/// ends as soon as the element appears).
const PAGE: Duration = Duration::from_secs(90);
const DESKTOP: (u32, u32) = (1280, 800);
/// The shop's `[sync] interval_secs` (`sync_e2e::write_config`).
const SYNC_INTERVAL: Duration = Duration::from_secs(5);
const PHONE: (u32, u32) = (390, 844);

/// `chromedriver` on a loopback port of its own; killed on drop.
struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    fn start() -> Chromedriver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Under SCHED_IDLE (inherited by Chromium's processes, whatever nice values Chromium sets
        // itself as root): the browser runs only on CPU time nothing else wants, so it cannot slow
        // the timing-bound tests that run beside it in this binary (a sync interval, a link's
        // timers) on a machine of two cores; it only waits longer itself.
        let mut child = Command::new("chrt")
            .args(["--idle", "0", "chromedriver"])
            .arg(format!("--port={port}"))
            // Its own process group, with the browsers it starts: ended together on drop, even
            // when a failed step left a session open.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "chromedriver (Debian package chromium-driver; `cargo xtask test` installs it)",
            );
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            let line = lines
                .next()
                .expect("chromedriver exited before it was ready")
                .unwrap();
            if line.contains("started successfully") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Chromedriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A fresh browser (its own profile directory), asking for Chinese first.
    async fn browser(&self, profile: &Path) -> Client {
        let args = [
            "--headless=new".to_owned(),
            // Root has no sandbox; the closed network must not be tried (Google's services).
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--no-first-run".to_owned(),
            "--hide-scrollbars".to_owned(),
            format!("--user-data-dir={}", profile.display()),
            format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
            "--lang=zh-CN".to_owned(),
        ];
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "args": args,
                "prefs": { "intl.accept_languages": "zh-CN,zh,en" },
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session (Debian package chromium)")
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the run's screenshots go: `target/console-screenshots/`.
fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The page the browser shows: photographed at both widths; at the phone's nothing may stick out
/// sideways (the page's width is the window's).
async fn shoot(c: &Client, name: &str) {
    let dir = screenshot_dir();
    for (label, (w, h)) in [("1280x800", DESKTOP), ("390", PHONE)] {
        c.set_window_size(w, h).await.unwrap();
        let widths = c
            .execute(
                "return [document.documentElement.scrollWidth, document.documentElement.clientWidth, window.innerWidth];",
                vec![],
            )
            .await
            .unwrap();
        let widths: Vec<u64> = serde_json::from_value(widths).unwrap();
        assert_eq!(
            u64::from(w),
            widths[2],
            "{name}: the window's inner width is not the asked {w}"
        );
        assert!(
            widths[0] <= widths[1],
            "{name} at {label}: the page is {} px wide in a {} px window",
            widths[0],
            widths[1]
        );
        let png = c.screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}-{label}.png")), png).unwrap();
    }
    c.set_window_size(DESKTOP.0, DESKTOP.1).await.unwrap();
}

/// The whole page at 1280 px wide, however long (the window made as tall as the page).
async fn shoot_whole(c: &Client, name: &str) {
    let height = c
        .execute("return document.documentElement.scrollHeight;", vec![])
        .await
        .unwrap();
    let height = u32::try_from(height.as_u64().unwrap().min(4000)).unwrap();
    c.set_window_size(DESKTOP.0, height.max(DESKTOP.1))
        .await
        .unwrap();
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshot_dir().join(format!("{name}-1280-whole.png")), png).unwrap();
    c.set_window_size(DESKTOP.0, DESKTOP.1).await.unwrap();
}

async fn find(c: &Client, css: &str) -> Element {
    c.wait()
        .at_most(PAGE)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} within {PAGE:?}: {e}"))
}

async fn text(c: &Client, css: &str) -> String {
    find(c, css).await.text().await.unwrap()
}

/// An attribute of the first element `css` matches (waited for).
async fn attr_of(c: &Client, css: &str, name: &str) -> Option<String> {
    find(c, css).await.attr(name).await.unwrap()
}

/// Whether an element is on the page now (after the page that holds it or not has loaded).
async fn present(c: &Client, css: &str) -> bool {
    !c.find_all(Locator::Css(css)).await.unwrap().is_empty()
}

/// Opens `path` and waits for `ready` on it.
async fn open(c: &Client, base: &str, path: &str, ready: &str) {
    c.goto(&format!("{base}{path}")).await.unwrap();
    find(c, ready).await;
}

/// Types into the field `name` of the form matched by `form`, as a person would.
async fn type_into(c: &Client, form: &str, name: &str, value: &str) {
    let input = find(c, &format!("{form} [name=\"{name}\"]")).await;
    input.clear().await.unwrap();
    input.send_keys(value).await.unwrap();
}

async fn submit(c: &Client, form: &str) {
    find(c, &format!("{form} button[type=submit]"))
        .await
        .click()
        .await
        .unwrap();
}

/// Searches the cards page by `field` (`number` or `holder`) and returns the result rows. `typed`:
/// typed as a person would, else set as a script would (chromedriver types no character beyond the
/// BMP).
async fn search_cards(
    c: &Client,
    base: &str,
    field: &str,
    value: &str,
    typed: bool,
) -> Vec<Element> {
    let form = "section#search form";
    open(c, base, "/console/cards", form).await;
    if typed {
        type_into(c, form, field, value).await;
    } else {
        c.form(Locator::Css(form))
            .await
            .unwrap()
            .set_by_name(field, value)
            .await
            .unwrap();
    }
    submit(c, form).await;
    find(c, "section#results").await;
    c.find_all(Locator::Css("section#results tr[data-card]"))
        .await
        .unwrap()
}

/// Opens the card of a result row; the path of its page.
async fn open_card(c: &Client, row: &Element) -> String {
    row.find(Locator::Css("a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    find(c, "section#packages").await;
    c.current_url().await.unwrap().path().to_owned()
}

/// Logs in through the login page (whose address any console page redirects to).
async fn log_in(c: &Client, base: &str, name: &str) {
    open(c, base, "/console/", "form.login").await;
    type_into(c, "form.login", "name", name).await;
    type_into(c, "form.login", "password", PASSWORD).await;
    submit(c, "form.login").await;
    let who = text(c, "header .who").await;
    assert_eq!(who, name);
}

/// `clearing-server admin user add` (the password on stdin).
fn add_user(db: &Path, name: &str, role: &str, subject: &str) {
    let mut child = platform_command()
        .arg("--db")
        .arg(db)
        .args(["admin", "user", "add", "--name", name, "--role", role])
        .args(["--subject", subject])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "admin user add {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The business day (China Standard Time) of a wall time, as the console writes it: `2026-12-05`.
fn cst_day(ms: i64) -> String {
    close::format_date(close::business_day(ms, 8 * 60))
}

/// What the test asks of the shop's reader.
enum Ask {
    Swipe(u64, oneshot::Sender<SwipeResult>),
    /// Pull its cable: the reader is gone from then on.
    Unplug(oneshot::Sender<()>),
}

/// The shop's reader, kept linked (heartbeats answered) while the browser works, swiping on request.
struct Counter {
    tx: mpsc::Sender<Ask>,
}

impl Counter {
    fn keep(mut r: SimReader) -> Counter {
        let (tx, mut rx) = mpsc::channel::<Ask>(1);
        tokio::spawn(async move {
            loop {
                match rx.try_recv() {
                    Ok(Ask::Swipe(card, answer)) => {
                        let result = swipe(&mut r, card).await;
                        let _ = answer.send(result);
                    }
                    Ok(Ask::Unplug(done)) => {
                        r.unplug().unwrap();
                        let _ = done.send(());
                        return;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => {
                        r.idle(Duration::from_millis(100)).await.unwrap();
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
        });
        Counter { tx }
    }

    async fn swipe(&self, card: u64) -> SwipeResult {
        let (answer, result) = oneshot::channel();
        self.tx.send(Ask::Swipe(card, answer)).await.unwrap();
        result.await.unwrap()
    }

    async fn unplug(self) {
        let (done, unplugged) = oneshot::channel();
        self.tx.send(Ask::Unplug(done)).await.unwrap();
        unplugged.await.unwrap();
    }
}

/// The entitlement version of the card the page shows: a shop whose cache is at this version or
/// later has the card as shown.
async fn card_version(c: &Client) -> u64 {
    text(c, "dd[data-version]").await.parse().unwrap()
}

/// (cache version, deny-list version) of the shop, as its daemon last published them.
fn shop_sync(s: &Setup) -> (u64, u64) {
    redeemd::daemon::status::read(&s.shop.state)
        .ok()
        .and_then(|st| st.sync)
        .map_or((0, 0), |sy| (sy.cache_version, sy.deny_version))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_and_a_merchant_use_the_console_in_a_browser_and_the_shop_follows() {
    let s = setup();
    let db = &s.server_db;
    // Card 5 named with markup; a second merchant named with it; a login per role.
    admin(
        db,
        &[
            "card",
            "create",
            "--number",
            &support::number(5),
            "--holder",
            HOSTILE,
        ],
    );
    admin(
        db,
        &[
            "merchant",
            "--id",
            OTHER_MERCHANT,
            "--name",
            HOSTILE,
            "--commission-bps",
            "300",
        ],
    );
    add_user(db, "alice", "operator", "alice");
    add_user(db, "m1", "merchant", MERCHANT);
    let server = Server::start(db, "127.0.0.1:0");
    let base = server.url();
    s.point_at(&base);
    let _daemon = Daemon::start(&s.shop);
    wait_for(
        "the platform's snapshot installed",
        Duration::from_secs(30),
        || s.cache_version() > 0,
    );

    // Redemptions at the counter: card 1 WASH ×2; card 2 WASH ×1 and WAX ×1 (three records).
    let mut r = reader(&s.shop, 0, "R-CONSOLE").await;
    let day = cst_day(wall_now());
    menu(swipe(&mut r, 1).await);
    approved(r.redeem(&[(0, 2)], None).await.unwrap());
    menu(swipe(&mut r, 2).await);
    approved(r.redeem(&[(0, 1), (1, 1)], None).await.unwrap());
    assert_eq!(day, cst_day(wall_now()), "the test ran across midnight");
    let counter = Counter::keep(r);
    wait_for(
        "the records on the platform",
        Duration::from_secs(60),
        || server_journal(db).0 == 3,
    );

    let driver = Chromedriver::start();
    let profiles = tempfile::tempdir().unwrap();
    let c = driver.browser(&profiles.path().join("operator")).await;
    {
        let mut e = std::io::stderr();
        let _ = writeln!(e, "console screenshots: {}", screenshot_dir().display());
    }

    // The login page, in Chinese (the browser's Accept-Language).
    open(&c, &base, "/console/", "form.login").await;
    assert_eq!(attr_of(&c, "html", "lang").await.as_deref(), Some("zh"));
    shoot(&c, "login").await;
    log_in(&c, &base, "alice").await;

    // Fleet: the shop's terminal, its reader linked.
    open(&c, &base, "/console/fleet", "table.terminals").await;
    let reader_state = attr_of(
        &c,
        &format!("tr[data-terminal=\"{TERMINAL}\"] .reader"),
        "data-state",
    )
    .await;
    assert_eq!(reader_state.as_deref(), Some("link_up"));
    shoot(&c, "fleet").await;

    // Cards: found by masked number (first six, last four).
    let number1 = support::number(1);
    let masked = format!("{}******{}", &number1[..6], &number1[number1.len() - 4..]);
    let rows = search_cards(&c, &base, "number", &masked, true).await;
    assert_eq!(
        rows.len(),
        1,
        "one card ends {}",
        &number1[number1.len() - 4..]
    );
    shoot(&c, "cards-search").await;
    let card1 = open_card(&c, &rows[0]).await;
    // Card 1's page shows what was used at the counter.
    assert_eq!(
        text(
            &c,
            "article[data-package=\"P1\"] tr[data-item=\"WASH\"] td[data-left]"
        )
        .await,
        "8"
    );
    shoot(&c, "card").await;

    // A form posted without its CSRF token is refused and changes nothing.
    c.execute(
        "document.querySelectorAll('form input[name=csrf]').forEach(e => e.remove());",
        vec![],
    )
    .await
    .unwrap();
    find(&c, "button[data-action=\"freeze\"]")
        .await
        .click()
        .await
        .unwrap();
    find(&c, "h1[data-problem=\"csrf\"]").await;
    shoot(&c, "csrf-refused").await;
    open(&c, &base, &card1, "section#packages").await;
    assert_eq!(
        attr_of(&c, "h1 .badge", "data-state").await.as_deref(),
        Some("active")
    );

    // Customize a package on card 3: a refused field is named, then saved.
    let (_, deny_before) = shop_sync(&s);
    let number3 = support::number(3);
    let rows = search_cards(&c, &base, "number", &number3, true).await;
    assert_eq!(rows.len(), 1, "the whole number finds its card");
    let card3 = open_card(&c, &rows[0]).await;
    find(&c, "section#actions a.button")
        .await
        .click()
        .await
        .unwrap();
    let form = "form.package";
    find(&c, form).await;
    for (name, value) in [
        ("package_id", "P2"),
        ("title", "保养套餐"),
        ("items[0].service_code", "OIL"),
        ("items[0].title", "机油更换"),
        ("items[0].uses_total", "0"),
        ("items[0].price", "280"),
    ] {
        type_into(&c, form, name, value).await;
    }
    // Dates as a date picker sets them.
    for (name, value) in [("valid_from", "2026-01-01"), ("valid_until", "2099-12-31")] {
        c.form(Locator::Css(form))
            .await
            .unwrap()
            .set_by_name(name, value)
            .await
            .unwrap();
    }
    submit(&c, form).await;
    // Zero uses: refused by the platform's rule, the message beside the field it names.
    let refusal = text(&c, "[data-error-for=\"items[0].uses_total\"]").await;
    assert!(
        refusal.contains("总次数") && refusal.contains("1 to 100000"),
        "{refusal}"
    );
    shoot(&c, "customize-refused").await;
    type_into(&c, form, "items[0].uses_total", "3").await;
    submit(&c, form).await;
    find(&c, "p[data-done]").await;
    assert_eq!(
        text(
            &c,
            "article[data-package=\"P2\"] tr[data-item=\"OIL\"] td[data-left]"
        )
        .await,
        "3"
    );
    assert_eq!(c.current_url().await.unwrap().path(), card3);
    let card3_version = card_version(&c).await;

    // Report card 1 lost.
    open(&c, &base, &card1, "section#packages").await;
    find(&c, "button[data-action=\"report_lost\"]")
        .await
        .click()
        .await
        .unwrap();
    find(&c, "p[data-done]").await;
    assert_eq!(
        attr_of(&c, "h1 .badge", "data-state").await.as_deref(),
        Some("lost")
    );
    assert!(present(&c, "button[data-action=\"unlock\"]").await);
    let card1_version = card_version(&c).await;

    // The daemon's next passes bring both (a cache at or past both cards' versions, a newer deny
    // list): card 1 declined as lost, card 3 offered its new package.
    wait_for(
        "the daemon's passes with the loss report and the package",
        Duration::from_secs(60),
        || {
            let (cache, deny) = shop_sync(&s);
            cache >= card1_version.max(card3_version) && deny > deny_before
        },
    );
    let lost = counter.swipe(1).await;
    assert!(
        matches!(&lost, SwipeResult::Declined(d) if d.reason == wire(DeclineReason::CardLost)),
        "{lost:?}"
    );
    let m = menu(counter.swipe(3).await);
    assert!(
        m.entries
            .iter()
            .any(|e| e.title == "机油更换" && e.uses_left == 3),
        "{m:?}"
    );

    // The statement: the chart's bars are the records made at the counter.
    open(
        &c,
        &base,
        &format!("/console/merchants/{MERCHANT}/statement"),
        "svg.chart",
    )
    .await;
    assert_eq!(text(&c, "dd[data-total=\"records\"]").await, "3");
    assert_eq!(text(&c, "dd[data-total=\"net\"]").await, "¥185.00");
    let bars = c.find_all(Locator::Css("svg.chart g.bar")).await.unwrap();
    assert_eq!(bars.len(), 30, "the last 30 days");
    for bar in &bars {
        let d = bar.attr("data-day").await.unwrap().unwrap();
        let total = bar.attr("data-total").await.unwrap().unwrap();
        let mut segments = Vec::new();
        for seg in bar.find_all(Locator::Css("rect.seg")).await.unwrap() {
            segments.push((
                seg.attr("data-item").await.unwrap().unwrap(),
                seg.attr("data-units").await.unwrap().unwrap(),
            ));
        }
        segments.sort();
        if d == day {
            assert_eq!(total, "4", "{d}");
            assert_eq!(
                segments,
                [
                    ("P1/WASH".into(), "3".into()),
                    ("P1/WAX".into(), "1".into())
                ],
                "{d}"
            );
            let label = bar.find(Locator::Css("text.total")).await.unwrap();
            assert_eq!(label.text().await.unwrap(), "4");
        } else {
            assert_eq!((total.as_str(), segments.len()), ("0", 0), "{d}");
        }
    }
    let legend = c.find_all(Locator::Css("ul.legend li")).await.unwrap();
    let mut items = Vec::new();
    for li in legend {
        items.push((
            li.attr("data-item").await.unwrap().unwrap(),
            li.attr("data-total").await.unwrap().unwrap(),
        ));
    }
    assert_eq!(
        items,
        [
            ("P1/WASH".to_owned(), "3".to_owned()),
            ("P1/WAX".into(), "1".into())
        ]
    );
    shoot(&c, "statement").await;
    shoot_whole(&c, "statement").await;

    // Markup in names is text. The holder's whole name as searched for is shown back in the form;
    // the card shows the holder masked, its first character as text.
    let rows = search_cards(&c, &base, "holder", HOSTILE, false).await;
    let kept = find(&c, "section#search input[name=\"holder\"]")
        .await
        .prop("value")
        .await
        .unwrap();
    assert_eq!(kept.as_deref(), Some(HOSTILE));
    assert_eq!(rows.len(), 1);
    assert!(
        !present(&c, "script").await,
        "a script element in the results"
    );
    shoot(&c, "cards-search-hostile-holder").await;
    open_card(&c, &rows[0]).await;
    let holder = text(&c, "dd[data-holder]").await;
    assert!(holder.starts_with("<*"), "{holder}");
    assert!(
        !present(&c, "script").await,
        "a script element on the card page"
    );
    open(&c, &base, "/console/merchants", "table.merchants").await;
    assert_eq!(
        text(
            &c,
            &format!("tr[data-merchant=\"{OTHER_MERCHANT}\"] td[data-name]")
        )
        .await,
        HOSTILE
    );
    assert!(
        !present(&c, "script").await,
        "a script element on the merchants page"
    );
    shoot(&c, "merchants").await;

    // A merchant's page: a pairing code to enroll a terminal (a code, never a secret).
    open(
        &c,
        &base,
        &format!("/console/merchants/{MERCHANT}"),
        "table.terminals",
    )
    .await;
    let pairing = format!("form[action=\"/console/merchants/{MERCHANT}/pairing-codes\"]");
    submit(&c, &pairing).await;
    let code = text(&c, "#pairing-code p.code").await;
    assert!(
        code.len() == 9 && code.as_bytes()[4] == b'-',
        "a code like XXXX-XXXX: {code:?}"
    );
    shoot(&c, "merchant").await;
    open(&c, &base, "/console/exceptions", "main h1").await;
    shoot(&c, "exceptions").await;

    // The reader unplugged at the shop: an alert on the fleet page once the daemon has noticed (at
    // the latest after T_DEAD without a frame) and reported at the end of its next pass — within
    // T_DEAD and two sync intervals (the time counted up to the request of the page that first
    // shows it). At a shop's interval (60 s) that is within two intervals; this shop's 5 s
    // interval is shorter than T_DEAD.
    let t_dead = firmware_protocol::session::Config::new(crate::shop::BAUD).dead_interval();
    counter.unplug().await;
    let unplugged = Instant::now();
    let took = loop {
        let asked = unplugged.elapsed();
        open(&c, &base, "/console/fleet", "section#alerts").await;
        if present(&c, "li.alert[data-alert=\"reader_down\"]").await {
            break asked;
        }
        assert!(
            asked < t_dead + 4 * SYNC_INTERVAL,
            "no reader_down alert on the fleet page after {asked:?}"
        );
        // A page a second, as a person reloading it would.
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(
        took <= t_dead + 2 * SYNC_INTERVAL,
        "the alert took {took:?}, more than T_DEAD and two sync intervals"
    );
    let alert = text(&c, "li.alert[data-alert=\"reader_down\"]").await;
    assert!(
        alert.contains(TERMINAL) && alert.contains("R-CONSOLE"),
        "{alert}"
    );
    assert_ne!(
        attr_of(
            &c,
            &format!("tr[data-terminal=\"{TERMINAL}\"] .reader"),
            "data-state"
        )
        .await
        .as_deref(),
        Some("link_up")
    );
    shoot(&c, "fleet-alert").await;
    c.close().await.unwrap();

    // The merchant's login, switched to English: its shop, never another merchant's.
    let m = driver.browser(&profiles.path().join("merchant")).await;
    log_in(&m, &base, "m1").await;
    find(&m, "a.lang").await.click().await.unwrap();
    find(&m, "html[lang=\"en\"] table.terminals").await;
    let terminals = m
        .find_all(Locator::Css("table.terminals tr[data-terminal]"))
        .await
        .unwrap();
    assert_eq!(terminals.len(), 1);
    assert_eq!(
        terminals[0].attr("data-terminal").await.unwrap().as_deref(),
        Some(TERMINAL)
    );
    shoot(&m, "merchant-fleet-en").await;
    open(
        &m,
        &base,
        &format!("/console/merchants/{MERCHANT}"),
        "html[lang=\"en\"] table.terminals",
    )
    .await;
    shoot(&m, "merchant-own-shop-en").await;
    open(
        &m,
        &base,
        "/console/exceptions",
        "html[lang=\"en\"] main h1",
    )
    .await;
    shoot(&m, "merchant-exceptions-en").await;
    open(
        &m,
        &base,
        &format!("/console/merchants/{MERCHANT}/statement"),
        "html[lang=\"en\"] svg.chart",
    )
    .await;
    assert_eq!(text(&m, "dd[data-total=\"records\"]").await, "3");
    shoot(&m, "merchant-statement-en").await;
    for path in [
        format!("/console/merchants/{OTHER_MERCHANT}"),
        format!("/console/merchants/{OTHER_MERCHANT}/statement"),
    ] {
        open(&m, &base, &path, "h1[data-problem]").await;
        let problem = attr_of(&m, "h1[data-problem]", "data-problem").await;
        assert_eq!(problem.as_deref(), Some("not_found"), "{path}");
        assert!(!m.source().await.unwrap().contains("alert(1)"), "{path}");
    }
    shoot(&m, "merchant-other-not-found-en").await;
    m.close().await.unwrap();
}
