//! The twin model (being written).
