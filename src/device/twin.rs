//! The cloud-neutral twin: desired and reported state, versions, merge-patch updates and the
//! delta between them.
//!
//! AWS calls it a *device shadow*, Azure a *device twin*, Google Cloud IoT Core *config* and
//! *state*. All three keep two JSON objects per device — what the application **desires** and
//! what the device **reports** — and number their changes. [`TwinDocument`] is that model as pure
//! data and rules, with no I/O: the device client keeps one as its local copy, the local hub's
//! twin service keeps the authoritative one, and each cloud dialect maps its wire documents onto
//! it with the conversions here, so the mapping is tested in one place.
//!
//! # Updates
//!
//! A [`TwinUpdate`] carries a JSON merge patch (RFC 7386, as both AWS shadows and Azure twins use
//! it) for either section or both: objects merge recursively, `null` deletes a member, arrays and
//! scalars replace whatever was there. An update may name the document version it was based on
//! (optimistic concurrency, AWS's `version` in an update request); if the document has moved on,
//! [`TwinDocument::apply`] fails with [`Error::Conflict`] and changes nothing. Every accepted
//! update bumps the document [`version`](TwinDocument::version) by one, and the `$version` of each
//! section it touched — even when the patch changed no value, as the clouds do. Bad input (a patch
//! that is not an object, an empty patch, a document over the dialect's [`TwinLimits`]) is
//! [`Error::InvalidInput`] naming the offending path, and also changes nothing.
//!
//! # Versions and how each cloud numbers its documents
//!
//! | fleetkit | AWS shadow (PROTOCOLS.md §1.7) | Azure twin (§2.5) | Google config/state (§4.4, §4.6) |
//! |---|---|---|---|
//! | `desired` | `state.desired` | `properties.desired` | config (replaced whole) |
//! | `reported` | `state.reported` | `properties.reported` | state (replaced whole) |
//! | `version` | `version` | twin `version` (service side) | — |
//! | `desired_version` | — | `desired.$version` | config version |
//! | `reported_version` | — | `reported.$version` | — |
//! | metadata | `metadata` (`{"timestamp": s}` per leaf) | `$metadata` (not emitted, see below) | — |
//! | [`delta`](TwinDocument::delta) | `state.delta`, `/update/delta` | — | — |
//!
//! Google's config and state are opaque bytes that are replaced whole; a dialect that carries JSON
//! in them uses [`TwinUpdate::replace_desired`] / [`TwinUpdate::replace_reported`] and
//! [`TwinLimits::gcp`].
//!
//! # Metadata
//!
//! Tracking when each leaf was last written (AWS `metadata`, Azure `$metadata`) is optional:
//! [`TwinDocument::with_metadata`] turns it on. A leaf is a scalar or a whole array (arrays are
//! replaced whole, so they have one timestamp); an object's time is its latest leaf's. Timestamps
//! are kept to the millisecond.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::Error as _;
use serde::ser::SerializeStruct as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::{Error, Result};

/// A JSON object, the type of a twin section and of a patch.
type Object = Map<String, Value>;

/// One of the two halves of a twin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Section {
    /// What the application wants the device to be (AWS `desired`, Azure desired properties,
    /// Google config).
    Desired,
    /// What the device says it is (AWS `reported`, Azure reported properties, Google state).
    Reported,
}

impl Section {
    /// The section's name as it appears in documents and error paths: `"desired"` or
    /// `"reported"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Desired => "desired",
            Section::Reported => "reported",
        }
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The three version numbers of a twin.
///
/// `version` counts accepted updates of the whole document (AWS shadow `version`); the section
/// versions count the updates that touched that section (Azure's per-section `$version`). A new
/// document has all three at 0 and the first accepted update makes them 1 where it applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TwinVersions {
    /// The document version, bumped by every accepted update.
    pub version: u64,
    /// Bumped by every accepted update that touched `desired`.
    pub desired_version: u64,
    /// Bumped by every accepted update that touched `reported`.
    pub reported_version: u64,
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

/// What a dialect accepts in a twin, enforced on every update.
///
/// An update that breaks a limit fails with [`Error::InvalidInput`] whose `field` is the path of
/// the offending member (`desired.a.b.c`, `reported.list[2]`, or `desired` / `state` for sizes),
/// and the document is left as it was.
///
/// Some rules hold in every dialect and are not configurable: keys must not be empty, and keys
/// starting with `$` are reserved (Azure uses them for `$version` and `$metadata`, and fleetkit's
/// Azure mapping relies on that).
///
/// **Depth** is the JSON nesting of a section, counting the section's own object as level 1
/// and every object *or array* inside it as one more: `{"a": 1}` is 1 level deep,
/// `{"a": {"b": 1}}` and `{"a": [1]}` are 2. This is the same as the number of keys and array
/// indexes on the path to the deepest value.
///
/// **Sizes** are measured as compact JSON (no whitespace), without metadata or `$version`, which
/// the clouds also exclude.
///
/// The constructors give each cloud's limits; the sources are cited on each. Where the reference
/// (`PROTOCOLS.md`) is silent the value is an assumption, and says so.
///
/// ```
/// use fleetkit::device::twin::TwinLimits;
///
/// let aws = TwinLimits::aws();
/// assert_eq!(aws.max_depth, 6);
/// assert_eq!(aws.max_state_bytes, Some(8 * 1024));
///
/// // Azure IoT Hubs created before 2020 allowed 5 levels instead of 10.
/// let old_azure = TwinLimits::azure().with_max_depth(5);
/// assert_eq!(old_azure.max_section_bytes, Some(32 * 1024));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TwinLimits {
    /// The deepest nesting allowed in a section (see the type's docs for how levels count).
    pub max_depth: usize,
    /// The largest a single section may be, in bytes of compact JSON.
    pub max_section_bytes: Option<usize>,
    /// The largest `{"desired": …, "reported": …}` may be together, in bytes of compact JSON
    /// (empty sections omitted).
    pub max_state_bytes: Option<usize>,
    /// The longest key, in UTF-8 bytes.
    pub max_key_bytes: Option<usize>,
    /// The longest string value, in UTF-8 bytes.
    pub max_string_bytes: Option<usize>,
    /// Whether keys are restricted to Azure's character set: no control characters (C0, C1), no
    /// `.`, `$` or space anywhere in the key.
    pub restricted_key_chars: bool,
    /// Whether arrays may contain `null` (AWS: they may not).
    pub nulls_in_arrays: bool,
}

impl TwinLimits {
    /// AWS IoT Device Shadow.
    ///
    /// - Depth 6: the 400 error `JSON contains too many levels of nesting; maximum is 6`
    ///   (PROTOCOLS.md §1.7). **Assumption**: the message does not say where counting starts;
    ///   here it starts at the `desired` / `reported` object, and arrays count as levels.
    /// - 8 KiB for the whole state document (`desired` and `reported` together), metadata not
    ///   counted (§1.7, where the 8 KB figure is marked unverified; KB is taken as 1024 bytes).
    /// - Arrays may not contain `null` (§1.7, delta rules).
    /// - No key or string length rules are documented; none are applied.
    pub const fn aws() -> Self {
        TwinLimits {
            max_depth: 6,
            max_section_bytes: None,
            max_state_bytes: Some(8 * 1024),
            max_key_bytes: None,
            max_string_bytes: None,
            restricted_key_chars: false,
            nulls_in_arrays: false,
        }
    }

    /// Azure IoT Hub device twins.
    ///
    /// - 32 KiB for each of desired and reported, `$version` and `$metadata` not counted
    ///   (PROTOCOLS.md §2.9).
    /// - Depth 10 — for hubs created before 2020 it was 5: use
    ///   [`with_max_depth(5)`](Self::with_max_depth). **Assumption**: §2.9 marks Azure's depth
    ///   and key limits unverified; 10 is Microsoft's device-twin guide as remembered, whose
    ///   example may count one level fewer than this type does, which makes this limit stricter
    ///   by one level at most, never laxer.
    /// - Keys of at most 1 KiB without control characters, `.`, `$` or space; strings of at most
    ///   4 KiB. **Assumption**, from the same guide, not in PROTOCOLS.md.
    pub const fn azure() -> Self {
        TwinLimits {
            max_depth: 10,
            max_section_bytes: Some(32 * 1024),
            max_state_bytes: None,
            max_key_bytes: Some(1024),
            max_string_bytes: Some(4 * 1024),
            restricted_key_chars: true,
            nulls_in_arrays: true,
        }
    }

    /// Google Cloud IoT Core / ClearBlade config and state.
    ///
    /// - 64 KiB each for config (desired) and state (reported) (PROTOCOLS.md §4.6, §4.7).
    /// - Google treats both as opaque bytes, so it has no JSON rules; depth 32 is fleetkit's
    ///   choice (**assumption**), to keep the recursion over documents bounded.
    pub const fn gcp() -> Self {
        TwinLimits {
            max_depth: 32,
            max_section_bytes: Some(64 * 1024),
            max_state_bytes: None,
            max_key_bytes: None,
            max_string_bytes: None,
            restricted_key_chars: false,
            nulls_in_arrays: true,
        }
    }

    /// The strictest of [`aws`](Self::aws), [`azure`](Self::azure) and [`gcp`](Self::gcp)
    /// together: a twin that passes these passes every cloud. The default, and what the local
    /// hub's native dialect should enforce, so that a program tested locally does not meet a
    /// limit for the first time in the cloud.
    pub const fn portable() -> Self {
        TwinLimits {
            max_depth: 6,
            max_section_bytes: Some(8 * 1024),
            max_state_bytes: Some(8 * 1024),
            max_key_bytes: Some(1024),
            max_string_bytes: Some(4 * 1024),
            restricted_key_chars: true,
            nulls_in_arrays: false,
        }
    }

    /// Only the rules every dialect shares (no empty keys, no `$` keys) and a depth of 128,
    /// serde_json's own parsing limit. For a device's copy of a twin whose owner already checked
    /// it with the real limits.
    pub const fn permissive() -> Self {
        TwinLimits {
            max_depth: 128,
            max_section_bytes: None,
            max_state_bytes: None,
            max_key_bytes: None,
            max_string_bytes: None,
            restricted_key_chars: false,
            nulls_in_arrays: true,
        }
    }

    /// Sets [`max_depth`](Self::max_depth).
    pub const fn with_max_depth(mut self, levels: usize) -> Self {
        self.max_depth = levels;
        self
    }

    /// Sets [`max_section_bytes`](Self::max_section_bytes).
    pub const fn with_max_section_bytes(mut self, bytes: Option<usize>) -> Self {
        self.max_section_bytes = bytes;
        self
    }

    /// Sets [`max_state_bytes`](Self::max_state_bytes).
    pub const fn with_max_state_bytes(mut self, bytes: Option<usize>) -> Self {
        self.max_state_bytes = bytes;
        self
    }

    /// Sets [`max_key_bytes`](Self::max_key_bytes).
    pub const fn with_max_key_bytes(mut self, bytes: Option<usize>) -> Self {
        self.max_key_bytes = bytes;
        self
    }

    /// Sets [`max_string_bytes`](Self::max_string_bytes).
    pub const fn with_max_string_bytes(mut self, bytes: Option<usize>) -> Self {
        self.max_string_bytes = bytes;
        self
    }

    /// Sets [`restricted_key_chars`](Self::restricted_key_chars).
    pub const fn with_restricted_key_chars(mut self, restricted: bool) -> Self {
        self.restricted_key_chars = restricted;
        self
    }

    /// Sets [`nulls_in_arrays`](Self::nulls_in_arrays).
    pub const fn with_nulls_in_arrays(mut self, allowed: bool) -> Self {
        self.nulls_in_arrays = allowed;
        self
    }
}

impl Default for TwinLimits {
    /// [`TwinLimits::portable`].
    fn default() -> Self {
        TwinLimits::portable()
    }
}

// ---------------------------------------------------------------------------------------------
// Updates
// ---------------------------------------------------------------------------------------------

/// What an update does to one section.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SectionUpdate {
    /// Merge this JSON merge patch (RFC 7386) into the section. Must be a non-empty object.
    Patch(Value),
    /// Replace the whole section with this object (`null` members are dropped). An empty object
    /// clears the section, like AWS's `"desired": null`.
    Replace(Object),
}

/// One update of a twin: a change to `desired`, to `reported`, or to both at once (one version
/// bump), optionally conditional on the document version.
///
/// ```
/// use fleetkit::device::twin::{TwinDocument, TwinLimits, TwinUpdate};
/// use serde_json::json;
/// use time::OffsetDateTime;
///
/// let mut twin = TwinDocument::new();
/// let now = OffsetDateTime::now_utc();
/// let limits = TwinLimits::aws();
///
/// // An application sets a desired value; the device reports it in the same update.
/// let update = TwinUpdate::desired(json!({"fan": {"speed": 3}}))
///     .with_reported(json!({"fan": {"speed": 3}}))
///     .with_expected_version(0);
/// let applied = twin.apply(&update, &limits, now)?;
/// assert_eq!(applied.versions.version, 1);
/// assert_eq!(twin.delta(), None);
///
/// // Based on a stale version: rejected, nothing changes.
/// let stale = TwinUpdate::desired(json!({"fan": null})).with_expected_version(0);
/// assert!(matches!(twin.apply(&stale, &limits, now), Err(fleetkit::Error::Conflict { .. })));
/// assert_eq!(twin.desired()["fan"]["speed"], 3);
/// # Ok::<(), fleetkit::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TwinUpdate {
    desired: Option<SectionUpdate>,
    reported: Option<SectionUpdate>,
    expected_version: Option<u64>,
}

impl TwinUpdate {
    /// An update that changes nothing yet; add sections with the `with_*` methods. Applying it
    /// as it is fails: an update must touch at least one section.
    pub fn new() -> Self {
        TwinUpdate::default()
    }

    /// An update merging `patch` into `desired`.
    pub fn desired(patch: Value) -> Self {
        TwinUpdate::new().with_desired(patch)
    }

    /// An update merging `patch` into `reported`.
    pub fn reported(patch: Value) -> Self {
        TwinUpdate::new().with_reported(patch)
    }

    /// Merges `patch` into `desired` as well.
    pub fn with_desired(mut self, patch: Value) -> Self {
        self.desired = Some(SectionUpdate::Patch(patch));
        self
    }

    /// Merges `patch` into `reported` as well.
    pub fn with_reported(mut self, patch: Value) -> Self {
        self.reported = Some(SectionUpdate::Patch(patch));
        self
    }

    /// Replaces the whole of `desired` (Google's config model).
    pub fn replace_desired(mut self, section: Map<String, Value>) -> Self {
        self.desired = Some(SectionUpdate::Replace(section));
        self
    }

    /// Replaces the whole of `reported` (Google's state model).
    pub fn replace_reported(mut self, section: Map<String, Value>) -> Self {
        self.reported = Some(SectionUpdate::Replace(section));
        self
    }

    /// Empties `desired` (AWS `"desired": null`).
    pub fn clear_desired(self) -> Self {
        self.replace_desired(Map::new())
    }

    /// Empties `reported` (AWS `"reported": null`).
    pub fn clear_reported(self) -> Self {
        self.replace_reported(Map::new())
    }

    /// Applies only if the document [`version`](TwinDocument::version) is still `version`;
    /// otherwise the update fails with [`Error::Conflict`].
    pub fn with_expected_version(mut self, version: u64) -> Self {
        self.expected_version = Some(version);
        self
    }

    /// The version this update is conditional on, if any.
    pub fn expected_version(&self) -> Option<u64> {
        self.expected_version
    }

    /// What this update does to `desired`, if anything.
    pub fn desired_update(&self) -> Option<&SectionUpdate> {
        self.desired.as_ref()
    }

    /// What this update does to `reported`, if anything.
    pub fn reported_update(&self) -> Option<&SectionUpdate> {
        self.reported.as_ref()
    }

    /// Reads an AWS shadow update request (`/update` payload, PROTOCOLS.md §1.7):
    /// `{"state": {"desired": {…}, "reported": {…}}, "version": N, "clientToken": "…"}`.
    ///
    /// `"desired": null` / `"reported": null` clear the section; `version` becomes the expected
    /// version. `clientToken` is the dialect's business and is ignored here. The error reasons
    /// are AWS's own 400 messages, so a dialect can pass them on.
    ///
    /// ```
    /// use fleetkit::device::twin::TwinUpdate;
    /// use serde_json::json;
    ///
    /// let update = TwinUpdate::from_aws_update_request(&json!({
    ///     "state": {"desired": {"color": "red"}, "reported": null},
    ///     "version": 7,
    /// }))?;
    /// assert_eq!(update.expected_version(), Some(7));
    /// # Ok::<(), fleetkit::Error>(())
    /// ```
    pub fn from_aws_update_request(request: &Value) -> Result<Self> {
        let Some(request) = request.as_object() else {
            return Err(Error::invalid("request", "Invalid JSON"));
        };
        let state = match request.get("state") {
            None => return Err(Error::invalid("state", "Missing required node: state")),
            Some(Value::Object(state)) => state,
            Some(_) => return Err(Error::invalid("state", "State node must be an object")),
        };
        let mut update = TwinUpdate::new();
        for (key, value) in state {
            let section = match key.as_str() {
                "desired" => Section::Desired,
                "reported" => Section::Reported,
                _ => {
                    return Err(Error::invalid(
                        format!("state.{key}"),
                        "State contains an invalid node",
                    ));
                }
            };
            let change = match value {
                Value::Null => SectionUpdate::Replace(Map::new()),
                Value::Object(_) => SectionUpdate::Patch(value.clone()),
                _ => {
                    let reason = match section {
                        Section::Desired => "Desired node must be an object",
                        Section::Reported => "Reported node must be an object",
                    };
                    return Err(Error::invalid(format!("state.{key}"), reason));
                }
            };
            match section {
                Section::Desired => update.desired = Some(change),
                Section::Reported => update.reported = Some(change),
            }
        }
        match request.get("version") {
            None | Some(Value::Null) => {}
            Some(version) => match version.as_u64() {
                Some(version) => update.expected_version = Some(version),
                None => return Err(Error::invalid("version", "Invalid version")),
            },
        }
        Ok(update)
    }
}

/// What an accepted update did: the new versions and, for each section it touched, the
/// *effective* change.
///
/// The effective change is the smallest merge patch that turns the section as it was into the
/// section as it is: members that did not change are left out, `null` marks members that were
/// removed. It is empty when the update changed no value (the versions still moved).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Applied {
    /// The document's versions after the update.
    pub versions: TwinVersions,
    /// The effective change to `desired`, if the update touched it.
    pub desired: Option<Map<String, Value>>,
    /// The effective change to `reported`, if the update touched it.
    pub reported: Option<Map<String, Value>>,
    /// When the update was applied (the `now` it was given).
    pub timestamp: OffsetDateTime,
}

impl Applied {
    /// True when the update changed no value in either section.
    pub fn is_noop(&self) -> bool {
        self.desired.as_ref().is_none_or(Map::is_empty)
            && self.reported.as_ref().is_none_or(Map::is_empty)
    }

    /// The desired-change notification Azure sends for this update: the effective change to
    /// `desired` with the new desired `$version`. `None` if the update did not touch `desired`;
    /// an empty patch when it touched it without changing a value, so a device still sees the
    /// version move and can tell a missed notification from none.
    ///
    /// AWS instead notifies with the delta and the document version: see
    /// [`TwinDocument::delta_change`].
    pub fn desired_change(&self) -> Option<DesiredChange> {
        self.desired.as_ref().map(|patch| DesiredChange {
            patch: patch.clone(),
            version: self.versions.desired_version,
        })
    }
}

/// One item of the desired-change stream a device receives: a patch to apply and the version it
/// brings the twin to.
///
/// What `patch` and `version` mean depends on the cloud: Azure sends the change to the desired
/// properties with the desired `$version` ([`Applied::desired_change`]); AWS sends the delta
/// with the document `version` ([`TwinDocument::delta_change`]). Either is a merge patch, with
/// one difference: an AWS delta never contains `null`, so it cannot tell the device that a
/// desired member was removed.
///
/// ```
/// use fleetkit::device::twin::DesiredChange;
/// use serde_json::json;
///
/// // The body Azure publishes on `$iothub/twin/PATCH/properties/desired/?$version=4`.
/// let change = DesiredChange::from_azure_patch(&json!({"interval": 30, "$version": 4}))?;
/// assert_eq!(change.version, 4);
/// assert_eq!(change.patch["interval"], 30);
/// assert_eq!(change.to_azure_patch(), json!({"interval": 30, "$version": 4}));
/// # Ok::<(), fleetkit::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredChange {
    /// The change, as a JSON merge patch.
    pub patch: Map<String, Value>,
    /// The version the change brings the twin to.
    pub version: u64,
}

impl DesiredChange {
    /// A change from its parts.
    pub fn new(patch: Map<String, Value>, version: u64) -> Self {
        DesiredChange { patch, version }
    }

    /// Reads the body of an Azure desired-properties notification: the changed members plus
    /// `"$version"` (PROTOCOLS.md §2.5). Other `$` members are system properties and dropped.
    pub fn from_azure_patch(body: &Value) -> Result<Self> {
        let Some(body) = body.as_object() else {
            return Err(Error::invalid(
                "desired",
                "a desired-properties patch must be a JSON object",
            ));
        };
        let version = azure_version(body, "desired")?;
        let patch = body
            .iter()
            .filter(|(key, _)| !key.starts_with('$'))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        Ok(DesiredChange { patch, version })
    }

    /// The body of an Azure desired-properties notification: the patch plus `"$version"`.
    pub fn to_azure_patch(&self) -> Value {
        let mut body = self.patch.clone();
        body.insert("$version".into(), self.version.into());
        Value::Object(body)
    }

    /// Reads an AWS `/update/delta` document: `{"state": {…delta…}, "version": N, …}`
    /// (PROTOCOLS.md §1.7; `state` holds the delta directly). `metadata`, `timestamp` and
    /// `clientToken` are ignored.
    pub fn from_aws_delta_document(document: &Value) -> Result<Self> {
        let patch = match document.get("state") {
            Some(Value::Object(state)) => state.clone(),
            Some(_) => return Err(Error::invalid("state", "State node must be an object")),
            None => return Err(Error::invalid("state", "Missing required node: state")),
        };
        let version = document
            .get("version")
            .and_then(Value::as_u64)
            .ok_or_else(|| Error::invalid("version", "Invalid version"))?;
        Ok(DesiredChange { patch, version })
    }
}

// ---------------------------------------------------------------------------------------------
// The document
// ---------------------------------------------------------------------------------------------

/// A device's twin: desired and reported state, their versions, and optionally when each leaf
/// was last written.
///
/// The sections never contain `null` (it means "delete" in a patch), so every value read from a
/// twin is a real value. Change it only through [`apply`](Self::apply) and friends, which keep
/// the versions, the metadata and the [`TwinLimits`] right.
///
/// Serialized with serde it has a neutral shape, used by fleetkit's native dialect and the local
/// hub's store: `{"desired": {…}, "reported": {…}, "version": n, "desired_version": n,
/// "reported_version": n}`, plus `"metadata": {"desired": {…}, "reported": {…}}` when metadata
/// is tracked, whose leaves are Unix times in milliseconds.
///
/// ```
/// use fleetkit::device::twin::{TwinDocument, TwinLimits};
/// use serde_json::json;
/// use time::OffsetDateTime;
///
/// let limits = TwinLimits::portable();
/// let now = OffsetDateTime::now_utc();
/// let mut twin = TwinDocument::new().with_metadata();
///
/// twin.apply_desired(&json!({"light": {"color": "red", "on": true}}), None, &limits, now)?;
/// twin.apply_reported(&json!({"light": {"color": "green", "on": true}}), None, &limits, now)?;
/// assert_eq!(twin.version(), 2);
///
/// // The delta is what the device still has to do.
/// let delta = twin.delta().expect("out of sync");
/// assert_eq!(serde_json::Value::Object(delta), json!({"light": {"color": "red"}}));
///
/// // `null` deletes.
/// twin.apply_desired(&json!({"light": {"color": null}}), None, &limits, now)?;
/// assert_eq!(twin.delta(), None);
///
/// // The same twin as AWS and Azure devices see it.
/// let shadow = twin.to_aws_shadow_document(now);
/// assert_eq!(shadow["version"], 3);
/// let azure = twin.to_azure_twin_document();
/// assert_eq!(azure["desired"]["$version"], 2);
/// # Ok::<(), fleetkit::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TwinDocument {
    desired: Object,
    reported: Object,
    versions: TwinVersions,
    metadata: Option<Box<Metadata>>,
}

/// An update's change to one section, borrowed from a [`TwinUpdate`] or a patch argument.
#[derive(Clone, Copy)]
enum Op<'a> {
    Patch(&'a Object),
    Replace(&'a Object),
}

impl TwinDocument {
    /// An empty twin at version 0, not tracking metadata.
    pub fn new() -> Self {
        TwinDocument::default()
    }

    /// Turns on metadata: from now on every update records when each leaf it writes was
    /// written. Leaves already in the document have no time until they are next written.
    pub fn with_metadata(mut self) -> Self {
        if self.metadata.is_none() {
            self.metadata = Some(Box::default());
        }
        self
    }

    /// Whether this twin records per-leaf update times.
    pub fn tracks_metadata(&self) -> bool {
        self.metadata.is_some()
    }

    /// The desired section.
    pub fn desired(&self) -> &Map<String, Value> {
        &self.desired
    }

    /// The reported section.
    pub fn reported(&self) -> &Map<String, Value> {
        &self.reported
    }

    /// One section by name.
    pub fn section(&self, section: Section) -> &Map<String, Value> {
        match section {
            Section::Desired => &self.desired,
            Section::Reported => &self.reported,
        }
    }

    /// The document version: the number of accepted updates (AWS shadow `version`).
    pub fn version(&self) -> u64 {
        self.versions.version
    }

    /// The desired section's version (Azure `desired.$version`).
    pub fn desired_version(&self) -> u64 {
        self.versions.desired_version
    }

    /// The reported section's version (Azure `reported.$version`).
    pub fn reported_version(&self) -> u64 {
        self.versions.reported_version
    }

    /// All three versions.
    pub fn versions(&self) -> TwinVersions {
        self.versions
    }

    /// Sets the versions. For a device's local copy, which takes its numbers from the cloud's
    /// responses and notifications instead of counting its own updates.
    pub fn set_versions(&mut self, versions: TwinVersions) {
        self.versions = versions;
    }

    /// When the member at `path` in `section` was last written, if metadata is tracked and
    /// knows. For an object, the time of its most recently written leaf; for the empty path, of
    /// the whole section.
    pub fn last_updated(&self, section: Section, path: &[&str]) -> Option<OffsetDateTime> {
        let metadata = self.metadata.as_deref()?;
        let mut map = metadata.section(section);
        let (last, parents) = match path.split_last() {
            Some(split) => split,
            None => return latest_in(map).and_then(from_unix_ms),
        };
        for key in parents {
            match map.get(*key)? {
                MetaNode::Node(children) => map = children,
                MetaNode::Leaf(_) => return None,
            }
        }
        match map.get(*last)? {
            MetaNode::Leaf(ms) => from_unix_ms(*ms),
            MetaNode::Node(children) => latest_in(children).and_then(from_unix_ms),
        }
    }

    /// Applies `update` if it is valid under `limits` and its expected version (if any) is the
    /// current one; otherwise changes nothing and fails with [`Error::InvalidInput`] or
    /// [`Error::Conflict`].
    ///
    /// Costs a copy of each section the update touches (the update is applied to the copy and
    /// checked before anything is replaced).
    pub fn apply(
        &mut self,
        update: &TwinUpdate,
        limits: &TwinLimits,
        now: OffsetDateTime,
    ) -> Result<Applied> {
        let desired = update
            .desired
            .as_ref()
            .map(|u| op_of(Section::Desired, u))
            .transpose()?;
        let reported = update
            .reported
            .as_ref()
            .map(|u| op_of(Section::Reported, u))
            .transpose()?;
        self.apply_ops(desired, reported, update.expected_version, limits, now)
    }

    /// Merges `patch` into `desired`: [`apply`](Self::apply) with `TwinUpdate::desired(patch)`
    /// and the expected version, without copying the patch.
    pub fn apply_desired(
        &mut self,
        patch: &Value,
        expected_version: Option<u64>,
        limits: &TwinLimits,
        now: OffsetDateTime,
    ) -> Result<Applied> {
        let op = patch_op(Section::Desired, patch)?;
        self.apply_ops(Some(op), None, expected_version, limits, now)
    }

    /// Merges `patch` into `reported`: [`apply`](Self::apply) with `TwinUpdate::reported(patch)`
    /// and the expected version, without copying the patch.
    pub fn apply_reported(
        &mut self,
        patch: &Value,
        expected_version: Option<u64>,
        limits: &TwinLimits,
        now: OffsetDateTime,
    ) -> Result<Applied> {
        let op = patch_op(Section::Reported, patch)?;
        self.apply_ops(None, Some(op), expected_version, limits, now)
    }

    fn apply_ops(
        &mut self,
        desired: Option<Op<'_>>,
        reported: Option<Op<'_>>,
        expected_version: Option<u64>,
        limits: &TwinLimits,
        now: OffsetDateTime,
    ) -> Result<Applied> {
        if desired.is_none() && reported.is_none() {
            return Err(Error::invalid(
                "update",
                "an update must change desired, reported or both",
            ));
        }
        for (section, op) in [(Section::Desired, desired), (Section::Reported, reported)] {
            if let Some(Op::Patch(map) | Op::Replace(map)) = op {
                check_section(section, map, limits)?;
            }
        }
        if let Some(expected) = expected_version
            && expected != self.versions.version
        {
            return Err(Error::Conflict {
                what: "twin".into(),
                expected,
                current: self.versions.version,
            });
        }
        let mut versions = self.versions;
        versions.version = bump(versions.version, "version")?;
        if desired.is_some() {
            versions.desired_version = bump(versions.desired_version, "desired_version")?;
        }
        if reported.is_some() {
            versions.reported_version = bump(versions.reported_version, "reported_version")?;
        }

        let new_desired = desired.map(|op| run_op(&self.desired, op));
        let new_reported = reported.map(|op| run_op(&self.reported, op));
        let desired_after = new_desired.as_ref().map_or(&self.desired, |(m, _)| m);
        let reported_after = new_reported.as_ref().map_or(&self.reported, |(m, _)| m);
        if let Some(max) = limits.max_section_bytes {
            if new_desired.is_some() {
                check_size("desired", json_len(desired_after), max)?;
            }
            if new_reported.is_some() {
                check_size("reported", json_len(reported_after), max)?;
            }
        }
        if let Some(max) = limits.max_state_bytes {
            let state = StateRef {
                desired: desired_after,
                reported: reported_after,
            };
            check_size("state", json_len(&state), max)?;
        }

        // Everything checked: commit.
        let now_ms = unix_ms(now);
        let mut applied = Applied {
            versions,
            desired: None,
            reported: None,
            timestamp: now,
        };
        if let (Some((section, change)), Some(op)) = (new_desired, desired) {
            self.desired = section;
            applied.desired = Some(change);
            if let Some(metadata) = self.metadata.as_deref_mut() {
                touch_op(&mut metadata.desired, op, now_ms);
            }
        }
        if let (Some((section, change)), Some(op)) = (new_reported, reported) {
            self.reported = section;
            applied.reported = Some(change);
            if let Some(metadata) = self.metadata.as_deref_mut() {
                touch_op(&mut metadata.reported, op, now_ms);
            }
        }
        self.versions = versions;
        Ok(applied)
    }

    /// The parts of `desired` that differ from `reported`, by AWS's rules (PROTOCOLS.md §1.7):
    /// every desired member that is missing from reported or has a different value, recursing
    /// into objects present on both sides, with arrays compared (and copied) whole. Members only
    /// in reported are not in the delta, and neither is `null` ever. `None` when in sync.
    ///
    /// ```
    /// use fleetkit::device::twin::{TwinDocument, TwinLimits};
    /// use serde_json::json;
    /// use time::OffsetDateTime;
    ///
    /// let (limits, now) = (TwinLimits::aws(), OffsetDateTime::now_utc());
    /// let mut twin = TwinDocument::new();
    /// twin.apply_desired(&json!({"color": "RED", "state": "STOP"}), None, &limits, now)?;
    /// twin.apply_reported(&json!({"color": "GREEN", "engine": "ON"}), None, &limits, now)?;
    /// let delta = twin.delta().map(serde_json::Value::Object);
    /// assert_eq!(delta, Some(json!({"color": "RED", "state": "STOP"})));
    /// # Ok::<(), fleetkit::Error>(())
    /// ```
    pub fn delta(&self) -> Option<Map<String, Value>> {
        let delta = delta_of(&self.desired, &self.reported);
        (!delta.is_empty()).then_some(delta)
    }

    /// The desired-change notification AWS sends (`/update/delta`): the [`delta`](Self::delta)
    /// with the document version. `None` when in sync.
    pub fn delta_change(&self) -> Option<DesiredChange> {
        self.delta().map(|patch| DesiredChange {
            patch,
            version: self.versions.version,
        })
    }

    /// The AWS `/update/delta` document for the current delta (PROTOCOLS.md §1.7):
    /// `{"state": {…delta…}, "metadata": {…}, "version": N, "timestamp": T}`, with `metadata`
    /// (the desired leaves' times, as AWS gives them) only when tracked. `None` when in sync.
    /// The dialect adds `clientToken`.
    pub fn to_aws_delta_document(&self, now: OffsetDateTime) -> Option<Value> {
        let delta = self.delta()?;
        let mut doc = Map::new();
        if let Some(metadata) = self.metadata.as_deref() {
            doc.insert(
                "metadata".into(),
                Value::Object(aws_meta_for(&delta, &metadata.desired)),
            );
        }
        doc.insert("state".into(), Value::Object(delta));
        doc.insert("version".into(), self.versions.version.into());
        doc.insert("timestamp".into(), now.unix_timestamp().into());
        Some(Value::Object(doc))
    }

    /// The AWS shadow document a `/get` returns (PROTOCOLS.md §1.7):
    /// `{"state": {"desired", "reported", "delta"}, "metadata": {"desired", "reported"},
    /// "version": N, "timestamp": T}`.
    ///
    /// Empty sections are left out, as AWS leaves out a section that was never set or was
    /// deleted; `delta` is present only when desired and reported differ; `metadata` only when
    /// tracked, with each leaf `{"timestamp": <epoch seconds>}` (an array, replaced whole, gets
    /// one timestamp). `timestamp` is `now` in epoch seconds.
    pub fn to_aws_shadow_document(&self, now: OffsetDateTime) -> Value {
        let mut state = Map::new();
        if !self.desired.is_empty() {
            state.insert("desired".into(), Value::Object(self.desired.clone()));
        }
        if !self.reported.is_empty() {
            state.insert("reported".into(), Value::Object(self.reported.clone()));
        }
        if let Some(delta) = self.delta() {
            state.insert("delta".into(), Value::Object(delta));
        }
        let mut doc = Map::new();
        doc.insert("state".into(), Value::Object(state));
        if let Some(metadata) = self.metadata.as_deref() {
            let mut meta = Map::new();
            if !self.desired.is_empty() {
                meta.insert(
                    "desired".into(),
                    Value::Object(aws_meta_for(&self.desired, &metadata.desired)),
                );
            }
            if !self.reported.is_empty() {
                meta.insert(
                    "reported".into(),
                    Value::Object(aws_meta_for(&self.reported, &metadata.reported)),
                );
            }
            doc.insert("metadata".into(), Value::Object(meta));
        }
        doc.insert("version".into(), self.versions.version.into());
        doc.insert("timestamp".into(), now.unix_timestamp().into());
        Value::Object(doc)
    }

    /// Reads an AWS shadow document (a `/get/accepted` payload, the `current` of
    /// `/update/documents`, or a REST `GetThingShadow` body).
    ///
    /// `state.delta` is ignored (it is derived). With a `metadata` member the twin tracks
    /// metadata, taking each leaf's `{"timestamp": T}` (for arrays AWS may give one per
    /// element; the latest counts). AWS has no section versions, so both are set to the
    /// document version, which keeps them monotonic across later updates.
    pub fn from_aws_shadow_document(document: &Value) -> Result<Self> {
        let Some(document) = document.as_object() else {
            return Err(Error::invalid(
                "shadow",
                "a shadow document must be a JSON object",
            ));
        };
        let empty = Map::new();
        let state = match document.get("state") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(state)) => state,
            Some(_) => return Err(Error::invalid("state", "State node must be an object")),
        };
        let desired = aws_section(state, Section::Desired)?;
        let reported = aws_section(state, Section::Reported)?;
        let version = match document.get("version") {
            None => 0,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| Error::invalid("version", "Invalid version"))?,
        };
        let metadata = match document.get("metadata") {
            None | Some(Value::Null) => None,
            Some(Value::Object(meta)) => {
                let section_meta =
                    |section: Section, content: &Object| match meta.get(section.as_str()) {
                        Some(Value::Object(m)) => meta_from_aws(content, m),
                        _ => MetaMap::new(),
                    };
                Some(Box::new(Metadata {
                    desired: section_meta(Section::Desired, &desired),
                    reported: section_meta(Section::Reported, &reported),
                }))
            }
            Some(_) => {
                return Err(Error::invalid(
                    "metadata",
                    "the metadata node must be an object",
                ));
            }
        };
        Ok(TwinDocument {
            desired,
            reported,
            versions: TwinVersions {
                version,
                desired_version: version,
                reported_version: version,
            },
            metadata,
        })
    }

    /// The twin document an Azure device receives from `$iothub/twin/GET` (PROTOCOLS.md §2.5):
    /// `{"desired": {…, "$version": n}, "reported": {…, "$version": m}}`.
    ///
    /// `$metadata` is not emitted even when tracked: the device-facing document does not carry
    /// it, and device SDKs would hand it to the application as a property.
    pub fn to_azure_twin_document(&self) -> Value {
        let section = |content: &Object, version: u64| {
            let mut section = content.clone();
            section.insert("$version".into(), version.into());
            Value::Object(section)
        };
        let mut doc = Map::new();
        doc.insert(
            "desired".into(),
            section(&self.desired, self.versions.desired_version),
        );
        doc.insert(
            "reported".into(),
            section(&self.reported, self.versions.reported_version),
        );
        Value::Object(doc)
    }

    /// Reads an Azure twin: the device's GET response `{"desired": {…}, "reported": {…}}` or the
    /// service's twin `{"properties": {"desired": {…}, "reported": {…}}, "version": n, …}`.
    ///
    /// Each section's `$version` becomes its version (0 if absent); other `$` members (such as
    /// `$metadata`) are system properties and dropped. The document version is the twin's
    /// `version` when given, else `desired_version + reported_version`: every Azure update
    /// touches exactly one section, so the sum counts the updates.
    pub fn from_azure_twin_document(document: &Value) -> Result<Self> {
        let Some(document) = document.as_object() else {
            return Err(Error::invalid(
                "twin",
                "a twin document must be a JSON object",
            ));
        };
        let sections = match document.get("properties") {
            Some(Value::Object(properties)) => properties,
            Some(_) => {
                return Err(Error::invalid(
                    "properties",
                    "the properties node must be an object",
                ));
            }
            None => document,
        };
        let (desired, desired_version) = azure_section(sections, Section::Desired)?;
        let (reported, reported_version) = azure_section(sections, Section::Reported)?;
        let version = match document.get("version") {
            None => desired_version.saturating_add(reported_version),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| Error::invalid("version", "the twin version must be a u64"))?,
        };
        Ok(TwinDocument {
            desired,
            reported,
            versions: TwinVersions {
                version,
                desired_version,
                reported_version,
            },
            metadata: None,
        })
    }
}

impl Serialize for TwinDocument {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let fields = if self.metadata.is_some() { 6 } else { 5 };
        let mut s = serializer.serialize_struct("TwinDocument", fields)?;
        s.serialize_field("desired", &self.desired)?;
        s.serialize_field("reported", &self.reported)?;
        s.serialize_field("version", &self.versions.version)?;
        s.serialize_field("desired_version", &self.versions.desired_version)?;
        s.serialize_field("reported_version", &self.versions.reported_version)?;
        if let Some(metadata) = self.metadata.as_deref() {
            s.serialize_field("metadata", metadata)?;
        }
        s.end()
    }
}

/// The neutral shape, as read.
#[derive(Deserialize)]
struct WireTwin {
    #[serde(default)]
    desired: Object,
    #[serde(default)]
    reported: Object,
    #[serde(default)]
    version: u64,
    #[serde(default)]
    desired_version: u64,
    #[serde(default)]
    reported_version: u64,
    #[serde(default)]
    metadata: Option<WireMetadata>,
}

#[derive(Deserialize)]
struct WireMetadata {
    #[serde(default)]
    desired: Object,
    #[serde(default)]
    reported: Object,
}

impl<'de> Deserialize<'de> for TwinDocument {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let wire = WireTwin::deserialize(deserializer)?;
        for (section, content) in [
            (Section::Desired, &wire.desired),
            (Section::Reported, &wire.reported),
        ] {
            reject_nulls(section.as_str(), content).map_err(D::Error::custom)?;
        }
        let metadata = match wire.metadata {
            None => None,
            Some(m) => Some(Box::new(Metadata {
                desired: meta_from_wire("metadata.desired", &m.desired)
                    .map_err(D::Error::custom)?,
                reported: meta_from_wire("metadata.reported", &m.reported)
                    .map_err(D::Error::custom)?,
            })),
        };
        Ok(TwinDocument {
            desired: wire.desired,
            reported: wire.reported,
            versions: TwinVersions {
                version: wire.version,
                desired_version: wire.desired_version,
                reported_version: wire.reported_version,
            },
            metadata,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Merge patch, diff, delta
// ---------------------------------------------------------------------------------------------

fn op_of(section: Section, update: &SectionUpdate) -> Result<Op<'_>> {
    match update {
        SectionUpdate::Patch(patch) => patch_op(section, patch),
        SectionUpdate::Replace(map) => Ok(Op::Replace(map)),
    }
}

fn patch_op(section: Section, patch: &Value) -> Result<Op<'_>> {
    match patch {
        Value::Object(map) if map.is_empty() => Err(Error::invalid(
            section.as_str(),
            "the patch is empty; it must set or delete at least one member",
        )),
        Value::Object(map) => Ok(Op::Patch(map)),
        _ => Err(Error::invalid(
            section.as_str(),
            "a patch must be a JSON object",
        )),
    }
}

fn bump(version: u64, field: &str) -> Result<u64> {
    version
        .checked_add(1)
        .ok_or_else(|| Error::invalid(field, "the version cannot grow any further"))
}

/// The section after `op`, and the effective change.
fn run_op(section: &Object, op: Op<'_>) -> (Object, Object) {
    match op {
        Op::Patch(patch) => {
            let mut section = section.clone();
            let mut change = Map::new();
            merge(&mut section, patch, &mut change);
            (section, change)
        }
        Op::Replace(content) => {
            let new = without_nulls(content);
            let change = diff(section, &new);
            (new, change)
        }
    }
}

/// RFC 7386 merge of `patch` into `target`, recording the effective change in `change`.
fn merge(target: &mut Object, patch: &Object, change: &mut Object) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                if target.remove(key).is_some() {
                    change.insert(key.clone(), Value::Null);
                }
            }
            Value::Object(sub_patch) => match target.get_mut(key) {
                Some(Value::Object(sub_target)) => {
                    let mut sub_change = Map::new();
                    merge(sub_target, sub_patch, &mut sub_change);
                    if !sub_change.is_empty() {
                        change.insert(key.clone(), Value::Object(sub_change));
                    }
                }
                // Missing or not an object: RFC 7386 merges into an empty object, which is the
                // patch without its nulls; an object never equals a non-object, so it changed.
                _ => {
                    let new = Value::Object(without_nulls(sub_patch));
                    change.insert(key.clone(), new.clone());
                    target.insert(key.clone(), new);
                }
            },
            _ => {
                if target.get(key) != Some(value) {
                    target.insert(key.clone(), value.clone());
                    change.insert(key.clone(), value.clone());
                }
            }
        }
    }
}

/// `object` with `null` members removed, recursively through objects (not arrays, whose
/// elements are values, not patch instructions).
fn without_nulls(object: &Object) -> Object {
    object
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| {
            let v = match v {
                Value::Object(o) => Value::Object(without_nulls(o)),
                other => other.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

/// The smallest merge patch turning `old` into `new` (neither containing nulls).
fn diff(old: &Object, new: &Object) -> Object {
    let mut change = Map::new();
    for key in old.keys() {
        if !new.contains_key(key) {
            change.insert(key.clone(), Value::Null);
        }
    }
    for (key, new_value) in new {
        match (old.get(key), new_value) {
            (Some(old_value), _) if old_value == new_value => {}
            (Some(Value::Object(o)), Value::Object(n)) => {
                change.insert(key.clone(), Value::Object(diff(o, n)));
            }
            _ => {
                change.insert(key.clone(), new_value.clone());
            }
        }
    }
    change
}

/// AWS's delta: desired members that reported lacks or has with another value.
fn delta_of(desired: &Object, reported: &Object) -> Object {
    let mut delta = Map::new();
    for (key, want) in desired {
        match (want, reported.get(key)) {
            (Value::Object(w), Some(Value::Object(have))) => {
                let sub = delta_of(w, have);
                if !sub.is_empty() {
                    delta.insert(key.clone(), Value::Object(sub));
                }
            }
            (_, Some(have)) if have == want => {}
            // `null` cannot be stored, but a twin read from elsewhere is not trusted for it.
            (Value::Null, _) => {}
            _ => {
                delta.insert(key.clone(), want.clone());
            }
        }
    }
    delta
}

// ---------------------------------------------------------------------------------------------
// Limits checking
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn path_string(section: &str, path: &[Seg<'_>]) -> String {
    let mut out = section.to_owned();
    for seg in path {
        match seg {
            Seg::Key(key) => {
                out.push('.');
                out.push_str(key);
            }
            Seg::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

struct Checker<'l> {
    section: &'static str,
    limits: &'l TwinLimits,
}

impl Checker<'_> {
    fn fail(&self, path: &[Seg<'_>], reason: impl Into<String>) -> Error {
        Error::invalid(path_string(self.section, path), reason)
    }

    /// Checks a container at nesting level `level` (the section itself is level 1).
    fn depth(&self, level: usize, path: &[Seg<'_>]) -> Result<()> {
        if level > self.limits.max_depth {
            return Err(self.fail(
                path,
                format!(
                    "nested {level} levels deep; the limit is {}",
                    self.limits.max_depth
                ),
            ));
        }
        Ok(())
    }

    fn object<'a>(&self, map: &'a Object, level: usize, path: &mut Vec<Seg<'a>>) -> Result<()> {
        self.depth(level, path)?;
        for (key, value) in map {
            path.push(Seg::Key(key));
            self.key(key, path)?;
            self.value(value, level, path)?;
            path.pop();
        }
        Ok(())
    }

    fn key(&self, key: &str, path: &[Seg<'_>]) -> Result<()> {
        if key.is_empty() {
            return Err(self.fail(path, "keys must not be empty"));
        }
        if key.starts_with('$') {
            return Err(self.fail(path, "keys starting with '$' are reserved"));
        }
        if let Some(max) = self.limits.max_key_bytes
            && key.len() > max
        {
            return Err(self.fail(
                path,
                format!("the key is {} bytes long; the limit is {max}", key.len()),
            ));
        }
        if self.limits.restricted_key_chars
            && let Some(c) = key
                .chars()
                .find(|c| c.is_control() || matches!(c, '.' | '$' | ' '))
        {
            return Err(self.fail(
                path,
                format!(
                    "keys may not contain control characters, '.', '$' or spaces (found {c:?})"
                ),
            ));
        }
        Ok(())
    }

    /// Checks a value held by a container at nesting level `level`.
    fn value<'a>(&self, value: &'a Value, level: usize, path: &mut Vec<Seg<'a>>) -> Result<()> {
        match value {
            Value::Object(map) => self.object(map, level + 1, path),
            Value::Array(items) => {
                self.depth(level + 1, path)?;
                for (i, item) in items.iter().enumerate() {
                    path.push(Seg::Index(i));
                    if item.is_null() && !self.limits.nulls_in_arrays {
                        return Err(self.fail(path, "arrays may not contain null"));
                    }
                    self.value(item, level + 1, path)?;
                    path.pop();
                }
                Ok(())
            }
            Value::String(s) => match self.limits.max_string_bytes {
                Some(max) if s.len() > max => Err(self.fail(
                    path,
                    format!("the string is {} bytes long; the limit is {max}", s.len()),
                )),
                _ => Ok(()),
            },
            Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
        }
    }
}

/// Checks a patch or replacement for `section` against `limits` (nulls in objects are allowed:
/// they delete).
fn check_section(section: Section, map: &Object, limits: &TwinLimits) -> Result<()> {
    let checker = Checker {
        section: section.as_str(),
        limits,
    };
    checker.object(map, 1, &mut Vec::new())
}

fn check_size(field: &str, len: usize, max: usize) -> Result<()> {
    if len > max {
        return Err(Error::invalid(
            field,
            format!("{len} bytes of JSON; the limit is {max}"),
        ));
    }
    Ok(())
}

/// Counts bytes instead of storing them.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The length of `value` as compact JSON, without building the string.
fn json_len<T: Serialize + ?Sized>(value: &T) -> usize {
    let mut count = ByteCount(0);
    // Maps with string keys cannot fail to serialize; count a failure as too big.
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

/// `{"desired": …, "reported": …}` for measuring, empty sections left out as AWS does.
#[derive(Serialize)]
struct StateRef<'a> {
    #[serde(skip_serializing_if = "is_empty_object")]
    desired: &'a Object,
    #[serde(skip_serializing_if = "is_empty_object")]
    reported: &'a Object,
}

fn is_empty_object(object: &&Object) -> bool {
    object.is_empty()
}

fn reject_nulls(prefix: &str, object: &Object) -> Result<()> {
    fn walk<'a>(prefix: &str, object: &'a Object, path: &mut Vec<Seg<'a>>) -> Result<()> {
        for (key, value) in object {
            path.push(Seg::Key(key));
            match value {
                Value::Null => {
                    return Err(Error::invalid(
                        path_string(prefix, path),
                        "a twin does not store null (null deletes a member in a patch)",
                    ));
                }
                Value::Object(sub) => walk(prefix, sub, path)?,
                _ => {}
            }
            path.pop();
        }
        Ok(())
    }
    walk(prefix, object, &mut Vec::new())
}

// ---------------------------------------------------------------------------------------------
// Dialect documents
// ---------------------------------------------------------------------------------------------

fn aws_section(state: &Object, section: Section) -> Result<Object> {
    match state.get(section.as_str()) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(content)) => {
            let field = format!("state.{section}");
            reject_nulls(&field, content)?;
            Ok(content.clone())
        }
        Some(_) => Err(Error::invalid(
            format!("state.{section}"),
            match section {
                Section::Desired => "Desired node must be an object",
                Section::Reported => "Reported node must be an object",
            },
        )),
    }
}

fn azure_version(section: &Object, name: &str) -> Result<u64> {
    match section.get("$version") {
        None => Ok(0),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| Error::invalid(format!("{name}.$version"), "must be a u64")),
    }
}

fn azure_section(sections: &Object, section: Section) -> Result<(Object, u64)> {
    match sections.get(section.as_str()) {
        None | Some(Value::Null) => Ok((Map::new(), 0)),
        Some(Value::Object(content)) => {
            let version = azure_version(content, section.as_str())?;
            let content: Object = content
                .iter()
                .filter(|(key, _)| !key.starts_with('$'))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            reject_nulls(section.as_str(), &content)?;
            Ok((content, version))
        }
        Some(_) => Err(Error::invalid(
            section.as_str(),
            "a twin section must be a JSON object",
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Metadata
// ---------------------------------------------------------------------------------------------

type MetaMap = BTreeMap<String, MetaNode>;

/// When each leaf of the two sections was last written, mirroring their object structure.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
struct Metadata {
    desired: MetaMap,
    reported: MetaMap,
}

impl Metadata {
    fn section(&self, section: Section) -> &MetaMap {
        match section {
            Section::Desired => &self.desired,
            Section::Reported => &self.reported,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum MetaNode {
    /// A scalar or an array, written at this Unix time in milliseconds.
    Leaf(i64),
    /// An object.
    Node(MetaMap),
}

impl Serialize for MetaNode {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            MetaNode::Leaf(ms) => serializer.serialize_i64(*ms),
            MetaNode::Node(children) => children.serialize(serializer),
        }
    }
}

fn unix_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn from_unix_ms(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

fn latest_in(map: &MetaMap) -> Option<i64> {
    map.values()
        .filter_map(|node| match node {
            MetaNode::Leaf(ms) => Some(*ms),
            MetaNode::Node(children) => latest_in(children),
        })
        .max()
}

fn touch_op(meta: &mut MetaMap, op: Op<'_>, now_ms: i64) {
    match op {
        Op::Patch(patch) => touch(meta, patch, now_ms),
        Op::Replace(content) => {
            meta.clear();
            touch(meta, content, now_ms);
        }
    }
}

/// Records that every leaf `patch` writes was written at `now_ms` and forgets deleted members.
/// Mirrors [`merge`], which has already succeeded.
fn touch(meta: &mut MetaMap, patch: &Object, now_ms: i64) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                meta.remove(key);
            }
            Value::Object(sub) => {
                let node = meta
                    .entry(key.clone())
                    .or_insert_with(|| MetaNode::Node(MetaMap::new()));
                if let MetaNode::Leaf(_) = node {
                    *node = MetaNode::Node(MetaMap::new());
                }
                if let MetaNode::Node(children) = node {
                    touch(children, sub, now_ms);
                }
            }
            _ => {
                meta.insert(key.clone(), MetaNode::Leaf(now_ms));
            }
        }
    }
}

/// AWS metadata for the members of `content` (a section or a delta): `{"timestamp": s}` per
/// leaf, objects mirrored. Leaves without a recorded time are left out.
fn aws_meta_for(content: &Object, meta: &MetaMap) -> Object {
    let mut out = Map::new();
    for (key, value) in content {
        match (value, meta.get(key)) {
            (Value::Object(sub), Some(MetaNode::Node(children))) => {
                out.insert(key.clone(), Value::Object(aws_meta_for(sub, children)));
            }
            (_, Some(MetaNode::Leaf(ms))) => {
                let mut leaf = Map::new();
                leaf.insert("timestamp".into(), ms.div_euclid(1000).into());
                out.insert(key.clone(), Value::Object(leaf));
            }
            _ => {}
        }
    }
    out
}

/// Reads AWS metadata guided by the content it describes, so a member called `timestamp` is
/// not mistaken for a leaf's time.
fn meta_from_aws(content: &Object, meta: &Object) -> MetaMap {
    let mut out = MetaMap::new();
    for (key, value) in content {
        let Some(m) = meta.get(key) else { continue };
        match (value, m) {
            (Value::Object(sub), Value::Object(sub_meta)) => {
                out.insert(key.clone(), MetaNode::Node(meta_from_aws(sub, sub_meta)));
            }
            (Value::Object(_), _) => {}
            (_, m) => {
                if let Some(seconds) = aws_leaf_time(m) {
                    out.insert(key.clone(), MetaNode::Leaf(seconds.saturating_mul(1000)));
                }
            }
        }
    }
    out
}

fn aws_leaf_time(meta: &Value) -> Option<i64> {
    match meta {
        Value::Object(leaf) => leaf.get("timestamp").and_then(Value::as_i64),
        Value::Array(items) => items.iter().filter_map(aws_leaf_time).max(),
        _ => None,
    }
}

fn meta_from_wire(prefix: &str, wire: &Object) -> Result<MetaMap> {
    let mut out = MetaMap::new();
    for (key, value) in wire {
        let node = match value {
            Value::Number(n) => MetaNode::Leaf(n.as_i64().ok_or_else(|| {
                Error::invalid(
                    format!("{prefix}.{key}"),
                    "a time must be Unix milliseconds",
                )
            })?),
            Value::Object(children) => {
                MetaNode::Node(meta_from_wire(&format!("{prefix}.{key}"), children)?)
            }
            _ => {
                return Err(Error::invalid(
                    format!("{prefix}.{key}"),
                    "metadata holds Unix milliseconds or objects",
                ));
            }
        };
        out.insert(key.clone(), node);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
