//! Decline reason codes: the one place they are defined.
//!
//! The reader protocol carries them as `u16`; the numbers are stable (never reuse or renumber one).

/// Why a menu, redemption or void was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeclineReason {
    CardUnknown,
    CardLost,
    CardFrozen,
    CardCancelled,
    /// Cancelled by a reissue (补卡): the member has a new card.
    CardReissued,
    /// The package's validity window has ended.
    Expired,
    NotYetValid,
    NotValidAtMerchant,
    DailyCapReached,
    InsufficientUses,
    IdentityRequired,
    IdentityWrong,
    IdentityLockedOut,
    /// The signed cache is past its expires-at: fail closed until the platform is reached.
    CacheExpired,
    /// This card has used its offline allowance since the last sync.
    CardOfflineLimitReached,
    /// This terminal has made its maximum number of offline redemptions since the last sync.
    TerminalOfflineLimitReached,
    /// The wall clock went backwards past the last trusted time or before the cache was issued.
    ClockNotTrusted,
    UnknownEntry,
    BadQuantity,
    VoidWindowPassed,
    AlreadyVoided,
    UnknownAuthCode,
    /// No signed cache has been installed yet.
    NoCache,
    /// The card number is not 12–19 digits.
    BadCardNumber,
    /// The card's cache entry changed between the menu and the redemption: show the menu again.
    MenuChanged,
    /// A stored row failed its MAC or consistency check: the store refuses to decide from it.
    IntegrityFailure,
    /// QUERY of a transaction this terminal has no outcome for (daemon level).
    TxnUnknown,
    /// REDEEM for a transaction id without a card presented first (daemon level).
    NoCard,
    /// A txn id reused with other content, or for a request its transaction cannot have
    /// (PROTOCOL.md §8.2; daemon level).
    TxnIdReused,
    /// Nothing could be recorded (database error): nothing was deducted.
    InternalError,
}

impl DeclineReason {
    pub const ALL: [DeclineReason; 30] = [
        Self::CardUnknown,
        Self::CardLost,
        Self::CardFrozen,
        Self::CardCancelled,
        Self::CardReissued,
        Self::Expired,
        Self::NotYetValid,
        Self::NotValidAtMerchant,
        Self::DailyCapReached,
        Self::InsufficientUses,
        Self::IdentityRequired,
        Self::IdentityWrong,
        Self::IdentityLockedOut,
        Self::CacheExpired,
        Self::CardOfflineLimitReached,
        Self::TerminalOfflineLimitReached,
        Self::ClockNotTrusted,
        Self::UnknownEntry,
        Self::BadQuantity,
        Self::VoidWindowPassed,
        Self::AlreadyVoided,
        Self::UnknownAuthCode,
        Self::NoCache,
        Self::BadCardNumber,
        Self::MenuChanged,
        Self::IntegrityFailure,
        Self::TxnUnknown,
        Self::NoCard,
        Self::TxnIdReused,
        Self::InternalError,
    ];

    /// The wire code (PROTOCOL.md §7.1): the protocol crate's table is the one list of numbers.
    pub fn code(self) -> u16 {
        use firmware_protocol::message::DeclineReason as W;
        let wire = match self {
            Self::CardUnknown => W::CARD_UNKNOWN,
            Self::CardLost => W::CARD_LOST,
            Self::CardFrozen => W::CARD_FROZEN,
            Self::CardCancelled => W::CARD_CANCELLED,
            Self::CardReissued => W::CARD_REISSUED,
            Self::Expired => W::EXPIRED,
            Self::NotYetValid => W::NOT_YET_VALID,
            Self::NotValidAtMerchant => W::NOT_VALID_HERE,
            Self::DailyCapReached => W::DAILY_CAP_REACHED,
            Self::InsufficientUses => W::NOT_ENOUGH_USES,
            Self::IdentityRequired => W::IDENTITY_REQUIRED,
            Self::IdentityWrong => W::IDENTITY_MISMATCH,
            Self::IdentityLockedOut => W::IDENTITY_LOCKED,
            Self::CacheExpired => W::CACHE_STALE,
            Self::CardOfflineLimitReached => W::CARD_OFFLINE_LIMIT,
            Self::TerminalOfflineLimitReached => W::TERMINAL_OFFLINE_LIMIT,
            Self::ClockNotTrusted => W::CLOCK_NOT_TRUSTED,
            Self::UnknownEntry => W::UNKNOWN_ENTRY,
            Self::BadQuantity => W::BAD_QUANTITY,
            Self::VoidWindowPassed => W::VOID_WINDOW_CLOSED,
            Self::AlreadyVoided => W::ALREADY_VOIDED,
            Self::UnknownAuthCode => W::ORIGINAL_NOT_FOUND,
            Self::NoCache => W::NO_DATA,
            Self::BadCardNumber => W::BAD_CARD_NUMBER,
            Self::MenuChanged => W::MENU_CHANGED,
            Self::IntegrityFailure => W::INTEGRITY_FAILURE,
            Self::TxnUnknown => W::TXN_UNKNOWN,
            Self::NoCard => W::NO_CARD,
            Self::TxnIdReused => W::TXN_ID_REUSED,
            Self::InternalError => W::STORAGE_FAILURE,
        };
        wire.0
    }

    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.code() == code)
    }

    /// Short text for the reader's screen.
    pub fn text_zh(self) -> &'static str {
        match self {
            Self::CardUnknown => "卡片未登记",
            Self::CardLost => "卡片已挂失",
            Self::CardFrozen => "卡片已冻结",
            Self::CardCancelled => "卡片已注销",
            Self::CardReissued => "卡片已补办，请用新卡",
            Self::Expired => "权益已过期",
            Self::NotYetValid => "权益尚未生效",
            Self::NotValidAtMerchant => "本店不可使用",
            Self::DailyCapReached => "已达当日上限",
            Self::InsufficientUses => "剩余次数不足",
            Self::IdentityRequired => "请验证身份",
            Self::IdentityWrong => "身份验证失败",
            Self::IdentityLockedOut => "验证次数过多，已锁定",
            Self::CacheExpired => "数据过期，请联网同步",
            Self::CardOfflineLimitReached => "本卡离线次数已满",
            Self::TerminalOfflineLimitReached => "终端离线笔数已满",
            Self::ClockNotTrusted => "终端时间异常",
            Self::UnknownEntry => "项目不存在",
            Self::BadQuantity => "数量无效",
            Self::VoidWindowPassed => "已超过撤销时限",
            Self::AlreadyVoided => "该笔已撤销",
            Self::UnknownAuthCode => "授权码无效",
            Self::NoCache => "未下载权益数据",
            Self::BadCardNumber => "卡号无效",
            Self::MenuChanged => "权益已更新，请重新刷卡",
            Self::IntegrityFailure => "数据校验失败，请联系客服",
            Self::TxnUnknown => "无此交易记录",
            Self::NoCard => "请先刷卡",
            Self::TxnIdReused => "交易号重复，请重新刷卡",
            Self::InternalError => "系统错误，未扣次数",
        }
    }

    pub fn text_en(self) -> &'static str {
        match self {
            Self::CardUnknown => "card not known",
            Self::CardLost => "card reported lost",
            Self::CardFrozen => "card frozen",
            Self::CardCancelled => "card cancelled",
            Self::CardReissued => "card reissued: use the new card",
            Self::Expired => "package expired",
            Self::NotYetValid => "package not yet valid",
            Self::NotValidAtMerchant => "not valid at this shop",
            Self::DailyCapReached => "daily limit reached",
            Self::InsufficientUses => "not enough uses left",
            Self::IdentityRequired => "identity confirmation required",
            Self::IdentityWrong => "identity confirmation failed",
            Self::IdentityLockedOut => "too many attempts, locked",
            Self::CacheExpired => "entitlement data expired, sync needed",
            Self::CardOfflineLimitReached => "card offline limit reached",
            Self::TerminalOfflineLimitReached => "terminal offline limit reached",
            Self::ClockNotTrusted => "terminal clock not trusted",
            Self::UnknownEntry => "unknown entry",
            Self::BadQuantity => "bad quantity",
            Self::VoidWindowPassed => "void window passed",
            Self::AlreadyVoided => "already voided",
            Self::UnknownAuthCode => "unknown authorization code",
            Self::NoCache => "no entitlement data installed",
            Self::BadCardNumber => "bad card number",
            Self::MenuChanged => "entitlements changed, swipe again",
            Self::IntegrityFailure => "data integrity failure, call support",
            Self::TxnUnknown => "no such transaction",
            Self::NoCard => "swipe the card first",
            Self::TxnIdReused => "transaction id reused, swipe again",
            Self::InternalError => "system error, nothing deducted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_roundtrip() {
        let mut seen = std::collections::HashSet::new();
        for r in DeclineReason::ALL {
            assert!(seen.insert(r.code()), "duplicate code {}", r.code());
            assert_eq!(DeclineReason::from_code(r.code()), Some(r));
        }
        assert_eq!(DeclineReason::from_code(0), None);
        assert_eq!(DeclineReason::CardLost.code(), 2);
        assert_eq!(DeclineReason::InternalError.code(), 20);
        // Every code has a name in the protocol's table (PROTOCOL.md §7.1).
        for r in DeclineReason::ALL {
            assert!(
                firmware_protocol::message::DeclineReason(r.code())
                    .name()
                    .is_some(),
                "{r:?}"
            );
        }
    }
}
