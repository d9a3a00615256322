//! MQTT over WebSocket with a SigV4-presigned URL (AWS IoT Core's IAM-authenticated
//! transport): `fleetkit::aws` with `AwsTransport::WebSocket` against the hub's AWS dialect,
//! which verifies the signature (service `iotdevicegateway`, session token outside the
//! signature) in the upgrade request and maps the access key to a registry identity.
#![cfg(all(feature = "local", feature = "aws"))]

use std::time::Duration;

use fleetkit::auth::sigv4::AwsCredentials;
use fleetkit::aws::{AwsIot, AwsTransport};
use fleetkit::device::{DeviceClient, Telemetry};
use fleetkit::identity::DeviceId;
use fleetkit::local::dialect::aws::AwsHubDialect;
use fleetkit::local::{DeviceRecord, HubEvent, LocalHub};
use fleetkit::policy::{AttachTarget, PolicyDocument};
use serde_json::json;

const AKID: &str = "ASIAFLEETKITWSS00001";
const SECRET: &str = "wss/secret/key+for/the/hub/0123456789ab";
const TOKEN: &str = "IQoJb3JpZ2luX2VjEXAMPLE/session+token==";

/// What an IAM policy would grant the web dashboard: connect as itself, its telemetry and
/// its shadow.
const POLICY: &str = r#"{"Version":"2012-10-17","Statement":[
  {"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:*:*:client/web-1"},
  {"Effect":"Allow","Action":["iot:Publish","iot:Receive"],
   "Resource":["arn:aws:iot:*:*:topic/dt/web-1/*","arn:aws:iot:*:*:topic/$aws/things/web-1/shadow/*"]},
  {"Effect":"Allow","Action":"iot:Subscribe",
   "Resource":["arn:aws:iot:*:*:topicfilter/$aws/things/web-1/shadow/*","arn:aws:iot:*:*:topicfilter/cmd/web-1/*"]}]}"#;

async fn hub(credentials: AwsCredentials) -> LocalHub {
    let hub = LocalHub::builder()
        .dialect(
            AwsHubDialect::new()
                .with_region("eu-central-1")
                .with_sigv4_identity(credentials, "web-1"),
        )
        .websocket(true)
        .start()
        .await
        .unwrap();
    hub.put_policy("iam", &PolicyDocument::from_json(POLICY).unwrap())
        .unwrap();
    hub.create_device(DeviceRecord::new("web-1")).unwrap();
    hub.attach_policy("iam", AttachTarget::Device("web-1".into()))
        .unwrap();
    hub
}

fn config(hub: &LocalHub, key: &str, secret: &str, token: Option<&str>) -> AwsIot {
    let mut b = AwsIot::builder()
        .region("eu-central-1")
        .endpoint("localhost")
        .transport(AwsTransport::WebSocket)
        .port(hub.websocket_addr().unwrap().port())
        .root_ca(hub.ca_certificate())
        .jobs(false)
        .access_key_id(key)
        .secret_access_key(secret);
    if let Some(t) = token {
        b = b.session_token(t);
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigv4_websocket_clients_connect_publish_and_use_their_shadow() {
    let hub = hub(AwsCredentials::new(AKID, SECRET).with_session_token(TOKEN)).await;
    let mut cloud = hub.subscribe("dt/#").unwrap();
    let aws = config(&hub, AKID, SECRET, Some(TOKEN));
    let client = DeviceClient::builder(aws.dialect(), DeviceId::new("web-1").unwrap())
        .request_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    client
        .send_telemetry(Telemetry::new("over wss"))
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), cloud.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("dt/web-1/telemetry", &b"over wss"[..])
    );
    assert_eq!(
        client.twin().report(json!({"ui": "dark"})).await.unwrap(),
        1
    );
    assert_eq!(hub.connected_clients(), vec!["web-1".to_string()]);
    client.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_signatures_are_refused() {
    let hub = hub(AwsCredentials::new(AKID, SECRET).with_session_token(TOKEN)).await;
    let mut events = hub.events();
    for (key, secret, token, why) in [
        (
            AKID,
            "not-the-secret",
            Some(TOKEN),
            "InvalidSignatureException",
        ),
        (
            "AKIAUNKNOWN000000000",
            SECRET,
            Some(TOKEN),
            "UnrecognizedClientException",
        ),
        (
            AKID,
            SECRET,
            Some("another-token"),
            "UnrecognizedClientException",
        ),
        (AKID, SECRET, None, "UnrecognizedClientException"),
    ] {
        let aws = config(&hub, key, secret, token);
        let refused = DeviceClient::builder(aws.dialect(), DeviceId::new("web-1").unwrap())
            .connect_timeout(Duration::from_secs(3))
            .connect()
            .await;
        assert!(refused.is_err(), "{why}: connected");
        let reason = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let HubEvent::AuthFailure { reason, .. } = events.recv().await.unwrap()
                    && reason.contains("SigV4")
                {
                    return reason;
                }
            }
        })
        .await
        .unwrap();
        assert!(reason.contains(why), "{why}: {reason}");
    }
    assert!(hub.connected_clients().is_empty());
}
