//! The hub's AWS IoT control plane over real HTTPS, with requests signed by the official
//! `aws-sigv4` crate (through `fleetkit::auth::sigv4::sign_headers`) and sent with reqwest:
//! every operation's answer, SigV4 refusals that change nothing, and the whole provisioning
//! flow down to a device connecting over MQTT/mTLS with the key and certificate it was given.
#![cfg(all(feature = "local", feature = "aws"))]

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fleetkit::auth::sigv4::{AwsCredentials, sign_headers};
use fleetkit::identity::{DeviceId, IdRule, Signer as _, SoftwareKey, X509Credential};
use fleetkit::local::dialect::aws::rest::{AwsControlPlane, ControlPlaneOptions};
use fleetkit::local::{CaStatus, CertificateState, DeviceRecord, LocalHub};
use fleetkit::pki::{CaOptions, Certificate, CertificateAuthority, DeviceCertOptions, build_csr};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio::time::timeout;

const REGION: &str = "us-east-1";
const ACCOUNT: &str = "123456789012";
const AKID: &str = "AKIDFLEETKITLOCAL";
const SECRET: &str = "fleetkit/local/secret+key";

struct Env {
    hub: Arc<LocalHub>,
    plane: AwsControlPlane,
    http: reqwest::Client,
}

/// The answer: status, `x-amzn-ErrorType`, body (JSON, or `Null` when empty).
#[derive(Debug)]
struct Answer {
    status: u16,
    error: Option<String>,
    body: Value,
    cache_control: Option<String>,
}

/// How to sign a request (the defaults sign it correctly).
struct Signing {
    credentials: Option<AwsCredentials>,
    region: &'static str,
    service: &'static str,
    time: SystemTime,
}

impl Default for Signing {
    fn default() -> Self {
        Signing {
            credentials: Some(AwsCredentials::new(AKID, SECRET)),
            region: REGION,
            service: "iot",
            time: SystemTime::now(),
        }
    }
}

fn arn(resource: &str) -> String {
    format!("arn:aws:iot:{REGION}:{ACCOUNT}:{resource}")
}

impl Env {
    async fn start() -> Env {
        let hub = Arc::new(LocalHub::builder().start().await.unwrap());
        let options = ControlPlaneOptions::new()
            .credentials(AwsCredentials::new(AKID, SECRET))
            .endpoint_address("iot.local.test");
        let plane = AwsControlPlane::start(hub.clone(), options).await.unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(hub.ca_certificate().der().clone()).unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()
            .unwrap();
        Env { hub, plane, http }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        self.send(
            method,
            path,
            body.map(|b| b.to_string().into_bytes()),
            &[],
            Signing::default(),
        )
        .await
    }

    async fn send(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        extra: &[(&str, &str)],
        signing: Signing,
    ) -> Answer {
        let url = format!("{}{path_and_query}", self.plane.url());
        let body = body.unwrap_or_default();
        let mut headers: Vec<(String, String)> = extra
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        if !body.is_empty() {
            headers.push(("content-type".into(), "application/json".into()));
        }
        if let Some(creds) = &signing.credentials {
            let signed = sign_headers(
                creds,
                signing.region,
                signing.service,
                method,
                &url,
                &headers,
                &body,
                signing.time,
            )
            .unwrap();
            headers.extend(signed);
        }
        let mut request = self.http.request(method.parse().unwrap(), &url).body(body);
        for (n, v) in &headers {
            request = request.header(n.as_str(), v.as_str());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let error = header("x-amzn-ErrorType");
        let cache_control = header("cache-control");
        assert!(
            header("x-amzn-RequestId").is_some(),
            "every answer has a request id"
        );
        let bytes = response.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        Answer {
            status,
            error,
            body,
            cache_control,
        }
    }

    fn device(&self, name: &str) -> Option<DeviceRecord> {
        self.hub.with_registry(|r| r.device(name).cloned())
    }
}

impl Answer {
    #[track_caller]
    fn ok(self) -> Value {
        assert_eq!(self.status, 200, "{self:?}");
        assert!(self.error.is_none(), "{self:?}");
        self.body
    }

    #[track_caller]
    fn fails(self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.error.as_deref(), Some(code), "{self:?}");
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{self:?}"
        );
        self.body
    }
}

const DEVICE_POLICY: &str = r#"{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
  {"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/sensors/${iot:Connection.Thing.ThingName}/*"}
]}"#;

async fn connected(ev: &mut EventLoop) {
    loop {
        match timeout(Duration::from_secs(10), ev.poll()).await.unwrap() {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                assert_eq!(ack.code, ConnectReturnCode::Success);
                return;
            }
            Ok(_) => {}
            Err(e) => panic!("connection failed: {e}"),
        }
    }
}

async fn acked(ev: &mut EventLoop) {
    loop {
        match timeout(Duration::from_secs(10), ev.poll()).await.unwrap() {
            Ok(Event::Incoming(Packet::PubAck(_))) => return,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
}

async fn fails(ev: &mut EventLoop) -> String {
    loop {
        match timeout(Duration::from_secs(10), ev.poll()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return e.to_string(),
            Err(_) => panic!("the connection did not fail within 10 s"),
        }
    }
}

fn mqtt_options(hub: &LocalHub, client_id: &str, credential: &X509Credential) -> MqttOptions {
    let config = support::client_config(hub, credential, &[]);
    let mut opts = MqttOptions::new(client_id, "localhost", hub.mqtt_addr().port());
    opts.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(config),
    ));
    opts.set_keep_alive(Duration::from_secs(30));
    opts
}

#[tokio::test]
async fn provisioning_flow_ends_in_an_mqtt_connection_that_revocation_drops() {
    let env = Env::start().await;

    let thing = env
        .call(
            "POST",
            "/things/sensor-1",
            Some(json!({"thingTypeName": "thermometer", "attributePayload": {"attributes": {"floor": "3"}}})),
        )
        .await
        .ok();
    assert_eq!(thing["thingName"], "sensor-1");
    assert_eq!(thing["thingArn"], arn("thing/sensor-1"));

    env.call("POST", "/thing-groups/line-2", Some(json!({})))
        .await
        .ok();
    let added = env
        .call(
            "PUT",
            "/thing-groups/addThingToThingGroup",
            Some(json!({"thingGroupName": "line-2", "thingName": "sensor-1"})),
        )
        .await
        .ok();
    assert_eq!(added, json!({}));

    let policy = env
        .call(
            "POST",
            "/policies/devices",
            Some(json!({"policyDocument": DEVICE_POLICY})),
        )
        .await
        .ok();
    assert_eq!(policy["policyVersionId"], "1");
    let attached = env
        .call(
            "PUT",
            "/target-policies/devices",
            Some(json!({"target": arn("thinggroup/line-2")})),
        )
        .await;
    assert_eq!(
        attached.ok(),
        Value::Null,
        "AttachPolicy answers an empty body"
    );

    let keys = env
        .call("POST", "/keys-and-certificate?setAsActive=true", None)
        .await;
    assert_eq!(keys.cache_control.as_deref(), Some("no-store"));
    let keys = keys.ok();
    let cert_id = keys["certificateId"].as_str().unwrap().to_string();
    let cert_arn = keys["certificateArn"].as_str().unwrap().to_string();
    assert_eq!(cert_arn, arn(&format!("cert/{cert_id}")));

    let principal = env
        .send(
            "PUT",
            "/things/sensor-1/principals",
            None,
            &[("x-amzn-principal", cert_arn.as_str())],
            Signing::default(),
        )
        .await
        .ok();
    assert_eq!(principal, json!({}));
    let record = env
        .hub
        .with_registry(|r| r.certificate(&cert_id).cloned())
        .expect("attached: registered in the hub");
    assert_eq!(record.device, "sensor-1");
    assert_eq!(record.state, CertificateState::Active);

    // The device connects with exactly what the control plane handed out.
    let key = SoftwareKey::from_pem(keys["keyPair"]["PrivateKey"].as_str().unwrap()).unwrap();
    let credential =
        X509Credential::from_pem(keys["certificatePem"].as_str().unwrap(), Arc::new(key)).unwrap();
    let (client, mut ev) = AsyncClient::new(mqtt_options(&env.hub, "sensor-1", &credential), 10);
    connected(&mut ev).await;
    client
        .publish("sensors/sensor-1/temp", QoS::AtLeastOnce, false, "21.5")
        .await
        .unwrap();
    acked(&mut ev).await;

    // Revocation through the control plane drops it, and it cannot come back.
    env.call(
        "PUT",
        &format!("/certificates/{cert_id}?newStatus=REVOKED"),
        None,
    )
    .await
    .ok();
    fails(&mut ev).await;
    let (_again, mut ev) = AsyncClient::new(mqtt_options(&env.hub, "sensor-1", &credential), 10);
    fails(&mut ev).await;
    let described = env
        .call("GET", &format!("/certificates/{cert_id}"), None)
        .await
        .ok();
    assert_eq!(described["certificateDescription"]["status"], "REVOKED");
    env.call(
        "PUT",
        &format!("/certificates/{cert_id}?newStatus=ACTIVE"),
        None,
    )
    .await
    .fails(406, "CertificateStateException");
}

#[tokio::test]
async fn things_and_groups_answer_in_aws_shapes() {
    let env = Env::start().await;
    let body = json!({"thingTypeName": "lamp", "attributePayload": {"attributes": {"room": "7", "color": "red"}}});
    let created = env
        .call("POST", "/things/lamp-7", Some(body.clone()))
        .await
        .ok();
    let thing_id = created["thingId"].as_str().unwrap().to_string();
    assert_eq!(
        created,
        json!({"thingName": "lamp-7", "thingArn": arn("thing/lamp-7"), "thingId": thing_id})
    );
    assert_eq!(thing_id.len(), 36);
    assert_eq!(thing_id.matches('-').count(), 4);

    // The same configuration again succeeds with the same answer (AWS's documented
    // idempotence); a different one is a conflict, and the thing is unchanged.
    assert_eq!(
        env.call("POST", "/things/lamp-7", Some(body)).await.ok(),
        created
    );
    let conflict = env
        .call(
            "POST",
            "/things/lamp-7",
            Some(json!({"thingTypeName": "heater"})),
        )
        .await
        .fails(409, "ResourceAlreadyExistsException");
    assert_eq!(conflict["resourceId"], thing_id.as_str());
    assert_eq!(conflict["resourceArn"], arn("thing/lamp-7"));
    assert_eq!(
        env.device("lamp-7").unwrap().thing_type.as_deref(),
        Some("lamp")
    );

    let described = env.call("GET", "/things/lamp-7", None).await.ok();
    assert_eq!(
        described,
        json!({
            "defaultClientId": "lamp-7",
            "thingName": "lamp-7",
            "thingId": thing_id,
            "thingArn": arn("thing/lamp-7"),
            "thingTypeName": "lamp",
            "attributes": {"room": "7", "color": "red"},
            "version": 1,
        })
    );
    env.call("GET", "/things/nobody", None)
        .await
        .fails(404, "ResourceNotFoundException");

    let group = env.call("POST", "/thing-groups/hall", None).await.ok();
    let group_id = group["thingGroupId"].as_str().unwrap().to_string();
    assert_eq!(
        group,
        json!({"thingGroupName": "hall", "thingGroupArn": arn("thinggroup/hall"), "thingGroupId": group_id})
    );
    let described = env.call("GET", "/thing-groups/hall", None).await.ok();
    assert_eq!(described["thingGroupName"], "hall");
    assert_eq!(described["thingGroupId"], group_id.as_str());
    assert_eq!(described["thingGroupArn"], arn("thinggroup/hall"));
    assert_eq!(described["version"], 1);
    assert!(described["thingGroupMetadata"]["creationDate"].is_i64());
    env.call("GET", "/thing-groups/nowhere", None)
        .await
        .fails(404, "ResourceNotFoundException");

    // Added by ARN, listed by name.
    env.call(
        "PUT",
        "/thing-groups/addThingToThingGroup",
        Some(json!({"thingGroupArn": arn("thinggroup/hall"), "thingArn": arn("thing/lamp-7")})),
    )
    .await
    .ok();
    let listed = env
        .call("GET", "/things/lamp-7/thing-groups", None)
        .await
        .ok();
    assert_eq!(
        listed,
        json!({"thingGroups": [{"groupName": "hall", "groupArn": arn("thinggroup/hall")}]})
    );
    env.call(
        "PUT",
        "/thing-groups/addThingToThingGroup",
        Some(json!({"thingGroupName": "nowhere", "thingName": "lamp-7"})),
    )
    .await
    .fails(404, "ResourceNotFoundException");
    env.call(
        "PUT",
        "/thing-groups/addThingToThingGroup",
        Some(json!({"thingGroupName": "hall", "thingName": "nobody"})),
    )
    .await
    .fails(404, "ResourceNotFoundException");
    env.call("GET", "/things/nobody/thing-groups", None)
        .await
        .fails(404, "ResourceNotFoundException");
}

#[tokio::test]
async fn certificates_from_keys_and_from_a_csr() {
    let env = Env::start().await;
    let keys = env.call("POST", "/keys-and-certificate", None).await.ok();
    let mut fields: Vec<&str> = keys
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "certificateArn",
            "certificateId",
            "certificatePem",
            "keyPair"
        ]
    );
    let cert = Certificate::from_pem(keys["certificatePem"].as_str().unwrap()).unwrap();
    let id = cert.fingerprint_sha256();
    assert_eq!(keys["certificateId"], id.as_str());
    assert_eq!(cert.subject_common_name(), Some("AWS IoT Certificate"));
    assert_eq!(cert.issuer(), env.hub.ca_certificate().subject());
    let key = SoftwareKey::from_pem(keys["keyPair"]["PrivateKey"].as_str().unwrap()).unwrap();
    assert_eq!(key.public_key_spki(), cert.public_key_spki());
    assert_eq!(keys["keyPair"]["PublicKey"], key.public_key_pem().as_str());

    // Not attached to any thing: the hub does not know it, the control plane does.
    assert!(env.hub.with_registry(|r| r.certificate(&id).is_none()));
    let described = env
        .call("GET", &format!("/certificates/{id}"), None)
        .await
        .ok();
    let d = &described["certificateDescription"];
    assert_eq!(d["certificateId"], id.as_str());
    assert_eq!(d["certificateArn"], arn(&format!("cert/{id}")));
    assert_eq!(d["status"], "INACTIVE", "setAsActive defaults to false");
    assert_eq!(d["ownedBy"], ACCOUNT);
    assert_eq!(d["certificatePem"], cert.to_pem().as_str());
    assert!(d["creationDate"].is_i64());
    assert_eq!(d["validity"]["notAfter"], cert.not_after().unix_timestamp());
    assert!(d.get("caCertificateId").is_none());

    // Upper case and 0x are accepted; status changes work before attachment too.
    env.call(
        "PUT",
        &format!("/certificates/0x{}?newStatus=ACTIVE", id.to_uppercase()),
        None,
    )
    .await
    .ok();
    let described = env
        .call("GET", &format!("/certificates/{id}"), None)
        .await
        .ok();
    assert_eq!(described["certificateDescription"]["status"], "ACTIVE");
    env.call(
        "PUT",
        &format!("/certificates/{id}?newStatus=PENDING_TRANSFER"),
        None,
    )
    .await
    .fails(400, "InvalidRequestException");
    env.call("GET", &format!("/certificates/{}", "ab".repeat(32)), None)
        .await
        .fails(404, "ResourceNotFoundException");
    env.call("GET", "/certificates/not-an-id", None)
        .await
        .fails(400, "InvalidRequestException");

    // From a CSR: the subject and key are the CSR's.
    let device_key = Arc::new(SoftwareKey::generate_p256().unwrap());
    let csr = build_csr(device_key.clone(), &DeviceId::new("meter-9").unwrap()).unwrap();
    let issued = env
        .call(
            "POST",
            "/certificates?setAsActive=true",
            Some(json!({"certificateSigningRequest": csr.to_pem()})),
        )
        .await
        .ok();
    let mut fields: Vec<&str> = issued
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        ["certificateArn", "certificateId", "certificatePem"]
    );
    let cert = Certificate::from_pem(issued["certificatePem"].as_str().unwrap()).unwrap();
    assert_eq!(cert.subject_common_name(), Some("meter-9"));
    assert_eq!(cert.public_key_spki(), device_key.public_key_spki());
    let described = env
        .call(
            "GET",
            &format!("/certificates/{}", cert.fingerprint_sha256()),
            None,
        )
        .await
        .ok();
    assert_eq!(described["certificateDescription"]["status"], "ACTIVE");

    // A CSR whose signature does not verify is refused, and nothing is issued.
    let mut der = csr.der().to_vec();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    env.call(
        "POST",
        "/certificates",
        Some(json!({"certificateSigningRequest": tampered})),
    )
    .await
    .fails(400, "InvalidRequestException");
    env.call("POST", "/certificates", Some(json!({})))
        .await
        .fails(400, "InvalidRequestException");
}

/// A CA the test owns, and a certificate under it for the registration code.
fn acme_ca(name: &str) -> CertificateAuthority {
    CertificateAuthority::new_root(&CaOptions::new(name)).unwrap()
}

fn issued_by(ca: &CertificateAuthority, cn: &str) -> Certificate {
    let key = SoftwareKey::generate_p256().unwrap();
    ca.issue(
        &DeviceId::with_rule(cn, IdRule::Azure).unwrap(),
        key.public_key_spki(),
        &DeviceCertOptions::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn ca_certificates_with_and_without_a_verification_certificate() {
    let env = Env::start().await;
    let code = env.call("GET", "/registrationcode", None).await.ok();
    let code = code["registrationCode"].as_str().unwrap().to_string();
    assert_eq!(code.len(), 64);
    assert_eq!(
        env.call("GET", "/registrationcode", None).await.ok()["registrationCode"],
        code.as_str(),
        "one code per hub"
    );

    let acme = acme_ca("Acme Devices");
    let acme_pem = acme.certificate().to_pem();
    let acme_id = acme.certificate().fingerprint_sha256();

    // Proofs that fail: wrong code, signed by another key, none at all. Nothing registered.
    let wrong_code = issued_by(&acme, "not-the-code");
    env.call(
        "POST",
        "/cacertificate",
        Some(json!({"caCertificate": acme_pem, "verificationCertificate": wrong_code.to_pem()})),
    )
    .await
    .fails(400, "RegistrationCodeValidationException");
    let impostor = acme_ca("Acme Devices");
    let foreign = issued_by(&impostor, &code);
    env.call(
        "POST",
        "/cacertificate",
        Some(json!({"caCertificate": acme_pem, "verificationCertificate": foreign.to_pem()})),
    )
    .await
    .fails(400, "CertificateValidationException");
    env.call(
        "POST",
        "/cacertificate",
        Some(json!({"caCertificate": acme_pem})),
    )
    .await
    .fails(400, "InvalidRequestException");
    env.call(
        "POST",
        "/cacertificate",
        Some(json!({"caCertificate": issued_by(&acme, "leaf").to_pem(), "certificateMode": "SNI_ONLY"})),
    )
    .await
    .fails(400, "CertificateValidationException");
    assert!(env.hub.trust_store().ca(&acme_id).is_none());

    // With the right proof, INACTIVE by default.
    let proof = issued_by(&acme, &code);
    let registered = env
        .call(
            "POST",
            "/cacertificate?allowAutoRegistration=true",
            Some(json!({"caCertificate": acme_pem, "verificationCertificate": proof.to_pem()})),
        )
        .await
        .ok();
    assert_eq!(
        registered,
        json!({"certificateArn": arn(&format!("cacert/{acme_id}")), "certificateId": acme_id})
    );
    assert_eq!(
        env.hub.trust_store().ca(&acme_id).unwrap().1,
        CaStatus::Inactive
    );
    let described = env
        .call("GET", &format!("/cacertificate/{acme_id}"), None)
        .await
        .ok();
    let d = &described["certificateDescription"];
    assert_eq!(d["status"], "INACTIVE");
    assert_eq!(d["certificateId"], acme_id.as_str());
    assert_eq!(d["certificatePem"], acme_pem.as_str());
    assert_eq!(d["autoRegistrationStatus"], "ENABLE");
    assert_eq!(d["certificateMode"], "DEFAULT");
    assert_eq!(d["ownedBy"], ACCOUNT);
    env.call(
        "POST",
        "/cacertificate",
        Some(json!({"caCertificate": acme_pem, "verificationCertificate": proof.to_pem()})),
    )
    .await
    .fails(409, "ResourceAlreadyExistsException");

    let updated = env
        .call(
            "PUT",
            &format!("/cacertificate/{acme_id}?newStatus=ACTIVE"),
            None,
        )
        .await;
    assert_eq!(updated.ok(), Value::Null);
    assert_eq!(
        env.hub.trust_store().ca(&acme_id).unwrap().1,
        CaStatus::Active
    );
    env.call(
        "PUT",
        &format!("/cacertificate/{acme_id}?newStatus=REVOKED"),
        None,
    )
    .await
    .fails(400, "InvalidRequestException");
    env.call("GET", &format!("/cacertificate/{}", "cd".repeat(32)), None)
        .await
        .fails(404, "ResourceNotFoundException");

    // SNI_ONLY: no proof, and then none may be given.
    let other = acme_ca("Other Devices");
    let other_id = other.certificate().fingerprint_sha256();
    env.call(
        "POST",
        "/cacertificate?setAsActive=true",
        Some(
            json!({"caCertificate": other.certificate().to_pem(), "certificateMode": "SNI_ONLY",
                    "verificationCertificate": issued_by(&other, &code).to_pem()}),
        ),
    )
    .await
    .fails(400, "InvalidRequestException");
    env.call(
        "POST",
        "/cacertificate?setAsActive=true",
        Some(json!({"caCertificate": other.certificate().to_pem(), "certificateMode": "SNI_ONLY"})),
    )
    .await
    .ok();
    assert_eq!(
        env.hub.trust_store().ca(&other_id).unwrap().1,
        CaStatus::Active
    );
    let described = env
        .call("GET", &format!("/cacertificate/{other_id}"), None)
        .await
        .ok();
    assert_eq!(
        described["certificateDescription"]["certificateMode"],
        "SNI_ONLY"
    );

    // RegisterCertificate: a certificate from a registered CA (named or found)...
    let device_cert = issued_by(&acme, "acme-7");
    let device_id = device_cert.fingerprint_sha256();
    let registered = env
        .call(
            "POST",
            "/certificate/register",
            Some(json!({"certificatePem": device_cert.to_pem(), "caCertificatePem": acme_pem, "status": "ACTIVE"})),
        )
        .await
        .ok();
    assert_eq!(
        registered,
        json!({"certificateArn": arn(&format!("cert/{device_id}")), "certificateId": device_id})
    );
    let described = env
        .call("GET", &format!("/certificates/{device_id}"), None)
        .await
        .ok();
    assert_eq!(
        described["certificateDescription"]["caCertificateId"],
        acme_id.as_str()
    );
    assert_eq!(described["certificateDescription"]["status"], "ACTIVE");
    env.call(
        "POST",
        "/certificate/register",
        Some(json!({"certificatePem": device_cert.to_pem()})),
    )
    .await
    .fails(409, "ResourceAlreadyExistsException");
    let found = issued_by(&acme, "acme-8");
    env.call(
        "POST",
        "/certificate/register?setAsActive=true",
        Some(json!({"certificatePem": found.to_pem()})),
    )
    .await
    .ok();
    let described = env
        .call(
            "GET",
            &format!("/certificates/{}", found.fingerprint_sha256()),
            None,
        )
        .await
        .ok();
    assert_eq!(described["certificateDescription"]["status"], "ACTIVE");

    // ...but not one from an unknown issuer, or one the named CA did not sign.
    let stranger = issued_by(&acme_ca("Stranger"), "x-1");
    env.call(
        "POST",
        "/certificate/register",
        Some(json!({"certificatePem": stranger.to_pem()})),
    )
    .await
    .fails(400, "CertificateValidationException");
    env.call(
        "POST",
        "/certificate/register",
        Some(json!({"certificatePem": stranger.to_pem(), "caCertificatePem": acme_pem})),
    )
    .await
    .fails(400, "CertificateValidationException");
    env.call(
        "GET",
        &format!("/certificates/{}", stranger.fingerprint_sha256()),
        None,
    )
    .await
    .fails(404, "ResourceNotFoundException");
    env.call(
        "POST",
        "/certificate/register",
        Some(json!({"certificatePem": "not a certificate"})),
    )
    .await
    .fails(400, "CertificateValidationException");
}

#[tokio::test]
async fn policies_versions_and_attachments() {
    let env = Env::start().await;
    let created = env
        .call(
            "POST",
            "/policies/p1",
            Some(json!({"policyDocument": DEVICE_POLICY})),
        )
        .await
        .ok();
    assert_eq!(
        created,
        json!({"policyName": "p1", "policyArn": arn("policy/p1"), "policyDocument": DEVICE_POLICY, "policyVersionId": "1"})
    );
    let duplicate = env
        .call(
            "POST",
            "/policies/p1",
            Some(json!({"policyDocument": DEVICE_POLICY})),
        )
        .await
        .fails(409, "ResourceAlreadyExistsException");
    assert_eq!(duplicate["resourceArn"], arn("policy/p1"));

    let malformed = env
        .call(
            "POST",
            "/policies/p2",
            Some(json!({"policyDocument": "{\"Statement\": 7}"})),
        )
        .await
        .fails(400, "MalformedPolicyException");
    assert!(!malformed["message"].as_str().unwrap().is_empty());
    assert!(
        env.hub
            .with_registry(|r| r.policies().policy("p2").is_err())
    );

    let version = env
        .call(
            "POST",
            "/policies/p1/version?setAsDefault=true",
            Some(json!({"policyDocument": DEVICE_POLICY})),
        )
        .await
        .ok();
    assert_eq!(
        version,
        json!({"policyArn": arn("policy/p1"), "policyDocument": DEVICE_POLICY, "policyVersionId": "2", "isDefaultVersion": true})
    );
    env.call(
        "POST",
        "/policies/p1/version",
        Some(json!({"policyDocument": DEVICE_POLICY})),
    )
    .await
    .fails(400, "InvalidRequestException");
    for _ in 3..=5 {
        env.call(
            "POST",
            "/policies/p1/version?setAsDefault=true",
            Some(json!({"policyDocument": DEVICE_POLICY})),
        )
        .await
        .ok();
    }
    env.call(
        "POST",
        "/policies/p1/version?setAsDefault=true",
        Some(json!({"policyDocument": DEVICE_POLICY})),
    )
    .await
    .fails(409, "VersionsLimitExceededException");
    env.call(
        "POST",
        "/policies/none/version?setAsDefault=true",
        Some(json!({"policyDocument": DEVICE_POLICY})),
    )
    .await
    .fails(404, "ResourceNotFoundException");

    // Targets: a known certificate (attached or not) and a thing group.
    let keys = env.call("POST", "/keys-and-certificate", None).await.ok();
    let cert_arn = keys["certificateArn"].as_str().unwrap().to_string();
    let cert_id = keys["certificateId"].as_str().unwrap().to_string();
    assert_eq!(
        env.call(
            "PUT",
            "/target-policies/p1",
            Some(json!({"target": cert_arn}))
        )
        .await
        .ok(),
        Value::Null
    );
    let cert_target = fleetkit::policy::AttachTarget::Certificate(cert_id.clone());
    assert!(
        env.hub
            .with_registry(|r| r.policies().targets_of("p1").contains(&cert_target))
    );
    env.call(
        "PUT",
        "/target-policies/p1",
        Some(json!({"target": cert_arn})),
    )
    .await
    .ok();
    assert_eq!(
        env.call(
            "POST",
            "/target-policies/p1",
            Some(json!({"target": cert_arn}))
        )
        .await
        .ok(),
        Value::Null
    );
    assert!(
        !env.hub
            .with_registry(|r| r.policies().targets_of("p1").contains(&cert_target))
    );

    env.call(
        "PUT",
        "/target-policies/p1",
        Some(json!({"target": arn("thinggroup/none")})),
    )
    .await
    .fails(404, "ResourceNotFoundException");
    env.call(
        "PUT",
        "/target-policies/p1",
        Some(json!({"target": arn(&format!("cert/{}", "ef".repeat(32)))})),
    )
    .await
    .fails(404, "ResourceNotFoundException");
    env.call(
        "PUT",
        "/target-policies/none",
        Some(json!({"target": cert_arn})),
    )
    .await
    .fails(404, "ResourceNotFoundException");
    for other in [
        arn("thing/sensor-1"),
        "arn:aws:iam::123456789012:role/x".to_string(),
        "us-east-1:cognito-id".to_string(),
        format!("arn:aws:iot:eu-west-1:{ACCOUNT}:cert/{cert_id}"),
    ] {
        env.call("PUT", "/target-policies/p1", Some(json!({"target": other})))
            .await
            .fails(400, "InvalidRequestException");
    }
}

#[tokio::test]
async fn group_policies_reach_members_added_later_and_leave_with_detach() {
    let env = Env::start().await;
    env.call("POST", "/things/t-1", None).await.ok();
    env.call("POST", "/thing-groups/g", None).await.ok();
    env.call(
        "POST",
        "/policies/gp",
        Some(json!({"policyDocument": DEVICE_POLICY})),
    )
    .await
    .ok();
    env.call(
        "PUT",
        "/target-policies/gp",
        Some(json!({"target": arn("thinggroup/g")})),
    )
    .await
    .ok();
    let keys = env
        .call("POST", "/keys-and-certificate?setAsActive=true", None)
        .await
        .ok();
    let cert_arn = keys["certificateArn"].as_str().unwrap();
    env.send(
        "PUT",
        "/things/t-1/principals",
        None,
        &[("x-amzn-principal", cert_arn)],
        Signing::default(),
    )
    .await
    .ok();
    let key = SoftwareKey::from_pem(keys["keyPair"]["PrivateKey"].as_str().unwrap()).unwrap();
    let credential =
        X509Credential::from_pem(keys["certificatePem"].as_str().unwrap(), Arc::new(key)).unwrap();

    // Not in the group yet: no policy, no connection.
    let (_c, mut ev) = AsyncClient::new(mqtt_options(&env.hub, "t-1", &credential), 10);
    fails(&mut ev).await;

    env.call(
        "PUT",
        "/thing-groups/addThingToThingGroup",
        Some(json!({"thingGroupName": "g", "thingName": "t-1"})),
    )
    .await
    .ok();
    let (_c, mut ev) = AsyncClient::new(mqtt_options(&env.hub, "t-1", &credential), 10);
    connected(&mut ev).await;
    drop(ev);

    env.call(
        "POST",
        "/target-policies/gp",
        Some(json!({"target": arn("thinggroup/g")})),
    )
    .await
    .ok();
    assert!(
        env.hub
            .with_registry(|r| r.policies().targets_of("gp").is_empty())
    );
    let (_c, mut ev) = AsyncClient::new(mqtt_options(&env.hub, "t-1", &credential), 10);
    fails(&mut ev).await;
}

#[tokio::test]
async fn attach_thing_principal_binds_the_certificate_with_its_status() {
    let env = Env::start().await;
    env.call("POST", "/things/a-1", None).await.ok();
    env.call("POST", "/things/a-2", None).await.ok();
    let keys = env.call("POST", "/keys-and-certificate", None).await.ok();
    let cert_arn = keys["certificateArn"].as_str().unwrap().to_string();
    let id = keys["certificateId"].as_str().unwrap().to_string();
    let attach = |thing: &'static str, principal: String| {
        let env = &env;
        async move {
            env.send(
                "PUT",
                &format!("/things/{thing}/principals"),
                None,
                &[("x-amzn-principal", principal.as_str())],
                Signing::default(),
            )
            .await
        }
    };
    attach("nobody", cert_arn.clone())
        .await
        .fails(404, "ResourceNotFoundException");
    attach("a-1", arn(&format!("cert/{}", "01".repeat(32))))
        .await
        .fails(404, "ResourceNotFoundException");
    attach("a-1", arn("thing/a-2"))
        .await
        .fails(400, "InvalidRequestException");
    env.send(
        "PUT",
        "/things/a-1/principals",
        None,
        &[],
        Signing::default(),
    )
    .await
    .fails(400, "InvalidRequestException");
    assert!(env.hub.with_registry(|r| r.certificate(&id).is_none()));

    attach("a-1", cert_arn.clone()).await.ok();
    let state = env
        .hub
        .with_registry(|r| r.certificate(&id).map(|c| c.state));
    assert_eq!(
        state,
        Some(CertificateState::Inactive),
        "INACTIVE as created"
    );
    attach("a-1", cert_arn.clone()).await.ok();
    attach("a-2", cert_arn.clone())
        .await
        .fails(400, "InvalidRequestException");

    env.call("PUT", &format!("/certificates/{id}?newStatus=ACTIVE"), None)
        .await
        .ok();
    let state = env
        .hub
        .with_registry(|r| r.certificate(&id).map(|c| c.state));
    assert_eq!(state, Some(CertificateState::Active));
    let described = env
        .call("GET", &format!("/certificates/{id}"), None)
        .await
        .ok();
    assert_eq!(described["certificateDescription"]["status"], "ACTIVE");
}

#[tokio::test]
async fn describe_endpoint_and_request_errors() {
    let env = Env::start().await;
    for kind in [
        "iot:Data-ATS",
        "iot:Data",
        "iot:CredentialProvider",
        "iot:Jobs",
    ] {
        let answer = env
            .call("GET", &format!("/endpoint?endpointType={kind}"), None)
            .await
            .ok();
        assert_eq!(answer, json!({"endpointAddress": "iot.local.test"}));
    }
    env.call("GET", "/endpoint", None).await.ok();
    env.call("GET", "/endpoint?endpointType=iot:Nothing", None)
        .await
        .fails(400, "InvalidRequestException");

    env.call("GET", "/no/such/operation", None)
        .await
        .fails(404, "UnknownOperationException");
    env.call("DELETE", "/things/x", None)
        .await
        .fails(404, "UnknownOperationException");

    let not_json = env
        .send(
            "POST",
            "/things/j-1",
            Some(b"{not json".to_vec()),
            &[],
            Signing::default(),
        )
        .await;
    not_json.fails(400, "SerializationException");
    env.call(
        "POST",
        "/things/j-1",
        Some(json!({"attributePayload": {"attributes": "oops"}})),
    )
    .await
    .fails(400, "SerializationException");
    assert!(env.device("j-1").is_none());
    env.call("POST", "/things/bad%2Fname", None)
        .await
        .fails(400, "InvalidRequestException");
    env.call(
        "POST",
        "/things/k-1",
        Some(json!({"attributePayload": {"attributes": {"bad key": "v"}}})),
    )
    .await
    .fails(400, "InvalidRequestException");

    let huge = vec![b' '; 129 * 1024];
    env.send("POST", "/things/h-1", Some(huge), &[], Signing::default())
        .await
        .fails(413, "RequestEntityTooLargeException");
    assert!(env.device("h-1").is_none());
}

#[tokio::test]
async fn refused_signatures_change_nothing() {
    let env = Env::start().await;
    let body = Some(json!({"thingTypeName": "t"}).to_string().into_bytes());
    let try_create = |signing: Signing| {
        let env = &env;
        let body = body.clone();
        async move {
            env.send("POST", "/things/intruder", body, &[], signing)
                .await
        }
    };

    try_create(Signing {
        credentials: None,
        ..Signing::default()
    })
    .await
    .fails(403, "MissingAuthenticationTokenException");
    try_create(Signing {
        credentials: Some(AwsCredentials::new(AKID, "wrong-secret")),
        ..Signing::default()
    })
    .await
    .fails(403, "InvalidSignatureException");
    try_create(Signing {
        credentials: Some(AwsCredentials::new("AKIDUNKNOWN", SECRET)),
        ..Signing::default()
    })
    .await
    .fails(403, "UnrecognizedClientException");
    try_create(Signing {
        region: "eu-west-1",
        ..Signing::default()
    })
    .await
    .fails(403, "InvalidSignatureException");
    try_create(Signing {
        service: "iotdata",
        ..Signing::default()
    })
    .await
    .fails(403, "InvalidSignatureException");
    let late = try_create(Signing {
        time: SystemTime::now() - Duration::from_secs(10 * 60),
        ..Signing::default()
    })
    .await
    .fails(403, "InvalidSignatureException");
    assert!(late["message"].as_str().unwrap().contains("skew"), "{late}");
    try_create(Signing {
        time: SystemTime::now() + Duration::from_secs(10 * 60),
        ..Signing::default()
    })
    .await
    .fails(403, "InvalidSignatureException");
    try_create(Signing {
        credentials: Some(AwsCredentials::new(AKID, SECRET).with_session_token("unexpected")),
        ..Signing::default()
    })
    .await
    .fails(403, "UnrecognizedClientException");

    // A body changed after signing.
    let url = format!("{}/things/intruder", env.plane.url());
    let signed = sign_headers(
        &AwsCredentials::new(AKID, SECRET),
        REGION,
        "iot",
        "POST",
        &url,
        &[],
        b"{}",
        SystemTime::now(),
    )
    .unwrap();
    let mut request = env.http.post(&url).body(r#"{"thingTypeName":"evil"}"#);
    for (n, v) in &signed {
        request = request.header(n.as_str(), v.as_str());
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status().as_u16(), 403);
    assert_eq!(
        response.headers()["x-amzn-ErrorType"].to_str().unwrap(),
        "InvalidSignatureException"
    );

    // Unsigned requests to unknown paths learn nothing about routes.
    env.send(
        "GET",
        "/no/such/operation",
        None,
        &[],
        Signing {
            credentials: None,
            ..Signing::default()
        },
    )
    .await
    .fails(403, "MissingAuthenticationTokenException");
    // A refused certificate request issues nothing.
    env.send(
        "POST",
        "/keys-and-certificate?setAsActive=true",
        None,
        &[],
        Signing {
            credentials: Some(AwsCredentials::new(AKID, "wrong-secret")),
            ..Signing::default()
        },
    )
    .await
    .fails(403, "InvalidSignatureException");

    assert!(env.device("intruder").is_none());
    env.call("GET", "/things/intruder", None)
        .await
        .fails(404, "ResourceNotFoundException");
    // And the real credentials still work.
    env.send(
        "POST",
        "/things/intruder",
        body.clone(),
        &[],
        Signing::default(),
    )
    .await
    .ok();
}

#[tokio::test]
async fn start_refuses_bad_options() {
    let hub = Arc::new(LocalHub::builder().start().await.unwrap());
    let good = || ControlPlaneOptions::new().credentials(AwsCredentials::new(AKID, SECRET));
    let cases = [
        good().bind("0.0.0.0:0".parse().unwrap()),
        ControlPlaneOptions::new(),
        good().account_id("12345"),
        good().region("US East"),
        good().endpoint_address("a host"),
    ];
    for options in cases {
        let shown = format!("{options:?}");
        assert!(!shown.contains(SECRET), "{shown}");
        let err = AwsControlPlane::start(hub.clone(), options)
            .await
            .unwrap_err();
        assert!(matches!(err, fleetkit::Error::InvalidInput { .. }), "{err}");
    }
    let plane = AwsControlPlane::start(hub.clone(), good()).await.unwrap();
    let addr = plane.addr();
    assert_eq!(plane.url(), format!("https://{addr}"));
    assert_eq!(plane.region(), REGION);
    assert_eq!(plane.account_id(), ACCOUNT);
    plane.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
