//! The hub's AWS IoT Core dialect.

pub mod jobs;
pub mod shadow;
