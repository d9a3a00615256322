//! The AWS IoT Jobs service (MQTT API), hub side.
//!
//! [`JobsService`] is a pure engine: it holds jobs and their per-thing executions, answers the
//! requests a device publishes under `$aws/things/<thing>/jobs/`, and says which messages to
//! send (the answer to the requester, `notify` and `notify-next` to subscribers). It does no
//! networking and never touches the hub; the dialect glue routes topics to
//! [`parse_request_topic`] and [`JobsService::handle`] and publishes the returned
//! [`JobsMessage`]s.
//!
//! Wire shapes follow the AWS device SDK model (PROTOCOLS.md §1.8): timestamps are epoch
//! **seconds**; `notify` is `{"jobs":{"<STATUS>":[JobExecutionSummary…]},"timestamp":T}`;
//! `notify-next` is `{"execution":JobExecution,"timestamp":T}` with `execution` left out when
//! nothing is pending.
//!
//! Choices where AWS's documentation leaves room:
//!
//! - Updating an execution that is already in a terminal state is answered `InvalidStateTransition`
//!   (with `executionState`), following the documented example of that code (SUCCEEDED to
//!   IN_PROGRESS). `TerminalStateReached` is documented only for describing "a job in a terminal
//!   state", yet finished executions stay describable here, so this engine never sends it.
//! - `expectedVersion` is checked before the transition, so a stale version gets
//!   `VersionMismatch` even if the execution also became terminal; both carry `executionState`.
//! - A `notify` goes out whenever one of the thing's executions is queued or changes status (the
//!   pending list or a status in it changes); an `IN_PROGRESS` to `IN_PROGRESS` update only of
//!   status details sends none. It lists at most 15 pending executions, IN_PROGRESS first, then
//!   in queue order. A `notify-next` goes out only when *which* execution is next changes, not
//!   when the next one's details change.
//! - Every accepted change of an execution, including a cancellation from the cloud side, adds 1
//!   to its `versionNumber` (it starts at 1).
//! - `statusDetails` in a request replaces the stored map; left out, it leaves it unchanged.
//!   `StartNext` on an execution that is already IN_PROGRESS returns it unchanged.
//! - `DescribeJobExecution` for `$next` with nothing pending is accepted without `execution`.
//! - `stepTimeoutInMinutes` (1 to 10080, or -1 to clear) is validated and stored, but no step
//!   timer runs: executions never become TIMED_OUT by themselves.
//! - `statusDetails` is always present in `JobExecution` and `executionState` (`{}` when empty);
//!   `startedAt` only once the execution has started.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::{Error, Result};

#[cfg(test)]
mod tests;

/// The largest job document accepted, in bytes of its JSON serialization.
pub const MAX_DOCUMENT_BYTES: usize = 32 * 1024;
/// The longest `clientToken` accepted, in bytes.
pub const MAX_CLIENT_TOKEN_BYTES: usize = 64;
/// The most pending executions listed in one `notify` message.
pub const NOTIFY_LIST_LIMIT: usize = 15;
/// The longest step timeout a request may set, in minutes (7 days).
const MAX_STEP_TIMEOUT_MINUTES: i64 = 10_080;
/// The job id that stands for "the thing's next pending execution" in a describe request.
const NEXT: &str = "$next";
/// The version of the saved-state layout.
const STATE_FORMAT: u64 = 1;

pub use crate::lifecycle::jobs::JobStatus;

/// A request a device publishes under `$aws/things/<thing>/jobs/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobsRequest {
    /// `jobs/get`: GetPendingJobExecutions.
    GetPending,
    /// `jobs/start-next`: StartNextPendingJobExecution.
    StartNext,
    /// `jobs/<jobId>/get`: DescribeJobExecution.
    Describe {
        /// The job, or `"$next"` for the thing's next pending execution.
        job_id: String,
    },
    /// `jobs/<jobId>/update`: UpdateJobExecution.
    Update {
        /// The job whose execution on the requesting thing is updated.
        job_id: String,
    },
}

impl JobsRequest {
    /// The topic this request is published on for `thing`; its answers go to this topic plus
    /// `/accepted` or `/rejected`.
    pub fn topic(&self, thing: &str) -> String {
        match self {
            JobsRequest::GetPending => jobs_topic(thing, "get"),
            JobsRequest::StartNext => jobs_topic(thing, "start-next"),
            JobsRequest::Describe { job_id } => jobs_topic(thing, &format!("{job_id}/get")),
            JobsRequest::Update { job_id } => jobs_topic(thing, &format!("{job_id}/update")),
        }
    }
}

/// Parses a Jobs request topic: `$aws/things/<thing>/jobs/get`, `…/jobs/start-next`,
/// `…/jobs/<jobId>/get` (jobId may be `$next`) or `…/jobs/<jobId>/update`, giving the thing and
/// the request. Anything else, including answer and notification topics, gives `None`.
///
/// The thing name must match `[a-zA-Z0-9:_-]{1,128}` and the job id `[a-zA-Z0-9_-]{1,64}`.
pub fn parse_request_topic(topic: &str) -> Option<(String, JobsRequest)> {
    let rest = topic.strip_prefix("$aws/things/")?;
    let (thing, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("jobs/")?;
    if !valid_thing_name(thing) {
        return None;
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let request = match parts.as_slice() {
        ["get"] => JobsRequest::GetPending,
        ["start-next"] => JobsRequest::StartNext,
        [id, "get"] if *id == NEXT || valid_job_id(id) => JobsRequest::Describe {
            job_id: (*id).to_string(),
        },
        [id, "update"] if valid_job_id(id) => JobsRequest::Update {
            job_id: (*id).to_string(),
        },
        _ => return None,
    };
    Some((thing.to_string(), request))
}

/// Whether `name` is a valid thing name (`[a-zA-Z0-9:_-]{1,128}`).
pub fn valid_thing_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
}

/// Whether `id` is a valid job id (`[a-zA-Z0-9_-]{1,64}`).
pub fn valid_job_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// Who receives a [`JobsMessage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipient {
    /// Only the connection that published the request (AWS delivers request answers, accepted
    /// or rejected, to the requester alone, whether or not it subscribed).
    Requester,
    /// Every subscriber of the topic (`notify`, `notify-next`).
    Subscribers,
}

/// A message the engine asks the hub to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobsMessage {
    /// The topic to publish on.
    pub topic: String,
    /// The JSON payload.
    pub payload: Vec<u8>,
    /// Who receives it.
    pub to: Recipient,
}

/// A job as created by the cloud side: an id, a document, and the things that execute it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// The job id (`[a-zA-Z0-9_-]{1,64}`).
    pub job_id: String,
    /// The job document: a JSON object of at most [`MAX_DOCUMENT_BYTES`] serialized.
    pub document: Value,
    /// The target things (duplicates are ignored).
    pub things: Vec<String>,
}

impl JobSpec {
    /// A job `job_id` with `document` for `things`.
    pub fn new(
        job_id: impl Into<String>,
        document: Value,
        things: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        JobSpec {
            job_id: job_id.into(),
            document,
            things: things.into_iter().map(Into::into).collect(),
        }
    }
}

/// One thing's execution of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Execution {
    status: JobStatus,
    queued_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    started_at: Option<i64>,
    last_updated_at: i64,
    version_number: u64,
    execution_number: u64,
    #[serde(default)]
    status_details: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    step_timeout_in_minutes: Option<i64>,
}

/// A job and its executions, by thing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Job {
    document: Value,
    /// Creation sequence number: breaks ties between jobs queued in the same second.
    seq: u64,
    created_at: i64,
    #[serde(default)]
    canceled: bool,
    #[serde(default)]
    force_canceled: bool,
    executions: BTreeMap<String, Execution>,
}

/// Everything the service holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct State {
    next_seq: u64,
    jobs: BTreeMap<String, Job>,
}

/// The saved layout: [`State`] plus a format number.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Saved {
    format: u64,
    #[serde(flatten)]
    state: State,
}

/// The AWS IoT Jobs service: jobs, their executions per thing, and the device-facing MQTT API.
///
/// All state sits behind one mutex; every operation is atomic, and a change is handed to the
/// caller's `persist` callback (under the lock, before anything is answered) and undone if
/// that fails.
#[derive(Debug, Default)]
pub struct JobsService {
    state: Mutex<State>,
}

/// A rejected device request: the error code, a message, and the execution's state for the
/// codes that carry it.
#[derive(Debug)]
struct Rejection {
    code: &'static str,
    message: String,
    execution_state: Option<Value>,
}

fn reject(code: &'static str, message: impl Into<String>) -> Rejection {
    Rejection {
        code,
        message: message.into(),
        execution_state: None,
    }
}

fn invalid_request(message: impl Into<String>) -> Rejection {
    reject("InvalidRequest", message)
}

/// What a successful request produced: the accepted body (without timestamp and token) and the
/// notifications that follow it.
type Handled = (Map<String, Value>, Vec<JobsMessage>);

impl JobsService {
    /// An empty service.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates a job with an execution QUEUED for each target thing (execution number 1,
    /// version 1), and returns the `notify` (and, where the thing's next pending execution
    /// changed, `notify-next`) messages for each target thing, in thing order.
    ///
    /// Errors: [`Error::AlreadyExists`] for a job id in use; [`Error::InvalidInput`] for an
    /// invalid job id or thing name, a document that is not a JSON object or is larger than
    /// [`MAX_DOCUMENT_BYTES`], or no things. `persist` receives the whole state
    /// ([`save_state`](Self::save_state)) after the change, under the lock; if it fails the job
    /// is not created and its error is returned.
    pub fn create_job(
        &self,
        spec: JobSpec,
        now: OffsetDateTime,
        persist: &dyn Fn(&Value) -> Result<()>,
    ) -> Result<Vec<JobsMessage>> {
        let JobSpec {
            job_id,
            document,
            things,
        } = spec;
        if !valid_job_id(&job_id) {
            return Err(Error::invalid(
                "job id",
                format!("{job_id:?} must be 1 to 64 characters of [a-zA-Z0-9_-]"),
            ));
        }
        if !document.is_object() {
            return Err(Error::invalid("job document", "must be a JSON object"));
        }
        let size = serde_json::to_vec(&document)
            .map_err(|e| Error::invalid("job document", e.to_string()))?
            .len();
        if size > MAX_DOCUMENT_BYTES {
            return Err(Error::invalid(
                "job document",
                format!("{size} bytes is more than the {MAX_DOCUMENT_BYTES} allowed"),
            ));
        }
        if things.is_empty() {
            return Err(Error::invalid("things", "a job needs at least one thing"));
        }
        if let Some(bad) = things.iter().find(|t| !valid_thing_name(t)) {
            return Err(Error::invalid(
                "things",
                format!("{bad:?} is not a valid thing name ([a-zA-Z0-9:_-]{{1,128}})"),
            ));
        }
        let things: BTreeSet<String> = things.into_iter().collect();
        let ts = now.unix_timestamp();

        let mut st = self.lock();
        if st.jobs.contains_key(&job_id) {
            return Err(Error::AlreadyExists {
                what: "job",
                id: job_id,
            });
        }
        let before: Vec<_> = things.iter().map(|t| pending_key(&st, t)).collect();
        let seq = st.next_seq;
        let executions = things
            .iter()
            .map(|t| {
                let ex = Execution {
                    status: JobStatus::Queued,
                    queued_at: ts,
                    started_at: None,
                    last_updated_at: ts,
                    version_number: 1,
                    execution_number: 1,
                    status_details: BTreeMap::new(),
                    step_timeout_in_minutes: None,
                };
                (t.clone(), ex)
            })
            .collect();
        st.next_seq = seq + 1;
        st.jobs.insert(
            job_id.clone(),
            Job {
                document,
                seq,
                created_at: ts,
                canceled: false,
                force_canceled: false,
                executions,
            },
        );
        if let Err(e) = persist(&saved(&st)) {
            st.jobs.remove(&job_id);
            st.next_seq = seq;
            return Err(e);
        }
        Ok(things
            .iter()
            .zip(&before)
            .flat_map(|(t, b)| notifications(&st, t, b, ts))
            .collect())
    }

    /// Cancels a job: its QUEUED executions (and, with `force`, its IN_PROGRESS ones) become
    /// CANCELED, each with `versionNumber` + 1. Returns `notify`/`notify-next` messages for the
    /// affected things as [`create_job`](Self::create_job) does. Cancelling again is allowed
    /// (a forced cancel after a plain one cancels the executions still in progress); when
    /// nothing changes, nothing is persisted and no messages are returned.
    ///
    /// Errors: [`Error::NotFound`] for an unknown job; `persist`'s error (the cancellation is
    /// undone).
    pub fn cancel_job(
        &self,
        job_id: &str,
        force: bool,
        now: OffsetDateTime,
        persist: &dyn Fn(&Value) -> Result<()>,
    ) -> Result<Vec<JobsMessage>> {
        let ts = now.unix_timestamp();
        let mut st = self.lock();
        let Some(job) = st.jobs.get(job_id) else {
            return Err(Error::NotFound {
                what: "job",
                id: job_id.to_string(),
            });
        };
        let snapshot = job.clone();
        let things: Vec<String> = job.executions.keys().cloned().collect();
        let before: Vec<_> = things.iter().map(|t| pending_key(&st, t)).collect();
        let mut changed = false;
        if let Some(job) = st.jobs.get_mut(job_id) {
            if !job.canceled {
                job.canceled = true;
                changed = true;
            }
            if force && !job.force_canceled {
                job.force_canceled = true;
                changed = true;
            }
            for ex in job.executions.values_mut() {
                let cancel =
                    ex.status == JobStatus::Queued || (force && ex.status == JobStatus::InProgress);
                if cancel {
                    ex.status = JobStatus::Canceled;
                    ex.version_number += 1;
                    ex.last_updated_at = ts;
                    changed = true;
                }
            }
        }
        if !changed {
            return Ok(Vec::new());
        }
        if let Err(e) = persist(&saved(&st)) {
            st.jobs.insert(job_id.to_string(), snapshot);
            return Err(e);
        }
        Ok(things
            .iter()
            .zip(&before)
            .flat_map(|(t, b)| notifications(&st, t, b, ts))
            .collect())
    }

    /// Handles a request `thing` published (`payload` as published) and returns the messages to
    /// send: first the answer on the request topic plus `/accepted` or `/rejected` (to the
    /// requester), then, if the request changed an execution, `notify` and `notify-next` for
    /// the thing (to subscribers) where they apply.
    ///
    /// A rejection is `{"code":…,"message":…,"timestamp":T,"clientToken":…}` plus
    /// `executionState` for `InvalidStateTransition` and `VersionMismatch`; a rejected request
    /// changes nothing. Codes: `InvalidJson` (payload is not JSON; an empty payload counts as
    /// `{}` except for an update), `InvalidRequest` (bad field, clientToken over 64 bytes,
    /// status a device may not set), `ResourceNotFound` (no such execution for this thing, or
    /// `executionNumber` differs), `VersionMismatch`, `InvalidStateTransition` (the execution is
    /// terminal) and `InternalError` (`persist` failed; the change is undone).
    pub fn handle(
        &self,
        thing: &str,
        request: &JobsRequest,
        payload: &[u8],
        now: OffsetDateTime,
        persist: &dyn Fn(&Value) -> Result<()>,
    ) -> Vec<JobsMessage> {
        let ts = now.unix_timestamp();
        let base = request.topic(thing);
        let empty_ok = !matches!(request, JobsRequest::Update { .. });
        let parsed = parse_payload(payload, empty_ok)
            .and_then(|obj| client_token(&obj).map(|token| (obj, token)));
        let (obj, token) = match parsed {
            Ok(p) => p,
            Err(rejection) => return vec![rejected(&base, rejection, None, ts)],
        };
        let mut st = self.lock();
        let outcome = match request {
            JobsRequest::GetPending => get_pending(&st, thing, &obj),
            JobsRequest::StartNext => start_next(&mut st, thing, &obj, ts, persist),
            JobsRequest::Describe { job_id } => describe(&st, thing, job_id, &obj),
            JobsRequest::Update { job_id } => update(&mut st, thing, job_id, &obj, ts, persist),
        };
        match outcome {
            Ok((body, notes)) => {
                let mut out = vec![accepted(&base, body, token.as_deref(), ts)];
                out.extend(notes);
                out
            }
            Err(rejection) => vec![rejected(&base, rejection, token.as_deref(), ts)],
        }
    }

    /// The execution of `job_id` on `thing` as AWS's `JobExecution` JSON, job document
    /// included. [`Error::NotFound`] if the job is unknown or does not target `thing`.
    pub fn execution(&self, job_id: &str, thing: &str) -> Result<Value> {
        let st = self.lock();
        let job = st.jobs.get(job_id).ok_or_else(|| Error::NotFound {
            what: "job",
            id: job_id.to_string(),
        })?;
        let ex = job.executions.get(thing).ok_or_else(|| Error::NotFound {
            what: "job execution",
            id: format!("{job_id} on {thing}"),
        })?;
        Ok(execution_json(job_id, thing, job, ex, true))
    }

    /// The status of every execution of `job_id`, as `(thing, status)` sorted by thing.
    /// [`Error::NotFound`] for an unknown job.
    pub fn executions(&self, job_id: &str) -> Result<Vec<(String, JobStatus)>> {
        let st = self.lock();
        let job = st.jobs.get(job_id).ok_or_else(|| Error::NotFound {
            what: "job",
            id: job_id.to_string(),
        })?;
        Ok(job
            .executions
            .iter()
            .map(|(t, ex)| (t.clone(), ex.status))
            .collect())
    }

    /// The whole state as JSON, for [`load_state`](Self::load_state).
    pub fn save_state(&self) -> Value {
        saved(&self.lock())
    }

    /// Replaces the whole state with one from [`save_state`](Self::save_state) (`null` means
    /// empty). [`Error::InvalidInput`] if it is malformed; the state is then left unchanged.
    pub fn load_state(&self, state: Value) -> Result<()> {
        let loaded = if state.is_null() {
            State::default()
        } else {
            let saved: Saved = serde_json::from_value(state)
                .map_err(|e| Error::invalid("jobs state", e.to_string()))?;
            if saved.format != STATE_FORMAT {
                return Err(Error::invalid(
                    "jobs state",
                    format!("unknown format {}", saved.format),
                ));
            }
            validate_state(&saved.state)?;
            saved.state
        };
        *self.lock() = loaded;
        Ok(())
    }
}

fn validate_state(st: &State) -> Result<()> {
    for (id, job) in &st.jobs {
        if !valid_job_id(id) {
            return Err(Error::invalid("jobs state", format!("bad job id {id:?}")));
        }
        if job.seq >= st.next_seq {
            return Err(Error::invalid(
                "jobs state",
                format!(
                    "job {id} has sequence {} not below {}",
                    job.seq, st.next_seq
                ),
            ));
        }
        if let Some(thing) = job.executions.keys().find(|t| !valid_thing_name(t)) {
            return Err(Error::invalid(
                "jobs state",
                format!("bad thing name {thing:?} in job {id}"),
            ));
        }
    }
    Ok(())
}

fn saved(st: &State) -> Value {
    json!({
        "format": STATE_FORMAT,
        "nextSeq": st.next_seq,
        "jobs": st.jobs,
    })
}

fn jobs_topic(thing: &str, suffix: &str) -> String {
    format!("$aws/things/{thing}/jobs/{suffix}")
}

// ---- views ----------------------------------------------------------------------------------

/// The thing's pending executions in AWS's order: IN_PROGRESS before QUEUED, then by queue
/// time, then by creation sequence.
fn pending<'a>(st: &'a State, thing: &str) -> Vec<(&'a str, &'a Job, &'a Execution)> {
    let mut list: Vec<_> = st
        .jobs
        .iter()
        .filter_map(|(id, job)| {
            let ex = job.executions.get(thing)?;
            ex.status.is_pending().then_some((id.as_str(), job, ex))
        })
        .collect();
    list.sort_by_key(|(_, job, ex)| (ex.status != JobStatus::InProgress, ex.queued_at, job.seq));
    list
}

/// What the notifications depend on: the pending executions (job and status) in order.
fn pending_key(st: &State, thing: &str) -> Vec<(String, JobStatus)> {
    pending(st, thing)
        .into_iter()
        .map(|(id, _, ex)| (id.to_string(), ex.status))
        .collect()
}

fn execution_json(job_id: &str, thing: &str, job: &Job, ex: &Execution, doc: bool) -> Value {
    let mut m = Map::new();
    m.insert("jobId".into(), job_id.into());
    m.insert("thingName".into(), thing.into());
    m.insert("status".into(), ex.status.as_str().into());
    m.insert("queuedAt".into(), ex.queued_at.into());
    if let Some(started) = ex.started_at {
        m.insert("startedAt".into(), started.into());
    }
    m.insert("lastUpdatedAt".into(), ex.last_updated_at.into());
    m.insert("versionNumber".into(), ex.version_number.into());
    m.insert("executionNumber".into(), ex.execution_number.into());
    m.insert("statusDetails".into(), json!(ex.status_details));
    if doc {
        m.insert("jobDocument".into(), job.document.clone());
    }
    Value::Object(m)
}

fn summary_json(job_id: &str, ex: &Execution) -> Value {
    let mut m = Map::new();
    m.insert("jobId".into(), job_id.into());
    m.insert("queuedAt".into(), ex.queued_at.into());
    if let Some(started) = ex.started_at {
        m.insert("startedAt".into(), started.into());
    }
    m.insert("lastUpdatedAt".into(), ex.last_updated_at.into());
    m.insert("versionNumber".into(), ex.version_number.into());
    m.insert("executionNumber".into(), ex.execution_number.into());
    Value::Object(m)
}

fn state_json(ex: &Execution) -> Value {
    json!({
        "status": ex.status.as_str(),
        "statusDetails": ex.status_details,
        "versionNumber": ex.version_number,
    })
}

// ---- messages -------------------------------------------------------------------------------

fn message(topic: String, body: Value, to: Recipient) -> JobsMessage {
    JobsMessage {
        topic,
        payload: body.to_string().into_bytes(),
        to,
    }
}

fn accepted(base: &str, mut body: Map<String, Value>, token: Option<&str>, ts: i64) -> JobsMessage {
    body.insert("timestamp".into(), ts.into());
    if let Some(token) = token {
        body.insert("clientToken".into(), token.into());
    }
    message(
        format!("{base}/accepted"),
        Value::Object(body),
        Recipient::Requester,
    )
}

fn rejected(base: &str, rejection: Rejection, token: Option<&str>, ts: i64) -> JobsMessage {
    let mut body = Map::new();
    body.insert("code".into(), rejection.code.into());
    body.insert("message".into(), rejection.message.into());
    body.insert("timestamp".into(), ts.into());
    if let Some(token) = token {
        body.insert("clientToken".into(), token.into());
    }
    if let Some(state) = rejection.execution_state {
        body.insert("executionState".into(), state);
    }
    message(
        format!("{base}/rejected"),
        Value::Object(body),
        Recipient::Requester,
    )
}

/// The `notify` / `notify-next` messages for `thing` after a change, given its pending key from
/// before the change.
fn notifications(
    st: &State,
    thing: &str,
    before: &[(String, JobStatus)],
    ts: i64,
) -> Vec<JobsMessage> {
    let list = pending(st, thing);
    let after: Vec<(&str, JobStatus)> = list.iter().map(|(id, _, ex)| (*id, ex.status)).collect();
    let unchanged = before.len() == after.len()
        && before
            .iter()
            .zip(&after)
            .all(|((b_id, b_st), (a_id, a_st))| b_id == a_id && b_st == a_st);
    let mut out = Vec::new();
    if !unchanged {
        let mut jobs = Map::new();
        for (id, _, ex) in list.iter().take(NOTIFY_LIST_LIMIT) {
            let entry = jobs
                .entry(ex.status.as_str())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(items) = entry {
                items.push(summary_json(id, ex));
            }
        }
        out.push(message(
            jobs_topic(thing, "notify"),
            json!({ "jobs": jobs, "timestamp": ts }),
            Recipient::Subscribers,
        ));
    }
    let next_before = before.first().map(|(id, _)| id.as_str());
    let next_after = list.first().map(|(id, _, _)| *id);
    if next_before != next_after {
        let mut body = Map::new();
        if let Some((id, job, ex)) = list.first() {
            body.insert("execution".into(), execution_json(id, thing, job, ex, true));
        }
        body.insert("timestamp".into(), ts.into());
        out.push(message(
            jobs_topic(thing, "notify-next"),
            Value::Object(body),
            Recipient::Subscribers,
        ));
    }
    out
}

// ---- request fields -------------------------------------------------------------------------

fn parse_payload(payload: &[u8], empty_ok: bool) -> Result<Map<String, Value>, Rejection> {
    if empty_ok && payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err(invalid_request("the request must be a JSON object")),
        Err(_) => Err(reject(
            "InvalidJson",
            "the request is not valid UTF-8 encoded JSON",
        )),
    }
}

/// The field's value, with JSON `null` treated as absent.
fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn client_token(obj: &Map<String, Value>) -> Result<Option<String>, Rejection> {
    match field(obj, "clientToken") {
        None => Ok(None),
        Some(Value::String(s)) if s.len() <= MAX_CLIENT_TOKEN_BYTES => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(invalid_request(format!(
            "clientToken is longer than {MAX_CLIENT_TOKEN_BYTES} bytes"
        ))),
        Some(_) => Err(invalid_request("clientToken must be a string")),
    }
}

fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, Rejection> {
    match field(obj, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(invalid_request(format!("{key} must be a boolean"))),
    }
}

fn opt_u64(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>, Rejection> {
    match field(obj, key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| invalid_request(format!("{key} must be a non-negative integer"))),
    }
}

fn opt_details(obj: &Map<String, Value>) -> Result<Option<BTreeMap<String, String>>, Rejection> {
    let Some(value) = field(obj, "statusDetails") else {
        return Ok(None);
    };
    let Value::Object(map) = value else {
        return Err(invalid_request(
            "statusDetails must be an object of strings",
        ));
    };
    map.iter()
        .map(|(k, v)| match v {
            Value::String(s) if !k.is_empty() => Ok((k.clone(), s.clone())),
            Value::String(_) => Err(invalid_request("statusDetails keys must not be empty")),
            _ => Err(invalid_request(format!(
                "statusDetails value for {k:?} must be a string"
            ))),
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

/// `stepTimeoutInMinutes`: `Some(Some(n))` sets it, `Some(None)` (from -1) clears it.
fn opt_step_timeout(obj: &Map<String, Value>) -> Result<Option<Option<i64>>, Rejection> {
    match field(obj, "stepTimeoutInMinutes") {
        None => Ok(None),
        Some(v) => match v.as_i64() {
            Some(-1) => Ok(Some(None)),
            Some(n) if (1..=MAX_STEP_TIMEOUT_MINUTES).contains(&n) => Ok(Some(Some(n))),
            _ => Err(invalid_request(format!(
                "stepTimeoutInMinutes must be -1 or from 1 to {MAX_STEP_TIMEOUT_MINUTES}"
            ))),
        },
    }
}

// ---- the four requests ----------------------------------------------------------------------

fn get_pending(st: &State, thing: &str, _obj: &Map<String, Value>) -> Result<Handled, Rejection> {
    let list = pending(st, thing);
    let of = |status: JobStatus| -> Vec<Value> {
        list.iter()
            .filter(|(_, _, ex)| ex.status == status)
            .map(|(id, _, ex)| summary_json(id, ex))
            .collect()
    };
    let mut body = Map::new();
    body.insert("inProgressJobs".into(), of(JobStatus::InProgress).into());
    body.insert("queuedJobs".into(), of(JobStatus::Queued).into());
    Ok((body, Vec::new()))
}

fn start_next(
    st: &mut State,
    thing: &str,
    obj: &Map<String, Value>,
    ts: i64,
    persist: &dyn Fn(&Value) -> Result<()>,
) -> Result<Handled, Rejection> {
    let details = opt_details(obj)?;
    let step = opt_step_timeout(obj)?;
    let before = pending_key(st, thing);
    let Some((job_id, _)) = before.first() else {
        return Ok((Map::new(), Vec::new()));
    };
    let job_id = job_id.clone();
    let Some(ex) = execution_mut(st, &job_id, thing) else {
        return Err(reject("InternalError", "the next execution vanished"));
    };
    let snapshot = (ex.status == JobStatus::Queued).then(|| ex.clone());
    if snapshot.is_some() {
        ex.status = JobStatus::InProgress;
        ex.started_at = Some(ts);
        ex.last_updated_at = ts;
        ex.version_number += 1;
        if let Some(details) = details {
            ex.status_details = details;
        }
        if let Some(step) = step {
            ex.step_timeout_in_minutes = step;
        }
    }
    if let Some(snapshot) = snapshot {
        persist_or_undo(st, &job_id, thing, snapshot, persist)?;
    }
    let job = &st.jobs[&job_id];
    let execution = execution_json(&job_id, thing, job, &job.executions[thing], true);
    let mut body = Map::new();
    body.insert("execution".into(), execution);
    Ok((body, notifications(st, thing, &before, ts)))
}

fn describe(
    st: &State,
    thing: &str,
    job_id: &str,
    obj: &Map<String, Value>,
) -> Result<Handled, Rejection> {
    let number = opt_u64(obj, "executionNumber")?;
    let include_doc = opt_bool(obj, "includeJobDocument")?.unwrap_or(true);
    let found = if job_id == NEXT {
        match pending(st, thing).first() {
            Some(&(id, job, ex)) => (id, job, ex),
            None => return Ok((Map::new(), Vec::new())),
        }
    } else {
        let (id, job) = st
            .jobs
            .get_key_value(job_id)
            .ok_or_else(|| not_found(job_id, thing))?;
        let ex = job
            .executions
            .get(thing)
            .ok_or_else(|| not_found(job_id, thing))?;
        (id.as_str(), job, ex)
    };
    let (id, job, ex) = found;
    if let Some(n) = number
        && n != ex.execution_number
    {
        return Err(reject(
            "ResourceNotFound",
            format!("job {id} has no execution number {n} on thing {thing}"),
        ));
    }
    let mut body = Map::new();
    body.insert(
        "execution".into(),
        execution_json(id, thing, job, ex, include_doc),
    );
    Ok((body, Vec::new()))
}

fn update(
    st: &mut State,
    thing: &str,
    job_id: &str,
    obj: &Map<String, Value>,
    ts: i64,
    persist: &dyn Fn(&Value) -> Result<()>,
) -> Result<Handled, Rejection> {
    let status = match field(obj, "status") {
        None => return Err(invalid_request("status is required")),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(invalid_request("status must be a string")),
    };
    let new_status = match JobStatus::from_wire(status) {
        Some(
            s @ (JobStatus::InProgress
            | JobStatus::Failed
            | JobStatus::Succeeded
            | JobStatus::Rejected),
        ) => s,
        _ => {
            return Err(invalid_request(format!(
                "status {status:?} cannot be set by a device \
                 (IN_PROGRESS, FAILED, SUCCEEDED or REJECTED)"
            )));
        }
    };
    let details = opt_details(obj)?;
    let expected = opt_u64(obj, "expectedVersion")?;
    let number = opt_u64(obj, "executionNumber")?;
    let include_state = opt_bool(obj, "includeJobExecutionState")?.unwrap_or(false);
    let include_doc = opt_bool(obj, "includeJobDocument")?.unwrap_or(false);
    let step = opt_step_timeout(obj)?;

    let before = pending_key(st, thing);
    let Some(ex) = execution_mut(st, job_id, thing) else {
        return Err(not_found(job_id, thing));
    };
    if let Some(n) = number
        && n != ex.execution_number
    {
        return Err(reject(
            "ResourceNotFound",
            format!("job {job_id} has no execution number {n} on thing {thing}"),
        ));
    }
    if let Some(v) = expected
        && v != ex.version_number
    {
        return Err(Rejection {
            code: "VersionMismatch",
            message: format!(
                "expected version {v}, the execution is at version {}",
                ex.version_number
            ),
            execution_state: Some(state_json(ex)),
        });
    }
    if ex.status.is_terminal() {
        return Err(Rejection {
            code: "InvalidStateTransition",
            message: format!(
                "the execution is {} and cannot change to {new_status}",
                ex.status
            ),
            execution_state: Some(state_json(ex)),
        });
    }
    let snapshot = ex.clone();
    if ex.status == JobStatus::Queued && new_status == JobStatus::InProgress {
        ex.started_at = Some(ts);
    }
    ex.status = new_status;
    ex.last_updated_at = ts;
    ex.version_number += 1;
    if let Some(details) = details {
        ex.status_details = details;
    }
    if let Some(step) = step {
        ex.step_timeout_in_minutes = step;
    }
    persist_or_undo(st, job_id, thing, snapshot, persist)?;

    let job = &st.jobs[job_id];
    let mut body = Map::new();
    if include_state {
        body.insert("executionState".into(), state_json(&job.executions[thing]));
    }
    if include_doc {
        body.insert("jobDocument".into(), job.document.clone());
    }
    Ok((body, notifications(st, thing, &before, ts)))
}

fn execution_mut<'a>(st: &'a mut State, job_id: &str, thing: &str) -> Option<&'a mut Execution> {
    st.jobs.get_mut(job_id)?.executions.get_mut(thing)
}

fn not_found(job_id: &str, thing: &str) -> Rejection {
    reject(
        "ResourceNotFound",
        format!("no execution of job {job_id} for thing {thing}"),
    )
}

/// Persists the state after a change of one execution; on failure puts `snapshot` back and
/// answers `InternalError`.
fn persist_or_undo(
    st: &mut State,
    job_id: &str,
    thing: &str,
    snapshot: Execution,
    persist: &dyn Fn(&Value) -> Result<()>,
) -> Result<(), Rejection> {
    match persist(&saved(st)) {
        Ok(()) => Ok(()),
        Err(_) => {
            if let Some(ex) = execution_mut(st, job_id, thing) {
                *ex = snapshot;
            }
            Err(reject(
                "InternalError",
                "the change could not be stored; nothing was changed",
            ))
        }
    }
}
