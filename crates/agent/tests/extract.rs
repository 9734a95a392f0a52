//! Crafted archives against the one extraction path of artifacts, caches and exec.

use podrunner_agent::extract::{ExtractError, Limits, extract_zip, extract_zip_with};

#[path = "../../podrunner/tests/support/hostile_zips.rs"]
mod hostile_zips;

use hostile_zips::Entry;

fn archive(dir: &std::path::Path, bytes: Vec<u8>) -> std::path::PathBuf {
    let path = dir.join("archive.zip");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn every_hostile_archive_is_refused_for_its_own_reason() {
    let outside = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let expected = [
        "is a link to",
        "is a link to",
        "leads outside the target directory",
        "climbs out with `..`",
        "is an absolute path",
        "duplicate file names",
        "a ratio above the bound",
    ];
    for ((name, bytes), why) in hostile_zips::all(outside.path()).into_iter().zip(expected) {
        let target = tempfile::tempdir().unwrap();
        let file = archive(scratch.path(), bytes);
        let error = extract_zip(&file, target.path()).unwrap_err();
        let text = error.to_string();
        assert!(text.contains(why), "{name}: {text}");
        assert!(
            text.contains(&file.display().to_string()),
            "names the archive: {text}"
        );
        assert!(
            matches!(
                error,
                ExtractError::Refused { .. }
                    | ExtractError::TooLarge { .. }
                    | ExtractError::Zip { .. }
            ),
            "{name}: {error:?}"
        );
        hostile_zips::assert_nothing_escaped(name, outside.path(), target.path());
        assert_eq!(
            std::fs::read_dir(target.path()).unwrap().count(),
            0,
            "{name}"
        );
    }
}

#[test]
fn links_inside_the_tree_are_restored_and_modes_kept() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = tempfile::tempdir().unwrap();
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    zip.add_directory("ro/", options.unix_permissions(0o555))
        .unwrap();
    zip.start_file("ro/file", options.unix_permissions(0o644))
        .unwrap();
    std::io::Write::write_all(&mut zip, b"inside a read-only directory").unwrap();
    zip.start_file("bin/tool", options.unix_permissions(0o4755))
        .unwrap();
    std::io::Write::write_all(&mut zip, b"#!/bin/sh\n").unwrap();
    zip.add_symlink("lib/current", "../bin", options).unwrap();
    zip.add_symlink("top", "lib/current/tool", options).unwrap();
    let file = archive(scratch.path(), zip.finish().unwrap().into_inner());
    let target = tempfile::tempdir().unwrap();
    assert_eq!(extract_zip(&file, target.path()).unwrap(), 4);
    let mode = |p: &str| {
        std::fs::symlink_metadata(target.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("ro"), 0o555);
    assert_eq!(
        mode("bin/tool"),
        0o755,
        "permission bits only, as gitlab-runner"
    );
    assert_eq!(
        std::fs::read_to_string(target.path().join("top")).unwrap(),
        "#!/bin/sh\n"
    );
    assert_eq!(
        std::fs::read_link(target.path().join("lib/current")).unwrap(),
        std::path::Path::new("../bin")
    );
    std::fs::set_permissions(
        target.path().join("ro"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
}

#[test]
fn entries_replace_links_and_files_but_never_write_through_them() {
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "original").unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let target = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&victim, target.path().join("config")).unwrap();
    std::os::unix::fs::symlink(outside.path(), target.path().join("linkdir")).unwrap();
    std::fs::write(target.path().join("old"), "old").unwrap();
    let file = archive(
        scratch.path(),
        hostile_zips::build(&[
            Entry::File("config", b"new"),
            Entry::File("old", b"replaced"),
            Entry::Link("linkdir", "config"),
        ]),
    );
    extract_zip(&file, target.path()).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "original");
    assert_eq!(
        std::fs::read_to_string(target.path().join("config")).unwrap(),
        "new"
    );
    assert_eq!(
        std::fs::read_to_string(target.path().join("old")).unwrap(),
        "replaced"
    );
    assert_eq!(
        std::fs::read_link(target.path().join("linkdir")).unwrap(),
        std::path::Path::new("config")
    );

    // An existing link on the way: refused before anything is written.
    std::os::unix::fs::symlink(outside.path(), target.path().join("vendor")).unwrap();
    let file = archive(
        scratch.path(),
        hostile_zips::build(&[
            Entry::File("aaa-first", b"x"),
            Entry::File("vendor/planted", b"x"),
        ]),
    );
    let error = extract_zip(&file, target.path()).unwrap_err().to_string();
    assert!(error.contains("a symbolic link in"), "{error}");
    assert!(!outside.path().join("planted").exists());
    assert!(!target.path().join("aaa-first").exists());

    // A directory entry over that link replaces the link; what follows lands inside.
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.add_directory("vendor/", zip::write::SimpleFileOptions::default())
        .unwrap();
    zip.start_file("vendor/lib", zip::write::SimpleFileOptions::default())
        .unwrap();
    let file = archive(scratch.path(), zip.finish().unwrap().into_inner());
    extract_zip(&file, target.path()).unwrap();
    assert!(target.path().join("vendor/lib").is_file());
    assert!(!outside.path().join("lib").exists());

    // A file entry where a directory is, and entries beneath an archive's own file.
    std::fs::create_dir(target.path().join("adir")).unwrap();
    for entries in [
        vec![Entry::File("adir", b"x")],
        vec![Entry::File("f", b"x"), Entry::File("f/g", b"y")],
    ] {
        let file = archive(scratch.path(), hostile_zips::build(&entries));
        assert!(matches!(
            extract_zip(&file, target.path()),
            Err(ExtractError::Refused { .. })
        ));
    }
}

#[test]
fn bounds_name_the_archive_and_the_bound() {
    let scratch = tempfile::tempdir().unwrap();
    let target = tempfile::tempdir().unwrap();
    let file = archive(
        scratch.path(),
        hostile_zips::build(&[
            Entry::File("a", &[b'a'; 600]),
            Entry::File("b", &[b'b'; 600]),
            Entry::File("c", b"c"),
        ]),
    );
    let limits = |max_entries, max_total_bytes| Limits {
        max_entries,
        max_total_bytes,
        ..Limits::default()
    };
    let error = extract_zip_with(&file, target.path(), &limits(2, 1 << 20))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("3 entries, more than the bound of 2"),
        "{error}"
    );
    assert!(error.contains(&file.display().to_string()), "{error}");
    let error = extract_zip_with(&file, target.path(), &limits(10, 1000))
        .unwrap_err()
        .to_string();
    assert!(error.contains("bound of 1000 bytes"), "{error}");
    assert_eq!(std::fs::read_dir(target.path()).unwrap().count(), 0);
    assert_eq!(
        extract_zip_with(&file, target.path(), &limits(3, 1201)).unwrap(),
        3
    );
}
