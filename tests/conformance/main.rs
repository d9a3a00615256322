//! The conformance suite: scenarios every backend runs against the local hub speaking its
//! dialect. This file runs them for the native dialect; each cloud backend adds a `Backend`
//! and one test per scenario the same way.
#![cfg(feature = "local")]

mod backend;
mod scenarios;

use std::sync::Arc;

use fleetkit::device::{Dialect, NativeDialect};
use fleetkit::local::{LocalHub, LocalHubBuilder};
use fleetkit::policy::{PolicyDocument, builtin};

use backend::Backend;

/// The native dialect: the hub's own services and the built-in native device policy.
struct Native;

impl Backend for Native {
    fn name(&self) -> &str {
        "native"
    }

    fn hub(&self) -> LocalHubBuilder {
        LocalHub::builder()
    }

    fn device_policy(&self) -> PolicyDocument {
        builtin::native_device()
    }

    fn dialect(&self, hub: &LocalHub) -> Arc<dyn Dialect> {
        Arc::new(NativeDialect::new(
            "localhost",
            hub.mqtt_addr().port(),
            hub.ca_certificate(),
        ))
    }

    fn telemetry_filter(&self) -> &str {
        "devices/+/telemetry/#"
    }
}

/// AWS IoT Core: `fleetkit::aws` against the hub's AWS dialect, over ALPN `x-amzn-mqtt-ca`
/// (as on port 443), with fleetkit's AWS device policy.
#[cfg(feature = "aws")]
struct Aws;

#[cfg(feature = "aws")]
impl Backend for Aws {
    fn name(&self) -> &str {
        "aws"
    }

    fn hub(&self) -> LocalHubBuilder {
        LocalHub::builder().dialect(fleetkit::local::dialect::aws::AwsHubDialect::new())
    }

    fn device_policy(&self) -> PolicyDocument {
        builtin::aws_device()
    }

    fn dialect(&self, hub: &LocalHub) -> Arc<dyn Dialect> {
        let aws = fleetkit::aws::AwsIot::builder()
            .region("us-east-1")
            .endpoint("localhost")
            .transport(fleetkit::aws::AwsTransport::MqttAlpn443)
            .port(hub.mqtt_addr().port())
            .root_ca(hub.ca_certificate())
            .build()
            .unwrap();
        Arc::new(aws.dialect())
    }

    fn telemetry_filter(&self) -> &str {
        "dt/+/telemetry"
    }
}

macro_rules! conformance {
    ($backend:expr => $($scenario:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                scenarios::$scenario(&$backend).await;
            }
        )*
    };
}

conformance!(Native =>
    connect,
    telemetry_round_trip,
    telemetry_bad_input,
    commands,
    twin_versioning_and_conflicts,
    methods,
    denial,
    revocation_while_connected,
    reconnect_with_queued_qos1,
);

#[cfg(feature = "aws")]
mod aws {
    use super::*;

    conformance!(Aws =>
        connect,
        telemetry_round_trip,
        telemetry_bad_input,
        commands,
        twin_versioning_and_conflicts,
        methods,
        denial,
        revocation_while_connected,
        reconnect_with_queued_qos1,
    );
}
