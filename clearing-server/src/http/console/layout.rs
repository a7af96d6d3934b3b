//! The frame every console page shares — head, navigation by role, language switch, log-out form — and
//! the small pieces pages are made of: money, times, a card's state, form fields with the message of a
//! refused value beside them. Everything is rendered by `maud`, which escapes every value.

use std::collections::BTreeMap;

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::i18n::{Lang, T, code, field_label};
use super::session::{FormData, Viewer};
use crate::core::problem::Problem;

/// The stylesheet (`/console/static/console.css`): plain CSS, no build step.
pub const CSS: &str = include_str!("console.css");

fn head(lang: Lang, title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · " (T::Brand.in_(lang)) }
            link rel="stylesheet" href="/console/static/console.css";
        }
    }
}

/// A page without a session (login, refusals before one).
pub fn bare(lang: Lang, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang=(lang.tag()) {
            (head(lang, title))
            body.bare {
                header.top {
                    span.brand { (T::Brand.in_(lang)) }
                    nav.tools {
                        a.lang href=(format!("/console/lang/{}?next=/console/login", lang.other().tag())) lang=(lang.other().tag()) {
                            (T::SwitchTo.in_(lang))
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// Which section of the navigation a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Fleet,
    Cards,
    Merchants,
    Statement,
    Exceptions,
    None,
}

/// A page of a logged-in person: the navigation their role has, the language switch, log out.
pub fn frame(v: &Viewer, section: Section, title: &str, body: Markup) -> Markup {
    let lang = v.lang;
    let mut links: Vec<(Section, String, T)> =
        vec![(Section::Fleet, "/console/fleet".into(), T::Fleet)];
    match v.own_merchant() {
        None => links.extend([
            (Section::Cards, "/console/cards".into(), T::Cards),
            (
                Section::Merchants,
                "/console/merchants".into(),
                T::Merchants,
            ),
        ]),
        Some(m) => {
            let m = urlencode(m);
            links.extend([
                (
                    Section::Merchants,
                    format!("/console/merchants/{m}"),
                    T::MyShop,
                ),
                (
                    Section::Statement,
                    format!("/console/merchants/{m}/statement"),
                    T::Statement,
                ),
            ]);
        }
    }
    links.push((
        Section::Exceptions,
        "/console/exceptions".into(),
        T::Exceptions,
    ));
    let switch = format!(
        "/console/lang/{}?{}",
        lang.other().tag(),
        serde_urlencoded::to_string([("next", v.here.as_str())]).unwrap_or_default()
    );
    html! {
        (DOCTYPE)
        html lang=(lang.tag()) {
            (head(lang, title))
            body {
                header.top {
                    a.brand href="/console/" { (T::Brand.in_(lang)) }
                    nav.main {
                        @for (s, href, t) in &links {
                            a href=(href) aria-current=[(*s == section).then_some("page")] { (t.in_(lang)) }
                        }
                    }
                    nav.tools {
                        span.who data-role=(v.caller.who.role.as_str()) { (v.caller.user_name) }
                        a.lang href=(switch) lang=(lang.other().tag()) { (T::SwitchTo.in_(lang)) }
                        form.inline method="post" action="/console/logout" {
                            (csrf(v))
                            button.link type="submit" { (T::LogOut.in_(lang)) }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The hidden CSRF field every form of a session carries.
pub fn csrf(v: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(v.caller.csrf); }
}

/// A path segment, percent-encoded.
pub fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .unwrap_or_default()
        .trim_start_matches('=')
        .replace('+', "%20")
}

/// Fen as yuan: `¥1,234.50`.
pub fn money(fen: impl Into<i128>) -> String {
    let fen: i128 = fen.into();
    let sign = if fen < 0 { "-" } else { "" };
    let abs = fen.unsigned_abs();
    let yuan = (abs / 100).to_string();
    let mut grouped = String::new();
    for (i, c) in yuan.chars().enumerate() {
        if i > 0 && (yuan.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{sign}¥{grouped}.{:02}", abs % 100)
}

fn cst(ms: i64) -> Option<time::OffsetDateTime> {
    let offset = time::UtcOffset::from_hms(8, 0, 0).ok()?;
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .map(|t| t.to_offset(offset))
}

/// A time in China Standard Time, to the minute: `2026-12-05 14:03`.
pub fn when(ms: i64) -> String {
    cst(ms).map_or_else(
        || ms.to_string(),
        |t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute()
            )
        },
    )
}

/// The business day (China Standard Time) of a time: `2026-12-05`.
pub fn day(ms: i64) -> String {
    cst(ms).map_or_else(
        || ms.to_string(),
        |t| format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()),
    )
}

/// A `<time>` element.
pub fn time_el(ms: i64) -> Markup {
    html! { time datetime=(crate::core::cards::rfc3339(ms)) { (when(ms)) } }
}

/// A card's or a terminal's state as a badge.
pub fn badge(lang: Lang, state: &str) -> Markup {
    html! { span class=(format!("badge {state}")) data-state=(state) { (code(state, lang)) } }
}

/// A form that was refused: what was entered, and the message per field (or for the whole form).
#[derive(Debug, Default)]
pub struct Entered {
    values: BTreeMap<String, String>,
    errors: BTreeMap<String, String>,
    general: Option<String>,
}

/// The console's name of a field the platform's rules named (`items[1].price_fen` → `items[1].price`,
/// `scope.merchants[0]` → `scope`, `categories[2]` → `categories`).
pub fn form_field(api_field: &str) -> String {
    if api_field.starts_with("scope") {
        return "scope".into();
    }
    if api_field.starts_with("categories") {
        return "categories".into();
    }
    api_field
        .strip_suffix("_fen")
        .unwrap_or(api_field)
        .to_owned()
}

impl Entered {
    /// The form as sent, with the refusal placed at its field.
    pub fn refused(form: &FormData, p: &Problem, lang: Lang) -> Entered {
        let mut e = Entered::shown(form);
        e.note(p, lang);
        e
    }

    /// A form shown with these values and no refusal (prefilled, or kept after a search).
    pub fn shown(form: &FormData) -> Entered {
        Entered {
            values: form
                .values()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ..Entered::default()
        }
    }

    /// Places a refusal: at its field, or for the whole form.
    pub fn note(&mut self, p: &Problem, lang: Lang) {
        match p.field() {
            Some(f) => {
                self.errors.insert(
                    form_field(f),
                    format!("{}: {}", field_label(f, lang), p.detail),
                );
            }
            None => self.general = Some(p.detail.clone()),
        }
    }

    pub fn value<'a>(&'a self, name: &str, default: &'a str) -> &'a str {
        self.values.get(name).map_or(default, String::as_str)
    }

    pub fn checked(&self, name: &str, default: bool) -> bool {
        if self.values.is_empty() {
            default
        } else {
            self.values.contains_key(name)
        }
    }

    pub fn error(&self, name: &str) -> Option<&str> {
        self.errors.get(name).map(String::as_str)
    }

    /// Whether the form was sent and refused.
    pub fn is_refused(&self) -> bool {
        !self.errors.is_empty() || self.general.is_some()
    }

    /// The message for the whole form, at its top.
    pub fn general(&self, lang: Lang) -> Markup {
        html! {
            @if let Some(g) = &self.general {
                p.error role="alert" data-problem="form" { (T::InvalidTitle.in_(lang)) ": " (g) }
            }
            @else if !self.errors.is_empty() {
                p.error role="alert" data-problem="form" { (T::InvalidTitle.in_(lang)) }
            }
        }
    }
}

/// How an input is drawn.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    Text,
    Number,
    Date,
    Hidden,
    /// A text with a hint shown under it.
    Hint(&'a str),
}

/// A labelled input with its entered value and, if refused, the message naming it.
pub fn field(
    entered: &Entered,
    name: &str,
    label: &str,
    input: Input<'_>,
    default: &str,
    extra: &str,
) -> Markup {
    let value = entered.value(name, default);
    let error = entered.error(name);
    let kind = match input {
        Input::Number => "number",
        Input::Date => "date",
        Input::Hidden => "hidden",
        Input::Text | Input::Hint(_) => "text",
    };
    if matches!(input, Input::Hidden) {
        return html! { input type="hidden" name=(name) value=(value); };
    }
    html! {
        label.field data-field=(name) {
            span.label { (label) }
            input type=(kind) name=(name) value=(value) aria-invalid=[error.map(|_| "true")]
                inputmode=[matches!(input, Input::Number).then_some("numeric")]
                placeholder=[(!extra.is_empty()).then_some(extra)];
            @if let Input::Hint(h) = input { small.hint { (h) } }
            @if let Some(e) = error { span.field-error role="alert" data-error-for=(name) { (e) } }
        }
    }
}

/// A detail sentence of the platform's rules, in a paragraph (kept in the language the rules wrote).
pub fn detail(s: &str) -> Markup {
    html! { span.detail { (s) } }
}

/// An empty-state line.
pub fn empty(text: &str) -> Markup {
    html! { p.empty { (text) } }
}

/// A success line after a change (`?done=…` of the redirect).
pub fn done(text: Option<&str>) -> Markup {
    html! { @if let Some(t) = text { p.done role="status" data-done { (t) } } }
}

/// `PreEscaped` for the chart's numbers (never for text from a request).
pub fn number(x: f64) -> PreEscaped<String> {
    PreEscaped(format!("{x:.1}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_and_times_read_as_a_person_writes_them() {
        assert_eq!(money(0), "¥0.00");
        assert_eq!(money(350_050), "¥3,500.50");
        assert_eq!(money(-12_345_678_901_i64), "-¥123,456,789.01");
        // 2026-12-05T06:03:00Z is 14:03 in China Standard Time.
        assert_eq!(when(1_796_450_580_000), "2026-12-05 14:03");
        assert_eq!(day(1_796_450_580_000), "2026-12-05");
        assert_eq!(urlencode("M 1/é"), "M%201%2F%C3%A9");
        assert_eq!(form_field("items[1].price_fen"), "items[1].price");
        assert_eq!(form_field("scope.merchants[0]"), "scope");
    }
}
