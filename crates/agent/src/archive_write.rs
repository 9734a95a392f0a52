//! Zip creation on every core with bounded memory.
//!
//! Files are cut into chunks of [`CHUNK`] bytes; a small pool of workers reads and deflates
//! chunks (each chunk a raw deflate stream of its own, ended by a sync flush, the last one by
//! the final block, so their concatenation is one valid deflate stream, as `pigz` does) while
//! the calling thread writes them to the archive in order. At most [`WINDOW`] chunks are in
//! flight, so memory stays near `WINDOW × CHUNK` whatever the archive's size. An entry of one
//! chunk gets a complete local header; a longer one gets its CRC and sizes written back into
//! the header once its last chunk is out (the archive is a file, so no data descriptor is
//! needed). The format of every entry is [`crate::archive_format`]'s.
//!
//! A file is archived as large as it was when the archive started: a file growing meanwhile
//! is cut at that size, one shrinking ends early.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, mpsc};

use flate2::{Compress, Compression, FlushCompress, Status};

use crate::archive_format::{CompressionLevel, dos_time, unix_extra, unix_seconds};
use crate::files::FilesError;

/// Bytes of a file one worker reads and deflates at a time.
pub const CHUNK: usize = 1 << 20;
/// Chunks read, deflated or waiting to be written at any time.
pub const WINDOW: usize = 8;
/// Above this size an entry reserves a zip64 field in its local header.
const ZIP64_FROM: u64 = 0xF000_0000;

/// How an archive is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZipOptions {
    /// How hard entries are compressed.
    pub level: CompressionLevel,
}

#[derive(Debug)]
enum ItemKind {
    Dir,
    Link(Vec<u8>),
    File,
}

/// One entry to write, from `lstat` before any data is read.
#[derive(Debug)]
struct Item {
    path: PathBuf,
    name: Vec<u8>,
    kind: ItemKind,
    mode: u32,
    mtime: i64,
    uid: u32,
    gid: u32,
    size: u64,
    chunks: u32,
}

/// One chunk, read and (maybe) deflated.
struct Chunk {
    data: Vec<u8>,
    crc: crc32fast::Hasher,
    raw: u64,
    stored: bool,
}

/// What the central directory needs of a written entry.
struct Central {
    name: Vec<u8>,
    method: u16,
    time: u16,
    date: u16,
    crc: u32,
    compressed: u64,
    size: u64,
    offset: u64,
    external: u32,
    extra: [u8; 24],
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FilesError + '_ {
    move |source| FilesError::Io {
        path: path.to_owned(),
        source,
    }
}

/// How many workers deflate: the cores, at most four.
fn workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

fn plan(
    root: &Path,
    entries: &std::collections::BTreeSet<PathBuf>,
) -> Result<Vec<Item>, FilesError> {
    let mut items = Vec::with_capacity(entries.len());
    for relative in entries {
        let path = root.join(relative);
        // A file gone since it was collected is skipped, as gitlab-runner's "File ignored".
        let Ok(metadata) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let file_type = metadata.file_type();
        let mut name = relative.as_os_str().as_bytes().to_vec();
        let (kind, size) = if file_type.is_dir() {
            name.push(b'/');
            (ItemKind::Dir, 0)
        } else if file_type.is_symlink() {
            let target = std::fs::read_link(&path).map_err(io(&path))?;
            let target = target.as_os_str().as_bytes().to_vec();
            let len = target.len() as u64;
            (ItemKind::Link(target), len)
        } else if file_type.is_file() {
            (ItemKind::File, metadata.len())
        } else {
            continue;
        };
        let chunks = match kind {
            ItemKind::File => size.div_ceil(CHUNK as u64).max(1) as u32,
            _ => 1,
        };
        items.push(Item {
            path,
            name,
            kind,
            mode: metadata.mode(),
            mtime: metadata.modified().map(unix_seconds).unwrap_or(0),
            uid: metadata.uid(),
            gid: metadata.gid(),
            size,
            chunks,
        });
    }
    Ok(items)
}

/// Reads `len` bytes of `path` from `offset` (fewer at its end), without following a link.
fn read_chunk(path: &Path, offset: u64, len: usize, buf: &mut Vec<u8>) -> Result<(), FilesError> {
    buf.clear();
    if len == 0 {
        return Ok(());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(io(path))?;
    buf.resize(len, 0);
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(path)(e)),
        }
    }
    buf.truncate(filled);
    Ok(())
}

/// Deflates `input` as one piece of a raw deflate stream: ended by a sync flush, or by the
/// final block when `last`.
fn deflate(compress: &mut Compress, input: &[u8], last: bool) -> std::io::Result<Vec<u8>> {
    compress.reset();
    // Room for the worst case, so the output is never reallocated.
    let mut out = Vec::with_capacity(input.len() + input.len() / 8 + 4096);
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let start = compress.total_in();
    loop {
        let consumed = (compress.total_in() - start) as usize;
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(64 << 10));
        }
        let status = compress
            .compress_vec(&input[consumed..], &mut out, flush)
            .map_err(std::io::Error::other)?;
        let done = (compress.total_in() - start) as usize == input.len();
        match status {
            Status::StreamEnd => break,
            _ if !last && done && out.len() < out.capacity() => break,
            _ => {}
        }
    }
    Ok(out)
}

/// Bytes of a chunk deflated quickly to guess whether the chunk compresses at all.
const PROBE: usize = 32 << 10;

/// Whether the start of `input` does not shrink by 3% at deflate level 1: deflating the rest
/// would spend time for nothing (archives, images, native modules). Small inputs are not
/// probed; deflating them is cheap and a larger result is stored anyway.
fn incompressible(probe: &mut Compress, input: &[u8]) -> bool {
    if input.len() < 2 * PROBE {
        return false;
    }
    probe.reset();
    // Room for the worst case (literals of 9 bits), so one call always finishes.
    let mut out = Vec::with_capacity(2 * PROBE + 4096);
    match probe.compress_vec(&input[..PROBE], &mut out, FlushCompress::Finish) {
        Ok(Status::StreamEnd) => out.len() * 100 > PROBE * 97,
        _ => true,
    }
}

/// `input` as stored (uncompressed) deflate blocks, the last one final when `last`: a piece
/// of a deflate stream that starts and ends on a byte boundary.
fn stored_blocks(input: &[u8], last: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 65_535 * 5 + 5);
    let mut pieces = input.chunks(65_535).peekable();
    if pieces.peek().is_none() {
        out.extend_from_slice(&[u8::from(last), 0, 0, 0xff, 0xff]);
    }
    while let Some(piece) = pieces.next() {
        let final_block = last && pieces.peek().is_none();
        let len = piece.len() as u16;
        out.push(u8::from(final_block));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(piece);
    }
    out
}

fn work(
    item: &Item,
    chunk: u32,
    level: Option<u32>,
    (compress, probe): (&mut Compress, &mut Compress),
    buf: &mut Vec<u8>,
) -> Result<Chunk, FilesError> {
    let mut crc = crc32fast::Hasher::new();
    match &item.kind {
        ItemKind::Dir => Ok(Chunk {
            data: Vec::new(),
            crc,
            raw: 0,
            stored: true,
        }),
        ItemKind::Link(target) => {
            crc.update(target);
            Ok(Chunk {
                data: target.clone(),
                crc,
                raw: target.len() as u64,
                stored: true,
            })
        }
        ItemKind::File => {
            let offset = u64::from(chunk) * CHUNK as u64;
            let len = item.size.saturating_sub(offset).min(CHUNK as u64) as usize;
            read_chunk(&item.path, offset, len, buf)?;
            crc.update(buf);
            let raw = buf.len() as u64;
            let last = chunk + 1 == item.chunks;
            let single = item.chunks == 1;
            let incompressible = level.is_some() && incompressible(probe, buf);
            let stored = |data: Vec<u8>, stored: bool| Chunk {
                data,
                crc: crc.clone(),
                raw,
                stored,
            };
            match level {
                Some(_) if !(single && (buf.is_empty() || incompressible)) => {
                    let data = if incompressible {
                        stored_blocks(buf, last)
                    } else {
                        deflate(compress, buf, last).map_err(io(&item.path))?
                    };
                    if single && data.len() >= buf.len() {
                        Ok(stored(std::mem::take(buf), true))
                    } else if data.len() > buf.len() + buf.len() / 1000 + 64 {
                        // Deflate made it larger: the same bytes as stored deflate blocks.
                        Ok(stored(stored_blocks(buf, last), false))
                    } else {
                        Ok(stored(data, false))
                    }
                }
                _ => Ok(stored(std::mem::take(buf), true)),
            }
        }
    }
}

/// Where the in-order writer stands, for the workers' window.
struct Progress {
    written: Mutex<usize>,
    moved: Condvar,
    stop: AtomicBool,
}

/// Writes a zip of `entries` (relative to `root`) to `target` with `options`; returns how
/// many entries it holds.
pub fn write_zip_with(
    root: &Path,
    entries: &std::collections::BTreeSet<PathBuf>,
    target: &Path,
    options: &ZipOptions,
) -> Result<u64, FilesError> {
    let items = plan(root, entries)?;
    let jobs: Vec<(u32, u32)> = items
        .iter()
        .enumerate()
        .flat_map(|(i, item)| (0..item.chunks).map(move |c| (i as u32, c)))
        .collect();
    let file = std::fs::File::create(target).map_err(io(target))?;
    let level = options.level.deflate_level();
    let next = AtomicUsize::new(0);
    let progress = Progress {
        written: Mutex::new(0),
        moved: Condvar::new(),
        stop: AtomicBool::new(false),
    };
    let (tx, rx) = mpsc::sync_channel::<(usize, Result<Chunk, FilesError>)>(WINDOW);
    let result = std::thread::scope(|scope| {
        for _ in 0..workers().min(jobs.len().max(1)) {
            let tx = tx.clone();
            let (items, jobs, next, progress) = (&items, &jobs, &next, &progress);
            scope.spawn(move || {
                let mut compress = Compress::new(Compression::new(level.unwrap_or(0)), false);
                let mut probe = Compress::new(Compression::new(1), false);
                let mut buf = Vec::new();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= jobs.len() {
                        break;
                    }
                    {
                        let mut written =
                            progress.written.lock().unwrap_or_else(|e| e.into_inner());
                        while index >= *written + WINDOW && !progress.stop.load(Ordering::Relaxed) {
                            written = progress
                                .moved
                                .wait(written)
                                .unwrap_or_else(|e| e.into_inner());
                        }
                    }
                    if progress.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (item, chunk) = jobs[index];
                    let out = work(
                        &items[item as usize],
                        chunk,
                        level,
                        (&mut compress, &mut probe),
                        &mut buf,
                    );
                    if tx.send((index, out)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let result = write_in_order(&items, &jobs, file, target, &rx, &progress);
        {
            // Under the lock, so no worker checks `stop` and then misses the wake-up.
            let _written = progress.written.lock().unwrap_or_else(|e| e.into_inner());
            progress.stop.store(true, Ordering::Relaxed);
        }
        progress.moved.notify_all();
        drop(rx);
        result
    });
    if result.is_err() {
        let _ = std::fs::remove_file(target);
    }
    result
}

/// The entry being written: where its header is, its CRC and sizes so far.
struct Open {
    header_at: u64,
    crc: crc32fast::Hasher,
    compressed: u64,
    size: u64,
    zip64: bool,
    method: u16,
}

struct Out {
    writer: BufWriter<std::fs::File>,
    offset: u64,
}

impl Out {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }
}

fn write_in_order(
    items: &[Item],
    jobs: &[(u32, u32)],
    file: std::fs::File,
    target: &Path,
    rx: &mpsc::Receiver<(usize, Result<Chunk, FilesError>)>,
    progress: &Progress,
) -> Result<u64, FilesError> {
    let mut out = Out {
        writer: BufWriter::with_capacity(256 << 10, file),
        offset: 0,
    };
    let mut central: Vec<Central> = Vec::with_capacity(items.len());
    let mut pending: BTreeMap<usize, Chunk> = BTreeMap::new();
    let mut next = 0;
    let mut open: Option<Open> = None;
    while next < jobs.len() {
        let Some(chunk) = pending.remove(&next) else {
            match rx.recv() {
                Ok((index, chunk)) => {
                    pending.insert(index, chunk?);
                }
                Err(_) => {
                    return Err(fail_of(target)(std::io::Error::other(
                        "an archive worker stopped",
                    )));
                }
            }
            continue;
        };
        let (item_index, chunk_index) = jobs[next];
        let item = &items[item_index as usize];
        let method = if chunk.stored { 0u16 } else { 8 };
        let extra = unix_extra(item.uid, item.gid, item.mtime);
        let (time, date) = dos_time(item.mtime);
        let utf8 = std::str::from_utf8(&item.name).is_ok();
        let flags: u16 = if utf8 { 0x800 } else { 0 };
        if chunk_index == 0 {
            let single = item.chunks == 1;
            let zip64 = !single && item.size >= ZIP64_FROM;
            let header_at = out.offset;
            let mut header = Vec::with_capacity(30 + item.name.len() + 44);
            header.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
            header.extend_from_slice(&(if zip64 { 45u16 } else { 20 }).to_le_bytes());
            header.extend_from_slice(&flags.to_le_bytes());
            header.extend_from_slice(&method.to_le_bytes());
            header.extend_from_slice(&time.to_le_bytes());
            header.extend_from_slice(&date.to_le_bytes());
            let (crc, compressed, size) = if single {
                (
                    chunk.crc.clone().finalize(),
                    chunk.data.len() as u32,
                    chunk.raw as u32,
                )
            } else if zip64 {
                (0, u32::MAX, u32::MAX)
            } else {
                (0, 0, 0)
            };
            header.extend_from_slice(&crc.to_le_bytes());
            header.extend_from_slice(&compressed.to_le_bytes());
            header.extend_from_slice(&size.to_le_bytes());
            header.extend_from_slice(&(item.name.len() as u16).to_le_bytes());
            header.extend_from_slice(
                &((extra.len() + if zip64 { 20 } else { 0 }) as u16).to_le_bytes(),
            );
            header.extend_from_slice(&item.name);
            if zip64 {
                header.extend_from_slice(&0x0001u16.to_le_bytes());
                header.extend_from_slice(&16u16.to_le_bytes());
                header.extend_from_slice(&[0u8; 16]);
            }
            header.extend_from_slice(&extra);
            out.put(&header).map_err(fail_of(target))?;
            open = Some(Open {
                header_at,
                crc: crc32fast::Hasher::new(),
                compressed: 0,
                size: 0,
                zip64,
                method,
            });
        }
        out.put(&chunk.data).map_err(fail_of(target))?;
        let Some(mut entry) = open.take() else {
            return Err(fail_of(target)(std::io::Error::other(
                "chunk without an entry",
            )));
        };
        entry.crc.combine(&chunk.crc);
        entry.compressed += chunk.data.len() as u64;
        entry.size += chunk.raw;
        let Open {
            header_at,
            compressed,
            size,
            zip64,
            ..
        } = entry;
        if chunk_index + 1 == item.chunks {
            let crc = entry.crc.finalize();
            if item.chunks > 1 {
                if !zip64 && (compressed > u32::MAX as u64 || size > u32::MAX as u64) {
                    return Err(fail_of(target)(std::io::Error::other(format!(
                        "{} grew past 4 GiB while it was archived",
                        item.path.display()
                    ))));
                }
                out.writer.flush().map_err(fail_of(target))?;
                let file = out.writer.get_ref();
                file.write_at(&crc.to_le_bytes(), header_at + 14)
                    .map_err(fail_of(target))?;
                if zip64 {
                    let mut sizes = [0u8; 16];
                    sizes[..8].copy_from_slice(&size.to_le_bytes());
                    sizes[8..].copy_from_slice(&compressed.to_le_bytes());
                    file.write_at(&sizes, header_at + 30 + item.name.len() as u64 + 4)
                        .map_err(fail_of(target))?;
                } else {
                    let mut sizes = [0u8; 8];
                    sizes[..4].copy_from_slice(&(compressed as u32).to_le_bytes());
                    sizes[4..].copy_from_slice(&(size as u32).to_le_bytes());
                    file.write_at(&sizes, header_at + 18)
                        .map_err(fail_of(target))?;
                }
            }
            let mut external = item.mode << 16;
            if matches!(item.kind, ItemKind::Dir) {
                external |= 0x10;
            }
            if item.mode & 0o200 == 0 {
                external |= 0x01;
            }
            central.push(Central {
                name: item.name.clone(),
                method: entry.method,
                time,
                date,
                crc,
                compressed,
                size,
                offset: header_at,
                external,
                extra,
            });
        } else {
            open = Some(entry);
        }
        next += 1;
        *progress.written.lock().unwrap_or_else(|e| e.into_inner()) = next;
        progress.moved.notify_all();
    }
    write_central(&mut out, &central).map_err(fail_of(target))?;
    out.writer.flush().map_err(fail_of(target))?;
    Ok(central.len() as u64)
}

fn fail_of(target: &Path) -> impl Fn(std::io::Error) -> FilesError + '_ {
    move |source| FilesError::Io {
        path: target.to_owned(),
        source,
    }
}

/// The central directory, with zip64 records where sizes, offsets or the count need them.
fn write_central(out: &mut Out, central: &[Central]) -> std::io::Result<()> {
    let start = out.offset;
    for entry in central {
        let mut zip64 = Vec::new();
        let size = if entry.size >= u32::MAX as u64 {
            zip64.extend_from_slice(&entry.size.to_le_bytes());
            u32::MAX
        } else {
            entry.size as u32
        };
        let compressed = if entry.compressed >= u32::MAX as u64 {
            zip64.extend_from_slice(&entry.compressed.to_le_bytes());
            u32::MAX
        } else {
            entry.compressed as u32
        };
        let offset = if entry.offset >= u32::MAX as u64 {
            zip64.extend_from_slice(&entry.offset.to_le_bytes());
            u32::MAX
        } else {
            entry.offset as u32
        };
        let version: u16 = if zip64.is_empty() { 20 } else { 45 };
        let utf8 = std::str::from_utf8(&entry.name).is_ok();
        let mut record = Vec::with_capacity(46 + entry.name.len() + 48);
        record.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        record.extend_from_slice(&((3u16 << 8) | version).to_le_bytes());
        record.extend_from_slice(&version.to_le_bytes());
        record.extend_from_slice(&(if utf8 { 0x800u16 } else { 0 }).to_le_bytes());
        record.extend_from_slice(&entry.method.to_le_bytes());
        record.extend_from_slice(&entry.time.to_le_bytes());
        record.extend_from_slice(&entry.date.to_le_bytes());
        record.extend_from_slice(&entry.crc.to_le_bytes());
        record.extend_from_slice(&compressed.to_le_bytes());
        record.extend_from_slice(&size.to_le_bytes());
        record.extend_from_slice(&(entry.name.len() as u16).to_le_bytes());
        let extra_len = entry.extra.len() + if zip64.is_empty() { 0 } else { 4 + zip64.len() };
        record.extend_from_slice(&(extra_len as u16).to_le_bytes());
        record.extend_from_slice(&0u16.to_le_bytes()); // comment
        record.extend_from_slice(&0u16.to_le_bytes()); // disk
        record.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
        record.extend_from_slice(&entry.external.to_le_bytes());
        record.extend_from_slice(&offset.to_le_bytes());
        record.extend_from_slice(&entry.name);
        if !zip64.is_empty() {
            record.extend_from_slice(&0x0001u16.to_le_bytes());
            record.extend_from_slice(&(zip64.len() as u16).to_le_bytes());
            record.extend_from_slice(&zip64);
        }
        record.extend_from_slice(&entry.extra);
        out.put(&record)?;
    }
    let size = out.offset - start;
    let count = central.len() as u64;
    if count >= 0xFFFF || size >= u32::MAX as u64 || start >= u32::MAX as u64 {
        let record_at = out.offset;
        let mut end64 = Vec::with_capacity(56 + 20);
        end64.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
        end64.extend_from_slice(&44u64.to_le_bytes());
        end64.extend_from_slice(&((3u16 << 8) | 45).to_le_bytes());
        end64.extend_from_slice(&45u16.to_le_bytes());
        end64.extend_from_slice(&0u32.to_le_bytes());
        end64.extend_from_slice(&0u32.to_le_bytes());
        end64.extend_from_slice(&count.to_le_bytes());
        end64.extend_from_slice(&count.to_le_bytes());
        end64.extend_from_slice(&size.to_le_bytes());
        end64.extend_from_slice(&start.to_le_bytes());
        end64.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
        end64.extend_from_slice(&0u32.to_le_bytes());
        end64.extend_from_slice(&record_at.to_le_bytes());
        end64.extend_from_slice(&1u32.to_le_bytes());
        out.put(&end64)?;
    }
    let mut end = Vec::with_capacity(22);
    end.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    end.extend_from_slice(&0u16.to_le_bytes());
    end.extend_from_slice(&0u16.to_le_bytes());
    let short = count.min(0xFFFF) as u16;
    end.extend_from_slice(&short.to_le_bytes());
    end.extend_from_slice(&short.to_le_bytes());
    end.extend_from_slice(&(size.min(u32::MAX as u64) as u32).to_le_bytes());
    end.extend_from_slice(&(start.min(u32::MAX as u64) as u32).to_le_bytes());
    end.extend_from_slice(&0u16.to_le_bytes());
    out.put(&end)
}
