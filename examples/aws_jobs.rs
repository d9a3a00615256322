//! AWS IoT Jobs from the device's side with `fleetkit::aws`: the cloud queues two jobs for a
//! thing; the device hears `notify-next`, starts each job, reports progress, and finishes it.
//! Against the local hub by default; against AWS IoT Core by configuration only (see
//! `examples/common/aws.rs`; create the jobs there with `aws iot create-job`).
//!
//! `cargo run --example aws_jobs --features aws`

#[path = "common/aws.rs"]
mod common;

use std::time::Duration;

use fleetkit::aws::{JobStatus, JobUpdate, Jobs};
use fleetkit::device::DeviceClient;
use fleetkit::identity::DeviceId;
use fleetkit::local::dialect::aws::AwsHubDialect;
use fleetkit::local::dialect::aws::jobs::JobSpec;
use serde_json::json;

#[tokio::main]
async fn main() -> fleetkit::Result<()> {
    let target = common::target("pump-7", AwsHubDialect::new()).await?;

    // ---- the device program ----
    let client = DeviceClient::builder(target.config.dialect(), DeviceId::new(&target.thing)?)
        .credential(target.credential.clone())
        .connect()
        .await?;
    let jobs = Jobs::new(&client)?;
    let mut next = jobs.next_changes()?;

    // ---- the cloud queues work (on AWS: CreateJob targeting the thing) ----
    if let Some(local) = &target.local {
        for (id, doc) in [
            (
                "firmware-2-1",
                json!({"operation": "update", "version": "2.1.0"}),
            ),
            ("reboot-1", json!({"operation": "reboot"})),
        ] {
            local
                .aws
                .create_job(JobSpec::new(id, doc, vec![target.thing.clone()]))?;
            println!("cloud: queued job {id}");
        }
    }
    let first = tokio::time::timeout(Duration::from_secs(30), next.recv())
        .await
        .map_err(|_| fleetkit::Error::Timeout("no job notification within 30 s".into()))?
        .flatten();
    println!(
        "device: notify-next says {:?} is next",
        first.as_ref().map(|j| j.job_id.as_str())
    );
    let pending = jobs.pending().await?;
    println!(
        "device: {} queued, {} in progress",
        pending.queued.len(),
        pending.in_progress.len()
    );

    let mut done = Vec::new();
    while let Some(job) = jobs.start_next().await? {
        println!("device: started {} → {}", job.job_id, job.document);
        let state = jobs
            .update(
                &job.job_id,
                JobUpdate::new(JobStatus::InProgress)
                    .detail("step", "working")
                    .expected_version(job.version_number),
            )
            .await?;
        // … the actual work happens here …
        let state = jobs
            .update(
                &job.job_id,
                JobUpdate::new(JobStatus::Succeeded)
                    .detail("step", "done")
                    .expected_version(state.version_number),
            )
            .await?;
        println!("device: {} {}", job.job_id, state.status);
        done.push(job.job_id);
    }
    // A finished job cannot be restarted: typed refusal.
    if let Some(last) = done.last() {
        let again = jobs
            .update(last, JobUpdate::new(JobStatus::InProgress))
            .await;
        println!("device: restarting {last} again → {}", again.unwrap_err());
    }
    if let Some(local) = &target.local {
        println!(
            "cloud: connected things {:?}",
            local.hub.connected_clients()
        );
    }
    client.shutdown(Duration::from_secs(5)).await;

    if let Some(local) = &target.local {
        for id in &done {
            println!("cloud: {id}: {:?}", local.aws.jobs().executions(id)?);
        }
        assert_eq!(done.len(), 2, "both jobs ran");
    }
    Ok(())
}
