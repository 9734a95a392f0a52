//! gitlab-runner's feature flags that a `[runners.feature_flags]` table may set, with their
//! defaults (`helpers/featureflags/flags.go`).

/// Every known flag and its default.
pub const KNOWN: &[(&str, bool)] = &[
    ("FF_CONCRETE", false),
    ("FF_DISABLE_AUTOMATIC_TOKEN_ROTATION", false),
    ("FF_DISABLE_UMASK_FOR_KUBERNETES_EXECUTOR", false),
    ("FF_ENABLE_BASH_EXIT_CODE_CHECK", false),
    ("FF_ENABLE_JOB_CLEANUP", false),
    ("FF_GIT_URLS_WITHOUT_TOKENS", false),
    ("FF_HASH_CACHE_KEYS", false),
    ("FF_KUBERNETES_HONOR_ENTRYPOINT", false),
    ("FF_MASK_ALL_DEFAULT_TOKENS", true),
    ("FF_PRINT_POD_EVENTS", false),
    ("FF_SCRIPT_SECTIONS", false),
    ("FF_SET_PERMISSIONS_BEFORE_CLEANUP", true),
    ("FF_TIMESTAMPS", true),
    ("FF_USE_ADAPTIVE_REQUEST_CONCURRENCY", true),
    ("FF_USE_ADVANCED_POD_SPEC_CONFIGURATION", false),
    ("FF_USE_DIRECT_DOWNLOAD", true),
    ("FF_USE_DUMB_INIT_WITH_KUBERNETES_EXECUTOR", false),
    ("FF_USE_EXPONENTIAL_BACKOFF_STAGE_RETRY", true),
    ("FF_USE_FASTZIP", false),
    ("FF_USE_JOB_ROUTER", false),
    ("FF_USE_LEGACY_KUBERNETES_EXECUTION_STRATEGY", false),
    ("FF_USE_NEW_BASH_EVAL_STRATEGY", false),
    ("FF_USE_PARALLEL_ARTIFACT_TRANSFER", false),
    ("FF_USE_POD_ACTIVE_DEADLINE_SECONDS", true),
    ("FF_USE_POWERSHELL_PATH_RESOLVER", false),
    ("FF_WAIT_FOR_POD_TO_BE_REACHABLE", false),
];

/// The default of a known flag.
pub fn default_of(name: &str) -> Option<bool> {
    KNOWN
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(_, default)| *default)
}
