//! The operator's auth script: run on every login with JSON on stdin.
//!
//! Exit 0 allows. Any other exit code, death by a signal, failure to start,
//! or running past the timeout denies, and the reason reaches the client as
//! "No license: …". Runs are bounded by a semaphore; stderr goes to our log.

use serde::Serialize;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Semaphore;

/// What the script reads on stdin.
#[derive(Debug, Clone, Serialize)]
pub struct AuthInput {
    pub mech: String,
    pub data: String,
    pub addr: String,
    pub user: String,
    pub groups: Vec<String>,
}

pub struct AuthHook {
    path: PathBuf,
    timeout: Duration,
    permits: Semaphore,
}

impl AuthHook {
    pub fn new(path: PathBuf, timeout: Duration, max_concurrent: usize) -> Self {
        AuthHook {
            path,
            timeout,
            permits: Semaphore::new(max_concurrent),
        }
    }

    /// Ok when the script allows. A denial's reason (exit code, timeout,
    /// crash) may be told to the client; a script that could not be run is
    /// an incident: its detail (which names the script's path) goes to the log
    /// only, and the client hears "No license" with the incident id.
    pub async fn check(&self, input: &AuthInput) -> Result<(), String> {
        self.run(input).await.map_err(|refusal| match refusal {
            Refusal::Denied(why) => why,
            Refusal::Failed(detail) => format!(
                "the login could not be checked (incident {})",
                crate::incident::Incident::record("the auth script failed", &detail).id()
            ),
        })
    }

    async fn run(&self, input: &AuthInput) -> Result<(), Refusal> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Refusal::Failed("auth script runner is shut down".to_string()))?;
        let mut child = tokio::process::Command::new(&self.path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                Refusal::Failed(format!(
                    "auth script {} could not start: {e}",
                    self.path.display()
                ))
            })?;
        let json = serde_json::to_vec(input).expect("plain struct serialises");
        if let Some(mut stdin) = child.stdin.take() {
            // A script that exits without reading stdin is fine: ignore EPIPE.
            let _ = stdin.write_all(&json).await;
            let _ = stdin.shutdown().await;
        }
        let stderr = child.stderr.take();
        let script = self.path.display().to_string();
        let script_path = script.clone();
        let logger = tokio::spawn(async move {
            if let Some(err) = stderr {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::warn!(target: "floatlm::auth_script", script = %script, "{line}");
                }
            }
        });
        let outcome = match tokio::time::timeout(self.timeout, child.wait()).await {
            Err(_) => {
                let _ = child.kill().await;
                Err(Refusal::Denied(format!(
                    "the auth script timed out after {:?}",
                    self.timeout
                )))
            }
            Ok(Err(e)) => Err(Refusal::Failed(format!(
                "auth script {script_path} could not be waited for: {e}"
            ))),
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => match status.code() {
                Some(code) => Err(Refusal::Denied(format!(
                    "denied by the auth script (exit code {code})"
                ))),
                None => {
                    use std::os::unix::process::ExitStatusExt;
                    Err(Refusal::Denied(format!(
                        "the auth script crashed (signal {})",
                        status.signal().unwrap_or(0)
                    )))
                }
            },
        };
        logger.abort();
        outcome
    }
}

/// Why a login was not allowed.
enum Refusal {
    /// The script said no, timed out or crashed (told to the client; no
    /// path, no operating-system text).
    Denied(String),
    /// The script could not decide (for the log only).
    Failed(String),
}
