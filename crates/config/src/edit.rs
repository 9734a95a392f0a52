//! Changes to `config.toml` that keep everything else as the user wrote it (comments,
//! order, other runners): adding or updating a registered runner, removing runners.

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, value};

use crate::enums::Executor;

/// Why the file could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The existing file is not TOML.
    #[error("the existing configuration is not valid TOML: {0}")]
    Parse(#[from] toml_edit::TomlError),
    /// `runners` is not an array of tables.
    #[error("`runners` in the existing configuration is not a list of [[runners]] tables")]
    RunnersShape,
}

/// A registered runner to write.
#[derive(Debug, Clone)]
pub struct RunnerEntry {
    /// Description.
    pub name: Option<String>,
    /// GitLab's URL.
    pub url: String,
    /// Runner ID from GitLab.
    pub id: i64,
    /// The authentication token.
    pub token: String,
    /// When the token was obtained (RFC 3339, UTC).
    pub token_obtained_at: String,
    /// When it expires, if it does (RFC 3339).
    pub token_expires_at: Option<String>,
    /// The executor.
    pub executor: Executor,
    /// `tls-ca-file`, when GitLab's certificate needs a CA of its own.
    pub tls_ca_file: Option<String>,
}

fn runners_mut(document: &mut DocumentMut) -> Result<&mut ArrayOfTables, EditError> {
    if !document.contains_key("runners") {
        document.insert("runners", Item::ArrayOfTables(ArrayOfTables::new()));
    }
    document["runners"]
        .as_array_of_tables_mut()
        .ok_or(EditError::RunnersShape)
}

fn set_timestamp(table: &mut Table, key: &str, text: &str) {
    match text.parse::<toml_edit::Datetime>() {
        Ok(datetime) => table[key] = value(datetime),
        Err(_) => table[key] = value(text),
    }
}

/// Adds the runner, or updates the entry that has the same token; returns the new text.
/// A new file starts with `concurrent = 1` and `check_interval = 0`, as gitlab-runner writes.
pub fn upsert_runner(existing: Option<&str>, entry: &RunnerEntry) -> Result<String, EditError> {
    let mut document: DocumentMut = match existing {
        Some(text) if !text.trim().is_empty() => text.parse()?,
        _ => {
            let mut document = DocumentMut::new();
            document["concurrent"] = value(1);
            document["check_interval"] = value(0);
            document
        }
    };
    let runners = runners_mut(&mut document)?;
    let index = runners
        .iter()
        .position(|t| t.get("token").and_then(Item::as_str) == Some(entry.token.as_str()));
    let table = match index {
        Some(i) => runners.get_mut(i).expect("index from position"),
        None => {
            runners.push(Table::new());
            let last = runners.len() - 1;
            runners.get_mut(last).expect("just pushed")
        }
    };
    if let Some(name) = &entry.name {
        table["name"] = value(name.as_str());
    }
    table["url"] = value(entry.url.as_str());
    table["id"] = value(entry.id);
    table["token"] = value(entry.token.as_str());
    set_timestamp(table, "token_obtained_at", &entry.token_obtained_at);
    match &entry.token_expires_at {
        Some(expires) => set_timestamp(table, "token_expires_at", expires),
        None => {
            table.remove("token_expires_at");
        }
    }
    if let Some(ca) = &entry.tls_ca_file {
        table["tls-ca-file"] = value(ca.as_str());
    }
    table["executor"] = value(entry.executor.as_str());
    Ok(document.to_string())
}

/// Removes every runner for which `remove(name, token)` holds; returns the new text and the
/// names (or `#index`) of the removed runners.
pub fn remove_runners(
    existing: &str,
    remove: impl Fn(Option<&str>, Option<&str>) -> bool,
) -> Result<(String, Vec<String>), EditError> {
    let mut document: DocumentMut = existing.parse()?;
    let mut removed = Vec::new();
    if document.contains_key("runners") {
        let runners = runners_mut(&mut document)?;
        let mut position = 0;
        runners.retain(|table| {
            let name = table.get("name").and_then(Item::as_str);
            let token = table.get("token").and_then(Item::as_str);
            let drop = remove(name, token);
            if drop {
                removed.push(
                    name.map(str::to_owned)
                        .unwrap_or_else(|| format!("#{position}")),
                );
            }
            position += 1;
            !drop
        });
    }
    Ok((document.to_string(), removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(token: &str) -> RunnerEntry {
        RunnerEntry {
            name: Some("ci".into()),
            url: "https://gitlab.example.com".into(),
            id: 7,
            token: token.into(),
            token_obtained_at: "2026-11-27T20:00:00Z".into(),
            token_expires_at: None,
            executor: Executor::Kubernetes,
            tls_ca_file: None,
        }
    }

    #[test]
    fn new_file_then_update_keeps_comments() {
        let text = upsert_runner(None, &entry("glrt-a")).unwrap();
        assert!(
            text.starts_with("concurrent = 1\ncheck_interval = 0\n"),
            "{text}"
        );
        assert!(
            text.contains("[[runners]]")
                && text.contains("token_obtained_at = 2026-11-27T20:00:00Z"),
            "{text}"
        );
        let with_comment = format!(
            "# managed by hand\n{text}  [runners.kubernetes]\n    namespace = \"ci\" # keep\n"
        );
        let mut updated_entry = entry("glrt-a");
        updated_entry.id = 8;
        let updated = upsert_runner(Some(&with_comment), &updated_entry).unwrap();
        assert!(
            updated.contains("# managed by hand") && updated.contains("namespace = \"ci\" # keep"),
            "{updated}"
        );
        assert_eq!(updated.matches("[[runners]]").count(), 1);
        assert!(updated.contains("id = 8"));
        let two = upsert_runner(Some(&updated), &entry("glrt-b")).unwrap();
        assert_eq!(two.matches("[[runners]]").count(), 2);
        let (left, removed) = remove_runners(&two, |_, token| token == Some("glrt-a")).unwrap();
        assert_eq!(removed, ["ci"]);
        assert!(
            !left.contains("glrt-a")
                && left.contains("glrt-b")
                && left.contains("# managed by hand")
        );
        assert!(upsert_runner(Some("runners = 3"), &entry("x")).is_err());
    }
}
