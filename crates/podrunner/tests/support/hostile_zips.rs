//! Crafted zip archives that try to write outside the directory they are extracted into,
//! shared by the agent and exec tests.

use std::io::Write;
use std::path::Path;

use zip::write::SimpleFileOptions;

/// One entry of a crafted archive.
pub enum Entry<'a> {
    /// A file with this content.
    File(&'a str, &'a [u8]),
    /// A symbolic link to this target.
    Link(&'a str, &'a str),
}

/// A zip of `entries`, in order.
pub fn build(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for entry in entries {
        match entry {
            Entry::File(name, content) => {
                zip.start_file(*name, SimpleFileOptions::default().unix_permissions(0o644))
                    .unwrap();
                zip.write_all(content).unwrap();
            }
            Entry::Link(name, target) => {
                zip.add_symlink(*name, *target, SimpleFileOptions::default())
                    .unwrap();
            }
        }
    }
    zip.finish().unwrap().into_inner()
}

/// A zip whose one entry declares far more bytes than it holds (every size field forged).
pub fn forged_bomb() -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file(
        "bomb.bin",
        SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated),
    )
    .unwrap();
    zip.write_all(&[0u8; 4096]).unwrap();
    let mut bytes = zip.finish().unwrap().into_inner();
    let forged = 0x7fff_fff0u32.to_le_bytes();
    // Uncompressed size: offset 22 of the local header, 24 of the central header.
    for (signature, offset) in [
        ([0x50, 0x4b, 0x03, 0x04], 22),
        ([0x50, 0x4b, 0x01, 0x02], 24),
    ] {
        let at = bytes.windows(4).position(|w| w == signature).unwrap();
        bytes[at + offset..at + offset + 4].copy_from_slice(&forged);
    }
    bytes
}

/// Two entries with one name (the second name is patched in after writing).
pub fn duplicate_names() -> Vec<u8> {
    let mut bytes = build(&[
        Entry::File("dupA.txt", b"first"),
        Entry::File("dupB.txt", b"second"),
    ]);
    while let Some(at) = bytes.windows(8).position(|w| w == b"dupB.txt") {
        bytes[at + 3] = b'A';
    }
    bytes
}

/// Every hostile archive, named, with `outside` (an absolute directory that must stay
/// empty) as the target of their links. Each starts with a harmless `first.txt`, which must
/// not be left behind when the archive is refused.
pub fn all(outside: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let outside = outside.display().to_string();
    let relative = "../".repeat(12) + outside.trim_start_matches('/');
    let first = Entry::File("first.txt", b"first");
    vec![
        (
            "absolute link, then an entry through it",
            build(&[
                Entry::File("first.txt", b"first"),
                Entry::Link("escape", &outside),
                Entry::File("escape/planted.txt", b"x"),
            ]),
        ),
        (
            "relative link, then an entry through it",
            build(&[
                Entry::File("first.txt", b"first"),
                Entry::Link("escape", &relative),
                Entry::File("escape/planted.txt", b"x"),
            ]),
        ),
        (
            "link inside that climbs out through another link",
            build(&[
                first,
                Entry::Link("d/up", ".."),
                Entry::Link("escape", "d/up/../.."),
            ]),
        ),
        (
            "`..` entry",
            build(&[
                Entry::File("first.txt", b"first"),
                Entry::File("../planted.txt", b"x"),
            ]),
        ),
        (
            "absolute entry",
            build(&[
                Entry::File("first.txt", b"first"),
                Entry::File(&format!("{outside}/planted.txt"), b"x"),
            ]),
        ),
        ("duplicate names", duplicate_names()),
        ("forged sizes (zip bomb)", forged_bomb()),
    ]
}

/// Asserts `outside` is empty and `target` holds none of the archive's entries.
pub fn assert_nothing_escaped(name: &str, outside: &Path, target: &Path) {
    let planted: Vec<_> = std::fs::read_dir(outside)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(planted.is_empty(), "{name}: written outside: {planted:?}");
    for left in ["first.txt", "dupA.txt", "escape", "d", "bomb.bin"] {
        assert!(
            std::fs::symlink_metadata(target.join(left)).is_err(),
            "{name}: the refused archive left {left} in {}",
            target.display()
        );
    }
}
