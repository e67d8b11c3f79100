//! The local world's container runtime for the Rancher server: a small
//! detached process of the rmm binary (`rmm emulator supervise`) that runs
//! the emulator (`rmm emulator serve`) as its child and applies the
//! container's restart policy, as the Docker engine does.
//!
//! # What it mirrors (Docker's `--restart` documentation and moby's
//! `restartmanager`)
//! * `no`: never restarted. `always` / `unless-stopped`: restarted whenever
//!   the process exits, whatever its code; `on-failure[:N]`: restarted when
//!   it exits non-zero (at most N times).
//! * An explicit stop (`docker stop`: SIGTERM to this process) is never
//!   undone by the policy: the child gets SIGTERM, up to 10 s to end
//!   (docker stop's default), then SIGKILL; the container is recorded as
//!   exited and this process ends.
//! * Restarts back off: 100 ms, doubled after each restart, at most 1 min;
//!   a child that ran 10 s or more resets it to 100 ms.
//!
//! # Like a container
//! * This process is the container: `docker ps` shows it `Up` while its
//!   child runs, `Restarting` while it waits to restart it, and `Exited`
//!   once it is gone. Killing it (SIGKILL) is a crash of the container: the
//!   child dies with it (`PR_SET_PDEATHSIG`), as a container's processes do.
//! * It is a daemon: its own session, stdin from `/dev/null`, stdout and
//!   stderr to the container's log, and no other descriptor of whoever
//!   started it (so `x=$(rmm up)` does not wait for it).
//! * The child's pid is kept in `containers/<id>.child` for `docker ps`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::docker::{proc_start, Container};
use super::write_atomic;

/// Docker's first restart delay (`restartmanager.defaultTimeout`).
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// Docker's longest restart delay (`restartmanager.maxRestartTimeout`).
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// A run at least this long resets the delay (Docker: 10 s).
pub const RESET_AFTER: Duration = Duration::from_secs(10);
/// `docker stop`'s default grace period.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// A container's restart policy (`docker run --restart`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    No,
    Always,
    UnlessStopped,
    /// `on-failure[:max]`
    OnFailure(Option<u32>),
}

impl RestartPolicy {
    /// Docker's spellings; `Err` is docker's message.
    pub fn parse(s: &str) -> Result<RestartPolicy, String> {
        match s {
            "" | "no" => Ok(RestartPolicy::No),
            "always" => Ok(RestartPolicy::Always),
            "unless-stopped" => Ok(RestartPolicy::UnlessStopped),
            "on-failure" => Ok(RestartPolicy::OnFailure(None)),
            other => match other.strip_prefix("on-failure:").map(str::parse::<u32>) {
                Some(Ok(n)) => Ok(RestartPolicy::OnFailure(Some(n))),
                _ => Err(format!("invalid restart policy '{other}'")),
            },
        }
    }

    pub fn as_string(&self) -> String {
        match self {
            RestartPolicy::No => "no".into(),
            RestartPolicy::Always => "always".into(),
            RestartPolicy::UnlessStopped => "unless-stopped".into(),
            RestartPolicy::OnFailure(None) => "on-failure".into(),
            RestartPolicy::OnFailure(Some(n)) => format!("on-failure:{n}"),
        }
    }

    /// Whether a child that exited with `code` (None: killed by a signal)
    /// after `restarts` restarts is started again.
    pub fn restarts(&self, code: Option<i32>, restarts: u32) -> bool {
        match self {
            RestartPolicy::No => false,
            RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
            RestartPolicy::OnFailure(max) => code != Some(0) && max.is_none_or(|m| restarts < m),
        }
    }
}

/// The delay before the next restart: doubled each time, capped, and reset
/// when the child ran long enough.
pub fn next_delay(previous: Duration, ran: Duration) -> Duration {
    if ran >= RESET_AFTER {
        FIRST_DELAY
    } else {
        (previous * 2).min(MAX_DELAY)
    }
}

/// Set in the emulator's environment by its supervisor.
pub const SUPERVISOR_PID_ENV: &str = "RMM_SUPERVISOR_PID";

/// Called first thing by `rmm emulator serve`: under a supervisor, die
/// with it (SIGKILL when it dies, as a container's processes die with the
/// container); if it is already gone, end now.
pub fn die_with_supervisor() -> anyhow::Result<()> {
    let Some(pid) = std::env::var(SUPERVISOR_PID_ENV).ok().and_then(|p| p.parse::<i32>().ok()) else {
        return Ok(());
    };
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).context("PR_SET_PDEATHSIG")?;
    if nix::unistd::getppid() != Pid::from_raw(pid) {
        anyhow::bail!("the supervisor (pid {pid}) is gone");
    }
    Ok(())
}

/// `containers/<id>.child`: the child now running (or last run).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildFile {
    pub pid: i32,
    pub start: Option<u64>,
    /// Restarts so far (0 for the first start).
    pub restarts: u32,
}

pub fn child_path(container_json: &Path) -> PathBuf {
    container_json.with_extension("child")
}

pub fn read_child(container_json: &Path) -> Option<ChildFile> {
    serde_json::from_slice(&std::fs::read(child_path(container_json)).ok()?).ok()
}

/// Makes this process a daemon: its own session (no controlling terminal),
/// stdin from `/dev/null`, and every descriptor but 0, 1, 2 closed. Call
/// first thing, before any thread or runtime opens descriptors.
pub fn daemonize_self() -> io::Result<()> {
    let _ = nix::unistd::setsid(); // fails only if already a group leader (then it is detached already)
    let null = std::fs::File::open("/dev/null")?;
    nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0).map_err(io::Error::from)?;
    drop(null);
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // One of them is read_dir's own (already closed): EBADF is fine.
        let _ = nix::unistd::close(fd);
    }
    Ok(())
}

fn log(line: &str) {
    println!("{} [supervisor] {line}", crate::emulator::log_time(crate::emulator::now_ms()));
}

/// Records that the container stopped: its exit code in `<id>.json`, so
/// `docker ps` shows it `Exited` and the restart policy is done with it.
fn record_exit(container_json: &Path, code: i32) {
    let Ok(bytes) = std::fs::read(container_json) else { return };
    let Ok(mut c) = serde_json::from_slice::<Container>(&bytes) else { return };
    c.exit_code = Some(code);
    let bytes = serde_json::to_vec_pretty(&c).expect("a container record serialises");
    if let Err(e) = write_atomic(container_json, &bytes) {
        log(&format!("could not record the exit in {}: {e}", container_json.display()));
    }
}

fn exit_code(status: &std::process::ExitStatus) -> (Option<i32>, i32) {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => (Some(c), c),
        (None, Some(sig)) => (None, 128 + sig),
        _ => (None, 255),
    }
}

/// `rmm emulator supervise`: runs `exe emulator serve ARGS` under `policy`
/// until stopped. Does not return before the container ends.
pub fn run(container_json: PathBuf, policy: RestartPolicy, serve_args: Vec<String>) -> anyhow::Result<()> {
    daemonize_self().context("detaching")?;
    let exe = std::env::current_exe().context("finding the rmm binary")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(supervise(&exe, &container_json, policy, &serve_args))
}

async fn supervise(exe: &Path, container_json: &Path, policy: RestartPolicy, serve_args: &[String]) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let me = nix::unistd::getpid();
    let mut delay: Option<Duration> = None;
    let mut restarts = 0u32;
    loop {
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("emulator").arg("serve").args(serve_args).stdin(std::process::Stdio::null()).kill_on_drop(false);
        // The child ties its life to ours (PR_SET_PDEATHSIG) when it sees
        // this: see `die_with_supervisor`.
        cmd.env(SUPERVISOR_PID_ENV, me.to_string());
        let mut child = cmd.spawn().context("starting the emulator")?;
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        let file = ChildFile { pid, start: proc_start(pid), restarts };
        let _ = write_atomic(&child_path(container_json), &serde_json::to_vec(&file).expect("serialises"));
        let started = Instant::now();
        let status = tokio::select! {
            status = child.wait() => status.context("waiting for the emulator")?,
            _ = term.recv() => return stop(&mut child, container_json).await,
            _ = int.recv() => return stop(&mut child, container_json).await,
        };
        let (code, shown) = exit_code(&status);
        if !policy.restarts(code, restarts) {
            log(&format!("the emulator exited ({shown}); restart policy {} does not restart it", policy.as_string()));
            record_exit(container_json, shown);
            return Ok(());
        }
        let wait = match delay {
            Some(previous) => next_delay(previous, started.elapsed()),
            None => FIRST_DELAY,
        };
        delay = Some(wait);
        log(&format!(
            "the emulator exited ({shown}); restarting it in {} ms (restart policy {})",
            wait.as_millis(),
            policy.as_string()
        ));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = term.recv() => { record_exit(container_json, shown); return Ok(()) }
            _ = int.recv() => { record_exit(container_json, shown); return Ok(()) }
        }
        restarts += 1;
    }
}

/// `docker stop`: SIGTERM, [`STOP_GRACE`], SIGKILL; then the exit is recorded.
async fn stop(child: &mut tokio::process::Child, container_json: &Path) -> anyhow::Result<()> {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    let status = match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            let _ = child.start_kill();
            child.wait().await
        }
    };
    let shown = status.map(|s| exit_code(&s).1).unwrap_or(255);
    log(&format!("stopped (exit {shown})"));
    record_exit(container_json, shown);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_decide_like_dockers() {
        assert_eq!(RestartPolicy::parse("unless-stopped"), Ok(RestartPolicy::UnlessStopped));
        assert_eq!(RestartPolicy::parse("on-failure:3"), Ok(RestartPolicy::OnFailure(Some(3))));
        assert!(RestartPolicy::parse("sometimes").is_err());
        assert!(RestartPolicy::UnlessStopped.restarts(Some(0), 100));
        assert!(RestartPolicy::UnlessStopped.restarts(None, 0));
        assert!(!RestartPolicy::No.restarts(Some(1), 0));
        assert!(!RestartPolicy::OnFailure(None).restarts(Some(0), 0));
        assert!(RestartPolicy::OnFailure(Some(2)).restarts(Some(1), 1));
        assert!(!RestartPolicy::OnFailure(Some(2)).restarts(Some(1), 2));
    }

    #[test]
    fn the_delay_doubles_from_100ms_to_a_minute_and_resets_after_10s_up() {
        let mut d = FIRST_DELAY;
        let mut seen = vec![d.as_millis()];
        for _ in 0..12 {
            d = next_delay(d, Duration::from_millis(5));
            seen.push(d.as_millis());
        }
        assert_eq!(&seen[..5], &[100, 200, 400, 800, 1600]);
        assert_eq!(*seen.last().unwrap(), 60_000);
        assert_eq!(next_delay(Duration::from_secs(60), RESET_AFTER), FIRST_DELAY);
    }
}
