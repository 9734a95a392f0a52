//! The kubelet's streaming endpoints the API server proxies: pod logs and exec.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{Kind, Shared, log_path, not_found, record, status};

pub(super) async fn pod_log(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    record(&shared, &method, &uri);
    let Some(pod) = shared
        .lock()
        .objects
        .get(&(Kind::Pod, namespace.clone(), name.clone()))
        .cloned()
    else {
        return not_found(Kind::Pod, &name);
    };
    let container = match query.get("container") {
        Some(c) => c.clone(),
        None => pod["spec"]["containers"][0]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    };
    let text = std::fs::read(log_path(&shared, &namespace, &name, &container)).unwrap_or_default();
    Response::builder()
        .header("content-type", "text/plain")
        .body(Body::from(text))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `exec` over WebSocket (`v5.channel.k8s.io`, also `v4`): runs the command inside the
/// container's namespaces with `nsenter`. Frames carry a channel byte: 0 stdin, 1 stdout,
/// 2 stderr, 3 the final Status (JSON), and in v5 255 closes a channel (`[255, 0]`: stdin).
pub(super) async fn pod_exec(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    record(&shared, &method, &uri);
    let mut command = Vec::new();
    let mut container = None;
    let mut stdin = false;
    for (key, value) in form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "command" => command.push(value.into_owned()),
            "container" => container = Some(value.into_owned()),
            "stdin" => stdin = value == "true" || value == "1",
            _ => {}
        }
    }
    if command.is_empty() {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "you must specify at least 1 command",
        );
    }
    let (pod, pids) = {
        let inner = shared.lock();
        let Some(pod) = inner
            .objects
            .get(&(Kind::Pod, namespace.clone(), name.clone()))
            .cloned()
        else {
            return not_found(Kind::Pod, &name);
        };
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let pids = inner
            .runtimes
            .get(&uid)
            .map(|r| r.pids.clone())
            .unwrap_or_default();
        (pod, pids)
    };
    let container = container.unwrap_or_else(|| {
        pod["spec"]["containers"][0]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    });
    // The kubelet knows the host PID of the container's PID 1 (or of its bubblewrap).
    let target = pids.get(&container).and_then(|pid| {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        if comm.trim() != "bwrap" {
            return Some(*pid);
        }
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse::<u32>()
            .ok()
    });
    let Some(target) = target else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("container {container} is not running"),
        );
    };
    let v5 = upgrade
        .selected_protocol()
        .is_some_and(|p| p.as_bytes() == b"v5.channel.k8s.io");
    upgrade
        .protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .on_upgrade(move |socket| exec_session(socket, target, command, stdin, v5))
}

/// A WebSocket message on `channel` of the exec protocol.
fn frame(channel: u8, bytes: &[u8]) -> axum::extract::ws::Message {
    axum::extract::ws::Message::Binary([&[channel][..], bytes].concat().into())
}

async fn exec_session(
    socket: axum::extract::ws::WebSocket,
    target: u32,
    command: Vec<String>,
    stdin: bool,
    v5: bool,
) {
    use axum::extract::ws::Message;
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut sender, mut receiver) = socket.split();
    let child = tokio::process::Command::new("nsenter")
        .arg(format!("--target={target}"))
        .args(["--mount", "--uts", "--ipc", "--pid", "--root", "--wd", "--"])
        .args(&command)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .stdin(if stdin {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            let failure = json!({"metadata": {}, "status": "Failure", "message": format!("cannot run nsenter: {e}")});
            let _ = sender.send(frame(3, failure.to_string().as_bytes())).await;
            return;
        }
    };
    let mut input = child.stdin.take();
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let (mut out_buf, mut err_buf) = ([0u8; 8192], [0u8; 8192]);
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        tokio::select! {
            read = stdout.read(&mut out_buf), if out_open => match read {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => { let _ = sender.send(frame(1, &out_buf[..n])).await; }
            },
            read = stderr.read(&mut err_buf), if err_open => match read {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => { let _ = sender.send(frame(2, &err_buf[..n])).await; }
            },
            message = receiver.next() => match message {
                Some(Ok(Message::Binary(bytes))) => match bytes.first() {
                    Some(0) => if let Some(pipe) = input.as_mut() { let _ = pipe.write_all(&bytes[1..]).await; },
                    Some(255) if v5 && bytes.get(1) == Some(&0) => input = None,
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => { let _ = child.start_kill(); }
                Some(Ok(_)) => {}
            },
        }
    }
    let code = child.wait().await.ok().and_then(|s| s.code()).unwrap_or(-1);
    let result = if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({
            "metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        })
    };
    let _ = sender.send(frame(3, result.to_string().as_bytes())).await;
    // A normal close (1000), as the API server's websocket streams end (golang.org/x/net
    // websocket's Close, under `staging/src/k8s.io/apimachinery/pkg/util/httpstream/wsstream`).
    let _ = sender
        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
}
