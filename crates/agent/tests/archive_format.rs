//! One archive for both runners: podrunner's zips follow the rules of gitlab-runner's
//! archiver (`helpers/archives/zip_create.go`, `zip_extra.go`, `zip_extra_unix.go` in
//! `gitlabhq/gitlab-runner`, on Go's `archive/zip`), and zips written by those rules extract
//! with their modes, times, links and directories.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use podrunner_agent::files::{self, CompressionLevel, ZipOptions};

const MTIME: i64 = 1_600_000_000;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// One central-directory record, read by hand.
#[derive(Debug)]
struct Record {
    made_by: u16,
    flags: u16,
    method: u16,
    crc: u32,
    compressed: u32,
    size: u32,
    name: String,
    extra: Vec<u8>,
    external: u32,
    offset: u32,
}

fn central(bytes: &[u8]) -> Vec<Record> {
    let end = bytes
        .windows(4)
        .rposition(|w| w == [0x50, 0x4b, 0x05, 0x06])
        .expect("end of central directory");
    let count = u16_at(bytes, end + 10) as usize;
    let mut at = u32_at(bytes, end + 16) as usize;
    let mut records = Vec::new();
    for _ in 0..count {
        assert_eq!(u32_at(bytes, at), 0x0201_4b50);
        let name_len = u16_at(bytes, at + 28) as usize;
        let extra_len = u16_at(bytes, at + 30) as usize;
        let comment_len = u16_at(bytes, at + 32) as usize;
        records.push(Record {
            made_by: u16_at(bytes, at + 4),
            flags: u16_at(bytes, at + 8),
            method: u16_at(bytes, at + 10),
            crc: u32_at(bytes, at + 16),
            compressed: u32_at(bytes, at + 20),
            size: u32_at(bytes, at + 24),
            name: String::from_utf8(bytes[at + 46..at + 46 + name_len].to_vec()).unwrap(),
            extra: bytes[at + 46 + name_len..at + 46 + name_len + extra_len].to_vec(),
            external: u32_at(bytes, at + 38),
            offset: u32_at(bytes, at + 42),
        });
        at += 46 + name_len + extra_len + comment_len;
    }
    records
}

/// gitlab-runner's `createZipExtra`: 0x7875 (version 1, 4-byte uid and gid), then 0x5455
/// (flags 1, 32-bit modification time).
fn runner_extra(uid: u32, gid: u32, mtime: u32) -> Vec<u8> {
    let mut extra = vec![0x75, 0x78, 11, 0, 1, 4];
    extra.extend_from_slice(&uid.to_le_bytes());
    extra.push(4);
    extra.extend_from_slice(&gid.to_le_bytes());
    extra.extend_from_slice(&[0x55, 0x54, 5, 0, 1]);
    extra.extend_from_slice(&mtime.to_le_bytes());
    extra
}

fn set_mtime(path: &Path, mtime: i64) {
    let times = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// 2.5 MiB of text and noise: three chunks for the parallel writer.
fn big_content() -> Vec<u8> {
    let mut content = Vec::with_capacity(5 << 19);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    while content.len() < 5 << 19 {
        if (content.len() / 4096) % 3 == 0 {
            for _ in 0..512 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                content.extend_from_slice(&seed.to_le_bytes());
            }
        } else {
            content.extend_from_slice(b"module.exports = function (a, b) { return a + b; };\n");
        }
    }
    content.truncate(5 << 19);
    content
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode()
}

fn mtime_of(path: &Path) -> i64 {
    std::fs::symlink_metadata(path).unwrap().mtime()
}

/// A tree with every kind of entry, mtimes set, and the entries `collect` finds in it.
fn tree() -> (tempfile::TempDir, BTreeSet<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("lib/private")).unwrap();
    std::fs::write(root.join("lib/tool"), "#!/bin/sh\necho tool\n").unwrap();
    std::fs::write(root.join("lib/private/ro.txt"), "read only").unwrap();
    std::fs::write(root.join("lib/empty"), "").unwrap();
    std::fs::write(root.join("lib/big.bin"), big_content()).unwrap();
    std::os::unix::fs::symlink("private/ro.txt", root.join("lib/link")).unwrap();
    let perms = |p: &str, m| {
        std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(m)).unwrap()
    };
    perms("lib/tool", 0o755);
    perms("lib/private/ro.txt", 0o444);
    perms("lib/private", 0o750);
    for (i, p) in [
        "lib/tool",
        "lib/private/ro.txt",
        "lib/empty",
        "lib/big.bin",
        "lib/link",
        "lib/private",
        "lib",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(&root.join(p), MTIME + i as i64 * 100);
    }
    let collected = files::collect(root, &["lib".into()], &[], &[]).unwrap();
    (dir, collected.entries)
}

#[test]
fn podrunner_archives_carry_gitlab_runners_headers_and_extra_fields() {
    let (dir, entries) = tree();
    let root = dir.path();
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("cache.zip");
    assert_eq!(files::write_zip(root, &entries, &archive).unwrap(), 7);
    let bytes = std::fs::read(&archive).unwrap();
    let records = central(&bytes);
    let names: Vec<&str> = records.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "lib/",
            "lib/big.bin",
            "lib/empty",
            "lib/link",
            "lib/private/",
            "lib/private/ro.txt",
            "lib/tool"
        ]
    );
    for record in &records {
        let path = root.join(record.name.trim_end_matches('/'));
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(record.made_by >> 8, 3, "{}: made by Unix", record.name);
        assert_eq!(record.flags & 0x800, 0x800, "{}: UTF-8 flag", record.name);
        assert_eq!(record.external >> 16, metadata.mode(), "{}", record.name);
        let dos = (u32::from(metadata.is_dir()) * 0x10) | u32::from(metadata.mode() & 0o200 == 0);
        assert_eq!(record.external & 0xff, dos, "{}: MS-DOS bits", record.name);
        assert_eq!(
            record.extra,
            runner_extra(metadata.uid(), metadata.gid(), metadata.mtime() as u32),
            "{}",
            record.name
        );
        // The local header agrees with the central one (CRC and sizes written back).
        let local = record.offset as usize;
        assert_eq!(u32_at(&bytes, local), 0x0403_4b50);
        assert_eq!(u16_at(&bytes, local + 8), record.method);
        assert_eq!(u32_at(&bytes, local + 14), record.crc, "{}", record.name);
        assert_eq!(u32_at(&bytes, local + 18), record.compressed);
        assert_eq!(u32_at(&bytes, local + 22), record.size);
    }
    let method = |name: &str| records.iter().find(|r| r.name == name).unwrap().method;
    assert_eq!(method("lib/big.bin"), 8, "files are deflated");
    assert_eq!(method("lib/empty"), 0, "empty files are stored");
    assert_eq!(
        records
            .iter()
            .find(|r| r.name == "lib/big.bin")
            .unwrap()
            .size,
        5 << 19
    );

    // Another zip reader agrees with every CRC.
    if let Ok(status) = std::process::Command::new("unzip")
        .arg("-tqq")
        .arg(&archive)
        .status()
    {
        assert!(status.success(), "unzip -t");
    } else {
        eprintln!("unzip is not installed: the cross-check with Info-ZIP was skipped");
    }

    let target = tempfile::tempdir().unwrap();
    assert_eq!(files::extract_zip(&archive, target.path()).unwrap(), 5);
    for name in ["lib/tool", "lib/private/ro.txt", "lib/empty", "lib/big.bin"] {
        assert_eq!(
            std::fs::read(target.path().join(name)).unwrap(),
            std::fs::read(root.join(name)).unwrap(),
            "{name}"
        );
    }
    for name in [
        "lib/tool",
        "lib/private/ro.txt",
        "lib/private",
        "lib/link",
        "lib",
    ] {
        assert_eq!(
            mode_of(&target.path().join(name)) & 0o170777,
            mode_of(&root.join(name)) & 0o170777,
            "{name}: mode"
        );
        assert_eq!(
            mtime_of(&target.path().join(name)),
            mtime_of(&root.join(name)),
            "{name}: mtime"
        );
    }
    assert_eq!(
        std::fs::read_link(target.path().join("lib/link")).unwrap(),
        Path::new("private/ro.txt")
    );
}

#[test]
fn compression_levels_store_or_deflate_as_fastzip() {
    let (dir, entries) = tree();
    let out = tempfile::tempdir().unwrap();
    let mut sizes = Vec::new();
    for level in [
        CompressionLevel::Fastest,
        CompressionLevel::Fast,
        CompressionLevel::Slowest,
    ] {
        let archive = out.path().join("a.zip");
        files::write_zip_with(dir.path(), &entries, &archive, &ZipOptions { level }).unwrap();
        let bytes = std::fs::read(&archive).unwrap();
        let big = central(&bytes)
            .into_iter()
            .find(|r| r.name == "lib/big.bin")
            .unwrap();
        assert_eq!(
            big.method,
            if level == CompressionLevel::Fastest {
                0
            } else {
                8
            },
            "{level:?}"
        );
        sizes.push(big.compressed);
        let target = tempfile::tempdir().unwrap();
        files::extract_zip(&archive, target.path()).unwrap();
        assert_eq!(
            std::fs::read(target.path().join("lib/big.bin")).unwrap(),
            big_content()
        );
    }
    assert!(sizes[0] > sizes[1] && sizes[1] >= sizes[2], "{sizes:?}");
}

#[test]
fn incompressible_files_are_stored_in_place_and_never_grow() {
    let dir = tempfile::tempdir().unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = |len: usize| {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            v.extend_from_slice(&seed.to_le_bytes());
        }
        v.truncate(len);
        v
    };
    std::fs::create_dir(dir.path().join("bin")).unwrap();
    // 2.5 MiB of noise, then text: chunks probed as noise become stored deflate blocks
    // (the third, half noise, too), the last chunk of text is deflated.
    let mut mixed = noise(5 << 19);
    mixed.extend(b"text ".repeat(200_000));
    std::fs::write(dir.path().join("bin/mixed.node"), &mixed).unwrap();
    std::fs::write(dir.path().join("bin/small.png"), noise(100_000)).unwrap();
    // Noise to the end: the last stored block is the final one.
    let wasm = noise(3 << 19);
    std::fs::write(dir.path().join("bin/noise.wasm"), &wasm).unwrap();
    let entries = files::collect(dir.path(), &["bin".into()], &[], &[])
        .unwrap()
        .entries;
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("a.zip");
    files::write_zip(dir.path(), &entries, &archive).unwrap();
    let records = central(&std::fs::read(&archive).unwrap());
    let mixed_record = records.iter().find(|r| r.name == "bin/mixed.node").unwrap();
    assert_eq!(mixed_record.method, 8);
    assert!(
        (mixed_record.compressed as usize) < (5 << 19) + 600_000,
        "noise stored, text deflated: {}",
        mixed_record.compressed
    );
    let small = records.iter().find(|r| r.name == "bin/small.png").unwrap();
    assert_eq!((small.method, small.compressed), (0, 100_000));
    if let Ok(status) = std::process::Command::new("unzip")
        .arg("-tqq")
        .arg(&archive)
        .status()
    {
        assert!(status.success(), "unzip -t");
    }
    let target = tempfile::tempdir().unwrap();
    files::extract_zip(&archive, target.path()).unwrap();
    assert_eq!(
        std::fs::read(target.path().join("bin/mixed.node")).unwrap(),
        mixed
    );
    assert_eq!(
        std::fs::read(target.path().join("bin/noise.wasm")).unwrap(),
        wasm
    );
    let wasm_record = records.iter().find(|r| r.name == "bin/noise.wasm").unwrap();
    assert_eq!(wasm_record.method, 8);
    assert!(
        (wasm_record.compressed as usize) < (3 << 19) + 200,
        "never grows"
    );
}

/// One entry as Go's `archive/zip` writes it for gitlab-runner's `createZipEntry`.
struct GoEntry<'a> {
    name: &'a str,
    mode: u32,
    data: &'a [u8],
    mtime: u32,
}

/// A zip by the rules of gitlab-runner's legacy archiver: `zip.FileInfoHeader` (creator
/// Unix, mode in the external attributes with the MS-DOS bits, `Method = Deflate`), the
/// extra fields of `createZipExtra` followed by the extended timestamp Go's `CreateHeader`
/// appends itself, the UTF-8 flag, and for files and links (deflated, links too) a data
/// descriptor after the data with zeros in the local header; directories stored, no
/// descriptor.
fn go_zip(entries: &[GoEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for e in entries {
        let dir = e.name.ends_with('/');
        let mut extra = runner_extra(1000, 1000, e.mtime);
        extra.extend_from_slice(&[0x55, 0x54, 5, 0, 1]);
        extra.extend_from_slice(&e.mtime.to_le_bytes());
        let (method, flags, payload) = if dir {
            (0u16, 0x800u16, Vec::new())
        } else {
            let mut encoder =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(e.data).unwrap();
            (8, 0x808, encoder.finish().unwrap())
        };
        let crc = crc32fast::hash(e.data);
        let offset = out.len() as u32;
        // MS-DOS time of 2020-09-13 12:26:40 UTC (MTIME), the local zone being UTC.
        let (time, date) = (0x6354u16, 0x512du16);
        let header = |sig: u32, central: bool| {
            let mut h = Vec::new();
            h.extend_from_slice(&sig.to_le_bytes());
            if central {
                h.extend_from_slice(&0x0314u16.to_le_bytes());
            }
            h.extend_from_slice(&20u16.to_le_bytes());
            h.extend_from_slice(&flags.to_le_bytes());
            h.extend_from_slice(&method.to_le_bytes());
            h.extend_from_slice(&time.to_le_bytes());
            h.extend_from_slice(&date.to_le_bytes());
            let known = central || dir;
            for v in [crc, payload.len() as u32, e.data.len() as u32] {
                h.extend_from_slice(&(if known { v } else { 0 }).to_le_bytes());
            }
            h.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            h.extend_from_slice(&(extra.len() as u16).to_le_bytes());
            if central {
                h.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
                let mut external = e.mode << 16;
                if dir {
                    external |= 0x10;
                }
                if e.mode & 0o200 == 0 {
                    external |= 0x01;
                }
                h.extend_from_slice(&external.to_le_bytes());
                h.extend_from_slice(&offset.to_le_bytes());
            }
            h.extend_from_slice(e.name.as_bytes());
            h.extend_from_slice(&extra);
            h
        };
        out.extend(header(0x0403_4b50, false));
        out.extend_from_slice(&payload);
        if !dir {
            out.extend_from_slice(&0x0807_4b50u32.to_le_bytes());
            out.extend_from_slice(&crc.to_le_bytes());
            out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            out.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
        }
        central.extend(header(0x0201_4b50, true));
    }
    let start = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&start.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

#[test]
fn archives_by_gitlab_runners_rules_extract_with_modes_times_and_links() {
    let mtime = MTIME as u32;
    let bytes = go_zip(&[
        GoEntry {
            name: "node_modules/",
            mode: 0o040755,
            data: b"",
            mtime,
        },
        GoEntry {
            name: "node_modules/.bin/",
            mode: 0o040750,
            data: b"",
            mtime: mtime + 10,
        },
        GoEntry {
            name: "node_modules/.bin/run",
            mode: 0o100755,
            data: b"#!/usr/bin/env node\n",
            mtime: mtime + 20,
        },
        GoEntry {
            name: "node_modules/index.js",
            mode: 0o100444,
            data: b"module.exports = 42;\n",
            mtime: mtime + 30,
        },
        GoEntry {
            name: "node_modules/main.js",
            mode: 0o120777,
            data: b"index.js",
            mtime: mtime + 40,
        },
    ]);
    let scratch = tempfile::tempdir().unwrap();
    let archive = scratch.path().join("cache.zip");
    std::fs::write(&archive, &bytes).unwrap();
    if let Ok(status) = std::process::Command::new("unzip")
        .arg("-tqq")
        .arg(&archive)
        .status()
    {
        assert!(status.success(), "the hand-built archive is a valid zip");
    }
    let target = tempfile::tempdir().unwrap();
    assert_eq!(files::extract_zip(&archive, target.path()).unwrap(), 3);
    let at = |p: &str| target.path().join(p);
    assert_eq!(
        std::fs::read(at("node_modules/.bin/run")).unwrap(),
        b"#!/usr/bin/env node\n"
    );
    assert_eq!(
        std::fs::read_link(at("node_modules/main.js")).unwrap(),
        Path::new("index.js")
    );
    assert_eq!(
        std::fs::read_to_string(at("node_modules/main.js")).unwrap(),
        "module.exports = 42;\n"
    );
    for (name, mode, offset) in [
        ("node_modules", 0o040755, 0),
        ("node_modules/.bin", 0o040750, 10),
        ("node_modules/.bin/run", 0o100755, 20),
        ("node_modules/index.js", 0o100444, 30),
        ("node_modules/main.js", 0o120777, 40),
    ] {
        assert_eq!(mode_of(&at(name)), mode, "{name}: mode");
        assert_eq!(mtime_of(&at(name)), MTIME + offset, "{name}: mtime");
    }
}
