use std::sync::OnceLock;

use super::*;
use crate::pki::{CaOptions, CertificateAuthority};

fn root() -> &'static Certificate {
    static ROOT: OnceLock<Certificate> = OnceLock::new();
    ROOT.get_or_init(|| {
        CertificateAuthority::new_root(&CaOptions::new("Test Amazon Root"))
            .expect("root")
            .certificate()
            .clone()
    })
}

/// A builder that builds: region, endpoint and a root.
fn minimal() -> AwsIotBuilder {
    AwsIot::builder()
        .region("us-east-1")
        .endpoint("abc123-ats.iot.us-east-1.amazonaws.com")
        .root_ca(root())
}

/// The `field` of the InvalidInput `result` failed with.
#[track_caller]
fn invalid_field<T: fmt::Debug>(result: Result<T>) -> String {
    match result {
        Err(Error::InvalidInput { field, .. }) => field,
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

#[track_caller]
fn invalid(result: Result<AwsIot>) -> (String, String) {
    match result {
        Err(Error::InvalidInput { field, reason }) => (field, reason),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

#[test]
fn defaults() {
    let aws = minimal().build().unwrap();
    assert_eq!(aws.region(), "us-east-1");
    assert_eq!(aws.endpoint(), "abc123-ats.iot.us-east-1.amazonaws.com");
    assert_eq!(aws.port(), 8883);
    assert_eq!(aws.transport(), AwsTransport::Mqtt);
    assert_eq!(aws.server_name(), aws.endpoint());
    assert_eq!(aws.roots().len(), 1);
    assert_eq!(
        aws.control_endpoint(),
        "https://iot.us-east-1.amazonaws.com"
    );
    assert_eq!(aws.access_key_id(), None);
    assert_eq!(aws.secret_access_key(), None);
    assert_eq!(aws.session_token(), None);
    assert_eq!(aws.telemetry_topic(), "dt/{thing}/telemetry");
    assert_eq!(aws.command_topic(), "cmd/{thing}");
    assert_eq!(aws.shadow_name(), None);
}

#[test]
fn account_endpoint_is_completed_with_the_region() {
    let aws = AwsIot::builder()
        .account_endpoint("a3qjEXAMPLEffp")
        .region("us-west-2")
        .root_ca(root())
        .build()
        .unwrap();
    assert_eq!(
        aws.endpoint(),
        "a3qjEXAMPLEffp-ats.iot.us-west-2.amazonaws.com"
    );
    assert_eq!(aws.server_name(), aws.endpoint());

    let china = AwsIot::builder()
        .account_endpoint("a1b2")
        .region("cn-north-1")
        .root_ca(root())
        .build()
        .unwrap();
    assert_eq!(china.endpoint(), "a1b2-ats.iot.cn-north-1.amazonaws.com.cn");
    assert_eq!(
        china.control_endpoint(),
        "https://iot.cn-north-1.amazonaws.com.cn"
    );

    for bad in ["", "a1b2-ats", "a1b2.iot", "a1 b2"] {
        let (field, _) = invalid(
            AwsIot::builder()
                .account_endpoint(bad)
                .region("us-east-1")
                .root_ca(root())
                .build(),
        );
        assert_eq!(field, "endpoint", "{bad:?}");
    }
}

#[test]
fn transports_set_port_and_explicit_port_wins() {
    let alpn = minimal()
        .transport(AwsTransport::MqttAlpn443)
        .build()
        .unwrap();
    assert_eq!(alpn.port(), 443);
    let local = minimal()
        .transport(AwsTransport::MqttAlpn443)
        .port(18443)
        .build()
        .unwrap();
    assert_eq!(local.port(), 18443);
    assert_eq!(local.transport(), AwsTransport::MqttAlpn443);
    assert_eq!(AwsTransport::Mqtt.alpn(), None);
    assert_eq!(
        AwsTransport::MqttAlpn443.alpn(),
        Some(&b"x-amzn-mqtt-ca"[..])
    );
}

#[test]
fn transport_names_round_trip() {
    for t in [
        AwsTransport::Mqtt,
        AwsTransport::MqttAlpn443,
        AwsTransport::WebSocket,
    ] {
        assert_eq!(t.to_string().parse::<AwsTransport>().unwrap(), t);
    }
    assert_eq!(
        "MQTT_ALPN_443".parse::<AwsTransport>().unwrap(),
        AwsTransport::MqttAlpn443
    );
    assert_eq!(
        "alpn".parse::<AwsTransport>().unwrap(),
        AwsTransport::MqttAlpn443
    );
    assert_eq!(
        "wss".parse::<AwsTransport>().unwrap(),
        AwsTransport::WebSocket
    );
    assert_eq!(
        invalid_field("carrier-pigeon".parse::<AwsTransport>()),
        "transport"
    );
}

#[test]
fn config_keys_parse_canonical_names_and_aliases() {
    for key in AwsConfigKey::ALL {
        assert_eq!(key.as_ref().parse::<AwsConfigKey>().unwrap(), *key);
        assert_eq!(key.to_string(), key.as_ref());
        assert_eq!(key.env_var().parse::<AwsConfigKey>().unwrap(), *key);
        assert!(key.env_var().starts_with("AWS_"));
    }
    let aliases = [
        ("region", AwsConfigKey::Region),
        ("default_region", AwsConfigKey::DefaultRegion),
        ("access_key_id", AwsConfigKey::AccessKeyId),
        ("secret_access_key", AwsConfigKey::SecretAccessKey),
        ("token", AwsConfigKey::SessionToken),
        ("session_token", AwsConfigKey::SessionToken),
        ("endpoint", AwsConfigKey::Endpoint),
        ("iot_endpoint", AwsConfigKey::Endpoint),
        ("control_endpoint", AwsConfigKey::ControlEndpoint),
        ("endpoint_url_iot", AwsConfigKey::ControlEndpoint),
        ("ca_bundle", AwsConfigKey::CaBundle),
        ("port", AwsConfigKey::Port),
        ("transport", AwsConfigKey::Transport),
        ("server_name", AwsConfigKey::ServerName),
        ("shadow_name", AwsConfigKey::ShadowName),
        ("telemetry_topic", AwsConfigKey::TelemetryTopic),
        ("command_topic", AwsConfigKey::CommandTopic),
        ("Region", AwsConfigKey::Region),
    ];
    for (name, key) in aliases {
        assert_eq!(name.parse::<AwsConfigKey>().unwrap(), key, "{name}");
    }
    for bad in [
        "",
        "aws_endpoint",
        "aws_profile",
        "regionx",
        "aws_iot_ endpoint",
    ] {
        assert_eq!(
            invalid_field(bad.parse::<AwsConfigKey>()),
            "config key",
            "{bad:?}"
        );
    }
    assert!(AwsConfigKey::SecretAccessKey.is_secret());
    assert!(AwsConfigKey::SessionToken.is_secret());
    assert!(!AwsConfigKey::AccessKeyId.is_secret());
}

#[test]
fn with_config_sets_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("AmazonRootCA1.pem");
    std::fs::write(&bundle, root().to_pem()).unwrap();
    let aws = AwsIot::builder()
        .with_config(AwsConfigKey::Region, "eu-west-1")
        .with_config(AwsConfigKey::AccessKeyId, "AKIDEXAMPLE")
        .with_config(AwsConfigKey::SecretAccessKey, "s3cr3t")
        .with_config(AwsConfigKey::SessionToken, "t0k3n")
        .with_config(AwsConfigKey::Endpoint, "x-ats.iot.eu-west-1.amazonaws.com")
        .with_config(AwsConfigKey::ControlEndpoint, "http://127.0.0.1:9000/")
        .with_config(AwsConfigKey::CaBundle, bundle.to_str().unwrap())
        .with_config(AwsConfigKey::Port, "1883")
        .with_config(AwsConfigKey::Transport, "mqtt-alpn-443")
        .with_config(AwsConfigKey::ServerName, "localhost")
        .with_config(AwsConfigKey::ShadowName, "config")
        .with_config(AwsConfigKey::TelemetryTopic, "dt/app/{thing}/t")
        .with_config(AwsConfigKey::CommandTopic, "c/{thing}")
        .build()
        .unwrap();
    assert_eq!(aws.region(), "eu-west-1");
    assert_eq!(aws.access_key_id(), Some("AKIDEXAMPLE"));
    assert_eq!(aws.secret_access_key(), Some("s3cr3t"));
    assert_eq!(aws.session_token(), Some("t0k3n"));
    assert_eq!(aws.endpoint(), "x-ats.iot.eu-west-1.amazonaws.com");
    assert_eq!(aws.control_endpoint(), "http://127.0.0.1:9000");
    assert_eq!(aws.roots(), &[root().der().clone()]);
    assert_eq!(aws.port(), 1883);
    assert_eq!(aws.transport(), AwsTransport::MqttAlpn443);
    assert_eq!(aws.server_name(), "localhost");
    assert_eq!(aws.shadow_name(), Some("config"));
    assert_eq!(aws.telemetry_topic(), "dt/app/{thing}/t");
    assert_eq!(aws.command_topic(), "c/{thing}");
}

#[test]
fn with_config_values_that_do_not_parse_fail_at_build_naming_the_key() {
    let (field, reason) = invalid(minimal().with_config(AwsConfigKey::Port, "eighty").build());
    assert_eq!(field, "aws_iot_port");
    assert!(reason.contains("eighty"), "{reason}");
    let (field, _) = invalid(minimal().with_config(AwsConfigKey::Port, "70000").build());
    assert_eq!(field, "aws_iot_port");
    let (field, _) = invalid(
        minimal()
            .with_config(AwsConfigKey::Transport, "smoke-signals")
            .build(),
    );
    assert_eq!(field, "aws_iot_transport");
    // The first bad value is the one reported.
    let (field, _) = invalid(
        minimal()
            .with_config(AwsConfigKey::Transport, "smoke-signals")
            .with_config(AwsConfigKey::Port, "x")
            .build(),
    );
    assert_eq!(field, "aws_iot_transport");
}

#[test]
fn from_vars_reads_the_aws_variables() {
    let vars = [
        ("AWS_REGION", "ap-southeast-2"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        (
            "AWS_SECRET_ACCESS_KEY",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        ),
        ("AWS_SESSION_TOKEN", "session"),
        (
            "AWS_IOT_ENDPOINT",
            "pfx-ats.iot.ap-southeast-2.amazonaws.com",
        ),
        ("AWS_ENDPOINT_URL_IOT", "https://iot.example.test"),
        ("AWS_IOT_PORT", "443"),
        ("AWS_IOT_TRANSPORT", "mqtt-alpn-443"),
        ("AWS_IOT_SHADOW_NAME", "settings"),
        ("AWS_IOT_TELEMETRY_TOPIC", "dt/farm/{thing}/soil"),
        ("AWS_IOT_COMMAND_TOPIC", "cmd/farm/{thing}"),
        // Not ours, or aliases only `with_config` takes: ignored.
        ("AWS_PROFILE", "dev"),
        ("REGION", "eu-west-1"),
        ("PORT", "1"),
        ("TOKEN", "not-a-session-token"),
        ("HOME", "/root"),
    ];
    let aws = AwsIotBuilder::from_vars(vars)
        .root_ca(root())
        .build()
        .unwrap();
    assert_eq!(aws.region(), "ap-southeast-2");
    assert_eq!(aws.access_key_id(), Some("AKIDEXAMPLE"));
    assert_eq!(
        aws.secret_access_key(),
        Some("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    );
    assert_eq!(aws.session_token(), Some("session"));
    assert_eq!(aws.endpoint(), "pfx-ats.iot.ap-southeast-2.amazonaws.com");
    assert_eq!(aws.control_endpoint(), "https://iot.example.test");
    assert_eq!(aws.port(), 443);
    assert_eq!(aws.transport(), AwsTransport::MqttAlpn443);
    assert_eq!(aws.shadow_name(), Some("settings"));
    assert_eq!(aws.telemetry_topic(), "dt/farm/{thing}/soil");
    assert_eq!(aws.command_topic(), "cmd/farm/{thing}");
}

#[test]
fn from_vars_falls_back_to_the_default_region_whatever_the_order() {
    let endpoint = ("AWS_IOT_ENDPOINT", "h.example.com");
    let only_default = AwsIotBuilder::from_vars([("AWS_DEFAULT_REGION", "eu-central-1"), endpoint])
        .root_ca(root())
        .build()
        .unwrap();
    assert_eq!(only_default.region(), "eu-central-1");
    let both = AwsIotBuilder::from_vars([
        ("AWS_REGION", "us-west-1"),
        ("AWS_DEFAULT_REGION", "eu-central-1"),
        endpoint,
    ])
    .root_ca(root())
    .build()
    .unwrap();
    assert_eq!(both.region(), "us-west-1");
    let reversed = AwsIotBuilder::from_vars([
        ("AWS_DEFAULT_REGION", "eu-central-1"),
        ("AWS_REGION", "us-west-1"),
        endpoint,
    ])
    .root_ca(root())
    .build()
    .unwrap();
    assert_eq!(reversed.region(), "us-west-1");
}

#[test]
fn from_vars_ignores_empty_values_and_setters_override() {
    let aws = AwsIotBuilder::from_vars([
        ("AWS_REGION", "us-east-2"),
        ("AWS_IOT_ENDPOINT", "env.example.com"),
        ("AWS_IOT_SHADOW_NAME", ""),
        ("AWS_SESSION_TOKEN", ""),
    ])
    .endpoint("code.example.com")
    .root_ca(root())
    .build()
    .unwrap();
    assert_eq!(aws.endpoint(), "code.example.com");
    assert_eq!(aws.shadow_name(), None);
    assert_eq!(aws.session_token(), None);
}

#[test]
fn from_env_reads_the_process_environment_without_panicking() {
    // The process environment is shared with other tests: only check it yields a builder.
    let _ = AwsIotBuilder::from_env();
}

#[test]
fn region_is_required_and_checked() {
    let (field, reason) = invalid(
        AwsIot::builder()
            .endpoint("h.example.com")
            .root_ca(root())
            .build(),
    );
    assert_eq!(field, "region");
    assert!(reason.contains("AWS_REGION"), "{reason}");
    for good in [
        "us-east-1",
        "us-gov-west-1",
        "ap-southeast-2",
        "eu-central-1",
        "cn-north-1",
    ] {
        minimal().region(good).build().unwrap();
    }
    for bad in [
        "",
        "US-EAST-1",
        "us-east",
        "useast1",
        "us_east_1",
        "us-east-1a",
        "-east-1",
        "us--1",
        "u-east-1",
    ] {
        let (field, _) = invalid(minimal().region(bad).build());
        assert_eq!(field, "region", "{bad:?}");
    }
}

#[test]
fn endpoint_is_required_and_checked() {
    let (field, reason) = invalid(
        AwsIot::builder()
            .region("us-east-1")
            .root_ca(root())
            .build(),
    );
    assert_eq!(field, "endpoint");
    assert!(reason.contains("describe-endpoint"), "{reason}");
    for good in [
        "localhost",
        "127.0.0.1",
        "::1",
        "a-ats.iot.us-east-1.amazonaws.com",
    ] {
        minimal().endpoint(good).build().unwrap();
    }
    for (bad, hint) in [
        ("", "empty"),
        ("mqtts://a-ats.iot.us-east-1.amazonaws.com", "scheme"),
        ("a-ats.iot.us-east-1.amazonaws.com:8883", "port()"),
        ("a host", "neither"),
        ("a/b", "neither"),
    ] {
        let (field, reason) = invalid(minimal().endpoint(bad).build());
        assert_eq!(field, "endpoint", "{bad:?}");
        assert!(reason.contains(hint), "{bad:?}: {reason}");
    }
}

#[test]
fn port_zero_is_refused() {
    assert_eq!(invalid(minimal().port(0).build()).0, "port");
}

#[test]
fn server_name_defaults_to_the_host_and_is_checked() {
    let aws = minimal()
        .endpoint("127.0.0.1")
        .server_name("localhost")
        .build()
        .unwrap();
    assert_eq!(aws.endpoint(), "127.0.0.1");
    assert_eq!(aws.server_name(), "localhost");
    let ip = minimal().endpoint("127.0.0.1").build().unwrap();
    assert_eq!(ip.server_name(), "127.0.0.1");
    for bad in ["", "not a name", "x..y"] {
        assert_eq!(
            invalid(minimal().server_name(bad).build()).0,
            "server_name",
            "{bad:?}"
        );
    }
}

#[test]
fn roots_are_required_and_the_error_says_where_to_get_them() {
    let (field, reason) = invalid(
        AwsIot::builder()
            .region("us-east-1")
            .endpoint("h.example.com")
            .build(),
    );
    assert_eq!(field, "roots");
    assert!(reason.contains("AmazonRootCA1.pem"), "{reason}");
    assert!(reason.contains("bundles no Amazon root"), "{reason}");

    let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
    assert_eq!(invalid(minimal().roots(vec![garbage]).build()).0, "roots");
    let two = minimal().roots(vec![root().der().clone()]).build().unwrap();
    assert_eq!(two.roots().len(), 2);
}

#[test]
fn ca_bundle_is_read_at_build() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("roots.pem");
    std::fs::write(&path, format!("{}{}", root().to_pem(), root().to_pem())).unwrap();
    let aws = AwsIot::builder()
        .region("us-east-1")
        .endpoint("h.example.com")
        .ca_bundle(&path)
        .build()
        .unwrap();
    assert_eq!(aws.roots().len(), 2);

    let missing = dir.path().join("missing.pem");
    match AwsIot::builder()
        .region("us-east-1")
        .endpoint("h.example.com")
        .ca_bundle(&missing)
        .build()
    {
        Err(Error::Io { path: Some(p), .. }) => assert_eq!(p, missing),
        other => panic!("{other:?}"),
    }

    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificates here\n").unwrap();
    let (field, _) = invalid(
        AwsIot::builder()
            .region("us-east-1")
            .endpoint("h.example.com")
            .ca_bundle(&empty)
            .build(),
    );
    assert_eq!(field, "ca_bundle");
}

#[test]
fn credentials_must_be_complete() {
    let full = minimal()
        .access_key_id("AKID")
        .secret_access_key("secret")
        .session_token("token")
        .build()
        .unwrap();
    assert_eq!(full.access_key_id(), Some("AKID"));
    minimal()
        .access_key_id("AKID")
        .secret_access_key("secret")
        .build()
        .unwrap();
    for builder in [
        minimal().access_key_id("AKID"),
        minimal().secret_access_key("secret"),
        minimal().session_token("token"),
        minimal().access_key_id("").secret_access_key("secret"),
    ] {
        assert_eq!(invalid(builder.build()).0, "credentials");
    }
}

#[test]
fn control_endpoint_is_checked() {
    let aws = minimal()
        .control_endpoint("https://iot.us-east-1.amazonaws.com/")
        .build()
        .unwrap();
    assert_eq!(
        aws.control_endpoint(),
        "https://iot.us-east-1.amazonaws.com"
    );
    for bad in [
        "iot.us-east-1.amazonaws.com",
        "ftp://iot.example.com",
        "https://iot.example.com/?x=1",
        "https://user:pw@iot.example.com",
        "",
    ] {
        assert_eq!(
            invalid(minimal().control_endpoint(bad).build()).0,
            "control_endpoint",
            "{bad:?}"
        );
    }
}

#[test]
fn shadow_name_is_checked() {
    for good in ["config", "$settings", "a:b_c-d", &"n".repeat(64)] {
        let aws = minimal().shadow_name(good).build().unwrap();
        assert_eq!(aws.shadow_name(), Some(good));
    }
    for bad in ["", "has space", "a/b", "a+b", "#", &"n".repeat(65)] {
        assert_eq!(
            invalid(minimal().shadow_name(bad).build()).0,
            "shadow_name",
            "{bad:?}"
        );
    }
    let classic = minimal().shadow_name("x").classic_shadow().build().unwrap();
    assert_eq!(classic.shadow_name(), None);
}

#[test]
fn telemetry_template_is_checked() {
    for good in [
        "dt/{thing}/telemetry",
        "dt/app/ctx/{thing}/type",
        "{thing}",
        "a/b/c/d/e/f/g/{thing}",
        "$aws/rules/ingest_rule/a/b/c/d/e/f/g/{thing}",
    ] {
        let aws = minimal().telemetry_topic(good).build().unwrap();
        assert_eq!(aws.telemetry_topic(), good);
    }
    let cases = [
        ("dt/telemetry", "{thing}"),
        ("dt/{device}/{thing}", "placeholder"),
        ("dt/{thing}/+", "'+'"),
        ("dt/{thing}/#", "'#'"),
        ("/dt/{thing}", "empty level"),
        ("dt//{thing}", "empty level"),
        ("dt/{thing}/", "empty level"),
        ("a/b/c/d/e/f/g/h/{thing}", "8 '/'"),
        ("$aws/things/{thing}/x", "reserved"),
        ("$aws/rules/{thing}", "reserved"),
        ("$aws/rules/bad-rule/{thing}", "reserved"),
        // Every thing name must fit: twice 128 characters cannot.
        ("{thing}/{thing}", "128-character thing name"),
    ];
    for (bad, hint) in cases {
        let (field, reason) = invalid(minimal().telemetry_topic(bad).build());
        assert_eq!(field, "telemetry_topic", "{bad:?}");
        assert!(reason.contains(hint), "{bad:?}: {reason}");
    }
    // 256 bytes with a 128-character thing: 128 + 128 fits, one more does not.
    let fits = format!("{}/{{thing}}", "x".repeat(127));
    minimal().telemetry_topic(fits).build().unwrap();
    let too_long = format!("{}/{{thing}}", "x".repeat(128));
    let (field, reason) = invalid(minimal().telemetry_topic(too_long).build());
    assert_eq!(field, "telemetry_topic");
    assert!(reason.contains("257 bytes"), "{reason}");
}

#[test]
fn command_template_is_checked() {
    // Commands are one level below the prefix: 6 '/' in the prefix is the most.
    for good in ["cmd/{thing}", "a/b/c/d/e/f/{thing}", "{thing}/commands"] {
        minimal().command_topic(good).build().unwrap();
    }
    let cases = [
        ("cmd", "{thing}"),
        ("cmd/{thing}/+", "'+'"),
        ("cmd/{thing}/", "empty level"),
        ("a/b/c/d/e/f/g/{thing}", "8 '/'"),
        ("$aws/things/{thing}/cmd", "reserved"),
        ("cmd/{thing}/{x}", "placeholder"),
    ];
    for (bad, hint) in cases {
        let (field, reason) = invalid(minimal().command_topic(bad).build());
        assert_eq!(field, "command_topic", "{bad:?}");
        assert!(reason.contains(hint), "{bad:?}: {reason}");
    }
    // `<prefix>/#` must fit in 256 bytes with a 128-character thing.
    let fits = format!("{}/{{thing}}", "x".repeat(125));
    minimal().command_topic(fits).build().unwrap();
    let too_long = format!("{}/{{thing}}", "x".repeat(126));
    assert_eq!(
        invalid(minimal().command_topic(too_long).build()).0,
        "command_topic"
    );
}

#[test]
fn telemetry_under_the_command_prefix_is_refused() {
    let (field, reason) = invalid(
        minimal()
            .command_topic("dev/{thing}")
            .telemetry_topic("dev/{thing}/telemetry")
            .build(),
    );
    assert_eq!(field, "telemetry_topic");
    assert!(reason.contains("own telemetry"), "{reason}");
    // Sharing a prefix without nesting is fine.
    minimal()
        .command_topic("dev/{thing}/cmd")
        .telemetry_topic("dev/{thing}/telemetry")
        .build()
        .unwrap();
}

#[test]
fn debug_redacts_secrets() {
    let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    let token = "IQoJb3JpZ2luX2VjEXAMPLETOKEN";
    let builder = minimal()
        .access_key_id("AKIDEXAMPLE")
        .secret_access_key(secret)
        .session_token(token);
    let aws = builder.clone().build().unwrap();
    for printed in [
        format!("{builder:?}"),
        format!("{aws:?}"),
        format!("{aws:#?}"),
    ] {
        assert!(!printed.contains(secret), "{printed}");
        assert!(!printed.contains(token), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
        assert!(printed.contains("AKIDEXAMPLE"), "{printed}");
    }
    let via_config = AwsIot::builder()
        .with_config(AwsConfigKey::SecretAccessKey, secret)
        .with_config(AwsConfigKey::SessionToken, token);
    let printed = format!("{via_config:?}");
    assert!(
        !printed.contains(secret) && !printed.contains(token),
        "{printed}"
    );
}

#[test]
fn the_websocket_transport_needs_credentials_and_signs_a_fresh_url() {
    use crate::device::Dialect as _;
    let (field, _) = invalid(minimal().transport(AwsTransport::WebSocket).build());
    assert_eq!(field, "credentials");
    let aws = minimal()
        .transport(AwsTransport::WebSocket)
        .access_key_id("AKIDEXAMPLE")
        .secret_access_key("secret")
        .build()
        .unwrap();
    assert_eq!(aws.port(), 443);
    let dialect = aws.dialect();
    assert!(dialect.endpoint().alpn.is_empty());
    let device = crate::identity::DeviceId::new("sensor-1").unwrap();
    let url = dialect.websocket_url(&device).unwrap().unwrap();
    assert!(
        url.starts_with(&format!(
            "wss://{}/mqtt?X-Amz-Algorithm=AWS4-HMAC-SHA256&",
            aws.endpoint()
        )),
        "{url}"
    );
    assert!(url.contains("%2Fiotdevicegateway%2Faws4_request"), "{url}");
    // MQTT over TLS has no WebSocket URL.
    let tls = minimal().build().unwrap().dialect();
    assert!(tls.websocket_url(&device).unwrap().is_none());
}
