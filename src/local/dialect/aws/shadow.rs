//! The AWS Device Shadow service, hub side.
//!
//! [`ShadowService`] is the shadow engine of the hub's AWS dialect: it keeps every thing's
//! classic and named shadows and answers the requests devices and applications publish on the
//! reserved shadow topics (PROTOCOLS.md §1.7), producing exactly the documents AWS IoT Core
//! publishes. It is pure: no networking and no hub access. The dialect glue parses a topic with
//! [`parse_request_topic`], calls [`ShadowService::handle`], and publishes the returned
//! [`ShadowMessage`]s through the broker's routing (so every subscriber whose policy allows it
//! receives them). Cloud-side (admin) calls use [`ShadowService::update`],
//! [`ShadowService::document`], [`ShadowService::delete`] and friends, which return typed errors.
//!
//! The shadow model itself — merge patches, versions, per-leaf metadata and the delta — is
//! [`TwinDocument`] with [`TwinLimits::aws`]; this module adds what is specific to the AWS wire:
//! topics, request parsing and its error documents, the response documents, deletion, and
//! persistence.
//!
//! # Topics and documents
//!
//! | request | answers, in order |
//! |---|---|
//! | `<prefix>/get` | `/get/accepted` (the full shadow document) or `/get/rejected` |
//! | `<prefix>/update` | `/update/accepted`, then `/update/delta` if the shadow has a delta, then `/update/documents`; or `/update/rejected` |
//! | `<prefix>/delete` | `/delete/accepted` (`{"version","timestamp","clientToken"}`) or `/delete/rejected` |
//!
//! where `<prefix>` is [`topic_prefix`]: `$aws/things/<thing>/shadow` for the classic shadow and
//! `$aws/things/<thing>/shadow/name/<shadow>` for a named one. A rejected request gets exactly
//! one message, the error document `{"code": <HTTP status>, "message": "…", "timestamp": T,
//! "clientToken": "…"}` (the token only when the request carried a valid one), and changes
//! nothing. All timestamps are Unix epoch seconds.
//!
//! # Update rules
//!
//! - The request must be a UTF-8 JSON object (`415` / `400 Invalid JSON`) of at most
//!   [`ShadowLimits::max_request_bytes`] (`413`), with a `state` node (`400 Missing required
//!   node: state`).
//! - `state` is an object whose only members are `desired` and `reported` (`400 State contains
//!   an invalid node`), each an object or `null` (`400 Desired node must be an object` /
//!   `Reported node must be an object`). `"desired": null` empties that section; a member set to
//!   `null` is deleted; objects merge; arrays and scalars replace what was there. Arrays may not
//!   contain `null`.
//! - `"state": null` empties both sections and is accepted (the shadow keeps existing). Older
//!   AWS documentation describes it, and AWS answers it with `{"state": null, "metadata":
//!   {"timestamp": T}, …}`. Any other non-object `state` is `400 State node must be an object`.
//! - `"state": {}` and empty sections (`"desired": {}`) are accepted, change no value, and still
//!   take a version.
//! - `version`, when present (and not `null`), must be a non-negative integer (`400 Invalid
//!   version`) equal to the shadow's current version (`409 Version conflict`).
//! - `clientToken`, when present, must be a string of at most 64 bytes (`400 Invalid
//!   clientToken`); it is echoed in every answer to the request.
//! - Nesting deeper than [`TwinLimits::max_depth`] is `400 JSON contains too many levels of
//!   nesting; maximum is 6`; a state (desired and reported together, metadata not counted) over
//!   8 KiB after the update is `413 The payload exceeds the maximum size allowed`.
//! - Every accepted update increments the version by one, whether or not it changed a value.
//!
//! The `/update/accepted` document holds only what the request held: its `state` as sent
//! (including the `null`s), `metadata` mirroring it with `{"timestamp": T}` for every leaf
//! (scalar, array, or `null`), the new `version`, `timestamp` and `clientToken`.
//!
//! # When `/update/delta` is published
//!
//! After **every accepted update that leaves the shadow with a non-empty delta**, whichever
//! section the update touched, and it carries the **whole** delta. This follows AWS's own
//! wording — the delta message is published when an accepted change leaves desired and
//! reported different, and "contains all of these attributes, regardless of whether these
//! attributes were contained in the current update message or were already stored" — and the
//! behaviour AWS's SDK samples show against the real service: a device reporting a value that
//! differs from the desired one does receive a delta, and an update that brings the sections
//! into sync publishes none. The delta document is `{"state": <delta>, "metadata": <the desired
//! metadata of the delta's leaves>, "version", "timestamp", "clientToken"}`.
//!
//! The delta itself is [`TwinDocument::delta`]: every desired member that reported lacks or
//! holds with another value, recursing into objects present on both sides, arrays compared and
//! copied whole; members only in reported are never in it.
//!
//! # `/update/documents`
//!
//! `{"previous": {"state", "metadata", "version"}, "current": {"state", "metadata", "version"},
//! "timestamp", "clientToken"}`, where `state` holds `desired` and `reported` (empty sections
//! left out, no delta). `previous` is `null` when the update created the shadow (it did not
//! exist, or had been deleted), as AWS sends it.
//!
//! # Deleting, and versions after a delete
//!
//! A delete removes the shadow's content; a get or delete of it is then `404 No shadow exists
//! with name: '<name>'` (`<name>` is the shadow name, or the thing name for the classic shadow,
//! in single quotes as the real service writes it). The delete does not take a version:
//! `/delete/accepted` carries the version the shadow had. AWS does not reset the version on
//! delete: a shadow created again within 48 hours continues from the deleted one's version
//! (its first update gets that version + 1); after 48 hours it starts again from 0
//! ([`ShadowLimits::deleted_version_retention`]).
//!
//! # Get and delete payloads
//!
//! AWS ignores their content, except that its SDKs send `{"clientToken": "…"}` and get it echoed
//! in the answer. So a JSON object payload's `clientToken` is echoed (and must be valid); any
//! other content is ignored.
//!
//! # Persistence
//!
//! Every change is handed to the caller's `persist` callback as the service's whole state
//! ([`ShadowService::save_state`]) after it is applied and before any answer exists, under the
//! service's lock (so saves happen in order). If saving fails the change is undone and the
//! request is answered `500 Internal service failure`: an acknowledged change survives a
//! restart, and nothing is half-applied. The callback must not call back into the service.
//!
//! ```
//! use fleetkit::local::dialect::aws::shadow::{
//!     parse_request_topic, ShadowLimits, ShadowRequest, ShadowService,
//! };
//! use time::OffsetDateTime;
//!
//! let shadows = ShadowService::new(ShadowLimits::default());
//! let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
//! let no_store = |_: &serde_json::Value| Ok(());
//!
//! let (id, request) = parse_request_topic("$aws/things/lamp-1/shadow/update").unwrap();
//! assert_eq!(request, ShadowRequest::Update);
//! let answers = shadows.handle(
//!     &id,
//!     request,
//!     br#"{"state": {"desired": {"color": "red"}}, "clientToken": "t-1"}"#,
//!     now,
//!     &no_store,
//! );
//! let topics: Vec<&str> = answers.iter().map(|m| m.topic.as_str()).collect();
//! assert_eq!(
//!     topics,
//!     [
//!         "$aws/things/lamp-1/shadow/update/accepted",
//!         "$aws/things/lamp-1/shadow/update/delta",
//!         "$aws/things/lamp-1/shadow/update/documents",
//!     ]
//! );
//! let delta: serde_json::Value = serde_json::from_slice(&answers[1].payload).unwrap();
//! assert_eq!(delta["state"], serde_json::json!({"color": "red"}));
//! assert_eq!(delta["version"], 1);
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::{Duration, OffsetDateTime};

use crate::device::twin::{TwinDocument, TwinLimits, TwinUpdate, TwinVersions};
use crate::{Error, Result};

// ---------------------------------------------------------------------------------------------
// AWS's messages (PROTOCOLS.md §1.7, the Device Shadow error messages page)
// ---------------------------------------------------------------------------------------------

const INVALID_JSON: &str = "Invalid JSON";
const INVALID_VERSION: &str = "Invalid version";
const INVALID_CLIENT_TOKEN: &str = "Invalid clientToken";
const INVALID_NODE: &str = "State contains an invalid node";
const TOO_DEEP_PREFIX: &str = "JSON contains too many levels of nesting; maximum is ";
const VERSION_CONFLICT: &str = "Version conflict";
const TOO_LARGE: &str = "The payload exceeds the maximum size allowed";
const NOT_UTF8: &str = "Unsupported documented encoding; supported encoding is UTF-8";
const INTERNAL: &str = "Internal service failure";

// ---------------------------------------------------------------------------------------------
// Names and topics
// ---------------------------------------------------------------------------------------------

/// Which shadow: a thing's classic shadow (name None) or a named one.
///
/// The fields are not checked; [`ShadowId::new`] and [`parse_request_topic`] build only valid
/// ones (thing names `[a-zA-Z0-9:_-]{1,128}`, shadow names `[$a-zA-Z0-9:_-]{1,64}`,
/// PROTOCOLS.md §1.5).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShadowId {
    /// The thing's name.
    pub thing: String,
    /// The shadow's name, `None` for the classic (unnamed) shadow.
    pub name: Option<String>,
}

impl ShadowId {
    /// A shadow id after checking both names, or [`Error::InvalidInput`].
    pub fn new(thing: impl Into<String>, name: Option<String>) -> Result<Self> {
        let thing = thing.into();
        if !is_valid_thing_name(&thing) {
            return Err(Error::invalid(
                "thing",
                "a thing name is 1 to 128 of a-z, A-Z, 0-9, ':', '_' and '-'",
            ));
        }
        if let Some(name) = &name
            && !is_valid_shadow_name(name)
        {
            return Err(Error::invalid(
                "shadow name",
                "a shadow name is 1 to 64 of a-z, A-Z, 0-9, '$', ':', '_' and '-'",
            ));
        }
        Ok(ShadowId { thing, name })
    }

    /// The classic (unnamed) shadow of `thing`, unchecked.
    pub fn classic(thing: impl Into<String>) -> Self {
        ShadowId {
            thing: thing.into(),
            name: None,
        }
    }

    /// The shadow `name` of `thing`, unchecked.
    pub fn named(thing: impl Into<String>, name: impl Into<String>) -> Self {
        ShadowId {
            thing: thing.into(),
            name: Some(name.into()),
        }
    }

    /// The name AWS puts in its `404 No shadow exists with name: '…'` message: the shadow's name,
    /// or the thing's for the classic shadow.
    pub fn aws_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.thing)
    }
}

impl fmt::Display for ShadowId {
    /// `classic shadow of <thing>` or `shadow <name> of <thing>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            None => write!(f, "classic shadow of {}", self.thing),
            Some(name) => write!(f, "shadow {name} of {}", self.thing),
        }
    }
}

/// Whether `name` is a valid AWS thing name: `[a-zA-Z0-9:_-]{1,128}`.
pub fn is_valid_thing_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
}

/// Whether `name` is a valid AWS shadow name: `[$a-zA-Z0-9:_-]{1,64}`.
pub fn is_valid_shadow_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'$' | b':' | b'_' | b'-'))
}

/// The three requests a device or app publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowRequest {
    /// `…/get`: read the whole shadow.
    Get,
    /// `…/update`: change desired and/or reported state.
    Update,
    /// `…/delete`: delete the shadow.
    Delete,
}

impl ShadowRequest {
    /// The topic suffix: `"get"`, `"update"` or `"delete"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ShadowRequest::Get => "get",
            ShadowRequest::Update => "update",
            ShadowRequest::Delete => "delete",
        }
    }
}

/// Parses a request topic `$aws/things/<thing>/shadow[/name/<shadowName>]/{get|update|delete}`
/// (exactly: response topics like `…/get/accepted` return `None`). The thing name must match
/// `[a-zA-Z0-9:_-]{1,128}` and the shadow name `[$a-zA-Z0-9:_-]{1,64}`, otherwise `None`.
///
/// ```
/// use fleetkit::local::dialect::aws::shadow::{parse_request_topic, ShadowId, ShadowRequest};
///
/// assert_eq!(
///     parse_request_topic("$aws/things/pump-7/shadow/name/config/get"),
///     Some((ShadowId::named("pump-7", "config"), ShadowRequest::Get)),
/// );
/// assert_eq!(parse_request_topic("$aws/things/pump-7/shadow/get/accepted"), None);
/// ```
pub fn parse_request_topic(topic: &str) -> Option<(ShadowId, ShadowRequest)> {
    let rest = topic.strip_prefix("$aws/things/")?;
    let (thing, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("shadow/")?;
    let (name, op) = match rest.strip_prefix("name/") {
        Some(named) => {
            let (name, op) = named.split_once('/')?;
            if !is_valid_shadow_name(name) {
                return None;
            }
            (Some(name.to_owned()), op)
        }
        None => (None, rest),
    };
    let request = match op {
        "get" => ShadowRequest::Get,
        "update" => ShadowRequest::Update,
        "delete" => ShadowRequest::Delete,
        _ => return None,
    };
    if !is_valid_thing_name(thing) {
        return None;
    }
    Some((
        ShadowId {
            thing: thing.to_owned(),
            name,
        },
        request,
    ))
}

/// Topic prefix for a shadow: `$aws/things/<thing>/shadow` or `$aws/things/<thing>/shadow/name/<n>`.
pub fn topic_prefix(id: &ShadowId) -> String {
    match &id.name {
        None => format!("$aws/things/{}/shadow", id.thing),
        Some(name) => format!("$aws/things/{}/shadow/name/{name}", id.thing),
    }
}

/// A message the service publishes (through the broker's routing, so every subscriber whose
/// policy allows receiving it gets it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowMessage {
    /// The topic, a response topic under the shadow's [`topic_prefix`].
    pub topic: String,
    /// The JSON document, compact UTF-8.
    pub payload: Vec<u8>,
}

impl ShadowMessage {
    fn new(id: &ShadowId, suffix: &str, document: &Value) -> Self {
        ShadowMessage {
            topic: format!("{}/{suffix}", topic_prefix(id)),
            // A `Value` with string keys always serializes.
            payload: serde_json::to_vec(document).unwrap_or_default(),
        }
    }

    /// The payload parsed as JSON (`Value::Null` if it is not JSON, which the service never
    /// produces).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or(Value::Null)
    }
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

/// What the shadow service accepts. The default is AWS's.
///
/// ```
/// use fleetkit::local::dialect::aws::shadow::ShadowLimits;
///
/// let limits = ShadowLimits::default();
/// assert_eq!(limits.state.max_depth, 6);
/// assert_eq!(limits.state.max_state_bytes, Some(8 * 1024));
/// assert_eq!(limits.max_client_token_bytes, 64);
/// assert_eq!(limits.max_request_bytes, 128 * 1024);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShadowLimits {
    /// The rules for the state document, [`TwinLimits::aws`] by default: depth 6 counted from
    /// the `desired` / `reported` object (arrays count as levels), 8 KiB for desired and
    /// reported together after the update (metadata not counted), no `null` in arrays.
    pub state: TwinLimits,
    /// The longest `clientToken`, in bytes (AWS: 64).
    pub max_client_token_bytes: usize,
    /// The largest request payload, in bytes (AWS's MQTT message limit, 128 KiB).
    pub max_request_bytes: usize,
    /// How long a deleted shadow's version is remembered: a shadow created again within this
    /// time continues from the deleted one's version, later it starts from 0. AWS: 48 hours.
    /// `None` remembers forever.
    pub deleted_version_retention: Option<Duration>,
}

impl Default for ShadowLimits {
    fn default() -> Self {
        ShadowLimits {
            state: TwinLimits::aws(),
            max_client_token_bytes: 64,
            max_request_bytes: 128 * 1024,
            deleted_version_retention: Some(Duration::hours(48)),
        }
    }
}

impl ShadowLimits {
    /// Sets [`state`](Self::state).
    pub fn with_state(mut self, limits: TwinLimits) -> Self {
        self.state = limits;
        self
    }

    /// Sets [`max_client_token_bytes`](Self::max_client_token_bytes).
    pub fn with_max_client_token_bytes(mut self, bytes: usize) -> Self {
        self.max_client_token_bytes = bytes;
        self
    }

    /// Sets [`max_request_bytes`](Self::max_request_bytes).
    pub fn with_max_request_bytes(mut self, bytes: usize) -> Self {
        self.max_request_bytes = bytes;
        self
    }

    /// Sets [`deleted_version_retention`](Self::deleted_version_retention).
    pub fn with_deleted_version_retention(mut self, retention: Option<Duration>) -> Self {
        self.deleted_version_retention = retention;
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Rejections
// ---------------------------------------------------------------------------------------------

/// Why a request was refused: AWS's code and message, and what the typed API returns instead.
#[derive(Debug)]
struct Rejection {
    code: u16,
    message: String,
    /// The offending input, for [`Error::InvalidInput`].
    field: String,
    client_token: Option<String>,
    kind: RejectionKind,
}

#[derive(Debug)]
enum RejectionKind {
    Invalid,
    NotFound,
    Conflict {
        expected: u64,
        current: u64,
    },
    /// Boxed: an `Error` is large, and rejections travel in `Result`s.
    Internal(Box<Error>),
}

impl Rejection {
    fn invalid(code: u16, message: impl Into<String>, field: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
            field: field.into(),
            client_token: None,
            kind: RejectionKind::Invalid,
        }
    }

    fn not_found(id: &ShadowId) -> Self {
        Rejection {
            code: 404,
            message: format!("No shadow exists with name: '{}'", id.aws_name()),
            field: "shadow".into(),
            client_token: None,
            kind: RejectionKind::NotFound,
        }
    }

    fn internal(error: Error) -> Self {
        Rejection {
            code: 500,
            message: INTERNAL.into(),
            field: "shadow".into(),
            client_token: None,
            kind: RejectionKind::Internal(Box::new(error)),
        }
    }

    fn with_token(mut self, token: Option<String>) -> Self {
        self.client_token = token;
        self
    }

    /// Reads an error from [`TwinDocument::apply`] as AWS would have answered the request.
    ///
    /// The twin names the offending path and says why in its own words; the classification
    /// below relies on those words, and the unit tests pin each case.
    fn from_twin(error: Error, limits: &TwinLimits) -> Self {
        match error {
            Error::Conflict {
                expected, current, ..
            } => Rejection {
                code: 409,
                message: VERSION_CONFLICT.into(),
                field: "version".into(),
                client_token: None,
                kind: RejectionKind::Conflict { expected, current },
            },
            Error::InvalidInput { field, reason } => {
                let (code, message) = if reason.starts_with("nested ") {
                    (400, format!("{TOO_DEEP_PREFIX}{}", limits.max_depth))
                } else if reason.contains("bytes of JSON") {
                    (413, TOO_LARGE.to_owned())
                } else if reason.starts_with("keys ") {
                    // Empty keys and keys starting with '$' (the twin model reserves them).
                    (400, INVALID_NODE.to_owned())
                } else if field.ends_with("version") {
                    (400, INVALID_VERSION.to_owned())
                } else {
                    // Arrays holding null, and anything else the model refuses.
                    (400, INVALID_JSON.to_owned())
                };
                Rejection::invalid(code, message, field)
            }
            other => Rejection::internal(other),
        }
    }

    fn error_document(&self, now: OffsetDateTime) -> Value {
        let mut doc = Map::new();
        doc.insert("code".into(), self.code.into());
        doc.insert("message".into(), self.message.clone().into());
        doc.insert("timestamp".into(), now.unix_timestamp().into());
        if let Some(token) = &self.client_token {
            doc.insert("clientToken".into(), token.clone().into());
        }
        Value::Object(doc)
    }

    fn into_error(self, id: &ShadowId) -> Error {
        match self.kind {
            RejectionKind::Invalid => Error::InvalidInput {
                field: self.field,
                reason: self.message,
            },
            RejectionKind::NotFound => Error::NotFound {
                what: "shadow",
                id: id.to_string(),
            },
            RejectionKind::Conflict { expected, current } => Error::Conflict {
                what: id.to_string(),
                expected,
                current,
            },
            RejectionKind::Internal(error) => *error,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------------------------

/// What the service knows about one shadow.
#[derive(Debug, Clone)]
enum Slot {
    Live(TwinDocument),
    /// Deleted at Unix second `at`, having reached `version`.
    Deleted {
        version: u64,
        at: i64,
    },
}

type Shadows = BTreeMap<ShadowId, Slot>;

/// The persisting callback every change goes through (see the module docs).
type Persist<'a> = &'a dyn Fn(&Value) -> Result<()>;

/// The hub's AWS Device Shadow service: every thing's classic and named shadows, behind one
/// lock. See the [module documentation](self) for the rules it applies.
#[derive(Debug)]
pub struct ShadowService {
    limits: ShadowLimits,
    shadows: Mutex<Shadows>,
}

impl Default for ShadowService {
    fn default() -> Self {
        ShadowService::new(ShadowLimits::default())
    }
}

impl ShadowService {
    /// An empty service enforcing `limits`.
    pub fn new(limits: ShadowLimits) -> Self {
        ShadowService {
            limits,
            shadows: Mutex::new(BTreeMap::new()),
        }
    }

    /// The limits this service enforces.
    pub fn limits(&self) -> &ShadowLimits {
        &self.limits
    }

    /// Handles a device/app request published on a request topic. Returns the messages to
    /// publish, in order (for an accepted update: `/update/accepted`, then `/update/delta` if
    /// the shadow has a delta, then `/update/documents`). A rejected request yields exactly one
    /// `/<op>/rejected` message with AWS's error document `{"code": <int>, "message": "…",
    /// "timestamp": T, "clientToken": "…"}` (the token if given and valid), and changes nothing.
    ///
    /// `persist` is called with the service's whole state (what
    /// [`save_state`](Self::save_state) returns) after the change is applied and before any
    /// answer is produced, while the internal lock is held; if it returns `Err`, the change is
    /// undone and the answer is `/rejected` with code 500 `Internal service failure`. Gets never
    /// call it.
    pub fn handle(
        &self,
        id: &ShadowId,
        request: ShadowRequest,
        payload: &[u8],
        now: OffsetDateTime,
        persist: &dyn Fn(&Value) -> Result<()>,
    ) -> Vec<ShadowMessage> {
        let answered = match request {
            ShadowRequest::Update => self.parse_update(payload).and_then(|(request, token)| {
                self.run_update(id, &request, token, now, persist)
                    .map(|(_, messages)| messages)
            }),
            ShadowRequest::Get => self
                .token_of_aside(payload)
                .and_then(|token| self.run_get(id, token, now))
                .map(|doc| vec![ShadowMessage::new(id, "get/accepted", &doc)]),
            ShadowRequest::Delete => self
                .token_of_aside(payload)
                .and_then(|token| self.run_delete(id, token, now, persist)),
        };
        match answered {
            Ok(messages) => messages,
            Err(rejection) => vec![ShadowMessage::new(
                id,
                &format!("{}/rejected", request.as_str()),
                &rejection.error_document(now),
            )],
        }
    }

    /// Cloud-side (admin) update with an AWS update request document `{"state": {"desired":
    /// …}, "version"?, "clientToken"?}`: the same rules and the same published messages as a
    /// device update (accepted, delta and documents are published too, since AWS publishes them
    /// for REST updates as well). Returns the `/update/accepted` document and the messages.
    ///
    /// Errors are typed: a version mismatch is [`Error::Conflict`]; a bad or too large document
    /// is [`Error::InvalidInput`] whose `reason` is AWS's message; a failed `persist` returns
    /// its own error (and the change is undone).
    pub fn update(
        &self,
        id: &ShadowId,
        request: &Value,
        now: OffsetDateTime,
        persist: &dyn Fn(&Value) -> Result<()>,
    ) -> Result<(Value, Vec<ShadowMessage>)> {
        let checked = match serde_json::to_vec(request) {
            Ok(bytes) if bytes.len() > self.limits.max_request_bytes => {
                Err(Rejection::invalid(413, TOO_LARGE, "request"))
            }
            Ok(_) => self.token_of(request),
            Err(e) => Err(Rejection::invalid(400, INVALID_JSON, e.to_string())),
        };
        checked
            .and_then(|token| self.run_update(id, request, token, now, persist))
            .map_err(|rejection| rejection.into_error(id))
    }

    /// The full GET document (`state.desired` / `reported` / `delta`, `metadata`, `version`,
    /// `timestamp`), or [`Error::NotFound`] with `what: "shadow"`.
    pub fn document(&self, id: &ShadowId, now: OffsetDateTime) -> Result<Value> {
        self.run_get(id, None, now)
            .map_err(|rejection| rejection.into_error(id))
    }

    /// The shadow as a [`TwinDocument`] (for the hub's generic twin API), [`Error::NotFound`]
    /// if there is none.
    ///
    /// Its `version` is the shadow version; it tracks metadata. Its section versions are not
    /// AWS concepts: they count the updates that touched each section since the shadow was
    /// (re)created.
    pub fn twin(&self, id: &ShadowId) -> Result<TwinDocument> {
        match self.lock().get(id) {
            Some(Slot::Live(doc)) => Ok(doc.clone()),
            _ => Err(Rejection::not_found(id).into_error(id)),
        }
    }

    /// Cloud-side delete; the messages are `/delete/accepted`. [`Error::NotFound`] if there is
    /// no such shadow; a failed `persist` returns its error and keeps the shadow.
    pub fn delete(
        &self,
        id: &ShadowId,
        now: OffsetDateTime,
        persist: &dyn Fn(&Value) -> Result<()>,
    ) -> Result<Vec<ShadowMessage>> {
        self.run_delete(id, None, now, persist)
            .map_err(|rejection| rejection.into_error(id))
    }

    /// Names of a thing's named shadows, sorted.
    pub fn named_shadows(&self, thing: &str) -> Vec<String> {
        let shadows = self.lock();
        shadows
            .range(ShadowId::classic(thing)..)
            .take_while(|(id, _)| id.thing == thing)
            .filter(|(_, slot)| matches!(slot, Slot::Live(_)))
            .filter_map(|(id, _)| id.name.clone())
            .collect()
    }

    /// Every existing shadow, sorted by thing, classic first, then by name.
    pub fn shadows(&self) -> Vec<ShadowId> {
        self.lock()
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::Live(_)))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The whole state, to be written to disk and given back to [`load_state`](Self::load_state):
    /// `{"shadows": [{"thing", "name"?, "document": <TwinDocument>} | {"thing", "name"?,
    /// "deleted": {"version", "at"}}]}` (deleted shadows are kept for their version).
    pub fn save_state(&self) -> Value {
        state_of(&self.lock())
    }

    /// Replaces the whole state with one [`save_state`](Self::save_state) produced (`null` is an
    /// empty state). On bad input it fails with [`Error::InvalidInput`] and changes nothing.
    pub fn load_state(&self, state: Value) -> Result<()> {
        let saved: SavedState = if state.is_null() {
            SavedState::default()
        } else {
            serde_json::from_value(state)
                .map_err(|e| Error::invalid("shadow state", e.to_string()))?
        };
        let mut shadows = Shadows::new();
        for entry in saved.shadows {
            let id = ShadowId::new(entry.thing, entry.name)
                .map_err(|e| Error::invalid("shadow state", e.to_string()))?;
            let slot = match (entry.document, entry.deleted) {
                (Some(doc), None) => Slot::Live(doc.with_metadata()),
                (None, Some(tomb)) => Slot::Deleted {
                    version: tomb.version,
                    at: tomb.at,
                },
                _ => {
                    return Err(Error::invalid(
                        "shadow state",
                        format!("{id}: exactly one of document and deleted is expected"),
                    ));
                }
            };
            if shadows.insert(id.clone(), slot).is_some() {
                return Err(Error::invalid(
                    "shadow state",
                    format!("{id} appears twice"),
                ));
            }
        }
        *self.lock() = shadows;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Requests
    // -----------------------------------------------------------------------------------------

    fn lock(&self) -> MutexGuard<'_, Shadows> {
        // Every change replaces whole slots, so a panic elsewhere cannot leave one half-done.
        self.shadows.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An `/update` payload as JSON, and its client token.
    fn parse_update(&self, payload: &[u8]) -> Result<(Value, Option<String>), Rejection> {
        if payload.len() > self.limits.max_request_bytes {
            return Err(Rejection::invalid(413, TOO_LARGE, "request"));
        }
        let text = std::str::from_utf8(payload)
            .map_err(|_| Rejection::invalid(415, NOT_UTF8, "request"))?;
        let request: Value = serde_json::from_str(text)
            .map_err(|e| Rejection::invalid(400, INVALID_JSON, format!("request: {e}")))?;
        let token = self.token_of(&request)?;
        Ok((request, token))
    }

    /// The request's `clientToken`, if it has a valid one.
    fn token_of(&self, request: &Value) -> Result<Option<String>, Rejection> {
        match request.get("clientToken") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(token)) if token.len() <= self.limits.max_client_token_bytes => {
                Ok(Some(token.clone()))
            }
            Some(_) => Err(Rejection::invalid(400, INVALID_CLIENT_TOKEN, "clientToken")),
        }
    }

    /// The client token of a get or delete payload, whose content AWS otherwise ignores.
    fn token_of_aside(&self, payload: &[u8]) -> Result<Option<String>, Rejection> {
        if payload.len() > self.limits.max_request_bytes {
            return Err(Rejection::invalid(413, TOO_LARGE, "request"));
        }
        match serde_json::from_slice::<Value>(payload) {
            Ok(request @ Value::Object(_)) => self.token_of(&request),
            _ => Ok(None),
        }
    }

    fn run_get(
        &self,
        id: &ShadowId,
        token: Option<String>,
        now: OffsetDateTime,
    ) -> Result<Value, Rejection> {
        let shadows = self.lock();
        let Some(Slot::Live(doc)) = shadows.get(id) else {
            return Err(Rejection::not_found(id).with_token(token));
        };
        let mut document = doc.to_aws_shadow_document(now);
        with_token(&mut document, token);
        Ok(document)
    }

    fn run_delete(
        &self,
        id: &ShadowId,
        token: Option<String>,
        now: OffsetDateTime,
        persist: Persist<'_>,
    ) -> Result<Vec<ShadowMessage>, Rejection> {
        let mut shadows = self.lock();
        let version = match shadows.get(id) {
            Some(Slot::Live(doc)) => doc.version(),
            _ => return Err(Rejection::not_found(id).with_token(token)),
        };
        let tomb = Slot::Deleted {
            version,
            at: now.unix_timestamp(),
        };
        let before = shadows.insert(id.clone(), tomb);
        if let Err(e) = persist(&state_of(&shadows)) {
            restore(&mut shadows, id, before);
            return Err(Rejection::internal(e).with_token(token));
        }
        let mut accepted = Map::new();
        accepted.insert("version".into(), version.into());
        accepted.insert("timestamp".into(), now.unix_timestamp().into());
        let mut accepted = Value::Object(accepted);
        with_token(&mut accepted, token);
        Ok(vec![ShadowMessage::new(id, "delete/accepted", &accepted)])
    }

    /// Applies an update request whose size and client token were checked.
    fn run_update(
        &self,
        id: &ShadowId,
        request: &Value,
        token: Option<String>,
        now: OffsetDateTime,
        persist: Persist<'_>,
    ) -> Result<(Value, Vec<ShadowMessage>), Rejection> {
        let (update, echo) = interpret(request).map_err(|r| r.with_token(token.clone()))?;
        let mut shadows = self.lock();

        // The document to change: a copy of the live one, or a new one continuing from a
        // recently deleted shadow's version.
        let (mut doc, previous) = match shadows.get(id) {
            Some(Slot::Live(doc)) => (doc.clone(), Some(document_part(doc, now))),
            Some(Slot::Deleted { version, at }) => {
                let forgotten = self
                    .limits
                    .deleted_version_retention
                    .is_some_and(|keep| now.unix_timestamp() - at > keep.whole_seconds());
                (new_document(if forgotten { 0 } else { *version }), None)
            }
            None => (new_document(0), None),
        };
        apply(&mut doc, &update, &self.limits.state, now)
            .map_err(|r| r.with_token(token.clone()))?;

        let before = shadows.insert(id.clone(), Slot::Live(doc.clone()));
        if let Err(e) = persist(&state_of(&shadows)) {
            restore(&mut shadows, id, before);
            return Err(Rejection::internal(e).with_token(token));
        }
        drop(shadows);

        let timestamp = now.unix_timestamp();
        let mut accepted = Map::new();
        accepted.insert("metadata".into(), request_metadata(&echo, timestamp));
        accepted.insert("state".into(), echo);
        accepted.insert("version".into(), doc.version().into());
        accepted.insert("timestamp".into(), timestamp.into());
        let mut accepted = Value::Object(accepted);
        with_token(&mut accepted, token.clone());

        let mut messages = vec![ShadowMessage::new(id, "update/accepted", &accepted)];
        if let Some(mut delta) = doc.to_aws_delta_document(now) {
            with_token(&mut delta, token.clone());
            messages.push(ShadowMessage::new(id, "update/delta", &delta));
        }
        let mut documents = Map::new();
        documents.insert("previous".into(), previous.unwrap_or(Value::Null));
        documents.insert("current".into(), document_part(&doc, now));
        documents.insert("timestamp".into(), timestamp.into());
        let mut documents = Value::Object(documents);
        with_token(&mut documents, token);
        messages.push(ShadowMessage::new(id, "update/documents", &documents));
        Ok((accepted, messages))
    }
}

/// Reads an update request into the twin update it asks for and the `state` to echo.
fn interpret(request: &Value) -> Result<(TwinUpdate, Value), Rejection> {
    let echo = request.get("state").cloned().unwrap_or(Value::Null);
    let mut effective = request.clone();
    if let Some(state) = effective.get_mut("state") {
        match state {
            // `"state": null` empties both sections.
            Value::Null => {
                let mut both = Map::new();
                both.insert("desired".into(), Value::Null);
                both.insert("reported".into(), Value::Null);
                *state = Value::Object(both);
            }
            // An empty section changes nothing; the twin model refuses empty patches.
            Value::Object(sections) => sections.retain(|key, value| {
                !(matches!(key.as_str(), "desired" | "reported")
                    && value.as_object().is_some_and(Map::is_empty))
            }),
            _ => {}
        }
    }
    // Its reasons are AWS's own messages.
    let update = TwinUpdate::from_aws_update_request(&effective).map_err(|e| match e {
        Error::InvalidInput { field, reason } => Rejection::invalid(400, reason, field),
        other => Rejection::internal(other),
    })?;
    Ok((update, echo))
}

/// Applies `update` to `doc`, or leaves it as it was.
fn apply(
    doc: &mut TwinDocument,
    update: &TwinUpdate,
    limits: &TwinLimits,
    now: OffsetDateTime,
) -> Result<(), Rejection> {
    if update.desired_update().is_some() || update.reported_update().is_some() {
        return doc
            .apply(update, limits, now)
            .map(drop)
            .map_err(|e| Rejection::from_twin(e, limits));
    }
    // Nothing to change (`"state": {}`): only the version moves, under the same condition.
    let current = doc.version();
    if let Some(expected) = update.expected_version()
        && expected != current
    {
        return Err(Rejection::from_twin(
            Error::Conflict {
                what: "shadow".into(),
                expected,
                current,
            },
            limits,
        ));
    }
    let version = current
        .checked_add(1)
        .ok_or_else(|| Rejection::invalid(400, INVALID_VERSION, "version"))?;
    doc.set_versions(TwinVersions {
        version,
        ..doc.versions()
    });
    Ok(())
}

/// A new, empty shadow whose next update takes version `version + 1`.
fn new_document(version: u64) -> TwinDocument {
    let mut doc = TwinDocument::new().with_metadata();
    doc.set_versions(TwinVersions {
        version,
        ..TwinVersions::default()
    });
    doc
}

/// `{"state": {desired?, reported?}, "metadata": {…}, "version": N}`, a half of
/// `/update/documents`.
fn document_part(doc: &TwinDocument, now: OffsetDateTime) -> Value {
    let mut document = doc.to_aws_shadow_document(now);
    if let Value::Object(fields) = &mut document {
        fields.remove("timestamp");
        if let Some(Value::Object(state)) = fields.get_mut("state") {
            state.remove("delta");
        }
    }
    document
}

/// The metadata of an `/update/accepted` document: `state` mirrored, with `{"timestamp": T}`
/// for every leaf (a scalar, an array, or a `null`).
fn request_metadata(state: &Value, timestamp: i64) -> Value {
    match state {
        Value::Object(members) => Value::Object(
            members
                .iter()
                .map(|(key, value)| (key.clone(), request_metadata(value, timestamp)))
                .collect(),
        ),
        _ => {
            let mut leaf = Map::new();
            leaf.insert("timestamp".into(), timestamp.into());
            Value::Object(leaf)
        }
    }
}

fn with_token(document: &mut Value, token: Option<String>) {
    if let (Value::Object(fields), Some(token)) = (document, token) {
        fields.insert("clientToken".into(), token.into());
    }
}

/// Puts back what a failed save replaced.
fn restore(shadows: &mut Shadows, id: &ShadowId, before: Option<Slot>) {
    match before {
        Some(slot) => shadows.insert(id.clone(), slot),
        None => shadows.remove(id),
    };
}

// ---------------------------------------------------------------------------------------------
// Saved state
// ---------------------------------------------------------------------------------------------

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedState {
    #[serde(default)]
    shadows: Vec<SavedShadow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedShadow {
    thing: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    document: Option<TwinDocument>,
    #[serde(default)]
    deleted: Option<Tombstone>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tombstone {
    version: u64,
    at: i64,
}

#[derive(Serialize)]
struct SavedStateRef<'a> {
    shadows: Vec<SavedShadowRef<'a>>,
}

#[derive(Serialize)]
struct SavedShadowRef<'a> {
    thing: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    document: Option<&'a TwinDocument>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted: Option<Tombstone>,
}

fn state_of(shadows: &Shadows) -> Value {
    let saved = SavedStateRef {
        shadows: shadows
            .iter()
            .map(|(id, slot)| {
                let (document, deleted) = match slot {
                    Slot::Live(doc) => (Some(doc), None),
                    Slot::Deleted { version, at } => (
                        None,
                        Some(Tombstone {
                            version: *version,
                            at: *at,
                        }),
                    ),
                };
                SavedShadowRef {
                    thing: &id.thing,
                    name: id.name.as_deref(),
                    document,
                    deleted,
                }
            })
            .collect(),
    };
    // Twin documents and plain structs always serialize to JSON.
    serde_json::to_value(saved).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests;
