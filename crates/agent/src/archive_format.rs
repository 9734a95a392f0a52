//! The zip format podrunner shares with gitlab-runner, so one `cache.zip` or artifacts
//! archive serves both runners. Each rule names the `gitlabhq/gitlab-runner` file (or the
//! library it builds on) it comes from.
//!
//! Written per entry (`helpers/archives/zip_create.go`, Go's `archive/zip` `FileInfoHeader`
//! and `CreateHeader`, and `saracen/fastzip` `archiver.go` behind `FF_USE_FASTZIP`):
//! - the entry's path relative to the project directory, `/`-separated, directories ending
//!   in `/`; the UTF-8 flag (0x800) when the name is UTF-8 (`fh.Flags |= 0x800`);
//! - "version made by" Unix (3) and the full `st_mode` (file type and permission bits) in the
//!   high 16 bits of the external attributes, plus the MS-DOS directory (0x10) and read-only
//!   (0x01) bits (Go's `SetMode`);
//! - regular files deflated (`fh.Method = zip.Deflate`), empty ones stored (fastzip stores
//!   entries of size 0), and, as fastzip does, a file whose deflated form is not smaller is
//!   stored; symbolic links hold their target as the entry's data; other file types (pipes,
//!   sockets, devices) are skipped;
//! - two extra fields in both headers, from `helpers/archives/zip_extra.go` and
//!   `zip_extra_unix.go`: Info-ZIP "new Unix" 0x7875 (version 1, a 4-byte uid, a 4-byte gid)
//!   then the extended timestamp 0x5455 (flags 1, the modification time as 32-bit Unix
//!   seconds); the MS-DOS date and time fields carry the same time (in UTC here; Go uses the
//!   local zone, which is UTC in a job pod).
//!
//! Read back (`helpers/archives/zip_extract.go`, `zip_extra.go`, fastzip `extractor.go`): the
//! mode from the external attributes when the creator is Unix, permission bits only
//! (`file.Mode().Perm()`), applied after the entries are written; the modification time from
//! 0x5455 (else the MS-DOS fields) on files, links and directories (directories last, so
//! their own entries do not change it). podrunner does not restore the uid/gid of 0x7875:
//! gitlab-runner's `Lchown` only succeeds for root, and the agent keeps files owned by the
//! user the job runs as.

use std::time::{SystemTime, UNIX_EPOCH};

/// The extra-field id of Info-ZIP's "new Unix" uid/gid field (`ZipUIDGidFieldType`).
pub const UID_GID_FIELD: u16 = 0x7875;
/// The extra-field id of the extended timestamp (`ZipTimestampFieldType`).
pub const TIMESTAMP_FIELD: u16 = 0x5455;

/// `CACHE_COMPRESSION_LEVEL` / `ARTIFACT_COMPRESSION_LEVEL`, as gitlab-runner's
/// `GetCompressionLevel` (`commands/helpers/archiver.go`) names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompressionLevel {
    /// `fastest`: entries stored, not compressed.
    Fastest,
    /// `fast`: deflate level 1.
    Fast,
    /// `default` or unset: deflate level 5.
    #[default]
    Default,
    /// `slow`: deflate level 7.
    Slow,
    /// `slowest`: deflate level 9.
    Slowest,
}

/// A compression level name gitlab-runner does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("compression level {0:?} is invalid, falling back to default")]
pub struct InvalidLevel(pub String);

impl CompressionLevel {
    /// The level named `name` (`fastest`, `fast`, `default` or empty, `slow`, `slowest`).
    /// gitlab-runner warns about any other name and uses the default: the caller logs the
    /// error's text (the same words as gitlab-runner's warning) and uses
    /// [`CompressionLevel::Default`].
    pub fn from_name(name: &str) -> Result<Self, InvalidLevel> {
        match name {
            "fastest" => Ok(CompressionLevel::Fastest),
            "fast" => Ok(CompressionLevel::Fast),
            "default" | "" => Ok(CompressionLevel::Default),
            "slow" => Ok(CompressionLevel::Slow),
            "slowest" => Ok(CompressionLevel::Slowest),
            other => Err(InvalidLevel(other.to_owned())),
        }
    }

    /// The deflate level, or `None` to store: fastzip's `flateLevels` and its `zip.Store`
    /// for the fastest level (`commands/helpers/archive/fastzip/zip_fastzip_archiver.go`).
    /// gitlab-runner's legacy archiver (without `FF_USE_FASTZIP`) ignores the level;
    /// podrunner always honours it.
    pub fn deflate_level(self) -> Option<u32> {
        match self {
            CompressionLevel::Fastest => None,
            CompressionLevel::Fast => Some(1),
            CompressionLevel::Default => Some(5),
            CompressionLevel::Slow => Some(7),
            CompressionLevel::Slowest => Some(9),
        }
    }
}

/// The uid/gid and timestamp extra fields of one entry, as gitlab-runner writes them.
pub fn unix_extra(uid: u32, gid: u32, mtime: i64) -> [u8; 24] {
    let mut extra = [0u8; 24];
    extra[0..2].copy_from_slice(&UID_GID_FIELD.to_le_bytes());
    extra[2..4].copy_from_slice(&11u16.to_le_bytes());
    extra[4] = 1;
    extra[5] = 4;
    extra[6..10].copy_from_slice(&uid.to_le_bytes());
    extra[10] = 4;
    extra[11..15].copy_from_slice(&gid.to_le_bytes());
    extra[15..17].copy_from_slice(&TIMESTAMP_FIELD.to_le_bytes());
    extra[17..19].copy_from_slice(&5u16.to_le_bytes());
    extra[19] = 1;
    extra[20..24].copy_from_slice(&(mtime.clamp(0, u32::MAX as i64) as u32).to_le_bytes());
    extra
}

/// The modification time of an extended-timestamp field in `extra`, if any (flags bit 0).
pub fn extended_mtime(extra: &[u8]) -> Option<i64> {
    let mut rest = extra;
    let mut found = None;
    while rest.len() >= 4 {
        let id = u16::from_le_bytes([rest[0], rest[1]]);
        let len = u16::from_le_bytes([rest[2], rest[3]]) as usize;
        let Some(data) = rest.get(4..4 + len) else {
            break;
        };
        if id == TIMESTAMP_FIELD && data.len() >= 5 && data[0] & 1 == 1 {
            found = Some(u32::from_le_bytes([data[1], data[2], data[3], data[4]]) as i64);
        }
        rest = &rest[4 + len..];
    }
    found
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The MS-DOS (time, date) fields of Unix seconds, in UTC, clamped to 1980..=2107.
pub fn dos_time(unix: i64) -> (u16, u16) {
    let min = days_from_civil(1980, 1, 1) * 86_400;
    let max = days_from_civil(2107, 12, 31) * 86_400 + 86_399;
    let t = unix.clamp(min, max);
    let (year, month, day) = civil_from_days(t.div_euclid(86_400));
    let secs = t.rem_euclid(86_400);
    let time = ((secs / 3600) << 11) | (((secs % 3600) / 60) << 5) | ((secs % 60) / 2);
    let date = ((year - 1980) << 9) | (month << 5) | day;
    (time as u16, date as u16)
}

/// Unix seconds of MS-DOS date/time parts read as UTC.
pub fn unix_from_dos(year: u16, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> i64 {
    days_from_civil(year.into(), month.into(), day.into()) * 86_400
        + i64::from(hour) * 3600
        + i64::from(minute) * 60
        + i64::from(second)
}

/// Unix seconds of a file time (negative before 1970).
pub fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_as_gitlab_runner_names_and_maps_them() {
        let names = ["fastest", "fast", "default", "", "slow", "slowest"];
        let levels: Vec<Option<u32>> = names
            .iter()
            .map(|n| CompressionLevel::from_name(n).unwrap().deflate_level())
            .collect();
        assert_eq!(levels, [None, Some(1), Some(5), Some(5), Some(7), Some(9)]);
        assert_eq!(
            CompressionLevel::from_name("maximum")
                .unwrap_err()
                .to_string(),
            "compression level \"maximum\" is invalid, falling back to default"
        );
    }

    #[test]
    fn dos_time_round_trips_and_clamps() {
        // 2024-02-29 13:45:58 UTC
        let t = days_from_civil(2024, 2, 29) * 86_400 + 13 * 3600 + 45 * 60 + 58;
        let (time, date) = dos_time(t);
        assert_eq!(date >> 9, 44);
        assert_eq!((date >> 5) & 0xf, 2);
        assert_eq!(date & 0x1f, 29);
        assert_eq!(
            unix_from_dos(
                1980 + (date >> 9),
                ((date >> 5) & 0xf) as u8,
                (date & 0x1f) as u8,
                (time >> 11) as u8,
                ((time >> 5) & 0x3f) as u8,
                ((time & 0x1f) * 2) as u8
            ),
            t
        );
        assert_eq!(dos_time(0), (0, (1 << 5) | 1));
    }

    #[test]
    fn extra_fields_parse_back() {
        let extra = unix_extra(1000, 100, 1_700_000_000);
        assert_eq!(extended_mtime(&extra), Some(1_700_000_000));
        assert_eq!(extended_mtime(&extra[..20]), None, "truncated field");
        assert_eq!(extended_mtime(&[]), None);
    }
}
