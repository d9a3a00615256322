//! DeviceClient behaviour that is not about one backend: capabilities as data, the offline
//! queue's overflow policies while the hub is away, and connection failures up front.
#![cfg(feature = "local")]

use std::time::Duration;

use bytes::Bytes;
use fleetkit::Error;
use fleetkit::device::twin::TwinDocument;
use fleetkit::device::{
    Capabilities, ConnectionState, DeviceClient, Dialect, Endpoint, Feature, Inbound,
    MethodRequest, MethodResponse, NativeDialect, Outbound, Telemetry,
};
use fleetkit::identity::DeviceId;
use fleetkit::local::{DeviceRecord, LocalHub};
use fleetkit::policy::{AttachTarget, builtin};
use fleetkit::protocol::{BackoffConfig, Overflow, QueueLimits};
use serde_json::{Map, Value};

/// The native dialect with only telemetry: everything else must be `NotSupported`.
struct TelemetryOnly(NativeDialect);

impl Dialect for TelemetryOnly {
    fn name(&self) -> &str {
        "telemetry-only"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::new(&[Feature::Telemetry])
    }
    fn endpoint(&self) -> &Endpoint {
        self.0.endpoint()
    }
    fn telemetry_topic(&self, d: &DeviceId, p: &[(String, String)]) -> fleetkit::Result<String> {
        self.0.telemetry_topic(d, p)
    }
    fn subscriptions(&self, _: &DeviceId) -> Vec<(String, u8)> {
        Vec::new()
    }
    fn classify(&self, d: &DeviceId, t: &str, p: &Bytes) -> Inbound {
        self.0.classify(d, t, p)
    }
    fn twin_get(&self, d: &DeviceId, r: &str) -> fleetkit::Result<Outbound> {
        self.0.twin_get(d, r)
    }
    fn twin_report(
        &self,
        d: &DeviceId,
        r: &str,
        p: &Map<String, Value>,
        v: Option<u64>,
    ) -> fleetkit::Result<Outbound> {
        self.0.twin_report(d, r, p, v)
    }
    fn parse_twin_document(&self, b: &Bytes) -> fleetkit::Result<TwinDocument> {
        self.0.parse_twin_document(b)
    }
    fn parse_twin_reported(&self, b: &Bytes) -> fleetkit::Result<u64> {
        self.0.parse_twin_reported(b)
    }
    fn twin_error(&self, d: &DeviceId, s: u16, b: &Bytes) -> Error {
        self.0.twin_error(d, s, b)
    }
    fn method_response(
        &self,
        d: &DeviceId,
        r: &MethodRequest,
        m: &MethodResponse,
    ) -> fleetkit::Result<Outbound> {
        self.0.method_response(d, r, m)
    }
}

async fn hub_with(device: &str) -> (LocalHub, fleetkit::identity::X509Credential) {
    let hub = LocalHub::builder().start().await.unwrap();
    hub.put_policy("device", &builtin::native_device()).unwrap();
    hub.attach_policy("device", AttachTarget::Group("fleet".into()))
        .unwrap();
    hub.create_device(DeviceRecord::new(device).in_group("fleet"))
        .unwrap();
    let cred = hub.issue_device_credential(device).unwrap();
    (hub, cred)
}

fn native(hub: &LocalHub) -> NativeDialect {
    NativeDialect::new("localhost", hub.mqtt_addr().port(), hub.ca_certificate())
}

#[tokio::test]
async fn unsupported_features_are_typed_errors_not_silent_no_ops() {
    let (hub, cred) = hub_with("dev-1").await;
    let client =
        DeviceClient::builder(TelemetryOnly(native(&hub)), DeviceId::new("dev-1").unwrap())
            .credential(cred)
            .connect()
            .await
            .unwrap();
    assert!(matches!(client.commands(), Err(Error::NotSupported(_))));
    assert!(matches!(
        client.twin().get().await,
        Err(Error::NotSupported(_))
    ));
    assert!(matches!(
        client.twin().report(serde_json::json!({"a": 1})).await,
        Err(Error::NotSupported(_))
    ));
    assert!(matches!(
        client.twin().desired_changes(),
        Err(Error::NotSupported(_))
    ));
    assert!(matches!(
        client
            .send_telemetry(Telemetry::new("x").property("k", "v"))
            .await,
        Err(Error::NotSupported(_))
    ));
    assert!(matches!(
        client.send_telemetry(Telemetry::new("x")).await,
        Err(Error::NotSupported(_)) // QoS 1 needs AtLeastOnce
    ));
    client
        .send_telemetry(Telemetry::new("x").qos(0))
        .await
        .unwrap();
    assert!(!client.capabilities().supports(Feature::Methods));
}

#[tokio::test]
async fn overflow_policies_apply_while_the_hub_is_away() {
    let (hub, cred) = hub_with("dev-1").await;
    let addr = hub.mqtt_addr();
    let dialect = native(&hub);
    let limits = QueueLimits::new().with_max_messages(3);
    let fast = BackoffConfig::new()
        .with_base(Duration::from_millis(20))
        .with_cap(Duration::from_millis(100));
    let strict = DeviceClient::builder(dialect.clone(), DeviceId::new("dev-1").unwrap())
        .credential(cred.clone())
        .backoff(fast)
        .offline_queue(limits, Overflow::Error)
        .connect()
        .await
        .unwrap();
    hub.shutdown().await;
    let mut states = strict.state_changes();
    states
        .wait_for(|s| matches!(s, ConnectionState::Disconnected { .. }))
        .await
        .unwrap();
    for i in 0..3 {
        strict
            .queue_telemetry(Telemetry::new(format!("{i}")))
            .unwrap();
    }
    assert!(matches!(
        strict.queue_telemetry(Telemetry::new("one too many")),
        Err(Error::Unavailable(_))
    ));
    assert_eq!(strict.queued(), 3);
    strict.shutdown(Duration::ZERO).await;

    // DropOldest: the oldest receipt learns it was evicted; the newest survive.
    let hub = LocalHub::builder().bind(addr).start().await.unwrap();
    hub.put_policy("device", &builtin::native_device()).unwrap();
    hub.create_device(DeviceRecord::new("dev-2")).unwrap();
    hub.attach_policy("device", AttachTarget::Device("dev-2".into()))
        .unwrap();
    let cred2 = hub.issue_device_credential("dev-2").unwrap();
    let lossy = DeviceClient::builder(native(&hub), DeviceId::new("dev-2").unwrap())
        .credential(cred2)
        .backoff(fast)
        .offline_queue(limits, Overflow::DropOldest)
        .connect()
        .await
        .unwrap();
    let mut cloud = hub.subscribe("devices/+/telemetry").unwrap();
    hub.shutdown().await;
    let mut states = lossy.state_changes();
    states
        .wait_for(|s| matches!(s, ConnectionState::Disconnected { .. }))
        .await
        .unwrap();
    let receipts: Vec<_> = (0..5)
        .map(|i| {
            lossy
                .queue_telemetry(Telemetry::new(format!("{i}")))
                .unwrap()
        })
        .collect();
    assert_eq!(lossy.queued(), 3);
    let mut outcomes = Vec::new();
    for r in receipts.into_iter().take(2) {
        outcomes.push(
            tokio::time::timeout(Duration::from_secs(5), r.acknowledged())
                .await
                .unwrap(),
        );
    }
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Err(Error::Unavailable(_)))),
        "{outcomes:?}"
    );
    // The hub's subscription went with it.
    assert!(cloud.recv().await.is_none());
}

#[tokio::test]
async fn an_unreachable_hub_or_an_untrusted_one_fails_connect_with_a_typed_error() {
    let (hub, cred) = hub_with("dev-1").await;
    let port = hub.mqtt_addr().port();
    // Nobody listens on this port once the hub is gone.
    let ca = hub.ca_certificate().clone();
    hub.shutdown().await;
    let err = DeviceClient::builder(
        NativeDialect::new("localhost", port, &ca),
        DeviceId::new("dev-1").unwrap(),
    )
    .credential(cred.clone())
    .connect_timeout(Duration::from_secs(5))
    .connect()
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");

    // A hub whose certificate we do not trust: refused in TLS, before any credential is used.
    let (other, _) = hub_with("dev-1").await;
    let err = DeviceClient::builder(
        NativeDialect::new("localhost", other.mqtt_addr().port(), &ca),
        DeviceId::new("dev-1").unwrap(),
    )
    .credential(cred)
    .connect()
    .await
    .unwrap_err();
    // Our side distrusts the server: a typed chain error, not a refusal by the hub.
    assert!(matches!(err, Error::Untrusted(_)), "{err:?}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_twin_change_survives_a_hub_restart() {
    let data = tempfile::tempdir().unwrap();
    let hub = LocalHub::builder()
        .data_dir(data.path())
        .start()
        .await
        .unwrap();
    hub.put_policy("device", &builtin::native_device()).unwrap();
    hub.create_device(DeviceRecord::new("dev-1")).unwrap();
    hub.attach_policy("device", AttachTarget::Device("dev-1".into()))
        .unwrap();
    let cred = hub.issue_device_credential("dev-1").unwrap();
    let addr = hub.mqtt_addr();
    let client = DeviceClient::builder(native(&hub), DeviceId::new("dev-1").unwrap())
        .credential(cred)
        .connect()
        .await
        .unwrap();
    let v = client
        .twin()
        .report(serde_json::json!({"firmware": "2.1"}))
        .await
        .unwrap();
    let d = hub
        .update_desired("dev-1", serde_json::json!({"interval": 5}), None)
        .await
        .unwrap();
    assert!(d > v);
    client.shutdown(Duration::ZERO).await;
    // A hard stop: dropped, not shut down.
    drop(hub);
    let hub = LocalHub::builder()
        .bind(addr)
        .data_dir(data.path())
        .start()
        .await
        .unwrap();
    let twin = hub.twin("dev-1").unwrap();
    assert_eq!(twin.version(), d);
    assert_eq!(twin.reported()["firmware"], "2.1");
    assert_eq!(twin.desired()["interval"], 5);
}

/// The endpoint's server name, not the dialled address, is what the server certificate must
/// name: dialling 127.0.0.1 while expecting "localhost" works, expecting another name fails as
/// untrusted.
#[tokio::test]
async fn the_server_name_override_is_what_the_certificate_must_name() {
    let hub = LocalHub::builder().start().await.unwrap();
    hub.put_policy("device", &builtin::native_device()).unwrap();
    hub.create_device(DeviceRecord::new("dev-1")).unwrap();
    hub.attach_policy("device", AttachTarget::Device("dev-1".into()))
        .unwrap();
    let credential = hub.issue_device_credential("dev-1").unwrap();
    let endpoint = |name: &str| {
        let mut e = Endpoint::new(
            "127.0.0.1",
            hub.mqtt_addr().port(),
            vec![hub.ca_certificate().der().clone()],
        );
        e.server_name = name.to_string();
        e
    };
    let client = DeviceClient::builder(
        NativeDialect::with_endpoint(endpoint("localhost")),
        DeviceId::new("dev-1").unwrap(),
    )
    .credential(credential.clone())
    .connect()
    .await
    .unwrap();
    client.shutdown(Duration::from_secs(2)).await;
    let refused = DeviceClient::builder(
        NativeDialect::with_endpoint(endpoint("hub.example.com")),
        DeviceId::new("dev-1").unwrap(),
    )
    .credential(credential)
    .connect_timeout(Duration::from_secs(3))
    .connect()
    .await;
    assert!(
        matches!(
            &refused,
            Err(Error::Untrusted(fleetkit::pki::ChainError::WrongName(_)))
        ),
        "{refused:?}"
    );
}
