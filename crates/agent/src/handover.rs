//! What a job pod hands its agent besides the spec, through the downward API: the start of
//! the job's log the manager already sent (the trace prelude) and the pod's Fargate size and
//! price.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use podrunner_gitlab::JobPayload;
use podrunner_gitlab::log::{self, Stream, Trace, TraceWriter};

use crate::job::{
    AgentError, build_variables, job_dirs, log_settings, write_line, write_opening, write_raw,
};
use crate::spec::AgentSpec;

/// What a job pod hands its agent besides the spec, through the downward API.
#[derive(Debug, Clone, Default)]
pub struct Handover {
    /// The start of the log the manager already sent (see [`Prelude`]); empty when the agent
    /// writes the whole log.
    pub trace_prelude: Vec<u8>,
    /// The pod's Fargate size and price, when it runs on Fargate.
    pub fargate: Option<FargateBilling>,
}

/// The Fargate size of a job's pod and what it costs.
#[derive(Debug, Clone, PartialEq)]
pub struct FargateBilling {
    /// As `CapacityProvisioned` says it: `2vCPU 9GB`.
    pub capacity: String,
    /// USD per hour at the runner's prices.
    pub usd_per_hour: f64,
}

impl Handover {
    /// Reads [`TRACE_PRELUDE_ENV`], [`FARGATE_CAPACITY_ENV`] and [`FARGATE_PRICE_ENV`].
    pub fn from_env() -> Result<Self, AgentError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let trace_prelude = match var(TRACE_PRELUDE_ENV) {
            Some(text) => BASE64
                .decode(text.trim())
                .map_err(|e| AgentError::BadPrelude(e.to_string()))?,
            None => Vec::new(),
        };
        let fargate = var(FARGATE_CAPACITY_ENV)
            .zip(var(FARGATE_PRICE_ENV).and_then(|p| p.trim().parse::<f64>().ok()))
            .map(|(capacity, usd_per_hour)| FargateBilling {
                capacity,
                usd_per_hour,
            });
        Ok(Handover {
            trace_prelude,
            fargate,
        })
    }
}

/// The environment variable with the job pod's `CapacityProvisioned` annotation (Fargate's
/// size for it).
pub const FARGATE_CAPACITY_ENV: &str = "PODRUNNER_FARGATE_CAPACITY";

/// The environment variable with the pod's Fargate price per hour, from
/// [`FARGATE_PRICE_ANNOTATION`].
pub const FARGATE_PRICE_ENV: &str = "PODRUNNER_FARGATE_USD_PER_HOUR";

/// The pod annotation where the manager puts the price of the size Fargate provisioned.
pub const FARGATE_PRICE_ANNOTATION: &str = "podrunner.io/fargate-usd-per-hour";

/// The environment variable that hands the agent the start of its job's log that the
/// manager already sent to GitLab (base64 of the exact bytes). In a job pod it comes from the
/// pod annotation [`TRACE_PRELUDE_ANNOTATION`] when the build container starts.
pub const TRACE_PRELUDE_ENV: &str = "PODRUNNER_TRACE_PRELUDE";

/// The job pod annotation the manager keeps equal to the log it has sent so far (base64).
pub const TRACE_PRELUDE_ANNOTATION: &str = "podrunner.io/trace-prelude";

/// The start of a job's log, written by the manager while the job's pod starts: the header,
/// the opening of "Preparing environment" with the executor's notes, then whatever the
/// manager adds (what the pod waits for). The agent continues it where it ends, with the same
/// masking, timestamps, output limit and checksum.
pub struct Prelude {
    trace: Trace,
    out: TraceWriter,
}

impl Prelude {
    /// Opens the log of `spec`'s job.
    pub fn open(spec: &AgentSpec) -> Result<Self, AgentError> {
        let payload = JobPayload::from_value(spec.job.clone())?;
        let (project_dir, temp_dir) = job_dirs(spec, &payload);
        let variables = build_variables(spec, &payload, &project_dir, &temp_dir);
        let trace = Trace::new(&log_settings(spec, &payload, &variables));
        let mut out = trace.writer(Stream::RUNNER);
        write_opening(
            &mut out,
            spec,
            &variables,
            payload.job.features.trace_sections,
        );
        Ok(Prelude { trace, out })
    }

    /// Adds a line.
    pub fn line(&mut self, text: &str) {
        write_line(&mut self.out, text);
    }

    /// Adds a warning line.
    pub fn warning(&mut self, text: &str) {
        write_raw(&mut self.out, &log::warning_line(text));
    }

    /// How many bytes the log has so far.
    pub fn len(&self) -> usize {
        self.trace.sink().store().len() as usize
    }

    /// Whether the log is still empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every byte of the log so far, exactly as GitLab gets them.
    pub fn bytes(&self) -> Vec<u8> {
        let sink = self.trace.sink();
        let store = sink.store();
        store.read(0, store.len() as usize).unwrap_or_default()
    }
}
