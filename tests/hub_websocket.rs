//! The local hub's MQTT-over-WebSocket listener (WSS, mutual TLS), driven by rumqttc's
//! WebSocket transport, side by side with clients on the plain MQTT/TLS listener.
#![cfg(feature = "local")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use fleetkit::identity::X509Credential;
use fleetkit::local::LocalHub;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration,
    Transport,
};
use tokio::time::timeout;

/// Within the hub's default packet limit (128 KiB payload), above rumqttc's 10 KiB default.
const MAX_PACKET: usize = 128 * 1024;

async fn hub_with(devices: &[&str]) -> (LocalHub, Vec<X509Credential>) {
    support::start_fleet(LocalHub::builder().websocket(true), devices).await
}

/// A rustls client configuration trusting the hub's CA and presenting `cred`, offering
/// `alpn` (browsers and WebSocket libraries offer `http/1.1`).
fn client_config(hub: &LocalHub, cred: &X509Credential, alpn: &[&[u8]]) -> TlsConfiguration {
    TlsConfiguration::Rustls(support::client_config(hub, cred, alpn))
}

/// MQTT over WSS to the hub's WebSocket listener, at `path`.
fn wss_options(hub: &LocalHub, client_id: &str, cred: &X509Credential, path: &str) -> MqttOptions {
    let port = hub
        .websocket_addr()
        .expect("the WebSocket listener is on")
        .port();
    let mut opts = MqttOptions::new(client_id, format!("wss://localhost:{port}{path}"), port);
    opts.set_transport(Transport::wss_with_config(client_config(
        hub,
        cred,
        &[b"http/1.1"],
    )));
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    opts
}

/// MQTT over TLS to the hub's MQTT listener.
fn tls_options(hub: &LocalHub, client_id: &str, cred: &X509Credential) -> MqttOptions {
    let mut opts = MqttOptions::new(client_id, "localhost", hub.mqtt_addr().port());
    opts.set_transport(Transport::tls_with_config(client_config(hub, cred, &[])));
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    opts
}

/// Polls until CONNACK (which must be a success).
async fn connected(ev: &mut EventLoop) {
    loop {
        match timeout(Duration::from_secs(10), ev.poll()).await.unwrap() {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                assert_eq!(ack.code, ConnectReturnCode::Success);
                return;
            }
            Ok(_) => {}
            Err(e) => panic!("connection failed: {e}"),
        }
    }
}

/// Drives the event loop until SUBACK; returns its codes.
async fn subscribed(ev: &mut EventLoop) -> Vec<rumqttc::SubscribeReasonCode> {
    loop {
        match timeout(Duration::from_secs(10), ev.poll()).await.unwrap() {
            Ok(Event::Incoming(Packet::SubAck(ack))) => return ack.return_codes,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
}

/// Drives a publisher's event loop until its PUBACK.
async fn acked(ev: &mut EventLoop) {
    loop {
        match timeout(Duration::from_secs(10), ev.poll()).await.unwrap() {
            Ok(Event::Incoming(Packet::PubAck(_))) => return,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
}

/// Polls until a publish arrives; returns (topic, payload).
async fn received(ev: &mut EventLoop) -> (String, Vec<u8>) {
    loop {
        match timeout(Duration::from_secs(10), ev.poll()).await.unwrap() {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                return (p.topic.clone(), p.payload.to_vec());
            }
            Ok(_) => {}
            Err(e) => panic!("connection failed while receiving: {e}"),
        }
    }
}

/// Drives the event loop until the connection fails; returns the error text.
async fn fails(ev: &mut EventLoop) -> String {
    loop {
        match timeout(Duration::from_secs(10), ev.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack))))
                if ack.code == ConnectReturnCode::Success =>
            {
                panic!("connected, but should have been refused")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return e.to_string(),
            Err(_) => panic!("the connection did not fail within 10 s"),
        }
    }
}

#[tokio::test]
async fn websocket_listener_is_off_unless_asked_for() {
    let hub = LocalHub::builder().start().await.unwrap();
    assert_eq!(hub.websocket_addr(), None);
    let (hub, _) = hub_with(&[]).await;
    let ws = hub.websocket_addr().unwrap();
    assert_ne!(ws.port(), hub.mqtt_addr().port());
}

#[tokio::test]
async fn wss_and_tls_clients_exchange_messages() {
    let (hub, creds) = hub_with(&["dev-ws", "dev-tls"]).await;
    let (ws, mut ws_ev) = AsyncClient::new(wss_options(&hub, "dev-ws", &creds[0], "/mqtt"), 10);
    connected(&mut ws_ev).await;
    ws.subscribe("fleet/dev-tls/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(
        subscribed(&mut ws_ev).await,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );

    let (tls, mut tls_ev) = AsyncClient::new(tls_options(&hub, "dev-tls", &creds[1]), 10);
    connected(&mut tls_ev).await;
    assert_eq!(hub.connected_clients(), vec!["dev-tls", "dev-ws"]);
    tls.subscribe("fleet/dev-ws/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    subscribed(&mut tls_ev).await;

    // TLS → WebSocket: a small message, then one the hub must write in several WebSocket
    // frames (it writes at most 64 KiB per frame).
    tls.publish(
        "fleet/dev-tls/temp",
        QoS::AtLeastOnce,
        false,
        b"21.5".to_vec(),
    )
    .await
    .unwrap();
    acked(&mut tls_ev).await;
    assert_eq!(
        received(&mut ws_ev).await,
        ("fleet/dev-tls/temp".to_string(), b"21.5".to_vec())
    );
    let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    tls.publish("fleet/dev-tls/blob", QoS::AtLeastOnce, false, big.clone())
        .await
        .unwrap();
    let ((), got) = tokio::join!(acked(&mut tls_ev), received(&mut ws_ev));
    assert_eq!(got, ("fleet/dev-tls/blob".to_string(), big));

    // WebSocket → TLS.
    ws.publish(
        "fleet/dev-ws/state",
        QoS::AtLeastOnce,
        false,
        b"on".to_vec(),
    )
    .await
    .unwrap();
    let ((), got) = tokio::join!(acked(&mut ws_ev), received(&mut tls_ev));
    assert_eq!(got, ("fleet/dev-ws/state".to_string(), b"on".to_vec()));

    // The WebSocket client's disconnect ends its connection cleanly.
    ws.disconnect().await.unwrap();
    let _ = timeout(Duration::from_secs(5), async {
        while ws_ev.poll().await.is_ok() {}
    })
    .await;
    timeout(Duration::from_secs(5), async {
        while hub.connection_count() != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the hub still counts the WebSocket connection");
    hub.shutdown().await;
}

#[tokio::test]
async fn a_wss_client_whose_certificate_is_not_registered_is_refused() {
    let (hub, _) = hub_with(&["dev-a"]).await;
    let key = Arc::new(fleetkit::identity::SoftwareKey::generate_p256().unwrap());
    let cert = hub
        .ca()
        .issue(
            &fleetkit::identity::DeviceId::new("dev-a").unwrap(),
            fleetkit::identity::Signer::public_key_spki(&*key),
            &fleetkit::pki::DeviceCertOptions::default(),
        )
        .unwrap();
    let unregistered = X509Credential::new(vec![cert.der().clone()], key).unwrap();
    let (_c, mut ev) = AsyncClient::new(wss_options(&hub, "dev-a", &unregistered, "/mqtt"), 10);
    fails(&mut ev).await;
    assert_eq!(hub.connection_count(), 0);
}

#[tokio::test]
async fn the_azure_path_is_served_and_other_paths_get_404() {
    let (hub, creds) = hub_with(&["dev-a"]).await;
    let (_c, mut ev) = AsyncClient::new(
        wss_options(&hub, "dev-a", &creds[0], "/$iothub/websocket"),
        10,
    );
    connected(&mut ev).await;

    let (_c, mut ev) = AsyncClient::new(wss_options(&hub, "dev-a2", &creds[0], "/ws"), 10);
    let err = fails(&mut ev).await;
    assert!(err.contains("404"), "{err}");
}
