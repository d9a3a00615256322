//! AWS IoT Jobs, device side: [`Jobs`] over a connected [`DeviceClient`] (the MQTT API:
//! get pending, start-next, describe, update, and `notify-next`).

use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::device::{DeviceClient, Feature, Inbound, Outbound};
use crate::{Error, Result};

/// The jobs topic prefix of `thing`: `$aws/things/<thing>/jobs`.
pub(crate) fn prefix(thing: &str) -> String {
    format!("$aws/things/{thing}/jobs")
}

/// The subscriptions a device needs for jobs: the notifications and every answer to its
/// own requests.
pub(crate) fn subscriptions(thing: &str) -> Vec<(String, u8)> {
    let p = prefix(thing);
    vec![
        (format!("{p}/notify-next"), 1),
        (format!("{p}/get/+"), 1),
        (format!("{p}/start-next/+"), 1),
        (format!("{p}/+/get/+"), 1),
        (format!("{p}/+/update/+"), 1),
    ]
}

/// Sorts a message on `thing`'s jobs topics; `None` if `topic` is not one.
pub(crate) fn classify(thing: &str, topic: &str, payload: &Bytes) -> Option<Inbound> {
    let p = prefix(thing);
    let rest = topic.strip_prefix(p.as_str())?.strip_prefix('/')?;
    if rest == "notify-next" || rest == "notify" {
        return Some(Inbound::Notification {
            topic: topic.to_string(),
            payload: payload.clone(),
        });
    }
    let status = if rest.ends_with("/accepted") {
        200
    } else if rest.ends_with("/rejected") {
        400
    } else {
        return None;
    };
    let token = match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(body)) => body
            .get("clientToken")
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }?;
    Some(Inbound::Response {
        request_id: token,
        status,
        body: payload.clone(),
    })
}

pub use crate::lifecycle::jobs::JobStatus;

/// One job execution, as AWS describes it.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq)]
pub struct JobExecution {
    /// The job.
    pub job_id: String,
    /// The thing it runs on.
    pub thing_name: String,
    /// The job document (what to do); `Null` when the answer left it out.
    pub document: Value,
    /// Its status.
    pub status: JobStatus,
    /// Details the device reported.
    pub status_details: Map<String, Value>,
    /// Its version (for conditional updates).
    pub version_number: u64,
    /// Which execution of the job on this thing.
    pub execution_number: u64,
}

impl JobExecution {
    /// Parses AWS's `JobExecution` object.
    pub fn from_aws(value: &Value) -> Result<Self> {
        let bad = |what: &str| Error::invalid("job execution", format!("{what}: {value}"));
        let status = value
            .get("status")
            .and_then(Value::as_str)
            .and_then(JobStatus::from_wire)
            .ok_or_else(|| bad("no known status"))?;
        Ok(JobExecution {
            job_id: value
                .get("jobId")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("no jobId"))?
                .to_string(),
            thing_name: value
                .get("thingName")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            document: value.get("jobDocument").cloned().unwrap_or(Value::Null),
            status,
            status_details: value
                .get("statusDetails")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            version_number: value
                .get("versionNumber")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad("no versionNumber"))?,
            execution_number: value
                .get("executionNumber")
                .and_then(Value::as_u64)
                .unwrap_or(1),
        })
    }
}

/// A pending job, as the list of pending jobs summarises it.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSummary {
    /// The job.
    pub job_id: String,
    /// Its version.
    pub version_number: u64,
    /// Which execution.
    pub execution_number: u64,
}

/// The thing's pending jobs.
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PendingJobs {
    /// Started and not finished.
    pub in_progress: Vec<JobSummary>,
    /// Not started yet, oldest first.
    pub queued: Vec<JobSummary>,
}

/// A status update for a job execution.
#[derive(Clone, Debug, PartialEq)]
pub struct JobUpdate {
    status: JobStatus,
    details: Option<Map<String, Value>>,
    expected_version: Option<u64>,
}

impl JobUpdate {
    /// An update to `status` (`InProgress`, `Succeeded`, `Failed` or `Rejected`).
    pub fn new(status: JobStatus) -> Self {
        JobUpdate {
            status,
            details: None,
            expected_version: None,
        }
    }

    /// Adds a status detail (AWS allows string values only).
    pub fn detail(mut self, name: &str, value: &str) -> Self {
        self.details
            .get_or_insert_with(Map::new)
            .insert(name.to_string(), Value::String(value.to_string()));
        self
    }

    /// Applies only if the execution is still at `version` ([`Error::Conflict`] otherwise).
    pub fn expected_version(mut self, version: u64) -> Self {
        self.expected_version = Some(version);
        self
    }
}

/// The execution's state after an update.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq)]
pub struct ExecutionState {
    /// Its status now.
    pub status: JobStatus,
    /// Its version now.
    pub version_number: u64,
}

/// AWS IoT Jobs for the device of a connected [`DeviceClient`].
///
/// ```no_run
/// # async fn f(client: fleetkit::device::DeviceClient) -> fleetkit::Result<()> {
/// use fleetkit::aws::{Jobs, JobStatus, JobUpdate};
/// let jobs = Jobs::new(&client)?;
/// while let Some(job) = jobs.start_next().await? {
///     println!("running {} with {}", job.job_id, job.document);
///     // … do the work …
///     jobs.update(&job.job_id, JobUpdate::new(JobStatus::Succeeded)
///         .expected_version(job.version_number)).await?;
/// }
/// # Ok(()) }
/// ```
///
/// Needs an AWS client with jobs enabled ([`AwsIotBuilder::jobs`](super::AwsIotBuilder::jobs),
/// the default); with any other dialect [`Jobs::new`] is [`Error::NotSupported`].
#[derive(Debug)]
pub struct Jobs<'a> {
    client: &'a DeviceClient,
    thing: String,
}

impl<'a> Jobs<'a> {
    /// Jobs for `client`'s device.
    pub fn new(client: &'a DeviceClient) -> Result<Self> {
        if !client.capabilities().supports(Feature::Jobs) {
            return Err(Error::NotSupported(
                "jobs: the client's dialect has no jobs (use fleetkit::aws with jobs enabled)"
                    .into(),
            ));
        }
        Ok(Jobs {
            client,
            thing: client.device().as_str().to_string(),
        })
    }

    async fn call(&self, suffix: &str, mut body: Map<String, Value>) -> Result<Value> {
        let token = self.client.new_request_id();
        body.insert("clientToken".into(), Value::String(token.clone()));
        let out = Outbound::new(
            format!("{}/{suffix}", prefix(&self.thing)),
            serde_json::to_vec(&Value::Object(body)).expect("JSON"),
            1,
        );
        let (status, answer) = self.client.request(token, out).await?;
        let answer: Value = serde_json::from_slice(&answer)
            .map_err(|e| Error::Unavailable(format!("the jobs service answered non-JSON: {e}")))?;
        if (200..300).contains(&status) {
            Ok(answer)
        } else {
            Err(rejection(&self.thing, &answer))
        }
    }

    /// The thing's pending jobs (GetPendingJobExecutions).
    pub async fn pending(&self) -> Result<PendingJobs> {
        let answer = self.call("get", Map::new()).await?;
        let list = |key: &str| -> Vec<JobSummary> {
            answer
                .get(key)
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|i| {
                            Some(JobSummary {
                                job_id: i.get("jobId")?.as_str()?.to_string(),
                                version_number: i.get("versionNumber")?.as_u64()?,
                                execution_number: i
                                    .get("executionNumber")
                                    .and_then(Value::as_u64)
                                    .unwrap_or(1),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(PendingJobs {
            in_progress: list("inProgressJobs"),
            queued: list("queuedJobs"),
        })
    }

    /// Starts the next pending job (StartNextPendingJobExecution): an execution already in
    /// progress first, else the oldest queued one, which becomes `IN_PROGRESS`. `None` when
    /// nothing is pending.
    pub async fn start_next(&self) -> Result<Option<JobExecution>> {
        let answer = self.call("start-next", Map::new()).await?;
        answer
            .get("execution")
            .map(JobExecution::from_aws)
            .transpose()
    }

    /// Describes one execution (DescribeJobExecution), with its job document; `job_id` may
    /// be `$next`.
    pub async fn describe(&self, job_id: &str) -> Result<Option<JobExecution>> {
        check_job_id(job_id, true)?;
        let mut body = Map::new();
        body.insert("includeJobDocument".into(), Value::Bool(true));
        let answer = self.call(&format!("{job_id}/get"), body).await?;
        answer
            .get("execution")
            .map(JobExecution::from_aws)
            .transpose()
    }

    /// Reports progress or the outcome of `job_id` (UpdateJobExecution).
    pub async fn update(&self, job_id: &str, update: JobUpdate) -> Result<ExecutionState> {
        check_job_id(job_id, false)?;
        let mut body = Map::new();
        body.insert("status".into(), json!(update.status.as_str()));
        if let Some(details) = update.details {
            body.insert("statusDetails".into(), Value::Object(details));
        }
        if let Some(v) = update.expected_version {
            body.insert("expectedVersion".into(), json!(v));
        }
        body.insert("includeJobExecutionState".into(), Value::Bool(true));
        let answer = self.call(&format!("{job_id}/update"), body).await?;
        let state = answer.get("executionState").cloned().unwrap_or(Value::Null);
        Ok(ExecutionState {
            status: state
                .get("status")
                .and_then(Value::as_str)
                .and_then(JobStatus::from_wire)
                .unwrap_or(update.status),
            version_number: state
                .get("versionNumber")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        })
    }

    /// The stream of "next job changed" notifications (`notify-next`): `Some(execution)`
    /// when there is a next job, `None` when the queue emptied. Takes the client's
    /// [`notifications`](DeviceClient::notifications) stream (there is one).
    pub fn next_changes(&self) -> Result<mpsc::Receiver<Option<JobExecution>>> {
        let mut notifications = self.client.notifications()?;
        let topic = format!("{}/notify-next", prefix(&self.thing));
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Some((t, payload)) = notifications.recv().await {
                if t != topic {
                    continue;
                }
                let Ok(body) = serde_json::from_slice::<Value>(&payload) else {
                    continue;
                };
                let next = match body.get("execution") {
                    None | Some(Value::Null) => None,
                    Some(e) => match JobExecution::from_aws(e) {
                        Ok(e) => Some(e),
                        Err(_) => continue,
                    },
                };
                if tx.send(next).await.is_err() {
                    break;
                }
            }
        });
        Ok(rx)
    }
}

fn check_job_id(job_id: &str, next_allowed: bool) -> Result<()> {
    let ok = (next_allowed && job_id == "$next")
        || (!job_id.is_empty()
            && job_id.len() <= 64
            && job_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "job id",
            format!("{job_id:?}: 1-64 of A-Z a-z 0-9 - _"),
        ))
    }
}

/// The error a jobs rejection means.
fn rejection(thing: &str, answer: &Value) -> Error {
    let code = answer.get("code").and_then(Value::as_str).unwrap_or("");
    let message = answer
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let text = format!("{code}: {message}");
    match code {
        "ResourceNotFound" => Error::NotFound {
            what: "job execution",
            id: format!("{thing}: {message}"),
        },
        "VersionMismatch" => Error::Conflict {
            what: format!("job execution of {thing}"),
            expected: 0,
            current: answer
                .pointer("/executionState/versionNumber")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        },
        "InvalidStateTransition" | "TerminalStateReached" => Error::Precondition(text),
        "InvalidRequest" | "InvalidJson" | "InvalidTopic" => Error::invalid("job request", text),
        _ => Error::Unavailable(format!("the jobs service refused: {text}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_correlated_by_client_token_and_notifications_sorted() {
        let t = "thing-1";
        let accepted = Bytes::from_static(br#"{"clientToken":"r1","execution":{}}"#);
        match classify(t, "$aws/things/thing-1/jobs/start-next/accepted", &accepted) {
            Some(Inbound::Response {
                request_id, status, ..
            }) => assert_eq!((request_id.as_str(), status), ("r1", 200)),
            other => panic!("{other:?}"),
        }
        let rejected = Bytes::from_static(br#"{"clientToken":"r2","code":"InvalidJson"}"#);
        match classify(
            t,
            "$aws/things/thing-1/jobs/job-7/update/rejected",
            &rejected,
        ) {
            Some(Inbound::Response { status, .. }) => assert_eq!(status, 400),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(t, "$aws/things/thing-1/jobs/notify-next", &accepted),
            Some(Inbound::Notification { .. })
        ));
        // Another thing's topics, answers without a token, foreign topics: not ours.
        assert!(classify(t, "$aws/things/thing-2/jobs/notify-next", &accepted).is_none());
        let anonymous = Bytes::from_static(br#"{"execution":{}}"#);
        assert!(classify(t, "$aws/things/thing-1/jobs/get/accepted", &anonymous).is_none());
        assert!(classify(t, "$aws/things/thing-1/shadow/get/accepted", &accepted).is_none());
        assert!(classify(t, "$aws/things/thing-1/jobs/get", &accepted).is_none());
    }

    #[test]
    fn rejections_are_typed() {
        let e = rejection(
            "t",
            &json!({"code":"VersionMismatch","message":"m","executionState":{"versionNumber":3}}),
        );
        assert!(matches!(e, Error::Conflict { current: 3, .. }), "{e:?}");
        assert!(matches!(
            rejection("t", &json!({"code":"ResourceNotFound"})),
            Error::NotFound { .. }
        ));
        assert!(matches!(
            rejection("t", &json!({"code":"InvalidStateTransition"})),
            Error::Precondition(_)
        ));
        assert!(matches!(
            rejection("t", &json!({"code":"InvalidRequest"})),
            Error::InvalidInput { .. }
        ));
        assert!(matches!(
            rejection("t", &json!({"code":"RequestThrottled"})),
            Error::Unavailable(_)
        ));
    }

    #[test]
    fn executions_parse_and_bad_ones_are_refused() {
        let e = JobExecution::from_aws(&json!({
            "jobId":"fw-2","thingName":"t","jobDocument":{"url":"u"},"status":"IN_PROGRESS",
            "statusDetails":{"step":"1"},"versionNumber":2,"executionNumber":1}))
        .unwrap();
        assert_eq!(e.status, JobStatus::InProgress);
        assert_eq!(e.document, json!({"url":"u"}));
        assert_eq!(e.version_number, 2);
        assert!(JobExecution::from_aws(&json!({"jobId":"x","status":"NOPE"})).is_err());
        assert!(check_job_id("$next", true).is_ok());
        assert!(check_job_id("$next", false).is_err());
        assert!(check_job_id("a/b", false).is_err());
    }
}
