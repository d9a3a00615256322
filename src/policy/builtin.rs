//! Built-in policies: each cloud's fixed device rules, written as ordinary policy documents so
//! the local hub enforces Azure- and GCP-style authorization with the one [`PolicyEngine`].
//!
//! | function | for | client id | topics |
//! |---|---|---|---|
//! | [`native_device`] | the local hub's native dialect | the device id | `devices/{id}/telemetry…` + `$fleetkit/devices/{id}/…` |
//! | [`azure_device`] | Azure IoT Hub dialect | the device id | `devices/{id}/…` + per-connection `$iothub/…` |
//! | [`gcp_device`] | Cloud IoT Core / ClearBlade dialect | `projects/…/devices/{id}` | `/devices/{id}/…` |
//! | [`aws_thing_scoped`] | AWS IoT Core (exportable) | the thing name | `$aws/things/{thing}/shadow/…`, `…/jobs/…` |
//! | [`provisioning_claim`] | a claim certificate | `claim-…` | AWS fleet-provisioning topics |
//!
//! Every resource is an ARN `arn:aws:iot:*:*:<type>/<name>`: any region and any account of
//! the `aws` partition, so the documents evaluate unchanged in [`Partition::local()`] and in
//! any [`Partition::aws`] region/account.
//!
//! Device-scoped built-ins name the device with the portable `${fleetkit:DeviceId}` (the
//! registry's device id, set by authentication — never chosen by the client) or, for the
//! AWS-exportable one, `${iot:Connection.Thing.ThingName}`. Variables are substituted
//! *literally*: a device whose id contains `#`, `+`, `*` or `?` (Azure accepts such ids) still
//! reaches only its own resources, never another device's. Such a device *is* allowed to
//! subscribe to its own filter spelled literally — `devices/+/messages/devicebound/#` for the
//! device `+` — which the broker reads as a wildcard; what keeps other devices' messages from it
//! is `iot:Receive`, checked on every delivery (the tests below prove it). Dialects should refuse
//! MQTT wildcards inside the device part of a filter as well.
//!
//! Each built-in passes [`audit`](super::audit::audit) without findings of severity Medium or
//! higher; [`provisioning_claim`] has one Low finding by design (claim sessions share their
//! client-id namespace).
//!
//! ```
//! use fleetkit::policy::builtin;
//! use fleetkit::policy::{AttachTarget, Partition, PolicyEngine, PrincipalContext, Request};
//!
//! let mut engine = PolicyEngine::new(Partition::local());
//! engine.put_policy("azure-device", &builtin::azure_device())?;
//! engine.attach_policy("azure-device", AttachTarget::Group("fleet".into()))?;
//!
//! let dev = engine.principal(PrincipalContext::device("dev-1", "dev-1", None).with_groups(["fleet"]));
//! assert!(dev.authorize(&Request::connect("dev-1")).is_allowed());
//! assert!(dev.authorize(&Request::publish("devices/dev-1/messages/events/")).is_allowed());
//! assert!(!dev.authorize(&Request::publish("devices/dev-2/messages/events/")).is_allowed());
//! # Ok::<(), fleetkit::Error>(())
//! ```
//!
//! [`PolicyEngine`]: super::PolicyEngine
//! [`Partition::local()`]: super::Partition::local
//! [`Partition::aws`]: super::Partition::aws

use super::model::{ConditionOperator, PolicyDocument, Statement};

/// The ARN prefix of every built-in resource: any region and account of the `aws` partition.
const ARN_PREFIX: &str = "arn:aws:iot:*:*:";

/// The registry device id variable.
const DEVICE_ID: &str = "${fleetkit:DeviceId}";

/// The AWS thing-name variable (resolves only when the client id equals the thing name).
const THING_NAME: &str = "${iot:Connection.Thing.ThingName}";

/// Client ids a [`provisioning_claim`] connection must start with.
///
/// A claim certificate is shared by every unprovisioned device, so its connections cannot be
/// told apart by identity. Confining them to their own client-id namespace means a claim
/// certificate extracted from one device cannot connect as an operational device's client id
/// and kick it off (AWS's published claim policy allows `iot:Connect` on `*`, which does
/// permit that). Claim clients should append something unguessable, e.g. a random UUID:
/// claim sessions can still take over each other's client ids within the namespace.
pub const CLAIM_CLIENT_ID_PREFIX: &str = "claim-";

fn arn(kind: &str, name: &str) -> String {
    format!("{ARN_PREFIX}{kind}/{name}")
}

fn allow(sid: &str, actions: &[&str], resources: &[String]) -> Statement {
    let resources: Vec<&str> = resources.iter().map(String::as_str).collect();
    Statement::allow(actions, &resources).with_sid(sid)
}

/// Escapes policy wildcards and `${` so `s` is matched literally inside a resource.
fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '*' => out.push_str("${*}"),
            '?' => out.push_str("${?}"),
            '$' => out.push_str("${$}"),
            c => out.push(c),
        }
    }
    out
}

/// A device of the local hub's native dialect (topics in `fleetkit::device::native`), by
/// registry device id: least privilege for everything the `DeviceClient` does.
///
/// | action | resources |
/// |---|---|
/// | `iot:Connect` | `client/${fleetkit:DeviceId}` — the client id must be the device id |
/// | `iot:Publish` | telemetry `devices/{id}/telemetry` and `devices/{id}/telemetry/*`; `$fleetkit/devices/{id}/twin/get/*`, `…/twin/reported/*`, `…/methods/res/*`, `…/certificates/csr/*`, `…/certificates/confirm/*` |
/// | `iot:Subscribe` | `$fleetkit/devices/{id}/commands/#`, `…/twin/res/#`, `…/twin/desired`, `…/methods/req/#`, `…/certificates/res/#` |
/// | `iot:Receive` | `$fleetkit/devices/{id}/*` |
///
/// Nothing else: no other device's topics, no retained messages, no reading its own or
/// anyone's telemetry.
pub fn native_device() -> PolicyDocument {
    let tel = format!("devices/{DEVICE_ID}/telemetry");
    let own = format!("${{$}}fleetkit/devices/{DEVICE_ID}");
    PolicyDocument::new(vec![
        allow(
            "ConnectAsDeviceId",
            &["iot:Connect"],
            &[arn("client", DEVICE_ID)],
        ),
        allow(
            "TelemetryTwinMethodAnswers",
            &["iot:Publish"],
            &[
                arn("topic", &tel),
                arn("topic", &format!("{tel}/*")),
                arn("topic", &format!("{own}/twin/get/*")),
                arn("topic", &format!("{own}/twin/reported/*")),
                arn("topic", &format!("{own}/methods/res/*")),
                arn("topic", &format!("{own}/certificates/csr/*")),
                arn("topic", &format!("{own}/certificates/confirm/*")),
            ],
        ),
        allow(
            "SubscribeCommandsTwinMethods",
            &["iot:Subscribe"],
            &[
                arn("topicfilter", &format!("{own}/commands/#")),
                arn("topicfilter", &format!("{own}/twin/res/#")),
                arn("topicfilter", &format!("{own}/twin/desired")),
                arn("topicfilter", &format!("{own}/methods/req/#")),
                arn("topicfilter", &format!("{own}/certificates/res/#")),
            ],
        ),
        allow(
            "ReceiveOwnReserved",
            &["iot:Receive"],
            &[arn("topic", &format!("{own}/*"))],
        ),
    ])
}

/// An Azure IoT Hub device (MQTT topics of PROTOCOLS.md §2.5), by registry device id.
///
/// | action | resources |
/// |---|---|
/// | `iot:Connect` | `client/${fleetkit:DeviceId}` — the client id must be the device id |
/// | `iot:Publish` | telemetry `devices/{id}/messages/events/*` (`*` also matches nothing, so the bare `…/events/` is included); twin `$iothub/twin/GET/*`, `$iothub/twin/PATCH/properties/reported/*`; method responses `$iothub/methods/res/*` |
/// | `iot:Subscribe` | `devices/{id}/messages/devicebound/#`, `$iothub/twin/res/#`, `$iothub/twin/PATCH/properties/desired/#`, `$iothub/methods/POST/#` |
/// | `iot:Receive` | `devices/{id}/messages/devicebound/*`, `$iothub/twin/*`, `$iothub/methods/POST/*` |
///
/// Nothing else: no other device's topics, no module topics, no retained messages.
///
/// The `$iothub/…` topics carry no device id because in IoT Hub they are **per connection**:
/// a twin response or method request is delivered only to the connection it concerns. The
/// local hub's Azure dialect keeps them per connection in the same way, which is why they are
/// safe to allow without a variable (and why [`audit`](super::audit::audit) does not flag
/// them).
pub fn azure_device() -> PolicyDocument {
    let dev = format!("devices/{DEVICE_ID}");
    PolicyDocument::new(vec![
        allow(
            "ConnectAsDeviceId",
            &["iot:Connect"],
            &[arn("client", DEVICE_ID)],
        ),
        allow(
            "TelemetryTwinMethods",
            &["iot:Publish"],
            &[
                arn("topic", &format!("{dev}/messages/events/*")),
                arn("topic", "$iothub/twin/GET/*"),
                arn("topic", "$iothub/twin/PATCH/properties/reported/*"),
                arn("topic", "$iothub/methods/res/*"),
            ],
        ),
        allow(
            "SubscribeC2dTwinMethods",
            &["iot:Subscribe"],
            &[
                arn("topicfilter", &format!("{dev}/messages/devicebound/#")),
                arn("topicfilter", "$iothub/twin/res/#"),
                arn("topicfilter", "$iothub/twin/PATCH/properties/desired/#"),
                arn("topicfilter", "$iothub/methods/POST/#"),
            ],
        ),
        allow(
            "ReceiveC2dTwinMethods",
            &["iot:Receive"],
            &[
                arn("topic", &format!("{dev}/messages/devicebound/*")),
                arn("topic", "$iothub/twin/*"),
                arn("topic", "$iothub/methods/POST/*"),
            ],
        ),
    ])
}

/// A Google Cloud IoT Core / ClearBlade device (PROTOCOLS.md §4.2, §4.4), by registry device id.
///
/// | action | resources |
/// |---|---|
/// | `iot:Connect` | `client/projects/*/locations/*/registries/*/devices/${fleetkit:DeviceId}` |
/// | `iot:Publish` | `/devices/{id}/events`, `/devices/{id}/events/*`, `/devices/{id}/state` |
/// | `iot:Subscribe` | `/devices/{id}/config`, `/devices/{id}/commands/#`, `/devices/{id}/errors` |
/// | `iot:Receive` | `/devices/{id}/config`, `/devices/{id}/commands`, `/devices/{id}/commands/*`, `/devices/{id}/errors` |
///
/// The client id's project, region and registry are wildcards — the hub checks them against
/// its registry when it authenticates — but the device part is the variable in a level of its
/// own, so a device can only ever connect under its own id. Topics start with `/`, so their
/// ARNs read `topic//devices/…`.
pub fn gcp_device() -> PolicyDocument {
    let dev = format!("/devices/{DEVICE_ID}");
    PolicyDocument::new(vec![
        allow(
            "ConnectAsDevicePath",
            &["iot:Connect"],
            &[arn(
                "client",
                &format!("projects/*/locations/*/registries/*/devices/{DEVICE_ID}"),
            )],
        ),
        allow(
            "EventsState",
            &["iot:Publish"],
            &[
                arn("topic", &format!("{dev}/events")),
                arn("topic", &format!("{dev}/events/*")),
                arn("topic", &format!("{dev}/state")),
            ],
        ),
        allow(
            "SubscribeConfigCommandsErrors",
            &["iot:Subscribe"],
            &[
                arn("topicfilter", &format!("{dev}/config")),
                arn("topicfilter", &format!("{dev}/commands/#")),
                arn("topicfilter", &format!("{dev}/errors")),
            ],
        ),
        allow(
            "ReceiveConfigCommandsErrors",
            &["iot:Receive"],
            &[
                arn("topic", &format!("{dev}/config")),
                arn("topic", &format!("{dev}/commands")),
                arn("topic", &format!("{dev}/commands/*")),
                arn("topic", &format!("{dev}/errors")),
            ],
        ),
    ])
}

/// AWS IoT's least-privilege thing policy (the compliant example of Device Defender's
/// overly-permissive check): connect as the thing, use its own shadow and jobs topics.
///
/// | action | resources |
/// |---|---|
/// | `iot:Connect` | `client/${iot:Connection.Thing.ThingName}`, with `Bool iot:Connection.Thing.IsAttached = true` |
/// | `iot:Publish`, `iot:Receive` | `$aws/things/{thing}/shadow/*`, `$aws/things/{thing}/jobs/*` |
/// | `iot:Subscribe` | `$aws/things/{thing}/shadow/*`, `$aws/things/{thing}/jobs/*` (topic filters) |
///
/// The thing-name variable resolves only when the client id equals the thing name, and the
/// condition requires the certificate to be attached to that thing. The document uses only
/// `iot:` actions and variables, so [`PolicyDocument::to_aws_json`] exports it to AWS IoT Core.
pub fn aws_thing_scoped() -> PolicyDocument {
    let things = format!("$aws/things/{THING_NAME}");
    let topics = [format!("{things}/shadow/*"), format!("{things}/jobs/*")];
    PolicyDocument::new(vec![
        allow(
            "ConnectAsThing",
            &["iot:Connect"],
            &[arn("client", THING_NAME)],
        )
        .with_condition(
            ConditionOperator::Bool,
            "iot:Connection.Thing.IsAttached",
            &["true"],
        ),
        allow(
            "ShadowJobsTopics",
            &["iot:Publish", "iot:Receive"],
            &topics.each_ref().map(|t| arn("topic", t)),
        ),
        allow(
            "ShadowJobsFilters",
            &["iot:Subscribe"],
            &topics.each_ref().map(|t| arn("topicfilter", t)),
        ),
    ])
}

/// fleetkit's AWS device policy: [`aws_thing_scoped`] (connect as the attached thing, its own
/// shadows and jobs) plus the topics of fleetkit's AWS topic design — telemetry on
/// `dt/{thing}/…` and commands on `cmd/{thing}/…` (AWS's whitepaper convention
/// `dt|cmd/<…>/<thing>/<type>`, shortened).
///
/// | action | resources |
/// |---|---|
/// | `iot:Connect` | `client/${iot:Connection.Thing.ThingName}`, with `Bool iot:Connection.Thing.IsAttached = true` |
/// | `iot:Publish` | `$aws/things/{thing}/shadow/*`, `$aws/things/{thing}/jobs/*`, `dt/{thing}/*` |
/// | `iot:Subscribe` | the shadow and jobs filters, `cmd/{thing}/*` |
/// | `iot:Receive` | the shadow and jobs topics, `cmd/{thing}/*` |
///
/// Only `iot:` actions and variables: [`PolicyDocument::to_aws_json`] exports it unchanged.
pub fn aws_device() -> PolicyDocument {
    let mut statements = aws_thing_scoped().statements;
    statements.push(allow(
        "Telemetry",
        &["iot:Publish"],
        &[arn("topic", &format!("dt/{THING_NAME}/*"))],
    ));
    statements.push(allow(
        "CommandsFilter",
        &["iot:Subscribe"],
        &[arn("topicfilter", &format!("cmd/{THING_NAME}/*"))],
    ));
    statements.push(allow(
        "CommandsReceive",
        &["iot:Receive"],
        &[arn("topic", &format!("cmd/{THING_NAME}/*"))],
    ));
    PolicyDocument::new(statements)
}

/// A claim certificate's policy: it may obtain an operational identity through provisioning
/// template `template` and do nothing else.
///
/// | action | resources |
/// |---|---|
/// | `iot:Connect` | `client/claim-*` (see [`CLAIM_CLIENT_ID_PREFIX`]) |
/// | `iot:Publish`, `iot:Receive` | `$aws/certificates/create/*`, `$aws/certificates/create-from-csr/*`, `$aws/provisioning-templates/{template}/provision/*` |
/// | `iot:Subscribe` | the same three, as topic filters |
/// | `fleetkit:Provision` | `provisioningtemplate/{template}` |
///
/// No telemetry, shadow, jobs or other template. `template` is inserted literally (policy
/// wildcards in it are escaped), so `provisioning_claim("*")` grants the template named `*`
/// only. The fleet-provisioning topics are request/response topics answered **per
/// connection** (a `CreateKeysAndCertificate` response carries a private key), so they are
/// allowed without a variable; the hub's AWS dialect must deliver their responses only to the
/// requesting connection.
///
/// `fleetkit:Provision` exists only in fleetkit: for AWS IoT Core, export the document without
/// that statement.
pub fn provisioning_claim(template: &str) -> PolicyDocument {
    let template = literal(template);
    let topics = [
        "$aws/certificates/create/*".to_string(),
        "$aws/certificates/create-from-csr/*".to_string(),
        format!("$aws/provisioning-templates/{template}/provision/*"),
    ];
    PolicyDocument::new(vec![
        allow(
            "ConnectInClaimNamespace",
            &["iot:Connect"],
            &[arn("client", &format!("{CLAIM_CLIENT_ID_PREFIX}*"))],
        ),
        allow(
            "ProvisioningTopics",
            &["iot:Publish", "iot:Receive"],
            &topics.each_ref().map(|t| arn("topic", t)),
        ),
        allow(
            "ProvisioningFilters",
            &["iot:Subscribe"],
            &topics.each_ref().map(|t| arn("topicfilter", t)),
        ),
        allow(
            "ProvisionWithTemplate",
            &["fleetkit:Provision"],
            &[arn("provisioningtemplate", &template)],
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::audit::{Check, Severity, audit};
    use crate::policy::{
        Action, AttachTarget, CertificateContext, Partition, PolicyEngine, Principal,
        PrincipalContext, Request,
    };

    const GROUP: &str = "fleet";

    /// The MQTT requests a device makes, by device id.
    type Requests = fn(&str) -> Vec<(Action, String)>;
    /// The client id a device connects with, by device id.
    type ClientId = fn(&str) -> String;

    /// Ids that would be MQTT or policy wildcards if substituted as patterns.
    const TRICKY_IDS: [&str; 6] = ["#", "+", "*", "?", "dev-?", "*/#"];

    fn engine(doc: &PolicyDocument) -> PolicyEngine {
        let mut engine = PolicyEngine::new(Partition::local());
        engine.put_policy("builtin", doc).unwrap();
        engine
            .attach_policy("builtin", AttachTarget::Group(GROUP.into()))
            .unwrap();
        // Also the per-device attachment the brief describes, for one device.
        engine
            .attach_policy("builtin", AttachTarget::Device("dev-a".into()))
            .unwrap();
        engine
    }

    /// A device principal built by hand (ids a `DeviceId` would refuse are fine here).
    fn device(engine: &PolicyEngine, id: &str, client_id: &str) -> Principal {
        engine.principal(PrincipalContext::device(id, client_id, None).with_groups([GROUP]))
    }

    fn allowed(p: &Principal, r: Request<'_>) -> bool {
        p.authorize(&r).is_allowed()
    }

    /// Every request a device `id` of the given dialect makes, with its client id.
    fn azure_requests(id: &str) -> Vec<(Action, String)> {
        vec![
            (Action::Connect, id.to_string()),
            (Action::Publish, format!("devices/{id}/messages/events/")),
            (
                Action::Publish,
                format!("devices/{id}/messages/events/$.ct=application%2Fjson&k=v"),
            ),
            (
                Action::Subscribe,
                format!("devices/{id}/messages/devicebound/#"),
            ),
            (
                Action::Receive,
                format!("devices/{id}/messages/devicebound/"),
            ),
            (
                Action::Receive,
                format!("devices/{id}/messages/devicebound/$.mid=1&$.to=%2Fdevices"),
            ),
        ]
    }

    fn native_requests(id: &str) -> Vec<(Action, String)> {
        let own = format!("$fleetkit/devices/{id}");
        vec![
            (Action::Connect, id.to_string()),
            (Action::Publish, format!("devices/{id}/telemetry")),
            (
                Action::Publish,
                format!("devices/{id}/telemetry/unit=C&seq=1"),
            ),
            (Action::Publish, format!("{own}/twin/get/1")),
            (Action::Publish, format!("{own}/twin/reported/2")),
            (Action::Publish, format!("{own}/methods/res/200/3")),
            (Action::Publish, format!("{own}/certificates/csr/5")),
            (Action::Publish, format!("{own}/certificates/confirm/6")),
            (Action::Subscribe, format!("{own}/certificates/res/#")),
            (Action::Subscribe, format!("{own}/commands/#")),
            (Action::Subscribe, format!("{own}/twin/res/#")),
            (Action::Subscribe, format!("{own}/twin/desired")),
            (Action::Subscribe, format!("{own}/methods/req/#")),
            (Action::Receive, format!("{own}/commands/reboot")),
            (Action::Receive, format!("{own}/twin/res/200/1")),
            (Action::Receive, format!("{own}/twin/desired")),
            (Action::Receive, format!("{own}/methods/req/reboot/4")),
        ]
    }

    #[test]
    fn native_device_allows_its_own_topics_and_nothing_else() {
        let engine = engine(&native_device());
        assert_own_allowed(&engine, native_requests, same, "dev-a");
        assert_isolated(&engine, native_requests, same, "dev-a", "dev-b");
        assert_isolated(&engine, native_requests, same, "dev-b", "dev-a");
        let p = device(&engine, "dev-a", "dev-a");
        for (action, name) in [
            // The hub's side of each exchange, never the device's.
            (Action::Publish, "$fleetkit/devices/dev-a/commands/reboot"),
            (Action::Publish, "$fleetkit/devices/dev-a/twin/desired"),
            (Action::Publish, "$fleetkit/devices/dev-a/twin/res/200/1"),
            (Action::Publish, "$fleetkit/devices/dev-a/methods/req/m/1"),
            // No reading telemetry, no wildcards over devices.
            (Action::Subscribe, "devices/dev-a/telemetry"),
            (Action::Subscribe, "$fleetkit/devices/+/commands/#"),
            (Action::Subscribe, "$fleetkit/events/#"),
            (Action::Receive, "devices/dev-a/telemetry"),
        ] {
            assert!(!allowed(&p, request(action, name)), "{action} {name}");
        }
        assert!(!allowed(
            &p,
            Request::retain_publish("devices/dev-a/telemetry")
        ));
    }

    fn gcp_client(id: &str) -> String {
        format!("projects/p1/locations/us-central1/registries/r1/devices/{id}")
    }

    fn gcp_requests(id: &str) -> Vec<(Action, String)> {
        vec![
            (Action::Connect, gcp_client(id)),
            (Action::Publish, format!("/devices/{id}/events")),
            (Action::Publish, format!("/devices/{id}/events/alerts/high")),
            (Action::Publish, format!("/devices/{id}/state")),
            (Action::Subscribe, format!("/devices/{id}/config")),
            (Action::Subscribe, format!("/devices/{id}/commands/#")),
            (Action::Subscribe, format!("/devices/{id}/errors")),
            (Action::Receive, format!("/devices/{id}/config")),
            (Action::Receive, format!("/devices/{id}/commands")),
            (
                Action::Receive,
                format!("/devices/{id}/commands/reboot/now"),
            ),
            (Action::Receive, format!("/devices/{id}/errors")),
        ]
    }

    fn aws_requests(id: &str) -> Vec<(Action, String)> {
        vec![
            (Action::Connect, id.to_string()),
            (Action::Publish, format!("$aws/things/{id}/shadow/update")),
            (
                Action::Publish,
                format!("$aws/things/{id}/shadow/name/cfg/get"),
            ),
            (
                Action::Subscribe,
                format!("$aws/things/{id}/shadow/update/delta"),
            ),
            (
                Action::Receive,
                format!("$aws/things/{id}/shadow/update/accepted"),
            ),
            (Action::Publish, format!("$aws/things/{id}/jobs/get")),
            (
                Action::Subscribe,
                format!("$aws/things/{id}/jobs/notify-next"),
            ),
            (
                Action::Receive,
                format!("$aws/things/{id}/jobs/notify-next"),
            ),
        ]
    }

    fn request(action: Action, name: &str) -> Request<'_> {
        match action {
            Action::Connect => Request::connect(name),
            Action::Publish => Request::publish(name),
            Action::Subscribe => Request::subscribe(name),
            Action::Receive => Request::receive(name),
            other => panic!("not an MQTT action: {other}"),
        }
    }

    /// `attacker` (authenticated as itself, connected with its own client id) is refused every
    /// request of `victim`, including connecting with the victim's client id.
    fn assert_isolated(
        engine: &PolicyEngine,
        requests: Requests,
        client: ClientId,
        attacker: &str,
        victim: &str,
    ) {
        let p = device(engine, attacker, &client(attacker));
        for (action, name) in requests(victim) {
            let d = p.authorize(&request(action, &name));
            assert!(
                !d.is_allowed(),
                "device {attacker:?} must not {action} {name:?}: {d}"
            );
        }
    }

    fn assert_own_allowed(engine: &PolicyEngine, requests: Requests, client: ClientId, id: &str) {
        let p = device(engine, id, &client(id));
        for (action, name) in requests(id) {
            let d = p.authorize(&request(action, &name));
            assert!(
                d.is_allowed(),
                "device {id:?} must be able to {action} {name:?}: {d}"
            );
        }
    }

    fn same(id: &str) -> String {
        id.to_string()
    }

    #[test]
    fn builtins_validate_round_trip_and_fit_aws_size() {
        for doc in [
            azure_device(),
            gcp_device(),
            aws_thing_scoped(),
            provisioning_claim("factory-line-1"),
        ] {
            doc.validate().unwrap();
            assert_eq!(PolicyDocument::from_json(&doc.to_json()).unwrap(), doc);
        }
        assert!(aws_thing_scoped().to_aws_json().is_ok());
        assert!(
            provisioning_claim("t").to_aws_json().is_err(),
            "fleetkit:Provision"
        );
    }

    #[test]
    fn builtins_evaluate_in_any_region_and_account() {
        let mut engine = PolicyEngine::new(Partition::aws("eu-west-1", "123456789012"));
        engine.put_policy("azure", &azure_device()).unwrap();
        engine
            .attach_policy("azure", AttachTarget::Device("dev-a".into()))
            .unwrap();
        let p = engine.principal(PrincipalContext::device("dev-a", "dev-a", None));
        assert!(allowed(&p, Request::connect("dev-a")));
        assert!(allowed(
            &p,
            Request::publish("devices/dev-a/messages/events/")
        ));
    }

    #[test]
    fn azure_device_allows_its_own_topics() {
        let engine = engine(&azure_device());
        assert_own_allowed(&engine, azure_requests, same, "dev-a");
        let p = device(&engine, "dev-a", "dev-a");
        for (action, name) in [
            (Action::Publish, "$iothub/twin/GET/?$rid=1"),
            (
                Action::Publish,
                "$iothub/twin/PATCH/properties/reported/?$rid=2",
            ),
            (Action::Publish, "$iothub/methods/res/200/?$rid=3"),
            (Action::Subscribe, "$iothub/twin/res/#"),
            (Action::Subscribe, "$iothub/twin/PATCH/properties/desired/#"),
            (Action::Subscribe, "$iothub/methods/POST/#"),
            (Action::Receive, "$iothub/twin/res/200/?$rid=1"),
            (
                Action::Receive,
                "$iothub/twin/PATCH/properties/desired/?$version=4",
            ),
            (Action::Receive, "$iothub/methods/POST/reboot/?$rid=9"),
        ] {
            assert!(allowed(&p, request(action, name)), "{action} {name}");
        }
    }

    #[test]
    fn azure_device_denies_everything_else() {
        let engine = engine(&azure_device());
        let p = device(&engine, "dev-a", "dev-a");
        for (action, name) in [
            // Wrong direction or wrong service.
            (Action::Publish, "devices/dev-a/messages/devicebound/x"),
            (Action::Subscribe, "devices/dev-a/messages/events/#"),
            (Action::Publish, "devices/dev-a/messages/events"),
            (Action::Publish, "devices/dev-a/modules/m1/messages/events/"),
            (Action::Subscribe, "$iothub/twin/GET/#"),
            (Action::Publish, "$iothub/methods/POST/reboot/?$rid=1"),
            (Action::Subscribe, "#"),
            (Action::Subscribe, "devices/+/messages/devicebound/#"),
            (Action::Publish, "$aws/things/dev-a/shadow/update"),
        ] {
            assert!(!allowed(&p, request(action, name)), "{action} {name}");
        }
        assert!(!allowed(
            &p,
            Request::retain_publish("devices/dev-a/messages/events/")
        ));
        assert!(!allowed(
            &p,
            Request::on_thing(Action::GetThingShadow, "dev-a")
        ));
    }

    #[test]
    fn azure_device_is_isolated_from_other_devices() {
        let engine = engine(&azure_device());
        assert_isolated(&engine, azure_requests, same, "dev-a", "dev-b");
        assert_isolated(&engine, azure_requests, same, "dev-b", "dev-a");
        // Another client id than its device id: refused, whatever topics it would use.
        let p = device(&engine, "dev-a", "dev-b");
        assert!(!allowed(&p, Request::connect("dev-b")));
        let p = device(&engine, "dev-a", "other");
        assert!(!allowed(&p, Request::connect("other")));
    }

    #[test]
    fn builtins_isolate_devices_whose_ids_are_wildcards() {
        let cases: [(PolicyDocument, Requests, ClientId); 4] = [
            (native_device(), native_requests, same),
            (azure_device(), azure_requests, same),
            (gcp_device(), gcp_requests, gcp_client),
            (aws_thing_scoped(), aws_requests, same),
        ];
        for (doc, requests, client) in cases {
            let engine = engine(&doc);
            for tricky in TRICKY_IDS {
                for victim in ["dev-a", "b", "dev-b", "dev-b/x"] {
                    assert_isolated(&engine, requests, client, tricky, victim);
                }
                // …and it still works for its own (literal) resources.
                assert_own_allowed(&engine, requests, client, tricky);
            }
        }
    }

    #[test]
    fn wildcard_device_id_subscribes_literally_but_receives_only_its_own() {
        // The device `+` may subscribe to its own filter spelled literally — which the broker
        // reads as "every device" — so Receive, checked on each delivery, is what isolates it.
        let azure = engine(&azure_device());
        let plus = device(&azure, "+", "+");
        assert!(allowed(
            &plus,
            Request::subscribe("devices/+/messages/devicebound/#")
        ));
        assert!(!allowed(
            &plus,
            Request::receive("devices/dev-a/messages/devicebound/")
        ));
        assert!(allowed(
            &plus,
            Request::receive("devices/+/messages/devicebound/")
        ));

        let gcp = engine(&gcp_device());
        let hash = device(&gcp, "#", &gcp_client("#"));
        assert!(allowed(&hash, Request::subscribe("/devices/#/commands/#")));
        assert!(!allowed(&hash, Request::receive("/devices/dev-a/commands")));
        let star = device(&gcp, "*", &gcp_client("*"));
        assert!(!allowed(&star, Request::connect(&gcp_client("dev-a"))));
        assert!(!allowed(&star, Request::receive("/devices/dev-a/config")));
    }

    #[test]
    fn gcp_device_allows_its_own_topics_and_nothing_else() {
        let engine = engine(&gcp_device());
        assert_own_allowed(&engine, gcp_requests, gcp_client, "dev-a");
        let p = device(&engine, "dev-a", &gcp_client("dev-a"));
        for (action, name) in [
            (Action::Publish, "/devices/dev-a/config"),
            (Action::Publish, "/devices/dev-a/commands"),
            (Action::Publish, "/devices/dev-a/state/sub"),
            (Action::Subscribe, "/devices/dev-a/events"),
            (Action::Subscribe, "/devices/dev-a/commands/sub"),
            (Action::Subscribe, "/devices/+/config"),
            (Action::Publish, "devices/dev-a/events"),
            (Action::Publish, "/devices/dev-a/attach"),
        ] {
            assert!(!allowed(&p, request(action, name)), "{action} {name}");
        }
    }

    #[test]
    fn gcp_device_is_isolated_from_other_devices_and_client_ids() {
        let engine = engine(&gcp_device());
        assert_isolated(&engine, gcp_requests, gcp_client, "dev-a", "dev-b");
        // Suffix and prefix tricks on the client id.
        let p = device(&engine, "a", &gcp_client("a"));
        for client in [
            gcp_client("dev-a"),
            gcp_client("b/devices/a2"),
            format!("{}/x", gcp_client("a")),
            "a".to_string(),
            "devices/a".to_string(),
        ] {
            assert!(!allowed(&p, Request::connect(&client)), "{client}");
        }
        // The short client id of the device itself is not the GCP form either.
        let p = device(&engine, "dev-a", "dev-a");
        assert!(!allowed(&p, Request::connect("dev-a")));
    }

    #[test]
    fn aws_thing_scoped_allows_its_thing_only() {
        let engine = engine(&aws_thing_scoped());
        assert_own_allowed(&engine, aws_requests, same, "dev-a");
        assert_isolated(&engine, aws_requests, same, "dev-a", "dev-b");
        let p = device(&engine, "dev-a", "dev-a");
        for (action, name) in [
            (Action::Publish, "$aws/things/dev-a/tunnels/notify"),
            (Action::Subscribe, "$aws/things/+/shadow/update"),
            (Action::Subscribe, "$aws/things/dev-a/#"),
            (Action::Publish, "dt/dev-a/telemetry"),
        ] {
            assert!(!allowed(&p, request(action, name)), "{action} {name}");
        }
    }

    #[test]
    fn aws_thing_scoped_needs_client_id_equal_thing_and_attached_certificate() {
        let engine = engine(&aws_thing_scoped());
        // Client id differs from the thing name: thing variables do not resolve.
        let p = device(&engine, "dev-a", "dev-b");
        assert!(!allowed(&p, Request::connect("dev-b")));
        assert!(!allowed(
            &p,
            Request::publish("$aws/things/dev-b/shadow/update")
        ));
        assert!(!allowed(
            &p,
            Request::publish("$aws/things/dev-a/shadow/update")
        ));
        // Thing known but the certificate not attached to it: IsAttached is false.
        let mut ctx = PrincipalContext::device("dev-a", "dev-a", None).with_groups([GROUP]);
        ctx.thing.as_mut().unwrap().attached = false;
        let p = engine.principal(ctx);
        assert!(!allowed(&p, Request::connect("dev-a")));
    }

    fn claim_principal(engine: &PolicyEngine, client_id: &str) -> Principal {
        engine.principal(PrincipalContext {
            client_id: Some(client_id.into()),
            certificate: Some(CertificateContext {
                id: "c1a1m".into(),
                ..CertificateContext::default()
            }),
            ..PrincipalContext::default()
        })
    }

    fn claim_engine(template: &str) -> PolicyEngine {
        let mut engine = PolicyEngine::new(Partition::local());
        engine
            .put_policy("claim", &provisioning_claim(template))
            .unwrap();
        engine
            .attach_policy("claim", AttachTarget::Certificate("c1a1m".into()))
            .unwrap();
        engine
    }

    #[test]
    fn provisioning_claim_allows_fleet_provisioning_only() {
        let engine = claim_engine("factory");
        let p = claim_principal(&engine, "claim-5f0c9d1e");
        assert!(allowed(&p, Request::connect("claim-5f0c9d1e")));
        for (action, name) in [
            (Action::Publish, "$aws/certificates/create/json"),
            (Action::Subscribe, "$aws/certificates/create/json/accepted"),
            (Action::Receive, "$aws/certificates/create/json/rejected"),
            (Action::Publish, "$aws/certificates/create-from-csr/cbor"),
            (
                Action::Receive,
                "$aws/certificates/create-from-csr/json/accepted",
            ),
            (
                Action::Publish,
                "$aws/provisioning-templates/factory/provision/json",
            ),
            (
                Action::Subscribe,
                "$aws/provisioning-templates/factory/provision/json/accepted",
            ),
        ] {
            assert!(allowed(&p, request(action, name)), "{action} {name}");
        }
        assert!(allowed(&p, Request::provision("factory")));
    }

    #[test]
    fn provisioning_claim_denies_telemetry_devices_and_other_templates() {
        let engine = claim_engine("factory");
        let p = claim_principal(&engine, "claim-1");
        // Cannot take over an operational device's client id.
        assert!(!allowed(&p, Request::connect("dev-a")));
        assert!(!allowed(&p, Request::connect("")));
        for (action, name) in [
            (Action::Publish, "devices/dev-a/messages/events/"),
            (Action::Publish, "/devices/dev-a/events"),
            (Action::Publish, "$aws/things/dev-a/shadow/update"),
            (Action::Publish, "dt/factory/telemetry"),
            (Action::Subscribe, "#"),
            (
                Action::Publish,
                "$aws/provisioning-templates/other/provision/json",
            ),
        ] {
            assert!(!allowed(&p, request(action, name)), "{action} {name}");
        }
        assert!(!allowed(&p, Request::provision("other")));
        assert!(!allowed(
            &p,
            Request::on_thing(Action::UpdateThingShadow, "dev-a")
        ));
    }

    #[test]
    fn provisioning_claim_template_name_is_literal() {
        let engine = claim_engine("*");
        let p = claim_principal(&engine, "claim-1");
        assert!(allowed(&p, Request::provision("*")));
        assert!(!allowed(&p, Request::provision("factory")));
        assert!(!allowed(
            &p,
            Request::publish("$aws/provisioning-templates/factory/provision/json")
        ));
        let engine = claim_engine("${iot:ClientId}");
        let p = claim_principal(&engine, "claim-1");
        assert!(allowed(&p, Request::provision("${iot:ClientId}")));
        assert!(!allowed(&p, Request::provision("claim-1")));
    }

    #[test]
    fn builtins_pass_the_audit() {
        for (name, doc) in [
            ("native", native_device()),
            ("azure", azure_device()),
            ("gcp", gcp_device()),
            ("aws", aws_thing_scoped()),
        ] {
            let findings = audit(name, &doc);
            assert!(findings.is_empty(), "{name}: {findings:#?}");
        }
        let findings = audit("claim", &provisioning_claim("factory"));
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!(findings[0].check, Check::SharedClaimClientIds);
        assert_eq!(findings[0].severity, Severity::Low);
    }
}
