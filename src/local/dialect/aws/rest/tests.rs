use super::*;

use crate::identity::DeviceId;
use crate::pki::ChainError;

fn call(query: &str, body: Value) -> Call {
    Call {
        query: parse_query(query),
        body: Bytes::from(body.to_string()),
        principal: None,
    }
}

async fn plane() -> ControlPlane {
    let hub = Arc::new(LocalHub::builder().start().await.unwrap());
    let options = ControlPlaneOptions::new().credentials(AwsCredentials::new("AKID", "secret"));
    ControlPlane::new(hub, &options).unwrap()
}

const ALLOW_ALL: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*"}]}"#;

#[test]
fn routes_match_botocore_request_uris() {
    let cases = [
        ("POST", "/things/t1", Op::CreateThing("t1".into())),
        ("GET", "/things/t1", Op::DescribeThing("t1".into())),
        (
            "GET",
            "/things/t1/thing-groups",
            Op::ListThingGroupsForThing("t1".into()),
        ),
        (
            "PUT",
            "/things/t1/principals",
            Op::AttachThingPrincipal("t1".into()),
        ),
        (
            "POST",
            "/thing-groups/g1",
            Op::CreateThingGroup("g1".into()),
        ),
        (
            "GET",
            "/thing-groups/g1",
            Op::DescribeThingGroup("g1".into()),
        ),
        (
            "PUT",
            "/thing-groups/addThingToThingGroup",
            Op::AddThingToThingGroup,
        ),
        (
            "POST",
            "/keys-and-certificate",
            Op::CreateKeysAndCertificate,
        ),
        ("POST", "/certificates", Op::CreateCertificateFromCsr),
        ("POST", "/certificate/register", Op::RegisterCertificate),
        (
            "PUT",
            "/certificates/abc",
            Op::UpdateCertificate("abc".into()),
        ),
        (
            "GET",
            "/certificates/abc",
            Op::DescribeCertificate("abc".into()),
        ),
        ("GET", "/registrationcode", Op::GetRegistrationCode),
        ("POST", "/cacertificate", Op::RegisterCaCertificate),
        (
            "PUT",
            "/cacertificate/abc",
            Op::UpdateCaCertificate("abc".into()),
        ),
        (
            "GET",
            "/cacertificate/abc",
            Op::DescribeCaCertificate("abc".into()),
        ),
        ("POST", "/policies/p", Op::CreatePolicy("p".into())),
        (
            "POST",
            "/policies/p/version",
            Op::CreatePolicyVersion("p".into()),
        ),
        ("PUT", "/target-policies/p", Op::AttachPolicy("p".into())),
        ("POST", "/target-policies/p", Op::DetachPolicy("p".into())),
        ("GET", "/endpoint", Op::DescribeEndpoint),
        // Names are percent-decoded.
        ("GET", "/things/a%3Ab", Op::DescribeThing("a:b".into())),
        // A group may be called like the AddThingToThingGroup path segment.
        (
            "GET",
            "/thing-groups/addThingToThingGroup",
            Op::DescribeThingGroup("addThingToThingGroup".into()),
        ),
    ];
    for (method, path, op) in cases {
        assert_eq!(route(method, path), Some(op), "{method} {path}");
    }
    for (method, path) in [
        ("DELETE", "/things/t1"),
        ("GET", "/"),
        ("GET", "/things"),
        ("GET", "/things/"),
        ("GET", "/things//thing-groups"),
        ("PATCH", "/policies/p"),
        ("GET", "things/t1"),
        ("GET", "/things/%FF"),
    ] {
        assert_eq!(route(method, path), None, "{method} {path}");
    }
}

#[test]
fn queries_are_decoded_form_style() {
    let q = parse_query("endpointType=iot%3AData-ATS&setAsActive=true&a+b=c+d&flag&x=1&x=2");
    assert_eq!(q["endpointType"], "iot:Data-ATS");
    assert_eq!(q["setAsActive"], "true");
    assert_eq!(q["a b"], "c d");
    assert_eq!(q["flag"], "");
    assert_eq!(q["x"], "2");
    assert!(parse_query("").is_empty());
}

#[test]
fn flags_are_true_or_false() {
    let c = call("setAsActive=TRUE&other=no", json!({}));
    assert_eq!(c.flag("setAsActive").unwrap(), Some(true));
    assert_eq!(c.flag("missing").unwrap(), None);
    assert_eq!(c.flag("other").unwrap_err().code, "InvalidRequestException");
}

#[test]
fn bodies_that_are_not_json_objects_are_serialization_errors() {
    let empty = Call::default();
    let parsed: PolicyBody = empty.json().unwrap();
    assert!(parsed.policy_document.is_none());
    for bad in ["[1]", "{", "\"text\"", "{\"policyDocument\": 5}"] {
        let c = Call {
            body: Bytes::from(bad),
            ..Call::default()
        };
        let err = c.json::<PolicyBody>().err().expect(bad);
        assert_eq!(
            (err.status, err.code),
            (400, "SerializationException"),
            "{bad}"
        );
    }
}

#[test]
fn ids_are_stable_and_uuid_shaped() {
    let a = derived_id("thing", "sensor-1");
    assert_eq!(a, derived_id("thing", "sensor-1"));
    assert_ne!(a, derived_id("thing", "sensor-2"));
    assert_ne!(a, derived_id("thinggroup", "sensor-1"));
    let parts: Vec<&str> = a.split('-').collect();
    assert_eq!(
        parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
        [8, 4, 4, 4, 12]
    );
    assert!(parts[2].starts_with('4'));
    assert!(matches!(
        parts[3].chars().next(),
        Some('8' | '9' | 'a' | 'b')
    ));
    assert_ne!(request_id(), request_id());
}

#[test]
fn certificate_ids_accept_0x_and_upper_case() {
    let id = "ab".repeat(32);
    assert_eq!(normalise_certificate_id(&id), Some(id.clone()));
    assert_eq!(
        normalise_certificate_id(&format!("0x{}", id.to_uppercase())),
        Some(id.clone())
    );
    assert_eq!(normalise_certificate_id(&id[..62]), None);
    assert_eq!(normalise_certificate_id(&"zz".repeat(32)), None);
}

#[test]
fn fleetkit_errors_map_to_aws_codes() {
    let cases: Vec<(Error, u16, &str)> = vec![
        (
            Error::NotFound {
                what: "device",
                id: "x".into(),
            },
            404,
            "ResourceNotFoundException",
        ),
        (
            Error::AlreadyExists {
                what: "device",
                id: "x".into(),
            },
            409,
            "ResourceAlreadyExistsException",
        ),
        (Error::invalid("f", "r"), 400, "InvalidRequestException"),
        (
            Error::NotSupported("n".into()),
            400,
            "InvalidRequestException",
        ),
        (
            Error::Conflict {
                what: "w".into(),
                expected: 1,
                current: 2,
            },
            409,
            "VersionConflictException",
        ),
        (
            Error::Precondition("p".into()),
            406,
            "CertificateStateException",
        ),
        (
            Error::Expired("e".into()),
            400,
            "CertificateValidationException",
        ),
        (
            Error::Revoked("r".into()),
            400,
            "CertificateValidationException",
        ),
        (
            Error::Untrusted(ChainError::UnknownIssuer),
            400,
            "CertificateValidationException",
        ),
        (
            Error::PermissionDenied("d".into()),
            401,
            "UnauthorizedException",
        ),
        (
            Error::Unavailable("u".into()),
            503,
            "ServiceUnavailableException",
        ),
        (
            Error::Timeout("t".into()),
            503,
            "ServiceUnavailableException",
        ),
        (Error::Crypto("c".into()), 500, "InternalFailureException"),
        (
            Error::Unauthenticated("u".into()),
            500,
            "InternalFailureException",
        ),
    ];
    for (error, status, code) in cases {
        let shown = error.to_string();
        let mapped = AwsError::from(error);
        assert_eq!((mapped.status, mapped.code), (status, code), "{shown}");
        assert_eq!(mapped.message, shown);
    }
    let exists = AwsError::from(Error::AlreadyExists {
        what: "certificate",
        id: "abc".into(),
    });
    assert_eq!(exists.resource_id.as_deref(), Some("abc"));
}

#[test]
fn signature_errors_keep_the_verifier_codes() {
    let e = AwsError::sigv4(&SigV4Error::MissingAuthenticationToken);
    assert_eq!(
        (e.status, e.code),
        (403, "MissingAuthenticationTokenException")
    );
    let e = AwsError::sigv4(&SigV4Error::IncompleteSignature("x".into()));
    assert_eq!((e.status, e.code), (400, "IncompleteSignatureException"));
}

#[test]
fn partitions_follow_the_region() {
    assert_eq!(partition_of("us-east-1"), "aws");
    assert_eq!(partition_of("cn-north-1"), "aws-cn");
    assert_eq!(partition_of("us-gov-west-1"), "aws-us-gov");
}

#[test]
fn options_validate_and_redact() {
    let good = ControlPlaneOptions::new().credentials(AwsCredentials::new("AKID", "s3cr3t"));
    assert!(good.validate().is_ok());
    assert!(!format!("{good:?}").contains("s3cr3t"));
    assert!(format!("{good:?}").contains("AKID"));
    assert!(good.clone().region("").validate().is_err());
    assert!(good.clone().account_id("12345678901a").validate().is_err());
    assert!(good.clone().endpoint_address("").validate().is_err());
    assert!(good.clone().endpoint_address("h/x").validate().is_err());
    assert!(
        good.clone()
            .bind("[::1]:0".parse().unwrap())
            .validate()
            .is_ok()
    );
    assert!(ControlPlaneOptions::default().validate().is_err());
}

#[test]
fn csr_subjects_are_copied_or_defaulted() {
    let key = Arc::new(SoftwareKey::generate_p256().unwrap());
    let csr = crate::pki::build_csr(key, &DeviceId::new("meter-1").unwrap()).unwrap();
    let dn = csr_subject(csr.der()).unwrap();
    let names: Vec<(DnType, String)> = dn
        .iter()
        .map(|(t, v)| {
            let text = match v {
                rcgen::DnValue::Utf8String(s) => s.clone(),
                other => format!("{other:?}"),
            };
            (t.clone(), text)
        })
        .collect();
    assert_eq!(names, [(DnType::CommonName, "meter-1".to_string())]);
    assert!(csr_subject(b"not der").is_err());
}

#[tokio::test]
async fn arns_must_name_this_hub() {
    let p = plane().await;
    assert_eq!(
        p.name_in_arn(
            "arn:aws:iot:us-east-1:123456789012:thinggroup/g",
            &["thinggroup"]
        )
        .unwrap(),
        ("thinggroup".to_string(), "g".to_string())
    );
    for bad in [
        "arn:aws:iot:us-east-1:123456789012:thing/t",
        "arn:aws:iot:us-east-1:123456789012:thinggroup/",
        "arn:aws:iot:us-east-1:123456789012:thinggroup/a/b",
        "arn:aws:iot:eu-west-1:123456789012:thinggroup/g",
        "arn:aws:iot:us-east-1:210987654321:thinggroup/g",
        "arn:aws-cn:iot:us-east-1:123456789012:thinggroup/g",
        "arn:aws:iam:us-east-1:123456789012:thinggroup/g",
        "thinggroup/g",
    ] {
        assert_eq!(
            p.name_in_arn(bad, &["thinggroup"]).unwrap_err().code,
            "InvalidRequestException",
            "{bad}"
        );
    }
}

#[tokio::test]
async fn adding_a_thing_to_a_group_puts_it_in_the_registry_group() {
    let p = plane().await;
    let hub = p.hub.clone();
    let doc = PolicyDocument::from_json(ALLOW_ALL).unwrap();
    hub.put_policy("via-group", &doc).unwrap();
    p.execute(Op::CreateThing("dev-1".into()), &Call::default())
        .unwrap();
    p.execute(Op::CreateThingGroup("g".into()), &Call::default())
        .unwrap();
    let target = json!({"target": "arn:aws:iot:us-east-1:123456789012:thinggroup/g"});
    p.execute(
        Op::AttachPolicy("via-group".into()),
        &call("", target.clone()),
    )
    .unwrap();
    for _ in 0..2 {
        // Twice: the second changes nothing.
        p.execute(
            Op::AddThingToThingGroup,
            &call("", json!({"thingGroupName": "g", "thingName": "dev-1"})),
        )
        .unwrap();
    }
    let groups = hub.with_registry(|r| r.device("dev-1").unwrap().groups.clone());
    assert_eq!(groups, vec!["g".to_string()]);
    // The policy stays attached to the group only, never copied onto the device.
    let device = AttachTarget::Device("dev-1".into());
    assert!(!hub.with_registry(|r| r.policies().targets_of("via-group").contains(&device)));
    // An unknown group or thing is a 404 and changes nothing.
    let missing = p.execute(
        Op::AddThingToThingGroup,
        &call("", json!({"thingGroupName": "nope", "thingName": "dev-1"})),
    );
    assert_eq!(missing.unwrap_err().code, "ResourceNotFoundException");
    assert_eq!(
        hub.with_registry(|r| r.device("dev-1").unwrap().groups.clone()),
        vec!["g".to_string()]
    );
}

#[tokio::test]
async fn registry_groups_are_groups_too() {
    let p = plane().await;
    p.hub
        .create_device(DeviceRecord::new("dev-2").in_group("old-line"))
        .unwrap();
    let described = p
        .execute(Op::DescribeThingGroup("old-line".into()), &Call::default())
        .unwrap();
    let Reply::Json(v) = described else {
        panic!("{described:?}")
    };
    assert_eq!(v["thingGroupName"], "old-line");
    let listed = p
        .execute(
            Op::ListThingGroupsForThing("dev-2".into()),
            &Call::default(),
        )
        .unwrap();
    let Reply::Json(v) = listed else {
        panic!("{listed:?}")
    };
    assert_eq!(v["thingGroups"][0]["groupName"], "old-line");
    // Nested groups are refused.
    let err = p
        .execute(
            Op::CreateThingGroup("child".into()),
            &call("", json!({"parentGroupName": "old-line"})),
        )
        .unwrap_err();
    assert_eq!(err.code, "InvalidRequestException");
}

#[tokio::test]
async fn unattached_revoked_certificates_stay_revoked() {
    let p = plane().await;
    let created = p
        .execute(Op::CreateKeysAndCertificate, &Call::default())
        .unwrap();
    let Reply::Secret(v) = created else {
        panic!("{created:?}")
    };
    let id = v["certificateId"].as_str().unwrap().to_string();
    p.execute(
        Op::UpdateCertificate(id.clone()),
        &call("newStatus=REVOKED", json!({})),
    )
    .unwrap();
    let err = p
        .execute(
            Op::UpdateCertificate(id.clone()),
            &call("newStatus=INACTIVE", json!({})),
        )
        .unwrap_err();
    assert_eq!((err.status, err.code), (406, "CertificateStateException"));
    let err = p
        .execute(Op::UpdateCertificate(id), &Call::default())
        .unwrap_err();
    assert_eq!(err.code, "InvalidRequestException");
}
