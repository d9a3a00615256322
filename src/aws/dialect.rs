//! The AWS device plane.
