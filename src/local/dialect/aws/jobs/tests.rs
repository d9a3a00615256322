//! Tests of the Jobs engine: exact wire shapes, every rejection, notifications, ordering,
//! persistence and undo.

use std::cell::Cell;

use proptest::prelude::*;
use serde_json::json;

use super::*;

fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap()
}

fn no_persist(_: &Value) -> Result<()> {
    Ok(())
}

fn failing(_: &Value) -> Result<()> {
    Err(Error::Unavailable("disk full".into()))
}

fn doc(id: &str) -> Value {
    json!({"operation": "install", "job": id})
}

fn body(m: &JobsMessage) -> Value {
    serde_json::from_slice(&m.payload).unwrap()
}

/// A service with `jobs`: (id, creation second, things).
fn service(jobs: &[(&str, i64, &[&str])]) -> JobsService {
    let s = JobsService::new();
    for (id, secs, things) in jobs {
        s.create_job(
            JobSpec::new(*id, doc(id), things.iter().copied()),
            at(*secs),
            &no_persist,
        )
        .unwrap();
    }
    s
}

fn describe_req(id: &str) -> JobsRequest {
    JobsRequest::Describe { job_id: id.into() }
}

fn update_req(id: &str) -> JobsRequest {
    JobsRequest::Update { job_id: id.into() }
}

fn send(
    s: &JobsService,
    thing: &str,
    req: &JobsRequest,
    payload: &str,
    secs: i64,
) -> Vec<JobsMessage> {
    s.handle(thing, req, payload.as_bytes(), at(secs), &no_persist)
}

/// Sends and checks the single accepted answer; returns its body and the notifications.
fn accept(
    s: &JobsService,
    thing: &str,
    req: &JobsRequest,
    payload: &str,
    secs: i64,
) -> (Value, Vec<JobsMessage>) {
    let mut out = send(s, thing, req, payload, secs);
    assert!(!out.is_empty());
    let answer = out.remove(0);
    assert_eq!(
        answer.topic,
        format!("{}/accepted", req.topic(thing)),
        "{:?}",
        body(&answer)
    );
    assert_eq!(answer.to, Recipient::Requester);
    for n in &out {
        assert_eq!(n.to, Recipient::Subscribers);
    }
    (body(&answer), out)
}

/// Sends a request that must be rejected with `code`, checking that nothing changed and nothing
/// was persisted; returns the rejection body.
fn assert_rejected(
    s: &JobsService,
    thing: &str,
    req: &JobsRequest,
    payload: &[u8],
    code: &str,
) -> Value {
    let before = s.save_state();
    let calls = Cell::new(0);
    let persist = |_: &Value| {
        calls.set(calls.get() + 1);
        Ok(())
    };
    let out = s.handle(thing, req, payload, at(5000), &persist);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].topic, format!("{}/rejected", req.topic(thing)));
    assert_eq!(out[0].to, Recipient::Requester);
    let b = body(&out[0]);
    assert_eq!(b["code"], code, "{b}");
    assert_eq!(b["timestamp"], 5000);
    assert!(b["message"].as_str().is_some_and(|m| !m.is_empty()));
    let has_state = matches!(code, "InvalidStateTransition" | "VersionMismatch");
    assert_eq!(b.get("executionState").is_some(), has_state, "{b}");
    assert_eq!(calls.get(), 0, "a rejected request must not persist");
    assert_eq!(
        s.save_state(),
        before,
        "a rejected request must change nothing"
    );
    b
}

fn topics(msgs: &[JobsMessage]) -> Vec<&str> {
    msgs.iter().map(|m| m.topic.as_str()).collect()
}

fn summary(id: &str, queued: i64, updated: i64, version: u64) -> Value {
    json!({"jobId": id, "queuedAt": queued, "lastUpdatedAt": updated,
           "versionNumber": version, "executionNumber": 1})
}

// ---- topics and statuses --------------------------------------------------------------------

#[test]
fn parses_request_topics() {
    let p = |t: &str| parse_request_topic(t);
    assert_eq!(
        p("$aws/things/dev-1/jobs/get"),
        Some(("dev-1".into(), JobsRequest::GetPending))
    );
    assert_eq!(
        p("$aws/things/a:b_c-D/jobs/start-next"),
        Some(("a:b_c-D".into(), JobsRequest::StartNext))
    );
    assert_eq!(
        p("$aws/things/dev-1/jobs/job_1-A/get"),
        Some(("dev-1".into(), describe_req("job_1-A")))
    );
    assert_eq!(
        p("$aws/things/dev-1/jobs/$next/get"),
        Some(("dev-1".into(), describe_req("$next")))
    );
    assert_eq!(
        p("$aws/things/dev-1/jobs/job1/update"),
        Some(("dev-1".into(), update_req("job1")))
    );
    let long_thing = "t".repeat(128);
    assert!(p(&format!("$aws/things/{long_thing}/jobs/get")).is_some());
    let long_job = "j".repeat(64);
    assert!(p(&format!("$aws/things/d/jobs/{long_job}/update")).is_some());

    for bad in [
        "$aws/things/dev-1/jobs/get/accepted",
        "$aws/things/dev-1/jobs/get/rejected",
        "$aws/things/dev-1/jobs/start-next/accepted",
        "$aws/things/dev-1/jobs/job1/get/accepted",
        "$aws/things/dev-1/jobs/job1/update/rejected",
        "$aws/things/dev-1/jobs/notify",
        "$aws/things/dev-1/jobs/notify-next",
        "$aws/things/dev-1/jobs/$next/update",
        "$aws/things/dev-1/jobs/job.1/get",
        "$aws/things/dev-1/jobs/job1/delete",
        "$aws/things/dev-1/jobs/",
        "$aws/things/dev-1/jobs",
        "$aws/things/dev 1/jobs/get",
        "$aws/things//jobs/get",
        "$aws/things/dev-1/shadow/get",
        "aws/things/dev-1/jobs/get",
        "$aws/things/dev-1/jobs/get/",
    ] {
        assert_eq!(p(bad), None, "{bad}");
    }
    assert_eq!(
        p(&format!("$aws/things/{}/jobs/get", "t".repeat(129))),
        None
    );
    assert_eq!(
        p(&format!("$aws/things/d/jobs/{}/get", "j".repeat(65))),
        None
    );
}

#[test]
fn request_topics_round_trip() {
    for req in [
        JobsRequest::GetPending,
        JobsRequest::StartNext,
        describe_req("$next"),
        describe_req("j1"),
        update_req("j1"),
    ] {
        let topic = req.topic("dev-1");
        assert_eq!(parse_request_topic(&topic), Some(("dev-1".into(), req)));
    }
}

#[test]
fn status_wire_names() {
    let all = [
        (JobStatus::Queued, "QUEUED"),
        (JobStatus::InProgress, "IN_PROGRESS"),
        (JobStatus::Failed, "FAILED"),
        (JobStatus::Succeeded, "SUCCEEDED"),
        (JobStatus::Canceled, "CANCELED"),
        (JobStatus::TimedOut, "TIMED_OUT"),
        (JobStatus::Rejected, "REJECTED"),
        (JobStatus::Removed, "REMOVED"),
    ];
    for (status, wire) in all {
        assert_eq!(status.as_str(), wire);
        assert_eq!(status.to_string(), wire);
        assert_eq!(serde_json::to_value(status).unwrap(), json!(wire));
        assert_eq!(
            serde_json::from_value::<JobStatus>(json!(wire)).unwrap(),
            status
        );
        assert_eq!(JobStatus::from_wire(wire), Some(status));
        assert_eq!(
            status.is_terminal(),
            !matches!(status, JobStatus::Queued | JobStatus::InProgress)
        );
    }
    assert_eq!(JobStatus::from_wire("queued"), None);
}

// ---- create_job -----------------------------------------------------------------------------

#[test]
fn create_job_notifies_each_thing() {
    let s = JobsService::new();
    let msgs = s
        .create_job(
            JobSpec::new("j1", doc("j1"), ["t2", "t1", "t2"]),
            at(1000),
            &no_persist,
        )
        .unwrap();
    assert_eq!(
        topics(&msgs),
        [
            "$aws/things/t1/jobs/notify",
            "$aws/things/t1/jobs/notify-next",
            "$aws/things/t2/jobs/notify",
            "$aws/things/t2/jobs/notify-next",
        ]
    );
    assert!(msgs.iter().all(|m| m.to == Recipient::Subscribers));
    assert_eq!(
        body(&msgs[0]),
        json!({"jobs": {"QUEUED": [summary("j1", 1000, 1000, 1)]}, "timestamp": 1000})
    );
    assert_eq!(
        body(&msgs[1]),
        json!({"execution": {
            "jobId": "j1", "thingName": "t1", "status": "QUEUED", "queuedAt": 1000,
            "lastUpdatedAt": 1000, "versionNumber": 1, "executionNumber": 1,
            "statusDetails": {}, "jobDocument": doc("j1")
        }, "timestamp": 1000})
    );
    assert_eq!(
        s.executions("j1").unwrap(),
        [
            ("t1".to_string(), JobStatus::Queued),
            ("t2".to_string(), JobStatus::Queued)
        ]
    );
    assert_eq!(body(&msgs[3])["execution"]["thingName"], "t2");
}

#[test]
fn second_job_notifies_without_notify_next() {
    let s = service(&[("j1", 1000, &["t1"])]);
    let msgs = s
        .create_job(
            JobSpec::new("j2", doc("j2"), ["t1", "t2"]),
            at(1100),
            &no_persist,
        )
        .unwrap();
    // t1 already had j1 next: only the list changed. t2 had nothing: both.
    assert_eq!(
        topics(&msgs),
        [
            "$aws/things/t1/jobs/notify",
            "$aws/things/t2/jobs/notify",
            "$aws/things/t2/jobs/notify-next",
        ]
    );
    assert_eq!(
        body(&msgs[0]),
        json!({"jobs": {"QUEUED": [summary("j1", 1000, 1000, 1), summary("j2", 1100, 1100, 1)]},
               "timestamp": 1100})
    );
}

#[test]
fn create_job_errors_change_nothing() {
    let s = service(&[("j1", 1000, &["t1"])]);
    let before = s.save_state();
    let calls = Cell::new(0);
    let persist = |_: &Value| {
        calls.set(calls.get() + 1);
        Ok(())
    };
    let create = |spec: JobSpec| s.create_job(spec, at(2000), &persist);

    assert!(matches!(
        create(JobSpec::new("j1", doc("x"), ["t2"])),
        Err(Error::AlreadyExists { what: "job", ref id }) if id == "j1"
    ));
    let big = json!({"blob": "x".repeat(MAX_DOCUMENT_BYTES)});
    let invalid: Vec<JobSpec> = vec![
        JobSpec::new("bad id", doc("x"), ["t1"]),
        JobSpec::new("$next", doc("x"), ["t1"]),
        JobSpec::new("", doc("x"), ["t1"]),
        JobSpec::new("j".repeat(65), doc("x"), ["t1"]),
        JobSpec::new("j2", big, ["t1"]),
        JobSpec::new("j2", json!("not an object"), ["t1"]),
        JobSpec::new("j2", doc("x"), Vec::<String>::new()),
        JobSpec::new("j2", doc("x"), ["bad/thing"]),
    ];
    for spec in invalid {
        let r = create(spec.clone());
        assert!(
            matches!(r, Err(Error::InvalidInput { .. })),
            "{spec:?}: {r:?}"
        );
    }
    assert_eq!(calls.get(), 0);
    assert_eq!(s.save_state(), before);

    // Just under the limit is fine.
    let overhead = serde_json::to_vec(&json!({"blob": ""})).unwrap().len();
    let fits = json!({"blob": "x".repeat(MAX_DOCUMENT_BYTES - overhead)});
    create(JobSpec::new("j2", fits, ["t1"])).unwrap();
    assert_eq!(calls.get(), 1);
}

#[test]
fn create_job_persist_failure_is_undone() {
    let s = service(&[("j1", 1000, &["t1"])]);
    let before = s.save_state();
    let r = s.create_job(JobSpec::new("j2", doc("j2"), ["t1"]), at(2000), &failing);
    assert!(matches!(r, Err(Error::Unavailable(_))));
    assert_eq!(s.save_state(), before);
    assert!(matches!(s.executions("j2"), Err(Error::NotFound { .. })));
    // The id is free again, and the persisted state passed in included the new job.
    let seen = Cell::new(false);
    let persist = |v: &Value| {
        seen.set(v["jobs"]["j2"]["executions"]["t1"]["status"] == "QUEUED");
        Ok(())
    };
    s.create_job(JobSpec::new("j2", doc("j2"), ["t1"]), at(2000), &persist)
        .unwrap();
    assert!(seen.get());
}

// ---- GetPendingJobExecutions ----------------------------------------------------------------

#[test]
fn get_pending_lists_in_progress_and_queued() {
    let s = service(&[
        ("j1", 1000, &["t1"]),
        ("j2", 1100, &["t1"]),
        ("j3", 1200, &["t1", "t2"]),
    ]);
    accept(
        &s,
        "t1",
        &update_req("j2"),
        r#"{"status":"IN_PROGRESS"}"#,
        1300,
    );
    accept(
        &s,
        "t1",
        &update_req("j3"),
        r#"{"status":"SUCCEEDED"}"#,
        1400,
    );

    let (b, notes) = accept(
        &s,
        "t1",
        &JobsRequest::GetPending,
        r#"{"clientToken":"tok-1"}"#,
        1500,
    );
    assert!(notes.is_empty());
    assert_eq!(
        b,
        json!({
            "inProgressJobs": [{"jobId": "j2", "queuedAt": 1100, "startedAt": 1300,
                                "lastUpdatedAt": 1300, "versionNumber": 2, "executionNumber": 1}],
            "queuedJobs": [summary("j1", 1000, 1000, 1)],
            "timestamp": 1500,
            "clientToken": "tok-1"
        })
    );

    // Empty payload counts as {}; another thing sees only its own executions.
    let (b, _) = accept(&s, "t2", &JobsRequest::GetPending, "", 1600);
    assert_eq!(
        b,
        json!({"inProgressJobs": [], "queuedJobs": [summary("j3", 1200, 1200, 1)], "timestamp": 1600})
    );
    let (b, _) = accept(&s, "nobody", &JobsRequest::GetPending, "{}", 1700);
    assert_eq!(
        b,
        json!({"inProgressJobs": [], "queuedJobs": [], "timestamp": 1700})
    );
}

#[test]
fn get_pending_rejections() {
    let s = service(&[("j1", 1000, &["t1"])]);
    let get = JobsRequest::GetPending;
    let b = assert_rejected(&s, "t1", &get, b"{not json", "InvalidJson");
    assert_eq!(b.get("clientToken"), None);
    assert_rejected(&s, "t1", &get, b"\xff\xfe", "InvalidJson");
    assert_rejected(&s, "t1", &get, b"[1,2]", "InvalidRequest");
    let long = format!(r#"{{"clientToken":"{}"}}"#, "x".repeat(65));
    let b = assert_rejected(&s, "t1", &get, long.as_bytes(), "InvalidRequest");
    assert_eq!(
        b.get("clientToken"),
        None,
        "an over-long token is not echoed"
    );
    assert_rejected(&s, "t1", &get, br#"{"clientToken":5}"#, "InvalidRequest");
    // 64 bytes is fine.
    let ok = format!(r#"{{"clientToken":"{}"}}"#, "x".repeat(64));
    accept(&s, "t1", &get, &ok, 1100);
}

// ---- StartNextPendingJobExecution -----------------------------------------------------------

#[test]
fn start_next_starts_the_oldest_queued() {
    let s = service(&[("j1", 1000, &["t1"]), ("j2", 1100, &["t1"])]);
    let calls = Cell::new(0);
    let persist = |v: &Value| {
        calls.set(calls.get() + 1);
        assert_eq!(v["jobs"]["j1"]["executions"]["t1"]["status"], "IN_PROGRESS");
        Ok(())
    };
    let payload =
        r#"{"statusDetails":{"step":"download"},"stepTimeoutInMinutes":30,"clientToken":"c1"}"#;
    let out = s.handle(
        "t1",
        &JobsRequest::StartNext,
        payload.as_bytes(),
        at(1200),
        &persist,
    );
    assert_eq!(calls.get(), 1);
    assert_eq!(
        topics(&out),
        [
            "$aws/things/t1/jobs/start-next/accepted",
            "$aws/things/t1/jobs/notify"
        ]
    );
    assert_eq!(out[0].to, Recipient::Requester);
    assert_eq!(out[1].to, Recipient::Subscribers);
    assert_eq!(
        body(&out[0]),
        json!({
            "execution": {
                "jobId": "j1", "thingName": "t1", "status": "IN_PROGRESS", "queuedAt": 1000,
                "startedAt": 1200, "lastUpdatedAt": 1200, "versionNumber": 2,
                "executionNumber": 1, "statusDetails": {"step": "download"},
                "jobDocument": doc("j1")
            },
            "timestamp": 1200,
            "clientToken": "c1"
        })
    );
    assert_eq!(
        body(&out[1]),
        json!({"jobs": {
            "IN_PROGRESS": [{"jobId": "j1", "queuedAt": 1000, "startedAt": 1200,
                             "lastUpdatedAt": 1200, "versionNumber": 2, "executionNumber": 1}],
            "QUEUED": [summary("j2", 1100, 1100, 1)]
        }, "timestamp": 1200})
    );
    // The step timeout is stored (no timer runs).
    assert_eq!(
        s.save_state()["jobs"]["j1"]["executions"]["t1"]["stepTimeoutInMinutes"],
        30
    );

    // Again: j1 is in progress, so it comes back unchanged, nothing persisted or notified.
    let calls = Cell::new(0);
    let count = |_: &Value| {
        calls.set(calls.get() + 1);
        Ok(())
    };
    let out = s.handle(
        "t1",
        &JobsRequest::StartNext,
        br#"{"statusDetails":{"x":"y"}}"#,
        at(1300),
        &count,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(calls.get(), 0);
    let b = body(&out[0]);
    assert_eq!(b["execution"]["jobId"], "j1");
    assert_eq!(b["execution"]["versionNumber"], 2);
    assert_eq!(b["execution"]["statusDetails"], json!({"step": "download"}));
}

#[test]
fn start_next_with_nothing_pending() {
    let s = service(&[("j1", 1000, &["t1"])]);
    let calls = Cell::new(0);
    let count = |_: &Value| {
        calls.set(calls.get() + 1);
        Ok(())
    };
    let out = s.handle(
        "t2",
        &JobsRequest::StartNext,
        br#"{"clientToken":"c"}"#,
        at(1100),
        &count,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].topic, "$aws/things/t2/jobs/start-next/accepted");
    assert_eq!(
        body(&out[0]),
        json!({"timestamp": 1100, "clientToken": "c"})
    );
    let out = s.handle("t2", &JobsRequest::StartNext, b"", at(1100), &count);
    assert_eq!(body(&out[0]), json!({"timestamp": 1100}));
    assert_eq!(calls.get(), 0);
}

#[test]
fn start_next_rejections() {
    let s = service(&[("j1", 1000, &["t1"])]);
    let sn = JobsRequest::StartNext;
    assert_rejected(&s, "t1", &sn, b"nope", "InvalidJson");
    let b = assert_rejected(
        &s,
        "t1",
        &sn,
        br#"{"statusDetails":{"a":1},"clientToken":"c"}"#,
        "InvalidRequest",
    );
    assert_eq!(b["clientToken"], "c");
    assert_rejected(&s, "t1", &sn, br#"{"statusDetails":"a"}"#, "InvalidRequest");
    assert_rejected(
        &s,
        "t1",
        &sn,
        br#"{"stepTimeoutInMinutes":0}"#,
        "InvalidRequest",
    );
    assert_rejected(
        &s,
        "t1",
        &sn,
        br#"{"stepTimeoutInMinutes":10081}"#,
        "InvalidRequest",
    );
    assert_rejected(
        &s,
        "t1",
        &sn,
        br#"{"stepTimeoutInMinutes":"5"}"#,
        "InvalidRequest",
    );
}

#[test]
fn start_next_persist_failure_is_undone() {
    let s = service(&[("j1", 1000, &["t1"])]);
    let before = s.save_state();
    let out = s.handle(
        "t1",
        &JobsRequest::StartNext,
        br#"{"clientToken":"c"}"#,
        at(1100),
        &failing,
    );
    assert_eq!(out.len(), 1, "no notifications after a failed change");
    assert_eq!(out[0].topic, "$aws/things/t1/jobs/start-next/rejected");
    assert_eq!(out[0].to, Recipient::Requester);
    let b = body(&out[0]);
    assert_eq!(b["code"], "InternalError");
    assert_eq!(b["clientToken"], "c");
    assert_eq!(b.get("executionState"), None);
    assert_eq!(s.save_state(), before);
}

// ---- ordering and notify-next ---------------------------------------------------------------

#[test]
fn in_progress_comes_first_then_creation_order() {
    // j-b is created before j-a in the same second: creation order, not id order, decides.
    let s = service(&[
        ("j-b", 1000, &["t1"]),
        ("j-a", 1000, &["t1"]),
        ("j-c", 1100, &["t1"]),
    ]);
    let next = |s: &JobsService| {
        accept(s, "t1", &describe_req("$next"), "", 2000).0["execution"]["jobId"].clone()
    };
    assert_eq!(next(&s), "j-b");
    let (b, _) = accept(&s, "t1", &JobsRequest::GetPending, "", 2000);
    let ids: Vec<&str> = b["queuedJobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["jobId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["j-b", "j-a", "j-c"]);

    // Starting j-c (not next) makes it next: notify and notify-next (AWS's J1/J2 example).
    let (_, notes) = accept(
        &s,
        "t1",
        &update_req("j-c"),
        r#"{"status":"IN_PROGRESS"}"#,
        1200,
    );
    assert_eq!(
        topics(&notes),
        [
            "$aws/things/t1/jobs/notify",
            "$aws/things/t1/jobs/notify-next"
        ]
    );
    let nn = body(&notes[1]);
    assert_eq!(nn["execution"]["jobId"], "j-c");
    assert_eq!(nn["execution"]["status"], "IN_PROGRESS");
    assert_eq!(nn["timestamp"], 1200);
    assert_eq!(next(&s), "j-c");

    // StartNext returns the IN_PROGRESS one rather than the older queued ones.
    let (b, notes) = accept(&s, "t1", &JobsRequest::StartNext, "", 1300);
    assert!(notes.is_empty());
    assert_eq!(b["execution"]["jobId"], "j-c");

    // Two in progress: the earlier queued one comes first.
    accept(
        &s,
        "t1",
        &update_req("j-a"),
        r#"{"status":"IN_PROGRESS"}"#,
        1400,
    );
    let (b, _) = accept(&s, "t1", &JobsRequest::GetPending, "", 2000);
    let ids: Vec<&str> = b["inProgressJobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["jobId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["j-a", "j-c"]);
    assert_eq!(next(&s), "j-a");
}

#[test]
fn notify_next_only_when_next_changes() {
    let s = service(&[("j1", 1000, &["t1"]), ("j2", 1100, &["t1"])]);
    // Next (j1) starts: the list changed, the next did not.
    let (_, notes) = accept(
        &s,
        "t1",
        &update_req("j1"),
        r#"{"status":"IN_PROGRESS"}"#,
        1200,
    );
    assert_eq!(topics(&notes), ["$aws/things/t1/jobs/notify"]);
    // Only details change: nothing at all.
    let (_, notes) = accept(
        &s,
        "t1",
        &update_req("j1"),
        r#"{"status":"IN_PROGRESS","statusDetails":{"p":"50"}}"#,
        1300,
    );
    assert!(notes.is_empty());
    // j2 (not next) fails: list changes, next does not.
    let (_, notes) = accept(&s, "t1", &update_req("j2"), r#"{"status":"FAILED"}"#, 1400);
    assert_eq!(topics(&notes), ["$aws/things/t1/jobs/notify"]);
    assert_eq!(
        body(&notes[0]),
        json!({"jobs": {"IN_PROGRESS": [{"jobId": "j1", "queuedAt": 1000, "startedAt": 1200,
            "lastUpdatedAt": 1300, "versionNumber": 3, "executionNumber": 1}]}, "timestamp": 1400})
    );
    // j1 succeeds: nothing pending any more; notify-next without execution.
    let (_, notes) = accept(
        &s,
        "t1",
        &update_req("j1"),
        r#"{"status":"SUCCEEDED"}"#,
        1500,
    );
    assert_eq!(
        topics(&notes),
        [
            "$aws/things/t1/jobs/notify",
            "$aws/things/t1/jobs/notify-next"
        ]
    );
    assert_eq!(body(&notes[0]), json!({"jobs": {}, "timestamp": 1500}));
    assert_eq!(body(&notes[1]), json!({"timestamp": 1500}));
}

#[test]
fn terminal_update_of_next_hands_over_to_the_following_job() {
    let s = service(&[("j1", 1000, &["t1"]), ("j2", 1100, &["t1"])]);
    let (_, notes) = accept(
        &s,
        "t1",
        &update_req("j1"),
        r#"{"status":"REJECTED"}"#,
        1200,
    );
    assert_eq!(
        topics(&notes),
        [
            "$aws/things/t1/jobs/notify",
            "$aws/things/t1/jobs/notify-next"
        ]
    );
    assert_eq!(
        body(&notes[1]),
        json!({"execution": {"jobId": "j2", "thingName": "t1", "status": "QUEUED", "queuedAt": 1100,
            "lastUpdatedAt": 1100, "versionNumber": 1, "executionNumber": 1, "statusDetails": {},
            "jobDocument": doc("j2")}, "timestamp": 1200})
    );
}

#[test]
fn notify_lists_at_most_fifteen() {
    let s = JobsService::new();
    let mut last = Vec::new();
    for i in 0..17 {
        last = s
            .create_job(
                JobSpec::new(format!("j{i:02}"), doc("x"), ["t1"]),
                at(1000 + i),
                &no_persist,
            )
            .unwrap();
    }
    assert_eq!(topics(&last), ["$aws/things/t1/jobs/notify"]);
    let queued = body(&last[0])["jobs"]["QUEUED"].as_array().unwrap().clone();
    assert_eq!(queued.len(), NOTIFY_LIST_LIMIT);
    assert_eq!(queued[0]["jobId"], "j00");
    let (b, _) = accept(&s, "t1", &JobsRequest::GetPending, "", 2000);
    assert_eq!(
        b["queuedJobs"].as_array().unwrap().len(),
        17,
        "GetPending is not capped"
    );
}

// ---- DescribeJobExecution -------------------------------------------------------------------

#[test]
fn describe_shapes() {
    let s = service(&[("j1", 1000, &["t1"]), ("j2", 1100, &["t1", "t2"])]);
    let full = json!({
        "jobId": "j2", "thingName": "t1", "status": "QUEUED", "queuedAt": 1100,
        "lastUpdatedAt": 1100, "versionNumber": 1, "executionNumber": 1,
        "statusDetails": {}, "jobDocument": doc("j2")
    });
    let (b, notes) = accept(
        &s,
        "t1",
        &describe_req("j2"),
        r#"{"clientToken":"d"}"#,
        1200,
    );
    assert!(notes.is_empty());
    assert_eq!(
        b,
        json!({"execution": full, "timestamp": 1200, "clientToken": "d"})
    );
    assert_eq!(s.execution("j2", "t1").unwrap(), full);

    let (b, _) = accept(
        &s,
        "t1",
        &describe_req("j2"),
        r#"{"includeJobDocument":false,"executionNumber":1}"#,
        1200,
    );
    let mut without = full.clone();
    without.as_object_mut().unwrap().remove("jobDocument");
    assert_eq!(b, json!({"execution": without, "timestamp": 1200}));

    let (b, _) = accept(&s, "t1", &describe_req("$next"), "", 1200);
    assert_eq!(b["execution"]["jobId"], "j1");
    assert_eq!(b["execution"]["jobDocument"], doc("j1"));

    // Finished executions stay describable.
    accept(
        &s,
        "t2",
        &update_req("j2"),
        r#"{"status":"SUCCEEDED","statusDetails":{"r":"ok"}}"#,
        1300,
    );
    let (b, _) = accept(&s, "t2", &describe_req("j2"), "", 1400);
    assert_eq!(b["execution"]["status"], "SUCCEEDED");
    assert_eq!(b["execution"]["statusDetails"], json!({"r": "ok"}));
    assert_eq!(
        b["execution"].get("startedAt"),
        None,
        "QUEUED straight to SUCCEEDED never started"
    );

    // $next with nothing pending: accepted without an execution.
    let (b, _) = accept(&s, "t2", &describe_req("$next"), "", 1500);
    assert_eq!(b, json!({"timestamp": 1500}));
}

#[test]
fn describe_rejections() {
    let s = service(&[("j1", 1000, &["t1"]), ("j2", 1100, &["t2"])]);
    let b = assert_rejected(
        &s,
        "t1",
        &describe_req("nope"),
        br#"{"clientToken":"z"}"#,
        "ResourceNotFound",
    );
    assert_eq!(b["clientToken"], "z");
    let keys: BTreeSet<&str> = b.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["clientToken", "code", "message", "timestamp"])
    );
    // Another thing's job execution is invisible.
    assert_rejected(&s, "t1", &describe_req("j2"), b"", "ResourceNotFound");
    assert_rejected(
        &s,
        "t1",
        &describe_req("j1"),
        br#"{"executionNumber":2}"#,
        "ResourceNotFound",
    );
    assert_rejected(
        &s,
        "t1",
        &describe_req("$next"),
        br#"{"executionNumber":2}"#,
        "ResourceNotFound",
    );
    assert_rejected(&s, "t1", &describe_req("j1"), b"{", "InvalidJson");
    assert_rejected(
        &s,
        "t1",
        &describe_req("j1"),
        br#"{"includeJobDocument":"yes"}"#,
        "InvalidRequest",
    );
    assert_rejected(
        &s,
        "t1",
        &describe_req("j1"),
        br#"{"executionNumber":-1}"#,
        "InvalidRequest",
    );
    assert_rejected(&s, "t1", &describe_req("j1"), br#""str""#, "InvalidRequest");
}

// ---- UpdateJobExecution ---------------------------------------------------------------------

#[test]
fn update_accepted_shapes() {
    let s = service(&[("j1", 1000, &["t1"])]);
    let (b, notes) = accept(
        &s,
        "t1",
        &update_req("j1"),
        r#"{"status":"IN_PROGRESS","statusDetails":{"step":"1"},"expectedVersion":1,
            "executionNumber":1,"stepTimeoutInMinutes":5,"clientToken":"u1"}"#,
        1100,
    );
    assert_eq!(b, json!({"timestamp": 1100, "clientToken": "u1"}));
    assert_eq!(topics(&notes), ["$aws/things/t1/jobs/notify"]);

    let (b, _) = accept(
        &s,
        "t1",
        &update_req("j1"),
        r#"{"status":"IN_PROGRESS","includeJobExecutionState":true,"includeJobDocument":true}"#,
        1200,
    );
    assert_eq!(
        b,
        json!({
            "executionState": {"status": "IN_PROGRESS", "statusDetails": {"step": "1"}, "versionNumber": 3},
            "jobDocument": doc("j1"),
            "timestamp": 1200
        })
    );
    // statusDetails replace; -1 clears the step timeout.
    let (b, _) = accept(
        &s,
        "t1",
        &update_req("j1"),
        r#"{"status":"SUCCEEDED","statusDetails":{"done":"yes"},"stepTimeoutInMinutes":-1,
            "includeJobExecutionState":true}"#,
        1300,
    );
    assert_eq!(
        b["executionState"],
        json!({"status": "SUCCEEDED", "statusDetails": {"done": "yes"}, "versionNumber": 4})
    );
    assert_eq!(
        s.execution("j1", "t1").unwrap(),
        json!({"jobId": "j1", "thingName": "t1", "status": "SUCCEEDED", "queuedAt": 1000,
               "startedAt": 1100, "lastUpdatedAt": 1300, "versionNumber": 4, "executionNumber": 1,
               "statusDetails": {"done": "yes"}, "jobDocument": doc("j1")})
    );
    assert_eq!(
        s.save_state()["jobs"]["j1"]["executions"]["t1"].get("stepTimeoutInMinutes"),
        None
    );
}

#[test]
fn update_rejections() {
    let s = service(&[("j1", 1000, &["t1"]), ("j2", 1100, &["t2"])]);
    let up = update_req("j1");
    let r = |p: &str, code: &str| assert_rejected(&s, "t1", &up, p.as_bytes(), code);

    r("", "InvalidJson");
    r("status=SUCCEEDED", "InvalidJson");
    r("{}", "InvalidRequest");
    r("[]", "InvalidRequest");
    for status in [
        "QUEUED",
        "CANCELED",
        "TIMED_OUT",
        "REMOVED",
        "succeeded",
        "DONE",
    ] {
        r(&format!(r#"{{"status":"{status}"}}"#), "InvalidRequest");
    }
    r(r#"{"status":3}"#, "InvalidRequest");
    r(
        r#"{"status":"SUCCEEDED","statusDetails":{"n":1}}"#,
        "InvalidRequest",
    );
    r(
        r#"{"status":"SUCCEEDED","statusDetails":{"n":null}}"#,
        "InvalidRequest",
    );
    r(
        r#"{"status":"SUCCEEDED","statusDetails":["a"]}"#,
        "InvalidRequest",
    );
    r(
        r#"{"status":"SUCCEEDED","expectedVersion":"1"}"#,
        "InvalidRequest",
    );
    r(
        r#"{"status":"SUCCEEDED","expectedVersion":-1}"#,
        "InvalidRequest",
    );
    r(
        r#"{"status":"SUCCEEDED","executionNumber":1.5}"#,
        "InvalidRequest",
    );
    r(
        r#"{"status":"SUCCEEDED","includeJobExecutionState":1}"#,
        "InvalidRequest",
    );
    r(
        r#"{"status":"SUCCEEDED","includeJobDocument":"true"}"#,
        "InvalidRequest",
    );
    r(
        r#"{"status":"SUCCEEDED","stepTimeoutInMinutes":0}"#,
        "InvalidRequest",
    );
    let long = format!(
        r#"{{"status":"SUCCEEDED","clientToken":"{}"}}"#,
        "é".repeat(33)
    );
    let b = r(&long, "InvalidRequest");
    assert_eq!(b.get("clientToken"), None);

    // Unknown job, another thing's job, wrong execution number.
    assert_rejected(
        &s,
        "t1",
        &update_req("zz"),
        br#"{"status":"SUCCEEDED"}"#,
        "ResourceNotFound",
    );
    assert_rejected(
        &s,
        "t1",
        &update_req("j2"),
        br#"{"status":"SUCCEEDED"}"#,
        "ResourceNotFound",
    );
    r(
        r#"{"status":"SUCCEEDED","executionNumber":2}"#,
        "ResourceNotFound",
    );

    // Version mismatch carries the execution state.
    let b = r(
        r#"{"status":"SUCCEEDED","expectedVersion":7,"clientToken":"v"}"#,
        "VersionMismatch",
    );
    assert_eq!(b["clientToken"], "v");
    assert_eq!(
        b["executionState"],
        json!({"status": "QUEUED", "statusDetails": {}, "versionNumber": 1})
    );

    // Terminal: InvalidStateTransition with the state, whatever the new status.
    accept(
        &s,
        "t1",
        &up,
        r#"{"status":"SUCCEEDED","statusDetails":{"k":"v"}}"#,
        1200,
    );
    for status in ["IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"] {
        let b = r(
            &format!(r#"{{"status":"{status}"}}"#),
            "InvalidStateTransition",
        );
        assert_eq!(
            b["executionState"],
            json!({"status": "SUCCEEDED", "statusDetails": {"k": "v"}, "versionNumber": 2})
        );
    }
    // A stale version on a terminal execution is a version mismatch.
    r(
        r#"{"status":"FAILED","expectedVersion":1}"#,
        "VersionMismatch",
    );
    let b = r(
        r#"{"status":"FAILED","expectedVersion":2}"#,
        "InvalidStateTransition",
    );
    assert_eq!(b["executionState"]["status"], "SUCCEEDED");
}

#[test]
fn update_persist_failure_is_undone() {
    let s = service(&[("j1", 1000, &["t1"]), ("j2", 1100, &["t1"])]);
    let before = s.save_state();
    let out = s.handle(
        "t1",
        &update_req("j1"),
        br#"{"status":"SUCCEEDED","clientToken":"p"}"#,
        at(1200),
        &failing,
    );
    assert_eq!(topics(&out), ["$aws/things/t1/jobs/j1/update/rejected"]);
    let b = body(&out[0]);
    assert_eq!(b["code"], "InternalError");
    assert_eq!(b["clientToken"], "p");
    assert_eq!(s.save_state(), before);
    // And it works afterwards, with the version it would have had.
    let (b, _) = accept(
        &s,
        "t1",
        &update_req("j1"),
        r#"{"status":"SUCCEEDED","expectedVersion":1,"includeJobExecutionState":true}"#,
        1300,
    );
    assert_eq!(b["executionState"]["versionNumber"], 2);
}

#[test]
fn queued_can_go_straight_to_any_device_status() {
    for status in ["IN_PROGRESS", "FAILED", "SUCCEEDED", "REJECTED"] {
        let s = service(&[("j1", 1000, &["t1"])]);
        let (b, _) = accept(
            &s,
            "t1",
            &update_req("j1"),
            &format!(r#"{{"status":"{status}","includeJobExecutionState":true}}"#),
            1100,
        );
        assert_eq!(b["executionState"]["status"], status);
        assert_eq!(
            s.executions("j1").unwrap()[0].1,
            JobStatus::from_wire(status).unwrap()
        );
    }
}

// ---- cancel_job -----------------------------------------------------------------------------

#[test]
fn cancel_job_plain_and_forced() {
    let s = service(&[("j1", 1000, &["t1", "t2", "t3"]), ("j2", 1100, &["t1"])]);
    accept(
        &s,
        "t2",
        &update_req("j1"),
        r#"{"status":"IN_PROGRESS"}"#,
        1200,
    );
    accept(
        &s,
        "t3",
        &update_req("j1"),
        r#"{"status":"SUCCEEDED"}"#,
        1200,
    );

    let msgs = s.cancel_job("j1", false, at(1300), &no_persist).unwrap();
    // t1: j1 canceled, j2 becomes next. t2: unchanged (in progress, no force). t3: done already.
    assert_eq!(
        topics(&msgs),
        [
            "$aws/things/t1/jobs/notify",
            "$aws/things/t1/jobs/notify-next"
        ]
    );
    assert!(msgs.iter().all(|m| m.to == Recipient::Subscribers));
    assert_eq!(
        body(&msgs[0]),
        json!({"jobs": {"QUEUED": [summary("j2", 1100, 1100, 1)]}, "timestamp": 1300})
    );
    assert_eq!(body(&msgs[1])["execution"]["jobId"], "j2");
    assert_eq!(
        s.executions("j1").unwrap(),
        [
            ("t1".to_string(), JobStatus::Canceled),
            ("t2".to_string(), JobStatus::InProgress),
            ("t3".to_string(), JobStatus::Succeeded),
        ]
    );
    assert_eq!(s.execution("j1", "t1").unwrap()["versionNumber"], 2);
    assert_eq!(s.execution("j1", "t1").unwrap()["lastUpdatedAt"], 1300);

    // The device of a canceled execution learns it from the rejection.
    let b = assert_rejected(
        &s,
        "t1",
        &update_req("j1"),
        br#"{"status":"IN_PROGRESS"}"#,
        "InvalidStateTransition",
    );
    assert_eq!(b["executionState"]["status"], "CANCELED");

    // Again without force: nothing to do, nothing persisted.
    let calls = Cell::new(0);
    let count = |_: &Value| {
        calls.set(calls.get() + 1);
        Ok(())
    };
    assert!(
        s.cancel_job("j1", false, at(1400), &count)
            .unwrap()
            .is_empty()
    );
    assert_eq!(calls.get(), 0);

    // Forced: the in-progress execution is canceled too.
    let msgs = s.cancel_job("j1", true, at(1500), &count).unwrap();
    assert_eq!(calls.get(), 1);
    assert_eq!(
        topics(&msgs),
        [
            "$aws/things/t2/jobs/notify",
            "$aws/things/t2/jobs/notify-next"
        ]
    );
    assert_eq!(body(&msgs[0]), json!({"jobs": {}, "timestamp": 1500}));
    assert_eq!(body(&msgs[1]), json!({"timestamp": 1500}));
    assert_eq!(s.executions("j1").unwrap()[1].1, JobStatus::Canceled);

    assert!(matches!(
        s.cancel_job("nope", true, at(1600), &no_persist),
        Err(Error::NotFound { what: "job", .. })
    ));
}

#[test]
fn cancel_job_persist_failure_is_undone() {
    let s = service(&[("j1", 1000, &["t1"])]);
    accept(&s, "t1", &JobsRequest::StartNext, "", 1100);
    let before = s.save_state();
    assert!(matches!(
        s.cancel_job("j1", true, at(1200), &failing),
        Err(Error::Unavailable(_))
    ));
    assert_eq!(s.save_state(), before);
    assert_eq!(s.executions("j1").unwrap()[0].1, JobStatus::InProgress);
}

// ---- queries and state ----------------------------------------------------------------------

#[test]
fn queries_of_unknown_things() {
    let s = service(&[("j1", 1000, &["t1"])]);
    assert!(matches!(
        s.execution("nope", "t1"),
        Err(Error::NotFound { what: "job", .. })
    ));
    assert!(matches!(
        s.execution("j1", "t2"),
        Err(Error::NotFound {
            what: "job execution",
            ..
        })
    ));
    assert!(matches!(s.executions("nope"), Err(Error::NotFound { .. })));
}

#[test]
fn save_load_round_trip() {
    let s = service(&[
        ("j1", 1000, &["t1", "t2"]),
        ("j2", 1000, &["t1"]),
        ("j3", 1200, &["t2"]),
    ]);
    accept(
        &s,
        "t1",
        &JobsRequest::StartNext,
        r#"{"statusDetails":{"a":"b"},"stepTimeoutInMinutes":9}"#,
        1300,
    );
    accept(&s, "t2", &update_req("j1"), r#"{"status":"FAILED"}"#, 1400);
    s.cancel_job("j3", false, at(1500), &no_persist).unwrap();
    let saved = s.save_state();
    assert_eq!(saved["format"], 1);

    let copy = JobsService::new();
    copy.load_state(saved.clone()).unwrap();
    assert_eq!(copy.save_state(), saved);
    for (job, thing) in [("j1", "t1"), ("j1", "t2"), ("j2", "t1"), ("j3", "t2")] {
        assert_eq!(
            copy.execution(job, thing).unwrap(),
            s.execution(job, thing).unwrap()
        );
    }
    // Creation order survives (j1 and j2 share a second) and new jobs continue the sequence.
    accept(
        &copy,
        "t1",
        &update_req("j1"),
        r#"{"status":"SUCCEEDED"}"#,
        1600,
    );
    accept(
        &s,
        "t1",
        &update_req("j1"),
        r#"{"status":"SUCCEEDED"}"#,
        1600,
    );
    copy.create_job(JobSpec::new("j4", doc("j4"), ["t1"]), at(1100), &no_persist)
        .unwrap();
    s.create_job(JobSpec::new("j4", doc("j4"), ["t1"]), at(1100), &no_persist)
        .unwrap();
    assert_eq!(copy.save_state(), s.save_state());
    let (a, _) = accept(&copy, "t1", &JobsRequest::GetPending, "", 2000);
    let (b, _) = accept(&s, "t1", &JobsRequest::GetPending, "", 2000);
    assert_eq!(a, b);
    let ids: Vec<&str> = a["queuedJobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["jobId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["j2", "j4"]);
}

#[test]
fn load_state_rejects_garbage_and_accepts_null() {
    let s = service(&[("j1", 1000, &["t1"])]);
    let before = s.save_state();
    for bad in [
        json!({"format": 2, "nextSeq": 1, "jobs": {}}),
        json!({"jobs": {}}),
        json!([1, 2]),
        json!({"format": 1, "nextSeq": 1, "jobs": {"bad id": {"document": {}, "seq": 0, "createdAt": 0, "executions": {}}}}),
        json!({"format": 1, "nextSeq": 0, "jobs": {"j": {"document": {}, "seq": 0, "createdAt": 0, "executions": {}}}}),
        json!({"format": 1, "nextSeq": 1, "jobs": {"j": {"document": {}, "seq": 0, "createdAt": 0,
            "executions": {"t": {"status": "DONE", "queuedAt": 0, "lastUpdatedAt": 0, "versionNumber": 1, "executionNumber": 1}}}}}),
    ] {
        assert!(
            matches!(s.load_state(bad.clone()), Err(Error::InvalidInput { .. })),
            "{bad}"
        );
        assert_eq!(s.save_state(), before);
    }
    s.load_state(Value::Null).unwrap();
    assert_eq!(
        s.save_state(),
        json!({"format": 1, "nextSeq": 0, "jobs": {}})
    );
}

// ---- property -------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    StartNext,
    Update {
        status: &'static str,
        /// 0: none, 1: the current version, 2: a wrong one.
        version: u8,
        details_ok: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let status = prop::sample::select(vec![
        "IN_PROGRESS",
        "IN_PROGRESS",
        "IN_PROGRESS",
        "FAILED",
        "SUCCEEDED",
        "REJECTED",
        "QUEUED",
        "CANCELED",
        "bogus",
    ]);
    prop_oneof![
        1 => Just(Op::StartNext),
        6 => (status, 0u8..3, prop::bool::weighted(0.8))
            .prop_map(|(status, version, details_ok)| Op::Update { status, version, details_ok }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any sequence of valid and invalid requests keeps versionNumber at 1 + the number of
    /// accepted changes (each persisted once) and never leaves a terminal state.
    #[test]
    fn version_counts_accepted_changes(ops in prop::collection::vec(op(), 0..25)) {
        let s = service(&[("j1", 1000, &["t1"])]);
        let persisted = Cell::new(0u64);
        let persist = |_: &Value| {
            persisted.set(persisted.get() + 1);
            Ok(())
        };
        let mut changes = 0u64;
        let mut terminal: Option<Value> = None;
        for (i, op) in ops.iter().enumerate() {
            let now = at(2000 + i as i64);
            let ex = s.execution("j1", "t1").unwrap();
            let version = ex["versionNumber"].as_u64().unwrap();
            let was_queued = ex["status"] == "QUEUED";
            let out = match op {
                Op::StartNext => s.handle("t1", &JobsRequest::StartNext, b"", now, &persist),
                Op::Update { status, version: v, details_ok } => {
                    let mut req = json!({"status": status});
                    match v {
                        1 => req["expectedVersion"] = json!(version),
                        2 => req["expectedVersion"] = json!(version + 1),
                        _ => {}
                    }
                    req["statusDetails"] = if *details_ok { json!({"i": i.to_string()}) } else { json!({"i": i}) };
                    s.handle("t1", &update_req("j1"), req.to_string().as_bytes(), now, &persist)
                }
            };
            let accepted = out[0].topic.ends_with("/accepted");
            match op {
                Op::StartNext if accepted && was_queued => changes += 1,
                Op::Update { .. } if accepted => changes += 1,
                _ => {}
            }
            let after = s.execution("j1", "t1").unwrap();
            if let Some(t) = &terminal {
                prop_assert_eq!(&after, t, "a terminal execution changed");
            } else if JobStatus::from_wire(after["status"].as_str().unwrap()).unwrap().is_terminal() {
                terminal = Some(after.clone());
            }
            prop_assert_eq!(after["versionNumber"].as_u64().unwrap(), 1 + changes);
            prop_assert_eq!(persisted.get(), changes);
        }
    }
}
