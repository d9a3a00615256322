//! The hub's dialect plug-in point as the native dialect uses it: the username/password hook
//! (over plain TCP and over TLS without a client certificate), checked with a client nobody
//! here wrote (mosquitto_pub), and the refusals.
#![cfg(feature = "local")]

use std::time::Duration;

use fleetkit::Error;
use fleetkit::local::dialect::{Hello, NativeHubDialect, Transport};
use fleetkit::local::{DeviceRecord, HubEvent, LocalHub, Registry};
use fleetkit::policy::{AttachTarget, builtin};

/// Accepts username = device id with the password `"s3cret-" + device id`, for registered
/// devices only (a stand-in for a token check: SAS, JWT).
fn hook(hello: &Hello<'_>, registry: &Registry) -> fleetkit::Result<String> {
    let (Some(user), Some(password)) = (hello.username, hello.password) else {
        return Err(Error::Unauthenticated(
            "username and password required".into(),
        ));
    };
    if registry.device(user).is_none() || password != format!("s3cret-{user}") {
        return Err(Error::Unauthenticated("bad username or password".into()));
    }
    Ok(user.to_string())
}

async fn hub() -> LocalHub {
    let hub = LocalHub::builder()
        .dialect(NativeHubDialect::new().with_password_auth(hook))
        .tcp("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap();
    hub.put_policy("device", &builtin::native_device()).unwrap();
    hub.attach_policy("device", AttachTarget::Group("fleet".into()))
        .unwrap();
    for d in ["legacy-1", "legacy-2"] {
        hub.create_device(DeviceRecord::new(d).in_group("fleet"))
            .unwrap();
    }
    hub
}

/// Runs mosquitto_pub with `args`; returns whether it succeeded.
async fn mosquitto_pub(args: &[&str]) -> bool {
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new("mosquitto_pub")
            .args(args)
            .output(),
    )
    .await
    .expect("mosquitto_pub hung")
    .expect("mosquitto_pub is installed (apt-get install mosquitto-clients)");
    out.status.success()
}

#[tokio::test]
async fn password_hook_admits_a_device_over_plain_tcp() {
    let hub = hub().await;
    let port = hub.tcp_addr().unwrap().port().to_string();
    let mut cloud = hub.subscribe("devices/+/telemetry/#").unwrap();
    let mut events = hub.events();
    let ok = mosquitto_pub(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-i",
        "legacy-1",
        "-u",
        "legacy-1",
        "-P",
        "s3cret-legacy-1",
        "-q",
        "1",
        "-t",
        "devices/legacy-1/telemetry",
        "-m",
        "21.5",
    ])
    .await;
    assert!(ok);
    let m = tokio::time::timeout(Duration::from_secs(5), cloud.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"21.5");
    assert_eq!(m.topic, "devices/legacy-1/telemetry");
    // The connection was the device's, with its policy: connected as legacy-1.
    let connected = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let HubEvent::Connected { device, .. } = events.recv().await.unwrap() {
                return device;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(connected, "legacy-1");
}

#[tokio::test]
async fn wrong_or_missing_passwords_and_unknown_devices_are_refused() {
    let hub = hub().await;
    let port = hub.tcp_addr().unwrap().port().to_string();
    let mut cloud = hub.subscribe("devices/#").unwrap();
    let mut events = hub.events();
    let base = ["-h", "127.0.0.1", "-p", &port, "-q", "1", "-m", "x"];
    for (client, extra) in [
        ("legacy-1", vec!["-u", "legacy-1", "-P", "wrong"]),
        ("legacy-1", vec![]),
        ("ghost-1", vec!["-u", "ghost-1", "-P", "s3cret-ghost-1"]),
        // Right password, but the password names legacy-2 and the policy wants client id = device.
        ("legacy-1", vec!["-u", "legacy-2", "-P", "s3cret-legacy-2"]),
    ] {
        let topic = format!("devices/{client}/telemetry");
        let mut args: Vec<&str> = base.to_vec();
        args.extend(["-i", client, "-t", &topic]);
        args.extend(extra.iter().copied());
        assert!(!mosquitto_pub(&args).await, "{args:?} was admitted");
    }
    // Each refusal is an event saying why; nothing was delivered.
    let mut reasons = Vec::new();
    while let Ok(Ok(e)) = tokio::time::timeout(Duration::from_millis(300), events.recv()).await {
        match e {
            HubEvent::AuthFailure { reason, .. }
            | HubEvent::PolicyDenied {
                explanation: reason,
                ..
            } => reasons.push(reason),
            _ => {}
        }
    }
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(
        reasons[0].contains("bad username or password"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("no password"), "{reasons:?}");
    assert!(reasons[3].contains("iot:Connect"), "{reasons:?}");
    assert!(cloud.try_recv().is_none());
    // A disabled device is refused even with the right password.
    hub.set_device_enabled("legacy-1", false).unwrap();
    assert!(
        !mosquitto_pub(&[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-i",
            "legacy-1",
            "-u",
            "legacy-1",
            "-P",
            "s3cret-legacy-1",
            "-t",
            "devices/legacy-1/telemetry",
            "-m",
            "x",
        ])
        .await
    );
}

#[tokio::test]
async fn password_hook_works_over_tls_without_a_client_certificate() {
    let hub = hub().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, hub.ca_certificate().to_pem()).unwrap();
    let port = hub.mqtt_addr().port().to_string();
    let mut cloud = hub.subscribe("devices/+/telemetry").unwrap();
    assert!(
        mosquitto_pub(&[
            "-h",
            "localhost",
            "-p",
            &port,
            "--cafile",
            ca.to_str().unwrap(),
            "-i",
            "legacy-2",
            "-u",
            "legacy-2",
            "-P",
            "s3cret-legacy-2",
            "-q",
            "1",
            "-t",
            "devices/legacy-2/telemetry",
            "-m",
            "over tls",
        ])
        .await
    );
    let m = tokio::time::timeout(Duration::from_secs(5), cloud.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"over tls");
}

#[tokio::test]
async fn without_a_hook_plain_tcp_admits_nobody_and_passwords_stay_out_of_debug() {
    let hub = LocalHub::builder()
        .tcp("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap();
    hub.create_device(DeviceRecord::new("legacy-1")).unwrap();
    let port = hub.tcp_addr().unwrap().port().to_string();
    assert!(
        !mosquitto_pub(&[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-i",
            "legacy-1",
            "-u",
            "legacy-1",
            "-P",
            "s3cret-legacy-1",
            "-t",
            "devices/legacy-1/telemetry",
            "-m",
            "x",
        ])
        .await
    );
    let hello = Hello::new(
        "legacy-1",
        Some("legacy-1"),
        Some("s3cret-legacy-1"),
        None,
        Transport::Tcp,
    );
    let shown = format!("{hello:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("redacted"), "{shown}");
}
