//! Fuzzes the local hub's MQTT packet loop over an in-memory pipe (`LocalHub::serve_stream`).
//!
//! Each input is a client byte stream. If it starts with a CONNECT fixed header (`0x10`) it is
//! sent as it is, so the fuzzer explores CONNECT handling too; otherwise a fixed, valid CONNECT
//! for the registered device goes first. The client then closes its write side and reads until
//! the hub closes. Checked for every input:
//!
//! - the hub never panics (libFuzzer's panic hook aborts on a panic in the serve task);
//! - once the client has closed, the serve task ends within [`STEP`];
//! - whatever the hub sent is a sequence of whole packets a server may send, CONNACK first
//!   (and for the fixed CONNECT, CONNACK 0 without a session);
//! - afterwards `connection_count()` is 0, and once the sweep below has run, so is
//!   `subscription_count()`;
//! - the hub still serves a fresh, well-behaved client (the sweep).
//!
//! The sweep keeps inputs independent of each other (one hub serves the whole process): it
//! connects with a clean session under the fuzzed client id (dropping any persistent session the
//! input left behind), subscribes to `#` to collect every retained message, and clears each one
//! with an empty retained PUBLISH.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use fleetkit::local::{DeviceRecord, LocalHub};
use fleetkit::pki::Certificate;
use fleetkit::policy::{AttachTarget, PolicyDocument};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const DEVICE: &str = "fuzz-dev";
const OPEN_POLICY: &str = r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}"#;
/// How long the client side or the serve task may take before it counts as a hang.
const STEP: Duration = Duration::from_secs(2);
/// The client id of the fixed CONNECT, and of the sweep when the input did not connect itself.
const FIXED_CLIENT_ID: &str = "fuzz-client";

struct Fixture {
    rt: Runtime,
    hub: LocalHub,
    leaf: Certificate,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // A worker thread runs the hub, so a serve task that spins is caught by the timeout on
        // the fuzzing thread instead of hanging the process.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (hub, leaf) = rt.block_on(async {
            let hub = LocalHub::builder().start().await.expect("hub starts");
            hub.put_policy("open", &PolicyDocument::from_json(OPEN_POLICY).unwrap())
                .unwrap();
            hub.create_device(DeviceRecord::new(DEVICE)).unwrap();
            hub.attach_policy("open", AttachTarget::Device(DEVICE.into()))
                .unwrap();
            let cred = hub.issue_device_credential(DEVICE).unwrap();
            (hub, cred.leaf().clone())
        });
        Fixture { rt, hub, leaf }
    })
}

/// Appends an MQTT packet: fixed header byte, remaining length, body.
fn frame(out: &mut Vec<u8>, first: u8, body: &[u8]) {
    let mut len = body.len();
    out.push(first);
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
}

fn mqtt_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// CONNECT, MQTT 3.1.1, clean session, keep-alive 60 s.
fn connect(client_id: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_string(&mut body, b"MQTT");
    body.extend_from_slice(&[4, 0x02, 0, 60]);
    mqtt_string(&mut body, client_id);
    let mut out = Vec::new();
    frame(&mut out, 0x10, &body);
    out
}

/// Splits what the hub sent into packets `(first byte, body)`; panics on a truncated packet.
fn packets(mut bytes: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while let Some((&first, rest)) = bytes.split_first() {
        let mut len = 0usize;
        let mut used = 0;
        loop {
            let b = *rest
                .get(used)
                .unwrap_or_else(|| panic!("hub sent a truncated fixed header: {bytes:02x?}"));
            len |= usize::from(b & 0x7F) << (7 * used);
            used += 1;
            if b & 0x80 == 0 {
                break;
            }
            assert!(used < 4, "hub sent a remaining length over 4 bytes");
        }
        let rest = &rest[used..];
        assert!(
            rest.len() >= len,
            "hub sent a truncated packet (type {}, {} of {len} bytes)",
            first >> 4,
            rest.len()
        );
        out.push((first, &rest[..len]));
        bytes = &rest[len..];
    }
    out
}

/// Checks the hub's side of a connection: whole packets, CONNACK first and only there, and only
/// packet types a server sends. Returns the CONNACK's return code, if there was one.
fn check_replies(replies: &[u8]) -> Option<u8> {
    let packets = packets(replies);
    let mut code = None;
    for (i, &(first, body)) in packets.iter().enumerate() {
        match first {
            0x20 => {
                assert_eq!(i, 0, "CONNACK not first: {packets:02x?}");
                assert_eq!(body.len(), 2, "CONNACK length");
                code = Some(body[1]);
                if body[1] != 0 {
                    assert_eq!(packets.len(), 1, "a refused CONNECT got more than CONNACK");
                }
            }
            0x30..=0x3F => {
                assert!(i > 0, "PUBLISH before CONNACK");
                assert_ne!((first >> 1) & 3, 3, "PUBLISH with QoS 3");
            }
            0x40 | 0x90 | 0xB0 | 0xD0 => assert!(i > 0, "ack before CONNACK"),
            _ => panic!("hub sent a packet no server sends: {first:#04x} {body:02x?}"),
        }
    }
    code
}

/// The client id of a CONNECT at the start of `data` (only called when the hub accepted it).
fn connect_client_id(data: &[u8]) -> Option<Vec<u8>> {
    let mut i = 1;
    while *data.get(i)? & 0x80 != 0 {
        i += 1;
    }
    i += 1;
    let name_len = usize::from(u16::from_be_bytes([*data.get(i)?, *data.get(i + 1)?]));
    i += 2 + name_len + 4; // protocol name, level, flags, keep-alive
    let id_len = usize::from(u16::from_be_bytes([*data.get(i)?, *data.get(i + 1)?]));
    data.get(i + 2..i + 2 + id_len).map(<[u8]>::to_vec)
}

/// Serves one connection, writing `input` and reading everything the hub sends, under [`STEP`].
/// Returns what the hub sent (`None` if the client side timed out). Panics if the serve task
/// panicked or did not end within [`STEP`] of the client side being dropped.
async fn session(f: &'static Fixture, input: &[u8]) -> Option<Vec<u8>> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let serve: JoinHandle<()> = tokio::spawn(f.hub.serve_stream(server, vec![f.leaf.clone()]));
    let (mut rd, mut wr) = tokio::io::split(client);
    let replies = timeout(STEP, async {
        let write = async {
            // The hub may close first (a protocol violation): a failed write is not a finding.
            let _ = wr.write_all(input).await;
            let _ = wr.shutdown().await;
        };
        let read = async {
            let mut buf = Vec::new();
            let _ = rd.read_to_end(&mut buf).await;
            buf
        };
        tokio::join!(write, read).1
    })
    .await
    .ok();
    drop((rd, wr));
    finish(serve).await;
    replies
}

async fn finish(serve: JoinHandle<()>) {
    match timeout(STEP, serve).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("serve task failed: {e}"),
        Err(_) => panic!("serve task still running {STEP:?} after the client closed"),
    }
}

/// A well-behaved client: takes over `client_id` with a clean session and clears every retained
/// message. Panics if the hub does not answer it properly.
async fn sweep(f: &'static Fixture, client_id: &[u8]) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let serve = tokio::spawn(f.hub.serve_stream(server, vec![f.leaf.clone()]));
    let (mut rd, mut wr) = tokio::io::split(client);
    let mut out = connect(client_id);
    frame(&mut out, 0x82, &[0, 1, 0, 1, b'#', 0]); // SUBSCRIBE 1 "#" QoS 0
    frame(&mut out, 0xC0, &[]); // PINGREQ
    let done = timeout(STEP, async {
        wr.write_all(&out).await.expect("sweep: write");
        // Read up to PINGRESP: CONNACK, SUBACK, then every retained message.
        let mut buf = Vec::new();
        let retained = loop {
            let n = rd.read_buf(&mut buf).await.expect("sweep: read");
            assert!(n > 0, "sweep: hub closed the connection: {buf:02x?}");
            if let Some(&(0xD0, _)) = complete(&buf).last() {
                let packets = complete(&buf);
                assert_eq!(packets[0], (0x20, &[0u8, 0][..]), "sweep: CONNACK");
                assert_eq!(packets[1], (0x90, &[0u8, 1, 0][..]), "sweep: SUBACK");
                break packets[2..packets.len() - 1]
                    .iter()
                    .map(|&(first, body)| {
                        assert_eq!(first, 0x31, "sweep: expected a retained QoS 0 PUBLISH");
                        let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                        body[2..2 + len].to_vec()
                    })
                    .collect::<Vec<_>>();
            }
        };
        let mut out = Vec::new();
        for topic in &retained {
            let mut body = Vec::new();
            mqtt_string(&mut body, topic);
            frame(&mut out, 0x31, &body); // empty retained PUBLISH: clears it
        }
        frame(&mut out, 0xE0, &[]); // DISCONNECT
        wr.write_all(&out).await.expect("sweep: write");
        wr.shutdown().await.expect("sweep: shutdown");
        rd.read_to_end(&mut buf).await.expect("sweep: read");
    })
    .await;
    assert!(done.is_ok(), "sweep: timed out");
    drop((rd, wr));
    finish(serve).await;
}

/// The complete packets at the start of `buf`.
fn complete(buf: &[u8]) -> Vec<(u8, &[u8])> {
    let mut end = 0;
    let mut rest = buf;
    // Walk whole packets only; stop at the first incomplete one.
    while rest.len() >= 2 {
        let mut len = 0usize;
        let mut used = 0;
        let mut ok = false;
        while let Some(&b) = rest.get(1 + used) {
            len |= usize::from(b & 0x7F) << (7 * used);
            used += 1;
            if b & 0x80 == 0 {
                ok = true;
                break;
            }
        }
        if !ok || rest.len() < 1 + used + len {
            break;
        }
        end += 1 + used + len;
        rest = &rest[1 + used + len..];
    }
    packets(&buf[..end])
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    f.rt.block_on(async {
        let own_connect = data.first() == Some(&0x10);
        let input = if own_connect {
            data.to_vec()
        } else {
            let mut v = connect(FIXED_CLIENT_ID.as_bytes());
            v.extend_from_slice(data);
            v
        };
        let replies = session(f, &input).await;
        assert_eq!(f.hub.connection_count(), 0, "connection left registered");
        let mut sweep_id = FIXED_CLIENT_ID.as_bytes().to_vec();
        if let Some(replies) = replies {
            let code = check_replies(&replies);
            if own_connect {
                if code == Some(0) {
                    sweep_id = connect_client_id(data).expect("accepted CONNECT parses");
                }
            } else {
                assert_eq!(
                    replies.get(..4),
                    Some(&[0x20, 2, 0, 0][..]),
                    "the fixed CONNECT is not accepted"
                );
            }
        }
        sweep(f, &sweep_id).await;
        assert_eq!(
            f.hub.connection_count(),
            0,
            "sweep connection left registered"
        );
        assert_eq!(f.hub.subscription_count(), 0, "subscriptions left behind");
    });
});
