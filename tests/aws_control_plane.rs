//! `fleetkit::aws` end to end against the local hub, configured exactly as for AWS IoT Core
//! except for the endpoints and the CA: the control plane (`AwsAdmin`, fleetkit's
//! `FleetAdmin` over AWS's REST API, SigV4-signed) provisions a fleet on the hub's AWS
//! control plane (which verifies every signature), then the device plane (`AwsDialect`)
//! connects with what was provisioned, and a revocation through the control plane cuts it
//! off.
#![cfg(all(feature = "local", feature = "aws"))]

use std::sync::Arc;
use std::time::Duration;

use fleetkit::Error;
use fleetkit::auth::sigv4::AwsCredentials;
use fleetkit::aws::{AwsIot, AwsTransport, EndpointType};
use fleetkit::backend::{CertificateState, DeviceRecord, FleetAdmin};
use fleetkit::device::{ConnectionState, DeviceClient};
use fleetkit::identity::{DeviceId, SoftwareKey, X509Credential};
use fleetkit::local::LocalHub;
use fleetkit::local::dialect::aws::AwsHubDialect;
use fleetkit::local::dialect::aws::rest::{AwsControlPlane, ControlPlaneOptions};
use fleetkit::pki::{CaOptions, CertificateAuthority, DeviceCertOptions};
use fleetkit::policy::{AttachTarget, builtin};
use serde_json::json;

const AKID: &str = "AKIAFLEETKITTEST0001";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYFLEETKITKEY";

struct Env {
    hub: Arc<LocalHub>,
    _plane: AwsControlPlane,
    plane_url: String,
}

async fn start() -> Env {
    let aws = Arc::new(AwsHubDialect::new());
    let hub = Arc::new(
        LocalHub::builder()
            .dialect_shared(aws.clone())
            .start()
            .await
            .unwrap(),
    );
    let plane = AwsControlPlane::start(
        hub.clone(),
        ControlPlaneOptions::new()
            .region("eu-west-1")
            .credentials(AwsCredentials::new(AKID, SECRET))
            .endpoint_address("localhost")
            .provisioning(aws),
    )
    .await
    .unwrap();
    let plane_url = plane.url();
    Env {
        hub,
        _plane: plane,
        plane_url,
    }
}

/// The configuration a device maker would use for AWS — only the endpoints and the CA point
/// at the hub.
fn config(env: &Env, secret: &str) -> AwsIot {
    AwsIot::builder()
        .region("eu-west-1")
        .endpoint("localhost")
        .transport(AwsTransport::MqttAlpn443)
        .port(env.hub.mqtt_addr().port())
        .root_ca(env.hub.ca_certificate())
        .control_endpoint(env.plane_url.as_str())
        .access_key_id(AKID)
        .secret_access_key(secret)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_fleet_admin_provisions_the_hub_and_devices_connect() {
    let env = start().await;
    let aws = config(&env, SECRET);
    let admin = aws.admin().unwrap();
    let fleet: &dyn FleetAdmin = &admin;

    // Policies from the portable document, exported as AWS policy JSON; a second put is a
    // new version.
    assert_eq!(
        fleet
            .put_policy("device", &builtin::aws_device())
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        fleet
            .put_policy("device", &builtin::aws_device())
            .await
            .unwrap(),
        2
    );
    // Things and their groups.
    fleet
        .create_device(
            DeviceRecord::new("pump-1")
                .in_group("pumps")
                .with_attribute("site", "north"),
        )
        .await
        .unwrap();
    fleet
        .attach_policy("device", AttachTarget::Group("pumps".into()))
        .await
        .unwrap();
    let record = fleet.device("pump-1").await.unwrap();
    assert_eq!(record.groups, vec!["pumps".to_string()]);
    assert_eq!(
        record.attributes,
        vec![("site".to_string(), "north".to_string())]
    );

    // A certificate from the manufacturer's own CA: register the CA, then the certificate
    // for the thing (RegisterCACertificate, RegisterCertificate, AttachThingPrincipal).
    let ca = CertificateAuthority::new_root(&CaOptions::new("Pump Maker CA")).unwrap();
    fleet.register_ca(ca.certificate()).await.unwrap();
    let key = Arc::new(SoftwareKey::generate_p256().unwrap());
    let cert = ca
        .issue(
            &DeviceId::new("pump-1").unwrap(),
            fleetkit::identity::Signer::public_key_spki(key.as_ref()),
            &DeviceCertOptions::default(),
        )
        .unwrap();
    let cert_id = fleet.register_certificate(&cert, "pump-1").await.unwrap();
    assert_eq!(cert_id, cert.fingerprint_sha256());
    let described = admin.describe_certificate(&cert_id).await.unwrap();
    assert_eq!(described.status.state(), Some(CertificateState::Active));
    assert_eq!(
        admin
            .describe_endpoint(EndpointType::DataAts)
            .await
            .unwrap(),
        "localhost"
    );

    // The device plane, with what the control plane set up.
    let credential = X509Credential::new(vec![cert.der().clone()], key).unwrap();
    let client = DeviceClient::builder(aws.dialect(), DeviceId::new("pump-1").unwrap())
        .credential(credential.clone())
        .request_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let version = client.twin().report(json!({"rpm": 1450})).await.unwrap();
    assert_eq!(version, 1);

    // Revocation through the control plane drops the live connection.
    fleet
        .set_certificate_state(&cert_id, CertificateState::Revoked)
        .await
        .unwrap();
    let mut states = client.state_changes();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if matches!(
                *states.borrow_and_update(),
                ConnectionState::Disconnected { .. }
            ) {
                break;
            }
            states.changed().await.unwrap();
        }
    })
    .await
    .expect("the revoked device was disconnected");
    assert!(env.hub.connected_clients().is_empty());
    let again = DeviceClient::builder(aws.dialect(), DeviceId::new("pump-1").unwrap())
        .credential(credential)
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await;
    assert!(again.is_err(), "a revoked certificate cannot reconnect");

    // AWS-style keys and certificate made by the service, attached to a second thing.
    fleet
        .create_device(DeviceRecord::new("pump-2").in_group("pumps"))
        .await
        .unwrap();
    let made = admin.create_keys_and_certificate(true).await.unwrap();
    admin
        .attach_thing_principal("pump-2", made.certificate_arn())
        .await
        .unwrap();
    let key = SoftwareKey::from_pem(made.private_key_pem()).unwrap();
    let credential = X509Credential::from_pem(made.certificate_pem(), Arc::new(key)).unwrap();
    let client = DeviceClient::builder(aws.dialect(), DeviceId::new("pump-2").unwrap())
        .credential(credential)
        .connect()
        .await
        .unwrap();
    client.twin().report(json!({"rpm": 900})).await.unwrap();
    client.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_refusals_are_typed() {
    let env = start().await;
    let admin = config(&env, SECRET).admin().unwrap();
    assert!(matches!(
        admin.device("nobody").await,
        Err(Error::NotFound { .. })
    ));
    fleet_put_bad_policy_is_refused(&admin).await;
    // AWS has no per-thing switch and no CRL upload: said up front, nothing sent.
    assert!(matches!(
        admin.set_device_enabled("pump-1", false).await,
        Err(Error::NotSupported(_))
    ));
    // A wrongly signed client changes nothing.
    let forged = config(&env, "not-the-secret").admin().unwrap();
    let refused = forged.create_device(DeviceRecord::new("intruder")).await;
    assert!(
        matches!(refused, Err(Error::Unauthenticated(_))),
        "{refused:?}"
    );
    assert!(env.hub.with_registry(|r| r.device("intruder").is_none()));
    // Duplicates and unknown certificates.
    admin
        .create_device(DeviceRecord::new("pump-1"))
        .await
        .unwrap();
    assert!(matches!(
        admin
            .set_certificate_state(&"ab".repeat(32), CertificateState::Inactive)
            .await,
        Err(Error::NotFound { .. })
    ));
}

async fn fleet_put_bad_policy_is_refused(admin: &fleetkit::aws::AwsAdmin) {
    // A portable policy that uses a fleetkit-only action cannot become AWS policy JSON, or
    // is refused by the service: either way, a typed error and no policy.
    let claim = builtin::provisioning_claim("t");
    let result = admin.put_policy("claim", &claim).await;
    assert!(
        matches!(
            result,
            Err(Error::InvalidInput { .. } | Error::NotSupported(_))
        ),
        "{result:?}"
    );
}

/// AWS's fleet provisioning set up entirely through the control plane — policies, a claim
/// certificate made by the service, a provisioning template from AWS's template JSON — then
/// a device provisions itself by claim and connects as the thing the template made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_provisioning_set_up_through_the_control_plane() {
    let env = start().await;
    let aws = config(&env, SECRET);
    let admin = aws.admin().unwrap();
    admin
        .put_policy("device", &builtin::aws_device())
        .await
        .unwrap();
    let claim_policy = fleetkit::policy::PolicyDocument::from_json(
        r#"{"Version":"2012-10-17","Statement":[
          {"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:*:*:client/claim-*"},
          {"Effect":"Allow","Action":["iot:Publish","iot:Receive"],"Resource":[
            "arn:aws:iot:*:*:topic/$aws/certificates/create-from-csr/*",
            "arn:aws:iot:*:*:topic/$aws/provisioning-templates/meters/provision/*"]},
          {"Effect":"Allow","Action":"iot:Subscribe","Resource":[
            "arn:aws:iot:*:*:topicfilter/$aws/certificates/create-from-csr/*",
            "arn:aws:iot:*:*:topicfilter/$aws/provisioning-templates/meters/provision/*"]}]}"#,
    )
    .unwrap();
    admin.put_policy("claim", &claim_policy).await.unwrap();
    admin
        .create_device(DeviceRecord::new("factory-claim"))
        .await
        .unwrap();
    let claim = admin.create_keys_and_certificate(true).await.unwrap();
    admin
        .attach_thing_principal("factory-claim", claim.certificate_arn())
        .await
        .unwrap();
    admin
        .attach_policy(
            "claim",
            AttachTarget::Certificate(claim.certificate_id().to_string()),
        )
        .await
        .unwrap();
    let body = json!({
        "Parameters": {"SerialNumber": {"Type": "String"}},
        "Resources": {
            "thing": {"Type": "AWS::IoT::Thing", "Properties": {
                "ThingName": {"Fn::Join": ["", ["meter-", {"Ref": "SerialNumber"}]]},
                "ThingGroups": ["meters"],
                "AttributePayload": {"serial": {"Ref": "SerialNumber"}}}},
            "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
                "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}},
            "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "device"}}
        }
    });
    let role = "arn:aws:iam::123456789012:role/Provisioning";
    let arn = admin
        .create_provisioning_template("meters", &body, role)
        .await
        .unwrap();
    assert!(arn.ends_with(":provisioningtemplate/meters"), "{arn}");
    assert!(matches!(
        admin
            .create_provisioning_template("meters", &body, role)
            .await,
        Err(Error::AlreadyExists { .. })
    ));
    // What the hub cannot carry out is refused, naming the place.
    let inline = json!({"Resources": {"thing": {"Type": "AWS::IoT::Thing",
        "Properties": {"ThingName": "x", "ThingTypeName": "meter"}}}});
    match admin
        .create_provisioning_template("bad", &inline, role)
        .await
    {
        Err(Error::InvalidInput { .. }) => {}
        other => panic!("{other:?}"),
    }

    // The device, first boot: only the claim.
    let key = SoftwareKey::from_pem(claim.private_key_pem()).unwrap();
    let claim_credential =
        X509Credential::from_pem(claim.certificate_pem(), Arc::new(key)).unwrap();
    let request = fleetkit::lifecycle::provision::ProvisionRequest::with_device_key(
        DeviceId::new("meter-SN77").unwrap(),
        Arc::new(SoftwareKey::generate_p256().unwrap()),
    )
    .parameter("SerialNumber", "SN77");
    use fleetkit::lifecycle::provision::Provisioner as _;
    let identity = aws
        .claim_provisioner(claim_credential, "meters")
        .provision(&request)
        .await
        .unwrap();
    assert_eq!(identity.device_id.as_str(), "meter-SN77");
    let record = admin.device("meter-SN77").await.unwrap();
    assert_eq!(record.groups, vec!["meters".to_string()]);
    assert_eq!(
        record.attributes,
        vec![("serial".to_string(), "SN77".to_string())]
    );
}
