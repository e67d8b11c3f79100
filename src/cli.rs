//! The command line (clap derive). One file per subcommand under `cli/`.
//!
//! Output: every command writes its result through [`stdout()`] and its
//! notes through [`stderr()`] (or the [`outln!`](crate::outln) and
//! [`errln!`](crate::errln) macros), never `println!`/`eprintln!`, which
//! panic when the write fails. The first failure is remembered and
//! [`finish`] turns it into the exit: a closed pipe (`rmm log | head`)
//! ends quietly with 0; any other failed write to stdout (a full disk,
//! `>/dev/full`) is one line, `rmm: cannot write to stdout: …`, exit 2; a
//! failed write to stderr is exit 2 with nothing more said (there is no
//! place left to say it).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use clap::{Parser, Subcommand};

pub mod credentials;
pub mod down;
pub mod kubeconfig;
pub mod list;
pub mod log;
pub mod plan;
pub mod replay;
pub mod report;
pub mod status;
pub mod synth;
pub mod up;

const AFTER_HELP: &str = "\
Examples:
  rmm up                          build Rancher + 3 masters + 3 workers on the local world
  rmm up --masters 1 --workers 1  a small cluster
  rmm up --resume                 continue a run that crashed or was interrupted
  rmm up --workers 5              scale a completed cluster (adds or removes nodes)
  rmm plan --workers 5            what that `up` would do, touching nothing (exit 2: changes)
  rmm list                        every cluster you brought up, in any state dir
  RMM_RANCHER_PASSWORD=… rmm up --rancher-url https://rancher.example.com --distribution rke2
                                  the nodes into an existing Rancher (no rancher machine)
  rmm status --json               the state folded from the log, for scripts
  rmm status --refresh            also ask the driver what really exists (orphans)
  rmm log                         the latest run's events: seq, time, attempt, actor, event, summary
  rmm log --follow                the events as a running `rmm up` appends them
  rmm log --verify                check the whole hash chain
  rmm report --html report.html   the timeline and the events as one HTML page
  rmm credentials                 the Rancher URL, user and password (only here)
  rmm down                        remove every machine of the cluster
  rmm help environment            the RMM_* environment knobs
  rmm completion bash             a shell completion script (bash, zsh, fish)

Exit codes:
  0 success (`rmm plan`: nothing to do); 1 the run failed (fix the cause, then `rmm up --resume`);
  2 usage or configuration error (`rmm plan`: there are changes); 3 refused by the run state (an unfinished run exists,
  nothing to resume); 4 the state dir is in use by another rmm; 5 the event log fails
  verification; 130 interrupted (resumable).";

/// The heading of the options every command takes.
const GLOBAL: &str = "Global options";

/// Stands up a Rancher management server and a highly available Kubernetes
/// cluster under it, and records every step in a durable, hash-chained log.
#[derive(Debug, Parser)]
#[command(name = "rmm", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Where rmm keeps its log, secrets and (local driver) machines.
    #[arg(long, global = true, default_value = ".rmm", env = "RMM_STATE_DIR", value_name = "DIR", help_heading = GLOBAL)]
    pub state_dir: PathBuf,
    /// Configuration file; read when present. [default: rmm.toml]
    #[arg(long, global = true, value_name = "FILE", help_heading = GLOBAL)]
    pub config: Option<PathBuf>,
    /// More diagnostics on stderr (-v info, -vv debug). `RUST_LOG` also works.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = GLOBAL)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the cluster: a new run, or `--resume` the last unfinished one.
    #[command(after_help = "Examples:\n  rmm up\n  rmm up --masters 5 --workers 10 --parallel 4\n  rmm up --resume")]
    Up(up::UpArgs),
    /// What `up` (or `up --resume`) would do, without touching anything:
    /// exit 0 when nothing, 2 when there are changes.
    #[command(after_help = "Examples:\n  rmm plan --workers 5\n  rmm plan --refresh\n  rmm plan --json | jq .remove")]
    Plan(plan::PlanArgs),
    /// The state of the last run, folded from the log.
    #[command(after_help = "Examples:\n  rmm status\n  rmm status --json | jq .run.state\n  rmm status --refresh")]
    Status(status::StatusArgs),
    /// The events of the log: filter, follow, verify, export, show one with its causes.
    #[command(after_help = "Examples:\n  rmm log                                   the latest run\n  rmm log --all-runs --actor 'master*' --kind StepFailed\n  rmm log --since 10m --grep timeout\n  rmm log --follow                          while `rmm up` runs elsewhere\n  rmm log --verify\n  rmm log --export history.jsonl; rmm log --verify --from history.jsonl\n  rmm log show 42                           one event and what caused it\n  rmm log --json | jq 'select(.actor==\"master01\")'")]
    Log(log::LogArgs),
    /// Write the timeline and the events as one self-contained HTML page.
    #[command(after_help = "Examples:\n  rmm report --html report.html\n  rmm report --html all.html --all-runs")]
    Report(report::ReportArgs),
    /// Fold the log up to an event and print the state then.
    #[command(after_help = "Examples:\n  rmm replay\n  rmm replay --to 42")]
    Replay(replay::ReplayArgs),
    /// Remove every machine of the cluster (resumable; a second run is a no-op).
    ///
    /// On an existing Rancher (`--rancher-url`): delete the cluster there
    /// first, and leave the server itself alone. On any driver but `local`
    /// it asks first, naming what it will remove (`--yes` skips the
    /// question; without a terminal it refuses, exit 2, unless `--yes`).
    #[command(after_help = "Examples:\n  rmm down\n  rmm down --yes                   no question (scripts; needed off a terminal)\n  rmm down --orphans               also the machines the log does not know\n  rmm down --cluster tinysetup     the log is lost: remove what the driver has")]
    Down(down::DownArgs),
    /// Print the Rancher URL, user, password and CA checksum (on request only).
    #[command(after_help = "Examples:\n  rmm credentials\n  rmm credentials --json | jq -r .password")]
    Credentials(credentials::CredentialsArgs),
    /// Print the cluster's kubeconfig (`-o FILE`: written mode 0600); never recorded.
    #[command(after_help = "Examples:\n  rmm kubeconfig -o kubeconfig.yaml\n  KUBECONFIG=kubeconfig.yaml kubectl get nodes")]
    Kubeconfig(kubeconfig::KubeconfigArgs),
    /// Every cluster this user brought up (any state dir), from the registry
    /// under $XDG_STATE_HOME/rmm (default ~/.local/state/rmm).
    #[command(after_help = "Examples:\n  rmm list\n  rmm list --json | jq -r '.[] | select(.state == \"state dir missing\") | .dir'")]
    List(list::ListArgs),
    /// The Rancher API emulator of the local world (started by the local driver).
    #[command(hide = true, after_help = "Examples:\n  rmm emulator serve --rancher-version 2.15")]
    Emulator(crate::emulator::EmulatorArgs),
    /// Tamper drill: flip one byte of a stored record (hidden; for tests and drills).
    #[command(hide = true)]
    Tamper(TamperArgs),
    /// Write a synthetic log of N events into an empty state dir (hidden; for benchmarks).
    #[command(hide = true)]
    Synth(synth::SynthArgs),
    /// The environment variables rmm reads (`rmm help environment`).
    #[command(after_help = ENVIRONMENT)]
    Environment,
    /// Print a shell completion script.
    #[command(after_help = "Examples:\n  rmm completion bash > /etc/bash_completion.d/rmm\n  rmm completion zsh > \"${fpath[1]}/_rmm\"\n  rmm completion fish > ~/.config/fish/completions/rmm.fish")]
    Completion(CompletionArgs),
}

#[derive(Debug, clap::Args)]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: CompletionShell,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

/// `rmm completion SHELL`: the script on stdout.
pub fn completion(args: CompletionArgs) -> crate::error::Result<()> {
    use clap::CommandFactory;
    let shell = match args.shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "rmm", &mut script);
    let _ = stdout().write_all(&script);
    Ok(())
}

/// `rmm environment` / `rmm help environment`: every `RMM_*` knob.
/// (`tests/e2e/help.rs` greps the source for each `RMM_` name it reads
/// and checks that it is listed here.)
pub const ENVIRONMENT: &str = "\
Environment:
  RMM_STATE_DIR            the state dir (as --state-dir) [default: .rmm]
  RMM_RANCHER_PASSWORD     the password of an existing Rancher (--rancher-url); read once, never logged
  RMM_PLAIN                set: the live view prints one plain line per event, also on a terminal
  NO_COLOR                 set: no colours
  COLUMNS                  the width `rmm log --timeline` draws for [default: the terminal's, else 80]
  RUST_LOG                 diagnostics filter (wins over -v), e.g. RUST_LOG=rmm=debug

The local world (--driver local) — make it slow or faulty:
  RMM_LOCAL_CREATE_MS             each machine creation takes this long [default: 0]
  RMM_LOCAL_RANCHER_BOOT_MS       Rancher refuses connections this long after start [default: 0]
  RMM_LOCAL_NODE_READY_MS         a node appears in Rancher's list this long after its agent ran [default: 0]
  RMM_LOCAL_FAIL_CREATE           NAME:COUNT[,…]: the first COUNT creates of machine NAME fail
  RMM_LOCAL_CLUSTER_NAME_MS       create → status.clusterName [default: 300]
  RMM_LOCAL_DEFAULT_TOKEN_MS      clusterName → default-token exists [default: 300]
  RMM_LOCAL_PLANNER_MS            one planner step per machine [default: 150]
  RMM_LOCAL_SLOW_CONTROLLER_MS    added to each of the three above: a slow controller
  RMM_LOCAL_DELETE_MS             a deleted v1 cluster → its management cluster is gone
  RMM_LOCAL_LOGIN_WINDOW_MS       after start, /ping answers but logins get 503 [default: 300 on 2.12+]
  RMM_LOCAL_WEBHOOK_WINDOW_MS     after start, /v1 reads get 503 [default: 600 on 2.12+]
  RMM_LOCAL_CLUSTER_ERROR         MESSAGE: once every role registered, the cluster goes to error
  RMM_LOCAL_TOKEN_TTL_MS          API tokens expire after this long (then 401)
  RMM_LOCAL_CRT_TTL_MS            on 2.13+ a v1 cluster's default-token rotates this often
  RMM_LOCAL_MACHINE_ERROR         NODE:MESSAGE: that node's machine goes Failed once the planner starts
  RMM_LOCAL_AGENT_FAIL            NODE[,…] or *: that node's agent dies before checking in

Crash drills (in the shipped binary):
  RMM_CRASH_AFTER_APPEND          N: abort right after the N-th durable append of the process
  RMM_CRASH_BEFORE_OUTCOME        N: abort after the N-th effect, before its outcome is recorded
  RMM_LOCAL_CRASH_AFTER_LEDGER    NAME: abort right after the world's ledger counted the create of NAME
  RMM_LOCAL_CRASH_AFTER_REGISTER  NODE: abort while the installer runs on NODE, after it registered
  RMM_LOCAL_CRASH_BEFORE_CHECK_IN NODE: abort after the agent's unit exists on NODE, before it checked in

Set by rmm for its own processes (not for you):
  RMM_HOST_DIR, RMM_HOST_IP, RMM_HOST_NAME   the local world's machine a `docker` shim runs on
  RMM_SUPERVISOR_PID                          the local world's supervisor
  RMM_LOCAL_*                                 passed on to the emulator the docker driver starts

Tests only:
  RMM_WRITE_FIXTURES              set: the codec tests (re)write their pinned fixtures";

#[derive(Debug, clap::Args)]
pub struct TamperArgs {
    /// The record to alter.
    #[arg(long)]
    pub seq: u64,
    /// Remove the record.
    #[arg(long)]
    pub delete: bool,
    /// Swap the record with this one.
    #[arg(long)]
    pub swap_with: Option<u64>,
    /// Rewrite the record (another actor name) and recompute its own chain
    /// hash from the record before it, as a careful forger would.
    #[arg(long)]
    pub rewrite: bool,
}

/// Alters the log on purpose (a flipped byte by default), so `rmm log` and
/// `up --resume` can be seen refusing it.
pub fn tamper(args: TamperArgs, dir: &crate::state_dir::StateDir) -> crate::error::Result<()> {
    use crate::error::Error;
    let _lock = dir.lock()?;
    let mut log = dir.open_store()?;
    let raw = |log: &rmm_events::SledLog, seq: u64| -> crate::error::Result<Vec<u8>> {
        log.raw(seq)?.ok_or_else(|| Error::Config(format!("no record {seq}")))
    };
    let value = raw(&log, args.seq)?;
    if args.delete {
        log.tamper(args.seq, None)?;
    } else if let Some(other) = args.swap_with {
        let other_value = raw(&log, other)?;
        log.tamper(args.seq, Some(other_value))?;
        log.tamper(other, Some(value))?;
    } else if args.rewrite {
        let (body, _) = value.split_at(value.len() - 32);
        let mut envelope = rmm_events::codec::decode(body)?;
        envelope.actor = format!("{}-forged", envelope.actor);
        let prev = match args.seq {
            1 => rmm_events::GENESIS,
            n => {
                let p = raw(&log, n - 1)?;
                p[p.len() - 32..].try_into().expect("32 bytes")
            }
        };
        let body = rmm_events::codec::encode(&envelope);
        let mut forged = body.clone();
        forged.extend_from_slice(&rmm_events::chain_hash(&prev, &body));
        log.tamper(args.seq, Some(forged))?;
    } else {
        let mut value = value;
        let mid = value.len() / 2;
        value[mid] ^= 0x01;
        log.tamper(args.seq, Some(value))?;
    }
    Ok(())
}

/// The first failed write to stdout: its kind and text.
static STDOUT_ERROR: Mutex<Option<(std::io::ErrorKind, String)>> = Mutex::new(None);
/// Whether a write to stderr failed (a closed pipe excepted).
static STDERR_FAILED: AtomicBool = AtomicBool::new(false);

fn note_stdout<T>(r: std::io::Result<T>) -> std::io::Result<T> {
    if let Err(e) = &r {
        if e.kind() != std::io::ErrorKind::Interrupted {
            let mut first = STDOUT_ERROR.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert_with(|| (e.kind(), e.to_string()));
        }
    }
    r
}

fn note_stderr<T>(r: std::io::Result<T>) -> std::io::Result<T> {
    if let Err(e) = &r {
        if !matches!(e.kind(), std::io::ErrorKind::Interrupted | std::io::ErrorKind::BrokenPipe) {
            STDERR_FAILED.store(true, Ordering::Relaxed);
        }
    }
    r
}

/// The process's stdout, locked, remembering a failed write for [`finish`].
pub struct Stdout(std::io::StdoutLock<'static>);

/// Where a command writes its result.
pub fn stdout() -> Stdout {
    Stdout(std::io::stdout().lock())
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        note_stdout(self.0.write(buf))
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        note_stdout(self.0.write_all(buf))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        note_stdout(self.0.flush())
    }
}

/// The process's stderr, remembering a failed write for [`finish`]. Also
/// the writer of the diagnostics (`tracing`).
pub struct Stderr(std::io::Stderr);

/// Where a command writes its notes and progress.
pub fn stderr() -> Stderr {
    Stderr(std::io::stderr())
}

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        note_stderr(self.0.write(buf))
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        note_stderr(self.0.write_all(buf))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        note_stderr(self.0.flush())
    }
}

/// `println!` that does not panic: a failed write is remembered (see [`finish`]).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!($crate::cli::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that does not panic: a failed write is remembered (see [`finish`]).
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!($crate::cli::stderr(), $($arg)*);
    }};
}

/// The exit of a command: its result, unless writing its output failed.
///
/// * stdout closed by its reader (`EPIPE`): quiet, exit 0 — the reader
///   took what it wanted (`rmm log | head -1`);
/// * any other failed write to stdout: `rmm: cannot write to stdout: …`,
///   exit 2 — it is what went wrong first, whatever the command did next;
/// * the command failed: its one `rmm:` line, its exit code;
/// * it succeeded but a write to stderr failed: exit 2, nothing printed.
pub fn finish(result: crate::error::Result<()>) -> ExitCode {
    let _ = stdout().flush();
    let failed_stdout = STDOUT_ERROR.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match (failed_stdout, result) {
        (Some((std::io::ErrorKind::BrokenPipe, _)), _) => ExitCode::SUCCESS,
        (Some((_, e)), _) => {
            crate::errln!("rmm: cannot write to stdout: {e}");
            ExitCode::from(2)
        }
        (None, Err(crate::error::Error::PlanChanges)) => ExitCode::from(2),
        (None, Err(e)) => {
            // One line, whatever the cause's text holds.
            let line = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
            crate::errln!("rmm: {line}");
            e.exit_code()
        }
        (None, Ok(())) if STDERR_FAILED.load(Ordering::Relaxed) => ExitCode::from(2),
        (None, Ok(())) => ExitCode::SUCCESS,
    }
}

/// `--help`, `--version` and usage errors, written as clap would (colours
/// on a terminal) but through the checked writers: help on a full stdout
/// is exit 2 with one line, not a silent 0; a closed pipe stays quiet.
pub fn parse_failed(e: clap::Error) -> ExitCode {
    use std::io::IsTerminal;
    let styled = e.render();
    if e.use_stderr() {
        let text = if std::io::stderr().is_terminal() { styled.ansi().to_string() } else { styled.to_string() };
        // clap's `error:` becomes `rmm:`, as every other failure starts;
        // its tip and usage lines stay.
        let mut text = text.replacen("error:", "rmm:", 1);
        // No command (`rmm`, `rmm --state-dir D`) is a usage error too
        // (exit 2): the help, under a first line that says what is wrong,
        // as every other usage error's does. (clap's own missing-command
        // error would list the hidden commands, `emulator` among them.)
        use clap::error::ErrorKind;
        if matches!(e.kind(), ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand) {
            use clap::CommandFactory;
            let help = Cli::command().render_help();
            let help = if std::io::stderr().is_terminal() { help.ansi().to_string() } else { help.to_string() };
            text = format!("rmm: no command given (the commands are below; `rmm help COMMAND` for one)\n\n{help}");
        }
        let _ = stderr().write_all(text.as_bytes());
        ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
    } else {
        let text = if std::io::stdout().is_terminal() { styled.ansi().to_string() } else { styled.to_string() };
        let _ = stdout().write_all(text.as_bytes());
        finish(Ok(()))
    }
}
