//! Integration tests of the configuration loader, one binary for link speed.

mod cache_section;
mod defaults;
mod errors;
mod full_config;
mod helm_values;
mod never_panics;
mod not_honoured;

use std::collections::HashMap;

use podrunner_config::{ConfigError, LoadedConfig, SourceText, load_str};

/// An environment with a runner token, as tests feed it instead of the process's.
pub fn test_env() -> HashMap<String, String> {
    HashMap::from([("RUNNER_TOKEN".to_owned(), "glrt-from-env".to_owned())])
}

/// Loads `text` as `config.toml`.
pub fn load(text: &str) -> Result<LoadedConfig, ConfigError> {
    load_str(&SourceText::new("config.toml", text), &test_env())
}

/// The error lines of an invalid `text`.
pub fn errors(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(ConfigError::Invalid { errors, .. }) => errors.iter().map(|e| e.to_string()).collect(),
        Err(other) => panic!("unexpected {other}"),
    }
}

/// The warning lines of a valid `text`.
pub fn warnings(text: &str) -> Vec<String> {
    match load(text) {
        Ok(loaded) => loaded.warnings.iter().map(|w| w.to_string()).collect(),
        Err(e) => panic!("expected a valid config, got:\n{e}\nfor:\n{text}"),
    }
}
