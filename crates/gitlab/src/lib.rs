//! GitLab's runner API for podrunner: the job payload, the HTTP client with gitlab-runner's
//! retry rules, and the trace pipeline (masking, timestamps, sections, output limit,
//! checksum) with its uploader.

pub mod log;
