//! The console's two languages: Chinese (the platform's own) and English. A person's choice is a
//! cookie set by the language switch; without one the browser's `Accept-Language` decides, and
//! Chinese when it names neither. Every text of the pages is a [`T`], which has both translations by
//! construction (a text added with one only does not compile). Codes the platform's rules produce
//! (alerts, exceptions, card states) are named by [`code`]; a detail sentence from the rules stays as
//! the rules wrote it (English), after the translated name.

use axum::http::HeaderMap;

/// A language of the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Zh,
    En,
}

/// The cookie that keeps a person's choice.
pub const LANG_COOKIE: &str = "redeemd_lang";

impl Lang {
    pub fn tag(self) -> &'static str {
        match self {
            Lang::Zh => "zh",
            Lang::En => "en",
        }
    }

    pub fn parse(s: &str) -> Option<Lang> {
        match s {
            "zh" => Some(Lang::Zh),
            "en" => Some(Lang::En),
            _ => None,
        }
    }

    /// The other language (the switch's target).
    pub fn other(self) -> Lang {
        match self {
            Lang::Zh => Lang::En,
            Lang::En => Lang::Zh,
        }
    }

    /// The language of a request: the cookie, else the best of `Accept-Language`, else Chinese.
    pub fn of(headers: &HeaderMap) -> Lang {
        super::session::cookie(headers, LANG_COOKIE)
            .and_then(|v| Lang::parse(&v))
            .or_else(|| {
                headers
                    .get(axum::http::header::ACCEPT_LANGUAGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(accept_language)
            })
            .unwrap_or(Lang::Zh)
    }
}

/// The preferred of the two languages in an `Accept-Language` value (RFC 9110 §12.5.4): the highest
/// `q` among `zh…` and `en…` ranges; the earlier on a tie; `None` when neither is acceptable.
pub fn accept_language(value: &str) -> Option<Lang> {
    let mut best: Option<(u16, Lang)> = None;
    for range in value.split(',') {
        let mut parts = range.split(';');
        let tag = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        // No weight is 1; a malformed one counts as 0 (the range is ignored).
        let q = parts
            .find_map(|p| p.trim().strip_prefix("q="))
            .map_or(1000, |v| quality(v).unwrap_or(0));
        let lang = match tag.split('-').next() {
            Some("zh") => Lang::Zh,
            Some("en") => Lang::En,
            _ => continue,
        };
        if q > 0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((q, lang));
        }
    }
    best.map(|(_, l)| l)
}

/// A `q` value in thousandths (`0.8` → 800); `None` when malformed.
fn quality(s: &str) -> Option<u16> {
    let (whole, frac) = s.trim().split_once('.').unwrap_or((s.trim(), ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{frac:0<3}").parse::<u16>().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

macro_rules! texts {
    ($($name:ident => $zh:literal, $en:literal;)*) => {
        /// A text of the console, in both languages.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum T { $($name),* }

        impl T {
            pub fn in_(self, lang: Lang) -> &'static str {
                match (self, lang) {
                    $((T::$name, Lang::Zh) => $zh, (T::$name, Lang::En) => $en,)*
                }
            }
        }
    };
}

texts! {
    Brand => "会员卡平台", "Member-card platform";
    SwitchTo => "English", "中文";
    LogOut => "退出", "Log out";
    LogIn => "登录", "Log in";
    LoginTitle => "登录控制台", "Log in to the console";
    UserName => "用户名", "User name";
    Password => "密码", "Password";
    LoginHelp => "运营人员和商户使用平台为其创建的账号登录。", "Operators and merchants log in with the account the platform made for them.";
    Fleet => "终端状态", "Fleet";
    Cards => "会员卡", "Cards";
    Merchants => "商户", "Merchants";
    MyShop => "我的门店", "My shop";
    Statement => "结算单", "Statement";
    Exceptions => "异常", "Exceptions";
    Alerts => "告警", "Alerts";
    NoAlerts => "没有告警。", "No alerts.";
    Terminals => "终端", "Terminals";
    Terminal => "终端", "Terminal";
    NoTerminals => "还没有终端。", "No terminals yet.";
    Merchant => "商户", "Merchant";
    Enabled => "启用", "Enabled";
    Disabled => "已停用", "Disabled";
    LastReport => "最近上报", "Last report";
    Never => "从未", "never";
    Readers => "读卡器", "Readers";
    Cache => "缓存", "Cache";
    CacheExpires => "缓存到期", "Cache expires";
    Backlog => "待上传", "Backlog";
    Version => "版本", "Version";
    Kind => "类型", "Kind";
    Detail => "详情", "Detail";
    Disable => "停用", "Disable";
    Enable => "启用", "Enable";
    FindCard => "查找会员卡", "Find a card";
    CardNumber => "卡号", "Card number";
    CardNumberHelp => "后四位（5678）、前六位加后四位（622848******5678）或完整卡号", "last 4 digits (5678), first 6 and last 4 (622848******5678), or the whole number";
    Holder => "持卡人", "Holder";
    HolderHelp => "姓名开头", "start of the name";
    Search => "查找", "Search";
    Results => "查找结果", "Results";
    NoMatch => "没有找到会员卡。", "No card found.";
    MoreMatches => "结果过多，只显示前 50 张：请缩小范围。", "More than 50 cards match: only the first 50 are shown. Narrow the search.";
    IssueCard => "发卡", "Issue a card";
    Identity => "身份信息", "Identity data";
    IdentityHelp => "记名卡：如手机号后四位", "named cards: e.g. the phone's last four digits";
    Issue => "发卡", "Issue";
    Status => "状态", "Status";
    Anonymous => "不记名", "anonymous";
    IdentityOnFile => "已登记身份信息", "identity data on file";
    ReissuedTo => "已补卡至", "Reissued to";
    Packages => "套餐", "Packages";
    NoPackages => "还没有套餐。", "No packages yet.";
    Package => "套餐", "Package";
    Title => "名称", "Title";
    Validity => "有效期", "Validity";
    Scope => "适用范围", "Scope";
    EveryMerchant => "所有商户", "every merchant";
    DailyCap => "每日上限", "Daily cap";
    IdentityRequired => "需验证身份", "Identity check";
    Items => "项目", "Items";
    ServiceCode => "服务代码", "Service code";
    UsesLeft => "剩余", "Left";
    UsesTotal => "总次数", "Total uses";
    Used => "已用", "Used";
    Price => "单价（元）", "Price (yuan)";
    Customize => "定制套餐", "Customize a package";
    CustomizeAgain => "重新定制", "Customize again";
    CustomizeHelp => "使用已有套餐编号即重新定制该套餐（已用次数保留）。空行忽略。", "An existing package id redefines that package (uses so far are kept). Empty rows are left out.";
    ValidFrom => "生效日期", "Valid from";
    ValidUntil => "截止日期（含）", "Valid until (inclusive)";
    ScopeAll => "所有商户", "Every merchant";
    ScopeMerchants => "指定商户", "These merchants";
    ScopeCategories => "指定类别", "These categories";
    ScopeList => "商户编号或类别（逗号分隔）", "Merchant ids or categories (comma-separated)";
    Save => "保存", "Save";
    ReportLost => "挂失", "Report lost";
    Freeze => "冻结", "Freeze";
    Unlock => "解挂", "Unlock";
    Actions => "操作", "Actions";
    Usage => "使用记录", "Usage";
    NoUsage => "还没有使用记录。", "No use yet.";
    Time => "时间", "Time";
    Record => "记录", "Record";
    Quantity => "数量", "Quantity";
    Amount => "金额", "Amount";
    AuthCode => "授权码", "Authorization";
    MerchantId => "商户编号", "Merchant id";
    Name => "名称", "Name";
    CommissionBps => "佣金（基点，500 = 5%）", "Commission (basis points, 500 = 5 %)";
    Commission => "佣金", "Commission";
    Categories => "类别（逗号分隔）", "Categories (comma-separated)";
    CategoryList => "类别", "Categories";
    NewMerchant => "新增商户", "Add a merchant";
    EditMerchant => "修改商户", "Edit the merchant";
    NoMerchants => "还没有商户。", "No merchants yet.";
    EnrollTerminal => "接入终端", "Enroll a terminal";
    EnrollHelp => "生成一次性配对码（几分钟内有效，只能使用一次），由技术人员在门店电脑上运行：", "Make a one-time pairing code (valid a few minutes, works once); the technician runs on the shop PC:";
    TerminalIdOptional => "终端编号（可不填，自动生成）", "Terminal id (optional: one is drawn)";
    TtlMinutes => "有效分钟数（1–60，默认 10）", "Valid for minutes (1–60, default 10)";
    MakeCode => "生成配对码", "Make a pairing code";
    PairingCode => "配对码", "Pairing code";
    PairingCodes => "配对码记录", "Pairing codes";
    PairingShownOnce => "配对码只显示这一次，平台不保存明文。", "The code is shown this once: the platform keeps only its hash.";
    Expires => "到期", "Expires";
    CreatedBy => "创建人", "Created by";
    UsedAt => "使用时间", "Used";
    NotUsed => "未使用", "not used";
    NoCodes => "还没有配对码。", "No pairing codes yet.";
    Period => "期间", "Period";
    From => "从", "From";
    Until => "至（含）", "Until (inclusive)";
    Show => "显示", "Show";
    PayableRecords => "可付记录", "Payable records";
    Net => "净额", "Net";
    Payable => "应付", "Payable";
    Held => "暂扣", "Held";
    HeldRecords => "暂扣记录", "Held records";
    HeldHelp => "暂扣记录不计入应付金额，需人工处理。", "Held records are not in the payable figures: a person resolves them.";
    Claimed => "终端申报金额", "Claimed";
    Item => "项目", "Item";
    Redeemed => "核销", "Redeemed";
    Voided => "撤销", "Voided";
    NetUnits => "净次数", "Net units";
    NoRecords => "此期间没有记录。", "No records in this period.";
    ChartTitle => "每日核销次数（按项目）", "Units redeemed per day, by item";
    ChartHelp => "可付的核销记录；撤销和暂扣记录见表格。", "Payable redemption records; voids and held records are in the tables.";
    PerDay => "每日", "Per day";
    Day => "日期", "Day";
    Records => "记录数", "Records";
    OpenExceptions => "待处理", "To resolve";
    ResolvedExceptions => "已处理", "Resolved";
    NoOpen => "没有待处理的异常。", "Nothing to resolve.";
    NoneResolved => "还没有已处理的异常。", "Nothing resolved yet.";
    Seq => "序号", "Seq";
    Card => "会员卡", "Card";
    Occurrences => "次数", "Times";
    Resolve => "处理完毕", "Resolve";
    ResolveNote => "处理说明（做了什么决定）", "Note (what was decided)";
    ResolveHelp => "处理记录谁在何时做了什么决定；它不改变付款：暂扣记录仍不计入应付。", "Resolving records who decided what, and when; it does not change what is paid: a held record stays out of the payable figures.";
    ResolvedBy => "处理人", "Resolved by";
    ResolvedByUpload => "终端随后上传了该序号的正确记录", "a later upload stored the correct record for this seq";
    Note => "说明", "Note";
    NotFoundTitle => "未找到", "Not found";
    NotFoundText => "没有这个页面，或者您无权查看。", "There is no such page, or it is not yours to see.";
    ForbiddenTitle => "不允许", "Not allowed";
    ForbiddenText => "您的账号不能执行此操作。", "Your account may not do this.";
    CsrfTitle => "表单已失效", "This form has expired";
    CsrfText => "表单缺少有效的安全令牌（CSRF），未做任何更改。请刷新页面后重试。", "The form did not carry a valid security token (CSRF): nothing was changed. Reload the page and try again.";
    ConflictTitle => "无法执行", "Not possible now";
    InvalidTitle => "请更正以下内容", "Please correct";
    TooManyTitle => "尝试次数过多", "Too many attempts";
    InternalTitle => "服务器错误", "Server error";
    InternalText => "出错了，没有保存任何更改。请稍后再试。", "Something went wrong; nothing was saved. Try again later.";
    BadLogin => "用户名或密码错误。", "Wrong name or password.";
    Back => "返回", "Back";
    DoneSaved => "已保存。", "Saved.";
    DoneLost => "已挂失：各门店下次同步后将拒绝此卡。", "Reported lost: every shop refuses the card after its next sync.";
    DoneUnlocked => "已解挂。", "Unlocked.";
    DoneFrozen => "已冻结。", "Frozen.";
    DoneDisabled => "终端已停用。", "Terminal disabled.";
    DoneEnabled => "终端已启用。", "Terminal enabled.";
    DoneResolved => "异常已处理。", "Exception resolved.";
    DoneIssued => "已发卡。", "Card issued.";
    Yes => "是", "yes";
    No => "否", "no";
    None_ => "无", "none";
    RunOnShopPc => "在门店电脑上运行", "Run on the shop PC";
}

/// The name of a code of the platform's rules (alert kinds, exception codes, card states, reader
/// links), or the code itself when the console does not know it.
pub fn code(code: &str, lang: Lang) -> String {
    let (zh, en) = match code {
        "silent" => ("终端失联", "terminal silent"),
        "reader_down" => ("读卡器断开", "reader down"),
        "cache_expiring" => ("缓存即将过期", "cache expiring"),
        "uploads_halted" => ("上传已停止", "uploads halted"),
        "close_mismatched" => ("日结不符", "close mismatched"),
        "amount_held" => ("有暂扣金额", "amount held"),
        "active" => ("正常", "active"),
        "enabled" => ("启用", "enabled"),
        "disabled" => ("已停用", "disabled"),
        "lost" => ("已挂失", "lost"),
        "frozen" => ("已冻结", "frozen"),
        "cancelled" => ("已注销", "cancelled"),
        "link_up" => ("已连接", "linked"),
        "opening" => ("正在打开", "opening"),
        "port_error" => ("端口错误", "port error"),
        "waiting_for_reader" => ("等待读卡器", "waiting for the reader"),
        "record_malformed" => ("记录无法解析", "record malformed"),
        "record_mismatch" => ("记录与信封不符", "record mismatch"),
        "record_mac_invalid" => ("记录校验失败", "record MAC invalid"),
        "chain_broken" => ("记录链断裂", "journal chain broken"),
        "merchant_mismatch" => ("商户不符", "merchant mismatch"),
        "amount_mismatch" => ("金额与签约价不符", "amount not the signed price"),
        "unknown_card" => ("未知会员卡", "unknown card"),
        "unknown_entitlement" => ("未知权益", "unknown entitlement"),
        "void_unmatched" => ("撤销无对应核销", "void without its redemption"),
        "redeemed_while_lost" => ("挂失后核销", "redeemed while lost"),
        "redeemed_while_frozen" => ("冻结后核销", "redeemed while frozen"),
        "redeemed_while_cancelled" => ("注销后核销", "redeemed while cancelled"),
        "over_redeemed" => ("超额核销", "over-redeemed"),
        "redeem" => ("核销", "redemption"),
        "void" => ("撤销", "void"),
        other => return other.to_owned(),
    };
    match lang {
        Lang::Zh => zh.to_owned(),
        Lang::En => en.to_owned(),
    }
}

/// The label of a form field a refusal names (`items[1].uses_total` → "项目 2: 总次数"), for the
/// message beside it.
pub fn field_label(field: &str, lang: Lang) -> String {
    if let Some(rest) = field.strip_prefix("items[")
        && let Some((n, sub)) = rest.split_once("].")
        && let Ok(n) = n.parse::<usize>()
    {
        return format!(
            "{} {}: {}",
            T::Items.in_(lang),
            n + 1,
            field_label(sub, lang)
        );
    }
    let t = match field.split(['[', '.']).next().unwrap_or(field) {
        "number" => T::CardNumber,
        "holder" => T::Holder,
        "identity" => T::Identity,
        "package_id" => T::Package,
        "title" => T::Title,
        "valid_from" => T::ValidFrom,
        "valid_until" => T::ValidUntil,
        "scope" => T::Scope,
        "daily_cap" => T::DailyCap,
        "items" => T::Items,
        "service_code" => T::ServiceCode,
        "uses_total" => T::UsesTotal,
        "price" | "price_fen" => T::Price,
        "merchant_id" => T::MerchantId,
        "name" => T::Name,
        "commission_bps" => T::CommissionBps,
        "categories" => T::Categories,
        "terminal_id" => T::Terminal,
        "ttl_minutes" => T::TtlMinutes,
        "from" => T::From,
        "until" => T::Until,
        "note" => T::Note,
        "password" => T::Password,
        _ => return field.to_owned(),
    };
    t.in_(lang).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_language_picks_the_preferred_of_the_two() {
        assert_eq!(accept_language("zh-CN,zh;q=0.9,en;q=0.8"), Some(Lang::Zh));
        assert_eq!(accept_language("en-US,en;q=0.9"), Some(Lang::En));
        assert_eq!(accept_language("fr, en;q=0.5, zh;q=0.7"), Some(Lang::Zh));
        assert_eq!(accept_language("de, zh;q=0, en;q=0.1"), Some(Lang::En));
        assert_eq!(accept_language("fr-FR, de"), None);
        assert_eq!(accept_language("en;q=2, zh;q=0.3"), Some(Lang::Zh));
        assert_eq!(accept_language(""), None);
    }

    #[test]
    fn fields_are_named_in_the_reader_s_language() {
        assert_eq!(
            field_label("items[1].uses_total", Lang::En),
            "Items 2: Total uses"
        );
        assert_eq!(
            field_label("items[0].price", Lang::Zh),
            "项目 1: 单价（元）"
        );
        assert_eq!(field_label("valid_until", Lang::Zh), "截止日期（含）");
        assert_eq!(field_label("scope.merchants[0]", Lang::En), "Scope");
        assert_eq!(field_label("mystery", Lang::En), "mystery");
        assert_eq!(code("reader_down", Lang::Zh), "读卡器断开");
        assert_eq!(code("new_code", Lang::Zh), "new_code");
    }
}
