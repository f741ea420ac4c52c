//! Cron: expressions with the reference's meaning (`schedule`, sans-IO) and the scheduler that
//! turns workflow schedules and `cronCreate` rows into runs (`scheduler`). The RPC methods are in
//! `rpc::cron`; the rows live in storage (`_smithers_cron`).

pub mod schedule;
pub mod scheduler;

#[cfg(test)]
mod compat;
