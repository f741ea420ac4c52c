//! Admin token bootstrap in the data directory.
