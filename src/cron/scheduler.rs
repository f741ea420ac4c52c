//! The cron scheduler (DATA.md §8): the start-up sync of workflow `schedule`s into rows keyed
//! `gateway:<key>`, and the `cron` thread that polls the rows every
//! `clamp(heartbeatMs, 1 s, 15 s)`, claims each due row with a compare-and-set and launches its run
//! through the engine with the system auth context (`cron.triggered` is broadcast by the engine in
//! the same turn).
//!
//! The decisions are pure functions over rows and an instant (`schedule_row`, `due_crons`), so the
//! policy is tested on a virtual clock; the thread only reads rows, writes mutations and asks the
//! engine. It never touches SQLite itself and never mutates a run.
//!
//! Missed fires (docs/DECISIONS.md): a row whose next fire passed while the gateway was down is
//! due at the first tick and fires once; the following fire is computed from that moment, so a
//! long outage never replays a backlog.

use super::schedule::{self, CronError};
use crate::engine::core::{AuthContext, EngineHandle, LaunchRequest};
use crate::engine::workflow::Registry;
use crate::storage::{Command, CronRow, Mutation, StorageError, StorageHandle};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Shortest and longest poll interval: `heartbeatMs` clamped to these (DATA.md §8, PROTOCOL.md
/// §16 "derives the scheduler poll interval (clamped to 1,000–15,000 ms)").
pub const POLL_INTERVAL_MS_MIN: u64 = 1_000;
pub const POLL_INTERVAL_MS_MAX: u64 = 15_000;
/// After a failed fire the row is retried this much later (DATA.md §8 step 3).
pub const RETRY_AFTER_FAILURE_MS: i64 = 60_000;
/// Prefix of `workflow_path` (and of schedule-derived cron ids).
pub const GATEWAY_PREFIX: &str = "gateway:";
/// Who a scheduled fire's run is triggered by (AUTH.md §8).
pub const CRON_TRIGGERED_BY: &str = "cron:gateway";

/// The poll interval for `heartbeat_ms`.
pub fn poll_interval_ms(heartbeat_ms: u64) -> u64 {
    heartbeat_ms.clamp(POLL_INTERVAL_MS_MIN, POLL_INTERVAL_MS_MAX)
}

/// The workflow key of a row: `workflow_path` minus `gateway:` (what `cronList` shows as
/// `workflow`); a path without the prefix is returned whole.
pub fn workflow_of(row: &CronRow) -> &str {
    row.workflow_path
        .strip_prefix(GATEWAY_PREFIX)
        .unwrap_or(&row.workflow_path)
}

/// What the start-up sync writes for one workflow schedule, given the row stored under
/// `gateway:<key>` (DATA.md §8 "Schedules"). A new row starts now. An existing row keeps its
/// creation time, last run and error (the upsert keeps those in storage too) and is re-enabled;
/// it keeps its stored next fire when the pattern is unchanged and the row was enabled, so a fire
/// missed while the gateway was down is still due (the missed-fire policy); otherwise the next
/// fire is computed from now. `Err` when the pattern cannot fire (workflow loading refuses those
/// first, so this is a second line).
pub fn schedule_row(
    existing: Option<&CronRow>,
    key: &str,
    pattern: &str,
    now_ms: i64,
) -> Result<CronRow, CronError> {
    let cron_id = format!("{GATEWAY_PREFIX}{key}");
    let kept_next = existing
        .filter(|row| row.enabled && row.pattern == pattern)
        .and_then(|row| row.next_run_at_ms);
    let next_run_at_ms = match kept_next {
        Some(next) => next,
        None => schedule::next_fire(pattern, now_ms)?,
    };
    Ok(CronRow {
        cron_id: cron_id.clone(),
        pattern: pattern.to_string(),
        workflow_path: cron_id,
        enabled: true,
        created_at_ms: existing.map_or(now_ms, |row| row.created_at_ms),
        last_run_at_ms: existing.and_then(|row| row.last_run_at_ms),
        next_run_at_ms: Some(next_run_at_ms),
        error_json: existing.and_then(|row| row.error_json.clone()),
    })
}

/// The rows the start-up sync writes: one per workflow with a `schedule`, and the disabling of
/// `gateway:<key>` rows whose workflow is still registered but no longer declares a schedule (so
/// removing `schedule` from a file stops its fires; the row and its history stay visible, and
/// declaring the schedule again re-enables it). Rows of workflows that are not registered are
/// left alone: the scheduler never fires them. Errors are per workflow, with its key.
pub fn sync_rows(
    stored: &[CronRow],
    registry: &Registry,
    now_ms: i64,
) -> (Vec<CronRow>, Vec<(String, CronError)>) {
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for workflow in registry.workflows.values() {
        let cron_id = format!("{GATEWAY_PREFIX}{}", workflow.key);
        let existing = stored.iter().find(|row| row.cron_id == cron_id);
        match (&workflow.schedule, existing) {
            (Some(pattern), _) => match schedule_row(existing, &workflow.key, pattern, now_ms) {
                Ok(row) => rows.push(row),
                Err(error) => errors.push((workflow.key.clone(), error)),
            },
            (None, Some(row)) if row.enabled && row.workflow_path == cron_id => {
                rows.push(CronRow {
                    enabled: false,
                    ..row.clone()
                });
            }
            (None, _) => {}
        }
    }
    (rows, errors)
}

/// Runs the start-up sync against storage; returns how many rows were written. A schedule that
/// cannot be synced is logged and skipped (it cannot stop the gateway: the file loaded).
pub fn sync_schedules(
    storage: &StorageHandle,
    registry: &Registry,
    now_ms: i64,
) -> Result<usize, StorageError> {
    let stored = storage.call_blocking(|reply| Command::ListCrons { reply })?;
    let (rows, errors) = sync_rows(&stored, registry, now_ms);
    for (key, error) in errors {
        tracing::error!(workflow = %key, %error, "workflow schedule not registered");
    }
    let written = rows.len();
    // One write per row: a failure leaves the other schedules in place.
    for row in rows {
        let cron_id = row.cron_id.clone();
        let mutations = vec![Mutation::UpsertCron(row)];
        if let Err(error) = storage.call_blocking(|reply| Command::Write { mutations, reply }) {
            tracing::error!(%cron_id, %error, "cannot sync workflow schedule");
            return Err(error);
        }
    }
    Ok(written)
}

/// One due row and what its claim needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    pub cron_id: String,
    pub workflow: String,
    /// The `next_run_at_ms` read: the claim's expected value.
    pub expected_next_run_at_ms: Option<i64>,
    /// The fire after this one, or why it cannot be computed (then the row takes the failure path).
    pub following: Result<i64, CronError>,
}

/// The rows due at `now_ms` (DATA.md §8 step 1): enabled, `workflow_path` `gateway:<key>` of a
/// registered workflow, and `next_run_at_ms` null or not after now. In row order (creation).
pub fn due_crons(rows: &[CronRow], now_ms: i64, registered: impl Fn(&str) -> bool) -> Vec<Due> {
    rows.iter()
        .filter(|row| row.enabled)
        .filter(|row| row.next_run_at_ms.is_none_or(|next| next <= now_ms))
        .filter_map(|row| {
            let key = row.workflow_path.strip_prefix(GATEWAY_PREFIX)?;
            registered(key).then(|| Due {
                cron_id: row.cron_id.clone(),
                workflow: key.to_string(),
                expected_next_run_at_ms: row.next_run_at_ms,
                following: schedule::next_fire(&row.pattern, now_ms),
            })
        })
        .collect()
}

/// What one tick did (logged; tests read it through the rows and events instead).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TickReport {
    pub fired: usize,
    pub lost_claims: usize,
    pub failed: usize,
}

/// The scheduler's collaborators.
pub struct Scheduler {
    pub storage: StorageHandle,
    pub engine: EngineHandle,
    pub registry: Arc<Registry>,
}

impl Scheduler {
    /// One poll at `now_ms`: every due row is claimed, then fired; a failure records its message
    /// and retries the row a minute later.
    pub fn tick(&self, now_ms: i64) -> Result<TickReport, StorageError> {
        let rows = self
            .storage
            .call_blocking(|reply| Command::ListCrons { reply })?;
        let mut report = TickReport::default();
        let registry = &self.registry;
        for due in due_crons(&rows, now_ms, |key| registry.workflows.contains_key(key)) {
            let following = match &due.following {
                Ok(following) => *following,
                Err(error) => {
                    self.record_failure(&due.cron_id, now_ms, &error.to_string());
                    report.failed += 1;
                    continue;
                }
            };
            let claim = vec![Mutation::ClaimCron {
                cron_id: due.cron_id.clone(),
                expected_next_run_at_ms: due.expected_next_run_at_ms,
                last_run_at_ms: now_ms,
                next_run_at_ms: following,
            }];
            match self.storage.call_blocking(|reply| Command::Write {
                mutations: claim,
                reply,
            }) {
                Ok(_) => {}
                Err(StorageError::Conflict(_)) => {
                    // Changed since it was read (deleted, disabled, re-created, or fired by
                    // another scheduler): skip, as DATA.md §8 says.
                    report.lost_claims += 1;
                    continue;
                }
                Err(error) => return Err(error),
            }
            let request = LaunchRequest {
                workflow: due.workflow.clone(),
                input: crate::rpc::Value::Object(Box::default()),
                run_id: None,
                idempotency_key: None,
                auth: AuthContext::system(CRON_TRIGGERED_BY),
                started_by: None,
                options: Vec::new(),
            };
            match self.engine.fire_cron_blocking(request, due.cron_id.clone()) {
                Ok(outcome) => {
                    tracing::info!(cron_id = %due.cron_id, run_id = %outcome.run_id, "cron fired");
                    report.fired += 1;
                }
                Err(error) => {
                    tracing::warn!(
                        cron_id = %due.cron_id,
                        code = error.code.as_str(),
                        message = %error.message,
                        "cron fire failed"
                    );
                    self.record_failure(&due.cron_id, now_ms, &error.message);
                    report.failed += 1;
                }
            }
        }
        Ok(report)
    }

    /// DATA.md §8 step 3: last run now, next in a minute, the message kept.
    fn record_failure(&self, cron_id: &str, now_ms: i64, message: &str) {
        let mutations = vec![Mutation::RecordCronRun {
            cron_id: cron_id.to_string(),
            last_run_at_ms: now_ms,
            next_run_at_ms: Some(now_ms.saturating_add(RETRY_AFTER_FAILURE_MS)),
            error: Some(message.to_string()),
        }];
        if let Err(error) = self
            .storage
            .call_blocking(|reply| Command::Write { mutations, reply })
        {
            tracing::error!(%cron_id, %error, "cannot record a cron failure");
        }
    }
}

/// The running `cron` thread.
pub struct SchedulerThread {
    stop: flume::Sender<()>,
    thread: JoinHandle<()>,
}

/// Starts the `cron` thread: a tick every `poll_interval` (the first one a full interval after
/// start, when the engine has recovered its runs). Ticks never overlap: the next wait starts
/// after a tick ends (single-flight).
pub fn start(
    scheduler: Scheduler,
    poll_interval: Duration,
) -> Result<SchedulerThread, StorageError> {
    let (stop, stopped) = flume::bounded::<()>(1);
    let thread = std::thread::Builder::new()
        .name("cron".into())
        .spawn(move || {
            // A message or a dropped sender both mean stop.
            while let Err(flume::RecvTimeoutError::Timeout) = stopped.recv_timeout(poll_interval) {
                let now_ms = i64::try_from(crate::clock::now_ms()).unwrap_or(i64::MAX);
                match scheduler.tick(now_ms) {
                    Ok(report) if report != TickReport::default() => {
                        tracing::debug!(?report, "cron tick")
                    }
                    Ok(_) => {}
                    Err(error) => tracing::error!(%error, "cron tick failed"),
                }
            }
        })
        .map_err(|error| {
            StorageError::Unavailable(format!("cannot start the cron thread: {error}"))
        })?;
    Ok(SchedulerThread { stop, thread })
}

impl SchedulerThread {
    /// Stops after the tick in progress, if any, and waits for the thread.
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn row(cron_id: &str, pattern: &str, next: Option<i64>) -> CronRow {
        CronRow {
            cron_id: cron_id.into(),
            pattern: pattern.into(),
            workflow_path: "gateway:hello".into(),
            enabled: true,
            created_at_ms: 0,
            last_run_at_ms: None,
            next_run_at_ms: next,
            error_json: None,
        }
    }

    #[test]
    fn poll_interval_is_heartbeat_clamped() {
        assert_eq!(poll_interval_ms(1), 1_000);
        assert_eq!(poll_interval_ms(999), 1_000);
        assert_eq!(poll_interval_ms(5_000), 5_000);
        assert_eq!(poll_interval_ms(15_000), 15_000);
        assert_eq!(poll_interval_ms(15_001), 15_000);
    }

    /// Goal: step 1's filter: enabled, registered `gateway:` workflow, next null or due.
    #[test]
    fn due_rows_follow_data_md() {
        let rows = vec![
            row("due", "* * * * *", Some(1_000)),
            row("null-next", "* * * * *", None),
            row("later", "* * * * *", Some(2_001)),
            CronRow {
                enabled: false,
                ..row("disabled", "* * * * *", Some(0))
            },
            CronRow {
                workflow_path: "gateway:gone".into(),
                ..row("unregistered", "* * * * *", Some(0))
            },
            CronRow {
                workflow_path: "hello".into(),
                ..row("no-prefix", "* * * * *", Some(0))
            },
            row("broken", "not a pattern", Some(0)),
        ];
        let due = due_crons(&rows, 2_000, |key| key == "hello");
        let ids: Vec<&str> = due.iter().map(|d| d.cron_id.as_str()).collect();
        assert_eq!(ids, vec!["due", "null-next", "broken"]);
        assert_eq!(due[0].following, Ok(60_000));
        assert_eq!(due[0].expected_next_run_at_ms, Some(1_000));
        assert!(due[2].following.is_err());
    }

    /// Goal: the sync keeps history, re-enables, keeps a missed fire due when nothing changed,
    /// recomputes when the pattern changed, and disables rows whose schedule was removed.
    #[test]
    fn sync_rows_policy() {
        let now = 1_767_225_600_000; // 2026-01-01T00:00:00Z
        let fresh = schedule_row(None, "nightly", "0 3 * * *", now).unwrap();
        assert_eq!(fresh.cron_id, "gateway:nightly");
        assert_eq!(fresh.workflow_path, "gateway:nightly");
        assert_eq!(fresh.created_at_ms, now);
        assert_eq!(fresh.next_run_at_ms, Some(now + 3 * 3_600_000));

        let missed = CronRow {
            created_at_ms: 5,
            last_run_at_ms: Some(6),
            next_run_at_ms: Some(now - 1_000),
            error_json: Some("e".into()),
            ..fresh.clone()
        };
        let kept = schedule_row(Some(&missed), "nightly", "0 3 * * *", now).unwrap();
        assert_eq!(kept, missed, "a missed fire stays due");
        let changed = schedule_row(Some(&missed), "nightly", "0 4 * * *", now).unwrap();
        assert_eq!(changed.next_run_at_ms, Some(now + 4 * 3_600_000));
        assert_eq!(
            (changed.created_at_ms, changed.last_run_at_ms),
            (5, Some(6))
        );
        let disabled = CronRow {
            enabled: false,
            ..missed.clone()
        };
        let re_enabled = schedule_row(Some(&disabled), "nightly", "0 3 * * *", now).unwrap();
        assert!(re_enabled.enabled);
        assert_eq!(
            re_enabled.next_run_at_ms,
            Some(now + 3 * 3_600_000),
            "time spent disabled is not a missed fire"
        );
    }

    /// Goal: RELIABILITY.md §6 row 22 on a virtual clock: `* * * * *` polled every 15 s over one
    /// simulated day, with a restart (a fresh sync over the stored rows) at noon, fires exactly
    /// 1,440 times, once per minute, none twice and none missed. Method: the pure decisions
    /// applied to an in-memory table the way the storage claim applies them.
    #[test]
    fn virtual_day_with_a_restart_at_noon() {
        let day_start = 1_767_225_600_000; // 2026-01-01T00:00:00Z
        let mut registry = Registry::default();
        let mut workflow = crate::engine::workflow::parse_workflow(
            std::path::Path::new("every-minute.toml"),
            concat!(
                "schedule = \"* * * * *\"\n",
                "[[nodes]]\nkind = \"task\"\nid = \"t\"\noutput = { ok = true }\n"
            ),
        )
        .unwrap();
        workflow.key = "every-minute".into();
        registry.workflows.insert(workflow.key.clone(), workflow);

        let mut table: Vec<CronRow> = Vec::new();
        let sync = |table: &mut Vec<CronRow>, now: i64| {
            let (rows, errors) = sync_rows(table, &registry, now);
            assert!(errors.is_empty());
            for new in rows {
                match table.iter_mut().find(|r| r.cron_id == new.cron_id) {
                    // The storage upsert keeps created, last run and error.
                    Some(old) => {
                        old.pattern = new.pattern;
                        old.enabled = new.enabled;
                        old.next_run_at_ms = new.next_run_at_ms;
                    }
                    None => table.push(new),
                }
            }
        };
        sync(&mut table, day_start);
        let mut fires: Vec<i64> = Vec::new();
        let tick_ms = 15_000;
        let mut now = day_start;
        while now < day_start + 86_400_000 {
            now += tick_ms;
            if now == day_start + 43_200_000 {
                // Restart: the process is new, only the table survives.
                sync(&mut table, now);
            }
            for due in due_crons(&table, now, |key| key == "every-minute") {
                let row = table.iter_mut().find(|r| r.cron_id == due.cron_id).unwrap();
                // The claim: compare-and-set on next_run_at_ms.
                assert_eq!(row.next_run_at_ms, due.expected_next_run_at_ms);
                row.last_run_at_ms = Some(now);
                row.next_run_at_ms = Some(due.following.clone().unwrap());
                fires.push(now);
            }
        }
        assert_eq!(fires.len(), 1_440);
        let mut minutes: Vec<i64> = fires.iter().map(|at| (at - 1) / 60_000).collect();
        minutes.dedup();
        assert_eq!(minutes.len(), 1_440, "one fire per minute");
    }

    /// Goal: a long outage fires once, not once per missed minute, and the next fire follows
    /// the moment of that fire.
    #[test]
    fn missed_fires_collapse_into_one() {
        let now = 1_767_225_600_000;
        let rows = vec![CronRow {
            next_run_at_ms: Some(now - 86_400_000),
            ..row("every-minute", "* * * * *", None)
        }];
        let due = due_crons(&rows, now, |_| true);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].following, Ok(now + 60_000));
    }
}
