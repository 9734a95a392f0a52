//! The signer against Google's V4 signing conformance vectors: cases of
//! `storage/v1/v4_signatures.json` in `googleapis/conformance-tests`, signed with that
//! repository's inactive dummy key (`storage/v1/service-account`, published for the purpose).

use super::*;

const EMAIL: &str = "test-iam-credentials@dummy-project-id.iam.gserviceaccount.com";

const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCsPzMirIottfQ2
ryjQmPWocSEeGo7f7Q4/tMQXHlXFzo93AGgU2t+clEj9L5loNhLVq+vk+qmnyDz5
Q04y8jVWyMYzzGNNrGRW/yaYqnqlKZCy1O3bmnNjV7EDbC/jE1ZLBY0U3HaSHfn6
S9ND8MXdgD0/ulRTWwq6vU8/w6i5tYsU7n2LLlQTl1fQ7/emO9nYcCFJezHZVa0H
meWsdHwWsok0skwQYQNIzP3JF9BpR5gJT2gNge6KopDesJeLoLzaX7cUnDn+CAnn
LuLDwwSsIVKyVxhBFsFXPplgpaQRwmGzwEbf/Xpt9qo26w2UMgn30jsOaKlSeAX8
cS6ViF+tAgMBAAECggEACKRuJCP8leEOhQziUx8Nmls8wmYqO4WJJLyk5xUMUC22
SI4CauN1e0V8aQmxnIc0CDkFT7qc9xBmsMoF+yvobbeKrFApvlyzNyM7tEa/exh8
DGD/IzjbZ8VfWhDcUTwn5QE9DCoon9m1sG+MBNlokB3OVOt8LieAAREdEBG43kJu
yQTOkY9BGR2AY1FnAl2VZ/jhNDyrme3tp1sW1BJrawzR7Ujo8DzlVcS2geKA9at7
55ua5GbHz3hfzFgjVXDfnkWzId6aHypUyqHrSn1SqGEbyXTaleKTc6Pgv0PgkJjG
hZazWWdSuf1T5Xbs0OhAK9qraoAzT6cXXvMEvvPt6QKBgQDXcZKqJAOnGEU4b9+v
Odoh+nssdrIOBNMu1m8mYbUVYS1aakc1iDGIIWNM3qAwbG+yNEIi2xi80a2RMw2T
9RyCNB7yqCXXVKLBiwg9FbKMai6Vpk2bWIrzahM9on7AhCax/X2AeOp+UyYhFEy6
UFG4aHb8THscL7b515ukSuKb5QKBgQDMq+9PuaB0eHsrmL6q4vHNi3MLgijGg/zu
AXaPygSYAwYW8KglcuLZPvWrL6OG0+CrfmaWTLsyIZO4Uhdj7MLvX6yK7IMnagvk
L3xjgxSklEHJAwi5wFeJ8ai/1MIuCn8p2re3CbwISKpvf7Sgs/W4196P4vKvTiAz
jcTiSYFIKQKBgCjMpkS4O0TakMlGTmsFnqyOneLmu4NyIHgfPb9cA4n/9DHKLKAT
oaWxBPgatOVWs7RgtyGYsk+XubHkpC6f3X0+15mGhFwJ+CSE6tN+l2iF9zp52vqP
Qwkjzm7+pdhZbmaIpcq9m1K+9lqPWJRz/3XXuqi+5xWIZ7NaxGvRjqaNAoGAdK2b
utZ2y48XoI3uPFsuP+A8kJX+CtWZrlE1NtmS7tnicdd19AtfmTuUL6fz0FwfW4Su
lQZfPT/5B339CaEiq/Xd1kDor+J7rvUHM2+5p+1A54gMRGCLRv92FQ4EON0RC1o9
m2I4SHysdO3XmjmdXmfp4BsgAKJIJzutvtbqlakCgYB+Cb10z37NJJ+WgjDt+yT2
yUNH17EAYgWXryfRgTyi2POHuJitd64Xzuy6oBVs3wVveYFM6PIKXlj8/DahYX5I
R2WIzoCNLL3bEZ+nC6Jofpb4kspoAeRporj29SgesK6QBYWHWX2H645RkRGYGpDo
51gjy9m/hSNqBbH2zmh04A==
-----END PRIVATE KEY-----
";

const CREDENTIAL: &str = "X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=test-iam-credentials%40dummy-project-id.iam.gserviceaccount.com%2F20190201%2Fauto%2Fstorage%2Fgoog4_request&X-Goog-Date=20190201T090000Z&X-Goog-Expires=10";

struct Case<'a> {
    description: &'a str,
    method: &'a str,
    object: &'a str,
    headers: &'a [(&'a str, &'a str)],
    expected: &'a str,
}

fn check(case: &Case<'_>) {
    let account = ServiceAccount::new(EMAIL, KEY).unwrap();
    let headers: Vec<(String, String)> = case
        .headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let url = sign_url(
        &account,
        ENDPOINT,
        &Request {
            method: case.method,
            bucket: "test-bucket",
            object: case.object,
            headers: &headers,
            query: &[],
            now: "2019-02-01T09:00:00Z".parse().unwrap(),
            expires: Duration::from_secs(10),
        },
    );
    assert_eq!(url, case.expected, "{}", case.description);
}

#[test]
fn simple_get() {
    check(&Case {
        description: "Simple GET",
        method: "GET",
        object: "test-object",
        headers: &[],
        expected: &format!(
            "https://storage.googleapis.com/test-bucket/test-object?{CREDENTIAL}&X-Goog-SignedHeaders=host&X-Goog-Signature=95e6a13d43a1d1962e667f17397f2b80ac9bdd1669210d5e08e0135df9dff4e56113485dbe429ca2266487b9d1796ebdee2d7cf682a6ef3bb9fbb4c351686fba90d7b621cf1c4eb1fdf126460dd25fa0837dfdde0a9fd98662ce60844c458448fb2b352c203d9969cb74efa4bdb742287744a4f2308afa4af0e0773f55e32e92973619249214b97283b2daa14195244444e33f938138d1e5f561088ce8011f4986dda33a556412594db7c12fc40e1ff3f1bedeb7a42f5bcda0b9567f17f65855f65071fabb88ea12371877f3f77f10e1466fff6ff6973b74a933322ff0949ce357e20abe96c3dd5cfab42c9c83e740a4d32b9e11e146f0eb3404d2e975896f74"
        ),
    });
}

#[test]
fn simple_put() {
    check(&Case {
        description: "Simple PUT",
        method: "PUT",
        object: "test-object",
        headers: &[],
        expected: &format!(
            "https://storage.googleapis.com/test-bucket/test-object?{CREDENTIAL}&X-Goog-SignedHeaders=host&X-Goog-Signature=8adff1d4285739e31aa68e73767a46bc5511fde377497dbe08481bf5ceb34e29cc9a59921748d8ec3dd4085b7e9b7772a952afedfcdaecb3ae8352275b8b7c867f204e3db85076220a3127a8a9589302fc1181eae13b9b7fe41109ec8cdc93c1e8bac2d7a0cc32a109ca02d06957211326563ab3d3e678a0ba296e298b5fc5e14593c99d444c94724cc4be97015dbff1dca377b508fa0cb7169195de98d0e4ac96c42b918d28c8d92d33e1bd125ce0fb3cd7ad2c45dae65c22628378f6584971b8bf3945b26f2611eb651e9b6a8648970c1ecf386bb71327b082e7296c4e1ee2fc0bdd8983da80af375c817fb1ad491d0bc22c0f51dba0d66e2cffbc90803e47"
        ),
    });
}

#[test]
fn slashes_in_object_names_are_kept_and_headers_named_with_slashes_encoded() {
    check(&Case {
        description: "Slashes in object name should not be URL encoded",
        method: "GET",
        object: "path/with/slashes/under_score/amper&sand/file.ext",
        headers: &[("header/name/with/slash", "should-be-encoded")],
        expected: &format!(
            "https://storage.googleapis.com/test-bucket/path/with/slashes/under_score/amper%26sand/file.ext?{CREDENTIAL}&X-Goog-SignedHeaders=header%2Fname%2Fwith%2Fslash%3Bhost&X-Goog-Signature=2a9a82e84e39f5d2c0d980514db17f8c3dece473c9a5743d54e8453f9811927b1b99ce548c534cababd8fa339183e75b410e12e32a4c72f5ff176e95651fabed0072e59e7e236eb7e26f52c0ce599db1c47ae07af1a98d20872b6fde23432c0a5fcf4fb2dda735169198c80cd5cc51be9904f7e5eef2cc489ff44ac5697c529e4b34ac08709a7d2e425619377212c64561ed8b4d2fcb70a26e4f9236f995ab4658d240ac85c7a353bae6b2d39d5fc0716afa435a1f6e100db5504612b5e610db370623ab4b8eba3c03c98f23dcb4b9ffd518f2212abb2f93649d25385d71603d470cff0b7631adb9d0849d38609dedb3097761c8f47ec0d57777bb063611c05b"
        ),
    });
}

#[test]
fn header_values_are_trimmed_and_collapsed() {
    // The vector writes its signature parameter in lower case; the signature is the same.
    let expected = format!("https://storage.googleapis.com/test-bucket/test-object?{CREDENTIAL}&X-Goog-SignedHeaders=collapsed%3Bhost%3Bleading%3Btabs%3Btrailing&x-goog-signature=75d77a3ed2d9b74ff7e1e23b2fd7cc714ad4cc32518c65f3a8197827cd87d302623bab990cf2ff3a633bfaae69b6c2d897add78c105aa68411229610421c4239579add4aff6bdbd5067a0fd61c3aa0029d7de0f8ae88fa3458fa70f875e841d6df9598597d9012b9f848c6857e08f2704ca2f332c71738490ffdda2ed928f9340549d7295745725062d28dc1696eab7cb3b88ac4fd445e951423f645d680a60dd8033d65b65f4c10286f59f4258dbb2bcf36a76ffdd40574104cbbf0b76901c24df5854f24c42e9192fcedc386d85704fec6a6bad3a5201e1fb6c491a4c43371b0913420743580daf3504e99204c6ec894b4d70cd27bc60c3fe2850e8bf3ed22")
        .replace("x-goog-signature", "X-Goog-Signature");
    check(&Case {
        description: "Headers should be trimmed",
        method: "GET",
        object: "test-object",
        headers: &[
            ("collapsed", "abc    def"),
            ("leading", "    xyz"),
            ("trailing", "abc    "),
            ("tabs", "\tabc\t\t\t\tdef\t"),
        ],
        expected: &expected,
    });
}

#[test]
fn key_files_must_be_service_accounts() {
    let json =
        serde_json::json!({"type": "service_account", "client_email": EMAIL, "private_key": KEY});
    assert_eq!(
        ServiceAccount::from_json(&json.to_string()).unwrap().email,
        EMAIL
    );
    let user = serde_json::json!({"type": "authorized_user", "client_id": "x"});
    let err = ServiceAccount::from_json(&user.to_string()).unwrap_err();
    assert!(err.contains("\"authorized_user\""), "{err}");
    assert!(ServiceAccount::new(EMAIL, "not a key").is_err());
    // As a key is written in a JSON key file, or in the chart's gcs-private-key.
    assert!(ServiceAccount::new(EMAIL, &KEY.replace('\n', "\\n")).is_ok());
}
