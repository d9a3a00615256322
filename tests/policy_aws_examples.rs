//! The example policies of the AWS IoT developer guide, with the decisions AWS documents for
//! them, plus fleetkit's own extensions (groups, scopes, explanations).

use fleetkit::Error;
use fleetkit::pki::{CaOptions, CertificateAuthority, DeviceCertOptions};
use fleetkit::policy::{
    Action, AttachTarget, ConnectAttributes, Outcome, Partition, PolicyDocument, PolicyEngine,
    PrincipalContext, Request,
};

fn engine_with(name: &str, json: &str, target: AttachTarget) -> PolicyEngine {
    let mut engine = PolicyEngine::new(Partition::aws("us-east-1", "123456789012"));
    engine
        .put_policy(name, &PolicyDocument::from_json(json).unwrap())
        .unwrap();
    engine.attach_policy(name, target).unwrap();
    engine
}

fn device(id: &str) -> PrincipalContext {
    PrincipalContext::device(id, id, None)
}

#[test]
fn thing_name_scoped_connect_publish_subscribe() {
    // AWS-DG "thing policy examples" / "basic policy variables": each thing only its own topics.
    let engine = engine_with(
        "thing-scoped",
        r#"{
          "Version": "2012-10-17",
          "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect",
             "Resource": "arn:aws:iot:us-east-1:123456789012:client/${iot:Connection.Thing.ThingName}"},
            {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
             "Resource": "arn:aws:iot:us-east-1:123456789012:topic/things/${iot:Connection.Thing.ThingName}/*"},
            {"Effect": "Allow", "Action": "iot:Subscribe",
             "Resource": "arn:aws:iot:us-east-1:123456789012:topicfilter/things/${iot:Connection.Thing.ThingName}/*"}
          ]
        }"#,
        AttachTarget::Device("thing1".into()),
    );
    let p = engine.principal(device("thing1"));
    assert!(p.authorize(&Request::connect("thing1")).is_allowed());
    assert!(!p.authorize(&Request::connect("thing2")).is_allowed());
    assert!(
        p.authorize(&Request::publish("things/thing1/telemetry"))
            .is_allowed()
    );
    assert!(
        p.authorize(&Request::receive("things/thing1/cmd"))
            .is_allowed()
    );
    assert!(
        !p.authorize(&Request::publish("things/thing2/telemetry"))
            .is_allowed()
    );
    assert!(
        p.authorize(&Request::subscribe("things/thing1/#"))
            .is_allowed()
    );
    assert!(!p.authorize(&Request::subscribe("things/#")).is_allowed());
    assert!(
        !p.authorize(&Request::subscribe("things/+/cmd"))
            .is_allowed()
    );

    // AWS-DG: thing variables resolve only when the client id is the thing name.
    let other_client = engine.principal(PrincipalContext::device("thing1", "not-thing1", None));
    let d = other_client.authorize(&Request::publish("things/thing1/telemetry"));
    assert_eq!(d.outcome(), Outcome::ImplicitDeny);
    assert!(
        d.to_string()
            .contains("${iot:Connection.Thing.ThingName} has no value"),
        "{d}"
    );
}

#[test]
fn client_id_list_for_connect() {
    // AWS-DG "connect policy examples": specific client ids only.
    let engine = engine_with(
        "clients",
        r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["iot:Connect"],
            "Resource": ["arn:aws:iot:us-east-1:123456789012:client/clientid1",
                         "arn:aws:iot:us-east-1:123456789012:client/clientid2"]}]}"#,
        AttachTarget::Device("d".into()),
    );
    let p = engine.principal(device("d"));
    assert!(p.authorize(&Request::connect("clientid1")).is_allowed());
    assert!(p.authorize(&Request::connect("clientid2")).is_allowed());
    assert!(!p.authorize(&Request::connect("clientid3")).is_allowed());
    assert!(!p.authorize(&Request::connect("clientid1x")).is_allowed());
}

#[test]
fn mqtt_wildcards_in_policies_are_literal() {
    // AWS-DG "publish/subscribe policy examples": `#` and `+` in a topicfilter resource are
    // literal characters, so the client must subscribe with exactly that filter.
    let engine = engine_with(
        "filters",
        r#"{"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "iot:Subscribe",
             "Resource": "arn:aws:iot:us-east-1:123456789012:topicfilter/topic_1/#"},
            {"Effect": "Allow", "Action": "iot:Subscribe",
             "Resource": "arn:aws:iot:us-east-1:123456789012:topicfilter/sensors/+/temperature"}]}"#,
        AttachTarget::Device("d".into()),
    );
    let p = engine.principal(device("d"));
    assert!(p.authorize(&Request::subscribe("topic_1/#")).is_allowed());
    assert!(!p.authorize(&Request::subscribe("topic_1/a")).is_allowed());
    assert!(
        p.authorize(&Request::subscribe("sensors/+/temperature"))
            .is_allowed()
    );
    assert!(
        !p.authorize(&Request::subscribe("sensors/s1/temperature"))
            .is_allowed()
    );
}

#[test]
fn shadow_access_for_own_thing() {
    // AWS-DG "device shadow" policy: the thing works its own classic and named shadows.
    let engine = engine_with(
        "shadow",
        r#"{"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["iot:GetThingShadow", "iot:UpdateThingShadow", "iot:DeleteThingShadow"],
             "Resource": "arn:aws:iot:us-east-1:123456789012:thing/${iot:Connection.Thing.ThingName}"},
            {"Effect": "Allow", "Action": "iot:Publish",
             "Resource": "arn:aws:iot:us-east-1:123456789012:topic/$aws/things/${iot:Connection.Thing.ThingName}/shadow/*"}]}"#,
        AttachTarget::Device("lamp-1".into()),
    );
    let p = engine.principal(device("lamp-1"));
    for action in [
        Action::GetThingShadow,
        Action::UpdateThingShadow,
        Action::DeleteThingShadow,
    ] {
        assert!(
            p.authorize(&Request::on_thing(action, "lamp-1"))
                .is_allowed()
        );
        assert!(
            !p.authorize(&Request::on_thing(action, "lamp-2"))
                .is_allowed()
        );
    }
    assert!(
        p.authorize(&Request::publish("$aws/things/lamp-1/shadow/update"))
            .is_allowed()
    );
    assert!(
        p.authorize(&Request::publish("$aws/things/lamp-1/shadow/name/cfg/get"))
            .is_allowed()
    );
    assert!(
        !p.authorize(&Request::publish("$aws/things/lamp-2/shadow/update"))
            .is_allowed()
    );
    assert!(
        !p.authorize(&Request::on_thing(
            Action::ListNamedShadowsForThing,
            "lamp-1"
        ))
        .is_allowed()
    );
}

#[test]
fn thing_attributes_type_and_is_attached_conditions() {
    // AWS-DG "thing policy examples": publish only if the thing has a type and attribute, and
    // connect only if the certificate is attached to the thing.
    let engine = engine_with(
        "attrs",
        r#"{"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["iot:Connect"], "Resource": ["*"],
             "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": ["true"]}}},
            {"Effect": "Allow", "Action": ["iot:Publish"],
             "Resource": "arn:aws:iot:us-east-1:123456789012:topic/device/stats",
             "Condition": {
               "StringEquals": {"iot:Connection.Thing.Attributes[attributeName]": "attributeValue",
                                "iot:Connection.Thing.ThingTypeName": "Thing_Type_Name"},
               "Bool": {"iot:Connection.Thing.IsAttached": "true"}}}]}"#,
        AttachTarget::Device("t".into()),
    );
    let good = engine.principal(
        device("t")
            .with_thing_type("Thing_Type_Name")
            .with_attribute("attributeName", "attributeValue"),
    );
    assert!(good.authorize(&Request::connect("t")).is_allowed());
    assert!(
        good.authorize(&Request::publish("device/stats"))
            .is_allowed()
    );
    let wrong_attr = engine.principal(
        device("t")
            .with_thing_type("Thing_Type_Name")
            .with_attribute("attributeName", "other"),
    );
    assert!(
        !wrong_attr
            .authorize(&Request::publish("device/stats"))
            .is_allowed()
    );
    let no_type = engine.principal(device("t").with_attribute("attributeName", "attributeValue"));
    assert!(
        !no_type
            .authorize(&Request::publish("device/stats"))
            .is_allowed()
    );
    let mut detached = device("t");
    detached.thing.as_mut().unwrap().attached = false;
    let detached = engine.principal(detached);
    assert!(!detached.authorize(&Request::connect("t")).is_allowed());
}

#[test]
fn explicit_deny_beats_allow_and_explains() {
    let engine = engine_with(
        "mixed",
        r#"{"Version": "2012-10-17", "Statement": [
            {"Sid": "everything", "Effect": "Allow", "Action": "iot:*", "Resource": "*"},
            {"Sid": "no-admin", "Effect": "Deny", "Action": "iot:Publish",
             "Resource": "arn:aws:iot:us-east-1:123456789012:topic/admin/*"}]}"#,
        AttachTarget::Device("d".into()),
    );
    let p = engine.principal(device("d"));
    assert!(p.authorize(&Request::publish("data/x")).is_allowed());
    let d = p.authorize(&Request::publish("admin/reboot"));
    assert_eq!(d.outcome(), Outcome::ExplicitDeny);
    assert_eq!(d.statement(), Some(("mixed", 1, 2)));
    assert_eq!(
        d.to_string(),
        "denied: statement 2 (no-admin) of policy `mixed` (v1) denies iot:Publish on \
         `arn:aws:iot:us-east-1:123456789012:topic/admin/reboot` \
         (matched `arn:aws:iot:us-east-1:123456789012:topic/admin/*`)"
    );
    let allowed = p.authorize(&Request::publish("data/x"));
    assert!(
        allowed
            .to_string()
            .starts_with("allowed: statement 1 (everything) of policy `mixed`")
    );
    // fleetkit actions are not in `iot:*`.
    assert!(
        !p.authorize(&Request::on_thing(Action::InvokeMethod, "d"))
            .is_allowed()
    );
}

#[test]
fn certificate_variables() {
    let root = CertificateAuthority::new_root(&CaOptions::new("Vars Root")).unwrap();
    let key = fleetkit::identity::SoftwareKey::generate_p256().unwrap();
    let cert = root
        .issue(
            &fleetkit::identity::DeviceId::new("cert-dev").unwrap(),
            fleetkit::identity::Signer::public_key_spki(&key),
            &DeviceCertOptions::default().with_organization("Acme"),
        )
        .unwrap();
    let engine = engine_with(
        "by-cert",
        r#"{"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "iot:Publish",
             "Resource": "arn:aws:iot:*:*:topic/${iot:Certificate.Subject.Organization}/${iot:Certificate.Subject.CommonName}/*"},
            {"Effect": "Allow", "Action": "iot:Publish",
             "Resource": "arn:aws:iot:*:*:topic/issuer/${iot:Certificate.Issuer.CommonName}"},
            {"Effect": "Allow", "Action": "iot:Publish",
             "Resource": "arn:aws:iot:*:*:topic/serial/${iot:Certificate.SerialNumber}"}]}"#,
        AttachTarget::Certificate(cert.fingerprint_sha256()),
    );
    let p = engine.principal(PrincipalContext::device(
        "cert-dev",
        "cert-dev",
        Some(&cert),
    ));
    assert!(
        p.authorize(&Request::publish("Acme/cert-dev/x"))
            .is_allowed()
    );
    assert!(!p.authorize(&Request::publish("Acme/other/x")).is_allowed());
    assert!(
        p.authorize(&Request::publish("issuer/Vars Root"))
            .is_allowed()
    );
    let serial_topic = format!("serial/{}", cert.serial_hex());
    assert!(p.authorize(&Request::publish(&serial_topic)).is_allowed());
    // Without a certificate the variables have no value.
    let no_cert = engine.principal(device("cert-dev"));
    assert!(
        !no_cert
            .authorize(&Request::publish("Acme/cert-dev/x"))
            .is_allowed()
    );
}

#[test]
fn connect_attributes_persistent_session_and_last_will() {
    // AWS-DG "mqtt connectAttributes": persistent sessions and wills can be allowed separately.
    let engine = engine_with(
        "connect",
        r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect",
            "Resource": "arn:aws:iot:*:*:client/${iot:ClientId}",
            "Condition": {"ForAllValues:StringEquals": {"iot:ConnectAttributes": ["PersistentConnect"]}}}]}"#,
        AttachTarget::Device("d".into()),
    );
    let with = |persistent_session, last_will| {
        engine.principal(device("d").with_connect(ConnectAttributes {
            persistent_session,
            last_will,
        }))
    };
    assert!(
        with(false, false)
            .authorize(&Request::connect("d"))
            .is_allowed()
    );
    assert!(
        with(true, false)
            .authorize(&Request::connect("d"))
            .is_allowed()
    );
    assert!(
        !with(false, true)
            .authorize(&Request::connect("d"))
            .is_allowed()
    );
    assert!(
        !with(true, true)
            .authorize(&Request::connect("d"))
            .is_allowed()
    );
}

#[test]
fn group_policies_are_inherited_from_parents() {
    let mut engine = PolicyEngine::new(Partition::local());
    let doc = PolicyDocument::from_json(
        r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Publish",
            "Resource": "arn:aws:iot:*:*:topic/fleet/${fleetkit:DeviceId}"}]}"#,
    )
    .unwrap();
    engine.put_policy("fleet", &doc).unwrap();
    engine
        .attach_policy("fleet", AttachTarget::Group("europe".into()))
        .unwrap();
    engine.set_group_parent("plant-7", "germany").unwrap();
    engine.set_group_parent("germany", "europe").unwrap();
    assert!(
        engine.set_group_parent("europe", "plant-7").is_err(),
        "cycle refused"
    );
    let p = engine.principal(device("d7").with_groups(["plant-7"]));
    assert_eq!(p.groups(), ["plant-7", "germany", "europe"]);
    assert!(p.authorize(&Request::publish("fleet/d7")).is_allowed());
    let outsider = engine.principal(device("d8").with_groups(["asia"]));
    assert!(
        !outsider
            .authorize(&Request::publish("fleet/d8"))
            .is_allowed()
    );
}

#[test]
fn technician_token_may_invoke_methods_only_on_site_7() {
    // A user's token scopes select policies; the target device's groups are a condition key.
    let mut engine = PolicyEngine::new(Partition::local());
    engine
        .put_policy(
            "site-7-technician",
            &PolicyDocument::from_json(
                r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                    "Action": ["fleetkit:InvokeMethod", "iot:GetThingShadow"],
                    "Resource": "arn:aws:iot:*:*:thing/*",
                    "Condition": {"ForAnyValue:StringEquals": {"fleetkit:Target.ThingGroups": "site-7"}}}]}"#,
            )
            .unwrap(),
        )
        .unwrap();
    engine
        .attach_policy(
            "site-7-technician",
            AttachTarget::Scope("methods:site-7".into()),
        )
        .unwrap();
    engine.set_group_parent("site-7-line-2", "site-7").unwrap();
    let tech = engine.principal(PrincipalContext::user("alice", ["methods:site-7"]));
    let in_site = engine.expand_groups(&["site-7-line-2".to_string()]);
    let elsewhere = engine.expand_groups(&["site-8".to_string()]);
    let invoke =
        |groups| Request::on_thing(Action::InvokeMethod, "pump-3").with_target_groups(groups);
    assert!(tech.authorize(&invoke(&in_site)).is_allowed());
    assert!(!tech.authorize(&invoke(&elsewhere)).is_allowed());
    assert!(
        !tech
            .authorize(&Request::on_thing(Action::InvokeMethod, "pump-3"))
            .is_allowed()
    );
    assert!(
        !tech
            .authorize(
                &Request::on_thing(Action::UpdateDesired, "pump-3").with_target_groups(&in_site)
            )
            .is_allowed()
    );
    // Without the scope, nothing.
    let nobody = engine.principal(PrincipalContext::user("bob", ["telemetry:read"]));
    assert!(!nobody.authorize(&invoke(&in_site)).is_allowed());
}

#[test]
fn versions_rollback_and_guarded_delete() {
    let mut engine = PolicyEngine::new(Partition::local());
    let v1 = PolicyDocument::from_json(
        r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws:iot:*:*:topic/a"}}"#,
    )
    .unwrap();
    let v2 = PolicyDocument::from_json(
        r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws:iot:*:*:topic/b"}}"#,
    )
    .unwrap();
    assert_eq!(engine.put_policy("p", &v1).unwrap(), 1);
    assert_eq!(engine.put_policy("p", &v2).unwrap(), 2);
    engine
        .attach_policy("p", AttachTarget::Device("d".into()))
        .unwrap();
    let p = engine.principal(device("d"));
    assert!(p.authorize(&Request::publish("b")).is_allowed());
    assert!(!p.authorize(&Request::publish("a")).is_allowed());
    let before = engine.generation();
    engine.set_default_version("p", 1).unwrap();
    assert!(
        engine.generation() > before,
        "principals can see they are stale"
    );
    let p = engine.principal(device("d"));
    assert!(p.authorize(&Request::publish("a")).is_allowed());
    assert!(matches!(
        engine.delete_policy("p"),
        Err(Error::Precondition(_))
    ));
    engine
        .detach_policy("p", &AttachTarget::Device("d".into()))
        .unwrap();
    engine.delete_policy("p").unwrap();
    assert!(matches!(engine.policy("p"), Err(Error::NotFound { .. })));
    for i in 3..10 {
        engine.put_policy("q", &v1).unwrap();
        let info = engine.policy("q").unwrap();
        assert!(
            info.versions.len() <= fleetkit::policy::MAX_POLICY_VERSIONS,
            "{i}"
        );
    }
}

#[test]
fn a_verified_token_becomes_a_principal_the_same_engine_authorizes() {
    use std::sync::Arc;
    use std::time::Duration;

    use fleetkit::auth::{Claims, JwtSigner, JwtVerifier};
    use fleetkit::identity::SoftwareKey;

    let mut engine = PolicyEngine::new(Partition::local());
    engine
        .put_policy(
            "operators",
            &PolicyDocument::from_json(
                r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                    "Action": "fleetkit:InvokeMethod", "Resource": "arn:aws:iot:*:*:thing/*",
                    "Condition": {"ForAnyValue:StringEquals": {"fleetkit:Target.ThingGroups": "site-7"}}}]}"#,
            )
            .unwrap(),
        )
        .unwrap();
    engine
        .attach_policy("operators", AttachTarget::Scope("methods:invoke".into()))
        .unwrap();
    let issuer_key = Arc::new(SoftwareKey::generate_p256().unwrap());
    let signer = JwtSigner::new(issuer_key.clone()).unwrap();
    let verifier = JwtVerifier::new(signer.public_key_spki())
        .unwrap()
        .expected_issuer("https://auth.example")
        .expected_audience("fleet-api");
    let token = |scopes: &[&str]| {
        signer
            .sign(
                &Claims::new(
                    "https://auth.example",
                    "tech-alice",
                    "fleet-api",
                    Duration::from_secs(300),
                )
                .with_scopes(scopes.iter().copied())
                .unwrap(),
            )
            .unwrap()
    };
    let site7 = vec!["site-7".to_string()];
    let request = Request::on_thing(Action::InvokeMethod, "pump-1").with_target_groups(&site7);

    let claims = verifier.verify(&token(&["methods:invoke"])).unwrap();
    let alice = engine.principal(PrincipalContext::from_token(&claims).unwrap());
    assert!(alice.authorize(&request).is_allowed());

    let claims = verifier.verify(&token(&["telemetry:read"])).unwrap();
    let reader = engine.principal(PrincipalContext::from_token(&claims).unwrap());
    let d = reader.authorize(&request);
    assert_eq!(d.outcome(), Outcome::ImplicitDeny);
    assert!(
        d.to_string()
            .contains("no statement in the 0 attached policies"),
        "{d}"
    );

    let mut anonymous = Claims::new(
        "https://auth.example",
        "x",
        "fleet-api",
        Duration::from_secs(60),
    );
    anonymous.sub = None;
    assert!(matches!(
        PrincipalContext::from_token(&anonymous),
        Err(Error::Unauthenticated(_))
    ));
}

#[test]
fn arn_region_and_account_are_matched_field_by_field() {
    let engine = engine_with(
        "regions",
        r#"{"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/a"},
            {"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:eu-west-1:123456789012:topic/eu"},
            {"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:us-*:123456789012:topic/us"},
            {"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:us-east-1:123456789012:top*/glob/*"}]}"#,
        AttachTarget::Device("d".into()),
    );
    let p = engine.principal(device("d"));
    assert!(p.authorize(&Request::connect("a")).is_allowed());
    // IAM would let `*` run across the colons into the name; fleetkit does not.
    assert!(!p.authorize(&Request::connect("x:client/a")).is_allowed());
    // Another region's resources never match in this engine's region.
    assert!(!p.authorize(&Request::publish("eu")).is_allowed());
    assert!(p.authorize(&Request::publish("us")).is_allowed());
    // A wildcard in the resource type still works.
    assert!(p.authorize(&Request::publish("glob/x")).is_allowed());
    assert!(!p.authorize(&Request::subscribe("glob/x")).is_allowed());
}
