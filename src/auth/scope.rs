//! The scope grammar of AUTH.md §4 as one pure function, `has_scope`, plus the method catalog's
//! required scopes (METHODS.md §0–2). Tested exhaustively over every method name.
//!
//! Owns: the catalog table (method name as sent → typed scope), the rank order inside a scope
//! family, and the legacy ranks `read`/`execute`/`approve`/`admin`.
//! Must never: grant across families (`run:admin` does not give `observability:read`), let a
//! method-name grant reach beyond that method's own catalog scope, or panic on any input.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

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
        match self {
            Scope::RunRead => "run:read",
            Scope::RunWrite => "run:write",
            Scope::RunAdmin => "run:admin",
            Scope::ApprovalSubmit => "approval:submit",
            Scope::SignalSubmit => "signal:submit",
            Scope::CronRead => "cron:read",
            Scope::CronWrite => "cron:write",
            Scope::AccountRead => "account:read",
            Scope::MemoryRead => "memory:read",
            Scope::PromptRead => "prompt:read",
            Scope::ScoreRead => "score:read",
            Scope::TicketRead => "ticket:read",
            Scope::TicketWrite => "ticket:write",
            Scope::ObservabilityRead => "observability:read",
        }
    }

    /// Exact, case-sensitive parse of a typed scope (the reference compares strings exactly).
    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == text)
    }

    /// AUTH.md §4 rule 3: "same scope; or same family with higher rank: `run:admin` ⊃ `run:write` ⊃
    /// `run:read`; `cron:write` ⊃ `cron:read`; `ticket:write` ⊃ `ticket:read`. No cross-family
    /// implication."
    pub fn implies(self, required: Scope) -> bool {
        use Scope::*;
        self == required
            || matches!(
                (self, required),
                (RunAdmin, RunWrite)
                    | (RunAdmin, RunRead)
                    | (RunWrite, RunRead)
                    | (CronWrite, CronRead)
                    | (TicketWrite, TicketRead)
            )
    }
}

/// The 44 v1 method names plus `health` (METHODS.md §1), with their catalog scopes.
const V1_CATALOG: &[(&str, Scope)] = &[
    ("health", Scope::RunRead),
    ("launchRun", Scope::RunWrite),
    ("resumeRun", Scope::RunWrite),
    ("cancelRun", Scope::RunWrite),
    ("pauseRun", Scope::RunWrite),
    ("hijackRun", Scope::RunAdmin),
    ("rewindRun", Scope::RunAdmin),
    ("submitApproval", Scope::ApprovalSubmit),
    ("submitSignal", Scope::SignalSubmit),
    ("getRun", Scope::RunRead),
    ("listRunTokenUsage", Scope::RunRead),
    ("listRuns", Scope::RunRead),
    ("listRunDescendants", Scope::RunRead),
    ("getSchemaSignature", Scope::RunRead),
    ("listWorkflows", Scope::RunRead),
    ("listApprovals", Scope::RunRead),
    ("listDocs", Scope::RunRead),
    ("streamRunEvents", Scope::RunRead),
    ("streamDevTools", Scope::ObservabilityRead),
    ("getDevToolsSnapshot", Scope::ObservabilityRead),
    ("getNodeOutput", Scope::RunRead),
    ("getNodeDiff", Scope::RunRead),
    ("getRunDiff", Scope::RunRead),
    ("whatHappened", Scope::RunRead),
    ("cronList", Scope::CronRead),
    ("cronCreate", Scope::CronWrite),
    ("cronDelete", Scope::CronWrite),
    ("cronRun", Scope::CronWrite),
    ("listAccounts", Scope::AccountRead),
    ("listUsageReports", Scope::AccountRead),
    ("listMemoryFacts", Scope::MemoryRead),
    ("listPrompts", Scope::PromptRead),
    ("listScores", Scope::ScoreRead),
    ("listScoresForRuns", Scope::ScoreRead),
    ("getScoreDetail", Scope::ScoreRead),
    ("listTickets", Scope::TicketRead),
    ("createTicket", Scope::TicketWrite),
    ("updateTicket", Scope::TicketWrite),
    ("deleteTicket", Scope::TicketWrite),
    ("createBrowserSession", Scope::RunWrite),
    ("browserAct", Scope::RunWrite),
    ("browserContext", Scope::RunRead),
    ("browserPick", Scope::RunRead),
    ("closeBrowserSession", Scope::RunWrite),
    ("listBrowserSessions", Scope::RunRead),
];

/// The legacy names of METHODS.md §2 with their scope entries.
const LEGACY_CATALOG: &[(&str, Scope)] = &[
    ("runs.create", Scope::RunWrite),
    ("runs.get", Scope::RunRead),
    ("runs.list", Scope::RunRead),
    ("runs.descendants", Scope::RunRead),
    ("runs.cancel", Scope::RunWrite),
    ("runs.pause", Scope::RunWrite),
    ("approvals.decide", Scope::ApprovalSubmit),
    ("approvals.list", Scope::RunRead),
    ("workflows.list", Scope::RunRead),
    ("signals.send", Scope::SignalSubmit),
    ("jumpToFrame", Scope::RunAdmin),
    ("devtools.jumpToFrame", Scope::RunAdmin),
    ("devtools.getNodeOutput", Scope::RunRead),
    ("devtools.getNodeDiff", Scope::RunRead),
    ("cron.list", Scope::CronRead),
    ("cron.add", Scope::CronWrite),
    ("cron.remove", Scope::CronWrite),
    ("cron.trigger", Scope::CronWrite),
    ("runs.rerun", Scope::RunWrite),
    ("runs.diff", Scope::RunRead),
    ("frames.list", Scope::RunRead),
    ("frames.get", Scope::RunRead),
    ("attempts.list", Scope::RunRead),
    ("attempts.get", Scope::RunRead),
    ("listNodeStates", Scope::RunRead),
    ("retryTask", Scope::RunWrite),
    // No handler (METHOD_NOT_FOUND), but the reference keeps a scope entry for it.
    ("approve", Scope::ApprovalSubmit),
];

// Evaluated only in const items, where an out-of-bounds index is a compile error, not a panic.
#[allow(clippy::indexing_slicing)]
const fn names<const N: usize>(table: &[(&'static str, Scope)]) -> [&'static str; N] {
    let mut out = [""; N];
    let mut i = 0;
    while i < N {
        out[i] = table[i].0;
        i += 1;
    }
    out
}

const V1_NAMES: [&str; 45] = names::<45>(V1_CATALOG);
const LEGACY_NAMES: [&str; 27] = names::<27>(LEGACY_CATALOG);
// The arrays above are built from the tables, so their lengths pin the table sizes at compile time.
const _: () = assert!(V1_CATALOG.len() == 45 && LEGACY_CATALOG.len() == 27);

/// The 44 v1 method names plus `health` (METHODS.md §1).
pub const V1_METHODS: &[&str] = &V1_NAMES;
/// The legacy names of METHODS.md §2, including route-only `listNodeStates` and `retryTask` and
/// the handler-less `approve`.
pub const LEGACY_METHODS: &[&str] = &LEGACY_NAMES;

/// The catalog scope of a method name as sent, `None` when the name is not in the catalog.
pub fn catalog_scope(method: &str) -> Option<Scope> {
    V1_CATALOG
        .iter()
        .chain(LEGACY_CATALOG)
        .find(|(name, _)| *name == method)
        .map(|(_, scope)| *scope)
}

/// The scope a call needs: the catalog scope, else `run:admin` for `config.*`, `run:write` for
/// names starting `oneshotMonitor`, else `run:read`.
pub fn required_scope(method: &str) -> Scope {
    if let Some(scope) = catalog_scope(method) {
        return scope;
    }
    if method.starts_with("config.") {
        Scope::RunAdmin
    } else if method.starts_with("oneshotMonitor") {
        Scope::RunWrite
    } else {
        Scope::RunRead
    }
}

/// AUTH.md §4 rule 5: the legacy ranks and the exact scope sets they grant.
fn legacy_rank_grants(rank: &str, required: Scope) -> Option<bool> {
    use Scope::*;
    let execute = matches!(
        required,
        RunRead | RunWrite | SignalSubmit | CronRead | CronWrite | TicketRead | TicketWrite
    );
    match rank {
        "read" => Some(matches!(
            required,
            RunRead
                | CronRead
                | AccountRead
                | MemoryRead
                | PromptRead
                | ScoreRead
                | TicketRead
                | ObservabilityRead
        )),
        "execute" => Some(execute),
        "approve" => Some(execute || required == ApprovalSubmit),
        "admin" => Some(true),
        _ => None,
    }
}

/// Whether one (already trimmed, non-empty) granted entry grants `required` for `method`.
fn entry_grants(entry: &str, required: Scope, method: &str) -> bool {
    // Rule 1: `*` grants everything.
    if entry == "*" {
        return true;
    }
    // Rule 2: "exactly the method name as sent … the method's own catalog scope implies `required`
    // — names with no catalog scope (unknown methods) never match".
    if entry == method && catalog_scope(method).is_some_and(|own| own.implies(required)) {
        return true;
    }
    // Rule 3: a typed scope, by family rank.
    if let Some(scope) = Scope::parse(entry) {
        return scope.implies(required);
    }
    // Rule 4: `<prefix>.*` — "the method name as sent starts with `<prefix>.` and the method's
    // catalog scope implies `required`".
    if let Some(prefix) = entry.strip_suffix(".*") {
        let under_prefix = method
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.'));
        if under_prefix && catalog_scope(method).is_some_and(|own| own.implies(required)) {
            return true;
        }
    }
    // Rule 5: the legacy ranks. Any other string grants nothing.
    legacy_rank_grants(entry, required).unwrap_or(false)
}

/// AUTH.md §4: whether any granted entry grants `required` for a call of `method` (name as sent).
pub fn has_scope(granted: &[String], required: Scope, method: &str) -> bool {
    // "each granted entry is trimmed, empty entries dropped; access is granted if any entry
    // satisfies one rule".
    granted
        .iter()
        .map(|entry| entry.trim())
        .filter(|entry| !entry.is_empty())
        .any(|entry| entry_grants(entry, required, method))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Expected catalog scopes written out independently of the tables above (METHODS.md §1/§2).
    const EXPECTED_SCOPES: &[(&str, &str)] = &[
        ("health", "run:read"),
        ("launchRun", "run:write"),
        ("resumeRun", "run:write"),
        ("cancelRun", "run:write"),
        ("pauseRun", "run:write"),
        ("hijackRun", "run:admin"),
        ("rewindRun", "run:admin"),
        ("submitApproval", "approval:submit"),
        ("submitSignal", "signal:submit"),
        ("getRun", "run:read"),
        ("listRunTokenUsage", "run:read"),
        ("listRuns", "run:read"),
        ("listRunDescendants", "run:read"),
        ("getSchemaSignature", "run:read"),
        ("listWorkflows", "run:read"),
        ("listApprovals", "run:read"),
        ("listDocs", "run:read"),
        ("streamRunEvents", "run:read"),
        ("streamDevTools", "observability:read"),
        ("getDevToolsSnapshot", "observability:read"),
        ("getNodeOutput", "run:read"),
        ("getNodeDiff", "run:read"),
        ("getRunDiff", "run:read"),
        ("whatHappened", "run:read"),
        ("cronList", "cron:read"),
        ("cronCreate", "cron:write"),
        ("cronDelete", "cron:write"),
        ("cronRun", "cron:write"),
        ("listAccounts", "account:read"),
        ("listUsageReports", "account:read"),
        ("listMemoryFacts", "memory:read"),
        ("listPrompts", "prompt:read"),
        ("listScores", "score:read"),
        ("listScoresForRuns", "score:read"),
        ("getScoreDetail", "score:read"),
        ("listTickets", "ticket:read"),
        ("createTicket", "ticket:write"),
        ("updateTicket", "ticket:write"),
        ("deleteTicket", "ticket:write"),
        ("createBrowserSession", "run:write"),
        ("browserAct", "run:write"),
        ("browserContext", "run:read"),
        ("browserPick", "run:read"),
        ("closeBrowserSession", "run:write"),
        ("listBrowserSessions", "run:read"),
        ("runs.create", "run:write"),
        ("runs.get", "run:read"),
        ("runs.list", "run:read"),
        ("runs.descendants", "run:read"),
        ("runs.cancel", "run:write"),
        ("runs.pause", "run:write"),
        ("approvals.decide", "approval:submit"),
        ("approvals.list", "run:read"),
        ("workflows.list", "run:read"),
        ("signals.send", "signal:submit"),
        ("jumpToFrame", "run:admin"),
        ("devtools.jumpToFrame", "run:admin"),
        ("devtools.getNodeOutput", "run:read"),
        ("devtools.getNodeDiff", "run:read"),
        ("cron.list", "cron:read"),
        ("cron.add", "cron:write"),
        ("cron.remove", "cron:write"),
        ("cron.trigger", "cron:write"),
        ("runs.rerun", "run:write"),
        ("runs.diff", "run:read"),
        ("frames.list", "run:read"),
        ("frames.get", "run:read"),
        ("attempts.list", "run:read"),
        ("attempts.get", "run:read"),
        ("listNodeStates", "run:read"),
        ("retryTask", "run:write"),
        ("approve", "approval:submit"),
    ];

    /// Hand-written rank matrix: which required scopes a granted typed scope covers.
    fn typed_covers(granted: &str, required: &str) -> bool {
        let covered: &[&str] = match granted {
            "run:admin" => &["run:admin", "run:write", "run:read"],
            "run:write" => &["run:write", "run:read"],
            "cron:write" => &["cron:write", "cron:read"],
            "ticket:write" => &["ticket:write", "ticket:read"],
            other => return other == required,
        };
        covered.contains(&required)
    }

    /// Hand-written legacy rank sets (AUTH.md §4 rule 5 table).
    fn legacy_covers(rank: &str, required: &str) -> bool {
        const READ: &[&str] = &[
            "run:read",
            "cron:read",
            "account:read",
            "memory:read",
            "prompt:read",
            "score:read",
            "ticket:read",
            "observability:read",
        ];
        const EXECUTE: &[&str] = &[
            "run:read",
            "run:write",
            "signal:submit",
            "cron:read",
            "cron:write",
            "ticket:read",
            "ticket:write",
        ];
        match rank {
            "read" => READ.contains(&required),
            "execute" => EXECUTE.contains(&required),
            "approve" => required == "approval:submit" || EXECUTE.contains(&required),
            "admin" => true,
            _ => false,
        }
    }

    fn expected_scope(method: &str) -> Option<&'static str> {
        EXPECTED_SCOPES
            .iter()
            .find(|(name, _)| *name == method)
            .map(|(_, scope)| *scope)
    }

    /// Independent model of the rule table for one granted form.
    fn expected(granted: &str, method: &str) -> bool {
        let own = expected_scope(method);
        let required = own.unwrap_or("run:read");
        if granted == "*" {
            return true;
        }
        if granted == method && own.is_some_and(|own| typed_covers(own, required)) {
            return true;
        }
        if Scope::ALL.iter().any(|s| s.as_str() == granted) {
            return typed_covers(granted, required);
        }
        if let Some(prefix) = granted.strip_suffix(".*") {
            let dotted = format!("{prefix}.");
            if method.starts_with(&dotted) && own.is_some_and(|own| typed_covers(own, required)) {
                return true;
            }
        }
        legacy_covers(granted, required)
    }

    const TYPED: [&str; 14] = [
        "run:read",
        "run:write",
        "run:admin",
        "approval:submit",
        "signal:submit",
        "cron:read",
        "cron:write",
        "account:read",
        "memory:read",
        "prompt:read",
        "score:read",
        "ticket:read",
        "ticket:write",
        "observability:read",
    ];

    #[test]
    fn catalog_sizes_and_uniqueness() {
        assert_eq!(V1_METHODS.len(), 45);
        assert_eq!(LEGACY_METHODS.len(), 27);
        let all: HashSet<&str> = V1_METHODS.iter().chain(LEGACY_METHODS).copied().collect();
        assert_eq!(all.len(), 72, "duplicate method names");
        assert!(V1_METHODS.contains(&"health"));
        assert_eq!(catalog_scope("approve"), Some(Scope::ApprovalSubmit));
        assert_eq!(EXPECTED_SCOPES.len(), 72);
    }

    #[test]
    fn catalog_matches_independent_table() {
        for method in V1_METHODS.iter().chain(LEGACY_METHODS) {
            let want = expected_scope(method)
                .unwrap_or_else(|| panic!("{method} missing from expected table"));
            assert_eq!(
                catalog_scope(method).map(Scope::as_str),
                Some(want),
                "{method}"
            );
            assert_eq!(required_scope(method).as_str(), want, "{method}");
        }
    }

    #[test]
    fn scope_strings_round_trip() {
        for (scope, text) in Scope::ALL.iter().zip(TYPED) {
            assert_eq!(scope.as_str(), text);
            assert_eq!(Scope::parse(text), Some(*scope));
        }
        assert_eq!(Scope::parse("RUN:READ"), None);
        assert_eq!(Scope::parse(" run:read"), None);
        assert_eq!(Scope::parse("run:*"), None);
    }

    #[test]
    fn required_scope_fallbacks() {
        assert_eq!(catalog_scope("config.get"), None);
        assert_eq!(required_scope("config.get"), Scope::RunAdmin);
        assert_eq!(required_scope("config."), Scope::RunAdmin);
        assert_eq!(required_scope("configX"), Scope::RunRead);
        assert_eq!(required_scope("oneshotMonitorStart"), Scope::RunWrite);
        assert_eq!(required_scope("oneshotMonitor"), Scope::RunWrite);
        assert_eq!(required_scope("unknownThing"), Scope::RunRead);
        assert_eq!(required_scope(""), Scope::RunRead);
        assert_eq!(required_scope("ext.foo"), Scope::RunRead);
        assert_eq!(required_scope("GETRUN"), Scope::RunRead);
        assert_eq!(catalog_scope("GETRUN"), None);
    }

    /// Every catalog method × every granted form, against the independent model above.
    #[test]
    fn exhaustive_has_scope_matrix() {
        let mut forms: Vec<String> = TYPED.iter().map(|s| s.to_string()).collect();
        forms.extend(
            [
                "*",
                "read",
                "execute",
                "approve",
                "admin",
                "runs.*",
                "cron.*",
                "approvals.*",
                "devtools.*",
                "junk",
                "run:*",
                "*.*",
                ".*",
                "READ",
                "Admin",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        let methods: Vec<&str> = V1_METHODS.iter().chain(LEGACY_METHODS).copied().collect();
        let mut checked = 0usize;
        for method in &methods {
            let required = required_scope(method);
            let mut method_forms = forms.clone();
            method_forms.push(method.to_string());
            // Another method's name: every other catalog name is a granted form too.
            method_forms.extend(
                methods
                    .iter()
                    .filter(|other| *other != method)
                    .map(|s| s.to_string()),
            );
            for form in &method_forms {
                let want = expected(form, method);
                if form != method && form != "approve" && methods.contains(&form.as_str()) {
                    assert!(
                        !want,
                        "model: another method's name {form} grants nothing for {method}"
                    );
                }
                let got = has_scope(std::slice::from_ref(form), required, method);
                assert_eq!(
                    got,
                    want,
                    "granted {form:?} for {method} (requires {})",
                    required.as_str()
                );
                // Surrounding whitespace is trimmed.
                let padded = format!("  {form}\t");
                assert_eq!(
                    has_scope(&[padded], required, method),
                    want,
                    "padded {form:?} for {method}"
                );
                checked += 1;
            }
        }
        assert!(checked > 72 * 100);
    }

    #[test]
    fn method_grant_never_reaches_beyond_own_scope() {
        // A grant of `getRun` does not satisfy a run:write requirement even if asked by that name.
        assert!(has_scope(&["getRun".into()], Scope::RunRead, "getRun"));
        assert!(!has_scope(&["getRun".into()], Scope::RunWrite, "getRun"));
        // `rewindRun` grant covers run:admin for rewindRun (the rewind check uses it, AUTH.md §9).
        assert!(has_scope(
            &["rewindRun".into()],
            Scope::RunAdmin,
            "rewindRun"
        ));
        assert!(has_scope(
            &["jumpToFrame".into()],
            Scope::RunAdmin,
            "jumpToFrame"
        ));
        assert!(has_scope(
            &["devtools.jumpToFrame".into()],
            Scope::RunAdmin,
            "devtools.jumpToFrame"
        ));
        // Unknown method names never match by name, even for their fallback requirement.
        assert!(!has_scope(
            &["config.get".into()],
            Scope::RunAdmin,
            "config.get"
        ));
        assert!(!has_scope(
            &["someUnknown".into()],
            Scope::RunRead,
            "someUnknown"
        ));
        assert!(!has_scope(
            &["config.*".into()],
            Scope::RunAdmin,
            "config.get"
        ));
        // Name grants are case-sensitive and as sent: `runs.*` is not `launchRun`.
        assert!(has_scope(
            &["runs.*".into()],
            Scope::RunWrite,
            "runs.create"
        ));
        assert!(!has_scope(&["runs.*".into()], Scope::RunWrite, "launchRun"));
        assert!(has_scope(&["cron.*".into()], Scope::CronWrite, "cron.add"));
        assert!(!has_scope(&["cron.*".into()], Scope::CronRead, "cronList"));
        assert!(!has_scope(&["run.*".into()], Scope::RunRead, "runs.get"));
    }

    #[test]
    fn cross_family_and_empties() {
        assert!(!has_scope(
            &["run:admin".into()],
            Scope::ObservabilityRead,
            "streamDevTools"
        ));
        assert!(!has_scope(
            &["run:admin".into()],
            Scope::ApprovalSubmit,
            "submitApproval"
        ));
        assert!(!has_scope(
            &["run:admin".into()],
            Scope::CronRead,
            "cronList"
        ));
        assert!(!has_scope(&["cron:write".into()], Scope::RunRead, "getRun"));
        assert!(!has_scope(&[], Scope::RunRead, "getRun"));
        assert!(!has_scope(
            &["".into(), "   ".into()],
            Scope::RunRead,
            "getRun"
        ));
        assert!(has_scope(
            &["junk".into(), " run:read ".into()],
            Scope::RunRead,
            "getRun"
        ));
        assert!(has_scope(&[" * ".into()], Scope::RunAdmin, "config.set"));
        assert!(has_scope(&["admin".into()], Scope::RunAdmin, "config.set"));
        assert!(!has_scope(
            &["execute".into()],
            Scope::RunAdmin,
            "config.set"
        ));
        assert!(has_scope(
            &["execute".into()],
            Scope::RunWrite,
            "oneshotMonitorStart"
        ));
        assert!(!has_scope(
            &["read".into()],
            Scope::RunWrite,
            "oneshotMonitorStart"
        ));
        assert!(!has_scope(
            &["execute".into()],
            Scope::ObservabilityRead,
            "streamDevTools"
        ));
        assert!(has_scope(
            &["approve".into()],
            Scope::ApprovalSubmit,
            "submitApproval"
        ));
        assert!(!has_scope(
            &["approve".into()],
            Scope::AccountRead,
            "listAccounts"
        ));
    }
}
