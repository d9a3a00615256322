//! Who asks ([`PrincipalContext`]) and what for ([`Request`]).

use super::model::Action;
use super::vars::{DnAttr, Var};
use crate::pki::Certificate;

/// The registry's view of the thing (device) behind a connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThingContext {
    /// Thing name (the device id).
    pub name: String,
    /// Thing type, if any.
    pub type_name: Option<String>,
    /// Attributes (at most 50 on AWS).
    pub attributes: Vec<(String, String)>,
    /// Whether the certificate is attached to this thing (`iot:Connection.Thing.IsAttached`).
    pub attached: bool,
}

/// What policy variables can read from the client certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertificateContext {
    /// Certificate id: SHA-256 of the DER, lowercase hex (AWS's certificate id).
    pub id: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Subject attributes as (OID, value), in certificate order.
    pub subject: Vec<(String, String)>,
    /// Issuer attributes as (OID, value).
    pub issuer: Vec<(String, String)>,
}

impl CertificateContext {
    /// Reads the context out of a parsed certificate.
    pub fn from_certificate(cert: &Certificate) -> Self {
        use x509_parser::prelude::FromDer;
        let attrs = |name: &x509_parser::x509::X509Name<'_>| -> Vec<(String, String)> {
            name.iter_attributes()
                .filter_map(|a| Some((a.attr_type().to_id_string(), a.as_str().ok()?.to_string())))
                .collect()
        };
        let (subject, issuer) =
            match x509_parser::certificate::X509Certificate::from_der(cert.der().as_ref()) {
                Ok((_, x509)) => (attrs(x509.subject()), attrs(x509.issuer())),
                // `Certificate` already parsed this DER once, so this cannot fail in practice.
                Err(_) => (Vec::new(), Vec::new()),
            };
        CertificateContext {
            id: cert.fingerprint_sha256(),
            serial: cert.serial_hex(),
            subject,
            issuer,
        }
    }

    fn lookup(attrs: &[(String, String)], attr: DnAttr) -> Option<&str> {
        attrs
            .iter()
            .find(|(oid, _)| oid == attr.oid())
            .map(|(_, v)| v.as_str())
    }
}

/// Connection attributes AWS policies can test (`iot:ConnectAttributes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectAttributes {
    /// The client asked for a persistent session (clean session off): `PersistentConnect`.
    pub persistent_session: bool,
    /// The client set a last will: `LastWill`.
    pub last_will: bool,
}

/// The facts about a principal that policies read: identities, thing, certificate, groups and
/// scopes. The engine turns it into an authorizable [`Principal`](super::Principal).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrincipalContext {
    /// The registry device id (`${fleetkit:DeviceId}`); also selects policies attached to it.
    pub device_id: Option<String>,
    /// The MQTT client id (`${iot:ClientId}`).
    pub client_id: Option<String>,
    /// The thing, if the principal is a registered device.
    pub thing: Option<ThingContext>,
    /// The client certificate, if it authenticated with one.
    pub certificate: Option<CertificateContext>,
    /// The thing groups the device is directly in (the engine adds their parents).
    pub groups: Vec<String>,
    /// For users and apps: the token's subject (`${fleetkit:User}`).
    pub user: Option<String>,
    /// For users and apps: the token's scopes; each selects the policies attached to it.
    pub scopes: Vec<String>,
    /// Connection attributes.
    pub connect: ConnectAttributes,
}

impl PrincipalContext {
    /// A device that authenticated with `cert`, connecting as `client_id`, registered as a thing
    /// with its certificate attached.
    pub fn device(device_id: &str, client_id: &str, cert: Option<&Certificate>) -> Self {
        PrincipalContext {
            device_id: Some(device_id.to_string()),
            client_id: Some(client_id.to_string()),
            thing: Some(ThingContext {
                name: device_id.to_string(),
                attached: true,
                ..ThingContext::default()
            }),
            certificate: cert.map(CertificateContext::from_certificate),
            ..PrincipalContext::default()
        }
    }

    /// A user or application identified by a verified token's subject and scopes.
    pub fn user(subject: &str, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        PrincipalContext {
            user: Some(subject.to_string()),
            scopes: scopes.into_iter().map(Into::into).collect(),
            ..PrincipalContext::default()
        }
    }

    /// A user or application from a *verified* token (see
    /// [`JwtVerifier::verify`](crate::auth::JwtVerifier::verify)): its `sub` becomes
    /// `${fleetkit:User}` and each scope selects the policies attached to
    /// [`AttachTarget::Scope`](super::AttachTarget::Scope).
    ///
    /// Fails with [`Error::Unauthenticated`](crate::Error::Unauthenticated) if the token names
    /// no subject: a principal must be someone.
    pub fn from_token(claims: &crate::auth::Claims) -> crate::Result<Self> {
        let subject = claims
            .sub
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                crate::Error::Unauthenticated(
                    "the token has no `sub`: it names no principal".into(),
                )
            })?;
        Ok(Self::user(subject, claims.scopes()))
    }

    /// Sets the thing groups.
    pub fn with_groups(mut self, groups: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.groups = groups.into_iter().map(Into::into).collect();
        self
    }

    /// Sets a thing attribute (creating the thing context if needed).
    pub fn with_attribute(mut self, name: &str, value: &str) -> Self {
        let thing = self.thing.get_or_insert_with(ThingContext::default);
        thing.attributes.retain(|(n, _)| n != name);
        thing.attributes.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the thing type (creating the thing context if needed).
    pub fn with_thing_type(mut self, type_name: &str) -> Self {
        self.thing
            .get_or_insert_with(ThingContext::default)
            .type_name = Some(type_name.into());
        self
    }

    /// Sets the connection attributes.
    pub fn with_connect(mut self, connect: ConnectAttributes) -> Self {
        self.connect = connect;
        self
    }
}

/// The kind of resource a request acts on: the `<type>` of `arn:…:<type>/<name>`.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// `client/<client id>`.
    Client,
    /// `topic/<topic name>`.
    Topic,
    /// `topicfilter/<filter>`.
    TopicFilter,
    /// `thing/<thing name>`.
    Thing,
    /// `provisioningtemplate/<name>`.
    ProvisioningTemplate,
    /// No specific resource: the ARN is `*` (e.g. `iot:ListRetainedMessages`).
    All,
}

impl ResourceKind {
    pub(crate) fn type_name(self) -> &'static str {
        match self {
            ResourceKind::Client => "client",
            ResourceKind::Topic => "topic",
            ResourceKind::TopicFilter => "topicfilter",
            ResourceKind::Thing => "thing",
            ResourceKind::ProvisioningTemplate => "provisioningtemplate",
            ResourceKind::All => "",
        }
    }
}

/// One request to authorize: an action on a resource.
///
/// ```
/// use fleetkit::policy::{Action, Request};
/// let r = Request::publish("sensors/dev-1/temp");
/// assert_eq!(r.action(), Action::Publish);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    action: Action,
    kind: ResourceKind,
    name: &'a str,
    target_groups: &'a [String],
}

impl<'a> Request<'a> {
    /// Any action on a resource of `kind` named `name`.
    pub fn new(action: Action, kind: ResourceKind, name: &'a str) -> Self {
        Request {
            action,
            kind,
            name,
            target_groups: &[],
        }
    }

    /// `iot:Connect` as `client_id`.
    pub fn connect(client_id: &'a str) -> Self {
        Self::new(Action::Connect, ResourceKind::Client, client_id)
    }

    /// `iot:Publish` to `topic`.
    pub fn publish(topic: &'a str) -> Self {
        Self::new(Action::Publish, ResourceKind::Topic, topic)
    }

    /// `iot:RetainPublish` to `topic` (authorize [`publish`](Self::publish) as well).
    pub fn retain_publish(topic: &'a str) -> Self {
        Self::new(Action::RetainPublish, ResourceKind::Topic, topic)
    }

    /// `iot:Subscribe` to `filter` (MQTT wildcards are part of the name, literally).
    pub fn subscribe(filter: &'a str) -> Self {
        Self::new(Action::Subscribe, ResourceKind::TopicFilter, filter)
    }

    /// `iot:Receive` of a message published on `topic`.
    pub fn receive(topic: &'a str) -> Self {
        Self::new(Action::Receive, ResourceKind::Topic, topic)
    }

    /// A thing-scoped action (shadow, jobs, methods, commands, desired state) on `thing`.
    pub fn on_thing(action: Action, thing: &'a str) -> Self {
        Self::new(action, ResourceKind::Thing, thing)
    }

    /// `fleetkit:Provision` with the provisioning template `template`.
    pub fn provision(template: &'a str) -> Self {
        Self::new(
            Action::Provision,
            ResourceKind::ProvisioningTemplate,
            template,
        )
    }

    /// The groups (parents included) of the device the request acts on, for
    /// `fleetkit:Target.ThingGroups` conditions.
    pub fn with_target_groups(mut self, groups: &'a [String]) -> Self {
        self.target_groups = groups;
        self
    }

    /// The action.
    pub fn action(&self) -> Action {
        self.action
    }

    /// The resource kind.
    pub fn kind(&self) -> ResourceKind {
        self.kind
    }

    /// The resource name (topic, client id, thing name…).
    pub fn name(&self) -> &'a str {
        self.name
    }

    pub(crate) fn target_groups(&self) -> &'a [String] {
        self.target_groups
    }
}

/// What variable lookups see during one decision.
pub(crate) struct Scope<'a> {
    pub(crate) ctx: Option<&'a PrincipalContext>,
    pub(crate) groups: &'a [String],
    pub(crate) target_groups: &'a [String],
    pub(crate) names: &'a [Box<str>],
}

const CONNECT_ATTRS: [&str; 2] = ["PersistentConnect", "LastWill"];

impl<'a> Scope<'a> {
    pub(crate) fn empty() -> Self {
        Scope {
            ctx: None,
            groups: &[],
            target_groups: &[],
            names: &[],
        }
    }

    fn thing(&self) -> Option<&'a ThingContext> {
        let ctx = self.ctx?;
        let thing = ctx.thing.as_ref()?;
        // Like AWS: thing variables resolve only when the client id is the thing name.
        match &ctx.client_id {
            Some(client) if *client != thing.name => None,
            _ => Some(thing),
        }
    }

    /// The single value of `var`, or `None` when it has none for this principal.
    pub(crate) fn resolve(&self, var: Var) -> Option<&'a str> {
        let ctx = self.ctx?;
        match var {
            Var::ClientId => ctx.client_id.as_deref(),
            Var::ThingName => self.thing().map(|t| t.name.as_str()),
            Var::ThingTypeName => self.thing()?.type_name.as_deref(),
            Var::ThingAttribute(i) => {
                let name = self.names.get(usize::from(i))?;
                self.thing()?
                    .attributes
                    .iter()
                    .find(|(n, _)| n.as_str() == &**name)
                    .map(|(_, v)| v.as_str())
            }
            Var::IsAttached => Some(if self.thing().is_some_and(|t| t.attached) {
                "true"
            } else {
                "false"
            }),
            Var::Subject(attr) => {
                CertificateContext::lookup(&ctx.certificate.as_ref()?.subject, attr)
            }
            Var::Issuer(attr) => {
                CertificateContext::lookup(&ctx.certificate.as_ref()?.issuer, attr)
            }
            Var::CertSerial => ctx.certificate.as_ref().map(|c| c.serial.as_str()),
            Var::CertId => ctx.certificate.as_ref().map(|c| c.id.as_str()),
            Var::DeviceId => ctx.device_id.as_deref(),
            Var::User => ctx.user.as_deref(),
            Var::ConnectAttributes | Var::PrincipalGroups | Var::TargetGroups => None,
        }
    }

    /// The values of `var`: several for multi-valued keys, at most one otherwise.
    pub(crate) fn values(&self, var: Var) -> Values<'a> {
        match var {
            Var::ConnectAttributes => {
                let flags = self.ctx.map_or([false, false], |c| {
                    [c.connect.persistent_session, c.connect.last_will]
                });
                Values::Flags(flags, 0)
            }
            Var::PrincipalGroups => Values::Slice(self.groups.iter()),
            Var::TargetGroups => Values::Slice(self.target_groups.iter()),
            single => Values::One(self.resolve(single)),
        }
    }
}

/// Iterator over a condition key's values, without allocating.
pub(crate) enum Values<'a> {
    Flags([bool; 2], usize),
    Slice(std::slice::Iter<'a, String>),
    One(Option<&'a str>),
}

impl<'a> Iterator for Values<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        match self {
            Values::Flags(flags, i) => {
                while *i < flags.len() {
                    let k = *i;
                    *i += 1;
                    if flags[k] {
                        return Some(CONNECT_ATTRS[k]);
                    }
                }
                None
            }
            Values::Slice(it) => it.next().map(String::as_str),
            Values::One(v) => v.take(),
        }
    }
}
