//! The runner manager's `system_id`: `s_` + 12 hex characters of HMAC-SHA256(machine-id,
//! "gitlab-runner"), or `r_` + 12 random alphanumerics when there is no machine ID; kept in
//! `.runner_system_id` beside `config.toml` so it survives restarts (gitlab-runner's rules:
//! package `configfile`, `system_id.go`). In a Kubernetes pod the machine ID would be the image's,
//! the same for every replica, so there the ID comes from the pod's UID instead
//! ([`from_pod_uid`]): one per replica, for the life of its pod.

use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The file name, beside `config.toml`.
pub const SYSTEM_ID_FILE: &str = ".runner_system_id";

/// Whether `id` has the shape GitLab accepts: `^[sr]_[0-9a-zA-Z]{12}$`.
pub fn is_valid(id: &str) -> bool {
    let bytes = id.as_bytes();
    bytes.len() == 14
        && matches!(bytes[0], b's' | b'r')
        && bytes[1] == b'_'
        && bytes[2..].iter().all(u8::is_ascii_alphanumeric)
}

/// The ID derived from a machine ID.
pub fn from_machine_id(machine_id: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(machine_id.trim().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(b"gitlab-runner");
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("s_{}", &hex[..12])
}

/// The ID of a manager in the pod with this UID (`metadata.uid`, which the API server makes
/// unique per pod and which a container restart keeps): the machine-ID rule with the UID as
/// the machine ID.
pub fn from_pod_uid(uid: &str) -> String {
    from_machine_id(uid)
}

/// A random ID.
pub fn random() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let suffix: String = (0..12)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("r_{suffix}")
}

/// Where the ID is kept for a given `config.toml`.
pub fn path_beside(config_path: &Path) -> PathBuf {
    config_path
        .parent()
        .unwrap_or(Path::new("."))
        .join(SYSTEM_ID_FILE)
}

/// Reads the kept ID, or makes one (from `/etc/machine-id` when present) and keeps it.
pub fn load_or_create(config_path: &Path) -> std::io::Result<String> {
    let path = path_beside(config_path);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim();
        if is_valid(id) {
            return Ok(id.to_owned());
        }
    }
    let machine_id = ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .filter(|m| !m.trim().is_empty());
    let id = machine_id
        .map(|m| from_machine_id(&m))
        .unwrap_or_else(random);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, format!("{id}\n"))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_gitlabs_shape_and_are_stable() {
        let a = from_machine_id("0123456789abcdef0123456789abcdef\n");
        assert!(is_valid(&a) && a.starts_with("s_"), "{a}");
        assert_eq!(a, from_machine_id("0123456789abcdef0123456789abcdef"));
        assert_ne!(a, from_machine_id("fedcba9876543210fedcba9876543210"));
        let r = random();
        assert!(is_valid(&r) && r.starts_with("r_"), "{r}");
        assert!(!is_valid("s_short") && !is_valid("x_0123456789ab") && !is_valid("s_0123456789a!"));
    }

    /// Replicas differ (their pods' UIDs do), one pod's ID never changes.
    #[test]
    fn one_id_per_pod() {
        let a = from_pod_uid("0b1c2d3e-0000-4000-8000-000000000001");
        let b = from_pod_uid("0b1c2d3e-0000-4000-8000-000000000002");
        assert!(is_valid(&a) && is_valid(&b), "{a} {b}");
        assert_ne!(a, b);
        assert_eq!(a, from_pod_uid("0b1c2d3e-0000-4000-8000-000000000001"));
    }

    #[test]
    fn kept_beside_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        let first = load_or_create(&config).unwrap();
        assert_eq!(load_or_create(&config).unwrap(), first);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(SYSTEM_ID_FILE))
                .unwrap()
                .trim(),
            first
        );
    }
}
