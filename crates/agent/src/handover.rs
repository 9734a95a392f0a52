//! What a job pod hands its agent besides the spec, through the downward API: the start of
//! the job's log the manager already sent (the trace prelude) and the pod's Fargate size and
//! price.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use podrunner_gitlab::TraceHandover;
use podrunner_gitlab::log::{self, Stream, Trace, TraceWriter};

use crate::error::AgentError;
use crate::job::context::{
    build_variables, job_dirs, log_settings, write_line, write_opening, write_raw,
};
use crate::spec::{AgentSpec, FargateBilling};

/// What a job pod hands its agent besides the spec, through the downward API.
#[derive(Debug, Clone, Default)]
pub struct Handover {
    /// The start of the log the manager already sent (see [`Prelude`]); empty when the agent
    /// writes the whole log.
    pub trace_prelude: Vec<u8>,
    /// The pod's Fargate size and price, when it runs on Fargate (or why what the pod was
    /// handed is not one).
    pub fargate: Option<Result<FargateBilling, String>>,
    /// The file where the kubelet keeps the prelude annotation as it is now (a downward-API
    /// volume, refreshed on the kubelet's sync loop), in a job pod.
    pub live_prelude: Option<PathBuf>,
}

impl Handover {
    /// Reads [`TRACE_PRELUDE_ENV`], [`TRACE_PRELUDE_FILE_ENV`] and [`FARGATE_PRICE_ENV`].
    pub fn from_env() -> Result<Self, AgentError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let trace_prelude = match var(TRACE_PRELUDE_ENV) {
            Some(text) => BASE64
                .decode(text.trim())
                .map_err(|e| AgentError::BadPrelude {
                    variable: TRACE_PRELUDE_ENV,
                    reason: e.to_string(),
                })?,
            None => Vec::new(),
        };
        let fargate = var(FARGATE_PRICE_ENV).map(|text| {
            FargateBilling::from_annotation(&text).map_err(|e| {
                format!(
                    "{FARGATE_PRICE_ENV} (the annotation {FARGATE_PRICE_ANNOTATION}) is not a Fargate size and price: {e}; the job's cost is not shown"
                )
            })
        });
        Ok(Handover {
            trace_prelude,
            fargate,
            live_prelude: var(TRACE_PRELUDE_FILE_ENV).map(PathBuf::from),
        })
    }

    /// How the agent takes the log over from the manager, in a job pod whose manager writes
    /// the start of the log (`None`: the agent writes all of it).
    pub fn trace_handover(&self) -> Option<TraceHandover> {
        if self.trace_prelude.is_empty() && self.live_prelude.is_none() {
            return None;
        }
        let live = self.live_prelude.clone().map(|path| {
            Arc::new(move || read_prelude_file(&path)) as podrunner_gitlab::LivePrelude
        });
        Some(TraceHandover {
            prelude_len: self.trace_prelude.len() as u64,
            live,
            catch_up: PRELUDE_CATCH_UP,
        })
    }
}

/// How long the agent waits for the live prelude to show the manager's late lines: the
/// kubelet rewrites downward-API volume files when it syncs the pod, on its update or at
/// the latest every `syncFrequency` (1 minute by default: `pkg/kubelet/apis/config/v1beta1/
/// defaults.go` in kubernetes/kubernetes), plus the time the manager takes to see the
/// build container start and stop writing.
pub const PRELUDE_CATCH_UP: Duration = Duration::from_secs(90);

/// The live prelude: the annotation's value, base64, as the kubelet wrote it.
fn read_prelude_file(path: &std::path::Path) -> Option<Vec<u8>> {
    let text = std::fs::read_to_string(path).ok()?;
    BASE64.decode(text.trim()).ok()
}

/// The environment variable with the job pod's `CapacityProvisioned` annotation (Fargate's
/// size for it). The agent does not read it: the size it bills is the one in
/// [`FARGATE_PRICE_ENV`], which the manager priced.
pub const FARGATE_CAPACITY_ENV: &str = "PODRUNNER_FARGATE_CAPACITY";

/// The environment variable with the pod's Fargate size and price (a [`FargateBilling`] as
/// JSON), from [`FARGATE_PRICE_ANNOTATION`].
pub const FARGATE_PRICE_ENV: &str = "PODRUNNER_FARGATE_USD_PER_HOUR";

/// The pod annotation where the manager puts the size Fargate provisioned and its price
/// ([`FargateBilling::to_annotation`]).
pub const FARGATE_PRICE_ANNOTATION: &str = "podrunner.io/fargate-usd-per-hour";

/// The environment variable that hands the agent the start of its job's log that the
/// manager already sent to GitLab (base64 of the exact bytes). In a job pod it comes from the
/// pod annotation [`TRACE_PRELUDE_ANNOTATION`] when the build container starts.
pub const TRACE_PRELUDE_ENV: &str = "PODRUNNER_TRACE_PRELUDE";

/// The environment variable naming the file with the live prelude: a downward-API volume
/// file of [`TRACE_PRELUDE_ANNOTATION`] that the kubelet refreshes while the pod runs.
pub const TRACE_PRELUDE_FILE_ENV: &str = "PODRUNNER_TRACE_PRELUDE_FILE";

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
        let payload = &spec.job;
        let (project_dir, temp_dir) = job_dirs(spec, payload);
        let variables = build_variables(spec, payload, &project_dir, &temp_dir);
        let trace = Trace::new(&log_settings(spec, payload, &variables));
        let mut out = trace.writer(Stream::RUNNER);
        write_opening(
            &mut out,
            spec,
            &variables,
            payload.job.features.trace_sections,
        );
        Ok(Prelude { trace, out })
    }

    /// Opens the log of `spec`'s job again where `bytes` (a prelude the manager wrote
    /// before it restarted) ends.
    pub fn resume(spec: &AgentSpec, bytes: &[u8]) -> Result<Self, AgentError> {
        let payload = &spec.job;
        let (project_dir, temp_dir) = job_dirs(spec, payload);
        let variables = build_variables(spec, payload, &project_dir, &temp_dir);
        let trace = Trace::new(&log_settings(spec, payload, &variables));
        let _ = trace.sink().write(bytes);
        let out = trace.writer(Stream::RUNNER);
        Ok(Prelude { trace, out })
    }

    /// Adds a line. Every line is whole and at least two bytes long (an empty text is
    /// skipped): the agent's claim of the log relies on it (`podrunner_gitlab::handover`).
    pub fn line(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
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
