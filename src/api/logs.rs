//! `GET /v1/tasks/{id}/logs[?tail=N]`: a task's output, from any node.
//!
//! ```text
//! task id ─> the registry's task record ─> its node is this one?
//!   yes: process task (runtime id pid:N) ─> DATA_DIR/tasks/<id>.log (the process runtime's file)
//!        docker task ─> the engine's container logs (stdout and stderr)
//!        ─> the last N lines with ?tail=N ─> TaskLogs
//!   no:  the same request, with the caller's token, to that node's API (mutual TLS)
//! ```
//!
//! A task without a runtime id (pending, never started) has no output yet;
//! a task whose node is gone from the registry cannot be asked.

use std::path::Path;

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::{Method, StatusCode};
use lbmesh_api::{Client, TaskLogs};
use raft_state::task::TaskRecord;

use super::respond::{error, json_response, ApiResponse};
use super::routes::Context;

/// Serves one logs request for the task `id`.
pub async fn task_logs(
    context: &Context<'_>,
    id: &str,
    query: &str,
    token: Option<String>,
) -> ApiResponse {
    let tail = match tail(query) {
        Ok(tail) => tail,
        Err(reason) => return error(StatusCode::BAD_REQUEST, "tail", reason),
    };
    let state = context.registry.local().state;
    let Some(task) = state.tasks.get(id) else {
        return error(StatusCode::NOT_FOUND, "task", format!("no task {id:?}"));
    };
    let Some(node) = task.node else {
        return error(
            StatusCode::NOT_FOUND,
            "task",
            "the task is not placed on a node yet",
        );
    };
    if node != context.registry.id {
        let Some(api_addr) = state.nodes.get(&node).map(|n| n.api_addr) else {
            return error(StatusCode::NOT_FOUND, "task", "the task's node is gone");
        };
        return forward(context, api_addr, id, tail, token).await;
    }
    let tasks_dir = context.pki.data_dir().join("tasks");
    match read_local(task, &tasks_dir, tail).await {
        Ok(logs) => json_response(
            StatusCode::OK,
            &TaskLogs {
                task: task.id.clone(),
                logs,
            },
        ),
        Err(reason) => error(StatusCode::SERVICE_UNAVAILABLE, "logs", reason),
    }
}

/// `tail=N` from the query; `None` without one.
fn tail(query: &str) -> Result<Option<usize>, String> {
    let mut tail = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let Some(("tail", n)) = pair.split_once('=') else {
            return Err(format!("unknown query parameter {pair:?}"));
        };
        let n = n
            .parse()
            .map_err(|_| format!("{n:?} is not a number of lines"))?;
        tail = Some(n);
    }
    Ok(tail)
}

/// The request as it came, to the node that runs the task.
async fn forward(
    context: &Context<'_>,
    api_addr: std::net::SocketAddr,
    id: &str,
    tail: Option<usize>,
    token: Option<String>,
) -> ApiResponse {
    let client = match Client::new(&api_addr.to_string(), token) {
        Ok(client) => client.with_tls(context.pki.credentials().client()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "node", e.to_string()),
    };
    let mut path = format!("/v1/tasks/{id}/logs");
    if let Some(tail) = tail {
        path.push_str(&format!("?tail={tail}"));
    }
    match client.raw(Method::GET, &path, Bytes::new(), None).await {
        Ok((status, body)) => {
            let mut response = hyper::Response::new(http_body_util::Full::new(body));
            *response.status_mut() = status;
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            "node",
            format!("the task's node at {api_addr} did not answer: {e}"),
        ),
    }
}

/// The output of a task this node runs.
async fn read_local(
    task: &TaskRecord,
    tasks_dir: &Path,
    tail: Option<usize>,
) -> Result<String, String> {
    let Some(runtime_id) = task.runtime_id.as_deref() else {
        return Ok(String::new());
    };
    let text = if runtime_id.starts_with("pid:") {
        let path = tasks_dir.join(format!("{}.log", task.id));
        match tokio::fs::read(&path).await {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            // The runtime removes the file with the stopped task.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    } else {
        docker_logs(runtime_id, tail).await?
    };
    Ok(last_lines(&text, tail))
}

/// A container's stdout and stderr as the engine keeps them.
async fn docker_logs(container: &str, tail: Option<usize>) -> Result<String, String> {
    let docker = bollard::Docker::connect_with_local_defaults().map_err(|e| e.to_string())?;
    let tail = tail.map_or_else(|| "all".to_owned(), |n| n.to_string());
    let options = bollard::query_parameters::LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .tail(&tail)
        .build();
    let mut stream = docker.logs(container, Some(options));
    let mut out = Vec::new();
    let read = async {
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.map_err(|e| e.to_string())?.into_bytes());
        }
        Ok::<(), String>(())
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .map_err(|_| "the engine did not send the logs within 10s".to_owned())??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The last `tail` lines of `text` (all of it without a tail).
fn last_lines(text: &str, tail: Option<usize>) -> String {
    let Some(tail) = tail else {
        return text.to_owned();
    };
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(tail);
    lines[start..].iter().map(|l| format!("{l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_takes_the_last_lines_and_refuses_bad_queries() {
        assert_eq!(last_lines("a\nb\nc\n", Some(2)), "b\nc\n");
        assert_eq!(last_lines("a\nb\n", Some(5)), "a\nb\n");
        assert_eq!(last_lines("a\nb", None), "a\nb");
        assert_eq!(tail(""), Ok(None));
        assert_eq!(tail("tail=3"), Ok(Some(3)));
        assert!(tail("tail=x").is_err());
        assert!(tail("follow=1").is_err());
    }
}
