//! `[runners.cache]` refused by `config check` where podrunner cannot do what it says.

use crate::errors;

fn runner(cache: &str) -> String {
    format!(
        "concurrent = 1\n[[runners]]\n  url = \"https://gitlab.example.com/\"\n  token = \"glrt-x\"\n  executor = \"kubernetes\"\n  [runners.cache]\n{cache}  [runners.kubernetes]\n    namespace = \"ci\"\n"
    )
}

#[test]
fn a_bad_cache_section_is_refused_at_its_place() {
    assert_eq!(
        errors(&runner("    Type = \"gcs\"\n")),
        [
            "config.toml:7:12: runners[0].cache.Type: \"gcs\" is not supported by podrunner yet; use Type = \"s3\" (Amazon S3 or an S3-compatible store)"
        ]
    );
    assert_eq!(
        errors(&runner("    Type = \"s3\"\n")),
        [
            "config.toml:7:12: runners[0].cache.Type: \"s3\" needs [runners.cache.s3] with at least BucketName"
        ]
    );
    let bad = errors(&runner(
        "    Type = \"s3\"\n    MaxUploadedArchiveSize = -1\n    [runners.cache.s3]\n      ServerAddress = \"https://minio:9000\"\n      AuthenticationType = \"token\"\n      ServerSideEncryption = \"rot13\"\n",
    ));
    assert_eq!(bad.len(), 5, "{bad:#?}");
    assert!(
        bad[0].starts_with("config.toml:8:30: runners[0].cache.MaxUploadedArchiveSize: is -1"),
        "{bad:#?}"
    );
    assert!(
        bad[1].contains("runners[0].cache.s3.BucketName: is missing"),
        "{bad:#?}"
    );
    assert!(
        bad[2].starts_with(
            "config.toml:10:23: runners[0].cache.s3.ServerAddress: \"https://minio:9000\" is a URL"
        ),
        "{bad:#?}"
    );
    assert!(
        bad[3].contains("AuthenticationType: \"token\" is not"),
        "{bad:#?}"
    );
    assert!(
        bad[4].contains("ServerSideEncryption: \"ROT13\" is not"),
        "{bad:#?}"
    );
}
