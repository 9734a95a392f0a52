//! Git repositories served over smart HTTP by the real `git http-backend` (as CGI), behind
//! GitLab's rule: user `gitlab-ci-token`, password the token of a running job.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncWriteExt;

/// Makes a bare repository `<root>/<path>.git` holding one commit with `files`; returns the
/// commit's SHA.
pub fn create_repository(
    root: &Path,
    path: &str,
    files: &[(&str, &str)],
) -> std::io::Result<String> {
    let bare = root.join(format!("{path}.git"));
    std::fs::create_dir_all(&bare)?;
    let work = tempfile::tempdir()?;
    git(
        &bare,
        &["init", "--bare", "--quiet", "--initial-branch=main"],
    )?;
    git(work.path(), &["init", "--quiet", "--initial-branch=main"])?;
    for (name, content) in files {
        let file = work.path().join(name);
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&file, content)?;
    }
    git(work.path(), &["add", "--all"])?;
    git(
        work.path(),
        &[
            "-c",
            "user.name=testkit",
            "-c",
            "user.email=testkit@example.com",
            "commit",
            "--quiet",
            "-m",
            "initial",
        ],
    )?;
    git(
        work.path(),
        &["push", "--quiet", bare.to_str().unwrap_or_default(), "main"],
    )?;
    let sha = git(work.path(), &["rev-parse", "HEAD"])?;
    Ok(sha.trim().to_owned())
}

/// Adds a commit with `files` on top of `main`; returns its SHA.
pub fn add_commit(root: &Path, path: &str, files: &[(&str, &str)]) -> std::io::Result<String> {
    let bare = root.join(format!("{path}.git"));
    let work = tempfile::tempdir()?;
    git(
        work.path(),
        &["clone", "--quiet", bare.to_str().unwrap_or_default(), "."],
    )?;
    for (name, content) in files {
        let file = work.path().join(name);
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&file, content)?;
    }
    git(work.path(), &["add", "--all"])?;
    git(
        work.path(),
        &[
            "-c",
            "user.name=testkit",
            "-c",
            "user.email=testkit@example.com",
            "commit",
            "--quiet",
            "-m",
            "more",
        ],
    )?;
    git(work.path(), &["push", "--quiet", "origin", "main"])?;
    Ok(git(work.path(), &["rev-parse", "HEAD"])?.trim().to_owned())
}

fn git(dir: &Path, args: &[&str]) -> std::io::Result<String> {
    let output = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The password of a `Basic` authorization header whose user is `gitlab-ci-token`.
pub fn basic_password(headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = String::from_utf8(decode_base64(value.trim())?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    (user == "gitlab-ci-token").then(|| password.to_owned())
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buffer = 0u32;
    let mut bits = 0;
    for byte in text.bytes().filter(|b| *b != b'=') {
        buffer = (buffer << 6) | ALPHABET.iter().position(|c| *c == byte)? as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

/// `401` asking for credentials, as GitLab does.
pub fn unauthorized() -> Response {
    let mut response = (StatusCode::UNAUTHORIZED, "HTTP Basic: Access denied\n").into_response();
    response.headers_mut().insert(
        "www-authenticate",
        HeaderValue::from_static("Basic realm=\"GitLab\""),
    );
    response
}

/// Runs `git http-backend` for one request and turns its CGI answer into a response.
pub async fn serve(
    root: PathBuf,
    method: &str,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("REQUEST_METHOD", method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("HTTP_GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_USER", "gitlab-ci-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot run git http-backend: {e}"),
            )
                .into_response();
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&body).await;
    }
    let output = match child.wait_with_output().await {
        Ok(output) => output,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("git http-backend failed: {e}"),
            )
                .into_response();
        }
    };
    cgi_response(&output.stdout)
}

fn cgi_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2)));
    let Some((end, gap)) = split else {
        return (
            StatusCode::BAD_GATEWAY,
            "git http-backend gave no CGI headers",
        )
            .into_response();
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut status = StatusCode::OK;
    let mut response_headers = HeaderMap::new();
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            status = value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::OK);
        } else if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::try_from(name.trim()),
            HeaderValue::from_str(value),
        ) {
            response_headers.append(name, value);
        }
    }
    let mut response = (status, raw[end + gap..].to_vec()).into_response();
    response.headers_mut().extend(response_headers);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_basic_auth() {
        let mut headers = HeaderMap::new();
        // gitlab-ci-token:glcbt-x
        headers.insert(
            "authorization",
            HeaderValue::from_static("Basic Z2l0bGFiLWNpLXRva2VuOmdsY2J0LXg="),
        );
        assert_eq!(basic_password(&headers).as_deref(), Some("glcbt-x"));
        headers.insert(
            "authorization",
            HeaderValue::from_static("Basic dXNlcjpwdw=="),
        );
        assert_eq!(
            basic_password(&headers),
            None,
            "user must be gitlab-ci-token"
        );
    }
}
