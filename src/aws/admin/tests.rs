//! AwsAdmin against a fake AWS IoT control plane on loopback: HTTP/1.1 over TLS from a test
//! CA, recording each request, checking its SigV4 signature as received, and answering with
//! canned AWS responses.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustls::ServerConfig;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::*;
use crate::auth::sigv4::{SignedRequest, Verifier};
use crate::identity::{DeviceId, Signer as _, SoftwareKey, TlsSigningKey};
use crate::pki::{CaOptions, CertificateAuthority, CrlOptions, DeviceCertOptions};
use crate::policy::builtin;

const REGION: &str = "eu-west-1";
const ACCESS_KEY: &str = "AKIDFLEETKITTEST";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYSECRETKEY";
const TOKEN: &str = "IQoJb3JpZ2luSESSIONTOKEN/xyz+==";
const ACCOUNT_ARN: &str = "arn:aws:iot:eu-west-1:123456789012";

// ------------------------------------------------------------------------------------------
// The fake control plane
// ------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Recorded {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The result of verifying the signature as received.
    signature: std::result::Result<(), String>,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    fn line(&self) -> String {
        if self.query.is_empty() {
            format!("{} {}", self.method, self.path)
        } else {
            format!("{} {}?{}", self.method, self.path, self.query)
        }
    }
}

enum Reply {
    Ok(Value),
    /// An AWS error: status, `x-amzn-ErrorType`, body.
    Error(u16, &'static str, Value),
    /// Status, headers and body as given.
    Raw(u16, Vec<(&'static str, String)>, Vec<u8>),
    /// Read the request, then close the connection without answering.
    Hangup,
}

type Handler = Arc<dyn Fn(&Recorded, usize) -> Reply + Send + Sync>;

struct FakeAws {
    port: u16,
    ca: CertificateAuthority,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: JoinHandle<()>,
}

impl Drop for FakeAws {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeAws {
    async fn start(handler: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static) -> Self {
        let ca = CertificateAuthority::new_root(&CaOptions::new("Fake AWS CA")).unwrap();
        let (chain, key) = crate::local::tls::issue_server_certificate(&ca, &[]).unwrap();
        let key: Arc<dyn rustls::sign::SigningKey> = Arc::new(TlsSigningKey::new(key));
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(SingleCertAndKey::from(CertifiedKey::new(
                    chain, key,
                ))));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let verifier = Verifier::with_credentials(
            REGION,
            ["iot"],
            [AwsCredentials::new(ACCESS_KEY, SECRET).with_session_token(TOKEN)],
        );
        let count = Arc::new(AtomicUsize::new(0));
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let handler = handler.clone();
                let verifier = verifier.clone();
                let recorded = recorded.clone();
                let count = count.clone();
                tokio::spawn(async move {
                    let Ok(mut stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Some(mut request) = read_request(&mut stream).await else {
                        return;
                    };
                    let signed = SignedRequest {
                        method: &request.method,
                        path: &request.path,
                        query: &request.query,
                        headers: &request.headers,
                        body: &request.body,
                    };
                    request.signature = verifier
                        .verify(&signed, OffsetDateTime::now_utc())
                        .map(drop)
                        .map_err(|e| e.to_string());
                    let index = count.fetch_add(1, Ordering::SeqCst);
                    recorded.lock().unwrap().push(request.clone());
                    let (status, headers, body) = match handler(&request, index) {
                        Reply::Ok(v) => (200, vec![], v.to_string().into_bytes()),
                        Reply::Error(status, code, v) => (
                            status,
                            vec![(
                                "x-amzn-ErrorType",
                                format!(
                                    "{code}:http://internal.amazon.com/coral/com.amazonaws.iot/"
                                ),
                            )],
                            v.to_string().into_bytes(),
                        ),
                        Reply::Raw(status, headers, body) => (status, headers, body),
                        Reply::Hangup => return,
                    };
                    let mut response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n",
                        body.len()
                    );
                    for (n, v) in headers {
                        response.push_str(&format!("{n}: {v}\r\n"));
                    }
                    response.push_str("\r\n");
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.write_all(&body).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        FakeAws {
            port,
            ca,
            requests,
            task,
        }
    }

    fn config(&self) -> AwsIot {
        AwsIot::builder()
            .region(REGION)
            .endpoint("a3qjexampleffp-ats.iot.eu-west-1.amazonaws.com")
            .root_ca(self.ca.certificate())
            .control_endpoint(format!("https://127.0.0.1:{}", self.port))
            .access_key_id(ACCESS_KEY)
            .secret_access_key(SECRET)
            .session_token(TOKEN)
            .build()
            .unwrap()
    }

    fn admin(&self) -> AwsAdmin {
        fast(self.config().admin().unwrap())
    }

    fn requests(&self) -> Vec<Recorded> {
        let requests = self.requests.lock().unwrap().clone();
        for r in &requests {
            assert_eq!(r.signature, Ok(()), "signature of {}", r.line());
            assert_eq!(r.header("x-amz-security-token"), Some(TOKEN));
            assert!(
                r.header("authorization")
                    .unwrap()
                    .starts_with(&format!("AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")),
            );
            assert!(
                r.header("authorization")
                    .unwrap()
                    .contains(&format!("/{REGION}/iot/aws4_request"))
            );
            if r.body.is_empty() {
                assert_eq!(r.header("content-type"), None, "{}", r.line());
            } else {
                assert_eq!(r.header("content-type"), Some("application/json"));
            }
        }
        requests
    }

    fn lines(&self) -> Vec<String> {
        self.requests().iter().map(Recorded::line).collect()
    }
}

/// Retries without the default delays.
fn fast(admin: AwsAdmin) -> AwsAdmin {
    admin
        .with_retry(
            BackoffConfig::new()
                .with_base(Duration::from_millis(1))
                .with_cap(Duration::from_millis(5)),
            5,
        )
        .unwrap()
}

async fn read_request<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Option<Recorded> {
    let mut buf = Vec::new();
    let end = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8(buf[..end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = buf[end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Recorded {
        method,
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body,
        signature: Err("not verified".into()),
    })
}

fn not_found(what: &str) -> Reply {
    Reply::Error(
        404,
        "ResourceNotFoundException",
        json!({ "message": format!("{what} does not exist") }),
    )
}

fn device_certificate(ca: &CertificateAuthority, device: &str) -> Certificate {
    let key = SoftwareKey::generate_p256().unwrap();
    ca.issue(
        &DeviceId::new(device).unwrap(),
        key.public_key_spki(),
        &DeviceCertOptions::default(),
    )
    .unwrap()
}

fn test_ca(name: &str) -> CertificateAuthority {
    CertificateAuthority::new_root(&CaOptions::new(name)).unwrap()
}

// ------------------------------------------------------------------------------------------
// FleetAdmin: what goes over the wire
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn create_device_creates_thing_missing_groups_and_memberships() {
    let aws = FakeAws::start(|r, _| match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/things/sensor-7") => Reply::Ok(json!({
            "thingName": "sensor-7",
            "thingArn": format!("{ACCOUNT_ARN}:thing/sensor-7"),
            "thingId": "abc",
        })),
        ("GET", "/thing-groups/line-2") => not_found("Thing group line-2"),
        ("POST", "/thing-groups/line-2") => Reply::Ok(json!({
            "thingGroupName": "line-2",
            "thingGroupArn": format!("{ACCOUNT_ARN}:thinggroup/line-2"),
            "thingGroupId": "g2",
        })),
        ("GET", "/thing-groups/plant-a") => Reply::Ok(json!({
            "thingGroupName": "plant-a",
            "thingGroupArn": format!("{ACCOUNT_ARN}:thinggroup/plant-a"),
            "thingGroupId": "ga",
            "version": 1,
        })),
        ("PUT", "/thing-groups/addThingToThingGroup") => Reply::Ok(json!({})),
        _ => Reply::Error(
            400,
            "InvalidRequestException",
            json!({"message": "unexpected"}),
        ),
    })
    .await;
    let mut device = DeviceRecord::new("sensor-7")
        .in_group("line-2")
        .in_group("plant-a")
        .with_attribute("model", "t1000")
        .with_attribute("site", "north");
    device.thing_type = Some("thermostat".into());
    aws.admin().create_device(device).await.unwrap();

    assert_eq!(
        aws.lines(),
        [
            "POST /things/sensor-7",
            "GET /thing-groups/line-2",
            "POST /thing-groups/line-2",
            "PUT /thing-groups/addThingToThingGroup",
            "GET /thing-groups/plant-a",
            "PUT /thing-groups/addThingToThingGroup",
        ]
    );
    let requests = aws.requests();
    assert_eq!(
        requests[0].json(),
        json!({
            "thingTypeName": "thermostat",
            "attributePayload": {"attributes": {"model": "t1000", "site": "north"}},
        })
    );
    assert!(requests[1].body.is_empty());
    assert_eq!(requests[2].json(), json!({}));
    assert_eq!(
        requests[3].json(),
        json!({"thingGroupName": "line-2", "thingName": "sensor-7"})
    );
    assert_eq!(
        requests[5].json(),
        json!({"thingGroupName": "plant-a", "thingName": "sensor-7"})
    );
}

#[tokio::test]
async fn create_device_without_type_or_attributes_sends_an_empty_object() {
    let aws = FakeAws::start(|_, _| {
        Reply::Ok(json!({"thingName": "d", "thingArn": "arn", "thingId": "1"}))
    })
    .await;
    aws.admin()
        .create_device(DeviceRecord::new("d"))
        .await
        .unwrap();
    let requests = aws.requests();
    assert_eq!(aws.lines(), ["POST /things/d"]);
    assert_eq!(requests[0].json(), json!({}));
}

#[tokio::test]
async fn create_device_passes_already_exists_through() {
    let aws = FakeAws::start(|_, _| {
        Reply::Error(
            409,
            "ResourceAlreadyExistsException",
            json!({"message": "Thing d already exists with different attributes",
                   "resourceId": "d-id", "resourceArn": "arn:thing/d"}),
        )
    })
    .await;
    let err = aws
        .admin()
        .create_device(DeviceRecord::new("d").in_group("g"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::AlreadyExists { what: "device", id } if id == "d-id"),
        "{err:?}"
    );
    assert_eq!(aws.lines(), ["POST /things/d"]);
}

#[tokio::test]
async fn device_reads_thing_and_every_page_of_groups() {
    let aws = FakeAws::start(|r, _| match (r.path.as_str(), r.query.as_str()) {
        ("/things/sensor-7", "") => Reply::Ok(json!({
            "thingName": "sensor-7",
            "thingId": "abc",
            "thingArn": format!("{ACCOUNT_ARN}:thing/sensor-7"),
            "thingTypeName": "thermostat",
            "attributes": {"site": "north", "model": "t1000"},
            "version": 3,
            "defaultClientId": "sensor-7",
        })),
        ("/things/sensor-7/thing-groups", "") => Reply::Ok(json!({
            "thingGroups": [{"groupName": "line-2", "groupArn": "arn:g/line-2"}],
            "nextToken": "page/2+",
        })),
        ("/things/sensor-7/thing-groups", "nextToken=page%2F2%2B") => Reply::Ok(json!({
            "thingGroups": [{"groupName": "plant-a", "groupArn": "arn:g/plant-a"}],
        })),
        _ => not_found("thing"),
    })
    .await;
    let device = aws.admin().device("sensor-7").await.unwrap();
    assert_eq!(
        device,
        DeviceRecord {
            id: "sensor-7".into(),
            thing_type: Some("thermostat".into()),
            attributes: vec![
                ("model".into(), "t1000".into()),
                ("site".into(), "north".into())
            ],
            groups: vec!["line-2".into(), "plant-a".into()],
            enabled: true,
        }
    );
    assert_eq!(
        aws.lines(),
        [
            "GET /things/sensor-7",
            "GET /things/sensor-7/thing-groups",
            "GET /things/sensor-7/thing-groups?nextToken=page%2F2%2B",
        ]
    );
}

#[tokio::test]
async fn unknown_device_is_not_found() {
    let aws = FakeAws::start(|_, _| not_found("Thing ghost")).await;
    let err = aws.admin().device("ghost").await.unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { what: "device", id } if id == "ghost"),
        "{err:?}"
    );
    // A 404 is an answer, not a failure: asked once.
    assert_eq!(aws.lines(), ["GET /things/ghost"]);
}

#[tokio::test]
async fn register_ca_uses_sni_only_mode_and_activates() {
    let aws = FakeAws::start(|_, _| {
        Reply::Ok(json!({"certificateArn": "arn:cacert/x", "certificateId": "x"}))
    })
    .await;
    let ca = test_ca("Fleet CA");
    aws.admin().register_ca(ca.certificate()).await.unwrap();
    let requests = aws.requests();
    assert_eq!(
        aws.lines(),
        ["POST /cacertificate?setAsActive=true&allowAutoRegistration=false"]
    );
    assert_eq!(
        requests[0].json(),
        json!({"caCertificate": ca.certificate().to_pem(), "certificateMode": "SNI_ONLY"})
    );
}

#[tokio::test]
async fn register_ca_with_verification_uses_default_mode() {
    let ca = test_ca("Fleet CA");
    let id = ca.certificate().fingerprint_sha256();
    let reply_id = id.clone();
    let aws = FakeAws::start(move |_, _| {
        Reply::Ok(json!({
            "certificateArn": format!("{ACCOUNT_ARN}:cacert/{reply_id}"),
            "certificateId": reply_id,
        }))
    })
    .await;
    let proof = device_certificate(&ca, "registration-code-123");
    let registered = aws
        .admin()
        .register_ca_with_verification(ca.certificate(), &proof)
        .await
        .unwrap();
    assert_eq!(registered.certificate_id, id);
    assert_eq!(
        registered.certificate_arn,
        format!("{ACCOUNT_ARN}:cacert/{id}")
    );
    assert_eq!(
        aws.requests()[0].json(),
        json!({
            "caCertificate": ca.certificate().to_pem(),
            "verificationCertificate": proof.to_pem(),
            "certificateMode": "DEFAULT",
        })
    );
}

#[tokio::test]
async fn register_ca_refuses_a_leaf_without_asking_aws() {
    let aws = FakeAws::start(|_, _| Reply::Ok(json!({}))).await;
    let leaf = device_certificate(&test_ca("CA"), "not-a-ca");
    let err = aws.admin().register_ca(&leaf).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    assert!(aws.lines().is_empty());
}

#[tokio::test]
async fn set_ca_status_updates_the_ca_and_refuses_revoked() {
    let aws = FakeAws::start(|_, _| Reply::Raw(200, vec![], Vec::new())).await;
    let ca = test_ca("Fleet CA");
    let id = ca.certificate().fingerprint_sha256();
    let admin = aws.admin();
    admin
        .set_ca_status(ca.certificate(), CaStatus::Inactive)
        .await
        .unwrap();
    admin
        .set_ca_status(ca.certificate(), CaStatus::Active)
        .await
        .unwrap();
    let err = admin
        .set_ca_status(ca.certificate(), CaStatus::Revoked)
        .await
        .unwrap_err();
    let Error::NotSupported(text) = &err else {
        panic!("{err:?}")
    };
    assert!(
        text.contains("ACTIVE or INACTIVE") && text.contains("revoke"),
        "{text}"
    );
    assert_eq!(
        aws.lines(),
        [
            format!("PUT /cacertificate/{id}?newStatus=INACTIVE"),
            format!("PUT /cacertificate/{id}?newStatus=ACTIVE"),
        ]
    );
    assert_eq!(aws.requests()[0].json(), json!({}));
}

#[tokio::test]
async fn register_certificate_registers_active_and_attaches_to_the_thing() {
    let ca = test_ca("Fleet CA");
    let cert = device_certificate(&ca, "sensor-7");
    let id = cert.fingerprint_sha256();
    let arn = format!("{ACCOUNT_ARN}:cert/{id}");
    let (reply_id, reply_arn) = (id.clone(), arn.clone());
    let aws = FakeAws::start(move |r, _| match r.method.as_str() {
        "POST" => Reply::Ok(json!({"certificateArn": reply_arn, "certificateId": reply_id})),
        _ => Reply::Ok(json!({})),
    })
    .await;
    let returned = aws
        .admin()
        .register_certificate(&cert, "sensor-7")
        .await
        .unwrap();
    assert_eq!(returned, id);
    assert_eq!(
        aws.lines(),
        [
            "POST /certificate/register?setAsActive=true",
            "PUT /things/sensor-7/principals",
        ]
    );
    let requests = aws.requests();
    assert_eq!(requests[0].json(), json!({"certificatePem": cert.to_pem()}));
    assert_eq!(requests[1].header("x-amzn-principal"), Some(arn.as_str()));
    assert!(requests[1].body.is_empty());
    // The principal header is signed.
    let authorization = requests[1].header("authorization").unwrap();
    assert!(
        authorization.contains("x-amzn-principal"),
        "{authorization}"
    );
}

#[tokio::test]
async fn set_certificate_state_sends_each_status() {
    let aws = FakeAws::start(|_, _| Reply::Raw(200, vec![], Vec::new())).await;
    let admin = aws.admin();
    let id = "a".repeat(64);
    for state in [
        CertificateState::Active,
        CertificateState::Inactive,
        CertificateState::Revoked,
    ] {
        admin.set_certificate_state(&id, state).await.unwrap();
    }
    assert_eq!(
        aws.lines(),
        [
            format!("PUT /certificates/{id}?newStatus=ACTIVE"),
            format!("PUT /certificates/{id}?newStatus=INACTIVE"),
            format!("PUT /certificates/{id}?newStatus=REVOKED"),
        ]
    );
    assert!(aws.requests().iter().all(|r| r.body.is_empty()));
}

#[tokio::test]
async fn put_policy_creates_then_adds_default_versions() {
    let exists = Arc::new(Mutex::new(false));
    let state = exists.clone();
    let aws = FakeAws::start(move |r, _| {
        let mut exists = state.lock().unwrap();
        match (r.path.as_str(), *exists) {
            ("/policies/device", false) => {
                *exists = true;
                Reply::Ok(json!({
                    "policyName": "device",
                    "policyArn": format!("{ACCOUNT_ARN}:policy/device"),
                    "policyDocument": r.json()["policyDocument"],
                    "policyVersionId": "1",
                }))
            }
            ("/policies/device", true) => Reply::Error(
                409,
                "ResourceAlreadyExistsException",
                json!({"message": "Policy cannot be created - name already exists (name=device)",
                       "resourceId": "device"}),
            ),
            ("/policies/device/version", true) => Reply::Ok(json!({
                "policyArn": format!("{ACCOUNT_ARN}:policy/device"),
                "policyDocument": r.json()["policyDocument"],
                "policyVersionId": "2",
                "isDefaultVersion": true,
            })),
            _ => not_found("policy"),
        }
    })
    .await;
    let admin = aws.admin();
    let document = builtin::aws_thing_scoped();
    assert_eq!(admin.put_policy("device", &document).await.unwrap(), 1);
    assert_eq!(admin.put_policy("device", &document).await.unwrap(), 2);
    assert_eq!(
        aws.lines(),
        [
            "POST /policies/device",
            "POST /policies/device",
            "POST /policies/device/version?setAsDefault=true",
        ]
    );
    let expected = json!({"policyDocument": document.to_aws_json().unwrap()});
    for r in aws.requests() {
        assert_eq!(r.json(), expected);
    }
}

#[tokio::test]
async fn put_policy_version_limit_is_a_precondition() {
    let aws = FakeAws::start(|r, _| match r.path.as_str() {
        "/policies/p" => Reply::Error(409, "ResourceAlreadyExistsException", json!({})),
        _ => Reply::Error(
            409,
            "VersionsLimitExceededException",
            json!({"message": "The policy p already has the maximum number of versions (5)"}),
        ),
    })
    .await;
    let err = aws
        .admin()
        .put_policy("p", &builtin::aws_thing_scoped())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Precondition(t) if t.contains("VersionsLimitExceededException")),
        "{err:?}"
    );
}

#[tokio::test]
async fn attach_and_detach_policy_look_the_target_arn_up() {
    let cert_id = "c".repeat(64);
    let cert_arn = format!("{ACCOUNT_ARN}:cert/{cert_id}");
    let group_arn = format!("{ACCOUNT_ARN}:thinggroup/line-2");
    let (reply_cert, reply_group) = (cert_arn.clone(), group_arn.clone());
    let aws = FakeAws::start(move |r, _| match (r.method.as_str(), r.path.as_str()) {
        ("GET", p) if p.starts_with("/certificates/") => Reply::Ok(json!({
            "certificateDescription": {
                "certificateArn": reply_cert,
                "certificateId": p.trim_start_matches("/certificates/"),
                "status": "ACTIVE",
                "certificatePem": "-----BEGIN CERTIFICATE-----\n",
                "creationDate": 1.7e9,
            }
        })),
        ("GET", "/thing-groups/line-2") => Reply::Ok(json!({
            "thingGroupName": "line-2",
            "thingGroupArn": reply_group,
            "thingGroupId": "g",
            "version": 1,
        })),
        (_, "/target-policies/device") => Reply::Raw(200, vec![], Vec::new()),
        _ => not_found("resource"),
    })
    .await;
    let admin = aws.admin();
    admin
        .attach_policy("device", AttachTarget::Certificate(cert_id.clone()))
        .await
        .unwrap();
    admin
        .attach_policy("device", AttachTarget::Group("line-2".into()))
        .await
        .unwrap();
    admin
        .detach_policy("device", &AttachTarget::Group("line-2".into()))
        .await
        .unwrap();
    assert_eq!(
        aws.lines(),
        [
            format!("GET /certificates/{cert_id}"),
            "PUT /target-policies/device".to_string(),
            "GET /thing-groups/line-2".to_string(),
            "PUT /target-policies/device".to_string(),
            "GET /thing-groups/line-2".to_string(),
            "POST /target-policies/device".to_string(),
        ]
    );
    let requests = aws.requests();
    assert_eq!(requests[1].json(), json!({"target": cert_arn}));
    assert_eq!(requests[3].json(), json!({"target": group_arn}));
    assert_eq!(requests[5].json(), json!({"target": group_arn}));
}

#[tokio::test]
async fn attach_policy_to_unknown_group_is_not_found() {
    let aws = FakeAws::start(|_, _| not_found("Thing group ghosts")).await;
    let err = aws
        .admin()
        .attach_policy("p", AttachTarget::Group("ghosts".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { what: "thing group", id } if id == "ghosts"),
        "{err:?}"
    );
}

#[tokio::test]
async fn unsupported_operations_send_nothing() {
    let aws = FakeAws::start(|_, _| Reply::Ok(json!({}))).await;
    let admin = aws.admin();

    let err = admin
        .set_device_enabled("sensor-7", false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotSupported(t) if t.contains("INACTIVE")),
        "{err:?}"
    );

    let ca = test_ca("Fleet CA");
    let crl = ca.issue_crl(&CrlOptions::new(1, Vec::new())).unwrap();
    let err = admin.add_crl(crl).await.unwrap_err();
    assert!(
        matches!(&err, Error::NotSupported(t) if t.contains("CRL")),
        "{err:?}"
    );

    for target in [
        AttachTarget::Device("sensor-7".into()),
        AttachTarget::Scope("ops".into()),
    ] {
        let err = admin.attach_policy("p", target.clone()).await.unwrap_err();
        assert!(
            matches!(&err, Error::NotSupported(t) if t.contains("certificate")),
            "{err:?}"
        );
        let err = admin.detach_policy("p", &target).await.unwrap_err();
        assert!(matches!(err, Error::NotSupported(_)), "{err:?}");
    }
    assert!(aws.lines().is_empty());
}

// ------------------------------------------------------------------------------------------
// Inherent operations
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn describe_endpoint_encodes_the_type() {
    let aws = FakeAws::start(|_, _| {
        Reply::Ok(json!({"endpointAddress": "a3qjexampleffp-ats.iot.eu-west-1.amazonaws.com"}))
    })
    .await;
    let admin = aws.admin();
    assert_eq!(
        admin
            .describe_endpoint(EndpointType::DataAts)
            .await
            .unwrap(),
        "a3qjexampleffp-ats.iot.eu-west-1.amazonaws.com"
    );
    admin
        .describe_endpoint(EndpointType::CredentialProvider)
        .await
        .unwrap();
    assert_eq!(
        aws.lines(),
        [
            "GET /endpoint?endpointType=iot%3AData-ATS",
            "GET /endpoint?endpointType=iot%3ACredentialProvider",
        ]
    );
}

#[tokio::test]
async fn create_keys_and_certificate_keeps_the_key_out_of_debug() {
    let aws = FakeAws::start(|_, _| {
        Reply::Ok(json!({
            "certificateArn": "arn:aws:iot:eu-west-1:123456789012:cert/abc",
            "certificateId": "abc",
            "certificatePem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            "keyPair": {
                "PublicKey": "-----BEGIN PUBLIC KEY-----\nPUB\n-----END PUBLIC KEY-----\n",
                "PrivateKey": "-----BEGIN RSA PRIVATE KEY-----\nTOPSECRETKEY\n-----END RSA PRIVATE KEY-----\n",
            }
        }))
    })
    .await;
    let created = aws
        .admin()
        .create_keys_and_certificate(false)
        .await
        .unwrap();
    assert_eq!(created.certificate_id(), "abc");
    assert_eq!(
        created.certificate_arn(),
        "arn:aws:iot:eu-west-1:123456789012:cert/abc"
    );
    assert!(created.private_key_pem().contains("TOPSECRETKEY"));
    assert!(created.public_key_pem().contains("PUB"));
    assert!(
        created
            .certificate_pem()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    let shown = format!("{created:?}");
    assert!(
        !shown.contains("TOPSECRETKEY") && shown.contains("abc"),
        "{shown}"
    );
    assert_eq!(
        aws.lines(),
        ["POST /keys-and-certificate?setAsActive=false"]
    );
    assert!(aws.requests()[0].body.is_empty());
}

#[tokio::test]
async fn create_certificate_from_csr_sends_the_csr() {
    let aws = FakeAws::start(|_, _| {
        Reply::Ok(json!({
            "certificateArn": "arn:cert/def",
            "certificateId": "def",
            "certificatePem": "PEM",
        }))
    })
    .await;
    let key = Arc::new(SoftwareKey::generate_p256().unwrap());
    let csr = crate::pki::build_csr(key, &DeviceId::new("sensor-7").unwrap()).unwrap();
    let created = aws
        .admin()
        .create_certificate_from_csr(&csr.to_pem(), true)
        .await
        .unwrap();
    assert_eq!(
        created,
        CreatedCertificate {
            certificate_id: "def".into(),
            certificate_arn: "arn:cert/def".into(),
            certificate_pem: "PEM".into(),
        }
    );
    assert_eq!(aws.lines(), ["POST /certificates?setAsActive=true"]);
    assert_eq!(
        aws.requests()[0].json(),
        json!({"certificateSigningRequest": csr.to_pem()})
    );
}

#[tokio::test]
async fn attach_thing_principal_and_create_thing_group() {
    let aws = FakeAws::start(|r, _| match r.method.as_str() {
        "PUT" => Reply::Ok(json!({})),
        _ => Reply::Ok(json!({
            "thingGroupName": "line-2",
            "thingGroupArn": "arn:thinggroup/line-2",
            "thingGroupId": "g2",
        })),
    })
    .await;
    let admin = aws.admin();
    admin
        .attach_thing_principal("sensor-7", "arn:aws:iot:eu-west-1:1:cert/abc")
        .await
        .unwrap();
    let group = admin.create_thing_group("line-2").await.unwrap();
    assert_eq!(
        group,
        ThingGroup {
            name: "line-2".into(),
            arn: "arn:thinggroup/line-2".into(),
            id: "g2".into(),
        }
    );
    let requests = aws.requests();
    assert_eq!(
        aws.lines(),
        [
            "PUT /things/sensor-7/principals",
            "POST /thing-groups/line-2"
        ]
    );
    assert_eq!(
        requests[0].header("x-amzn-principal"),
        Some("arn:aws:iot:eu-west-1:1:cert/abc")
    );
    assert_eq!(requests[1].json(), json!({}));
}

#[tokio::test]
async fn describe_certificate_types_the_status() {
    let aws = FakeAws::start(|r, _| {
        let status = if r.path.ends_with("/pending") {
            "PENDING_TRANSFER"
        } else {
            "REVOKED"
        };
        Reply::Ok(json!({
            "certificateDescription": {
                "certificateArn": "arn:cert/x",
                "certificateId": "x",
                "caCertificateId": "ca",
                "status": status,
                "certificatePem": "PEM",
                "ownedBy": "123456789012",
                "creationDate": 1_700_000_000.5,
            }
        }))
    })
    .await;
    let admin = aws.admin();
    let revoked = admin.describe_certificate("revoked").await.unwrap();
    assert_eq!(
        revoked.status,
        AwsCertificateStatus::State(CertificateState::Revoked)
    );
    assert_eq!(revoked.status.state(), Some(CertificateState::Revoked));
    assert_eq!(revoked.ca_certificate_id.as_deref(), Some("ca"));
    assert_eq!(revoked.owned_by.as_deref(), Some("123456789012"));
    assert_eq!(
        revoked.creation_date.unwrap().unix_timestamp(),
        1_700_000_000
    );
    let pending = admin.describe_certificate("pending").await.unwrap();
    assert_eq!(
        pending.status,
        AwsCertificateStatus::Other("PENDING_TRANSFER".into())
    );
    assert_eq!(pending.status.to_string(), "PENDING_TRANSFER");
    assert_eq!(pending.status.state(), None);
}

// ------------------------------------------------------------------------------------------
// URLs
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn names_are_percent_encoded_and_the_signature_still_verifies() {
    let aws = FakeAws::start(|_, _| {
        Reply::Ok(json!({"policyName": "x", "policyArn": "arn", "policyVersionId": "1"}))
    })
    .await;
    let admin = aws.admin();
    admin
        .put_policy("ops+admin=1,2@x.y", &builtin::aws_thing_scoped())
        .await
        .unwrap();
    admin
        .put_policy("with space/slash%", &builtin::aws_thing_scoped())
        .await
        .unwrap();
    admin
        .put_policy("ü~_-.", &builtin::aws_thing_scoped())
        .await
        .unwrap();
    // requests() asserts every signature verified as received.
    assert_eq!(
        aws.lines(),
        [
            "POST /policies/ops%2Badmin%3D1%2C2%40x.y",
            "POST /policies/with%20space%2Fslash%25",
            "POST /policies/%C3%BC~_-.",
        ]
    );
}

#[tokio::test]
async fn dot_segments_and_empty_names_are_refused() {
    let aws = FakeAws::start(|_, _| Reply::Ok(json!({}))).await;
    let admin = aws.admin();
    for name in ["", ".", ".."] {
        let err = admin
            .set_certificate_state(name, CertificateState::Active)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidInput { .. }),
            "{name:?}: {err:?}"
        );
    }
    assert!(aws.lines().is_empty());
}

// ------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn aws_error_codes_map_to_fleetkit_errors() {
    type Check = fn(&Error) -> bool;
    let cases: Vec<(u16, &'static str, Check)> = vec![
        (
            404,
            "ResourceNotFoundException",
            |e| matches!(e, Error::NotFound { what: "certificate", id } if id == "abc"),
        ),
        (409, "ResourceAlreadyExistsException", |e| {
            matches!(
                e,
                Error::AlreadyExists {
                    what: "certificate",
                    ..
                }
            )
        }),
        (
            400,
            "InvalidRequestException",
            |e| matches!(e, Error::InvalidInput { reason, .. } if reason.contains("InvalidRequestException: boom")),
        ),
        (400, "MalformedPolicyException", |e| {
            matches!(e, Error::InvalidInput { .. })
        }),
        (400, "CertificateValidationException", |e| {
            matches!(e, Error::InvalidInput { .. })
        }),
        (400, "SerializationException", |e| {
            matches!(e, Error::InvalidInput { .. })
        }),
        (
            401,
            "UnauthorizedException",
            |e| matches!(e, Error::Unauthenticated(t) if t.contains("UnauthorizedException: boom")),
        ),
        (
            403,
            "InvalidSignatureException",
            |e| matches!(e, Error::Unauthenticated(t) if t.contains("InvalidSignatureException")),
        ),
        (403, "UnrecognizedClientException", |e| {
            matches!(e, Error::Unauthenticated(_))
        }),
        (403, "MissingAuthenticationTokenException", |e| {
            matches!(e, Error::Unauthenticated(_))
        }),
        (403, "InvalidClientTokenId", |e| {
            matches!(e, Error::Unauthenticated(_))
        }),
        (403, "SignatureDoesNotMatch", |e| {
            matches!(e, Error::Unauthenticated(_))
        }),
        (400, "IncompleteSignatureException", |e| {
            matches!(e, Error::Unauthenticated(_))
        }),
        (
            403,
            "AccessDeniedException",
            |e| matches!(e, Error::PermissionDenied(t) if t.contains("AccessDeniedException: boom")),
        ),
        (403, "ForbiddenException", |e| {
            matches!(e, Error::PermissionDenied(_))
        }),
        (
            406,
            "CertificateStateException",
            |e| matches!(e, Error::Precondition(t) if t.contains("CertificateStateException")),
        ),
        (
            409,
            "VersionConflictException",
            |e| matches!(e, Error::Conflict { what, .. } if what.contains("VersionConflictException")),
        ),
        (409, "DeleteConflictException", |e| {
            matches!(e, Error::Precondition(_))
        }),
        (410, "LimitExceededException", |e| {
            matches!(e, Error::Precondition(_))
        }),
        (
            418,
            "SomethingNewException",
            |e| matches!(e, Error::Unavailable(t) if t.contains("SomethingNewException")),
        ),
    ];
    for (status, code, check) in cases {
        let aws =
            FakeAws::start(move |_, _| Reply::Error(status, code, json!({"message": "boom"})))
                .await;
        let err = aws
            .admin()
            .set_certificate_state("abc", CertificateState::Inactive)
            .await
            .unwrap_err();
        assert!(check(&err), "{code}: {err:?}");
        assert_eq!(aws.lines().len(), 1, "{code} must not be retried");
        // The secret and the token never appear in an error.
        let text = err.to_string();
        assert!(!text.contains(SECRET) && !text.contains(TOKEN));
    }
}

#[tokio::test]
async fn error_code_variants_in_the_body_are_understood() {
    let replies: Vec<(u16, Value, Check2)> = vec![
        (
            400,
            json!({"__type": "com.amazonaws.iot#InvalidRequestException", "Message": "bad"}),
            |e| matches!(e, Error::InvalidInput { reason, .. } if reason == "InvalidRequestException: bad"),
        ),
        (
            404,
            json!({"code": "ResourceNotFoundException", "message": "gone"}),
            |e| matches!(e, Error::NotFound { .. }),
        ),
        (
            403,
            json!({"__type": "AccessDeniedException:http://internal/"}),
            |e| matches!(e, Error::PermissionDenied(_)),
        ),
        // No code at all: the status decides.
        (404, json!({"message": "no route"}), |e| {
            matches!(e, Error::NotFound { .. })
        }),
        (400, json!({}), |e| matches!(e, Error::InvalidInput { .. })),
    ];
    type Check2 = fn(&Error) -> bool;
    for (status, body, check) in replies {
        let reply_body = body.clone();
        let aws = FakeAws::start(move |_, _| {
            Reply::Raw(status, vec![], reply_body.to_string().into_bytes())
        })
        .await;
        let err = aws
            .admin()
            .set_certificate_state("abc", CertificateState::Inactive)
            .await
            .unwrap_err();
        assert!(check(&err), "{body}: {err:?}");
    }
}

#[test]
fn error_type_header_is_cut_at_the_colon() {
    let e = AwsError::parse(
        429,
        Some("ThrottlingException:http://internal.amazon.com/coral/com.amazon.coral.availability/"),
        br#"{"message":"Rate exceeded"}"#,
    );
    assert_eq!(e.code, "ThrottlingException");
    assert_eq!(e.message, "Rate exceeded");
    assert!(e.retryable());
    let e = AwsError::parse(502, None, b"<html>Bad Gateway</html>");
    assert_eq!(e.code, "HTTP 502");
    assert_eq!(e.message, "<html>Bad Gateway</html>");
    assert!(e.retryable());
}

// ------------------------------------------------------------------------------------------
// Retries
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn throttling_and_server_errors_are_retried_then_succeed() {
    for (status, code) in [
        (429, "ThrottlingException"),
        (503, "ServiceUnavailableException"),
        (500, "InternalFailureException"),
    ] {
        let aws = FakeAws::start(move |_, i| {
            if i < 3 {
                Reply::Error(status, code, json!({"message": "Rate exceeded"}))
            } else {
                Reply::Ok(json!({"endpointAddress": "host"}))
            }
        })
        .await;
        let host = aws
            .admin()
            .describe_endpoint(EndpointType::DataAts)
            .await
            .unwrap();
        assert_eq!(host, "host");
        // Four attempts, each signed afresh (requests() verifies each signature).
        let requests = aws.requests();
        assert_eq!(requests.len(), 4, "{code}");
    }
}

#[tokio::test]
async fn posts_are_retried_on_throttling_too() {
    let aws = FakeAws::start(|_, i| {
        if i == 0 {
            Reply::Error(
                429,
                "ThrottlingException",
                json!({"message": "Rate exceeded"}),
            )
        } else {
            Reply::Ok(json!({"thingGroupName": "g", "thingGroupArn": "arn", "thingGroupId": "1"}))
        }
    })
    .await;
    aws.admin().create_thing_group("g").await.unwrap();
    assert_eq!(
        aws.lines(),
        ["POST /thing-groups/g", "POST /thing-groups/g"]
    );
}

#[tokio::test]
async fn five_throttles_give_unavailable() {
    let aws = FakeAws::start(|_, _| {
        Reply::Error(
            429,
            "ThrottlingException",
            json!({"message": "Rate exceeded"}),
        )
    })
    .await;
    let err = aws
        .admin()
        .set_certificate_state("abc", CertificateState::Revoked)
        .await
        .unwrap_err();
    let Error::Unavailable(text) = &err else {
        panic!("{err:?}")
    };
    assert!(
        text.contains("ThrottlingException: Rate exceeded") && text.contains("5 attempts"),
        "{text}"
    );
    assert_eq!(aws.lines().len(), 5);
}

#[tokio::test]
async fn retry_count_is_configurable() {
    let aws =
        FakeAws::start(|_, _| Reply::Error(503, "ServiceUnavailableException", json!({}))).await;
    let admin = aws
        .config()
        .admin()
        .unwrap()
        .with_retry(BackoffConfig::new().with_base(Duration::from_millis(1)), 2)
        .unwrap();
    let err = admin
        .describe_endpoint(EndpointType::DataAts)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert_eq!(aws.lines().len(), 2);
    assert!(
        aws.config()
            .admin()
            .unwrap()
            .with_retry(BackoffConfig::new(), 0)
            .is_err()
    );
}

#[tokio::test]
async fn a_post_is_not_repeated_after_the_connection_drops_mid_request() {
    let aws = FakeAws::start(|_, _| Reply::Hangup).await;
    let err = aws.admin().create_thing_group("g").await.unwrap_err();
    let Error::Unavailable(text) = &err else {
        panic!("{err:?}")
    };
    assert!(text.contains("may have reached AWS"), "{text}");
    assert_eq!(aws.lines(), ["POST /thing-groups/g"]);
}

#[tokio::test]
async fn idempotent_requests_are_repeated_after_the_connection_drops() {
    let aws = FakeAws::start(|r, i| {
        if i < 2 {
            Reply::Hangup
        } else if r.method == "GET" {
            Reply::Ok(json!({"endpointAddress": "host"}))
        } else {
            Reply::Raw(200, vec![], Vec::new())
        }
    })
    .await;
    let admin = aws.admin();
    assert_eq!(
        admin.describe_endpoint(EndpointType::Jobs).await.unwrap(),
        "host"
    );
    assert_eq!(aws.lines().len(), 3);
    // A PUT too (the counter is past the hang-ups now).
    admin
        .set_certificate_state("abc", CertificateState::Active)
        .await
        .unwrap();

    let always = FakeAws::start(|_, _| Reply::Hangup).await;
    let err = always
        .admin()
        .describe_endpoint(EndpointType::Jobs)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Unavailable(t) if t.contains("5 attempts")),
        "{err:?}"
    );
    assert_eq!(always.lines().len(), 5);
}

#[tokio::test]
async fn a_post_is_retried_when_the_connection_was_never_made() {
    let aws = FakeAws::start(|_, _| Reply::Ok(json!({}))).await;
    let config = aws.config();
    // A port nobody listens on.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = AwsIot::builder()
        .region(REGION)
        .endpoint(config.endpoint())
        .roots(config.roots().to_vec())
        .control_endpoint(format!("https://127.0.0.1:{closed}"))
        .access_key_id(ACCESS_KEY)
        .secret_access_key(SECRET)
        .build()
        .unwrap();
    let err = fast(config.admin().unwrap())
        .create_thing_group("g")
        .await
        .unwrap_err();
    let Error::Unavailable(text) = &err else {
        panic!("{err:?}")
    };
    assert!(text.contains("5 attempts"), "{text}");
}

#[tokio::test]
async fn an_untrusted_server_is_refused_without_retrying() {
    let aws = FakeAws::start(|_, _| Reply::Ok(json!({"endpointAddress": "host"}))).await;
    let config = aws.config();
    let stranger = test_ca("Somebody else");
    let admin =
        fast(AwsAdmin::with_roots(&config, &[stranger.certificate().der().clone()]).unwrap());
    let err = admin
        .describe_endpoint(EndpointType::DataAts)
        .await
        .unwrap_err();
    let Error::Unavailable(text) = &err else {
        panic!("{err:?}")
    };
    assert!(text.contains("TLS") && text.contains("roots"), "{text}");
    assert!(aws.lines().is_empty());
}

// ------------------------------------------------------------------------------------------
// Construction and Debug
// ------------------------------------------------------------------------------------------

fn base_builder(ca: &CertificateAuthority) -> crate::aws::AwsIotBuilder {
    AwsIot::builder()
        .region(REGION)
        .endpoint("a3qjexampleffp-ats.iot.eu-west-1.amazonaws.com")
        .root_ca(ca.certificate())
}

#[test]
fn credentials_are_required() {
    let ca = test_ca("CA");
    let err = base_builder(&ca).build().unwrap().admin().unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput { field, reason } if field == "credentials" && reason.contains("AWS_ACCESS_KEY_ID")),
        "{err:?}"
    );
}

#[test]
fn roots_are_required() {
    let ca = test_ca("CA");
    let config = base_builder(&ca)
        .access_key_id(ACCESS_KEY)
        .secret_access_key(SECRET)
        .build()
        .unwrap();
    let err = AwsAdmin::with_roots(&config, &[]).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput { field, reason } if field == "roots" && reason.contains("AmazonRootCA1")),
        "{err:?}"
    );
}

#[test]
fn plain_http_only_to_loopback() {
    let ca = test_ca("CA");
    for (url, ok) in [
        ("http://127.0.0.1:8080", true),
        ("http://[::1]:8080", true),
        ("http://localhost:8080", true),
        ("http://iot.eu-west-1.amazonaws.com", false),
        ("https://iot.eu-west-1.amazonaws.com", true),
    ] {
        let config = base_builder(&ca)
            .access_key_id(ACCESS_KEY)
            .secret_access_key(SECRET)
            .control_endpoint(url)
            .build()
            .unwrap();
        assert_eq!(config.admin().is_ok(), ok, "{url}");
    }
}

#[test]
fn debug_shows_region_and_endpoint_only() {
    let ca = test_ca("CA");
    let admin = base_builder(&ca)
        .access_key_id(ACCESS_KEY)
        .secret_access_key(SECRET)
        .session_token(TOKEN)
        .build()
        .unwrap()
        .admin()
        .unwrap();
    let shown = format!("{admin:?}");
    assert!(shown.contains(REGION), "{shown}");
    assert!(
        shown.contains("https://iot.eu-west-1.amazonaws.com"),
        "{shown}"
    );
    assert!(!shown.contains(SECRET) && !shown.contains(TOKEN), "{shown}");
    assert!(!shown.contains(ACCESS_KEY), "{shown}");
    assert_eq!(admin.region(), REGION);
    assert_eq!(admin.endpoint(), "https://iot.eu-west-1.amazonaws.com");
}

#[test]
fn endpoint_type_names() {
    assert_eq!(EndpointType::DataAts.to_string(), "iot:Data-ATS");
    assert_eq!(EndpointType::Data.as_str(), "iot:Data");
    assert_eq!(
        EndpointType::CredentialProvider.as_str(),
        "iot:CredentialProvider"
    );
    assert_eq!(EndpointType::Jobs.as_str(), "iot:Jobs");
}
