use std::sync::OnceLock;

use serde_json::json;

use super::topics::{ShadowOp, ShadowTopic};
use super::*;
use crate::aws::{AwsIotBuilder, AwsTransport};
use crate::pki::{CaOptions, Certificate, CertificateAuthority};

fn root() -> &'static Certificate {
    static ROOT: OnceLock<Certificate> = OnceLock::new();
    ROOT.get_or_init(|| {
        CertificateAuthority::new_root(&CaOptions::new("Test Amazon Root"))
            .expect("root")
            .certificate()
            .clone()
    })
}

fn builder() -> AwsIotBuilder {
    AwsIot::builder()
        .region("us-east-1")
        .endpoint("abc123-ats.iot.us-east-1.amazonaws.com")
        .root_ca(root())
}

fn classic() -> AwsDialect {
    builder().build().unwrap().dialect()
}

fn named() -> AwsDialect {
    builder().shadow_name("config").build().unwrap().dialect()
}

fn id(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

fn bytes(v: Value) -> Bytes {
    Bytes::from(serde_json::to_vec(&v).unwrap())
}

// ---------------------------------------------------------------------------------------------
// Connection
// ---------------------------------------------------------------------------------------------

#[test]
fn name_and_capabilities() {
    let d = classic();
    assert_eq!(d.name(), "aws");
    let caps = d.capabilities();
    for f in [
        Feature::Telemetry,
        Feature::AtLeastOnce,
        Feature::Commands,
        Feature::Twin,
        Feature::DesiredNotifications,
        Feature::TwinVersioning,
    ] {
        assert!(caps.supports(f), "{f:?}");
    }
    for f in [
        Feature::TelemetryProperties,
        Feature::Methods,
        Feature::CertificateRotation,
    ] {
        assert!(!caps.supports(f), "{f:?}");
    }
}

#[test]
fn endpoint_for_mqtt_on_8883() {
    let d = classic();
    let e = d.endpoint();
    assert_eq!(e.host, "abc123-ats.iot.us-east-1.amazonaws.com");
    assert_eq!(e.port, 8883);
    assert_eq!(e.server_name, e.host);
    assert!(e.alpn.is_empty());
    assert_eq!(e.roots, vec![root().der().clone()]);
}

#[test]
fn endpoint_for_mqtt_with_alpn_on_443() {
    let d = builder()
        .transport(AwsTransport::MqttAlpn443)
        .build()
        .unwrap()
        .dialect();
    let e = d.endpoint();
    assert_eq!(e.port, 443);
    assert_eq!(e.alpn, vec![b"x-amzn-mqtt-ca".to_vec()]);
    assert_eq!(e.server_name, "abc123-ats.iot.us-east-1.amazonaws.com");
}

#[test]
fn endpoint_against_a_local_hub_uses_the_server_name_override() {
    let d = builder()
        .endpoint("127.0.0.1")
        .port(18443)
        .server_name("localhost")
        .transport(AwsTransport::MqttAlpn443)
        .build()
        .unwrap()
        .dialect();
    let e = d.endpoint();
    assert_eq!((e.host.as_str(), e.port), ("127.0.0.1", 18443));
    assert_eq!(e.server_name, "localhost");
    assert_eq!(e.alpn, vec![b"x-amzn-mqtt-ca".to_vec()]);
}

#[test]
fn client_id_username_password_and_limits() {
    let d = classic();
    let dev = id("sensor-1");
    assert_eq!(d.client_id(&dev), "sensor-1");
    assert_eq!(
        d.username(&dev).unwrap(),
        format!("?SDK=fleetkit&Version={}", env!("CARGO_PKG_VERSION"))
    );
    assert!(d.password(&dev).unwrap().is_none());
    let limits = d.limits();
    assert_eq!(limits.max_payload, 128 * 1024);
    assert_eq!(limits.max_topic_len, 256);
    assert_eq!(limits.max_properties, 0);
}

// ---------------------------------------------------------------------------------------------
// Topics
// ---------------------------------------------------------------------------------------------

#[test]
fn telemetry_topic_from_the_template_and_no_properties() {
    let dev = id("sensor-1");
    assert_eq!(
        classic().telemetry_topic(&dev, &[]).unwrap(),
        "dt/sensor-1/telemetry"
    );
    let custom = builder()
        .telemetry_topic("dt/greenhouse/{thing}/climate")
        .build()
        .unwrap()
        .dialect();
    assert_eq!(
        custom.telemetry_topic(&dev, &[]).unwrap(),
        "dt/greenhouse/sensor-1/climate"
    );
    let props = vec![("unit".to_string(), "C".to_string())];
    assert!(matches!(
        classic().telemetry_topic(&dev, &props),
        Err(Error::NotSupported(_))
    ));
}

#[test]
fn subscriptions_classic() {
    let subs = classic().subscriptions(&id("sensor-1"));
    let expected: Vec<(String, u8)> = [
        "$aws/things/sensor-1/shadow/get/accepted",
        "$aws/things/sensor-1/shadow/get/rejected",
        "$aws/things/sensor-1/shadow/update/accepted",
        "$aws/things/sensor-1/shadow/update/rejected",
        "$aws/things/sensor-1/shadow/update/delta",
        "cmd/sensor-1/#",
        "$aws/things/sensor-1/jobs/notify-next",
        "$aws/things/sensor-1/jobs/get/+",
        "$aws/things/sensor-1/jobs/start-next/+",
        "$aws/things/sensor-1/jobs/+/get/+",
        "$aws/things/sensor-1/jobs/+/update/+",
    ]
    .iter()
    .map(|t| (t.to_string(), 1))
    .collect();
    assert_eq!(subs, expected);
    // More than AWS takes in one SUBSCRIBE: the client splits them by this limit.
    assert_eq!(classic().limits().max_filters_per_subscribe, 8);
    assert!(classic().capabilities().supports(Feature::Jobs));
    // Without jobs: the shadow and command filters only.
    let no_jobs = builder().jobs(false).build().unwrap().dialect();
    assert_eq!(
        no_jobs.subscriptions(&id("sensor-1")),
        expected[..6].to_vec()
    );
    assert!(!no_jobs.capabilities().supports(Feature::Jobs));
}

#[test]
fn subscriptions_named() {
    let d = builder()
        .shadow_name("config")
        .command_topic("commands/{thing}")
        .jobs(false)
        .build()
        .unwrap()
        .dialect();
    let subs = d.subscriptions(&id("sensor-1"));
    let expected: Vec<(String, u8)> = [
        "$aws/things/sensor-1/shadow/name/config/get/accepted",
        "$aws/things/sensor-1/shadow/name/config/get/rejected",
        "$aws/things/sensor-1/shadow/name/config/update/accepted",
        "$aws/things/sensor-1/shadow/name/config/update/rejected",
        "$aws/things/sensor-1/shadow/name/config/update/delta",
        "commands/sensor-1/#",
    ]
    .iter()
    .map(|t| (t.to_string(), 1))
    .collect();
    assert_eq!(subs, expected);
}

#[test]
fn ids_that_are_not_thing_names_are_refused() {
    let d = classic();
    // Azure accepts '#' and '+' in device ids; on AWS they would become wildcards.
    let azure = DeviceId::with_rule("line+7#a", IdRule::Azure).unwrap();
    assert!(d.subscriptions(&azure).is_empty());
    assert!(matches!(
        d.telemetry_topic(&azure, &[]),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        d.twin_get(&azure, "r1"),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        d.twin_report(&azure, "r1", &Map::new(), None),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        d.classify(&azure, "cmd/line+7#a/x", &Bytes::new()),
        Inbound::Other { .. }
    ));
}

#[test]
fn shadow_topics_parse_and_print() {
    assert_eq!(shadow_topic_prefix("t", None), "$aws/things/t/shadow");
    assert_eq!(
        shadow_topic_prefix("t", Some("n")),
        "$aws/things/t/shadow/name/n"
    );
    for op in ShadowOp::ALL {
        for name in [None, Some("cfg")] {
            let topic = topics::shadow("thing-1", name, *op);
            assert_eq!(
                topics::parse_shadow(&topic),
                Some(ShadowTopic {
                    thing: "thing-1",
                    name,
                    op: *op
                }),
                "{topic}"
            );
        }
    }
    for t in [
        "$aws/things/t/shadow",
        "$aws/things/t/shadow/",
        "$aws/things/t/shadow/get/unknown",
        "$aws/things//shadow/get",
        "$aws/things/t/shadow/name//get",
        "$aws/things/t/shadow/name/n",
        "$aws/things/t/jobs/get",
        "$aws/events/presence/connected/t",
        "dt/t/telemetry",
    ] {
        assert_eq!(topics::parse_shadow(t), None, "{t}");
    }
    assert_eq!(
        topics::basic_ingest_rule("$aws/rules/my_rule/dt/x"),
        Some("my_rule")
    );
    assert_eq!(topics::basic_ingest_rule("$aws/rules/my_rule"), None);
    assert_eq!(topics::basic_ingest_rule("$aws/rules/my-rule/x"), None);
    assert_eq!(topics::expand("dt/{thing}/{thing}", "a"), "dt/a/a");
}

// ---------------------------------------------------------------------------------------------
// Classify
// ---------------------------------------------------------------------------------------------

#[track_caller]
fn twin_response(inbound: Inbound) -> (String, u16, Bytes) {
    match inbound {
        Inbound::TwinResponse {
            request_id,
            status,
            body,
        } => (request_id, status, body),
        other => panic!("expected a twin response, got {other:?}"),
    }
}

#[track_caller]
fn is_other(inbound: Inbound) -> bool {
    matches!(inbound, Inbound::Other { .. })
}

#[test]
fn accepted_answers_are_twin_responses_with_status_200() {
    let d = classic();
    let dev = id("sensor-1");
    for op in ["get", "update"] {
        let body =
            bytes(json!({"state": {"reported": {"a": 1}}, "version": 4, "clientToken": "abc7"}));
        let (rid, status, got) = twin_response(d.classify(
            &dev,
            &format!("$aws/things/sensor-1/shadow/{op}/accepted"),
            &body,
        ));
        assert_eq!((rid.as_str(), status), ("abc7", 200));
        assert_eq!(got, body);
    }
}

#[test]
fn rejected_answers_carry_the_error_code() {
    let d = classic();
    let dev = id("sensor-1");
    for op in ["get", "update"] {
        let topic = format!("$aws/things/sensor-1/shadow/{op}/rejected");
        let body = bytes(json!({"code": 409, "message": "Version conflict", "clientToken": "r9"}));
        let (rid, status, _) = twin_response(d.classify(&dev, &topic, &body));
        assert_eq!((rid.as_str(), status), ("r9", 409));

        // No code, or one that is not an error status: 500.
        for body in [
            json!({"message": "?", "clientToken": "r9"}),
            json!({"code": "409", "clientToken": "r9"}),
            json!({"code": 200, "clientToken": "r9"}),
            json!({"code": 70000, "clientToken": "r9"}),
        ] {
            let (_, status, _) = twin_response(d.classify(&dev, &topic, &bytes(body)));
            assert_eq!(status, 500);
        }
    }
}

#[test]
fn answers_without_a_client_token_or_not_json_are_other() {
    let d = classic();
    let dev = id("sensor-1");
    for (topic, body) in [
        (
            "$aws/things/sensor-1/shadow/update/accepted",
            bytes(json!({"state": {"desired": {"a": 1}}, "version": 5})),
        ),
        (
            "$aws/things/sensor-1/shadow/update/rejected",
            bytes(json!({"code": 400, "message": "Invalid JSON"})),
        ),
        (
            "$aws/things/sensor-1/shadow/get/accepted",
            bytes(json!({"clientToken": 7})),
        ),
        (
            "$aws/things/sensor-1/shadow/get/accepted",
            Bytes::from_static(b"not json"),
        ),
        ("$aws/things/sensor-1/shadow/get/accepted", Bytes::new()),
        (
            "$aws/things/sensor-1/shadow/get/accepted",
            bytes(json!(["clientToken"])),
        ),
    ] {
        assert!(is_other(d.classify(&dev, topic, &body)), "{topic} {body:?}");
    }
}

#[test]
fn delta_is_a_desired_change() {
    let d = classic();
    let dev = id("sensor-1");
    let body = bytes(json!({
        "state": {"fan": {"speed": 3}},
        "metadata": {"fan": {"speed": {"timestamp": 1700000000}}},
        "version": 12,
        "timestamp": 1700000000
    }));
    match d.classify(&dev, "$aws/things/sensor-1/shadow/update/delta", &body) {
        Inbound::DesiredChange(change) => {
            assert_eq!(change.version, 12);
            assert_eq!(Value::Object(change.patch), json!({"fan": {"speed": 3}}));
        }
        other => panic!("{other:?}"),
    }
    for bad in [
        Bytes::from_static(b"{"),
        bytes(json!({"state": {"a": 1}})),
        bytes(json!({"state": 3, "version": 1})),
        bytes(json!({"version": 1})),
    ] {
        assert!(
            is_other(d.classify(&dev, "$aws/things/sensor-1/shadow/update/delta", &bad)),
            "{bad:?}"
        );
    }
}

#[test]
fn commands_are_named_by_the_rest_of_the_topic() {
    let d = classic();
    let dev = id("sensor-1");
    let payload = Bytes::from_static(b"\x00\x01binary");
    match d.classify(&dev, "cmd/sensor-1/reboot", &payload) {
        Inbound::Command(c) => {
            assert_eq!(c.name, "reboot");
            assert_eq!(c.payload, payload);
            assert!(c.properties.is_empty());
        }
        other => panic!("{other:?}"),
    }
    match d.classify(&dev, "cmd/sensor-1/ota/start", &payload) {
        Inbound::Command(c) => assert_eq!(c.name, "ota/start"),
        other => panic!("{other:?}"),
    }
    for t in [
        "cmd/sensor-1",
        "cmd/sensor-1/",
        "cmd/sensor-10/reboot",
        "cmd/sensor-/x",
    ] {
        assert!(is_other(d.classify(&dev, t, &payload)), "{t}");
    }
}

#[test]
fn messages_for_another_thing_or_shadow_are_not_taken_for_ours() {
    let dev = id("sensor-1");
    let answer = bytes(json!({"version": 3, "clientToken": "r1"}));
    let delta = bytes(json!({"state": {"a": 1}, "version": 3}));
    let d = classic();
    for (topic, body) in [
        ("$aws/things/sensor-2/shadow/get/accepted", &answer),
        ("$aws/things/sensor-2/shadow/update/rejected", &answer),
        ("$aws/things/sensor-2/shadow/update/delta", &delta),
        ("$aws/things/sensor-10/shadow/update/delta", &delta),
        // A named shadow of ours is not the classic shadow.
        (
            "$aws/things/sensor-1/shadow/name/config/get/accepted",
            &answer,
        ),
        (
            "$aws/things/sensor-1/shadow/name/config/update/delta",
            &delta,
        ),
        ("cmd/sensor-2/reboot", &answer),
    ] {
        assert!(is_other(d.classify(&dev, topic, body)), "{topic}");
    }
    let n = named();
    for (topic, body) in [
        ("$aws/things/sensor-1/shadow/get/accepted", &answer),
        ("$aws/things/sensor-1/shadow/update/delta", &delta),
        (
            "$aws/things/sensor-1/shadow/name/other/update/delta",
            &delta,
        ),
        (
            "$aws/things/sensor-2/shadow/name/config/update/delta",
            &delta,
        ),
    ] {
        assert!(is_other(n.classify(&dev, topic, body)), "{topic}");
    }
    assert!(matches!(
        n.classify(
            &dev,
            "$aws/things/sensor-1/shadow/name/config/update/delta",
            &delta
        ),
        Inbound::DesiredChange(_)
    ));
    let (rid, status, _) = twin_response(n.classify(
        &dev,
        "$aws/things/sensor-1/shadow/name/config/get/accepted",
        &answer,
    ));
    assert_eq!((rid.as_str(), status), ("r1", 200));
}

#[test]
fn other_shadow_and_foreign_topics_are_other() {
    let d = classic();
    let dev = id("sensor-1");
    let body = bytes(json!({"clientToken": "r1", "version": 1}));
    for t in [
        "$aws/things/sensor-1/shadow/update/documents",
        "$aws/things/sensor-1/shadow/delete/accepted",
        "$aws/things/sensor-1/shadow/get",
        "$aws/things/sensor-1/jobs/start-next",
        "dt/sensor-1/telemetry",
        "app/anything",
    ] {
        match d.classify(&dev, t, &body) {
            Inbound::Other { topic, payload } => {
                assert_eq!(topic, t);
                assert_eq!(payload, body);
            }
            other => panic!("{t}: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Twin requests
// ---------------------------------------------------------------------------------------------

#[test]
fn twin_get_payload() {
    let out = classic()
        .twin_get(&id("sensor-1"), "0a1b2c3d4e5f17")
        .unwrap();
    assert_eq!(out.topic, "$aws/things/sensor-1/shadow/get");
    assert_eq!(&out.payload[..], br#"{"clientToken":"0a1b2c3d4e5f17"}"#);
    assert_eq!(out.qos, 1);
    let named = named().twin_get(&id("sensor-1"), "r").unwrap();
    assert_eq!(named.topic, "$aws/things/sensor-1/shadow/name/config/get");
}

#[test]
fn twin_report_payloads() {
    let d = classic();
    let dev = id("sensor-1");
    let patch = json!({"firmware": "1.2.0", "fan": {"speed": 3}, "old": null});
    let patch = patch.as_object().unwrap();
    let out = d.twin_report(&dev, "rid1", patch, None).unwrap();
    assert_eq!(out.topic, "$aws/things/sensor-1/shadow/update");
    assert_eq!(out.qos, 1);
    // The patch's own member order depends on serde_json's features; the rest is exact.
    let p = serde_json::to_string(patch).unwrap();
    assert_eq!(
        std::str::from_utf8(&out.payload).unwrap(),
        format!(r#"{{"state":{{"reported":{p}}},"clientToken":"rid1"}}"#)
    );
    let versioned = d.twin_report(&dev, "rid2", patch, Some(41)).unwrap();
    assert_eq!(
        std::str::from_utf8(&versioned.payload).unwrap(),
        format!(r#"{{"state":{{"reported":{p}}},"clientToken":"rid2","version":41}}"#)
    );
    let single = json!({"firmware": "1.2.0"});
    let out = d
        .twin_report(&dev, "rid3", single.as_object().unwrap(), Some(0))
        .unwrap();
    assert_eq!(
        &out.payload[..],
        br#"{"state":{"reported":{"firmware":"1.2.0"}},"clientToken":"rid3","version":0}"#
    );
    // What the hub side will parse it as.
    let request: Value = serde_json::from_slice(&versioned.payload).unwrap();
    let update = crate::device::twin::TwinUpdate::from_aws_update_request(&request).unwrap();
    assert_eq!(update.expected_version(), Some(41));

    let named = named().twin_report(&dev, "r", patch, None).unwrap();
    assert_eq!(
        named.topic,
        "$aws/things/sensor-1/shadow/name/config/update"
    );
}

#[test]
fn client_tokens_are_escaped_and_limited_to_64_bytes() {
    let d = classic();
    let dev = id("sensor-1");
    let out = d.twin_get(&dev, r#"a"b"#).unwrap();
    let body: Value = serde_json::from_slice(&out.payload).unwrap();
    assert_eq!(body["clientToken"], r#"a"b"#);

    let longest = "r".repeat(64);
    d.twin_get(&dev, &longest).unwrap();
    let patch = json!({"a": 1});
    for rid in ["".to_string(), "r".repeat(65)] {
        match d.twin_get(&dev, &rid) {
            Err(Error::InvalidInput { field, reason }) => {
                assert_eq!(field, "request id");
                assert!(reason.contains("64"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            d.twin_report(&dev, &rid, patch.as_object().unwrap(), None),
            Err(Error::InvalidInput { .. })
        ));
    }
    // What the DeviceClient generates: 12 hex digits and a u64 counter.
    let generated = format!("{}{}", "0a".repeat(6), u64::MAX);
    assert!(generated.len() <= 64);
    d.twin_get(&dev, &generated).unwrap();
}

#[test]
fn twin_report_checks_aws_shadow_rules_and_the_message_size() {
    let d = classic();
    let dev = id("sensor-1");
    let deep = json!({"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}});
    match d.twin_report(&dev, "r", deep.as_object().unwrap(), None) {
        Err(Error::InvalidInput { field, .. }) => {
            assert!(field.starts_with("reported.a"), "{field}")
        }
        other => panic!("{other:?}"),
    }
    let null_in_array = json!({"list": [1, null]});
    assert!(matches!(
        d.twin_report(&dev, "r", null_in_array.as_object().unwrap(), None),
        Err(Error::InvalidInput { .. })
    ));
    let huge = json!({"blob": "x".repeat(128 * 1024)});
    match d.twin_report(&dev, "r", huge.as_object().unwrap(), None) {
        Err(Error::InvalidInput { field, reason }) => {
            assert_eq!(field, "patch");
            assert!(reason.contains("131072"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn parse_twin_document_reads_a_shadow() {
    let d = classic();
    let body = bytes(json!({
        "state": {
            "desired": {"color": "red"},
            "reported": {"color": "green"},
            "delta": {"color": "red"}
        },
        "metadata": {
            "desired": {"color": {"timestamp": 1700000000}},
            "reported": {"color": {"timestamp": 1700000001}}
        },
        "version": 9,
        "timestamp": 1700000002,
        "clientToken": "r1"
    }));
    let twin = d.parse_twin_document(&body).unwrap();
    assert_eq!(twin.version(), 9);
    assert_eq!(twin.desired()["color"], "red");
    assert_eq!(twin.reported()["color"], "green");
    assert!(matches!(
        d.parse_twin_document(&Bytes::from_static(b"nope")),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        d.parse_twin_document(&bytes(json!({"state": 1}))),
        Err(Error::InvalidInput { .. })
    ));
}

#[test]
fn parse_twin_reported_reads_the_version() {
    let d = classic();
    let body = bytes(json!({"state": {"reported": {"a": 1}}, "version": 10, "clientToken": "r"}));
    assert_eq!(d.parse_twin_reported(&body).unwrap(), 10);
    for bad in [
        bytes(json!({"state": {}})),
        bytes(json!({"version": "10"})),
        Bytes::new(),
    ] {
        assert!(matches!(
            d.parse_twin_reported(&bad),
            Err(Error::InvalidInput { .. })
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Errors and methods
// ---------------------------------------------------------------------------------------------

fn error_doc(code: u16, message: &str) -> Bytes {
    bytes(json!({"code": code, "message": message, "timestamp": 1700000000, "clientToken": "r"}))
}

#[test]
fn twin_errors_map_aws_codes() {
    let d = classic();
    let dev = id("sensor-1");
    match d.twin_error(&dev, 409, &error_doc(409, "Version conflict")) {
        Error::Conflict { what, .. } => assert!(what.contains("shadow of sensor-1"), "{what}"),
        other => panic!("{other:?}"),
    }
    match d.twin_error(&dev, 404, &error_doc(404, "Thing not found")) {
        Error::NotFound { what, id } => assert_eq!((what, id.as_str()), ("shadow", "sensor-1")),
        other => panic!("{other:?}"),
    }
    for (code, message) in [
        (400, "Missing required node: state"),
        (413, "The payload exceeds the maximum size allowed"),
        (
            415,
            "Unsupported documented encoding; supported encoding is UTF-8",
        ),
    ] {
        match d.twin_error(&dev, code, &error_doc(code, message)) {
            Error::InvalidInput { reason, .. } => assert_eq!(reason, message),
            other => panic!("{code}: {other:?}"),
        }
    }
    for (code, message) in [(401, "Unauthorized"), (403, "Forbidden")] {
        match d.twin_error(&dev, code, &error_doc(code, message)) {
            Error::PermissionDenied(m) => assert!(m.contains(message), "{m}"),
            other => panic!("{code}: {other:?}"),
        }
    }
    for code in [429, 500, 503] {
        assert!(
            matches!(
                d.twin_error(&dev, code, &error_doc(code, "Internal service failure")),
                Error::Unavailable(_)
            ),
            "{code}"
        );
    }
    // A body that is not an error document still gives the status's meaning.
    assert!(matches!(
        d.twin_error(&dev, 400, &Bytes::from_static(b"garbage")),
        Error::InvalidInput { .. }
    ));
}

#[test]
fn twin_errors_name_the_named_shadow() {
    let d = named();
    let dev = id("sensor-1");
    match d.twin_error(
        &dev,
        404,
        &error_doc(404, "No shadow exists with name: config"),
    ) {
        Error::NotFound { what, id } => {
            assert_eq!((what, id.as_str()), ("shadow", "sensor-1/config"))
        }
        other => panic!("{other:?}"),
    }
    match d.twin_error(&dev, 409, &error_doc(409, "Version conflict")) {
        Error::Conflict { what, .. } => {
            assert!(what.contains(r#"shadow "config" of sensor-1"#), "{what}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn methods_are_not_supported() {
    let d = classic();
    let dev = id("sensor-1");
    let request = MethodRequest {
        name: "reboot".into(),
        request_id: "1".into(),
        payload: Value::Null,
    };
    assert!(matches!(
        d.method_response(&dev, &request, &MethodResponse::ok(Value::Null)),
        Err(Error::NotSupported(_))
    ));
    assert!(matches!(
        d.certificate_request(&dev, "1", "csr"),
        Err(Error::NotSupported(_))
    ));
}
