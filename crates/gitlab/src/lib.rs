//! GitLab's runner API for podrunner: the job payload, the HTTP client with gitlab-runner's
//! retry rules, and the trace pipeline (masking, timestamps, sections, output limit,
//! checksum) with its uploader.

pub mod api;
pub mod client;
pub mod handover;
pub mod log;
pub mod payload;
pub mod retry;
mod secret;
pub mod system_id;
pub mod uploader;

pub use api::{
    FailureReason, Features, JobState, RemoteJobStatus, RunnerInfo, TraceOutput, UpdateJobRequest,
};
pub use client::{
    ClientError, ClientOptions, GitlabClient, JobRequestOutcome, JobSignals, PatchOutcome,
    UpdateOutcome,
};
pub use handover::{LivePrelude, TraceHandover};
pub use payload::{JobPayload, JobResponse};
pub use secret::Secret;
pub use uploader::{
    FinalReport, FinalState, RemoteControl, TraceTarget, TraceUploader, UploaderTimings,
};
