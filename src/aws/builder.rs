//! `AwsIot::builder()`.
