//! The local hub over real sockets and real TLS, driven by MQTT clients nobody here wrote:
//! rumqttc, and mosquitto_pub / mosquitto_sub (installed by `.ci/run`).
#![cfg(feature = "local")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use fleetkit::identity::X509Credential;
use fleetkit::local::{CertificateState, DeviceRecord, HubEvent, LocalHub};
use fleetkit::policy::{AttachTarget, PolicyDocument};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, LastWill, MqttOptions, Packet, QoS,
    TlsConfiguration, Transport,
};
use tokio::time::timeout;

async fn hub_with(devices: &[&str]) -> (LocalHub, Vec<X509Credential>) {
    support::start_fleet(LocalHub::builder(), devices).await
}

fn options(hub: &LocalHub, client_id: &str, cred: &X509Credential, clean: bool) -> MqttOptions {
    let config = support::client_config(hub, cred, &[]);
    let mut opts = MqttOptions::new(client_id, "localhost", hub.mqtt_addr().port());
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    opts.set_clean_session(clean);
    opts.set_keep_alive(Duration::from_secs(30));
    opts
}

/// Polls until CONNACK; returns the session-present flag.
async fn connected(ev: &mut EventLoop) -> bool {
    loop {
        match timeout(Duration::from_secs(10), ev.poll()).await.unwrap() {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                assert_eq!(ack.code, ConnectReturnCode::Success);
                return ack.session_present;
            }
            Ok(_) => {}
            Err(e) => panic!("connection failed: {e}"),
        }
    }
}

/// Polls until `n` publishes arrive (or panics after 10 s); returns (topic, payload, retain).
async fn receive(ev: &mut EventLoop, n: usize) -> Vec<(String, Vec<u8>, bool)> {
    let mut got = Vec::new();
    while got.len() < n {
        match timeout(Duration::from_secs(10), ev.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                got.push((p.topic.clone(), p.payload.to_vec(), p.retain))
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("connection failed while receiving: {e}"),
            Err(_) => panic!("timed out with {} of {n} messages: {got:?}", got.len()),
        }
    }
    got
}

/// Drives the event loop until SUBACK (so the subscription is in place).
async fn subscribed(ev: &mut EventLoop) -> Vec<rumqttc::SubscribeReasonCode> {
    loop {
        match timeout(Duration::from_secs(10), ev.poll()).await.unwrap() {
            Ok(Event::Incoming(Packet::SubAck(ack))) => return ack.return_codes,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
}

/// Drives the event loop until the connection fails; returns the error text.
async fn fails(ev: &mut EventLoop) -> String {
    loop {
        match timeout(Duration::from_secs(10), ev.poll()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return e.to_string(),
            Err(_) => panic!("the connection did not fail within 10 s"),
        }
    }
}

/// Drives a publisher's event loop until `acks` PUBACKs arrived.
async fn acked(ev: &mut EventLoop, acks: usize) {
    let mut n = 0;
    while n < acks {
        match timeout(Duration::from_secs(10), ev.poll()).await.unwrap() {
            Ok(Event::Incoming(Packet::PubAck(_))) => n += 1,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn devices_publish_and_subscribe_under_policy() {
    let (hub, creds) = hub_with(&["dev-a", "dev-b"]).await;
    let (sub, mut sub_ev) = AsyncClient::new(options(&hub, "dev-b", &creds[1], true), 10);
    connected(&mut sub_ev).await;
    sub.subscribe("fleet/+/temp", QoS::AtLeastOnce)
        .await
        .unwrap();
    sub.subscribe("admin/#", QoS::AtLeastOnce).await.unwrap();
    let codes = subscribed(&mut sub_ev).await;
    assert!(matches!(
        codes[0],
        rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)
    ));
    assert_eq!(
        subscribed(&mut sub_ev).await,
        vec![rumqttc::SubscribeReasonCode::Failure]
    );

    let (publisher, mut pub_ev) = AsyncClient::new(options(&hub, "dev-a", &creds[0], true), 10);
    connected(&mut pub_ev).await;
    publisher
        .publish(
            "fleet/dev-a/temp",
            QoS::AtLeastOnce,
            false,
            b"21.5".to_vec(),
        )
        .await
        .unwrap();
    acked(&mut pub_ev, 1).await;
    let got = receive(&mut sub_ev, 1).await;
    assert_eq!(
        got,
        vec![("fleet/dev-a/temp".to_string(), b"21.5".to_vec(), false)]
    );

    // dev-a may not publish as dev-b: the hub closes its connection and says why.
    let mut events = hub.events();
    publisher
        .publish(
            "fleet/dev-b/temp",
            QoS::AtLeastOnce,
            false,
            b"spoof".to_vec(),
        )
        .await
        .unwrap();
    fails(&mut pub_ev).await;
    let explanation = loop {
        match timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            HubEvent::PolicyDenied {
                client_id,
                explanation,
            } if client_id == "dev-a" => break explanation,
            _ => {}
        }
    };
    assert!(
        explanation.contains("denied: no statement")
            && explanation.contains("topic/fleet/dev-b/temp"),
        "{explanation}"
    );
    // The spoofed message never reached the subscriber; the hub still serves it.
    assert!(
        timeout(Duration::from_millis(500), receive(&mut sub_ev, 1))
            .await
            .is_err()
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn receive_is_checked_for_every_delivery() {
    let (hub, creds) = hub_with(&["dev-a", "dev-b"]).await;
    let (sub, mut sub_ev) = AsyncClient::new(options(&hub, "dev-b", &creds[1], true), 10);
    connected(&mut sub_ev).await;
    sub.subscribe("fleet/#", QoS::AtMostOnce).await.unwrap();
    subscribed(&mut sub_ev).await;
    let (publisher, mut pub_ev) = AsyncClient::new(options(&hub, "dev-a", &creds[0], true), 10);
    connected(&mut pub_ev).await;
    publisher
        .publish(
            "fleet/dev-a/private",
            QoS::AtLeastOnce,
            false,
            b"secret".to_vec(),
        )
        .await
        .unwrap();
    publisher
        .publish(
            "fleet/dev-a/public",
            QoS::AtLeastOnce,
            false,
            b"hello".to_vec(),
        )
        .await
        .unwrap();
    acked(&mut pub_ev, 2).await;
    let got = receive(&mut sub_ev, 1).await;
    assert_eq!(
        got[0].0, "fleet/dev-a/public",
        "the Deny on Receive filtered the private topic"
    );
}

#[tokio::test]
async fn qos1_messages_wait_for_a_persistent_session() {
    let (hub, creds) = hub_with(&["dev-a", "dev-b"]).await;
    {
        let (sub, mut sub_ev) = AsyncClient::new(options(&hub, "dev-b", &creds[1], false), 10);
        assert!(!connected(&mut sub_ev).await);
        sub.subscribe("fleet/dev-a/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        subscribed(&mut sub_ev).await;
        sub.disconnect().await.unwrap();
        let _ = timeout(Duration::from_secs(2), fails(&mut sub_ev)).await;
    }
    assert_eq!(
        hub.subscriptions_of("dev-b"),
        vec![("fleet/dev-a/#".to_string(), 1)]
    );
    let (publisher, mut pub_ev) = AsyncClient::new(options(&hub, "dev-a", &creds[0], true), 10);
    connected(&mut pub_ev).await;
    for i in 0..3 {
        publisher
            .publish(
                format!("fleet/dev-a/m{i}"),
                QoS::AtLeastOnce,
                false,
                vec![i],
            )
            .await
            .unwrap();
    }
    acked(&mut pub_ev, 3).await;
    let (_sub, mut sub_ev) = AsyncClient::new(options(&hub, "dev-b", &creds[1], false), 10);
    assert!(connected(&mut sub_ev).await, "session present");
    let got = receive(&mut sub_ev, 3).await;
    let topics: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(
        topics,
        ["fleet/dev-a/m0", "fleet/dev-a/m1", "fleet/dev-a/m2"]
    );
}

#[tokio::test]
async fn retained_messages_and_last_will() {
    let (hub, creds) = hub_with(&["dev-a", "dev-b"]).await;
    let (publisher, mut pub_ev) = {
        let mut opts = options(&hub, "dev-a", &creds[0], true);
        opts.set_last_will(LastWill::new(
            "fleet/dev-a/status",
            "offline",
            QoS::AtLeastOnce,
            false,
        ));
        AsyncClient::new(opts, 10)
    };
    connected(&mut pub_ev).await;
    publisher
        .publish("fleet/dev-a/config", QoS::AtLeastOnce, true, b"v1".to_vec())
        .await
        .unwrap();
    acked(&mut pub_ev, 1).await;

    let (sub, mut sub_ev) = AsyncClient::new(options(&hub, "dev-b", &creds[1], true), 10);
    connected(&mut sub_ev).await;
    sub.subscribe("fleet/dev-a/config", QoS::AtLeastOnce)
        .await
        .unwrap();
    let got = receive(&mut sub_ev, 1).await;
    assert_eq!(
        got,
        vec![("fleet/dev-a/config".into(), b"v1".to_vec(), true)]
    );
    sub.subscribe("fleet/dev-a/status", QoS::AtLeastOnce)
        .await
        .unwrap();
    subscribed(&mut sub_ev).await;

    // dev-a vanishes without DISCONNECT: its will is published.
    drop(publisher);
    drop(pub_ev);
    let got = receive(&mut sub_ev, 1).await;
    assert_eq!(got[0].0, "fleet/dev-a/status");
    assert_eq!(got[0].1, b"offline");
}

#[tokio::test]
async fn revocation_closes_the_live_connection_and_refuses_reconnects() {
    let (hub, creds) = hub_with(&["dev-a", "dev-b"]).await;
    let (_a, mut a_ev) = AsyncClient::new(options(&hub, "dev-a", &creds[0], true), 10);
    connected(&mut a_ev).await;
    let (_b, mut b_ev) = AsyncClient::new(options(&hub, "dev-b", &creds[1], true), 10);
    connected(&mut b_ev).await;
    let id = creds[0].leaf().fingerprint_sha256();
    assert_eq!(
        hub.set_certificate_state(&id, CertificateState::Revoked)
            .unwrap(),
        1
    );
    fails(&mut a_ev).await;
    // Reconnecting with the revoked certificate is refused in the TLS handshake.
    let err = fails(&mut a_ev).await;
    assert!(!err.is_empty());
    // Revocation is permanent.
    assert!(
        hub.set_certificate_state(&id, CertificateState::Active)
            .is_err()
    );
    // dev-b was not affected.
    assert_eq!(hub.connection_count(), 1);
    // Disabling a device closes its connection too.
    assert_eq!(hub.set_device_enabled("dev-b", false).unwrap(), 1);
    fails(&mut b_ev).await;
}

#[tokio::test]
async fn unknown_ca_and_unregistered_certificates_are_refused() {
    let (hub, _) = hub_with(&["dev-a"]).await;
    // A certificate from another CA.
    let other = LocalHub::builder().start().await.unwrap();
    other.create_device(DeviceRecord::new("dev-a")).unwrap();
    let foreign = other.issue_device_credential("dev-a").unwrap();
    let (_c, mut ev) = AsyncClient::new(options(&hub, "dev-a", &foreign, true), 10);
    fails(&mut ev).await;
    // A certificate from the right CA that was never registered.
    let key = std::sync::Arc::new(fleetkit::identity::SoftwareKey::generate_p256().unwrap());
    let cert = hub
        .ca()
        .issue(
            &fleetkit::identity::DeviceId::new("dev-a").unwrap(),
            fleetkit::identity::Signer::public_key_spki(&*key),
            &fleetkit::pki::DeviceCertOptions::default(),
        )
        .unwrap();
    let unregistered = X509Credential::new(vec![cert.der().clone()], key).unwrap();
    let (_c, mut ev) = AsyncClient::new(options(&hub, "dev-a", &unregistered, true), 10);
    fails(&mut ev).await;
    assert_eq!(hub.connection_count(), 0);
}

#[tokio::test]
async fn connect_as_another_client_id_is_not_authorized() {
    let (hub, creds) = hub_with(&["dev-a", "dev-b"]).await;
    let (_c, mut ev) = AsyncClient::new(options(&hub, "dev-b", &creds[0], true), 10);
    let err = fails(&mut ev).await;
    assert!(
        err.contains("NotAuthorized") || err.contains("refused"),
        "{err}"
    );
}

#[tokio::test]
async fn a_second_connection_with_the_same_client_id_takes_over() {
    let (hub, creds) = hub_with(&["dev-a"]).await;
    let (_first, mut first_ev) = AsyncClient::new(options(&hub, "dev-a", &creds[0], true), 10);
    connected(&mut first_ev).await;
    let (_second, mut second_ev) = AsyncClient::new(options(&hub, "dev-a", &creds[0], true), 10);
    connected(&mut second_ev).await;
    fails(&mut first_ev).await;
    assert_eq!(hub.connection_count(), 1);
}

/// mosquitto_pub / mosquitto_sub over mTLS: an allowed publish is delivered, a denied one not.
#[tokio::test]
async fn mosquitto_clients_interoperate() {
    let (hub, creds) = hub_with(&["dev-a", "dev-b"]).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("ca.pem"), hub.ca_certificate().to_pem()).unwrap();
    for (name, cred) in [("a", &creds[0]), ("b", &creds[1])] {
        std::fs::write(d.join(format!("{name}.pem")), cred.chain_pem()).unwrap();
        let der = cred.signer().export_pkcs8_der().unwrap();
        fleetkit::identity::SoftwareKey::from_pkcs8_der(&der)
            .unwrap()
            .write_pkcs8_pem(d.join(format!("{name}.key")))
            .unwrap();
    }
    let port = hub.mqtt_addr().port().to_string();
    let tls = |name: &str| {
        vec![
            "-h".to_string(),
            "localhost".into(),
            "-p".into(),
            port.clone(),
            "--cafile".into(),
            d.join("ca.pem").display().to_string(),
            "--cert".into(),
            d.join(format!("{name}.pem")).display().to_string(),
            "--key".into(),
            d.join(format!("{name}.key")).display().to_string(),
            "-V".into(),
            "mqttv311".into(),
        ]
    };
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args(tls("b"))
        .args([
            "-i", "dev-b", "-t", "fleet/#", "-q", "1", "-C", "1", "-v", "-W", "20",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (apt-get install mosquitto-clients)");
    // Wait until the subscriber is connected.
    let mut events = hub.events();
    loop {
        if let HubEvent::Connected { client_id, .. } =
            timeout(Duration::from_secs(10), events.recv())
                .await
                .unwrap()
                .unwrap()
            && client_id == "dev-b"
        {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Denied: dev-a publishing under dev-b's topic. It is sent first: had it been delivered,
    // mosquitto_sub (which exits after one message) would print it instead of the allowed one.
    let _ = tokio::process::Command::new("mosquitto_pub")
        .args(tls("a"))
        .args([
            "-i",
            "dev-a",
            "-t",
            "fleet/dev-b/x",
            "-m",
            "spoof",
            "-q",
            "1",
        ])
        .output()
        .await
        .unwrap();
    // Allowed.
    let allowed = tokio::process::Command::new("mosquitto_pub")
        .args(tls("a"))
        .args([
            "-i",
            "dev-a",
            "-t",
            "fleet/dev-a/x",
            "-m",
            "hello",
            "-q",
            "1",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    let out = timeout(Duration::from_secs(20), sub.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        "fleet/dev-a/x hello",
        "only the allowed message arrives"
    );
}

#[tokio::test]
async fn clean_sessions_leave_nothing_behind() {
    let (hub, creds) = hub_with(&["dev-a"]).await;
    let (c, mut ev) = AsyncClient::new(options(&hub, "dev-a", &creds[0], true), 10);
    connected(&mut ev).await;
    c.subscribe("fleet/#", QoS::AtLeastOnce).await.unwrap();
    subscribed(&mut ev).await;
    assert_eq!(hub.connected_clients(), vec!["dev-a".to_string()]);
    assert_eq!(hub.subscription_count(), 1);
    c.disconnect().await.unwrap();
    let _ = timeout(Duration::from_secs(2), fails(&mut ev)).await;
    for _ in 0..50 {
        if hub.connection_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(hub.connection_count(), 0);
    assert_eq!(
        hub.subscription_count(),
        0,
        "a clean session's subscriptions end with it"
    );
}

#[tokio::test]
async fn a_restarted_hub_keeps_registry_retained_messages_and_persistent_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let (creds, ca_pem) = {
        let hub = LocalHub::builder()
            .data_dir(dir.path())
            .start()
            .await
            .unwrap();
        hub.put_policy(
            "fleet",
            &PolicyDocument::from_json(support::FLEET_POLICY).unwrap(),
        )
        .unwrap();
        hub.attach_policy("fleet", AttachTarget::Group("fleet".into()))
            .unwrap();
        let mut creds = Vec::new();
        for d in ["dev-a", "dev-b"] {
            hub.create_device(DeviceRecord::new(d).in_group("fleet"))
                .unwrap();
            creds.push(hub.issue_device_credential(d).unwrap());
        }
        // dev-b: a persistent session subscribed at QoS 1, then offline.
        let (sub, mut sub_ev) = AsyncClient::new(options(&hub, "dev-b", &creds[1], false), 10);
        connected(&mut sub_ev).await;
        sub.subscribe("fleet/dev-a/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        subscribed(&mut sub_ev).await;
        sub.disconnect().await.unwrap();
        let _ = timeout(Duration::from_secs(2), fails(&mut sub_ev)).await;
        // dev-a: two acknowledged QoS 1 messages for the offline session, one retained message.
        let (publisher, mut pub_ev) = AsyncClient::new(options(&hub, "dev-a", &creds[0], true), 10);
        connected(&mut pub_ev).await;
        for i in 0..2u8 {
            publisher
                .publish(
                    format!("fleet/dev-a/q{i}"),
                    QoS::AtLeastOnce,
                    false,
                    vec![i],
                )
                .await
                .unwrap();
        }
        publisher
            .publish("fleet/dev-a/cfg", QoS::AtLeastOnce, true, b"v7".to_vec())
            .await
            .unwrap();
        acked(&mut pub_ev, 3).await;
        let ca_pem = hub.ca_certificate().to_pem();
        hub.shutdown().await;
        (creds, ca_pem)
    };
    // Key files are private.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.path().join("hub-ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let hub = LocalHub::builder()
        .data_dir(dir.path())
        .start()
        .await
        .unwrap();
    assert_eq!(
        hub.ca_certificate().to_pem(),
        ca_pem,
        "same CA after restart"
    );
    assert!(hub.with_registry(|r| r.device("dev-b").is_some()));
    let (_sub, mut sub_ev) = AsyncClient::new(options(&hub, "dev-b", &creds[1], false), 10);
    assert!(
        connected(&mut sub_ev).await,
        "the persistent session survived the restart"
    );
    let mut got = receive(&mut sub_ev, 3).await;
    got.sort();
    let topics: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    // All three were queued for the offline session (the retained one too, as a normal
    // message), acknowledged to the publisher, and so survived the restart.
    assert_eq!(
        topics,
        ["fleet/dev-a/cfg", "fleet/dev-a/q0", "fleet/dev-a/q1"]
    );
    // A new subscriber still gets the retained message.
    let (c, mut ev) = AsyncClient::new(options(&hub, "dev-a", &creds[0], true), 10);
    connected(&mut ev).await;
    c.subscribe("fleet/dev-a/cfg", QoS::AtLeastOnce)
        .await
        .unwrap();
    let got = receive(&mut ev, 1).await;
    assert_eq!(
        got,
        vec![("fleet/dev-a/cfg".to_string(), b"v7".to_vec(), true)]
    );
}

#[tokio::test]
async fn events_are_published_to_principals_allowed_to_read_them() {
    let (hub, creds) = hub_with(&["dev-a", "monitor"]).await;
    hub.put_policy(
        "monitoring",
        &PolicyDocument::from_json(
            r#"{"Version": "2012-10-17", "Statement": [
              {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/$fleetkit/events/*"},
              {"Effect": "Allow", "Action": "iot:Receive", "Resource": "arn:aws:iot:*:*:topic/$fleetkit/events/*"}]}"#,
        )
        .unwrap(),
    )
    .unwrap();
    hub.attach_policy("monitoring", AttachTarget::Device("monitor".into()))
        .unwrap();
    // dev-a (fleet policy only) may not read events.
    let (a, mut a_ev) = AsyncClient::new(options(&hub, "dev-a", &creds[0], true), 10);
    connected(&mut a_ev).await;
    a.subscribe("$fleetkit/events/#", QoS::AtMostOnce)
        .await
        .unwrap();
    assert_eq!(
        subscribed(&mut a_ev).await,
        vec![rumqttc::SubscribeReasonCode::Failure]
    );
    // The monitor may; it sees dev-a's policy denial and a new connection, as JSON.
    let (m, mut m_ev) = AsyncClient::new(options(&hub, "monitor", &creds[1], true), 10);
    connected(&mut m_ev).await;
    m.subscribe("$fleetkit/events/#", QoS::AtMostOnce)
        .await
        .unwrap();
    subscribed(&mut m_ev).await;
    a.publish(
        "fleet/monitor/x",
        QoS::AtLeastOnce,
        false,
        b"spoof".to_vec(),
    )
    .await
    .unwrap();
    let _ = timeout(Duration::from_secs(5), fails(&mut a_ev)).await;
    let got = receive(&mut m_ev, 1).await;
    let (topic, payload, _) = &got[0];
    assert_eq!(topic, "$fleetkit/events/policy_denied");
    let json: serde_json::Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(json["event"], "policy_denied");
    assert_eq!(json["client_id"], "dev-a");
    assert!(
        json["explanation"]
            .as_str()
            .unwrap()
            .contains("topic/fleet/monitor/x")
    );
}

#[tokio::test]
async fn the_hub_is_administered_through_the_fleet_admin_trait() {
    use fleetkit::backend::FleetAdmin;
    let hub = LocalHub::builder().start().await.unwrap();
    let admin: &dyn FleetAdmin = &hub;
    admin
        .create_device(DeviceRecord::new("dev-t").in_group("fleet"))
        .await
        .unwrap();
    assert!(matches!(
        admin.create_device(DeviceRecord::new("dev-t")).await,
        Err(fleetkit::Error::AlreadyExists { .. })
    ));
    assert!(admin.device("dev-t").await.unwrap().enabled);
    assert!(matches!(
        admin.device("nope").await,
        Err(fleetkit::Error::NotFound { .. })
    ));
    admin
        .put_policy(
            "fleet",
            &PolicyDocument::from_json(support::FLEET_POLICY).unwrap(),
        )
        .await
        .unwrap();
    admin
        .attach_policy("fleet", AttachTarget::Group("fleet".into()))
        .await
        .unwrap();
    // A certificate made outside the hub, registered through the trait.
    let key = Arc::new(fleetkit::identity::SoftwareKey::generate_p256().unwrap());
    let cert = hub
        .ca()
        .issue(
            &fleetkit::identity::DeviceId::new("dev-t").unwrap(),
            fleetkit::identity::Signer::public_key_spki(&*key),
            &fleetkit::pki::DeviceCertOptions::default(),
        )
        .unwrap();
    let id = admin.register_certificate(&cert, "dev-t").await.unwrap();
    let cred = X509Credential::new(vec![cert.der().clone()], key).unwrap();
    let (_c, mut ev) = AsyncClient::new(options(&hub, "dev-t", &cred, true), 10);
    connected(&mut ev).await;
    admin
        .set_certificate_state(&id, CertificateState::Inactive)
        .await
        .unwrap();
    fails(&mut ev).await;
    admin
        .detach_policy("fleet", &AttachTarget::Group("fleet".into()))
        .await
        .unwrap();
}
