use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::*;
use crate::identity::{DeviceId, Signer, SoftwareKey};
use crate::pki::{
    CaOptions, CertificateAuthority, CrlOptions, DeviceCertOptions, Revocation, RevocationReason,
};

/// PROTOCOLS.md §3.4 / §5 V7: Microsoft's documented group-enrollment example.
const OFFICIAL_GROUP_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
const OFFICIAL_REGISTRATION_ID: &str = "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6";
const OFFICIAL_DEVICE_KEY: &str = "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=";

const SCOPE: &str = "0ne00000A0A";
const HUB: &str = "hub.example:8883";
const NOW: u64 = 1_800_000_000;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn group_key() -> SymmetricKey {
    SymmetricKey::from_base64(OFFICIAL_GROUP_KEY).unwrap()
}

fn sym_group() -> EnrollmentGroup {
    EnrollmentGroup::symmetric_key(
        "line-7",
        SCOPE,
        group_key(),
        Allocation::static_endpoint(HUB),
    )
    .unwrap()
}

/// A device's registration token, valid for an hour after [`NOW`].
fn device_token(registration_id: &str) -> String {
    let key = derive_device_key(&group_key(), registration_id).unwrap();
    registration_sas(SCOPE, registration_id, &key, at(NOW + 3600))
        .unwrap()
        .expose_secret()
        .to_owned()
}

fn assert_unauthenticated(result: Result<impl fmt::Debug>, needle: &str) {
    match result {
        Err(Error::Unauthenticated(reason)) => {
            assert!(reason.contains(needle), "{reason:?} lacks {needle:?}")
        }
        other => panic!("expected Unauthenticated({needle:?}), got {other:?}"),
    }
}

// ------------------------------------------------------------------------------------------
// Key derivation and registration ids
// ------------------------------------------------------------------------------------------

#[test]
fn derives_the_official_device_key() {
    let device = derive_device_key(&group_key(), OFFICIAL_REGISTRATION_ID).unwrap();
    assert_eq!(&*device.to_base64(), OFFICIAL_DEVICE_KEY);
    assert_eq!(device.expose_secret().len(), 32);
    // Different ids, different keys; the group key is not one of them.
    let other = derive_device_key(&group_key(), "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f7").unwrap();
    assert_ne!(device, other);
    assert_ne!(device, group_key());
}

#[test]
fn registration_id_rule() {
    let ok = [
        "a",
        "0",
        "-",
        "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6",
        "line7:unit_3.a",
        "ends-with-dash-",
    ];
    for id in ok {
        validate_registration_id(id).unwrap();
    }
    validate_registration_id(&"a".repeat(MAX_REGISTRATION_ID_LEN)).unwrap();

    let bad = [
        ("", "is empty"),
        (&*"a".repeat(MAX_REGISTRATION_ID_LEN + 1), "at most 128"),
        ("Sensor-1", "upper-case 'S' at position 0"),
        ("myRegistrationId", "upper-case 'R' at position 2"),
        ("sensor/1", "'/' at position 6"),
        ("sensor 1", "' ' at position 6"),
        ("sensor#1", "'#'"),
        ("capteur-é", "'é'"),
        ("sensor.", "ends with '.'"),
        ("sensor_", "ends with '_'"),
        ("sensor:", "ends with ':'"),
    ];
    for (id, needle) in bad {
        match validate_registration_id(id) {
            Err(Error::InvalidInput { field, reason }) => {
                assert_eq!(field, "registration id");
                assert!(
                    reason.contains(needle),
                    "{id:?}: {reason:?} lacks {needle:?}"
                );
            }
            other => panic!("{id:?}: {other:?}"),
        }
        assert!(matches!(
            derive_device_key(&group_key(), id),
            Err(Error::InvalidInput { .. })
        ));
    }
}

#[test]
fn registration_sas_has_the_dps_shape() {
    let token = SasToken::parse(&device_token("dev-1")).unwrap();
    assert_eq!(token.resource(), "0ne00000A0A/registrations/dev-1");
    assert_eq!(token.key_name(), Some("registration"));
    assert!(
        token
            .expose_secret()
            .starts_with("SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Fdev-1&sig=")
    );
    assert!(
        token
            .expose_secret()
            .ends_with("&se=1800003600&skn=registration")
    );
    let key = derive_device_key(&group_key(), "dev-1").unwrap();
    assert!(registration_sas("bad/scope", "dev-1", &key, at(NOW)).is_err());
    assert!(registration_sas(SCOPE, "Dev-1", &key, at(NOW)).is_err());
}

// ------------------------------------------------------------------------------------------
// Symmetric-key attestation
// ------------------------------------------------------------------------------------------

#[test]
fn symmetric_attestation_accepts_the_derived_key() {
    let group = sym_group();
    let assignment = group
        .attest_symmetric("dev-1", &device_token("dev-1"), at(NOW))
        .unwrap();
    assert_eq!(assignment, Assignment::new(HUB, "dev-1").unwrap());

    // The official vector end to end: a token signed with the documented device key.
    let official = SymmetricKey::from_base64(OFFICIAL_DEVICE_KEY).unwrap();
    let token = registration_sas(SCOPE, OFFICIAL_REGISTRATION_ID, &official, at(NOW + 1)).unwrap();
    group
        .attest_symmetric(OFFICIAL_REGISTRATION_ID, token.expose_secret(), at(NOW))
        .unwrap();
}

#[test]
fn symmetric_attestation_refuses_an_expired_token() {
    let group = sym_group();
    let token = device_token("dev-1");
    group
        .attest_symmetric("dev-1", &token, at(NOW + 3599))
        .unwrap();
    for now in [NOW + 3600, NOW + 86_400] {
        let err = group
            .attest_symmetric("dev-1", &token, at(now))
            .unwrap_err();
        assert!(matches!(err, Error::Expired(_)), "{err}");
    }
}

#[test]
fn symmetric_attestation_refuses_a_token_signed_with_the_group_key() {
    let token = SasToken::sign(
        &registration_resource(SCOPE, "dev-1"),
        &group_key(),
        Some(REGISTRATION_KEY_NAME),
        at(NOW + 60),
    )
    .unwrap();
    assert_unauthenticated(
        sym_group().attest_symmetric("dev-1", token.expose_secret(), at(NOW)),
        "signed with the key of enrollment group \"line-7\" itself",
    );
}

#[test]
fn symmetric_attestation_refuses_another_devices_key() {
    // dev-2 signs a token for dev-1's resource with its own derived key.
    let key2 = derive_device_key(&group_key(), "dev-2").unwrap();
    let token = SasToken::sign(
        &registration_resource(SCOPE, "dev-1"),
        &key2,
        Some(REGISTRATION_KEY_NAME),
        at(NOW + 60),
    )
    .unwrap();
    assert_unauthenticated(
        sym_group().attest_symmetric("dev-1", token.expose_secret(), at(NOW)),
        "not signed with the key derived for it",
    );
    // dev-2's genuine token, presented as dev-1.
    assert_unauthenticated(
        sym_group().attest_symmetric("dev-1", &device_token("dev-2"), at(NOW)),
        "not signed with the key derived for it",
    );
    // A key from another group altogether.
    let stranger = SymmetricKey::new(vec![9u8; 32]).unwrap();
    let key = derive_device_key(&stranger, "dev-1").unwrap();
    let token = registration_sas(SCOPE, "dev-1", &key, at(NOW + 60)).unwrap();
    assert_unauthenticated(
        sym_group().attest_symmetric("dev-1", token.expose_secret(), at(NOW)),
        "not signed with the key derived for it",
    );
}

#[test]
fn symmetric_attestation_refuses_a_token_for_another_resource() {
    let key1 = derive_device_key(&group_key(), "dev-1").unwrap();
    for resource in [
        registration_resource(SCOPE, "dev-2"), // another registration id
        registration_resource("0ne00000B0B", "dev-1"), // another scope
        registration_resource(SCOPE, "dev-10"), // not a segment prefix
        format!("{SCOPE}/registrations"),      // a prefix: not for DPS
        SCOPE.to_owned(),                      // the whole scope
        "hub.example/devices/dev-1".to_owned(), // an IoT Hub resource
    ] {
        let token = SasToken::sign(&resource, &key1, Some("registration"), at(NOW + 60)).unwrap();
        assert_unauthenticated(
            sym_group().attest_symmetric("dev-1", token.expose_secret(), at(NOW)),
            "not \"0ne00000A0A/registrations/dev-1\"",
        );
    }
}

#[test]
fn symmetric_attestation_refuses_tampering_and_malformed_tokens() {
    let token = device_token("dev-1");
    let sig_at = token.find("sig=").unwrap() + 4;
    let mut tampered = token.clone().into_bytes();
    tampered[sig_at] = if tampered[sig_at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_unauthenticated(
        sym_group().attest_symmetric("dev-1", &tampered, at(NOW)),
        "not signed with the key derived",
    );
    let extended = token.replace("se=1800003600", "se=1900000000");
    assert_unauthenticated(
        sym_group().attest_symmetric("dev-1", &extended, at(NOW)),
        "not signed with the key derived",
    );
    assert_unauthenticated(
        sym_group().attest_symmetric("dev-1", "not a token", at(NOW)),
        "malformed SAS token",
    );
    // An invalid registration id is bad input, whatever the token.
    assert!(matches!(
        sym_group().attest_symmetric("Dev-1", &token, at(NOW)),
        Err(Error::InvalidInput { .. })
    ));
}

#[test]
fn refusals_never_echo_the_signature_or_keys() {
    let token = device_token("dev-1");
    let sig = token
        .split('&')
        .find_map(|f| f.strip_prefix("sig="))
        .unwrap()
        .to_owned();
    let device_key = derive_device_key(&group_key(), "dev-1").unwrap();
    let errors = [
        sym_group()
            .attest_symmetric("dev-2", &token, at(NOW))
            .unwrap_err(),
        sym_group()
            .attest_symmetric("dev-1", &token, at(NOW + 7200))
            .unwrap_err(),
        sym_group()
            .attest_symmetric("dev-1", &token.replace("sr=", "sr=x"), at(NOW))
            .unwrap_err(),
    ];
    for err in errors {
        let text = format!("{err} {err:?}");
        for secret in [
            sig.as_str(),
            &*group_key().to_base64(),
            &*device_key.to_base64(),
        ] {
            assert!(!text.contains(secret), "{text}");
        }
    }
}

// ------------------------------------------------------------------------------------------
// X.509 attestation
// ------------------------------------------------------------------------------------------

/// A root with two sibling intermediates, created once for all tests.
struct Pki {
    root: CertificateAuthority,
    line7: CertificateAuthority,
    line8: CertificateAuthority,
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let root =
            CertificateAuthority::new_root(&CaOptions::new("Acme Root").with_path_len(1)).unwrap();
        let line7 = root
            .new_intermediate(&CaOptions::new("Acme Line 7"))
            .unwrap();
        let line8 = root
            .new_intermediate(&CaOptions::new("Acme Line 8"))
            .unwrap();
        Pki { root, line7, line8 }
    })
}

fn device_chain(
    ca: &CertificateAuthority,
    registration_id: &str,
    options: &DeviceCertOptions,
) -> Vec<Certificate> {
    let key = SoftwareKey::generate_p256().unwrap();
    let id = DeviceId::with_rule(registration_id, crate::identity::IdRule::Azure).unwrap();
    let leaf = ca.issue(&id, key.public_key_spki(), options).unwrap();
    let mut chain = vec![leaf];
    chain.extend(ca.chain_for_devices());
    chain
}

fn x509_group(name: &str, ca: &CertificateAuthority, allocation: Allocation) -> EnrollmentGroup {
    EnrollmentGroup::x509(name, SCOPE, ca.certificate().clone(), allocation).unwrap()
}

fn now() -> SystemTime {
    SystemTime::now()
}

#[test]
fn x509_attestation_accepts_a_device_under_the_group_intermediate() {
    let pki = pki();
    let group = x509_group("line-7", &pki.line7, Allocation::static_endpoint(HUB));
    let chain = device_chain(&pki.line7, "sensor-42", &DeviceCertOptions::default());
    let assignment = group.attest_x509(&chain, now()).unwrap();
    assert_eq!(assignment, Assignment::new(HUB, "sensor-42").unwrap());
    // Leaf only (the group CA is the anchor), and with the root appended: both fine.
    group.attest_x509(&chain[..1], now()).unwrap();
    let mut with_root = chain.clone();
    with_root.push(pki.root.certificate().clone());
    group.attest_x509(&with_root, now()).unwrap();
    // Registration ids with '.' and ':' come through the CN too.
    let chain = device_chain(&pki.line7, "line7:unit.3", &DeviceCertOptions::default());
    assert_eq!(
        group.attest_x509(&chain, now()).unwrap().device_id,
        "line7:unit.3"
    );
}

#[test]
fn x509_attestation_refuses_a_device_under_a_sibling_intermediate() {
    let pki = pki();
    let group = x509_group("line-7", &pki.line7, Allocation::static_endpoint(HUB));
    let mut chain = device_chain(&pki.line8, "sensor-42", &DeviceCertOptions::default());
    let err = group.attest_x509(&chain, now()).unwrap_err();
    assert!(
        matches!(err, Error::Untrusted(ChainError::UnknownIssuer)),
        "{err}"
    );
    // Adding the root and even the group's own intermediate does not help.
    chain.push(pki.root.certificate().clone());
    chain.push(pki.line7.certificate().clone());
    let err = group.attest_x509(&chain, now()).unwrap_err();
    assert!(matches!(err, Error::Untrusted(_)), "{err}");
}

#[test]
fn x509_attestation_refuses_an_expired_device_certificate() {
    let pki = pki();
    let group = x509_group("line-7", &pki.line7, Allocation::static_endpoint(HUB));
    let short = DeviceCertOptions::default().with_validity(Duration::from_secs(3600));
    let chain = device_chain(&pki.line7, "sensor-42", &short);
    group.attest_x509(&chain, now()).unwrap();
    let later = now() + Duration::from_secs(2 * 3600);
    let err = group.attest_x509(&chain, later).unwrap_err();
    assert!(matches!(err, Error::Expired(_)), "{err}");
    // Before notBefore (backdated one hour) is refused as Expired too.
    let earlier = now() - Duration::from_secs(2 * 3600);
    let err = group.attest_x509(&chain, earlier).unwrap_err();
    assert!(matches!(err, Error::Expired(_)), "{err}");
}

#[test]
fn x509_attestation_refuses_when_the_group_ca_has_expired() {
    let pki = pki();
    let short_ca = pki
        .root
        .new_intermediate(&CaOptions::new("Acme Short").with_validity(Duration::from_secs(3600)))
        .unwrap();
    let group = x509_group("short", &short_ca, Allocation::static_endpoint(HUB));
    let chain = device_chain(&short_ca, "sensor-42", &DeviceCertOptions::default());
    group.attest_x509(&chain, now()).unwrap();
    match group.attest_x509(&chain, now() + Duration::from_secs(7200)) {
        Err(Error::Expired(reason)) => assert!(reason.contains("Acme Short"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn x509_attestation_refuses_a_revoked_device() {
    let pki = pki();
    let chain = device_chain(&pki.line7, "sensor-43", &DeviceCertOptions::default());
    let crl = pki
        .line7
        .issue_crl(&CrlOptions::new(
            1,
            vec![Revocation::of(&chain[0], RevocationReason::KeyCompromise)],
        ))
        .unwrap();
    let group = x509_group("line-7", &pki.line7, Allocation::static_endpoint(HUB)).with_crls([crl]);
    let err = group.attest_x509(&chain, now()).unwrap_err();
    assert!(matches!(err, Error::Revoked(_)), "{err}");
    let other = device_chain(&pki.line7, "sensor-44", &DeviceCertOptions::default());
    group.attest_x509(&other, now()).unwrap();
}

#[test]
fn x509_attestation_checks_the_registration_id_and_the_group_kind() {
    let pki = pki();
    let group = x509_group("line-7", &pki.line7, Allocation::static_endpoint(HUB));
    let upper = device_chain(&pki.line7, "Sensor-42", &DeviceCertOptions::default());
    assert!(matches!(
        group.attest_x509(&upper, now()),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        group.attest_x509(&[], now()),
        Err(Error::InvalidInput { .. })
    ));
    // Tokens to an X.509 group, chains to a symmetric-key group.
    assert_unauthenticated(
        group.attest_symmetric("dev-1", &device_token("dev-1"), at(NOW)),
        "by X.509 certificate, not SAS token",
    );
    let chain = device_chain(&pki.line7, "sensor-42", &DeviceCertOptions::default());
    assert_unauthenticated(
        sym_group().attest_x509(&chain, now()),
        "by SAS token, not X.509",
    );
}

#[test]
fn x509_group_needs_a_ca_certificate() {
    let pki = pki();
    let chain = device_chain(&pki.line7, "sensor-42", &DeviceCertOptions::default());
    let err = EnrollmentGroup::x509(
        "g",
        SCOPE,
        chain[0].clone(),
        Allocation::static_endpoint(HUB),
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
}

// ------------------------------------------------------------------------------------------
// Allocation
// ------------------------------------------------------------------------------------------

#[test]
fn static_allocation_uses_the_registration_id_as_device_id() {
    let a = Allocation::static_endpoint("mqtts://hub.example")
        .allocate("dev-1", &json!({"ignored": true}))
        .unwrap();
    assert_eq!(a.endpoint, "mqtts://hub.example");
    assert_eq!(a.device_id, "dev-1");
    assert!(
        Allocation::static_endpoint("")
            .allocate("dev-1", &Value::Null)
            .is_err()
    );
}

#[test]
fn hashed_allocation_is_stable_and_even() {
    let endpoints = ["hub-0:8883", "hub-1:8883", "hub-2:8883", "hub-3:8883"];
    let hashed = Allocation::hashed(endpoints).unwrap();
    // Stable across processes: SHA-256, first 8 bytes big-endian, mod n (values checked with
    // Python's hashlib).
    assert_eq!(allocation::hash_index(OFFICIAL_REGISTRATION_ID, 3), 1);
    assert_eq!(allocation::hash_index("device-1", 3), 2);
    assert_eq!(allocation::hash_index("device-2", 3), 0);
    assert_eq!(allocation::hash_index("device-2", 4), 3);
    assert_eq!(
        hashed.allocate("device-2", &Value::Null).unwrap(),
        Assignment::new("hub-3:8883", "device-2").unwrap()
    );

    let mut counts = [0usize; 4];
    for i in 0..1000 {
        let id = format!("device-{i}");
        let a = hashed.allocate(&id, &Value::Null).unwrap();
        assert_eq!(a, hashed.allocate(&id, &Value::Null).unwrap());
        assert_eq!(a.device_id, id);
        counts[endpoints.iter().position(|e| *e == a.endpoint).unwrap()] += 1;
    }
    for count in counts {
        assert!(
            (200..=300).contains(&count),
            "{counts:?}: not within ±20% of 250"
        );
    }

    assert!(matches!(
        Allocation::hashed(Vec::<String>::new()),
        Err(Error::InvalidInput { .. })
    ));
    assert!(Allocation::hashed(["a", "a"]).is_err());
    assert!(Allocation::hashed(["a", ""]).is_err());
    // A Hashed built by hand with no endpoints fails at allocation, not with a panic.
    let empty = Allocation::Hashed {
        endpoints: Vec::new(),
    };
    assert!(empty.allocate("dev-1", &Value::Null).is_err());
}

#[test]
fn custom_allocation_sees_the_payload() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let custom = Allocation::custom(move |id, payload| {
        seen.fetch_add(1, Ordering::SeqCst);
        match payload["tier"].as_str() {
            Some("gold") => Assignment::new("gold.example:8883", format!("gold-{id}")),
            Some(_) => Assignment::new("std.example:8883", id),
            None => Err(Error::PermissionDenied(format!("{id} sent no tier"))),
        }
    });
    let group = EnrollmentGroup::symmetric_key("tiers", SCOPE, group_key(), custom).unwrap();
    let token = device_token("dev-1");
    let evidence = Evidence::SymmetricKey {
        group: None,
        registration_id: "dev-1",
        sas_token: &token,
    };
    let gold = group
        .attest(&evidence, &json!({"tier": "gold"}), at(NOW))
        .unwrap();
    assert_eq!(
        gold.assignment,
        Assignment::new("gold.example:8883", "gold-dev-1").unwrap()
    );
    let std = group
        .attest(&evidence, &json!({"tier": "bronze"}), at(NOW))
        .unwrap();
    assert_eq!(std.assignment.endpoint, "std.example:8883");
    // The function's own refusal comes through; so does attest_symmetric's Null payload.
    let err = group
        .attest_symmetric("dev-1", &token, at(NOW))
        .unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // The function is not consulted for a device that failed attestation.
    let _ = group.attest_symmetric("dev-2", &token, at(NOW));
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // An assignment with an empty field is refused even from a custom function.
    let sloppy = Allocation::Custom(Arc::new(|id: &str, _: &Value| {
        Ok(Assignment {
            endpoint: String::new(),
            device_id: id.to_owned(),
        })
    }));
    assert!(sloppy.allocate("dev-1", &Value::Null).is_err());
}

// ------------------------------------------------------------------------------------------
// Debug redaction
// ------------------------------------------------------------------------------------------

#[test]
fn debug_redacts_keys_tokens_and_custom_functions() {
    let token = device_token("dev-1");
    let sig = token
        .split('&')
        .find_map(|f| f.strip_prefix("sig="))
        .unwrap()
        .to_owned();
    let group_b64 = group_key().to_base64().to_string();
    let device_key = derive_device_key(&group_key(), "dev-1").unwrap();

    let group_debug = format!("{:?}", sym_group());
    assert!(
        group_debug.contains("SymmetricKey(<64 bytes redacted>)"),
        "{group_debug}"
    );
    assert!(!group_debug.contains(&group_b64[..16]));

    assert_eq!(
        format!("{device_key:?}"),
        "SymmetricKey(<32 bytes redacted>)"
    );

    let parsed = SasToken::parse(&token).unwrap();
    let token_debug = format!("{parsed:?}");
    assert!(token_debug.contains("<redacted>"));
    assert!(!token_debug.contains(&sig));

    let evidence = Evidence::SymmetricKey {
        group: Some("line-7"),
        registration_id: "dev-1",
        sas_token: &token,
    };
    let evidence_debug = format!("{evidence:?}");
    assert!(!evidence_debug.contains(&sig), "{evidence_debug}");
    assert!(!evidence_debug.contains("SharedAccessSignature"));
    assert!(evidence_debug.contains("dev-1"));

    let custom = Allocation::custom(|id, _| Assignment::new(HUB, id));
    assert_eq!(format!("{custom:?}"), "Custom(<custom>)");
}

// ------------------------------------------------------------------------------------------
// Group validation and the registry
// ------------------------------------------------------------------------------------------

#[test]
fn group_construction_is_validated() {
    let alloc = || Allocation::static_endpoint(HUB);
    let short = SymmetricKey::new(vec![1u8; 15]).unwrap();
    let long = SymmetricKey::new(vec![1u8; 65]).unwrap();
    for key in [short, long] {
        let err = EnrollmentGroup::symmetric_key("g", SCOPE, key, alloc()).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { ref field, .. } if field == "group key"));
    }
    for name in ["", "has space", "a/b"] {
        assert!(EnrollmentGroup::symmetric_key(name, SCOPE, group_key(), alloc()).is_err());
    }
    for scope in ["", "a/b", "a b"] {
        assert!(EnrollmentGroup::symmetric_key("g", scope, group_key(), alloc()).is_err());
    }
    let group = sym_group().with_initial(
        InitialDeviceSettings::new()
            .with_group("meters")
            .with_attribute("site", "lyon")
            .with_policy("meter-policy")
            .disabled(),
    );
    assert_eq!(group.name(), "line-7");
    assert_eq!(group.id_scope(), SCOPE);
    assert_eq!(group.attestation().kind(), AttestationKind::SymmetricKey);
    assert!(matches!(group.allocation(), Allocation::Static { .. }));
    assert!(!group.initial().enabled);
    assert_eq!(group.initial().policy.as_deref(), Some("meter-policy"));
}

#[test]
fn registry_add_get_remove() {
    let mut groups = EnrollmentGroups::new();
    assert!(groups.is_empty());
    groups.add(sym_group()).unwrap();
    assert!(matches!(
        groups.add(sym_group()),
        Err(Error::AlreadyExists { .. })
    ));
    assert_eq!(groups.len(), 1);
    assert_eq!(groups.get("line-7").unwrap().name(), "line-7");
    assert!(groups.get("nope").is_none());
    let replaced =
        groups.replace(sym_group().with_initial(InitialDeviceSettings::new().disabled()));
    assert!(replaced.unwrap().initial().enabled);
    assert!(!groups.get("line-7").unwrap().initial().enabled);
    assert_eq!(groups.iter().count(), 1);
    assert!(groups.remove("line-7").is_some());
    assert!(groups.remove("line-7").is_none());
}

fn registry() -> EnrollmentGroups {
    let pki = pki();
    let mut groups = EnrollmentGroups::new();
    groups
        .add(
            EnrollmentGroup::symmetric_key(
                "a-other",
                SCOPE,
                SymmetricKey::new(vec![5u8; 32]).unwrap(),
                Allocation::static_endpoint("other.example:8883"),
            )
            .unwrap(),
        )
        .unwrap();
    groups
        .add(sym_group().with_initial(InitialDeviceSettings::new().with_group("line-7")))
        .unwrap();
    groups
        .add(x509_group(
            "root-wide",
            &pki.root,
            Allocation::static_endpoint("root.example:8883"),
        ))
        .unwrap();
    groups
        .add(x509_group(
            "z-line-7",
            &pki.line7,
            Allocation::static_endpoint("line7.example:8883"),
        ))
        .unwrap();
    groups
}

#[test]
fn registry_finds_the_symmetric_group_by_name_or_by_key() {
    let groups = registry();
    let token = device_token("dev-1");
    for name in [None, Some("line-7")] {
        let registration = groups
            .attest(
                &Evidence::SymmetricKey {
                    group: name,
                    registration_id: "dev-1",
                    sas_token: &token,
                },
                &Value::Null,
                at(NOW),
            )
            .unwrap();
        assert_eq!(registration.group, "line-7");
        assert_eq!(registration.attestation, AttestationKind::SymmetricKey);
        assert_eq!(registration.initial.groups, ["line-7"]);
        assert_eq!(registration.assignment.endpoint, HUB);
    }
    let evidence = |group, token| Evidence::SymmetricKey {
        group,
        registration_id: "dev-1",
        sas_token: token,
    };
    // The wrong group by name, a missing group, an X.509 group by name.
    assert_unauthenticated(
        groups.attest(&evidence(Some("a-other"), &token), &Value::Null, at(NOW)),
        "not signed with the key derived",
    );
    assert!(matches!(
        groups.attest(&evidence(Some("nope"), &token), &Value::Null, at(NOW)),
        Err(Error::NotFound { .. })
    ));
    assert_unauthenticated(
        groups.attest(&evidence(Some("root-wide"), &token), &Value::Null, at(NOW)),
        "not SAS token",
    );
    // Expired, found by key: the group's own error.
    let err = groups
        .attest(&evidence(None, &token), &Value::Null, at(NOW + 7200))
        .unwrap_err();
    assert!(matches!(err, Error::Expired(_)), "{err}");
    // The group key itself: refused, and said so.
    let by_group_key = SasToken::sign(
        &registration_resource(SCOPE, "dev-1"),
        &group_key(),
        Some("registration"),
        at(NOW + 60),
    )
    .unwrap();
    assert_unauthenticated(
        groups.attest(
            &evidence(None, by_group_key.expose_secret()),
            &Value::Null,
            at(NOW),
        ),
        "itself",
    );
    // Nobody's key.
    let stranger = SymmetricKey::new(vec![9u8; 32]).unwrap();
    let forged = registration_sas(
        SCOPE,
        "dev-1",
        &derive_device_key(&stranger, "dev-1").unwrap(),
        at(NOW + 60),
    )
    .unwrap();
    assert_unauthenticated(
        groups.attest(
            &evidence(None, forged.expose_secret()),
            &Value::Null,
            at(NOW),
        ),
        "no symmetric-key enrollment group",
    );
}

#[test]
fn registry_finds_the_x509_group_by_issuer_path() {
    let pki = pki();
    let groups = registry();
    let attest =
        |chain: &[Certificate]| groups.attest(&Evidence::X509 { chain }, &Value::Null, now());
    // Under Line 7: both the Line 7 group and the root-wide group fit; the nearer one wins.
    let line7 = device_chain(&pki.line7, "sensor-7", &DeviceCertOptions::default());
    let registration = attest(&line7).unwrap();
    assert_eq!(registration.group, "z-line-7");
    assert_eq!(registration.assignment.endpoint, "line7.example:8883");
    assert_eq!(registration.attestation, AttestationKind::X509);
    // Under Line 8: only the root-wide group.
    let line8 = device_chain(&pki.line8, "sensor-8", &DeviceCertOptions::default());
    assert_eq!(attest(&line8).unwrap().group, "root-wide");
    // Under Line 8 but presented without its intermediate: no group's CA is on the path.
    let err = attest(&line8[..1]).unwrap_err();
    assert!(
        matches!(err, Error::Untrusted(ChainError::UnknownIssuer)),
        "{err}"
    );
    // Another PKI altogether.
    let foreign = CertificateAuthority::new_root(&CaOptions::new("Foreign Root")).unwrap();
    let chain = device_chain(&foreign, "sensor-9", &DeviceCertOptions::default());
    assert!(matches!(attest(&chain), Err(Error::Untrusted(_))));
    // An expired device: the nearest group's error.
    let short = DeviceCertOptions::default().with_validity(Duration::from_secs(60));
    let chain = device_chain(&pki.line7, "sensor-10", &short);
    let err = groups
        .attest(
            &Evidence::X509 { chain: &chain },
            &Value::Null,
            now() + Duration::from_secs(3600),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Expired(_)), "{err}");
    assert!(matches!(attest(&[]), Err(Error::InvalidInput { .. })));
}

#[test]
fn registration_state_has_the_dps_shape() {
    let groups = registry();
    let token = device_token("dev-1");
    let registration = groups
        .attest(
            &Evidence::SymmetricKey {
                group: None,
                registration_id: "dev-1",
                sas_token: &token,
            },
            &Value::Null,
            at(NOW),
        )
        .unwrap();
    let when = at(NOW) + Duration::from_nanos(343_436_600);
    assert_eq!(
        registration.registration_state(when),
        json!({
            "registrationId": "dev-1",
            "createdDateTimeUtc": "2027-01-15T08:00:00.3434366Z",
            "assignedHub": HUB,
            "deviceId": "dev-1",
            "status": "assigned",
            "substatus": "initialAssignment",
            "lastUpdatedDateTimeUtc": "2027-01-15T08:00:00.3434366Z",
            "symmetricKey": {"enrollmentGroupId": "line-7"},
        })
    );
    let pki = pki();
    let chain = device_chain(&pki.line7, "sensor-7", &DeviceCertOptions::default());
    let x509 = groups
        .attest(&Evidence::X509 { chain: &chain }, &Value::Null, now())
        .unwrap();
    let state = x509.registration_state(now());
    assert_eq!(state["x509"]["enrollmentGroupId"], "z-line-7");
    assert!(state.get("symmetricKey").is_none());
}
