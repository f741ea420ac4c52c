//! Filled by the auth work: see auth/mod.rs.
