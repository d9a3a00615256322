//! The AWS Device Shadow service, hub side.
