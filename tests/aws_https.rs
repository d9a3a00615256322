//! HTTPS publish (AWS's `POST /topics/<topic>?qos=1`) against the hub: on its own port (AWS's
//! 8443) and on the MQTT port with ALPN `x-amzn-http-ca` (AWS's 443), from
//! `fleetkit::aws::HttpsPublisher` and from curl, authorized by the policy without thing
//! variables (as on AWS, where HTTPS has no client id).
#![cfg(all(feature = "local", feature = "aws"))]

mod support;

use std::time::Duration;

use fleetkit::Error;
use fleetkit::aws::{AwsIot, AwsTransport};
use fleetkit::identity::X509Credential;
use fleetkit::local::dialect::aws::AwsHubDialect;
use fleetkit::local::{CertificateState, DeviceRecord, HubEvent, LocalHub};
use fleetkit::policy::{AttachTarget, PolicyDocument};

/// Publish on `dt/<certificate CN>/…`: certificate variables work over HTTPS, thing
/// variables do not.
const POLICY: &str = r#"{"Version":"2012-10-17","Statement":[
  {"Effect":"Allow","Action":"iot:Publish",
   "Resource":"arn:aws:iot:*:*:topic/dt/${iot:Certificate.Subject.CommonName}/*"},
  {"Effect":"Allow","Action":"iot:Publish",
   "Resource":"arn:aws:iot:*:*:topic/thingvar/${iot:Connection.Thing.ThingName}"}]}"#;

async fn hub() -> (LocalHub, X509Credential) {
    let hub = LocalHub::builder()
        .dialect(AwsHubDialect::new())
        .https(true)
        .start()
        .await
        .unwrap();
    hub.put_policy("http", &PolicyDocument::from_json(POLICY).unwrap())
        .unwrap();
    hub.attach_policy("http", AttachTarget::Group("meters".into()))
        .unwrap();
    hub.create_device(DeviceRecord::new("meter-1").in_group("meters"))
        .unwrap();
    let cred = hub.issue_device_credential("meter-1").unwrap();
    (hub, cred)
}

fn config(hub: &LocalHub, transport: AwsTransport) -> AwsIot {
    AwsIot::builder()
        .region("us-east-1")
        .endpoint("localhost")
        .transport(transport)
        .port(hub.mqtt_addr().port())
        .https_port(hub.https_addr().unwrap().port())
        .root_ca(hub.ca_certificate())
        .build()
        .unwrap()
}

#[tokio::test]
async fn https_publish_on_its_port_and_with_alpn_on_the_mqtt_port() {
    let (hub, cred) = hub().await;
    let mut cloud = hub.subscribe("dt/#").unwrap();
    for (transport, payload) in [
        (AwsTransport::Mqtt, "8443"),
        (AwsTransport::MqttAlpn443, "443"),
    ] {
        let publisher = config(&hub, transport).https_publisher(&cred).unwrap();
        publisher
            .publish("dt/meter-1/energy", payload.as_bytes().to_vec(), 1)
            .await
            .unwrap();
        let m = tokio::time::timeout(Duration::from_secs(5), cloud.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.topic, "dt/meter-1/energy");
        assert_eq!(&m.payload[..], payload.as_bytes());
        assert_eq!(m.qos, 1);
    }
}

#[tokio::test]
async fn https_refusals_are_typed_and_deliver_nothing() {
    let (hub, cred) = hub().await;
    let mut cloud = hub.subscribe("#").unwrap();
    let mut events = hub.events();
    let publisher = config(&hub, AwsTransport::Mqtt)
        .https_publisher(&cred)
        .unwrap();
    // Another meter's topic: the policy denies it.
    let denied = publisher
        .publish("dt/meter-2/energy", b"x".to_vec(), 1)
        .await;
    assert!(
        matches!(denied, Err(Error::PermissionDenied(_))),
        "{denied:?}"
    );
    // Thing variables do not resolve without a client id.
    let denied = publisher
        .publish("thingvar/meter-1", b"x".to_vec(), 0)
        .await;
    assert!(
        matches!(denied, Err(Error::PermissionDenied(_))),
        "{denied:?}"
    );
    let explained = loop {
        if let HubEvent::PolicyDenied { explanation, .. } = events.recv().await.unwrap() {
            break explanation;
        }
    };
    assert!(explained.contains("dt/meter-2/energy"), "{explained}");
    // Bad input, refused before the network or by the hub.
    assert!(matches!(
        publisher.publish("dt/meter-1/x", b"x".to_vec(), 2).await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        publisher
            .publish("$aws/things/meter-1/shadow/update", b"{}".to_vec(), 1)
            .await,
        Err(Error::InvalidInput { .. })
    ));
    let too_big = publisher
        .publish("dt/meter-1/x", vec![b'a'; 200 * 1024], 1)
        .await;
    assert!(
        matches!(too_big, Err(Error::InvalidInput { .. })),
        "{too_big:?}"
    );
    // A revoked certificate publishes nothing.
    hub.set_certificate_state(&cred.leaf().fingerprint_sha256(), CertificateState::Revoked)
        .unwrap();
    let refused = publisher
        .publish("dt/meter-1/energy", b"after".to_vec(), 1)
        .await;
    assert!(
        matches!(
            refused,
            Err(Error::Unauthenticated(_) | Error::Unavailable(_))
        ),
        "{refused:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(cloud.try_recv().is_none(), "nothing was delivered");
}

/// curl, as AWS's documentation shows it, against the hub's 8443-style port.
#[tokio::test]
async fn curl_publishes_like_the_aws_docs_show() {
    let (hub, cred) = hub().await;
    let mut cloud = hub.subscribe("dt/#").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    support::write_tls_files(d, &hub, &cred);
    let url = format!(
        "https://localhost:{}/topics/dt%2Fmeter-1%2Fcurl?qos=1",
        hub.https_addr().unwrap().port()
    );
    let out = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--tlsv1.2", "--cacert"])
        .arg(d.join("ca.pem"))
        .arg("--cert")
        .arg(d.join("cert.pem"))
        .arg("--key")
        .arg(d.join("key.pem"))
        .args([
            "-X",
            "POST",
            "-d",
            "{\"kwh\": 3}",
            "-w",
            "\n%{http_code}",
            &url,
        ])
        .output()
        .await
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.ends_with("\n200"), "{text}");
    assert!(text.contains("\"message\":\"OK\""), "{text}");
    let m = tokio::time::timeout(Duration::from_secs(5), cloud.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("dt/meter-1/curl", &b"{\"kwh\": 3}"[..])
    );
}
