//! The `fleetkit` command-line tool (placeholder while it is being written).
#![forbid(unsafe_code)]

fn main() {}
