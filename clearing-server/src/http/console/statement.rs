//! A merchant's statement for a period (the last 30 days unless asked): what is payable — per package
//! and item, net of voids, commission on the net — and what is held apart for a person, then the same
//! per business day, with a chart of the units redeemed per day and per item. The chart is SVG drawn
//! here from `crate::core::chart`'s geometry; every bar segment carries its day, item and units as
//! data attributes, so what it shows can be checked against the records.

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use maud::{Markup, html};

use super::i18n::{T, code};
use super::layout::{self, Entered, Input, Section, day, empty, field, money, number};
use super::session::{FormData, Viewer};
use super::{problem_page, respond, run};
use crate::core::cards::day_start;
use crate::core::chart::{self, Counts, HEIGHT, Layout, WIDTH};
use crate::core::clearing::MerchantStatement;
use crate::http::AppState;
use crate::http::platform::{PeriodQuery, query};
use crate::service::merchants::MerchantView;

/// Days shown when no period is asked for.
const DEFAULT_DAYS: i64 = 30;

struct Shown {
    merchant: MerchantView,
    period: MerchantStatement,
    daily: Vec<MerchantStatement>,
}

pub(super) async fn page(
    State(state): State<AppState>,
    v: Viewer,
    Path(id): Path<String>,
    uri: Uri,
) -> Response {
    let q = query::<PeriodQuery>(&uri).unwrap_or_default();
    let today = day(v.now_ms);
    let from = q
        .from
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| day(v.now_ms - (DEFAULT_DAYS - 1) * 86_400_000));
    let until = q.until.filter(|s| !s.trim().is_empty()).unwrap_or(today);
    let mut asked = FormData::default();
    asked.push("from", &from);
    asked.push("until", &until);
    let (f, u) = (from.clone(), until.clone());
    let shown = run(&state, &v, move |s| {
        let window = crate::service::window(Some(f.trim()), Some(u.trim()))?;
        Ok((
            window,
            Shown {
                merchant: s.merchant(&id)?,
                period: s.merchant_statement(&id, window)?.0,
                daily: s.merchant_daily(&id, window)?,
            },
        ))
    })
    .await;
    match shown {
        Ok((window, s)) => respond(
            StatusCode::OK,
            layout::frame(
                &v,
                Section::Statement,
                v.t(T::Statement),
                body(&v, &Entered::shown(&asked), window, &s),
            ),
        ),
        Err(p) if p.status == 422 => {
            // A period the platform refuses: the form again, with the reason at its field.
            let e = Entered::refused(&asked, &p, v.lang);
            let form = period_form(&v, uri.path(), &e);
            respond(
                StatusCode::UNPROCESSABLE_ENTITY,
                layout::frame(
                    &v,
                    Section::Statement,
                    v.t(T::Statement),
                    html! { h1 { (v.t(T::Statement)) } (form) },
                ),
            )
        }
        Err(p) => problem_page(v.lang, Some(&v), &p),
    }
}

fn period_form(v: &Viewer, action: &str, e: &Entered) -> Markup {
    html! {
        form.grid.period method="get" action=(action) {
            (e.general(v.lang))
            (field(e, "from", v.t(T::From), Input::Date, "", ""))
            (field(e, "until", v.t(T::Until), Input::Date, "", ""))
            div.actions { button type="submit" { (v.t(T::Show)) } }
        }
    }
}

fn body(v: &Viewer, asked: &Entered, (from, until): (i64, i64), s: &Shown) -> Markup {
    let lang = v.lang;
    let p = &s.period;
    let first = day_start(from);
    let days = usize::try_from((until - first + 86_399_999) / 86_400_000).unwrap_or(0);
    let counts = chart::redemptions_per_day(&s.daily, first, days, day);
    let path = format!(
        "/console/merchants/{}/statement",
        layout::urlencode(&s.merchant.merchant_id)
    );
    html! {
        h1 { (v.t(T::Statement)) " · " span data-merchant-name { (s.merchant.name) } }
        (period_form(v, &path, asked))
        p.summary data-period=(format!("{}..{}", day(from), day(until.saturating_sub(1)))) {
            (v.t(T::Period)) ": " (day(from)) " – " (day(until.saturating_sub(1)))
        }
        section #totals {
            dl.totals {
                dt { (v.t(T::PayableRecords)) } dd data-total="records" { (p.records) }
                dt { (v.t(T::Net)) } dd data-total="net" { (money(p.net_amount_fen)) }
                dt { (v.t(T::Commission)) " (" (p.commission_bps) " bps)" } dd data-total="commission" { (money(p.commission_fen)) }
                dt { (v.t(T::Payable)) } dd.payable data-total="payable" { (money(p.payable_fen)) }
                dt { (v.t(T::HeldRecords)) } dd data-total="held" { (p.held_records) " · " (money(p.held_claimed_fen)) }
            }
        }
        section #chart {
            h2 #chart-title { (v.t(T::ChartTitle)) }
            p.help { (v.t(T::ChartHelp)) }
            (svg(v, &counts, &chart::layout(&counts)))
            ul.legend {
                @for s in &counts.series {
                    li data-item=(s.key) data-total=(s.total) {
                        svg.swatch viewBox="0 0 10 10" width="12" height="12" aria-hidden="true" { rect width="10" height="10" fill=(s.colour) {} }
                        " " (s.title) " " small { (s.key) } " · " (s.total)
                    }
                }
            }
        }
        section #lines {
            h2 { (v.t(T::Payable)) }
            @if p.lines.is_empty() { (empty(v.t(T::NoRecords))) }
            @else {
                div.table-wrap { table.lines {
                    thead { tr {
                        th { (v.t(T::Item)) } th { (v.t(T::Title)) } th.num { (v.t(T::Redeemed)) } th.num { (v.t(T::Voided)) }
                        th.num { (v.t(T::NetUnits)) } th.num { (v.t(T::Net)) }
                    } }
                    tbody {
                        @for l in &p.lines {
                            tr data-item=(format!("{}/{}", l.package_id, l.service_code)) {
                                td { (l.package_id) "/" (l.service_code) } td { (l.title) }
                                td.num data-redeemed { (l.redeemed) } td.num { (l.voided) } td.num { (l.net_units) } td.num { (money(l.net_amount_fen)) }
                            }
                        }
                    }
                } }
            }
        }
        section #held {
            h2 { (v.t(T::Held)) }
            p.help { (v.t(T::HeldHelp)) }
            @if p.held.is_empty() { (empty(v.t(T::None_))) }
            @else {
                div.table-wrap { table.held {
                    thead { tr { th { (v.t(T::Kind)) } th.num { (v.t(T::Records)) } th.num { (v.t(T::Claimed)) } } }
                    tbody { @for h in &p.held { tr data-held=(h.code) { td { (code(&h.code, lang)) } td.num { (h.records) } td.num { (money(h.claimed_fen)) } } } }
                } }
            }
        }
        section #daily {
            h2 { (v.t(T::PerDay)) }
            @if s.daily.is_empty() { (empty(v.t(T::NoRecords))) }
            @else {
                div.table-wrap { table.daily {
                    thead { tr {
                        th { (v.t(T::Day)) } th.num { (v.t(T::Records)) } th.num { (v.t(T::Net)) } th.num { (v.t(T::Commission)) }
                        th.num { (v.t(T::Payable)) } th.num { (v.t(T::HeldRecords)) }
                    } }
                    tbody {
                        @for d in &s.daily {
                            tr data-day=(day(d.from_ms)) {
                                td { (day(d.from_ms)) } td.num { (d.records) } td.num { (money(d.net_amount_fen)) }
                                td.num { (money(d.commission_fen)) } td.num { (money(d.payable_fen)) } td.num { (d.held_records) }
                            }
                        }
                    }
                } }
            }
        }
    }
}

/// The chart: gridlines with their units, one stacked bar per day, the totals above, the days under.
fn svg(v: &Viewer, counts: &Counts, l: &Layout) -> Markup {
    html! {
        svg.chart viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-labelledby="chart-title" data-days=(counts.days.len()) {
            g.grid {
                @for t in &l.ticks {
                    line x1=(number(l.left)) x2=(number(l.right)) y1=(number(t.y)) y2=(number(t.y)) {}
                    text.tick x=(number(l.left - 6.0)) y=(number(t.y + 4.0)) text-anchor="end" data-units=(t.units) { (t.units) }
                }
            }
            @for b in &l.bars {
                g.bar data-day=(b.day) data-total=(b.total) {
                    @for s in &b.segments {
                        @let series = &counts.series[s.series];
                        rect.seg x=(number(b.x)) y=(number(s.y)) width=(number(b.width)) height=(number(s.height))
                            fill=(series.colour) data-item=(series.key) data-units=(s.units) {
                            title { (b.day) " · " (series.title) " (" (series.key) "): " (s.units) }
                        }
                    }
                    @if let Some(y) = b.total_y {
                        text.total x=(number(b.x + b.width / 2.0)) y=(number(y)) text-anchor="middle" { (b.total) }
                    }
                    @if b.labelled {
                        text.day x=(number(b.x + b.width / 2.0)) y=(number(l.baseline + 16.0)) text-anchor="middle" {
                            (b.day.get(5..).unwrap_or(&b.day))
                        }
                    }
                }
            }
            line.axis x1=(number(l.left)) x2=(number(l.right)) y1=(number(l.baseline)) y2=(number(l.baseline)) {}
        }
        @if counts.series.is_empty() { (empty(v.t(T::NoRecords))) }
    }
}
