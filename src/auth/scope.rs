//! The scope grammar of AUTH.md §4 as one pure function, `has_scope`, plus the method catalog's
//! required scopes (METHODS.md §0–2). Tested exhaustively over every method name.

/// The 14 typed scopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    RunRead,
    RunWrite,
    RunAdmin,
    ApprovalSubmit,
    SignalSubmit,
    CronRead,
    CronWrite,
    AccountRead,
    MemoryRead,
    PromptRead,
    ScoreRead,
    TicketRead,
    TicketWrite,
    ObservabilityRead,
}

impl Scope {
    pub const ALL: [Scope; 14] = [
        Scope::RunRead,
        Scope::RunWrite,
        Scope::RunAdmin,
        Scope::ApprovalSubmit,
        Scope::SignalSubmit,
        Scope::CronRead,
        Scope::CronWrite,
        Scope::AccountRead,
        Scope::MemoryRead,
        Scope::PromptRead,
        Scope::ScoreRead,
        Scope::TicketRead,
        Scope::TicketWrite,
        Scope::ObservabilityRead,
    ];

    /// The scope as written (`run:read`).
    pub fn as_str(self) -> &'static str {
        todo!("helper {self:?}")
    }

    pub fn parse(text: &str) -> Option<Scope> {
        todo!("helper {text}")
    }
}

/// The 44 v1 method names plus `health` (METHODS.md §1).
pub const V1_METHODS: &[&str] = &[];
/// The legacy names of METHODS.md §2, including route-only `listNodeStates` and `retryTask` and
/// the handler-less `approve`.
pub const LEGACY_METHODS: &[&str] = &[];

/// The catalog scope of a method name as sent, `None` when the name is not in the catalog.
pub fn catalog_scope(method: &str) -> Option<Scope> {
    todo!("helper {method}")
}

/// The scope a call needs: the catalog scope, else `run:admin` for `config.*`, `run:write` for
/// names starting `oneshotMonitor`, else `run:read`.
pub fn required_scope(method: &str) -> Scope {
    todo!("helper {method}")
}

/// AUTH.md §4: whether any granted entry grants `required` for a call of `method` (name as sent).
pub fn has_scope(granted: &[String], required: Scope, method: &str) -> bool {
    todo!("helper {} {required:?} {method}", granted.len())
}
