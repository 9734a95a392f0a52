//! Files of artifacts and caches: `paths` globs (`**` included) and `exclude` relative to the
//! project directory, git-untracked files, zip archives written and extracted safely.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// Why files could not be collected, archived or extracted.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A pattern is not a valid glob.
    #[error("{pattern:?} is not a valid path pattern: {reason}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// Why.
        reason: String,
    },
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What happened.
        source: std::io::Error,
    },
    /// The archive is not a zip file.
    #[error("the archive cannot be read: {0}")]
    Zip(#[from] zip::result::ZipError),
    /// An archive could not be extracted, or was refused.
    #[error(transparent)]
    Extract(#[from] crate::extract::ExtractError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FilesError + '_ {
    move |source| FilesError::Io {
        path: path.to_owned(),
        source,
    }
}

fn glob(pattern: &str) -> Result<Glob, FilesError> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| FilesError::Pattern {
            pattern: pattern.to_owned(),
            reason: e.kind().to_string(),
        })
}

/// Normalizes a user path pattern: no leading `./`, no trailing `/`.
fn normalize(pattern: &str) -> String {
    let trimmed = pattern.trim();
    let trimmed = trimmed.strip_prefix("./").unwrap_or(trimmed);
    trimmed.trim_end_matches('/').to_owned()
}

/// A pattern as a path relative to the project at `root`: gitlab-runner's archiver resolves
/// every path and exclude against its working directory (`findRelativePathInProject` in
/// `commands/helpers/file_archiver.go`), so `$CI_PROJECT_DIR/out` means `out`. A pattern
/// outside the project stays absolute and matches nothing.
fn in_project(root: &Path, pattern: &str) -> String {
    let pattern = normalize(pattern);
    match Path::new(&pattern).strip_prefix(root) {
        Ok(relative) if Path::new(&pattern).is_absolute() => relative.display().to_string(),
        _ => pattern,
    }
}

/// What `paths` matched, per pattern, and the files to archive (relative, sorted).
#[derive(Debug, Default)]
pub struct Collected {
    /// Relative paths of files and directories to archive.
    pub entries: BTreeSet<PathBuf>,
    /// Per pattern: how many entries it matched.
    pub per_pattern: Vec<(String, usize)>,
}

/// Collects `paths` (plus `untracked` files) minus `exclude` under `root`. A pattern that
/// matches a directory takes everything below it.
pub fn collect(
    root: &Path,
    paths: &[String],
    exclude: &[String],
    untracked: &[PathBuf],
) -> Result<Collected, FilesError> {
    let mut excludes = GlobSetBuilder::new();
    for pattern in exclude {
        let pattern = in_project(root, pattern);
        excludes.add(glob(&pattern)?);
        excludes.add(glob(&format!("{pattern}/**"))?);
    }
    let excludes: GlobSet = excludes.build().map_err(|e| FilesError::Pattern {
        pattern: exclude.join(", "),
        reason: e.to_string(),
    })?;
    let all: Vec<PathBuf> = walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| {
            !e.path()
                .strip_prefix(root)
                .map(|p| p.starts_with(".git"))
                .unwrap_or(true)
        })
        .filter_map(|e| e.path().strip_prefix(root).ok().map(Path::to_owned))
        .collect();
    let mut collected = Collected::default();
    for raw in paths {
        let pattern = in_project(root, raw);
        if pattern.is_empty() {
            continue;
        }
        let matcher = glob(&pattern)?.compile_matcher();
        let below = glob(&format!("{pattern}/**"))?.compile_matcher();
        let mut count = 0;
        for path in &all {
            if (matcher.is_match(path) || below.is_match(path)) && !excludes.is_match(path) {
                if matcher.is_match(path) {
                    count += 1;
                }
                collected.entries.insert(path.clone());
            }
        }
        collected.per_pattern.push((raw.clone(), count));
    }
    for path in untracked {
        if !excludes.is_match(path) {
            collected.entries.insert(path.clone());
        }
    }
    Ok(collected)
}

/// Files git does not track (ignored ones included), relative to `root`.
pub fn untracked(root: &Path) -> Vec<PathBuf> {
    let output = std::process::Command::new("git")
        .args(["ls-files", "--others", "-z"])
        .current_dir(root)
        .output();
    match output {
        Ok(output) if output.status.success() => output
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
            .collect(),
        _ => Vec::new(),
    }
}

pub use crate::archive_format::{CompressionLevel, InvalidLevel};
pub use crate::archive_write::ZipOptions;

/// Writes a zip of `entries` (relative to `root`) to `target` at the default level; returns
/// how many entries it holds.
pub fn write_zip(
    root: &Path,
    entries: &BTreeSet<PathBuf>,
    target: &Path,
) -> Result<u64, FilesError> {
    write_zip_with(root, entries, target, &ZipOptions::default())
}

/// Writes a zip of `entries` (relative to `root`) to `target` with `options`, on every core
/// and in bounded memory (see [`crate::archive_write`]); returns how many entries it holds.
pub fn write_zip_with(
    root: &Path,
    entries: &BTreeSet<PathBuf>,
    target: &Path,
    options: &ZipOptions,
) -> Result<u64, FilesError> {
    crate::archive_write::write_zip_with(root, entries, target, options)
}

/// Gzips one file (the `gzip` artifact format).
pub fn write_gzip(source: &Path, target: &Path) -> Result<(), FilesError> {
    write_gzip_members(&[source.to_owned()], target)
}

/// Writes each of `sources` as one gzip member, one after the other, into `target`: the
/// `gzip` format with several files, as gitlab-runner's `CreateGzipArchive`
/// (`helpers/archives/gzip_create.go`) writes it (GitLab reads every member of a dotenv
/// report). A source that does not exist is skipped, as there.
pub fn write_gzip_members(sources: &[PathBuf], target: &Path) -> Result<(), FilesError> {
    let mut output = std::fs::File::create(target).map_err(io(target))?;
    for source in sources {
        let mut input = match std::fs::File::open(source) {
            Ok(input) => input,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(source)(e)),
        };
        let mut encoder =
            flate2::write::GzEncoder::new(&mut output, flate2::Compression::default());
        std::io::copy(&mut input, &mut encoder).map_err(io(source))?;
        encoder.finish().map_err(io(target))?;
    }
    std::io::Write::flush(&mut output).map_err(io(target))?;
    Ok(())
}

/// Extracts a zip into `root`; see [`crate::extract`] for what is refused.
pub fn extract_zip(archive: &Path, root: &Path) -> Result<u64, FilesError> {
    Ok(crate::extract::extract_zip(archive, root)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tree(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for file in files {
            let path = dir.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, file.as_bytes()).unwrap();
        }
        dir
    }

    fn names(collected: &Collected) -> Vec<String> {
        collected
            .entries
            .iter()
            .map(|p| p.display().to_string())
            .collect()
    }

    #[test]
    fn globs_directories_and_excludes() {
        let dir = tree(&[
            "build/app",
            "build/debug/app.log",
            "build/lib/x.so",
            "docs/a.md",
            "docs/sub/b.md",
            "README.md",
            ".git/config",
        ]);
        let c = collect(
            dir.path(),
            &["build/".into(), "docs/**/*.md".into(), "*.md".into()],
            &["build/**/*.log".into()],
            &[],
        )
        .unwrap();
        assert_eq!(
            names(&c),
            [
                "README.md",
                "build",
                "build/app",
                "build/debug",
                "build/lib",
                "build/lib/x.so",
                "docs/a.md",
                "docs/sub/b.md"
            ]
        );
        assert_eq!(c.per_pattern[1], ("docs/**/*.md".to_owned(), 2));
        let none = collect(dir.path(), &["missing/".into()], &[], &[]).unwrap();
        assert!(none.entries.is_empty() && none.per_pattern[0].1 == 0);
        assert!(collect(dir.path(), &["[".into()], &[], &[]).is_err());
    }

    #[test]
    fn absolute_paths_in_the_project_are_relative_to_it() {
        let dir = tree(&["out/a.txt", "out/b.log"]);
        let root = dir.path().display().to_string();
        let c = collect(
            dir.path(),
            &[format!("{root}/out/")],
            &[format!("{root}/out/*.log")],
            &[],
        )
        .unwrap();
        assert_eq!(names(&c), ["out", "out/a.txt"]);
        let outside = collect(dir.path(), &["/etc/hostname".into()], &[], &[]).unwrap();
        assert!(outside.entries.is_empty() && outside.per_pattern[0].1 == 0);
    }

    #[test]
    fn zip_round_trip_keeps_modes_and_refuses_escapes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tree(&["bin/tool", "data/file.txt"]);
        std::fs::set_permissions(
            dir.path().join("bin/tool"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let c = collect(
            dir.path(),
            &["bin".into(), "data/file.txt".into()],
            &[],
            &[],
        )
        .unwrap();
        let archive = dir.path().join("out.zip");
        assert_eq!(write_zip(dir.path(), &c.entries, &archive).unwrap(), 3);
        let target = tempfile::tempdir().unwrap();
        assert_eq!(extract_zip(&archive, target.path()).unwrap(), 2);
        assert_eq!(
            std::fs::read_to_string(target.path().join("data/file.txt")).unwrap(),
            "data/file.txt"
        );
        assert_eq!(
            std::fs::metadata(target.path().join("bin/tool"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );

        let evil = dir.path().join("evil.zip");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&evil).unwrap());
        zip.start_file("../escape.txt", zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(b"x").unwrap();
        zip.finish().unwrap();
        assert!(matches!(
            extract_zip(&evil, target.path()),
            Err(FilesError::Extract(
                crate::extract::ExtractError::Refused { .. }
            ))
        ));
        assert!(!target.path().parent().unwrap().join("escape.txt").exists());
    }
}
