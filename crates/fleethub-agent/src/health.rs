//! Running a health check: `sh -c CMD` with `FLEETHUB_SLOT`, `FLEETHUB_FIRMWARE_VERSION` and
//! `FLEETHUB_STATE_DIR` in its environment, in its own process group, within a timeout. Exit status 0
//! passes; anything else (another status, a signal, the timeout, failing to start) fails with a reason
//! that ends up in the reported `firmware.error`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::state::Slot;

/// How much of the command's output a failure reason quotes.
const OUTPUT_TAIL: usize = 300;

/// Runs `command` for the firmware `version` booted from `slot`. `Err` is the reason it failed.
///
/// On a timeout, or when the future is dropped (the agent stopping), the command's whole process group is
/// killed, so nothing it started outlives it.
pub async fn run_health_check(
    command: &str,
    slot: Slot,
    version: &str,
    state_dir: &Path,
    timeout: Duration,
) -> Result<(), String> {
    let mut child = tokio::process::Command::new("sh");
    child
        .arg("-c")
        .arg(command)
        .env("FLEETHUB_SLOT", slot.as_str())
        .env("FLEETHUB_FIRMWARE_VERSION", version)
        .env("FLEETHUB_STATE_DIR", state_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = child
        .spawn()
        .map_err(|error| format!("health check {command:?} could not start: {error}"))?;
    let mut group = ProcessGroup(child.id());
    let outcome = tokio::time::timeout(timeout, child.wait_with_output()).await;
    if outcome.is_ok() {
        // It ended by itself.
        group.0 = None;
    }
    match outcome {
        Ok(Ok(output)) if output.status.success() => {
            tracing::info!(%command, %slot, %version, "health check passed");
            Ok(())
        }
        Ok(Ok(output)) => {
            let how = match output.status.code() {
                Some(code) => format!("exited with status {code}"),
                None => format!("was killed ({})", output.status),
            };
            let tail = output_tail(&output.stderr, &output.stdout);
            Err(if tail.is_empty() {
                format!("health check {command:?} {how}")
            } else {
                format!("health check {command:?} {how}: {tail}")
            })
        }
        Ok(Err(error)) => Err(format!("health check {command:?} failed to run: {error}")),
        // The shell was killed when its future was dropped; `group` kills the rest on its way out.
        Err(_) => Err(format!(
            "health check {command:?} did not finish within {} s",
            timeout.as_secs_f64()
        )),
    }
}

/// The health check's process group (its id is the shell's pid), killed on drop unless cleared.
struct ProcessGroup(Option<u32>);

impl Drop for ProcessGroup {
    /// `kill -KILL -- -PGID`: the standard tool rather than a raw syscall, since the crate forbids `unsafe`.
    /// Spawned, not awaited (tokio reaps it): a drop cannot wait.
    fn drop(&mut self) {
        let Some(group) = self.0 else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let killed = tokio::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{group}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Err(error) = killed {
            tracing::warn!(%error, group, "could not kill the health check's process group");
        }
    }
}

/// The last line or so of stderr (else stdout), trimmed, at most [`OUTPUT_TAIL`] characters.
fn output_tail(stderr: &[u8], stdout: &[u8]) -> String {
    let text = if stderr.iter().any(|byte| !byte.is_ascii_whitespace()) {
        String::from_utf8_lossy(stderr)
    } else {
        String::from_utf8_lossy(stdout)
    };
    let trimmed = text.trim();
    let count = trimmed.chars().count();
    if count <= OUTPUT_TAIL {
        trimmed.to_owned()
    } else {
        let tail: String = trimmed.chars().skip(count - OUTPUT_TAIL).collect();
        format!("...{tail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exit_status_decides_and_the_environment_is_set() {
        let directory = tempfile::tempdir().unwrap();
        let check = r#"test "$FLEETHUB_SLOT" = b && test "$FLEETHUB_FIRMWARE_VERSION" = 2.0.0 && test -d "$FLEETHUB_STATE_DIR""#;
        let timeout = Duration::from_secs(10);
        assert_eq!(
            run_health_check(check, Slot::B, "2.0.0", directory.path(), timeout).await,
            Ok(())
        );
        let failed = run_health_check(check, Slot::A, "2.0.0", directory.path(), timeout)
            .await
            .unwrap_err();
        assert!(failed.ends_with("exited with status 1"), "{failed}");
        let failed = run_health_check(
            "echo no network >&2; exit 3",
            Slot::B,
            "2",
            directory.path(),
            timeout,
        )
        .await
        .unwrap_err();
        assert!(
            failed.ends_with("exited with status 3: no network"),
            "{failed}"
        );
    }

    #[tokio::test]
    async fn a_hanging_check_times_out_with_its_children() {
        let directory = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let failed = run_health_check(
            "sleep 30 & wait",
            Slot::B,
            "2",
            directory.path(),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(failed.contains("did not finish within 0.2 s"), "{failed}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn a_cancelled_check_leaves_no_process_behind() {
        let directory = tempfile::tempdir().unwrap();
        let pid_file = directory.path().join("child.pid");
        let command = format!("sleep 30 & echo $! > '{}'; wait", pid_file.display());
        let check = run_health_check(
            &command,
            Slot::B,
            "2",
            directory.path(),
            Duration::from_secs(60),
        );
        let mut check = Box::pin(check);
        // Run it until its child exists, then drop it, as a stopping agent does.
        let child = loop {
            tokio::select! {
                _ = &mut check => panic!("the check cannot finish by itself"),
                () = tokio::task::yield_now() => {}
            }
            if let Ok(pid) = std::fs::read_to_string(&pid_file)
                && pid.ends_with('\n')
            {
                break pid.trim().to_owned();
            }
        };
        drop(check);
        // Dead means gone, or a zombie: an orphan's new parent may never reap it (PID 1 in some containers).
        // The shell loop is what waits; the test only bounds it.
        let gone = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while [ -r /proc/{child}/status ] && ! grep -q '^State:[[:space:]]*Z' /proc/{child}/status; do sleep 0.01; done"
            ))
            .status();
        let status = tokio::time::timeout(Duration::from_secs(10), gone)
            .await
            .expect("the health check's child is killed")
            .unwrap();
        assert!(status.success());
    }

    #[test]
    fn long_output_is_cut_to_its_tail() {
        let long = "x".repeat(1000) + "END";
        let tail = output_tail(long.as_bytes(), b"");
        assert!(tail.starts_with("...") && tail.ends_with("END"));
        assert_eq!(tail.chars().count(), OUTPUT_TAIL + 3);
        assert_eq!(output_tail(b"  \n", b"from stdout\n"), "from stdout");
    }
}
