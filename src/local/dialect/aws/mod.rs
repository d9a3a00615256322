//! The hub's AWS IoT Core dialect.

pub mod jobs;
pub mod rest;
pub mod shadow;
