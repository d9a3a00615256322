//! AWS IoT Core.

mod builder;
mod dialect;
