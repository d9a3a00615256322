//! The hub's admin endpoint (being written).
