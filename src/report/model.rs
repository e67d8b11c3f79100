//! The timeline model both renderings draw: runs, their attempts, one bar
//! per try of a step, the coordinator's marks, and the critical path.
//!
//! A bar goes from a step's intent (`StepStarted`) to its outcome
//! (`StepSucceeded` / `StepFailed`). An intent with no outcome in its
//! attempt is *open*: it is cut at the end of that attempt (a crash or an
//! interruption, or the run is still going). When a resume settles such an
//! intent by asking the world (an outcome in a later attempt with no new
//! intent), that outcome is drawn as a short *reconcile* bar at the start of
//! the new attempt.
//!
//! # The critical path
//!
//! Per attempt: start from the bar that ended last and walk back, each time
//! to the bar that let the current one start (or end) — the latest-ending
//! of its candidates — until no candidate ended inside the attempt (the
//! chain then starts at the attempt's start). The candidates follow the
//! dependency rules of `rmm_actors::decide` and the world:
//!
//! * the same actor's previous bar (steps run in order; a retry follows the
//!   failed try);
//! * `run_agent` of a node: rancher's `wait_node_command`; for master N the
//!   previous master's `wait_node_listed` (masters join one at a time); for
//!   a worker every master's `wait_node_listed`;
//! * `create_machine` when the plan's `parallel` slots were all busy: the
//!   other actors' `create_machine` bars whose end freed a slot;
//! * finish-to-finish: rancher's `wait_cluster_active` ends when the nodes
//!   have registered (nodes' `run_agent` / `wait_node_listed` that ended
//!   while it waited), a node's `wait_node_active` when the cluster is
//!   active (rancher's `wait_cluster_active`).
//!
//! Order is by sequence number, not by clock: "ended before it started"
//! means the outcome's seq is below the intent's, so equal timestamps do
//! not confuse the walk.

use std::collections::HashMap;

use rmm_events::{Envelope, Event, Plan, RunKind, Step, Via};
use uuid::Uuid;

/// How a bar ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BarEnd {
    Ok { adopted: bool },
    Failed { retryable: bool, error: String },
    /// No outcome in its attempt: in flight, or cut by a crash/interruption.
    Open,
    /// Stopped by Ctrl-C / SIGTERM (`StepInterrupted`): not a failed try.
    Interrupted { reason: String },
}

#[derive(Debug, Clone)]
pub struct Bar {
    pub actor: usize,
    pub step: Step,
    pub try_no: u32,
    pub attempt: u32,
    pub start_ms: i64,
    pub end_ms: i64,
    /// Seq of the intent (of the outcome, for a reconcile bar).
    pub start_seq: u64,
    /// Seq of the outcome; for an open bar, just past its attempt's last event.
    pub end_seq: u64,
    pub end: BarEnd,
    /// The intent's detail text.
    pub detail: String,
    /// An outcome a resume established by asking the world (no intent of its own).
    pub reconcile: bool,
    /// On the critical path of its attempt.
    pub critical: bool,
}

impl Bar {
    pub fn duration_ms(&self) -> i64 {
        (self.end_ms - self.start_ms).max(0)
    }

    /// Short name to write inside a wide bar.
    pub fn short(&self) -> &'static str {
        short_step(self.step)
    }
}

pub fn short_step(step: Step) -> &'static str {
    match step {
        Step::CreateMachine => "create",
        Step::StartServer => "start",
        Step::WaitReady => "ready",
        Step::PinCa => "ca",
        Step::Login => "login",
        Step::ChangePassword => "passwd",
        Step::CreateApiToken => "token",
        Step::SetServerUrl => "url",
        Step::CreateCluster => "cluster",
        Step::CreateRegistrationToken => "regtoken",
        Step::WaitNodeCommand => "nodecmd",
        Step::WaitClusterActive => "active",
        Step::RunAgent => "agent",
        Step::WaitNodeListed => "listed",
        Step::WaitNodeActive => "active",
        Step::RemoveMachine => "remove",
        Step::CheckServer => "check",
        Step::CheckRancherVersion => "ver",
        Step::WaitApiReady => "apiready",
        Step::ChooseKubernetesVersion => "k8sver",
        Step::WaitClusterName => "mgmtid",
        Step::WaitMachineRunning => "running",
        Step::WaitClusterReady => "ready",
        Step::DeleteCluster => "delete",
        Step::CheckMachine => "machine",
        Step::DeleteNode => "delnode",
        Step::DeleteApiTokens => "deltokens",
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptEnd {
    Completed,
    Failed(String),
    Interrupted(String),
    /// No end recorded and a later attempt exists: the process died.
    Crashed,
    /// The last attempt, with no end recorded: still running, or crashed.
    Open,
}

impl AttemptEnd {
    pub fn word(&self) -> &'static str {
        match self {
            AttemptEnd::Completed => "completed",
            AttemptEnd::Failed(_) => "failed",
            AttemptEnd::Interrupted(_) => "interrupted",
            AttemptEnd::Crashed => "crashed",
            AttemptEnd::Open => "no end recorded",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Attempt {
    pub no: u32,
    pub start_ms: i64,
    pub end_ms: i64,
    pub last_seq: u64,
    pub end: AttemptEnd,
    /// What the attempt's `AttemptStarted` says (who, where, which command).
    pub started_by: String,
    /// A scale (`PlanChanged`): the counts it went from and to,
    /// `3+3 → 3+5` (masters+workers).
    pub scale: Option<String>,
}

impl Attempt {
    pub fn duration_ms(&self) -> i64 {
        (self.end_ms - self.start_ms).max(0)
    }

    /// How this attempt followed the one that ended at `prev_end_ms`: a
    /// scale (and its counts) or a resume, and how much later.
    pub fn followed(&self, prev_end_ms: i64) -> String {
        let later = super::axis::fmt_dur(self.start_ms - prev_end_ms);
        match &self.scale {
            Some(scale) => format!("a scale, masters+workers {scale}, {later} later"),
            None => format!("resumed {later} later"),
        }
    }
}

/// A point on the coordinator's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkKind {
    AttemptStarted,
    JoinGranted,
    Completed,
    Failed,
    Interrupted,
}

impl MarkKind {
    pub fn glyph(self) -> char {
        match self {
            MarkKind::AttemptStarted => 'A',
            MarkKind::JoinGranted => 'j',
            MarkKind::Completed => 'C',
            MarkKind::Failed => 'F',
            MarkKind::Interrupted => 'I',
        }
    }

    /// Which mark wins a shared column.
    pub fn priority(self) -> u8 {
        match self {
            MarkKind::JoinGranted => 1,
            MarkKind::AttemptStarted => 2,
            MarkKind::Completed => 3,
            MarkKind::Interrupted => 4,
            MarkKind::Failed => 5,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Mark {
    pub at_ms: i64,
    pub attempt: u32,
    pub kind: MarkKind,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    /// Indices into `Run::bars`, in start order.
    pub bars: Vec<usize>,
}

impl Actor {
    pub fn is_coordinator(&self) -> bool {
        self.name == "coordinator"
    }
}

#[derive(Debug, Clone)]
pub struct Run {
    pub id: Uuid,
    pub kind: Option<RunKind>,
    pub plan: Option<Plan>,
    pub attempts: Vec<Attempt>,
    /// Sorted: rancher, masters, workers, others, coordinator last.
    pub actors: Vec<Actor>,
    pub bars: Vec<Bar>,
    pub marks: Vec<Mark>,
    /// Per attempt (same order as `attempts`), the critical chain as bar
    /// indices, first to last.
    pub critical: Vec<Vec<usize>>,
    pub events: usize,
}

impl Run {
    pub fn start_ms(&self) -> i64 {
        self.attempts.first().map_or(0, |a| a.start_ms)
    }

    pub fn end_ms(&self) -> i64 {
        self.attempts.last().map_or(0, |a| a.end_ms)
    }

    /// Time spent in attempts (the gaps between them left out).
    pub fn busy_ms(&self) -> i64 {
        self.attempts.iter().map(Attempt::duration_ms).sum()
    }

    pub fn final_end(&self) -> &AttemptEnd {
        self.attempts.last().map_or(&AttemptEnd::Open, |a| &a.end)
    }

    pub fn attempt(&self, no: u32) -> Option<&Attempt> {
        self.attempts.iter().find(|a| a.no == no)
    }

    pub fn actor_index(&self, name: &str) -> Option<usize> {
        self.actors.iter().position(|a| a.name == name)
    }

    /// "up tinysetup (3 masters, 2 workers)".
    pub fn title(&self) -> String {
        let kind = match self.kind {
            Some(RunKind::Up) => "up",
            Some(RunKind::Down) => "down",
            None => "run",
        };
        match &self.plan {
            Some(p) => format!(
                "{kind} {} ({} master{}, {} worker{})",
                p.cluster_name,
                p.masters,
                if p.masters == 1 { "" } else { "s" },
                p.workers,
                if p.workers == 1 { "" } else { "s" }
            ),
            None => kind.to_string(),
        }
    }

    /// Per actor: time from its first intent to its last outcome, summed
    /// over attempts (gaps between attempts left out), and time inside steps.
    pub fn actor_times(&self, actor: usize) -> (i64, i64) {
        let mut span = 0;
        let mut busy = 0;
        for att in &self.attempts {
            let bars: Vec<&Bar> = self.actors[actor].bars.iter().map(|&i| &self.bars[i]).filter(|b| b.attempt == att.no).collect();
            if let (Some(first), Some(last)) = (bars.iter().map(|b| b.start_ms).min(), bars.iter().map(|b| b.end_ms).max()) {
                span += last - first;
            }
            busy += bars.iter().map(|b| b.duration_ms()).sum::<i64>();
        }
        (span, busy)
    }

    /// Critical chain of `attempt` and its length from the attempt start to
    /// the chain's last end, and the time on it not spent inside a step.
    pub fn critical_summary(&self, idx: usize) -> Option<(i64, i64)> {
        let chain = self.critical.get(idx)?;
        let last = *chain.last()?;
        let att = &self.attempts[idx];
        let length = self.bars[last].end_ms - att.start_ms;
        // Time covered by the chain's bars (a finish-to-finish link overlaps
        // the bar before it: count each instant once).
        let mut covered = 0;
        let mut until = att.start_ms;
        for &i in chain {
            let b = &self.bars[i];
            covered += (b.end_ms - b.start_ms.max(until)).max(0);
            until = until.max(b.end_ms);
        }
        Some((length, (length - covered).max(0)))
    }
}

/// Builds the timeline of every run in `events` (log order).
pub fn build(events: &[Envelope]) -> Vec<Run> {
    let mut runs: Vec<Builder> = Vec::new();
    let mut by_id: HashMap<Uuid, usize> = HashMap::new();
    for e in events {
        let idx = *by_id.entry(e.run).or_insert_with(|| {
            runs.push(Builder::new(e.run));
            runs.len() - 1
        });
        runs[idx].apply(e);
    }
    runs.into_iter().map(Builder::finish).collect()
}

struct Builder {
    run: Run,
    /// (actor name, step) → open bar index.
    open: HashMap<(String, Step), usize>,
    actor_names: Vec<String>,
}

impl Builder {
    fn new(id: Uuid) -> Builder {
        Builder {
            run: Run {
                id,
                kind: None,
                plan: None,
                attempts: Vec::new(),
                actors: Vec::new(),
                bars: Vec::new(),
                marks: Vec::new(),
                critical: Vec::new(),
                events: 0,
            },
            open: HashMap::new(),
            actor_names: Vec::new(),
        }
    }

    fn actor(&mut self, name: &str) -> usize {
        match self.actor_names.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                self.actor_names.push(name.to_string());
                self.actor_names.len() - 1
            }
        }
    }

    fn attempt(&mut self, e: &Envelope) -> &mut Attempt {
        let pos = match self.run.attempts.iter().position(|a| a.no == e.attempt) {
            Some(p) => p,
            None => {
                self.run.attempts.push(Attempt {
                    no: e.attempt,
                    start_ms: e.at_ms,
                    end_ms: e.at_ms,
                    last_seq: e.seq,
                    end: AttemptEnd::Open,
                    started_by: String::new(),
                    scale: None,
                });
                self.run.attempts.len() - 1
            }
        };
        let a = &mut self.run.attempts[pos];
        a.end_ms = a.end_ms.max(e.at_ms);
        a.last_seq = a.last_seq.max(e.seq);
        a
    }

    fn apply(&mut self, e: &Envelope) {
        self.run.events += 1;
        self.attempt(e);
        let actor = self.actor(&e.actor);
        match &e.event {
            Event::RunStarted { kind, plan } => {
                self.run.kind = Some(*kind);
                self.run.plan = Some(plan.clone());
            }
            Event::AttemptStarted { .. } => {
                let summary = e.event.summary();
                self.attempt(e).started_by = summary;
                self.mark(e, MarkKind::AttemptStarted);
            }
            Event::JoinGranted { .. } => self.mark(e, MarkKind::JoinGranted),
            Event::RunCompleted => {
                self.attempt(e).end = AttemptEnd::Completed;
                self.mark(e, MarkKind::Completed);
            }
            Event::RunFailed { .. } => {
                self.attempt(e).end = AttemptEnd::Failed(e.event.summary());
                self.mark(e, MarkKind::Failed);
            }
            Event::AttemptInterrupted { reason } => {
                self.attempt(e).end = AttemptEnd::Interrupted(reason.clone());
                self.mark(e, MarkKind::Interrupted);
            }
            // Rancher's progress messages: shown by `rmm log`, not on the timeline.
            Event::Progress { .. } => {}
            // A scale: the plan the run goes on with.
            Event::PlanChanged { plan } => {
                let from = self.run.plan.as_ref().map(|p| format!("{}+{}", p.masters, p.workers)).unwrap_or_else(|| "?".into());
                self.attempt(e).scale = Some(format!("{from} → {}+{}", plan.masters, plan.workers));
                self.run.plan = Some(plan.clone());
            }
            Event::StepStarted { step, try_no, detail } => {
                // An intent still open here was cut (crash) or is superseded.
                self.open.remove(&(e.actor.clone(), *step));
                let idx = self.run.bars.len();
                self.run.bars.push(Bar {
                    actor,
                    step: *step,
                    try_no: *try_no,
                    attempt: e.attempt,
                    start_ms: e.at_ms,
                    end_ms: e.at_ms,
                    start_seq: e.seq,
                    end_seq: u64::MAX,
                    end: BarEnd::Open,
                    detail: detail.clone(),
                    reconcile: false,
                    critical: false,
                });
                self.open.insert((e.actor.clone(), *step), idx);
            }
            Event::StepSucceeded { step, via, .. } => {
                let end = BarEnd::Ok { adopted: *via == Via::Adopted };
                self.close(e, actor, *step, None, end);
            }
            Event::StepFailed { step, try_no, error, retryable } => {
                let end = BarEnd::Failed { retryable: *retryable, error: error.clone() };
                self.close(e, actor, *step, Some(*try_no), end);
            }
            Event::StepInterrupted { step, try_no, reason } => {
                let end = BarEnd::Interrupted { reason: reason.clone() };
                self.close(e, actor, *step, Some(*try_no), end);
            }
        }
    }

    fn mark(&mut self, e: &Envelope, kind: MarkKind) {
        self.run.marks.push(Mark { at_ms: e.at_ms, attempt: e.attempt, kind, text: e.event.summary() });
    }

    fn close(&mut self, e: &Envelope, actor: usize, step: Step, try_no: Option<u32>, end: BarEnd) {
        let open = self.open.remove(&(e.actor.clone(), step));
        match open {
            Some(i) if self.run.bars[i].attempt == e.attempt => {
                let bar = &mut self.run.bars[i];
                bar.end_ms = e.at_ms.max(bar.start_ms);
                bar.end_seq = e.seq;
                bar.end = end;
            }
            other => {
                // An outcome with no intent in this attempt: a resume settled
                // an earlier attempt's intent by asking the world.
                let try_no = try_no.or_else(|| other.map(|i| self.run.bars[i].try_no)).unwrap_or(1);
                self.run.bars.push(Bar {
                    actor,
                    step,
                    try_no,
                    attempt: e.attempt,
                    start_ms: e.at_ms,
                    end_ms: e.at_ms,
                    start_seq: e.seq,
                    end_seq: e.seq,
                    end,
                    detail: "settled by asking the world".into(),
                    reconcile: true,
                    critical: false,
                });
            }
        }
    }

    fn finish(mut self) -> Run {
        let run = &mut self.run;
        run.attempts.sort_by_key(|a| a.no);
        let n = run.attempts.len();
        for (i, a) in run.attempts.iter_mut().enumerate() {
            if a.end == AttemptEnd::Open && i + 1 < n {
                a.end = AttemptEnd::Crashed;
            }
        }
        // Open bars end with their attempt.
        for bar in run.bars.iter_mut().filter(|b| b.end == BarEnd::Open) {
            if let Some(a) = run.attempts.iter().find(|a| a.no == bar.attempt) {
                bar.end_ms = a.end_ms.max(bar.start_ms);
                bar.end_seq = a.last_seq + 1;
            }
        }
        // Actors in a readable order, each with its bars in start order.
        let mut order: Vec<usize> = (0..self.actor_names.len()).collect();
        order.sort_by_key(|&i| actor_sort_key(&self.actor_names[i]));
        let mut remap = vec![0; order.len()];
        for (new, &old) in order.iter().enumerate() {
            remap[old] = new;
        }
        run.actors = order.iter().map(|&i| Actor { name: self.actor_names[i].clone(), bars: Vec::new() }).collect();
        for bar in run.bars.iter_mut() {
            bar.actor = remap[bar.actor];
        }
        let mut idx: Vec<usize> = (0..run.bars.len()).collect();
        idx.sort_by_key(|&i| (run.bars[i].start_seq, i));
        for i in idx {
            run.actors[run.bars[i].actor].bars.push(i);
        }
        run.critical = run.attempts.iter().map(|a| critical_chain(run, a.no)).collect();
        for chain in run.critical.clone() {
            for i in chain {
                run.bars[i].critical = true;
            }
        }
        self.run
    }
}

/// rancher, master01…, worker01…, anything else, coordinator.
fn actor_sort_key(name: &str) -> (u8, String) {
    let class = if name == "rancher" {
        0
    } else if name.starts_with("master") {
        1
    } else if name.starts_with("worker") {
        2
    } else if name == "coordinator" {
        4
    } else {
        3
    };
    (class, name.to_string())
}

fn critical_chain(run: &Run, attempt: u32) -> Vec<usize> {
    let bars: Vec<usize> = (0..run.bars.len()).filter(|&i| run.bars[i].attempt == attempt).collect();
    // The end of the attempt: its last outcome (an intent cut by the end of
    // the attempt did not set it), or, with no outcome at all, its last intent.
    let closed = |i: usize| run.bars[i].end != BarEnd::Open;
    let last = bars.iter().copied().filter(|&i| closed(i)).max_by_key(|&i| run.bars[i].end_seq);
    let Some(last) = last.or_else(|| bars.iter().copied().max_by_key(|&i| run.bars[i].start_seq)) else {
        return Vec::new();
    };
    let mut chain = vec![last];
    let mut cur = last;
    // Each step back goes to a bar that ended strictly earlier (by seq): the walk ends.
    while let Some(p) = predecessor(run, &bars, cur) {
        chain.push(p);
        cur = p;
    }
    chain.reverse();
    chain
}

/// The bar that let `b` start (or end): the latest-ending of its candidates.
fn predecessor(run: &Run, bars: &[usize], b: usize) -> Option<usize> {
    let bar = &run.bars[b];
    let name = |i: usize| run.actors[run.bars[i].actor].name.as_str();
    let me = run.actors[bar.actor].name.as_str();
    let masters = master_names(run);
    let ok = |i: usize| matches!(run.bars[i].end, BarEnd::Ok { .. });
    let before_start = |i: usize| run.bars[i].end_seq < bar.start_seq;
    let mut best: Option<usize> = None;
    let mut consider = |i: usize| {
        if best.is_none_or(|j| run.bars[i].end_seq > run.bars[j].end_seq) {
            best = Some(i);
        }
    };
    for &i in bars {
        if i == b {
            continue;
        }
        let other = &run.bars[i];
        let same_actor = other.actor == bar.actor;
        if same_actor && before_start(i) {
            consider(i);
            continue;
        }
        if same_actor {
            continue;
        }
        let other_name = name(i);
        match bar.step {
            Step::RunAgent => {
                let gate = if other_name == "rancher" {
                    other.step == Step::WaitNodeCommand
                } else if other.step == Step::WaitNodeListed {
                    match masters.iter().position(|m| *m == me) {
                        Some(pos) => pos > 0 && masters[pos - 1] == other_name,
                        None => masters.contains(&other_name),
                    }
                } else {
                    false
                };
                if gate && ok(i) && before_start(i) {
                    consider(i);
                }
            }
            Step::CreateMachine if other.step == Step::CreateMachine && before_start(i) && slots_full(run, bars, i) => consider(i),
            // A `down` on an existing Rancher removes node machines once
            // the cluster is gone from Rancher.
            Step::RemoveMachine if other_name == "rancher" && other.step == Step::DeleteCluster && ok(i) && before_start(i) => consider(i),
            Step::WaitClusterActive if me == "rancher" => {
                let node_step = matches!(other.step, Step::RunAgent | Step::WaitNodeListed);
                if node_step && ok(i) && other.end_seq > bar.start_seq && other.end_seq < bar.end_seq {
                    consider(i);
                }
            }
            Step::WaitNodeActive
                if other_name == "rancher"
                    && other.step == Step::WaitClusterActive
                    && ok(i)
                    && other.end_seq > bar.start_seq
                    && other.end_seq < bar.end_seq =>
            {
                consider(i)
            }
            _ => {}
        }
    }
    best
}

/// Whether, just before `ended` finished, every creation slot was taken
/// (so its end is what let a waiting creation start).
fn slots_full(run: &Run, bars: &[usize], ended: usize) -> bool {
    let Some(parallel) = run.plan.as_ref().map(|p| p.parallel as usize) else { return false };
    let t = run.bars[ended].end_seq;
    let busy = bars
        .iter()
        .filter(|&&i| {
            let q = &run.bars[i];
            q.step == Step::CreateMachine && q.start_seq < t && q.end_seq >= t
        })
        .count();
    busy >= parallel.max(1)
}

fn master_names(run: &Run) -> Vec<&str> {
    // Actors are sorted, so masters come in join order (master01, master02…).
    run.actors.iter().map(|a| a.name.as_str()).filter(|n| n.starts_with("master")).collect()
}
