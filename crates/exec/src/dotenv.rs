//! `artifacts:reports:dotenv` as GitLab reads it (`app/services/ci/parse_dotenv_artifact_service.rb`
//! in `gitlabhq/gitlabhq`): every line is `KEY=VALUE` (split at the first `=`, both sides
//! stripped), a line without `=` makes the whole report invalid, the last of a key wins, and
//! the values become non-raw variables of the jobs that take the job's artifacts. The limits
//! are GitLab's default plan limits (`dotenv_size` 5 KiB, `dotenv_variables` 20).

use std::io::Read;

/// The file under a job's artifacts directory that holds its parsed report.
pub(crate) const FILE: &str = "dotenv.json";

const SIZE_LIMIT: usize = 5 * 1024;
const VARIABLE_LIMIT: usize = 20;

/// Parses an uploaded report (gzip when `gzip`, as the runner sends it).
pub(crate) fn parse_upload(bytes: &[u8], gzip: bool) -> Result<Vec<(String, String)>, String> {
    let mut text = Vec::new();
    if gzip {
        // Every member: a report of several files is one gzip member per file.
        flate2::read::MultiGzDecoder::new(bytes)
            .take(SIZE_LIMIT as u64 + 1)
            .read_to_end(&mut text)
            .map_err(|e| format!("the dotenv report is not gzip: {e}"))?;
    } else {
        text = bytes.to_vec();
    }
    if text.len() >= SIZE_LIMIT {
        return Err(format!(
            "Dotenv Artifact Too Big. Maximum Allowable Size: {SIZE_LIMIT}"
        ));
    }
    parse(&String::from_utf8_lossy(&text))
}

/// Parses the text of a report.
pub(crate) fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut variables: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("Invalid Format: {line:?} is not KEY=VALUE"));
        };
        let (key, value) = (key.trim().to_owned(), value.trim().to_owned());
        if let Some(slot) = variables.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else {
            variables.push((key, value));
        }
    }
    if variables.len() > VARIABLE_LIMIT {
        return Err(format!(
            "Dotenv files cannot have more than {VARIABLE_LIMIT} variables"
        ));
    }
    Ok(variables)
}

/// The stored form of a parsed report.
pub(crate) fn to_json(variables: &[(String, String)]) -> Vec<u8> {
    serde_json::to_vec(variables).unwrap_or_default()
}

/// Reads a stored report; `None` when there is none.
pub(crate) fn read(file: &std::path::Path) -> Option<Vec<(String, String)>> {
    serde_json::from_slice(&std::fs::read(file).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_parse_as_gitlab_parses_them() {
        assert_eq!(
            parse("A=1\n B = two words \nC=x=y\nA=last\n").unwrap(),
            vec![
                ("A".to_owned(), "last".to_owned()),
                ("B".to_owned(), "two words".to_owned()),
                ("C".to_owned(), "x=y".to_owned()),
            ]
        );
        assert!(
            parse("A=1\n\nB=2\n")
                .unwrap_err()
                .contains("Invalid Format")
        );
        assert!(parse("no equals").is_err());
        let many: String = (0..21).map(|i| format!("K{i}=v\n")).collect();
        assert!(parse(&many).unwrap_err().contains("more than 20"));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, b"X=1\n").unwrap();
        assert_eq!(
            parse_upload(&gz.finish().unwrap(), true).unwrap(),
            vec![("X".to_owned(), "1".to_owned())]
        );
        assert!(parse_upload(&vec![b'a'; 6000], false).is_err());
    }
}
