//! Loading `config.toml`: parse with spans, deserialize with key paths, collect unknown keys
//! as warnings with a suggestion, expand the environment, then validate.

use std::path::Path;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::diagnostics::{Diagnostic, KeyPath, Location, SourceText, SpanIndex};
use crate::env::{Environment, expand};
use crate::honoured::{self, IgnoredSetting};
use crate::kubernetes::*;
use crate::model::*;
use crate::validate::{Mode, validate};
use crate::{ConfigError, fargate};

/// A configuration that passed validation, with the warnings found on the way.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The configuration, environment expanded.
    pub config: Config,
    /// Findings that do not stop podrunner.
    pub warnings: Vec<Diagnostic>,
    /// Keys the file sets that podrunner reads but does not honour, with what to do instead.
    pub not_honoured: Vec<IgnoredSetting>,
}

/// Reads and validates the `config.toml` at `path`.
pub fn load_file(path: &Path, env: &dyn Environment) -> Result<LoadedConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    load_str(&SourceText::new(path.display().to_string(), text), env)
}

/// Validates a `config.toml` text.
pub fn load_str(source: &SourceText, env: &dyn Environment) -> Result<LoadedConfig, ConfigError> {
    let parsed = parse(source)?;
    finish(parsed, source, env, Mode::File)
}

/// A document deserialized but not yet validated.
pub(crate) struct Parsed {
    pub config: Config,
    pub spans: SpanIndex,
    pub warnings: Vec<Diagnostic>,
}

/// Parses and deserializes a TOML text; syntax and type errors are returned at once.
pub(crate) fn parse(source: &SourceText) -> Result<Parsed, ConfigError> {
    let text = source.text();
    let document = toml::de::DeTable::parse(text)
        .map_err(|e| ConfigError::invalid(vec![toml_error(source, &e, None)]))?;
    let spans = SpanIndex::build(document.get_ref());

    let deserializer = toml::de::Deserializer::parse(text)
        .map_err(|e| ConfigError::invalid(vec![toml_error(source, &e, None)]))?;
    let mut track = serde_path_to_error::Track::new();
    let mut unknown: Vec<KeyPath> = Vec::new();
    let result = serde_ignored::deserialize(
        serde_path_to_error::Deserializer::new(deserializer, &mut track),
        |path| unknown.push(convert_ignored_path(&path)),
    );
    let config: Config = match result {
        Ok(config) => config,
        Err(error) => {
            let path = convert_error_path(&track.path());
            return Err(ConfigError::invalid(vec![toml_error(
                source,
                &error,
                Some((path, &spans)),
            )]));
        }
    };
    let warnings = unknown
        .iter()
        .map(|path| unknown_key_warning(source, &spans, path))
        .collect();
    Ok(Parsed {
        config,
        spans,
        warnings,
    })
}

/// Expands the environment and validates a parsed document.
pub(crate) fn finish(
    mut parsed: Parsed,
    source: &SourceText,
    env: &dyn Environment,
    mode: Mode,
) -> Result<LoadedConfig, ConfigError> {
    for runner in &mut parsed.config.runners {
        runner.url = runner.url.as_deref().map(|u| expand(u, env));
        runner.token = runner.token.as_deref().map(|t| expand(t, env).into());
    }
    let (errors, mut warnings) = validate(&parsed.config, source, &parsed.spans, mode);
    parsed.warnings.append(&mut warnings);
    if errors.is_empty() {
        Ok(LoadedConfig {
            config: parsed.config,
            warnings: parsed.warnings,
            not_honoured: honoured::ignored_settings(source, &parsed.spans, mode),
        })
    } else {
        Err(ConfigError::Invalid {
            errors,
            warnings: parsed.warnings,
        })
    }
}

fn toml_error(
    source: &SourceText,
    error: &toml::de::Error,
    path: Option<(KeyPath, &SpanIndex)>,
) -> Diagnostic {
    let location: Option<Location> = match (error.span(), &path) {
        (Some(span), _) => Some(source.location(span.start)),
        (None, Some((path, spans))) => spans.nearest(path).map(|s| source.location(s.value.start)),
        (None, None) => None,
    };
    let message = error
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let message = friendly_type_error(&message).unwrap_or(message);
    Diagnostic::error(
        location,
        path.map(|(p, _)| p).filter(|p| !p.is_root()),
        message,
    )
}

/// Rewrites serde's `invalid type: X, expected Y` into `expected Y, found X` in words.
fn friendly_type_error(message: &str) -> Option<String> {
    let rest = message.strip_prefix("invalid type: ")?;
    let (found, expected) = rest.rsplit_once(", expected ")?;
    let expected = match expected {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" => {
            "a whole number".to_owned()
        }
        "f32" | "f64" => "a number".to_owned(),
        "a sequence" => "a list".to_owned(),
        "a map" => "a table".to_owned(),
        e if e.starts_with("struct ") => "a table".to_owned(),
        e => e.to_owned(),
    };
    let found = match found {
        "map" => "a table".to_owned(),
        "sequence" => "a list".to_owned(),
        f => f.replace('`', "").to_owned(),
    };
    Some(format!("expected {expected}, found {found}"))
}

fn convert_error_path(path: &serde_path_to_error::Path) -> KeyPath {
    let mut out = KeyPath::root();
    for segment in path.iter() {
        out = match segment {
            serde_path_to_error::Segment::Seq { index } => out.index(*index),
            serde_path_to_error::Segment::Map { key } => out.key(key.clone()),
            serde_path_to_error::Segment::Enum { variant } => out.key(variant.clone()),
            serde_path_to_error::Segment::Unknown => out,
        };
    }
    out
}

fn convert_ignored_path(path: &serde_ignored::Path<'_>) -> KeyPath {
    match path {
        serde_ignored::Path::Root => KeyPath::root(),
        serde_ignored::Path::Seq { parent, index } => convert_ignored_path(parent).index(*index),
        serde_ignored::Path::Map { parent, key } => convert_ignored_path(parent).key(key.clone()),
        serde_ignored::Path::Some { parent }
        | serde_ignored::Path::NewtypeStruct { parent }
        | serde_ignored::Path::NewtypeVariant { parent } => convert_ignored_path(parent),
    }
}

fn unknown_key_warning(source: &SourceText, spans: &SpanIndex, path: &KeyPath) -> Diagnostic {
    let location = spans.nearest(path).map(|s| source.location(s.key.start));
    let key = path.last_key().unwrap_or_default();
    let shape = path.parent().shape();
    let mut message = format!("unknown key {key:?} is ignored (gitlab-runner ignores it too)");
    if let Some(hint) = suggestion(&shape, key) {
        message.push_str("; ");
        message.push_str(&hint);
    }
    Diagnostic::warning(location, Some(path.clone()), message)
}

/// A "did you mean" for an unknown key in the table of shape `shape`.
fn suggestion(shape: &str, key: &str) -> Option<String> {
    if let Some(fields) = known_fields(shape) {
        let normalized = key.to_ascii_lowercase().replace('-', "_");
        let best = fields
            .iter()
            .map(|f| {
                (
                    strsim::damerau_levenshtein(&normalized, &f.to_ascii_lowercase()),
                    *f,
                )
            })
            .filter(|(distance, f)| {
                *distance <= (f.len() / 4).max(1) + usize::from(normalized != key)
            })
            .min();
        if let Some((_, field)) = best {
            return Some(format!("did you mean {field:?}?"));
        }
    }
    // A key written one table too high or too low.
    let homes: &[(&str, &str, &str)] = &[
        ("runners[]", "runners[].kubernetes", "[runners.kubernetes]"),
        ("", "runners[]", "[[runners]]"),
        ("runners[].kubernetes", "runners[]", "[[runners]]"),
        (
            "runners[]",
            "",
            "the global section (before any [[runners]])",
        ),
    ];
    homes.iter().find_map(|(from, to, name)| {
        (*from == shape && known_fields(to).is_some_and(|f| f.contains(&key)))
            .then(|| format!("it belongs in {name}"))
    })
}

/// The keys a table of the given shape accepts.
pub(crate) fn known_fields(shape: &str) -> Option<&'static [&'static str]> {
    let security = "runners[].kubernetes.";
    Some(match shape {
        "" => fields_of::<Config>(),
        "session_server" => fields_of::<SessionServerConfig>(),
        "runners[]" => fields_of::<RunnerConfig>(),
        "runners[].custom_build_dir" => fields_of::<CustomBuildDirConfig>(),
        "runners[].artifact" => fields_of::<ArtifactConfig>(),
        "runners[].cache" => fields_of::<CacheConfig>(),
        "runners[].cache.s3" => fields_of::<CacheS3Config>(),
        "runners[].cache.gcs" => fields_of::<CacheGcsConfig>(),
        "runners[].cache.azure" => fields_of::<CacheAzureConfig>(),
        "runners[].kubernetes" => fields_of::<KubernetesConfig>(),
        "runners[].kubernetes.affinity" => fields_of::<Affinity>(),
        "runners[].kubernetes.affinity.node_affinity" => fields_of::<NodeAffinity>(),
        "runners[].kubernetes.affinity.pod_affinity"
        | "runners[].kubernetes.affinity.pod_anti_affinity" => fields_of::<PodAffinity>(),
        "runners[].kubernetes.pod_security_context" => fields_of::<PodSecurityContext>(),
        "runners[].kubernetes.volumes" => fields_of::<Volumes>(),
        "runners[].kubernetes.volumes.host_path[]" => fields_of::<HostPathVolume>(),
        "runners[].kubernetes.volumes.pvc[]" => fields_of::<PvcVolume>(),
        "runners[].kubernetes.volumes.config_map[]" | "runners[].kubernetes.volumes.secret[]" => {
            fields_of::<ItemsVolume>()
        }
        "runners[].kubernetes.volumes.empty_dir[]" => fields_of::<EmptyDirVolume>(),
        "runners[].kubernetes.volumes.csi[]" => fields_of::<CsiVolume>(),
        "runners[].kubernetes.volumes.nfs[]" => fields_of::<NfsVolume>(),
        "runners[].kubernetes.host_aliases[]" => fields_of::<HostAlias>(),
        "runners[].kubernetes.services[]" => fields_of::<ServiceConfig>(),
        "runners[].kubernetes.dns_config" => fields_of::<DnsConfig>(),
        "runners[].kubernetes.container_lifecycle" => fields_of::<ContainerLifecycle>(),
        "runners[].kubernetes.container_lifecycle.post_start"
        | "runners[].kubernetes.container_lifecycle.pre_stop" => fields_of::<LifecycleHandler>(),
        "runners[].kubernetes.pod_spec[]" => fields_of::<PodSpecPatch>(),
        "runners[].kubernetes.autoscaler" => fields_of::<KubernetesAutoscaler>(),
        "runners[].kubernetes.fargate" => fields_of::<fargate::FargateConfig>(),
        "runners[].kubernetes.fargate.profiles[]" => fields_of::<fargate::FargateProfile>(),
        "runners[].kubernetes.fargate.profiles[].selectors[]" => {
            fields_of::<fargate::FargateSelector>()
        }
        s if s.starts_with(security) && s.ends_with("_container_security_context") => {
            fields_of::<ContainerSecurityContext>()
        }
        _ => return None,
    })
}

/// The field names of a struct, read from its `Deserialize` impl.
fn fields_of<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields = None;
    let _ = T::deserialize(FieldNames(&mut fields));
    fields.unwrap_or(&[])
}

/// A deserializer that only records the field list a struct asks for.
struct FieldNames<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("field names only"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(fields);
        Err(de::Error::custom("field names only"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_find_near_keys_and_misplaced_keys() {
        assert_eq!(
            suggestion("runners[].kubernetes", "cpu_requets").as_deref(),
            Some("did you mean \"cpu_request\"?")
        );
        assert_eq!(
            suggestion("runners[].kubernetes", "poll-timeout").as_deref(),
            Some("did you mean \"poll_timeout\"?")
        );
        assert_eq!(
            suggestion("runners[]", "namespace").as_deref(),
            Some("it belongs in [runners.kubernetes]")
        );
        assert_eq!(
            suggestion("", "executor").as_deref(),
            Some("it belongs in [[runners]]")
        );
        assert_eq!(suggestion("runners[].kubernetes", "zzzzzzzz"), None);
        assert!(fields_of::<KubernetesConfig>().contains(&"fargate"));
    }
}
