//! `[runners.cache]` refused by `config check` where podrunner cannot do what it says.

use crate::{errors, warnings};

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
            "config.toml:7:12: runners[0].cache.Type: \"gcs\" needs [runners.cache.gcs] with BucketName and a service account key"
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

#[test]
fn gcs_without_a_key_and_azure_without_an_account_key_are_refused() {
    let gcs = errors(&runner(
        "    Type = \"gcs\"\n    [runners.cache.gcs]\n      BucketName = \"b\"\n",
    ));
    assert_eq!(gcs.len(), 1, "{gcs:#?}");
    assert!(
        gcs[0].starts_with("config.toml:8:5: runners[0].cache.gcs: has no service account key: podrunner does not sign URLs through the metadata server or IAM signBlob; set CredentialsFile"),
        "{gcs:#?}"
    );
    let half = errors(&runner(
        "    Type = \"gcs\"\n    [runners.cache.gcs]\n      BucketName = \"b\"\n      AccessID = \"sa@p.iam.gserviceaccount.com\"\n",
    ));
    assert!(
        half[0].starts_with(
            "config.toml:10:18: runners[0].cache.gcs.AccessID: is set without PrivateKey"
        ),
        "{half:#?}"
    );
    for ok in [
        "      CredentialsFile = \"/etc/gcs/key.json\"\n",
        "      AccessID = \"sa@p.iam.gserviceaccount.com\"\n      PrivateKey = \"-----BEGIN PRIVATE KEY-----\"\n",
    ] {
        let text =
            format!("    Type = \"gcs\"\n    [runners.cache.gcs]\n      BucketName = \"b\"\n{ok}");
        warnings(&runner(&text));
    }

    let azure = errors(&runner(
        "    Type = \"azure\"\n    [runners.cache.azure]\n      AccountName = \"acct\"\n      StorageDomain = \"https://blob.core.windows.net\"\n",
    ));
    assert_eq!(azure.len(), 3, "{azure:#?}");
    assert!(
        azure[0].contains("runners[0].cache.azure.AccountKey: is missing: podrunner signs SAS URLs with the storage account key only"),
        "{azure:#?}"
    );
    assert!(
        azure[1].contains("runners[0].cache.azure.ContainerName: is missing"),
        "{azure:#?}"
    );
    assert!(
        azure[2].starts_with("config.toml:10:23: runners[0].cache.azure.StorageDomain: \"https://blob.core.windows.net\" is a URL"),
        "{azure:#?}"
    );
    warnings(&runner(
        "    Type = \"azure\"\n    [runners.cache.azure]\n      AccountName = \"acct\"\n      AccountKey = \"a2V5\"\n      ContainerName = \"cache\"\n",
    ));
}
