//! `lbctl service logs NAME... [--tail N] [-f]`: the output of services'
//! tasks, each line prefixed with its task as docker prints it
//! (`web.1.ID@NODE | line`).
//!
//! # Flow
//!
//! ```text
//! names ─> each service's tasks that are wanted and started
//!   read:   GET /v1/tasks/{id}/logs[?tail=N] per task ─> prefixed lines, returned to print
//!   follow: GET /v1/tasks/{id}/logs?follow=true per task, one reader each ─┐
//!           every RESCAN: the services' tasks again; a new one is followed too ─┤
//!           ─> one channel ─> complete lines, prefixed, printed as they come <──┘
//!           until every named service is gone, or Ctrl-C (then every stream is dropped,
//!           which closes its connection, and the nodes drop theirs)
//! ```
//!
//! A chunk may end mid-line: each task keeps its partial line until the
//! rest comes, or prints it with a newline when its stream ends. A task's
//! stream ends when the task stops; a task that replaces it is found by the
//! next rescan and followed from its start, as `docker service logs -f`
//! does.

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use lbmesh_api::{ApiError, Client, DesiredState, Task};

use crate::error::CtlError;
use crate::tasks::task_name;

/// How often a follow looks for tasks that started since: a new task's
/// first lines wait at most this long.
const RESCAN: Duration = Duration::from_secs(2);

/// Chunks in flight between the readers and the printer.
const CHANNEL: usize = 64;

/// The prefix of a task's lines: `web.1.ID@NODE`.
fn prefix(task: &Task) -> String {
    format!(
        "{}.{}@{}",
        task_name(task),
        task.id,
        task.node_name.as_deref().unwrap_or("-")
    )
}

/// The tasks of `names` that have output to show: wanted and started.
async fn started_tasks(client: &Client, names: &[String]) -> Result<Vec<Task>, ApiError> {
    let mut found = Vec::new();
    for name in names {
        found.extend(
            client
                .service_tasks(name)
                .await?
                .into_iter()
                .filter(|t| t.desired == DesiredState::Running && t.runtime_id.is_some()),
        );
    }
    Ok(found)
}

/// Runs `service logs`; returns what is left to print.
pub async fn run(
    client: &Client,
    names: &[String],
    tail: Option<usize>,
    follow: bool,
) -> Result<String, CtlError> {
    let tasks = started_tasks(client, names).await?;
    if follow {
        return follow_tasks(client, names, tasks, tail).await;
    }
    let mut out = String::new();
    for task in tasks {
        let logs = client.task_logs(&task.id, tail).await?;
        let prefix = prefix(&task);
        for line in logs.logs.lines() {
            out.push_str(&format!("{prefix} | {line}\n"));
        }
    }
    Ok(out)
}

/// What a reader sends the printer.
enum Chunk {
    /// More of task `index`'s output.
    Data(usize, Vec<u8>),
    /// Task `index`'s stream ended.
    End(usize),
    /// Task `index`'s stream could not be opened or broke off.
    Failed(usize, ApiError),
}

/// The tasks being followed: their prefixes and partial lines.
struct Followed {
    prefixes: Vec<String>,
    partial: Vec<Vec<u8>>,
    ids: HashSet<String>,
}

/// Follows `tasks`, and those of `names` that start later, printing their
/// lines as they come; ends when every service is gone or at Ctrl-C.
async fn follow_tasks(
    client: &Client,
    names: &[String],
    tasks: Vec<Task>,
    tail: Option<usize>,
) -> Result<String, CtlError> {
    let (sender, mut receiver) = tokio::sync::mpsc::channel(CHANNEL);
    let mut followed = Followed {
        prefixes: Vec::new(),
        partial: Vec::new(),
        ids: HashSet::new(),
    };
    for task in &tasks {
        followed.start(client, task, tail, &sender);
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut rescan = tokio::time::interval_at(tokio::time::Instant::now() + RESCAN, RESCAN);
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            chunk = receiver.recv() => {
                // The sender kept here means the channel never closes.
                let Some(chunk) = chunk else { break };
                let printed = match chunk {
                    Chunk::Data(index, data) => followed.data(index, &data, &mut stdout),
                    Chunk::End(index) => followed.end(index, &mut stdout),
                    Chunk::Failed(index, error) => {
                        return Err(CtlError::Logs {
                            task: followed.prefixes[index].clone(),
                            source: error,
                        })
                    }
                };
                // A closed stdout (`| head`) ends the follow quietly.
                if printed.and_then(|()| stdout.flush()).is_err() {
                    break;
                }
            }
            _ = rescan.tick() => {
                let mut any_service = false;
                let mut now = Vec::new();
                for name in names {
                    match started_tasks(client, std::slice::from_ref(name)).await {
                        Ok(tasks) => {
                            any_service = true;
                            now.extend(tasks);
                        }
                        Err(ApiError::Status { status: 404, .. }) => {}
                        Err(error) => return Err(error.into()),
                    }
                }
                if !any_service {
                    break;
                }
                for task in &now {
                    // A task found again after its stream ended is not
                    // followed twice: its id stays known.
                    followed.start(client, task, None, &sender);
                }
            }
            _ = &mut ctrl_c => break,
        }
    }
    Ok(String::new())
}

impl Followed {
    /// Starts a reader of `task`'s stream, unless it has one already.
    fn start(
        &mut self,
        client: &Client,
        task: &Task,
        tail: Option<usize>,
        sender: &tokio::sync::mpsc::Sender<Chunk>,
    ) {
        if !self.ids.insert(task.id.clone()) {
            return;
        }
        let index = self.prefixes.len();
        self.prefixes.push(prefix(task));
        self.partial.push(Vec::new());
        let (client, sender, id) = (client.clone(), sender.clone(), task.id.clone());
        tokio::spawn(async move {
            let mut stream = match client.follow_task_logs(&id, tail).await {
                Ok(stream) => stream,
                Err(error) => {
                    let _ = sender.send(Chunk::Failed(index, error)).await;
                    return;
                }
            };
            while let Some(chunk) = stream.next_chunk().await {
                let message = match chunk {
                    Ok(data) => Chunk::Data(index, data.to_vec()),
                    Err(error) => Chunk::Failed(index, error),
                };
                if sender.send(message).await.is_err() {
                    return;
                }
            }
            let _ = sender.send(Chunk::End(index)).await;
        });
    }

    /// Prints the complete lines `data` finishes for task `index`.
    fn data(&mut self, index: usize, data: &[u8], out: &mut impl Write) -> std::io::Result<()> {
        let partial = &mut self.partial[index];
        partial.extend_from_slice(data);
        let Some(last_newline) = partial.iter().rposition(|&b| b == b'\n') else {
            return Ok(());
        };
        let rest = partial.split_off(last_newline + 1);
        let complete = std::mem::replace(partial, rest);
        for line in String::from_utf8_lossy(&complete).lines() {
            writeln!(out, "{} | {line}", self.prefixes[index])?;
        }
        Ok(())
    }

    /// Prints what is left of task `index`'s last line.
    fn end(&mut self, index: usize, out: &mut impl Write) -> std::io::Result<()> {
        let rest = std::mem::take(&mut self.partial[index]);
        if rest.is_empty() {
            return Ok(());
        }
        writeln!(
            out,
            "{} | {}",
            self.prefixes[index],
            String::from_utf8_lossy(&rest)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks_print_whole_and_prefixed() {
        let mut followed = Followed {
            prefixes: vec!["web.1.a@n1".to_owned(), "web.2.b@n2".to_owned()],
            partial: vec![Vec::new(), Vec::new()],
            ids: HashSet::new(),
        };
        let mut out = Vec::new();
        followed.data(0, b"hel", &mut out).expect("write");
        followed.data(1, b"one\ntw", &mut out).expect("write");
        followed.data(0, b"lo\nwor", &mut out).expect("write");
        followed.end(0, &mut out).expect("write");
        followed.end(1, &mut out).expect("write");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "web.2.b@n2 | one\nweb.1.a@n1 | hello\nweb.1.a@n1 | wor\nweb.2.b@n2 | tw\n"
        );
    }
}
