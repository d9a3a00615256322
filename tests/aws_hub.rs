//! The local hub speaking AWS IoT Core's dialect, seen through a plain MQTT client (rumqttc):
//! connect semantics, AWS's limits, QoS 2, retained-message rules and lifecycle events.
#![cfg(feature = "local")]

mod support;

use std::time::Duration;

use fleetkit::identity::X509Credential;
use fleetkit::local::dialect::aws::AwsHubDialect;
use fleetkit::local::{DeviceRecord, HubSubscription, LocalHub};
use fleetkit::policy::{AttachTarget, PolicyDocument, builtin};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeFilter,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use serde_json::Value;
use tokio::time::timeout;

/// The AWS device policy, plus retained publishes on the thing's telemetry topics (for the
/// retained-message rules).
fn policy() -> PolicyDocument {
    let mut doc = builtin::aws_device();
    doc.statements.extend(
        PolicyDocument::from_json(
            r#"{"Version":"2012-10-17","Statement":[
              {"Effect":"Allow","Action":["iot:RetainPublish","iot:Subscribe","iot:Receive"],
               "Resource":["arn:aws:iot:*:*:topic/dt/${iot:Connection.Thing.ThingName}/*",
                           "arn:aws:iot:*:*:topicfilter/dt/${iot:Connection.Thing.ThingName}/*"]}]}"#,
        )
        .unwrap()
        .statements,
    );
    doc
}

async fn hub_with(things: &[&str]) -> (LocalHub, Vec<X509Credential>) {
    let hub = LocalHub::builder()
        .dialect(AwsHubDialect::new())
        .start()
        .await
        .unwrap();
    hub.put_policy("device", &policy()).unwrap();
    hub.attach_policy("device", AttachTarget::Group("fleet".into()))
        .unwrap();
    let mut creds = Vec::new();
    for t in things {
        hub.create_device(DeviceRecord::new(t).in_group("fleet"))
            .unwrap();
        creds.push(hub.issue_device_credential(t).unwrap());
    }
    (hub, creds)
}

fn options(hub: &LocalHub, client_id: &str, cred: &X509Credential) -> MqttOptions {
    let config = support::client_config(hub, cred, &[b"x-amzn-mqtt-ca"]);
    let mut opts = MqttOptions::new(client_id, "localhost", hub.mqtt_addr().port());
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    opts.set_keep_alive(Duration::from_secs(30));
    // What the AWS SDKs send: metrics in the username, no password.
    opts.set_credentials("?SDK=Rust&Version=0.0.0-test", "");
    opts
}

/// Polls until CONNACK; returns its code (or the error text if the connection failed).
async fn connack(ev: &mut EventLoop) -> Result<ConnectReturnCode, String> {
    loop {
        match timeout(Duration::from_secs(10), ev.poll()).await.unwrap() {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => return Ok(ack.code),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Polls until the connection fails; panics if it is still up after 5 s.
async fn closed(ev: &mut EventLoop) {
    loop {
        match timeout(Duration::from_secs(5), ev.poll()).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return,
            Err(_) => panic!("the hub did not close the connection"),
        }
    }
}

/// Polls for `window`; returns the incoming packets (panics if the connection fails).
async fn incoming_for(ev: &mut EventLoop, window: Duration) -> Vec<Packet> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(r) = tokio::time::timeout_at(deadline, ev.poll()).await {
        match r {
            Ok(Event::Incoming(p)) => got.push(p),
            Ok(_) => {}
            Err(e) => panic!("connection failed: {e}"),
        }
    }
    got
}

async fn presence(sub: &mut HubSubscription) -> Value {
    let m = timeout(Duration::from_secs(5), sub.recv())
        .await
        .expect("a lifecycle event")
        .expect("subscription open");
    serde_json::from_slice(&m.payload).unwrap()
}

#[tokio::test]
async fn connect_as_the_thing_with_sdk_metrics_in_the_username() {
    let (hub, creds) = hub_with(&["thing-1", "thing-2"]).await;
    let (_c, mut ev) = AsyncClient::new(options(&hub, "thing-1", &creds[0]), 10);
    assert_eq!(connack(&mut ev).await, Ok(ConnectReturnCode::Success));
    // Another thing's name as client id: the policy's thing variable does not match.
    let (_c2, mut ev2) = AsyncClient::new(options(&hub, "thing-1", &creds[1]), 10);
    assert!(connack(&mut ev2).await != Ok(ConnectReturnCode::Success));
    // Client ids starting with `$` are AWS's.
    let (_c3, mut ev3) = AsyncClient::new(options(&hub, "$thing-2", &creds[1]), 10);
    assert!(connack(&mut ev3).await != Ok(ConnectReturnCode::Success));
    assert_eq!(hub.connected_clients(), vec!["thing-1".to_string()]);
}

#[tokio::test]
async fn lifecycle_events_and_duplicate_client_ids() {
    let (hub, creds) = hub_with(&["thing-1"]).await;
    let mut events = hub.subscribe("$aws/events/presence/+/thing-1").unwrap();
    let (_first, mut first) = AsyncClient::new(options(&hub, "thing-1", &creds[0]), 10);
    assert_eq!(connack(&mut first).await, Ok(ConnectReturnCode::Success));
    let connected = presence(&mut events).await;
    assert_eq!(connected["eventType"], "connected");
    assert_eq!(connected["clientId"], "thing-1");
    assert_eq!(connected["ipAddress"], "127.0.0.1");
    assert_eq!(
        connected["principalIdentifier"],
        creds[0].leaf().fingerprint_sha256()
    );
    assert!(connected["timestamp"].as_u64().unwrap() > 1_700_000_000_000);
    // The same client id again: the new connection wins, the old one is dropped.
    let (second, mut second_ev) = AsyncClient::new(options(&hub, "thing-1", &creds[0]), 10);
    assert_eq!(
        connack(&mut second_ev).await,
        Ok(ConnectReturnCode::Success)
    );
    closed(&mut first).await;
    let mut seen = vec![presence(&mut events).await, presence(&mut events).await];
    seen.sort_by_key(|e| e["versionNumber"].as_u64());
    let dropped = seen
        .iter()
        .find(|e| e["eventType"] == "disconnected")
        .expect("a disconnected event");
    assert_eq!(dropped["disconnectReason"], "DUPLICATE_CLIENTID");
    assert_eq!(dropped["clientInitiatedDisconnect"], false);
    // The dropped connection is the first one; the new one is another session.
    assert_eq!(dropped["sessionIdentifier"], connected["sessionIdentifier"]);
    let reconnected = seen
        .iter()
        .find(|e| e["eventType"] == "connected")
        .expect("a connected event");
    assert_ne!(
        reconnected["sessionIdentifier"], connected["sessionIdentifier"],
        "{seen:?}"
    );
    // A clean DISCONNECT.
    second.disconnect().await.unwrap();
    closed(&mut second_ev).await;
    let bye = presence(&mut events).await;
    assert_eq!(bye["disconnectReason"], "CLIENT_INITIATED_DISCONNECT");
    assert_eq!(bye["clientInitiatedDisconnect"], true);
}

#[tokio::test]
async fn at_most_eight_filters_per_subscribe_and_eight_topic_levels() {
    let (hub, creds) = hub_with(&["thing-1"]).await;
    let filters = |n: usize| {
        (0..n)
            .map(|i| SubscribeFilter::new(format!("dt/thing-1/f{i}"), QoS::AtLeastOnce))
            .collect::<Vec<_>>()
    };
    let (c, mut ev) = AsyncClient::new(options(&hub, "thing-1", &creds[0]), 10);
    assert_eq!(connack(&mut ev).await, Ok(ConnectReturnCode::Success));
    c.subscribe_many(filters(8)).await.unwrap();
    let got = incoming_for(&mut ev, Duration::from_millis(500)).await;
    let ack = got
        .iter()
        .find_map(|p| match p {
            Packet::SubAck(a) => Some(a),
            _ => None,
        })
        .expect("SUBACK for 8 filters");
    assert_eq!(ack.return_codes.len(), 8);
    assert!(
        ack.return_codes
            .iter()
            .all(|c| matches!(c, SubscribeReasonCode::Success(_)))
    );
    // Nine levels in a filter: refused in the SUBACK, the connection stays.
    c.subscribe("dt/thing-1/a/b/c/d/e/f/g", QoS::AtLeastOnce)
        .await
        .unwrap();
    let got = incoming_for(&mut ev, Duration::from_millis(500)).await;
    assert!(got.iter().any(|p| matches!(p, Packet::SubAck(a)
        if a.return_codes == vec![SubscribeReasonCode::Failure])));
    // Eight levels are fine to publish; nine close the connection.
    c.publish("dt/thing-1/a/b/c/d/e/f", QoS::AtLeastOnce, false, "8")
        .await
        .unwrap();
    let got = incoming_for(&mut ev, Duration::from_millis(500)).await;
    assert!(got.iter().any(|p| matches!(p, Packet::PubAck(_))));
    c.publish("dt/thing-1/a/b/c/d/e/f/g", QoS::AtLeastOnce, false, "9")
        .await
        .unwrap();
    closed(&mut ev).await;
    // Nine filters in one SUBSCRIBE close the connection.
    let (c, mut ev) = AsyncClient::new(options(&hub, "thing-1", &creds[0]), 10);
    assert_eq!(connack(&mut ev).await, Ok(ConnectReturnCode::Success));
    c.subscribe_many(filters(9)).await.unwrap();
    closed(&mut ev).await;
}

#[tokio::test]
async fn qos2_is_never_answered() {
    let (hub, creds) = hub_with(&["thing-1"]).await;
    let mut cloud = hub.subscribe("dt/#").unwrap();
    let (c, mut ev) = AsyncClient::new(options(&hub, "thing-1", &creds[0]), 10);
    assert_eq!(connack(&mut ev).await, Ok(ConnectReturnCode::Success));
    c.subscribe("dt/thing-1/q2", QoS::ExactlyOnce)
        .await
        .unwrap();
    c.publish("dt/thing-1/t", QoS::ExactlyOnce, false, "exactly once?")
        .await
        .unwrap();
    let got = incoming_for(&mut ev, Duration::from_millis(700)).await;
    assert!(
        !got.iter()
            .any(|p| matches!(p, Packet::SubAck(_) | Packet::PubRec(_))),
        "{got:?}"
    );
    assert!(cloud.try_recv().is_none(), "a QoS 2 publish went nowhere");
    // The connection is still fine for QoS 1.
    c.publish("dt/thing-1/t", QoS::AtLeastOnce, false, "at least once")
        .await
        .unwrap();
    let got = incoming_for(&mut ev, Duration::from_millis(500)).await;
    assert!(got.iter().any(|p| matches!(p, Packet::PubAck(_))));
    let m = timeout(Duration::from_secs(5), cloud.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"at least once");
}

#[tokio::test]
async fn retained_messages_follow_aws_rules() {
    let (hub, creds) = hub_with(&["thing-1"]).await;
    let (c, mut ev) = AsyncClient::new(options(&hub, "thing-1", &creds[0]), 10);
    assert_eq!(connack(&mut ev).await, Ok(ConnectReturnCode::Success));
    c.publish("dt/thing-1/status", QoS::AtLeastOnce, true, "online")
        .await
        .unwrap();
    let got = incoming_for(&mut ev, Duration::from_millis(500)).await;
    assert!(got.iter().any(|p| matches!(p, Packet::PubAck(_))));
    // A wildcard subscription does not get the retained message; the exact topic does.
    c.subscribe("dt/thing-1/#", QoS::AtLeastOnce).await.unwrap();
    let got = incoming_for(&mut ev, Duration::from_millis(500)).await;
    assert!(
        !got.iter().any(|p| matches!(p, Packet::Publish(_))),
        "{got:?}"
    );
    c.subscribe("dt/thing-1/status", QoS::AtLeastOnce)
        .await
        .unwrap();
    let got = incoming_for(&mut ev, Duration::from_millis(500)).await;
    let retained: Vec<_> = got
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(retained.len(), 1, "{got:?}");
    assert!(retained[0].retain);
    assert_eq!(&retained[0].payload[..], b"online");
    // Retained publishes to reserved topics close the connection.
    c.publish(
        "$aws/things/thing-1/shadow/update",
        QoS::AtLeastOnce,
        true,
        r#"{"state":{"reported":{"a":1}}}"#,
    )
    .await
    .unwrap();
    closed(&mut ev).await;
}

/// Subscribes `c` to `filters` and waits for the SUBACK.
async fn subscribe(c: &AsyncClient, ev: &mut EventLoop, filters: &[&str]) {
    c.subscribe_many(
        filters
            .iter()
            .map(|f| SubscribeFilter::new(f.to_string(), QoS::AtLeastOnce)),
    )
    .await
    .unwrap();
    loop {
        match timeout(Duration::from_secs(5), ev.poll()).await.unwrap() {
            Ok(Event::Incoming(Packet::SubAck(_))) => return,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
}

/// Publishes `payload` to `topic` and returns the next message on `answer_prefix/…`.
async fn ask(
    c: &AsyncClient,
    ev: &mut EventLoop,
    topic: &str,
    payload: Vec<u8>,
    answer_prefix: &str,
) -> (String, Value) {
    c.publish(topic, QoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
    loop {
        match timeout(Duration::from_secs(5), ev.poll()).await.unwrap() {
            Ok(Event::Incoming(Packet::Publish(p)))
                if p.topic.starts_with(answer_prefix)
                    && (p.topic.ends_with("/accepted") || p.topic.ends_with("/rejected")) =>
            {
                return (p.topic.clone(), serde_json::from_slice(&p.payload).unwrap());
            }
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn bad_shadow_requests_get_aws_answers_and_change_nothing() {
    let (hub, creds) = hub_with(&["thing-1"]).await;
    let (c, mut ev) = AsyncClient::new(options(&hub, "thing-1", &creds[0]), 10);
    assert_eq!(connack(&mut ev).await, Ok(ConnectReturnCode::Success));
    let shadow = "$aws/things/thing-1/shadow";
    subscribe(
        &c,
        &mut ev,
        &[&format!("{shadow}/update/+"), &format!("{shadow}/get/+")],
    )
    .await;
    let update = format!("{shadow}/update");
    let (topic, doc) = ask(
        &c,
        &mut ev,
        &update,
        br#"{"state":{"reported":{"fw":"1.0"}},"clientToken":"ok-1"}"#.to_vec(),
        &format!("{shadow}/update/"),
    )
    .await;
    assert_eq!(topic, format!("{shadow}/update/accepted"));
    assert_eq!(doc["version"], 1);

    let deep = (0..8).fold(
        serde_json::json!(1),
        |v, i| serde_json::json!({ format!("l{i}"): v }),
    );
    let cases: Vec<(Vec<u8>, u64, &str)> = vec![
        (b"{not json".to_vec(), 400, "Invalid JSON"),
        (
            br#"{"clientToken":"t"}"#.to_vec(),
            400,
            "Missing required node: state",
        ),
        (
            br#"{"state":{"reported":{"fw":"2.0"}},"version":7}"#.to_vec(),
            409,
            "Version conflict",
        ),
        (
            format!(
                r#"{{"state":{{"reported":{{"a":1}}}},"clientToken":"{}"}}"#,
                "x".repeat(65)
            )
            .into_bytes(),
            400,
            "Invalid clientToken",
        ),
        (
            serde_json::to_vec(&serde_json::json!({"state": {"reported": deep}})).unwrap(),
            400,
            "JSON contains too many levels of nesting; maximum is 6",
        ),
        (
            serde_json::to_vec(
                &serde_json::json!({"state": {"reported": {"blob": "x".repeat(9 * 1024)}}}),
            )
            .unwrap(),
            413,
            "The payload exceeds the maximum size allowed",
        ),
        (
            b"{\"state\":{\"reported\":{\"s\":\"\xff\xfe\"}}}".to_vec(),
            415,
            "Unsupported documented encoding; supported encoding is UTF-8",
        ),
    ];
    for (payload, code, message) in cases {
        let (topic, doc) = ask(&c, &mut ev, &update, payload, &format!("{shadow}/update/")).await;
        assert_eq!(topic, format!("{shadow}/update/rejected"), "{message}");
        assert_eq!(doc["code"], code, "{doc}");
        assert_eq!(doc["message"], message, "{doc}");
    }
    // Nothing changed: still version 1 with what was first reported.
    let (topic, doc) = ask(
        &c,
        &mut ev,
        &format!("{shadow}/get"),
        br#"{"clientToken":"g"}"#.to_vec(),
        &format!("{shadow}/get/"),
    )
    .await;
    assert_eq!(topic, format!("{shadow}/get/accepted"));
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["state"]["reported"], serde_json::json!({"fw": "1.0"}));
    assert_eq!(doc["clientToken"], "g");
}

#[tokio::test]
async fn another_things_shadow_and_jobs_are_out_of_reach() {
    let (hub, creds) = hub_with(&["thing-1", "thing-2"]).await;
    let mut events = hub.events();
    let (c, mut ev) = AsyncClient::new(options(&hub, "thing-1", &creds[0]), 10);
    assert_eq!(connack(&mut ev).await, Ok(ConnectReturnCode::Success));
    // Subscribing to thing-2's shadow answers is refused in the SUBACK.
    c.subscribe("$aws/things/thing-2/shadow/get/+", QoS::AtLeastOnce)
        .await
        .unwrap();
    let got = incoming_for(&mut ev, Duration::from_millis(500)).await;
    assert!(got.iter().any(|p| matches!(p, Packet::SubAck(a)
        if a.return_codes == vec![SubscribeReasonCode::Failure])));
    // Publishing to thing-2's jobs: denied, and AWS closes the connection.
    c.publish(
        "$aws/things/thing-2/jobs/start-next",
        QoS::AtLeastOnce,
        false,
        "{}",
    )
    .await
    .unwrap();
    closed(&mut ev).await;
    let denied = timeout(Duration::from_secs(5), async {
        loop {
            if let fleetkit::local::HubEvent::PolicyDenied { explanation, .. } =
                events.recv().await.unwrap()
                && explanation.contains("iot:Publish")
            {
                return explanation;
            }
        }
    })
    .await
    .unwrap();
    assert!(denied.contains("thing-2/jobs"), "{denied}");
}

#[tokio::test]
async fn shadows_and_jobs_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let aws = std::sync::Arc::new(AwsHubDialect::new());
    let hub = LocalHub::builder()
        .dialect_shared(aws.clone())
        .data_dir(data.path())
        .start()
        .await
        .unwrap();
    hub.create_device(DeviceRecord::new("thing-1")).unwrap();
    aws.update_shadow(
        "thing-1",
        Some("config"),
        &serde_json::json!({"state": {"desired": {"interval": 60}}}),
    )
    .unwrap();
    aws.create_job(fleetkit::local::dialect::aws::jobs::JobSpec::new(
        "job-1",
        serde_json::json!({"op": "reboot"}),
        vec!["thing-1".to_string()],
    ))
    .unwrap();
    let addr = hub.mqtt_addr();
    hub.shutdown().await;
    drop(aws);

    let aws = std::sync::Arc::new(AwsHubDialect::new());
    let _hub = LocalHub::builder()
        .dialect_shared(aws.clone())
        .bind(addr)
        .data_dir(data.path())
        .start()
        .await
        .unwrap();
    let doc = aws.shadow_document("thing-1", Some("config")).unwrap();
    assert_eq!(doc["state"]["desired"]["interval"], 60);
    assert_eq!(doc["version"], 1);
    assert_eq!(
        aws.jobs().executions("job-1").unwrap(),
        vec![(
            "thing-1".to_string(),
            fleetkit::local::dialect::aws::jobs::JobStatus::Queued
        )]
    );
    // Unknown things are refused from the cloud side, typed.
    assert!(matches!(
        aws.update_shadow("nobody", None, &serde_json::json!({"state": {}})),
        Err(fleetkit::Error::NotFound { .. })
    ));
}

#[tokio::test]
async fn clients_without_sni_are_refused_in_the_handshake() {
    let (hub, creds) = hub_with(&["thing-1"]).await;
    let mut events = hub.events();
    // Dialling the IP address: rustls sends no server name.
    let config = support::client_config(&hub, &creds[0], &[]);
    let mut opts = MqttOptions::new("thing-1", "127.0.0.1", hub.mqtt_addr().port());
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    let (_c, mut ev) = AsyncClient::new(opts, 10);
    assert!(connack(&mut ev).await.is_err());
    let reason = timeout(Duration::from_secs(5), async {
        loop {
            if let fleetkit::local::HubEvent::AuthFailure { reason, .. } =
                events.recv().await.unwrap()
            {
                return reason;
            }
        }
    })
    .await
    .unwrap();
    assert!(reason.contains("TLS handshake failed"), "{reason}");
    // The same client naming the server gets in.
    let (_c, mut ev) = AsyncClient::new(options(&hub, "thing-1", &creds[0]), 10);
    assert_eq!(connack(&mut ev).await, Ok(ConnectReturnCode::Success));
}
