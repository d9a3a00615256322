//! The scenarios every backend runs. Each takes the backend under test and builds its own
//! fleet, so they run in parallel and in any order.

use std::time::Duration;

use bytes::Bytes;
use fleetkit::Error;
use fleetkit::device::{ConnectionState, DeviceClient, Feature, MethodResponse, Telemetry};
use fleetkit::local::{CertificateState, HubEvent};
use serde_json::json;

use super::backend::{Backend, client_for, start, start_with};

const WAIT: Duration = Duration::from_secs(10);

/// Waits for the client's state to satisfy `pred`, returning it.
async fn wait_state(
    client: &DeviceClient,
    mut pred: impl FnMut(&ConnectionState) -> bool,
) -> ConnectionState {
    let mut rx = client.state_changes();
    tokio::time::timeout(WAIT, async {
        loop {
            let now = rx.borrow_and_update().clone();
            if pred(&now) {
                return now;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("state not reached in time")
}

/// Connect: the hub sees the device under its client id, the client says Connected.
pub async fn connect(b: &dyn Backend) {
    let fleet = start(b, &["dev-1"]).await;
    let client = fleet.client(b, 0).connect().await.unwrap();
    assert!(matches!(client.state(), ConnectionState::Connected { .. }));
    assert_eq!(fleet.hub.connected_clients(), vec!["dev-1".to_string()]);
    assert_eq!(client.shutdown(WAIT).await, 0);
    assert_eq!(client.state(), ConnectionState::Closed);
}

/// Telemetry, QoS 0 and 1 with properties, reaches the cloud side in order and intact.
pub async fn telemetry_round_trip(b: &dyn Backend) {
    let fleet = start(b, &["dev-1"]).await;
    let mut cloud = fleet.hub.subscribe(b.telemetry_filter()).unwrap();
    let client = fleet.client(b, 0).connect().await.unwrap();
    if !client.capabilities().supports(Feature::TelemetryProperties) {
        // No properties on this backend: refused as unsupported, plain telemetry flows.
        assert!(matches!(
            client
                .send_telemetry(Telemetry::new("x").property("seq", "1"))
                .await,
            Err(Error::NotSupported(_))
        ));
        let topic = b
            .dialect(&fleet.hub)
            .telemetry_topic(&fleetkit::identity::DeviceId::new("dev-1").unwrap(), &[])
            .unwrap();
        for i in 0..20 {
            let t = Telemetry::new(format!("{{\"seq\":{i}}}")).qos(if i % 2 == 0 { 1 } else { 0 });
            client.send_telemetry(t).await.unwrap();
        }
        for i in 0..20 {
            let m = tokio::time::timeout(WAIT, cloud.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(m.payload, Bytes::from(format!("{{\"seq\":{i}}}")));
            assert_eq!(m.topic, topic);
            assert_eq!(m.qos, if i % 2 == 0 { 1 } else { 0 });
        }
        assert_eq!(client.queued(), 0);
        return;
    }
    for i in 0..20 {
        let t = Telemetry::new(format!("{{\"seq\":{i}}}"))
            .property("seq", &i.to_string())
            .qos(if i % 2 == 0 { 1 } else { 0 });
        client.send_telemetry(t).await.unwrap();
    }
    client
        .send_telemetry(Telemetry::new("plain").property("unit", "°C / 10"))
        .await
        .unwrap();
    for i in 0..20 {
        let m = tokio::time::timeout(WAIT, cloud.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.payload, Bytes::from(format!("{{\"seq\":{i}}}")));
        assert_eq!(m.topic, format!("devices/dev-1/telemetry/seq={i}"));
        assert_eq!(m.qos, if i % 2 == 0 { 1 } else { 0 });
    }
    let m = tokio::time::timeout(WAIT, cloud.recv())
        .await
        .unwrap()
        .unwrap();
    let bag = m.topic.rsplit_once('/').unwrap().1;
    assert_eq!(
        fleetkit::device::native::parse_properties(bag).unwrap(),
        vec![("unit".to_string(), "°C / 10".to_string())]
    );
    assert_eq!(client.queued(), 0);
}

/// Bad telemetry is a typed error, nothing is sent, and the client stays usable.
pub async fn telemetry_bad_input(b: &dyn Backend) {
    let fleet = start(b, &["dev-1"]).await;
    let mut cloud = fleet.hub.subscribe(b.telemetry_filter()).unwrap();
    let client = fleet.client(b, 0).connect().await.unwrap();
    let max = b.dialect(&fleet.hub).limits().max_payload;
    let cases = [
        Telemetry::new(vec![0u8; max + 1]),
        Telemetry::new("x").property("bad name", "v"),
        Telemetry::new("x").property("", "v"),
        Telemetry::new("x").property("$sys", "v"),
        Telemetry::new("x").qos(2),
    ];
    let properties = client.capabilities().supports(Feature::TelemetryProperties);
    for t in cases {
        match client.send_telemetry(t.clone()).await {
            Err(Error::InvalidInput { .. }) => {}
            // A backend without properties refuses any property as unsupported.
            Err(Error::NotSupported(_)) if !properties && !t.properties().is_empty() => {}
            other => panic!("{t:?}: {other:?}"),
        }
    }
    let too_many = (0..100).fold(Telemetry::new("x"), |t, i| {
        t.property(&format!("p{i}"), "v")
    });
    let refused = client.send_telemetry(too_many).await;
    if client.capabilities().supports(Feature::TelemetryProperties) {
        assert!(
            matches!(refused, Err(Error::InvalidInput { .. })),
            "{refused:?}"
        );
    } else {
        assert!(
            matches!(refused, Err(Error::NotSupported(_))),
            "{refused:?}"
        );
    }
    client.send_telemetry(Telemetry::new("ok")).await.unwrap();
    let m = tokio::time::timeout(WAIT, cloud.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload, Bytes::from_static(b"ok"));
    assert!(cloud.try_recv().is_none());
}

/// Commands reach the device, in order; to an offline device with a persistent session they
/// are queued by the hub and delivered on reconnect.
pub async fn commands(b: &dyn Backend) {
    let fleet = start(b, &["dev-1"]).await;
    let client = fleet.client(b, 0).connect().await.unwrap();
    let mut commands = client.commands().unwrap();
    assert!(matches!(client.commands(), Err(Error::Precondition(_))));
    // Subscriptions are asynchronous: wait until the hub has them.
    wait_for(|| !fleet.hub.subscriptions_of("dev-1").is_empty()).await;
    for i in 0..5 {
        let n = fleet
            .hub
            .send_command("dev-1", "blink", format!("{i}"))
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
    for i in 0..5 {
        let c = tokio::time::timeout(WAIT, commands.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.name, "blink");
        assert_eq!(c.payload, Bytes::from(format!("{i}")));
    }
    // Offline: queued by the hub for the persistent session.
    client.shutdown(WAIT).await;
    drop(client);
    wait_for(|| fleet.hub.connected_clients().is_empty()).await;
    assert_eq!(
        fleet
            .hub
            .send_command("dev-1", "reboot", "later")
            .await
            .unwrap(),
        1
    );
    let client = fleet.client(b, 0).connect().await.unwrap();
    let mut commands = client.commands().unwrap();
    let c = tokio::time::timeout(WAIT, commands.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((c.name.as_str(), &c.payload[..]), ("reboot", &b"later"[..]));
    // Unknown device and bad names are typed errors.
    assert!(matches!(
        fleet.hub.send_command("nobody", "x", "y").await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        fleet.hub.send_command("dev-1", "a/b", "y").await,
        Err(Error::InvalidInput { .. })
    ));
}

/// The twin: reports merge and bump the version; a stale expected version is a conflict that
/// changes nothing; desired changes reach the device; the hub's copy agrees with the device's.
pub async fn twin_versioning_and_conflicts(b: &dyn Backend) {
    let fleet = start(b, &["dev-1"]).await;
    let client = fleet.client(b, 0).connect().await.unwrap();
    let mut desired = client.twin().desired_changes().unwrap();
    wait_for(|| fleet.hub.subscriptions_of("dev-1").len() >= 4).await;
    let twin = client.twin();
    let v1 = twin
        .report(json!({"firmware": "1.0", "net": {"rssi": -70}}))
        .await
        .unwrap();
    let v2 = twin
        .report(json!({"net": {"rssi": null, "ip": "10.0.0.2"}}))
        .await
        .unwrap();
    assert!(v2 > v1);
    let doc = twin.get().await.unwrap();
    assert_eq!(doc.version(), v2);
    assert_eq!(
        serde_json::Value::Object(doc.reported().clone()),
        json!({"firmware": "1.0", "net": {"ip": "10.0.0.2"}})
    );
    // Stale version: conflict, nothing changed.
    match twin.report_if_version(json!({"firmware": "2.0"}), v1).await {
        Err(Error::Conflict {
            expected, current, ..
        }) => assert_eq!((expected, current), (v1, v2)),
        other => panic!("{other:?}"),
    }
    assert_eq!(twin.get().await.unwrap().reported()["firmware"], "1.0");
    let v3 = twin
        .report_if_version(json!({"firmware": "2.0"}), v2)
        .await
        .unwrap();
    assert!(v3 > v2);
    // Bad reports: typed errors.
    assert!(matches!(
        twin.report(json!([1, 2])).await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        twin.report(json!({"$version": 1})).await,
        Err(Error::InvalidInput { .. })
    ));
    // Desired, from the cloud side.
    let v4 = fleet
        .hub
        .update_desired("dev-1", json!({"interval": 30}), None)
        .await
        .unwrap();
    let change = tokio::time::timeout(WAIT, desired.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(change.patch["interval"], 30);
    assert_eq!(change.version, v4);
    assert!(matches!(
        fleet
            .hub
            .update_desired("dev-1", json!({"interval": 60}), Some(v1))
            .await,
        Err(Error::Conflict { .. })
    ));
    let hub_copy = fleet.hub.twin("dev-1").unwrap();
    assert_eq!(hub_copy.desired()["interval"], 30);
    assert_eq!(hub_copy, twin.get().await.unwrap());
}

/// Direct methods: answered, unknown (404), timed out (504), panicking (500) — and the client
/// keeps working after each.
pub async fn methods(b: &dyn Backend) {
    let fleet = start(b, &["dev-1"]).await;
    let client = fleet.client(b, 0).connect().await.unwrap();
    if !client.capabilities().supports(Feature::Methods) {
        // Not a feature of this backend: the cloud side says so, typed.
        assert!(matches!(
            fleet
                .hub
                .invoke_method("dev-1", "add", json!({}), WAIT)
                .await,
            Err(Error::NotSupported(_))
        ));
        return;
    }
    client.on_method("add", |args| async move {
        let a = args["a"].as_i64().unwrap_or(0);
        let b = args["b"].as_i64().unwrap_or(0);
        MethodResponse::ok(json!({"sum": a + b}))
    });
    client.on_method_with_timeout("slow", Duration::from_millis(100), |_| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        MethodResponse::ok(json!(null))
    });
    client.on_method("boom", |_| async { panic!("handler bug") });
    wait_for(|| fleet.hub.subscriptions_of("dev-1").len() >= 4).await;
    let call = |m: &'static str, args| fleet.hub.invoke_method("dev-1", m, args, WAIT);
    let r = call("add", json!({"a": 2, "b": 3})).await.unwrap();
    assert_eq!((r.status, r.payload.clone()), (200, json!({"sum": 5})));
    assert_eq!(call("nope", json!({})).await.unwrap().status, 404);
    assert_eq!(call("slow", json!({})).await.unwrap().status, 504);
    assert_eq!(call("boom", json!({})).await.unwrap().status, 500);
    let r = call("add", json!({"a": 40, "b": 2})).await.unwrap();
    assert_eq!(r.payload, json!({"sum": 42}));
    // The cloud side's timeout, and an offline device.
    client.on_method("silent", |_| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        MethodResponse::ok(json!(null))
    });
    assert!(matches!(
        fleet
            .hub
            .invoke_method("dev-1", "silent", json!({}), Duration::from_millis(200))
            .await,
        Err(Error::Timeout(_))
    ));
    client.shutdown(WAIT).await;
    wait_for(|| fleet.hub.connected_clients().is_empty()).await;
    assert!(matches!(
        call("add", json!({})).await,
        Err(Error::Unavailable(_))
    ));
}

/// A publish outside the device's policy is denied with an explanation naming why, and the
/// device's connection is closed (the dialect's behaviour); everyone else keeps working.
pub async fn denial(b: &dyn Backend) {
    let fleet = start(b, &["dev-1", "dev-2"]).await;
    let mut events = fleet.hub.events();
    let mut cloud = fleet.hub.subscribe(b.telemetry_filter()).unwrap();
    let victim = fleet.client(b, 1).connect().await.unwrap();
    // dev-1 tries to publish as dev-2, with a raw MQTT client and its own certificate.
    let dialect = b.dialect(&fleet.hub);
    let foreign = dialect
        .telemetry_topic(&fleetkit::identity::DeviceId::new("dev-2").unwrap(), &[])
        .unwrap();
    let endpoint = dialect.endpoint().clone();
    let mut options = rumqttc::MqttOptions::new("dev-1", endpoint.host.clone(), endpoint.port);
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(
            fleetkit::device::tls_config(&endpoint, Some(&fleet.credentials[0])).unwrap(),
        ),
    ));
    let (raw, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    raw.publish(foreign.clone(), rumqttc::QoS::AtLeastOnce, false, "spoof")
        .await
        .unwrap();
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            if eventloop.poll().await.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the hub kept the offending connection");
    let explanation = tokio::time::timeout(WAIT, async {
        loop {
            if let HubEvent::PolicyDenied {
                client_id,
                explanation,
            } = events.recv().await.unwrap()
                && client_id == "dev-1"
            {
                return explanation;
            }
        }
    })
    .await
    .unwrap();
    assert!(explanation.contains(&foreign), "{explanation}");
    assert!(explanation.contains("denied"), "{explanation}");
    assert!(
        cloud.try_recv().is_none(),
        "the spoofed message was delivered"
    );
    // The other device is unaffected.
    victim
        .send_telemetry(Telemetry::new("still here"))
        .await
        .unwrap();
    let m = tokio::time::timeout(WAIT, cloud.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload, Bytes::from_static(b"still here"));
}

/// Revoking the certificate of a connected device drops its connection at once and every
/// reconnect is refused; the client reports it and keeps trying with backoff.
pub async fn revocation_while_connected(b: &dyn Backend) {
    let fleet = start(b, &["dev-1"]).await;
    let client = fleet.client(b, 0).connect().await.unwrap();
    let cert_id = fleet.credentials[0].leaf().fingerprint_sha256();
    let closed = fleet
        .hub
        .set_certificate_state(&cert_id, CertificateState::Revoked)
        .unwrap();
    assert_eq!(closed, 1);
    let state = wait_state(&client, |s| {
        matches!(s, ConnectionState::Disconnected { refused: true, .. })
    })
    .await;
    let ConnectionState::Disconnected { attempt, .. } = state else {
        unreachable!()
    };
    // It keeps being refused.
    wait_state(&client, |s| {
        matches!(s, ConnectionState::Disconnected { refused: true, attempt: a, .. } if *a >= attempt + 2)
    })
    .await;
    assert!(fleet.hub.connected_clients().is_empty());
    // A fresh client with the revoked credential: refused up front, typed.
    let err = fleet.client(b, 0).connect().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Revoked(_) | Error::Unauthenticated(_) | Error::PermissionDenied(_)
        ),
        "{err:?}"
    );
}

/// Stop the hub, send while it is down (queued), start it again on the same address and data
/// directory: every QoS 1 message arrives (at least once, in order of first arrival), and the
/// reconnect delays show jitter under the cap.
pub async fn reconnect_with_queued_qos1(b: &dyn Backend) {
    let data = tempfile::tempdir().unwrap();
    let fleet = start_with(b, &["dev-1"], None, Some(data.path())).await;
    let addr = fleet.hub.mqtt_addr();
    let credential = fleet.credentials[0].clone();
    let client = client_for(b, &fleet.hub, "dev-1", credential.clone())
        .connect()
        .await
        .unwrap();
    let mut states = client.state_changes();
    client
        .send_telemetry(Telemetry::new("before"))
        .await
        .unwrap();
    fleet.hub.shutdown().await;
    wait_state(&client, |s| {
        matches!(s, ConnectionState::Disconnected { .. })
    })
    .await;
    let receipts: Vec<_> = (0..50)
        .map(|i| {
            client
                .queue_telemetry(Telemetry::new(format!("m{i}")))
                .unwrap()
        })
        .collect();
    assert_eq!(client.queued(), 50);
    // Record the backoff delays while the hub is down.
    let mut delays = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while delays.len() < 12 {
            states.changed().await.unwrap();
            if let ConnectionState::Disconnected { retry_in, .. } =
                states.borrow_and_update().clone()
            {
                delays.push(retry_in);
            }
        }
    })
    .await
    .unwrap();
    let cap = Duration::from_millis(320);
    assert!(delays.iter().all(|d| *d <= cap), "{delays:?}");
    let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
    assert!(distinct.len() >= 6, "no jitter: {delays:?}");
    // Back on the same address and data directory.
    let hub = b
        .hub()
        .bind(addr)
        .data_dir(data.path())
        .start()
        .await
        .unwrap();
    let mut cloud = hub.subscribe(b.telemetry_filter()).unwrap();
    for r in receipts {
        tokio::time::timeout(WAIT, r.acknowledged())
            .await
            .unwrap()
            .unwrap();
    }
    let mut seen = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), cloud.recv()).await {
        seen.push(String::from_utf8(m.payload.to_vec()).unwrap());
    }
    let mut first = Vec::new();
    for s in &seen {
        if !first.contains(s) {
            first.push(s.clone());
        }
    }
    let expected: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    assert_eq!(first, expected, "all {seen:?}");
    assert_eq!(client.queued(), 0);
}

/// Polls `cond` until it holds.
pub async fn wait_for(mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("condition not reached in time");
}
