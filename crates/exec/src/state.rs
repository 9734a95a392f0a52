//! Where `podrunner exec` keeps artifacts between jobs and runs: a private per-user state
//! directory, and job names encoded so that a name is never a path.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A job (or file) name as one path component: bytes other than ASCII letters, digits, `-`,
/// `_` and `.` are written `%XX`, and so is a leading `.` (no `.`, `..` or hidden names).
pub fn component(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, byte) in name.bytes().enumerate() {
        let plain =
            byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_') || (byte == b'.' && i > 0);
        if plain {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    out
}

/// The per-user state directory of exec: `$XDG_STATE_HOME/podrunner/exec`, else
/// `$HOME/.local/state/podrunner/exec`.
fn state_root() -> Result<PathBuf, String> {
    let from = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(state) = from("XDG_STATE_HOME") {
        return Ok(state.join("podrunner/exec"));
    }
    if let Some(home) = from("HOME") {
        return Ok(home.join(".local/state/podrunner/exec"));
    }
    Err(
        "neither XDG_STATE_HOME nor HOME is set to an absolute path: pass --artifacts-dir"
            .to_owned(),
    )
}

/// The default artifacts directory of the project at `project`, created mode 0700 and
/// checked to be ours and private.
pub fn default_artifacts_dir(project: &Path) -> Result<PathBuf, String> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in project.as_os_str().as_encoded_bytes() {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3);
    }
    let dir = state_root()?.join(format!("{hash:016x}"));
    private_dir(&dir)?;
    Ok(dir.join("artifacts"))
}

/// Creates `dir` (and missing parents) mode 0700, then refuses it unless it is a directory
/// (not a link) owned by this user with no group or other access.
pub fn private_dir(dir: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let metadata = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let uid = rustix::process::geteuid().as_raw();
    if !metadata.is_dir() {
        return Err(format!(
            "{} is not a directory (a link?); remove it or pass --artifacts-dir",
            dir.display()
        ));
    }
    if metadata.uid() != uid {
        return Err(format!(
            "{} belongs to user {}, not to you (user {uid}); remove it or pass --artifacts-dir",
            dir.display(),
            metadata.uid()
        ));
    }
    if metadata.mode() & 0o077 != 0 {
        return Err(format!(
            "{} is open to other users (mode {:o}); run `chmod 700 {}` or pass --artifacts-dir",
            dir.display(),
            metadata.mode() & 0o777,
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_single_components() {
        assert_eq!(component("build"), "build");
        assert_eq!(component("test 1/2"), "test%201%2F2");
        assert_eq!(
            component("x/../../../escaped"),
            "x%2F..%2F..%2F..%2Fescaped"
        );
        assert_eq!(component(".."), "%2E.");
        assert_eq!(component(".cache"), "%2Ecache");
        assert_eq!(component(""), "%00");
        assert_ne!(component("a/b"), component("a%2Fb"));
    }

    #[test]
    fn private_dirs_are_checked() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        private_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = private_dir(&dir).unwrap_err();
        assert!(error.contains("open to other users (mode 777)"), "{error}");
        let link = root.path().join("link");
        std::os::unix::fs::symlink(root.path().join("a"), &link).unwrap();
        assert!(private_dir(&link).unwrap_err().contains("not a directory"));
    }
}
