//! Attacks and bad input against the local hub, over real sockets and real TLS.
//!
//! Each misbehaving client is a raw MQTT client (tokio-rustls plus hand-written or
//! rumqttc-encoded packets), so it can send what no well-behaved library would. Every test checks
//! two things: the answer the misbehaving client gets (a CONNACK return code, a SUBACK failure,
//! or the connection closed), and that a well-behaved rumqttc client, connected and subscribed
//! before the attack, still gets a message published after it.
#![cfg(feature = "local")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fleetkit::identity::{RcgenKey, Signer, SoftwareKey, X509Credential};
use fleetkit::local::{CertificateState, HubEvent, Limits, LocalHub};
use fleetkit::pki::Certificate;
use fleetkit::policy::{AttachTarget, PolicyDocument};
use rumqttc::mqttbytes::v4::{ConnAck, Connect, Packet, Publish, Subscribe, SubscribeFilter};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, QoS, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Allows everything: for checks where the policy must not be what refuses.
const OPEN_POLICY: &str = r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}"#;

/// How long any single step may take before the test fails instead of hanging.
const STEP: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// The hub and its devices
// ---------------------------------------------------------------------------------------------

/// A hub with `limits`, the fleet policy on group `fleet`, and `devices` in that group, each
/// with an issued credential (in the same order).
async fn hub_with(limits: Limits, devices: &[&str]) -> (LocalHub, Vec<X509Credential>) {
    support::start_fleet(LocalHub::builder().limits(limits), devices).await
}

fn client_config(hub: &LocalHub, cred: &X509Credential) -> Arc<rustls::ClientConfig> {
    support::client_config(hub, cred, &[])
}

/// Polls until `cond` holds; fails after [`STEP`].
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < STEP, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for the first event `pick` accepts; fails after [`STEP`].
async fn event<T>(
    events: &mut broadcast::Receiver<HubEvent>,
    mut pick: impl FnMut(HubEvent) -> Option<T>,
) -> T {
    timeout(STEP, async {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if let Some(t) = pick(e) {
                        return t;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await
    .expect("the expected hub event did not come")
}

/// The reason the hub gives for `client_id`'s connection ending.
async fn disconnect_reason(events: &mut broadcast::Receiver<HubEvent>, client_id: &str) -> String {
    event(events, |e| match e {
        HubEvent::Disconnected {
            client_id: c,
            reason,
        } if c == client_id => Some(reason),
        _ => None,
    })
    .await
}

/// The reason of the next authentication failure.
async fn auth_failure(events: &mut broadcast::Receiver<HubEvent>) -> String {
    event(events, |e| match e {
        HubEvent::AuthFailure { reason, .. } => Some(reason),
        _ => None,
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// The well-behaved client: rumqttc
// ---------------------------------------------------------------------------------------------

/// A rumqttc client connected and subscribed before an attack; afterwards it proves the hub
/// still serves it by publishing a marker and receiving it back.
struct Witness {
    client: AsyncClient,
    ev: EventLoop,
    marker_topic: String,
    seq: u32,
}

impl Witness {
    /// Connects as `client_id` (whose device is also `client_id`) and subscribes to `filters`
    /// at QoS 1, checking every one is granted.
    async fn start(
        hub: &LocalHub,
        client_id: &str,
        cred: &X509Credential,
        filters: &[&str],
    ) -> Self {
        let mut opts = MqttOptions::new(client_id, "localhost", hub.mqtt_addr().port());
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            client_config(hub, cred),
        )));
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut ev) = AsyncClient::new(opts, 10);
        loop {
            match timeout(STEP, ev.poll()).await.expect("witness CONNACK") {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    assert_eq!(ack.code, ConnectReturnCode::Success);
                    break;
                }
                Ok(_) => {}
                Err(e) => panic!("witness failed to connect: {e}"),
            }
        }
        for f in filters {
            client.subscribe(*f, QoS::AtLeastOnce).await.unwrap();
            loop {
                match timeout(STEP, ev.poll()).await.expect("witness SUBACK") {
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        assert_eq!(
                            ack.return_codes,
                            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)],
                            "witness subscription to {f}"
                        );
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => panic!("witness failed to subscribe: {e}"),
                }
            }
        }
        Witness {
            client,
            ev,
            marker_topic: format!("fleet/{client_id}/alive"),
            seq: 0,
        }
    }

    /// Publishes a fresh marker and drives the event loop until it comes back (the witness must
    /// be subscribed to it); returns the other messages, as (topic, payload), that came first.
    async fn alive(&mut self) -> Vec<(String, Vec<u8>)> {
        self.seq += 1;
        let marker = format!("marker {}", self.seq).into_bytes();
        self.client
            .publish(
                self.marker_topic.clone(),
                QoS::AtLeastOnce,
                false,
                marker.clone(),
            )
            .await
            .unwrap();
        let mut others = Vec::new();
        loop {
            match timeout(STEP, self.ev.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    if p.topic == self.marker_topic && p.payload[..] == marker[..] {
                        return others;
                    }
                    // Another witness's marker (a spy subscribed to `#` sees them all).
                    if p.topic.ends_with("/alive") && p.payload.starts_with(b"marker ") {
                        continue;
                    }
                    others.push((p.topic.clone(), p.payload.to_vec()));
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("the witness lost its connection: {e}"),
                Err(_) => panic!("the witness's marker did not come back; got {others:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The misbehaving client: raw TLS and raw MQTT bytes
// ---------------------------------------------------------------------------------------------

/// What reading from a raw connection gave.
#[derive(Debug)]
enum Next {
    Packet(Packet),
    /// End of stream or an error (a TLS alert, a reset): the hub closed the connection.
    Closed(String),
}

struct Raw {
    tls: TlsStream<TcpStream>,
    read: BytesMut,
}

impl Raw {
    /// Opens TCP to the hub and does the TLS handshake as `cred`.
    async fn open(hub: &LocalHub, cred: &X509Credential) -> Result<Raw, String> {
        let tcp = TcpStream::connect(hub.mqtt_addr())
            .await
            .map_err(|e| format!("TCP: {e}"))?;
        let connector = TlsConnector::from(client_config(hub, cred));
        let tls = timeout(
            STEP,
            connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
        )
        .await
        .expect("the TLS handshake hung")
        .map_err(|e| format!("TLS handshake: {e}"))?;
        Ok(Raw {
            tls,
            read: BytesMut::new(),
        })
    }

    /// Writes raw bytes. Errors are returned, not fatal: the hub may close mid-write.
    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tls.write_all(bytes).await?;
        self.tls.flush().await
    }

    async fn send_packet(&mut self, packet: Packet) -> std::io::Result<()> {
        self.send(&encode(packet)).await
    }

    /// The next packet from the hub, or how the connection ended; fails after [`STEP`].
    async fn next(&mut self) -> Next {
        self.next_within(STEP)
            .await
            .expect("neither a packet nor a close from the hub")
    }

    /// Like [`next`](Self::next), but `None` if nothing happened within `limit`.
    async fn next_within(&mut self, limit: Duration) -> Option<Next> {
        timeout(limit, async {
            loop {
                match Packet::read(&mut self.read, usize::MAX) {
                    Ok(p) => return Next::Packet(p),
                    Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                    Err(e) => panic!("the hub sent a malformed packet: {e:?}"),
                }
                match self.tls.read_buf(&mut self.read).await {
                    Ok(0) => return Next::Closed("end of stream".into()),
                    Ok(_) => {}
                    Err(e) => return Next::Closed(e.to_string()),
                }
            }
        })
        .await
        .ok()
    }

    /// Reads until the hub closes the connection (fails if it has not within [`STEP`]);
    /// returns the packets that came before the close.
    async fn closed(&mut self) -> Vec<Packet> {
        let mut before = Vec::new();
        loop {
            match self.next_within(STEP).await {
                Some(Next::Packet(p)) => before.push(p),
                Some(Next::Closed(_)) => return before,
                None => panic!("the hub did not close the connection; it sent {before:?}"),
            }
        }
    }

    /// PINGREQ, and expects PINGRESP: the connection is alive.
    async fn ping(&mut self) {
        self.send_packet(Packet::PingReq).await.unwrap();
        match self.next().await {
            Next::Packet(Packet::PingResp) => {}
            other => panic!("expected PINGRESP, got {other:?}"),
        }
    }
}

fn encode(packet: Packet) -> BytesMut {
    let mut buf = BytesMut::new();
    packet.write(&mut buf, usize::MAX).unwrap();
    buf
}

fn connect_packet(client_id: &str, keep_alive: u16) -> Packet {
    let mut c = Connect::new(client_id);
    c.keep_alive = keep_alive;
    Packet::Connect(c)
}

/// TLS handshake, then `connect`; the CONNACK, or how the attempt failed (handshake refused,
/// or the connection closed before any CONNACK).
async fn attempt(
    hub: &LocalHub,
    cred: &X509Credential,
    connect: Packet,
) -> Result<(Raw, ConnAck), String> {
    let mut raw = Raw::open(hub, cred).await?;
    // After a TLS 1.3 handshake the client speaks first; a server that refuses its certificate
    // answers this write with an alert, so the refusal shows up at the first read.
    raw.send_packet(connect)
        .await
        .map_err(|e| format!("writing CONNECT: {e}"))?;
    match raw.next().await {
        Next::Packet(Packet::ConnAck(ack)) => Ok((raw, ack)),
        Next::Packet(p) => panic!("expected CONNACK, got {p:?}"),
        Next::Closed(e) => Err(format!("closed before CONNACK: {e}")),
    }
}

/// Connects and expects CONNACK 0 (accepted).
async fn connect_ok(
    hub: &LocalHub,
    cred: &X509Credential,
    client_id: &str,
    keep_alive: u16,
) -> Raw {
    let (raw, ack) = attempt(hub, cred, connect_packet(client_id, keep_alive))
        .await
        .unwrap_or_else(|e| panic!("{client_id} could not connect: {e}"));
    assert_eq!(ack.code, ConnectReturnCode::Success, "{client_id}");
    raw
}

/// MQTT's variable-length "remaining length".
fn remaining_length(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return out;
        }
    }
}

/// A hand-made PUBLISH: `first` is the fixed header's first byte (type and flags), `topic` any
/// bytes, `pkid` present for QoS > 0.
fn raw_publish(first: u8, topic: &[u8], pkid: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic);
    if let Some(id) = pkid {
        body.extend_from_slice(&id.to_be_bytes());
    }
    body.extend_from_slice(payload);
    let mut out = vec![first];
    out.extend(remaining_length(body.len()));
    out.extend(body);
    out
}

/// A hand-made SUBSCRIBE (fixed header flags 0b0010) for `filters` as (bytes, requested QoS).
fn raw_subscribe(pkid: u16, filters: &[(&[u8], u8)]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    for (f, qos) in filters {
        body.extend_from_slice(&(f.len() as u16).to_be_bytes());
        body.extend_from_slice(f);
        body.push(*qos);
    }
    let mut out = vec![0x82];
    out.extend(remaining_length(body.len()));
    out.extend(body);
    out
}

/// An ordinary QoS 0 PUBLISH.
fn publish0(topic: &str, payload: &[u8]) -> Packet {
    Packet::Publish(Publish::new(topic, QoS::AtMostOnce, payload.to_vec()))
}

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_inactive_certificate_is_refused_until_it_is_activated_again() {
    let (hub, creds) = hub_with(Limits::default(), &["dev-w", "dev-x"]).await;
    let mut witness = Witness::start(&hub, "dev-w", &creds[0], &["fleet/#"]).await;
    let mut events = hub.events();
    let id = creds[1].leaf().fingerprint_sha256();

    // Deactivating closes a live connection at once.
    let mut live = connect_ok(&hub, &creds[1], "dev-x", 30).await;
    assert_eq!(
        hub.set_certificate_state(&id, CertificateState::Inactive)
            .unwrap(),
        1
    );
    assert!(live.closed().await.is_empty());
    until("dev-x to be gone", || hub.connection_count() == 1).await;

    // A new connection is refused in the TLS handshake: no CONNACK.
    let refused = attempt(&hub, &creds[1], connect_packet("dev-x", 30)).await;
    assert!(refused.is_err(), "an inactive certificate connected");
    let reason = auth_failure(&mut events).await;
    assert!(reason.contains("TLS handshake failed"), "{reason}");
    assert!(witness.alive().await.is_empty());

    // Activated again, it connects.
    assert_eq!(
        hub.set_certificate_state(&id, CertificateState::Active)
            .unwrap(),
        0
    );
    let mut again = connect_ok(&hub, &creds[1], "dev-x", 30).await;
    again.ping().await;
    assert_eq!(hub.connected_clients(), ["dev-w", "dev-x"]);
    assert!(witness.alive().await.is_empty());
}

/// A device certificate that expired in 2021, issued by the hub's own CA and registered ACTIVE.
fn expired_credential(hub: &LocalHub, device: &str) -> X509Credential {
    let key: Arc<dyn Signer> = Arc::new(SoftwareKey::generate_p256().unwrap());
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, device);
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let issuer = rcgen::Issuer::from_ca_cert_der(
        hub.ca().certificate().der(),
        RcgenKey::new(hub.ca().signer().clone()).unwrap(),
    )
    .unwrap();
    let cert = params
        .signed_by(&RcgenKey::new(key.clone()).unwrap(), &issuer)
        .unwrap();
    X509Credential::new(vec![cert.der().clone()], key).unwrap()
}

#[tokio::test]
async fn an_expired_certificate_is_refused_in_the_handshake() {
    let (hub, creds) = hub_with(Limits::default(), &["dev-w", "dev-x"]).await;
    let mut witness = Witness::start(&hub, "dev-w", &creds[0], &["fleet/#"]).await;
    let mut events = hub.events();
    let expired = expired_credential(&hub, "dev-x");
    hub.register_certificate(
        Certificate::from_der(expired.chain()[0].as_ref()).unwrap(),
        "dev-x",
    )
    .unwrap();

    let refused = attempt(&hub, &expired, connect_packet("dev-x", 30)).await;
    assert!(refused.is_err(), "an expired certificate connected");
    let reason = auth_failure(&mut events).await;
    assert!(
        reason.contains("TLS handshake failed") && reason.to_lowercase().contains("expired"),
        "{reason}"
    );
    assert_eq!(hub.connected_clients(), ["dev-w"]);
    assert!(witness.alive().await.is_empty());

    // The same device with a current certificate is welcome: it was the expiry that counted.
    let mut fine = connect_ok(&hub, &creds[1], "dev-x", 30).await;
    fine.ping().await;
}

#[tokio::test]
async fn a_client_id_takeover_the_policy_does_not_allow_is_refused() {
    let (hub, creds) = hub_with(Limits::default(), &["dev-w", "dev-a", "dev-b"]).await;
    let mut witness = Witness::start(&hub, "dev-w", &creds[0], &["fleet/#"]).await;
    let mut a = connect_ok(&hub, &creds[1], "dev-a", 30).await;
    let mut events = hub.events();

    // dev-b's certificate asking for dev-a's client id: CONNACK 5, and dev-a keeps its session.
    let (mut b, ack) = attempt(&hub, &creds[2], connect_packet("dev-a", 30))
        .await
        .unwrap();
    assert_eq!(ack.code, ConnectReturnCode::NotAuthorized);
    assert!(b.closed().await.is_empty(), "closed after the refusal");
    let explanation = event(&mut events, |e| match e {
        HubEvent::PolicyDenied {
            client_id,
            explanation,
        } if client_id == "dev-a" => Some(explanation),
        _ => None,
    })
    .await;
    assert!(explanation.contains("client/dev-a"), "{explanation}");

    assert_eq!(hub.connected_clients(), ["dev-a", "dev-w"]);
    a.ping().await;
    a.send_packet(publish0("fleet/dev-a/still-here", b"yes"))
        .await
        .unwrap();
    a.ping().await;
    assert_eq!(
        witness.alive().await,
        [("fleet/dev-a/still-here".to_string(), b"yes".to_vec())]
    );
}

// ---------------------------------------------------------------------------------------------
// Broken packets
// ---------------------------------------------------------------------------------------------

/// Connects `dev-x`, sends `bytes`, and expects the hub to close the connection without
/// answering; returns the hub's reason.
async fn closes_after(
    hub: &LocalHub,
    cred: &X509Credential,
    events: &mut broadcast::Receiver<HubEvent>,
    what: &str,
    bytes: &[u8],
) -> String {
    let mut raw = connect_ok(hub, cred, "dev-x", 30).await;
    let _ = raw.send(bytes).await;
    let before = raw.closed().await;
    assert!(before.is_empty(), "{what}: the hub answered {before:?}");
    let reason = disconnect_reason(events, "dev-x").await;
    until("dev-x to be gone", || {
        !hub.connected_clients().contains(&"dev-x".to_string())
    })
    .await;
    reason
}

#[tokio::test]
async fn malformed_packets_close_the_connection() {
    let (hub, creds) = hub_with(Limits::default(), &["dev-w", "dev-x"]).await;
    let mut witness = Witness::start(&hub, "dev-w", &creds[0], &["fleet/#"]).await;
    let mut events = hub.events();
    let cases: &[(&str, Vec<u8>)] = &[
        ("packet type 0", vec![0x00, 0x00]),
        ("packet type 15", vec![0xF0, 0x00]),
        (
            "5-byte remaining length",
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
        ),
        ("SUBSCRIBE with no filters", vec![0x82, 0x02, 0x00, 0x01]),
        ("UNSUBSCRIBE with no filters", vec![0xA2, 0x02, 0x00, 0x01]),
        (
            "SUBSCRIBE with requested QoS 3",
            raw_subscribe(1, &[(b"fleet/#", 3)]),
        ),
        (
            "PUBLISH with QoS bits 11",
            raw_publish(0x36, b"fleet/dev-x/t", Some(1), b"x"),
        ),
        (
            "QoS 1 PUBLISH with packet id 0",
            raw_publish(0x32, b"fleet/dev-x/t", Some(0), b"x"),
        ),
        (
            "PUBLISH whose topic length overruns the packet",
            vec![0x30, 0x04, 0x00, 0x10, b'a', b'b'],
        ),
        ("a CONNACK from a client", vec![0x20, 0x02, 0x00, 0x00]),
        ("a SUBACK from a client", vec![0x90, 0x03, 0x00, 0x01, 0x00]),
        ("a PINGRESP from a client", vec![0xD0, 0x00]),
        ("PUBREL (QoS 2 flow)", vec![0x62, 0x02, 0x00, 0x01]),
    ];
    for (what, bytes) in cases {
        let reason = closes_after(&hub, &creds[1], &mut events, what, bytes).await;
        assert!(reason.contains("protocol violation"), "{what}: {reason}");
    }
    assert_eq!(hub.connected_clients(), ["dev-w"]);
    assert!(
        witness.alive().await.is_empty(),
        "nothing reached the witness"
    );
}

#[tokio::test]
async fn a_truncated_packet_then_a_close_is_cleaned_up() {
    let mut limits = Limits::default();
    limits.connect_timeout = Duration::from_secs(1);
    let (hub, creds) = hub_with(limits, &["dev-w", "dev-x"]).await;
    let mut witness = Witness::start(&hub, "dev-w", &creds[0], &["fleet/#"]).await;
    let mut events = hub.events();
    let publish = encode(publish0("fleet/dev-x/cut", &[7; 100]));

    // Half a PUBLISH, then a clean TLS close (close_notify and FIN).
    let mut raw = connect_ok(&hub, &creds[1], "dev-x", 30).await;
    assert_eq!(hub.connection_count(), 2);
    raw.send(&publish[..publish.len() / 2]).await.unwrap();
    raw.tls.shutdown().await.unwrap();
    let reason = disconnect_reason(&mut events, "dev-x").await;
    assert!(reason.contains("mid-packet"), "{reason}");
    until("the connection to be removed", || {
        hub.connection_count() == 1
    })
    .await;
    drop(raw);

    // Half a PUBLISH, then the socket just goes away (no close_notify).
    let mut raw = connect_ok(&hub, &creds[1], "dev-x", 30).await;
    raw.send(&publish[..publish.len() / 2]).await.unwrap();
    drop(raw);
    disconnect_reason(&mut events, "dev-x").await;
    until("the connection to be removed", || {
        hub.connection_count() == 1
    })
    .await;

    // Half a CONNECT, then silence: dropped after the connect timeout, no CONNACK.
    let mut raw = Raw::open(&hub, &creds[1]).await.unwrap();
    let connect = encode(connect_packet("dev-x", 30));
    raw.send(&connect[..connect.len() - 3]).await.unwrap();
    let start = Instant::now();
    assert!(raw.closed().await.is_empty());
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );

    assert_eq!(hub.connected_clients(), ["dev-w"]);
    assert!(
        witness.alive().await.is_empty(),
        "the cut message never arrived"
    );
}

#[tokio::test]
async fn oversized_packets_close_the_connection() {
    let max = Limits::default().max_packet_size;
    let (hub, creds) = hub_with(Limits::default(), &["dev-w", "dev-x"]).await;
    let mut witness = Witness::start(&hub, "dev-w", &creds[0], &["fleet/#"]).await;
    let mut events = hub.events();
    let topic = "fleet/dev-x/big";

    // Exactly at the limit (remaining length == max_packet_size): accepted and delivered.
    let mut raw = connect_ok(&hub, &creds[1], "dev-x", 30).await;
    let fits = vec![1u8; max - 2 - topic.len()];
    raw.send_packet(publish0(topic, &fits)).await.unwrap();
    raw.ping().await;
    assert_eq!(witness.alive().await, [(topic.to_string(), fits)]);

    // One byte more: closed.
    let too_big = vec![2u8; max - 2 - topic.len() + 1];
    let reason = {
        let _ = raw.send_packet(publish0(topic, &too_big)).await;
        assert!(raw.closed().await.is_empty());
        disconnect_reason(&mut events, "dev-x").await
    };
    assert!(reason.contains("protocol violation"), "{reason}");

    // A header announcing 256 MB, with nothing behind it: closed at once, not waited for.
    let mut header = vec![0x30];
    header.extend(remaining_length(268_435_455));
    closes_after(
        &hub,
        &creds[1],
        &mut events,
        "256 MB PUBLISH header",
        &header,
    )
    .await;

    // A huge CONNECT as the very first packet: closed without a CONNACK.
    let mut raw = Raw::open(&hub, &creds[1]).await.unwrap();
    let mut connect = vec![0x10];
    connect.extend(remaining_length(max + 1));
    connect.extend(std::iter::repeat_n(0u8, 64 * 1024));
    let _ = raw.send(&connect).await;
    assert!(raw.closed().await.is_empty());

    until("dev-x to be gone", || hub.connection_count() == 1).await;
    assert!(
        witness.alive().await.is_empty(),
        "the oversized message was not delivered"
    );
}

// ---------------------------------------------------------------------------------------------
// Topics
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_publish_topics_close_and_invalid_filters_fail_alone() {
    let (hub, creds) = hub_with(Limits::default(), &["dev-w", "dev-x"]).await;
    let mut witness = Witness::start(&hub, "dev-w", &creds[0], &["fleet/#"]).await;
    let mut events = hub.events();
    let topics: &[(&str, &[u8])] = &[
        ("invalid UTF-8", b"fleet/dev-x/\xff\xfe"),
        ("a UTF-16 surrogate", b"fleet/dev-x/\xed\xa0\x80"),
        ("an overlong encoding", b"fleet/dev-x/\xc0\xaf"),
        ("'+'", b"fleet/dev-x/+"),
        ("'#'", b"fleet/dev-x/#"),
        ("'+' inside a level", b"fleet/dev-x/a+b"),
        ("U+0000", b"fleet/dev-x/\0"),
        ("the empty topic", b""),
    ];
    for (what, topic) in topics {
        let bytes = raw_publish(0x30, topic, None, b"bad");
        let reason = closes_after(&hub, &creds[1], &mut events, what, &bytes).await;
        assert!(reason.contains("protocol violation"), "{what}: {reason}");
    }
    // A filter that is not UTF-8 makes the whole SUBSCRIBE malformed (MQTT-1.5.3-1).
    let bytes = raw_subscribe(2, &[(b"fleet/dev-x/ok", 0), (b"fleet/\xff", 0)]);
    let reason = closes_after(&hub, &creds[1], &mut events, "non-UTF-8 filter", &bytes).await;
    assert!(reason.contains("protocol violation"), "{reason}");
    assert!(
        witness.alive().await.is_empty(),
        "no invalid topic was routed (the witness's fleet/# matches the wildcard ones)"
    );

    // One bad filter in a SUBSCRIBE fails alone; the others are granted and the connection lives.
    let mut raw = connect_ok(&hub, &creds[1], "dev-x", 30).await;
    raw.send(&raw_subscribe(
        9,
        &[
            (b"fleet/dev-x/ok", 1),
            (b"fleet/#/b", 1),
            (b"fleet/a+", 0),
            (b"fleet/dev-x/#", 0),
        ],
    ))
    .await
    .unwrap();
    match raw.next().await {
        Next::Packet(Packet::SubAck(ack)) => {
            assert_eq!(ack.pkid, 9);
            assert_eq!(
                ack.return_codes,
                [
                    SubscribeReasonCode::Success(QoS::AtLeastOnce),
                    SubscribeReasonCode::Failure,
                    SubscribeReasonCode::Failure,
                    SubscribeReasonCode::Success(QoS::AtMostOnce),
                ]
            );
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
    raw.ping().await;
    assert_eq!(
        hub.subscriptions_of("dev-x"),
        [
            ("fleet/dev-x/#".to_string(), 0),
            ("fleet/dev-x/ok".to_string(), 1)
        ]
    );
    assert!(witness.alive().await.is_empty());
}

#[tokio::test]
async fn qos2_publishes_close_and_qos2_subscriptions_are_granted_qos1() {
    let (hub, creds) = hub_with(Limits::default(), &["dev-w", "dev-x"]).await;
    let mut witness = Witness::start(&hub, "dev-w", &creds[0], &["fleet/#"]).await;
    let mut events = hub.events();
    let mut raw = connect_ok(&hub, &creds[1], "dev-x", 30).await;
    let mut sub = Subscribe::new("fleet/dev-x/#", QoS::ExactlyOnce);
    sub.pkid = 3;
    raw.send_packet(Packet::Subscribe(sub)).await.unwrap();
    match raw.next().await {
        Next::Packet(Packet::SubAck(ack)) => assert_eq!(
            ack.return_codes,
            [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        ),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    assert_eq!(
        hub.subscriptions_of("dev-x"),
        [("fleet/dev-x/#".to_string(), 1)]
    );

    let mut publish = Publish::new("fleet/dev-x/q2", QoS::ExactlyOnce, b"twice?".to_vec());
    publish.pkid = 4;
    let _ = raw.send_packet(Packet::Publish(publish)).await;
    // No PUBREC, and not even its own subscription got the message.
    assert!(raw.closed().await.is_empty());
    let reason = disconnect_reason(&mut events, "dev-x").await;
    assert!(reason.contains("QoS 2"), "{reason}");
    assert!(
        witness.alive().await.is_empty(),
        "the QoS 2 message was not delivered"
    );
}

#[tokio::test]
async fn publishes_to_dollar_topics_no_service_owns_close_the_connection() {
    let (hub, creds) = hub_with(Limits::default(), &["dev-w", "dev-x", "spy"]).await;
    // Neither the publisher nor the spy is held back by the policy: the hub itself must refuse.
    hub.put_policy("open", &PolicyDocument::from_json(OPEN_POLICY).unwrap())
        .unwrap();
    for d in ["dev-x", "spy"] {
        hub.attach_policy("open", AttachTarget::Device(d.into()))
            .unwrap();
    }
    let mut witness = Witness::start(&hub, "dev-w", &creds[0], &["fleet/#"]).await;
    let mut spy = Witness::start(&hub, "spy", &creds[2], &["#", "$foo/#", "$aws/#"]).await;
    let mut events = hub.events();
    for topic in [
        "$foo/bar",
        "$aws/things/x/shadow/update",
        "$SYS/broker/uptime",
    ] {
        let bytes = encode(publish0(topic, b"{}"));
        let reason = closes_after(&hub, &creds[1], &mut events, topic, &bytes).await;
        assert!(reason.contains("reserved topic"), "{topic}: {reason}");
        // A will on such a topic is refused too.
        let mut connect = Connect::new("dev-x");
        connect.last_will = Some(rumqttc::mqttbytes::v4::LastWill::new(
            topic,
            "gone",
            QoS::AtMostOnce,
            false,
        ));
        let (_raw, ack) = attempt(&hub, &creds[1], Packet::Connect(connect))
            .await
            .unwrap();
        assert_eq!(
            ack.code,
            ConnectReturnCode::NotAuthorized,
            "will on {topic}"
        );
    }
    assert!(
        spy.alive().await.is_empty(),
        "nothing reached the #, $foo/# or $aws/# subscriber"
    );
    assert!(witness.alive().await.is_empty());
    assert_eq!(hub.connected_clients(), ["dev-w", "spy"]);
}

// ---------------------------------------------------------------------------------------------
// Connection protocol
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn connect_must_come_first_and_only_once() {
    let (hub, creds) = hub_with(Limits::default(), &["dev-w", "dev-x"]).await;
    let mut witness = Witness::start(&hub, "dev-w", &creds[0], &["fleet/#"]).await;
    let mut events = hub.events();

    // A first packet that is not CONNECT: closed, no CONNACK (and no PINGRESP, no SUBACK...).
    let firsts: [(&str, BytesMut); 3] = [
        ("PINGREQ", encode(Packet::PingReq)),
        ("SUBSCRIBE", {
            let mut s =
                Subscribe::new_many([SubscribeFilter::new("fleet/#".into(), QoS::AtMostOnce)]);
            s.pkid = 1;
            encode(Packet::Subscribe(s))
        }),
        ("PUBLISH", encode(publish0("fleet/dev-x/early", b"x"))),
    ];
    for (what, bytes) in &firsts {
        let mut raw = Raw::open(&hub, &creds[1]).await.unwrap();
        let _ = raw.send(bytes).await;
        let before = raw.closed().await;
        assert!(
            before.is_empty(),
            "{what} first: the hub answered {before:?}"
        );
    }

    // An empty client id is refused with CONNACK 2.
    let (mut raw, ack) = attempt(&hub, &creds[1], connect_packet("", 30))
        .await
        .unwrap();
    assert_eq!(ack.code, ConnectReturnCode::BadClientId);
    assert!(raw.closed().await.is_empty());

    // A second CONNECT on a live connection: closed, no second CONNACK.
    let reason = closes_after(
        &hub,
        &creds[1],
        &mut events,
        "second CONNECT",
        &encode(connect_packet("dev-x", 30)),
    )
    .await;
    assert!(reason.contains("second CONNECT"), "{reason}");

    assert_eq!(hub.connected_clients(), ["dev-w"]);
    assert!(
        witness.alive().await.is_empty(),
        "the early PUBLISH was not routed"
    );
}

#[tokio::test]
async fn keep_alive_closes_silent_clients_and_spares_pinging_ones() {
    let mut limits = Limits::default();
    limits.min_keep_alive = 1;
    let (hub, creds) = hub_with(limits, &["dev-w", "dev-x", "dev-y"]).await;
    let mut witness = Witness::start(&hub, "dev-w", &creds[0], &["fleet/#"]).await;
    let mut events = hub.events();

    let silent = async {
        let mut raw = connect_ok(&hub, &creds[1], "dev-x", 1).await;
        let start = Instant::now();
        let before = raw.closed().await;
        (start.elapsed(), before)
    };
    let pinging = async {
        let mut raw = connect_ok(&hub, &creds[2], "dev-y", 1).await;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            raw.ping().await;
        }
        raw
    };
    let ((elapsed, before), mut pinger) = tokio::join!(silent, pinging);
    assert!(before.is_empty(), "{before:?}");
    assert!(
        elapsed > Duration::from_secs(1) && elapsed < Duration::from_secs(4),
        "a 1 s keep-alive closed after {elapsed:?}"
    );
    let reason = disconnect_reason(&mut events, "dev-x").await;
    assert!(reason.contains("keep-alive"), "{reason}");
    assert_eq!(hub.connected_clients(), ["dev-w", "dev-y"]);
    pinger.ping().await;
    assert!(witness.alive().await.is_empty());
}

#[tokio::test]
async fn keep_alive_counts_what_the_client_sends_not_what_it_receives() {
    let mut limits = Limits::default();
    limits.min_keep_alive = 1;
    let (hub, creds) = hub_with(limits, &["dev-w", "dev-x"]).await;
    let mut witness = Witness::start(&hub, "dev-w", &creds[0], &["fleet/#"]).await;

    // dev-x subscribes, then only listens while the witness publishes every 200 ms.
    let mut raw = connect_ok(&hub, &creds[1], "dev-x", 1).await;
    raw.send(&raw_subscribe(1, &[(b"fleet/dev-w/#", 0)]))
        .await
        .unwrap();
    match raw.next().await {
        Next::Packet(Packet::SubAck(_)) => {}
        other => panic!("expected SUBACK, got {other:?}"),
    }
    let start = Instant::now();
    let mut received = 0;
    let closed_after = loop {
        // Each round trip through the witness is a message the hub sends to dev-x.
        assert!(witness.alive().await.is_empty());
        let deadline = Instant::now() + Duration::from_millis(200);
        let mut closed = false;
        while let Some(next) = raw
            .next_within(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            match next {
                Next::Packet(Packet::Publish(_)) => received += 1,
                Next::Packet(p) => panic!("unexpected {p:?}"),
                Next::Closed(_) => {
                    closed = true;
                    break;
                }
            }
        }
        if closed {
            break start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "dev-x, silent but receiving, was never closed for keep-alive"
        );
    };
    assert!(received > 0, "dev-x did receive while silent");
    assert!(
        closed_after > Duration::from_secs(1) && closed_after < Duration::from_secs(4),
        "{closed_after:?}"
    );
    assert_eq!(hub.connected_clients(), ["dev-w"]);
}

// ---------------------------------------------------------------------------------------------
// Fixed-header flags, stray bodies and protocol levels (MQTT-2.2.2-2, MQTT-3.1.2-2)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn reserved_header_flags_and_stray_bodies_are_malformed() {
    let (hub, creds) = hub_with(Limits::default(), &["dev-w", "dev-x"]).await;
    let mut witness = Witness::start(&hub, "dev-w", &creds[0], &["fleet/#"]).await;
    let mut events = hub.events();
    let mut subscribe_flags_0 = raw_subscribe(1, &[(b"fleet/dev-x/t", 0)]);
    subscribe_flags_0[0] = 0x80;
    let cases: &[(&str, Vec<u8>)] = &[
        // MQTT-2.2.2-2: invalid flags MUST close the connection.
        ("PINGREQ with flags 0001", vec![0xC1, 0x00]),
        ("SUBSCRIBE with flags 0000", subscribe_flags_0),
        (
            "UNSUBSCRIBE with flags 0000",
            vec![0xA0, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'],
        ),
        // PINGREQ has no variable header and no payload.
        ("PINGREQ with a body", vec![0xC0, 0x01, 0x00]),
    ];
    for (what, bytes) in cases {
        closes_after(&hub, &creds[1], &mut events, what, bytes).await;
    }
    assert!(witness.alive().await.is_empty());
}

#[tokio::test]
async fn an_unsupported_protocol_level_gets_connack_1() {
    let (hub, creds) = hub_with(Limits::default(), &["dev-w", "dev-x"]).await;
    let mut witness = Witness::start(&hub, "dev-w", &creds[0], &["fleet/#"]).await;
    for level in [3u8, 5] {
        let mut connect = encode(connect_packet("dev-x", 30));
        // Fixed header (2 bytes), protocol name (6 bytes), then the level.
        assert_eq!(&connect[2..8], b"\x00\x04MQTT");
        connect[8] = level;
        let mut raw = Raw::open(&hub, &creds[1]).await.unwrap();
        raw.send(&connect).await.unwrap();
        match raw.next().await {
            Next::Packet(Packet::ConnAck(ack)) => assert_eq!(
                ack.code,
                ConnectReturnCode::RefusedProtocolVersion,
                "level {level}"
            ),
            other => panic!("level {level}: expected CONNACK 1, got {other:?}"),
        }
        assert!(raw.closed().await.is_empty());
    }
    assert_eq!(hub.connected_clients(), ["dev-w"]);
    assert!(witness.alive().await.is_empty());
}
