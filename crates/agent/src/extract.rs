//! Zip extraction that cannot escape its target directory: the one path for dependency
//! artifacts, caches and `podrunner exec`.
//!
//! The whole archive is checked before anything is written: entry names (no `..`, no absolute
//! paths), symbolic-link entries (their targets must stay inside the target), entries beneath
//! another entry's link or file, duplicate names, overlapping entries, and the bounds on entry
//! count, total size and compression ratio. The target directory is checked too, without
//! following links: an existing link on the way to an entry refuses the archive. So a refused
//! archive leaves nothing behind.
//!
//! Writing then walks every entry down from the target directory one component at a time
//! (`openat` with `O_NOFOLLOW`), so a link planted between the check and the write makes the
//! write fail instead of following it. Directories are made first, in path order; files and
//! links are then written by a few workers at once (each reading the archive at its own
//! offset, a bounded buffer each), and directory modes and times are set last, deepest
//! first. An entry that inflates to more than its declared size fails the extraction.
//! Modification times are restored as [`crate::archive_format`] says. An entry over an existing link or file replaces it,
//! as gitlab-runner's extractor does (`helpers/archives/zip_extract.go` in
//! `gitlabhq/gitlab-runner` removes the path before creating the file or link), and modes
//! are applied as permission bits only (`file.Mode().Perm()` there).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Bounds that stop zip bombs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most entries an archive may have.
    pub max_entries: usize,
    /// Most bytes all entries may add up to, uncompressed.
    pub max_total_bytes: u64,
    /// Highest uncompressed-to-compressed ratio of one entry. Deflate cannot exceed about
    /// 1032:1, so a higher declared ratio is a forged size.
    pub max_ratio: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 1_000_000,
            max_total_bytes: 64 << 30,
            max_ratio: 1100,
        }
    }
}

/// The longest symbolic-link target an entry may hold (Linux's `PATH_MAX`).
const MAX_LINK_TARGET: u64 = 4096;
/// Links followed while checking where a link leads (Linux's `MAXSYMLINKS`).
const MAX_LINK_HOPS: usize = 40;

/// Why an archive was not extracted.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The archive cannot be opened.
    #[error("cannot open the archive {archive}: {source}")]
    Open {
        /// The archive.
        archive: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The archive is not a readable zip file, or its headers disagree.
    #[error("the archive {archive} cannot be read: {source}")]
    Zip {
        /// The archive.
        archive: PathBuf,
        /// Why.
        source: zip::result::ZipError,
    },
    /// An entry is refused; nothing was written.
    #[error("the archive {archive} is refused, nothing was extracted: entry {entry:?} {reason}")]
    Refused {
        /// The archive.
        archive: PathBuf,
        /// The entry's name in the archive.
        entry: String,
        /// Why.
        reason: String,
    },
    /// A bound against zip bombs is exceeded; nothing was written.
    #[error("the archive {archive} is refused, nothing was extracted: {reason}")]
    TooLarge {
        /// The archive.
        archive: PathBuf,
        /// Which bound, and by how much.
        reason: String,
    },
    /// Writing an entry failed after the checks passed.
    #[error("cannot extract {entry:?} of the archive {archive} into {root}: {source}")]
    Write {
        /// The archive.
        archive: PathBuf,
        /// The target directory.
        root: PathBuf,
        /// The entry's name.
        entry: String,
        /// Why.
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
enum Kind {
    Dir { mode: Option<u32> },
    File { index: usize, mode: Option<u32> },
    Link { target: String },
}

impl Kind {
    fn is_dir(&self) -> bool {
        matches!(self, Kind::Dir { .. })
    }
}

#[derive(Debug, Clone)]
struct Planned {
    name: String,
    kind: Kind,
    /// Unix seconds, from the extended timestamp or else the MS-DOS fields.
    mtime: Option<i64>,
}

/// What is at a path of the target directory, found without following links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existing {
    Absent,
    Dir,
    Link,
    Other,
}

/// Extracts `archive` into `root` with the default [`Limits`]; returns how many files and
/// links it wrote.
pub fn extract_zip(archive: &Path, root: &Path) -> Result<u64, ExtractError> {
    extract_zip_with(archive, root, &Limits::default())
}

/// Extracts `archive` into `root` within `limits`.
pub fn extract_zip_with(archive: &Path, root: &Path, limits: &Limits) -> Result<u64, ExtractError> {
    let file = std::fs::File::open(archive)
        .and_then(SharedFile::new)
        .map_err(|source| ExtractError::Open {
            archive: archive.to_owned(),
            source,
        })?;
    let zip_error = |source| ExtractError::Zip {
        archive: archive.to_owned(),
        source,
    };
    let mut zip = zip::ZipArchive::new(file).map_err(zip_error)?;
    let plan = check_archive(&mut zip, archive, limits)?;
    std::fs::create_dir_all(root).map_err(|source| ExtractError::Write {
        archive: archive.to_owned(),
        root: root.to_owned(),
        entry: String::new(),
        source,
    })?;
    let root_fd = open_dir(root).map_err(|source| ExtractError::Write {
        archive: archive.to_owned(),
        root: root.to_owned(),
        entry: String::new(),
        source,
    })?;
    check_target(&plan, &root_fd, archive, root)?;
    write(&zip, &plan, &root_fd).map_err(|(entry, source)| ExtractError::Write {
        archive: archive.to_owned(),
        root: root.to_owned(),
        entry,
        source,
    })
}

/// The entry's path as components, or why it has none inside the target.
fn components(name: &str) -> Result<Vec<String>, &'static str> {
    if name.starts_with('/') {
        return Err("is an absolute path");
    }
    if name.contains('\0') {
        return Err("has a NUL byte in its name");
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("climbs out with `..`"),
            other => parts.push(other.to_owned()),
        }
    }
    Ok(parts)
}

/// Every check that needs only the archive.
fn check_archive<R: Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    archive: &Path,
    limits: &Limits,
) -> Result<BTreeMap<Vec<String>, Planned>, ExtractError> {
    let too_large = |reason: String| ExtractError::TooLarge {
        archive: archive.to_owned(),
        reason,
    };
    let refused = |entry: &str, reason: String| ExtractError::Refused {
        archive: archive.to_owned(),
        entry: entry.to_owned(),
        reason,
    };
    if zip.len() > limits.max_entries {
        return Err(too_large(format!(
            "it has {} entries, more than the bound of {}",
            zip.len(),
            limits.max_entries
        )));
    }
    // Duplicate raw names, entries sharing their data (the overlapping-entries zip bomb) and
    // local headers that disagree with the central directory.
    zip.validate_header_consistency()
        .map_err(|source| ExtractError::Zip {
            archive: archive.to_owned(),
            source,
        })?;
    let mut plan: BTreeMap<Vec<String>, Planned> = BTreeMap::new();
    let mut total: u64 = 0;
    for index in 0..zip.len() {
        let mut entry = zip.by_index(index).map_err(|source| ExtractError::Zip {
            archive: archive.to_owned(),
            source,
        })?;
        let name = entry
            .name()
            .map_err(|source| ExtractError::Zip {
                archive: archive.to_owned(),
                source,
            })?
            .into_owned();
        let parts = components(&name).map_err(|why| refused(&name, why.to_owned()))?;
        let size = entry.size();
        let compressed = entry.compressed_size();
        if size > 0 && (compressed == 0 || size / compressed > limits.max_ratio) {
            return Err(too_large(format!(
                "entry {name:?} declares {size} bytes from {compressed} compressed, a ratio above the bound of {}:1",
                limits.max_ratio
            )));
        }
        total = total.saturating_add(size);
        if total > limits.max_total_bytes {
            return Err(too_large(format!(
                "its entries add up to more than the bound of {} bytes uncompressed",
                limits.max_total_bytes
            )));
        }
        let mode = entry.unix_mode();
        let kind = if entry.is_dir() {
            Kind::Dir { mode }
        } else if entry.is_symlink() {
            if size > MAX_LINK_TARGET {
                return Err(refused(
                    &name,
                    format!("is a link whose target is longer than {MAX_LINK_TARGET} bytes"),
                ));
            }
            let mut target = String::new();
            (&mut entry)
                .take(MAX_LINK_TARGET)
                .read_to_string(&mut target)
                .map_err(|e| {
                    refused(&name, format!("is a link whose target cannot be read: {e}"))
                })?;
            Kind::Link { target }
        } else if mode
            .is_some_and(|m| matches!(m & 0o170000, 0o010000 | 0o020000 | 0o060000 | 0o140000))
        {
            // Pipes, sockets and devices are skipped, as gitlab-runner ignores them.
            continue;
        } else {
            Kind::File { index, mode }
        };
        if parts.is_empty() {
            if kind.is_dir() {
                continue;
            }
            return Err(refused(&name, "names no file".to_owned()));
        }
        if let Some(earlier) = plan.get(&parts) {
            if earlier.kind.is_dir() && kind.is_dir() {
                continue;
            }
            return Err(refused(
                &name,
                format!("names the same path as the entry {:?}", earlier.name),
            ));
        }
        let mtime = entry
            .extra_data_fields()
            .find_map(|field| match field {
                zip::extra_fields::ExtraField::ExtendedTimestamp(t) => t.mod_time(),
                _ => None,
            })
            .map(i64::from)
            .or_else(|| {
                entry.last_modified().map(|t| {
                    crate::archive_format::unix_from_dos(
                        t.year(),
                        t.month(),
                        t.day(),
                        t.hour(),
                        t.minute(),
                        t.second(),
                    )
                })
            });
        plan.insert(parts, Planned { name, kind, mtime });
    }
    let links: BTreeMap<&[String], &str> = plan
        .iter()
        .filter_map(|(parts, p)| match &p.kind {
            Kind::Link { target } => Some((parts.as_slice(), target.as_str())),
            _ => None,
        })
        .collect();
    for (parts, planned) in &plan {
        for depth in 1..parts.len() {
            if let Some(above) = plan.get(&parts[..depth])
                && !above.kind.is_dir()
            {
                return Err(refused(
                    &planned.name,
                    format!(
                        "lies beneath the entry {:?}, which is not a directory",
                        above.name
                    ),
                ));
            }
        }
        if let Kind::Link { target } = &planned.kind
            && let Err(why) = resolve_inside(parts, target, &links)
        {
            return Err(refused(
                &planned.name,
                format!("is a link to {target:?}, which {why}"),
            ));
        }
    }
    Ok(plan)
}

/// Follows the link at `at` (and the archive's links it passes) lexically; fails if that
/// leads outside the target.
fn resolve_inside(
    at: &[String],
    target: &str,
    links: &BTreeMap<&[String], &str>,
) -> Result<(), &'static str> {
    if target.starts_with('/') {
        return Err("is an absolute path outside the target directory");
    }
    let mut hops = 0;
    // What is left to walk, innermost first, and where the walk stands.
    let mut pending: Vec<String> = target.split('/').rev().map(str::to_owned).collect();
    let mut position: Vec<String> = at[..at.len() - 1].to_vec();
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "" | "." => {}
            ".." => {
                if position.pop().is_none() {
                    return Err("leads outside the target directory");
                }
            }
            _ => {
                position.push(part);
                if let Some(next) = links.get(position.as_slice()) {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Err("goes through too many links");
                    }
                    if next.starts_with('/') {
                        return Err("goes through a link to an absolute path");
                    }
                    position.pop();
                    pending.extend(next.split('/').rev().map(str::to_owned));
                }
            }
        }
    }
    Ok(())
}

fn existing(dir: &impl AsFd, path: &str) -> std::io::Result<Existing> {
    match rustix::fs::statat(dir, path, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(match FileType::from_raw_mode(stat.st_mode) {
            FileType::Directory => Existing::Dir,
            FileType::Symlink => Existing::Link,
            _ => Existing::Other,
        }),
        Err(Errno::NOENT) => Ok(Existing::Absent),
        Err(e) => Err(e.into()),
    }
}

/// Checks the target directory against the plan without following links and without
/// writing: no link or file on the way to an entry, no directory where a file goes.
fn check_target(
    plan: &BTreeMap<Vec<String>, Planned>,
    root_fd: &OwnedFd,
    archive: &Path,
    root: &Path,
) -> Result<(), ExtractError> {
    let refused = |entry: &str, reason: String| ExtractError::Refused {
        archive: archive.to_owned(),
        entry: entry.to_owned(),
        reason,
    };
    let io = |entry: &str, source: std::io::Error| ExtractError::Write {
        archive: archive.to_owned(),
        root: root.to_owned(),
        entry: entry.to_owned(),
        source,
    };
    // Each prefix is looked at once; a prefix is only looked up after every shorter one was
    // found to be a real directory, so `statat` on the joined path follows no link.
    let mut seen: BTreeMap<Vec<String>, Existing> = BTreeMap::new();
    for (parts, planned) in plan {
        let mut state = Existing::Dir;
        for depth in 1..=parts.len() {
            let prefix = &parts[..depth];
            if state == Existing::Absent {
                break;
            }
            state = match seen.get(prefix) {
                Some(s) => *s,
                None => {
                    let s =
                        existing(root_fd, &prefix.join("/")).map_err(|e| io(&planned.name, e))?;
                    seen.insert(prefix.to_vec(), s);
                    s
                }
            };
            let last = depth == parts.len();
            let replaced_by_dir = plan.get(prefix).is_some_and(|p| p.kind.is_dir());
            let shown = prefix.join("/");
            match (state, last) {
                (Existing::Absent | Existing::Dir, false) => {}
                // An archive directory over a link replaces the link; below it all is new.
                (Existing::Link, false) if replaced_by_dir => state = Existing::Absent,
                (Existing::Link, false) => {
                    return Err(refused(
                        &planned.name,
                        format!(
                            "would be written through {shown:?}, a symbolic link in {}",
                            root.display()
                        ),
                    ));
                }
                (Existing::Other, false) => {
                    return Err(refused(
                        &planned.name,
                        format!(
                            "needs {shown:?} in {} to be a directory, but it is a file",
                            root.display()
                        ),
                    ));
                }
                (Existing::Dir, true) if !planned.kind.is_dir() => {
                    return Err(refused(
                        &planned.name,
                        format!(
                            "would replace the directory {shown:?} in {}",
                            root.display()
                        ),
                    ));
                }
                (Existing::Other, true) if planned.kind.is_dir() => {
                    return Err(refused(
                        &planned.name,
                        format!(
                            "is a directory, but {shown:?} in {} is a file",
                            root.display()
                        ),
                    ));
                }
                (_, true) => {}
            }
        }
    }
    Ok(())
}

fn open_dir(path: &Path) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens `name` in `dir` as a directory, never through a link.
fn open_child_dir(dir: &impl AsFd, name: &str) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Walks `parts` down from `root`, creating missing directories, following no link.
fn walk(root: &OwnedFd, parts: &[String]) -> std::io::Result<OwnedFd> {
    let mut current = root.try_clone()?;
    for part in parts {
        current = match open_child_dir(&current, part) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {
                match rustix::fs::mkdirat(&current, part.as_str(), Mode::from_raw_mode(0o777)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                open_child_dir(&current, part)?
            }
            Err(e) => return Err(e),
        };
    }
    Ok(current)
}

/// Removes a link or file at `name` so an entry can take its place.
fn clear(dir: &impl AsFd, name: &str) -> std::io::Result<()> {
    match existing(dir, name)? {
        Existing::Absent => Ok(()),
        Existing::Dir => Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?),
        Existing::Link | Existing::Other => Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?),
    }
}

/// The archive file, read at an offset of its own by each worker's clone.
#[derive(Debug, Clone)]
struct SharedFile {
    file: std::sync::Arc<std::fs::File>,
    position: u64,
    len: u64,
}

impl SharedFile {
    fn new(file: std::fs::File) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(SharedFile {
            file: std::sync::Arc::new(file),
            position: 0,
            len,
        })
    }
}

impl Read for SharedFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(&*self.file, buf, self.position)?;
        self.position += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for SharedFile {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let position = match to {
            std::io::SeekFrom::Start(n) => Some(n),
            std::io::SeekFrom::End(d) => self.len.checked_add_signed(d),
            std::io::SeekFrom::Current(d) => self.position.checked_add_signed(d),
        };
        self.position = position.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        Ok(self.position)
    }
}

/// How many workers write files: twice the cores (creating small files mostly waits on the
/// kernel), at most eight.
fn workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() * 2)
        .unwrap_or(2)
        .clamp(2, 8)
}

/// Entries a worker takes at once.
const BATCH: usize = 16;

/// Bytes one worker copies at a time.
const COPY_BUFFER: usize = 256 << 10;

type Failure = (String, std::io::Error);

/// The modification time of `planned`, the access time left alone.
fn times(planned: &Planned) -> Option<rustix::fs::Timestamps> {
    planned.mtime.map(|mtime| rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
    })
}

/// Writes the checked plan: directories first (in path order, so an archive directory
/// replaces a link before anything lands below it), then files and links on a few workers,
/// then directory modes and times, deepest first.
fn write(
    zip: &zip::ZipArchive<SharedFile>,
    plan: &BTreeMap<Vec<String>, Planned>,
    root: &OwnedFd,
) -> Result<u64, Failure> {
    let mut parent: Option<(Vec<String>, OwnedFd)> = None;
    for (parts, planned) in plan.iter().filter(|(_, p)| p.kind.is_dir()) {
        let fail = |e: std::io::Error| (planned.name.clone(), e);
        let (dirs, name) = parts.split_at(parts.len() - 1);
        let name = name[0].as_str();
        let dir = match parent.take() {
            Some((path, fd)) if path == dirs => fd,
            _ => walk(root, dirs).map_err(fail)?,
        };
        if existing(&dir, name).map_err(fail)? != Existing::Dir {
            clear(&dir, name).map_err(fail)?;
            rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o777))
                .map_err(|e| fail(e.into()))?;
        }
        parent = Some((dirs.to_vec(), dir));
    }
    drop(parent);

    let leaves: Vec<(&Vec<String>, &Planned)> =
        plan.iter().filter(|(_, p)| !p.kind.is_dir()).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let written = std::sync::atomic::AtomicU64::new(0);
    let failed: std::sync::Mutex<Option<Failure>> = std::sync::Mutex::new(None);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..workers().min(leaves.len()) {
            let mut zip = zip.clone();
            let (leaves, next, written, failed, stop) = (&leaves, &next, &written, &failed, &stop);
            scope.spawn(move || {
                use std::sync::atomic::Ordering::Relaxed;
                let mut parent: Option<(Vec<String>, OwnedFd)> = None;
                let mut buffer = vec![0u8; COPY_BUFFER];
                // Runs of neighbours, so a worker mostly stays in one directory.
                'work: loop {
                    let start = next.fetch_add(BATCH, Relaxed);
                    for &(parts, planned) in leaves.iter().skip(start).take(BATCH) {
                        if stop.load(Relaxed) {
                            break 'work;
                        }
                        match write_leaf(&mut zip, parts, planned, root, &mut parent, &mut buffer) {
                            Ok(()) => {
                                written.fetch_add(1, Relaxed);
                            }
                            Err(e) => {
                                stop.store(true, Relaxed);
                                failed
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .get_or_insert(e);
                                break 'work;
                            }
                        }
                    }
                    if start + BATCH >= leaves.len() {
                        break;
                    }
                }
            });
        }
    });
    if let Some(failure) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(failure);
    }

    for (parts, planned) in plan.iter().rev() {
        let Kind::Dir { mode } = planned.kind else {
            continue;
        };
        let times = times(planned);
        if mode.is_none() && times.is_none() {
            continue;
        }
        let fail = |e: std::io::Error| (planned.name.clone(), e);
        let (dirs, name) = parts.split_at(parts.len() - 1);
        let dir = walk(root, dirs).map_err(fail)?;
        let fd = open_child_dir(&dir, &name[0]).map_err(fail)?;
        if let Some(mode) = mode {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o777))
                .map_err(|e| fail(e.into()))?;
        }
        if let Some(times) = times {
            rustix::fs::futimens(&fd, &times).map_err(|e| fail(e.into()))?;
        }
    }
    Ok(written.into_inner())
}

/// Writes one file or link below its (existing) directory, never through a link.
fn write_leaf(
    zip: &mut zip::ZipArchive<SharedFile>,
    parts: &[String],
    planned: &Planned,
    root: &OwnedFd,
    parent: &mut Option<(Vec<String>, OwnedFd)>,
    buffer: &mut [u8],
) -> Result<(), Failure> {
    let fail = |e: std::io::Error| (planned.name.clone(), e);
    let (dirs, name) = parts.split_at(parts.len() - 1);
    let name = name[0].as_str();
    // Entries are handed out in path order, so siblings mostly share the parent opened last.
    let dir = match parent.take() {
        Some((path, fd)) if path == dirs => fd,
        _ => walk(root, dirs).map_err(fail)?,
    };
    match &planned.kind {
        Kind::Dir { .. } => {}
        Kind::Link { target } => {
            clear(&dir, name).map_err(fail)?;
            rustix::fs::symlinkat(target.as_str(), &dir, name).map_err(|e| fail(e.into()))?;
            if let Some(times) = times(planned) {
                rustix::fs::utimensat(&dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| fail(e.into()))?;
            }
        }
        Kind::File { index, mode } => {
            clear(&dir, name).map_err(fail)?;
            // Without a mode in the archive the umask decides, as for any new file.
            let created = if mode.is_some() { 0o600 } else { 0o666 };
            let fd = rustix::fs::openat(
                &dir,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(created),
            )
            .map_err(|e| fail(e.into()))?;
            let mut output = std::fs::File::from(fd);
            let mut entry = zip
                .by_index(*index)
                .map_err(|e| fail(std::io::Error::other(e)))?;
            let declared = entry.size();
            let mut copied = 0u64;
            loop {
                let n = match entry.read(buffer) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(fail(e)),
                };
                copied += n as u64;
                if copied > declared {
                    return Err(fail(std::io::Error::other(format!(
                        "the entry holds more than the {declared} bytes it declares"
                    ))));
                }
                std::io::Write::write_all(&mut output, &buffer[..n]).map_err(fail)?;
            }
            if let Some(mode) = mode {
                rustix::fs::fchmod(&output, Mode::from_raw_mode(mode & 0o777))
                    .map_err(|e| fail(e.into()))?;
            }
            if let Some(times) = times(planned) {
                rustix::fs::futimens(&output, &times).map_err(|e| fail(e.into()))?;
            }
        }
    }
    *parent = Some((dirs.to_vec(), dir));
    Ok(())
}
