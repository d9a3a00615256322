//! Jobs: remote operations queued for devices (AWS IoT Jobs' model), shared by the device
//! side (`fleetkit::aws::Jobs`, feature `aws`) and the local hub's jobs service.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The status of a job execution (AWS's `JobStatus`; serialized as `"QUEUED"`,
/// `"IN_PROGRESS"`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    /// Waiting for the device to start it.
    Queued,
    /// Started by the device and not finished.
    InProgress,
    /// The device reported failure (terminal).
    Failed,
    /// The device reported success (terminal).
    Succeeded,
    /// Canceled from the cloud side (terminal).
    Canceled,
    /// A timer ran out (terminal; this engine runs no timers).
    TimedOut,
    /// The device refused the job (terminal).
    Rejected,
    /// The thing was removed from the job's targets (terminal).
    Removed,
}

impl JobStatus {
    /// The status as it appears on the wire (`"IN_PROGRESS"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "QUEUED",
            JobStatus::InProgress => "IN_PROGRESS",
            JobStatus::Failed => "FAILED",
            JobStatus::Succeeded => "SUCCEEDED",
            JobStatus::Canceled => "CANCELED",
            JobStatus::TimedOut => "TIMED_OUT",
            JobStatus::Rejected => "REJECTED",
            JobStatus::Removed => "REMOVED",
        }
    }

    /// Parses a wire status (exact, case-sensitive); `None` for anything else.
    pub fn from_wire(s: &str) -> Option<Self> {
        Some(match s {
            "QUEUED" => JobStatus::Queued,
            "IN_PROGRESS" => JobStatus::InProgress,
            "FAILED" => JobStatus::Failed,
            "SUCCEEDED" => JobStatus::Succeeded,
            "CANCELED" => JobStatus::Canceled,
            "TIMED_OUT" => JobStatus::TimedOut,
            "REJECTED" => JobStatus::Rejected,
            "REMOVED" => JobStatus::Removed,
            _ => return None,
        })
    }

    /// Whether the execution is finished (anything but QUEUED and IN_PROGRESS); a terminal
    /// execution never changes again.
    pub fn is_terminal(self) -> bool {
        !self.is_pending()
    }

    /// Whether the execution is pending (QUEUED or IN_PROGRESS).
    pub fn is_pending(self) -> bool {
        matches!(self, JobStatus::Queued | JobStatus::InProgress)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
