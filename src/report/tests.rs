//! Canned histories: a happy run, a run with retries and a failure, a run
//! that crashed and was resumed, and two runs in one log.

use rmm_events::{Envelope, Event, Outcome, Plan, Retry, RunKind, SecretRef, Step, Via};
use uuid::Uuid;

use super::model::{build, BarEnd, Run};
use super::*;

fn plan(masters: u32, workers: u32) -> Plan {
    Plan { masters, workers, retry: Retry { max_tries: 3, backoff_ms: 100 }, ..Plan::default() }
}

/// A history builder with an explicit clock (ms since the run started).
struct H {
    run: Uuid,
    attempt: u32,
    t0: i64,
    events: Vec<Envelope>,
}

impl H {
    fn new(masters: u32, workers: u32) -> H {
        let mut h = H { run: Uuid::now_v7(), attempt: 1, t0: 1_750_000_000_000, events: Vec::new() };
        h.push(0, "coordinator", Event::RunStarted { kind: RunKind::Up, plan: plan(masters, workers) });
        h.attempt(0, 1)
    }

    fn down(mut self, t: i64) -> H {
        self.run = Uuid::now_v7();
        self.attempt = 1;
        self.push(t, "coordinator", Event::RunStarted { kind: RunKind::Down, plan: plan(1, 1) });
        self.attempt(t, 1)
    }

    fn push(&mut self, t: i64, actor: &str, event: Event) {
        let seq = self.events.len() as u64 + 1;
        self.events.push(Envelope {
            seq,
            id: Uuid::now_v7(),
            run: self.run,
            attempt: self.attempt,
            actor: actor.into(),
            cause: self.events.last().map(|e| e.id),
            at_ms: self.t0 + t,
            event,
        });
    }

    fn attempt(mut self, t: i64, n: u32) -> H {
        self.attempt = n;
        let event = Event::AttemptStarted {
            attempt: n,
            command: "rmm up".into(),
            pid: 42,
            rmm_version: "0.1.0".into(),
            user: "ops".into(),
            host: "box".into(),
        };
        self.push(t, "coordinator", event);
        self
    }

    fn start(mut self, t: i64, actor: &str, step: Step, try_no: u32) -> H {
        self.push(t, actor, Event::StepStarted { step, try_no, detail: format!("{} of {actor}", step.as_str()) });
        self
    }

    fn ok(mut self, t: i64, actor: &str, step: Step) -> H {
        self.push(t, actor, Event::StepSucceeded { step, outcome: outcome(step), via: Via::Done });
        self
    }

    fn adopted(mut self, t: i64, actor: &str, step: Step) -> H {
        self.push(t, actor, Event::StepSucceeded { step, outcome: outcome(step), via: Via::Adopted });
        self
    }

    fn fail(mut self, t: i64, actor: &str, step: Step, try_no: u32, retryable: bool, error: &str) -> H {
        self.push(t, actor, Event::StepFailed { step, try_no, error: error.into(), retryable });
        self
    }

    fn step(self, t0: i64, t1: i64, actor: &str, step: Step) -> H {
        self.start(t0, actor, step, 1).ok(t1, actor, step)
    }

    fn grant(mut self, t: i64, node: &str) -> H {
        self.push(t, "coordinator", Event::JoinGranted { node: node.into() });
        self
    }

    fn completed(mut self, t: i64) -> H {
        self.push(t, "coordinator", Event::RunCompleted);
        self
    }

    fn failed(mut self, t: i64, actor: &str, step: Step, reason: &str) -> H {
        self.push(t, "coordinator", Event::RunFailed { actor: actor.into(), step: Some(step), reason: reason.into() });
        self
    }

    /// The rancher chain from `t` on, each step `d` ms (wait_ready 1000 ms),
    /// up to the node command; returns the time it is ready.
    fn rancher_until_node_command(mut self, t: i64, d: i64) -> (H, i64) {
        let mut t = t;
        for &s in rmm_actors::decide::RANCHER_STEPS.iter().skip(1).take_while(|s| **s != Step::WaitClusterActive) {
            let len = if s == Step::WaitReady { 1000 } else { d };
            self = self.step(t, t + len, "rancher", s);
            t += len + 1;
        }
        (self, t)
    }

    fn timeline(&self) -> Run {
        let mut runs = build(&self.events);
        assert!(!runs.is_empty());
        runs.remove(runs.len() - 1)
    }
}

fn outcome(step: Step) -> Outcome {
    let secret = |name: &str| SecretRef { name: name.into(), fingerprint: "0123456789ab".into() };
    match step {
        Step::CreateMachine => Outcome::MachineCreated { ip: "127.0.0.2".into() },
        Step::StartServer => Outcome::ServerStarted { image: "rancher/rancher:v2.11.3".into() },
        Step::WaitReady => Outcome::Ready,
        Step::PinCa => Outcome::CaPinned { checksum: "ab".repeat(32) },
        Step::Login => Outcome::LoggedIn { token: secret("login") },
        Step::ChangePassword => Outcome::PasswordChanged { password: secret("admin-password") },
        Step::CreateApiToken => Outcome::ApiTokenCreated { token_id: "token-1".into(), token: secret("api") },
        Step::SetServerUrl => Outcome::ServerUrlSet { url: "https://127.0.0.1:8443".into() },
        Step::CreateCluster => Outcome::ClusterCreated { cluster_id: "c-1".into() },
        Step::CreateRegistrationToken => Outcome::RegistrationTokenCreated { token_id: "c-1:default-token".into() },
        Step::WaitNodeCommand => Outcome::NodeCommandReady { command: secret("node-command") },
        Step::WaitClusterActive => Outcome::ClusterActive,
        Step::RunAgent => Outcome::AgentStarted,
        Step::WaitNodeListed => Outcome::NodeListed { node_id: "c-1:m-1".into() },
        Step::WaitNodeActive => Outcome::NodeActive,
        Step::RemoveMachine => Outcome::MachineRemoved,
        Step::CheckRancherVersion => Outcome::RancherVersion { version: "v2.11.3".into() },
        Step::WaitApiReady => Outcome::ApiReady,
        Step::ChooseKubernetesVersion => Outcome::KubernetesVersionChosen { version: "v1.35.1+rke2r1".into(), server_default: true },
        Step::WaitClusterName => Outcome::ClusterNamed { management_id: "c-m-1".into() },
        Step::WaitMachineRunning => Outcome::MachineRunning { machine: "custom-1".into(), node: "master01".into() },
        Step::WaitClusterReady => Outcome::ClusterReady,
        Step::CheckServer => Outcome::ServerRunning,
        Step::DeleteCluster => Outcome::ClusterDeleted { management_id: "c-m-1".into() },
        Step::CheckMachine => Outcome::MachineUp { ip: "127.0.0.2".into() },
        Step::DeleteNode => Outcome::NodeDeleted { machine: "custom-1".into() },
        Step::DeleteApiTokens => Outcome::ApiTokensDeleted { deleted: 1 },
    }
}

/// rancher + 2 masters + 1 worker, all fine. The masters' turns come one
/// after the other; worker01 is the last to be active.
fn happy() -> H {
    let h = H::new(2, 1)
        .start(1, "rancher", Step::CreateMachine, 1)
        .start(1, "master01", Step::CreateMachine, 1)
        .start(1, "master02", Step::CreateMachine, 1)
        .start(1, "worker01", Step::CreateMachine, 1)
        .ok(800, "master01", Step::CreateMachine)
        .ok(810, "rancher", Step::CreateMachine)
        .ok(820, "master02", Step::CreateMachine)
        .ok(830, "worker01", Step::CreateMachine);
    let (h, t) = h.rancher_until_node_command(831, 10);
    let h = h
        .start(t, "rancher", Step::WaitClusterActive, 1)
        .grant(t + 1, "master01")
        .step(t + 2, t + 20, "master01", Step::RunAgent)
        .step(t + 21, t + 400, "master01", Step::WaitNodeListed)
        .start(t + 401, "master01", Step::WaitNodeActive, 1)
        .grant(t + 402, "master02")
        .step(t + 403, t + 420, "master02", Step::RunAgent)
        .step(t + 421, t + 800, "master02", Step::WaitNodeListed)
        .start(t + 801, "master02", Step::WaitNodeActive, 1)
        .grant(t + 802, "worker01")
        .step(t + 803, t + 820, "worker01", Step::RunAgent)
        .step(t + 821, t + 1200, "worker01", Step::WaitNodeListed)
        .start(t + 1201, "worker01", Step::WaitNodeActive, 1)
        .ok(t + 1210, "rancher", Step::WaitClusterActive)
        .ok(t + 1220, "master01", Step::WaitNodeActive)
        .ok(t + 1221, "master02", Step::WaitNodeActive)
        .ok(t + 1300, "worker01", Step::WaitNodeActive);
    h.completed(t + 1301)
}

/// worker01's machine fails twice (retried), then master01's agent fails
/// for good and the run fails.
fn retry_and_failure() -> H {
    let h = H::new(1, 1)
        .start(1, "rancher", Step::CreateMachine, 1)
        .start(1, "master01", Step::CreateMachine, 1)
        .start(1, "worker01", Step::CreateMachine, 1)
        .fail(200, "worker01", Step::CreateMachine, 1, true, "machine worker01: disk full \u{1b}[31m<script>")
        .start(300, "worker01", Step::CreateMachine, 2)
        .fail(600, "worker01", Step::CreateMachine, 2, true, "machine worker01: disk full")
        .start(800, "worker01", Step::CreateMachine, 3)
        .ok(950, "worker01", Step::CreateMachine)
        .ok(1000, "rancher", Step::CreateMachine)
        .ok(1010, "master01", Step::CreateMachine);
    let (h, t) = h.rancher_until_node_command(1011, 10);
    h.start(t, "rancher", Step::WaitClusterActive, 1)
        .grant(t + 1, "master01")
        .start(t + 2, "master01", Step::RunAgent, 1)
        .fail(t + 50, "master01", Step::RunAgent, 1, false, "agent exited with status 1: bad --ca-checksum")
        .failed(t + 51, "master01", Step::RunAgent, "agent exited with status 1: bad --ca-checksum")
}

/// Crashed in attempt 1 while rancher was creating its cluster (intent, no
/// outcome); resumed 10 minutes later: the cluster is found and adopted,
/// then the run completes.
fn crashed_and_resumed() -> H {
    let h = H::new(1, 0)
        .start(1, "rancher", Step::CreateMachine, 1)
        .start(1, "master01", Step::CreateMachine, 1)
        .ok(500, "rancher", Step::CreateMachine)
        .ok(520, "master01", Step::CreateMachine);
    let mut h = h;
    let mut t = 521;
    for &s in rmm_actors::decide::RANCHER_STEPS.iter().skip(1).take_while(|s| **s != Step::CreateCluster) {
        h = h.step(t, t + 10, "rancher", s);
        t += 11;
    }
    // The crash: create_cluster's intent, and nothing more from attempt 1.
    let h = h.start(t, "rancher", Step::CreateCluster, 1);
    let r = t + 600_000;
    h.attempt(r, 2)
        .adopted(r + 5, "rancher", Step::CreateCluster)
        .step(r + 6, r + 20, "rancher", Step::CreateRegistrationToken)
        .step(r + 21, r + 40, "rancher", Step::WaitNodeCommand)
        .start(r + 41, "rancher", Step::WaitClusterActive, 1)
        .grant(r + 42, "master01")
        .step(r + 43, r + 60, "master01", Step::RunAgent)
        .step(r + 61, r + 500, "master01", Step::WaitNodeListed)
        .start(r + 501, "master01", Step::WaitNodeActive, 1)
        .ok(r + 900, "rancher", Step::WaitClusterActive)
        .ok(r + 950, "master01", Step::WaitNodeActive)
        .completed(r + 951)
}

fn text(h: &H, width: usize, color: bool) -> String {
    timeline_text(&h.events, &TimelineOptions { width, color })
}

/// The chart's row of `actor` (the line starting with its name).
fn row<'a>(out: &'a str, actor: &str) -> Vec<&'a str> {
    out.lines().filter(|l| l.split(' ').next() == Some(actor)).collect()
}

fn critical(run: &Run) -> Vec<(String, Step, u32)> {
    run.critical
        .iter()
        .flatten()
        .map(|&i| (run.actors[run.bars[i].actor].name.clone(), run.bars[i].step, run.bars[i].try_no))
        .collect()
}

fn assert_fits(out: &str, width: usize) {
    for line in out.lines() {
        let w = strip_ansi(line).chars().count();
        assert!(w <= width, "line of {w} columns > {width}:\n{line}\n--- whole output:\n{out}");
    }
}

fn assert_plain(out: &str) {
    for (i, line) in out.lines().enumerate() {
        assert!(
            line.chars().all(|c| c.is_ascii() && !c.is_ascii_control()),
            "line {i} is not plain printable ASCII: {line:?}"
        );
    }
}

#[test]
fn happy_run_has_one_row_per_actor_and_fits_80_columns() {
    let h = happy();
    let out = text(&h, 80, false);
    println!("{out}");
    for actor in ["rancher", "master01", "master02", "worker01", "coordinator"] {
        assert_eq!(row(&out, actor).iter().filter(|l| l.contains(['=', '#', 'A', 'j'])).count(), 1, "one chart row for {actor}:\n{out}");
    }
    assert_fits(&out, 80);
    assert_plain(&out);
    assert!(out.contains("completed"));
    assert!(!out.contains('x') || !row(&out, "rancher")[0].contains('x'), "no failure marks in a happy run");
    // Every step has a line in the table, with its duration.
    assert!(out.lines().any(|l| l.contains("master02") && l.contains("wait_node_listed") && l.contains("379ms")), "{out}");
}

#[test]
fn critical_path_follows_the_dependency_rules() {
    let run = happy().timeline();
    let path = critical(&run);
    let names: Vec<String> = path.iter().map(|(a, s, _)| format!("{a}/{}", s.as_str())).collect();
    // The rancher chain to the node command, then the masters one at a
    // time, then the worker: that is what set the end.
    let want = [
        "rancher/create_machine",
        "rancher/start_server",
        "rancher/wait_ready",
        "rancher/check_server",
        "rancher/pin_ca",
        "rancher/check_rancher_version",
        "rancher/login",
        "rancher/change_password",
        "rancher/create_api_token",
        "rancher/set_server_url",
        "rancher/create_cluster",
        "rancher/create_registration_token",
        "rancher/wait_node_command",
        "master01/run_agent",
        "master01/wait_node_listed",
        "master02/run_agent",
        "master02/wait_node_listed",
        "worker01/run_agent",
        "worker01/wait_node_listed",
        // The cluster is active once a worker is listed; a node is active once the cluster is.
        "rancher/wait_cluster_active",
        "worker01/wait_node_active",
    ];
    assert_eq!(names, want);
    // Off the path: the node machines (created while rancher booted) and the waits that ended early.
    for (a, s) in [("master01", Step::CreateMachine), ("worker01", Step::CreateMachine), ("master01", Step::WaitNodeActive), ("master02", Step::WaitNodeActive)] {
        assert!(!path.iter().any(|(pa, ps, _)| pa == a && *ps == s), "{a}/{} is not critical", s.as_str());
    }
    // Marked in the chart: the rancher row carries critical cells, master01's machine does not.
    let out = text(&happy(), 80, false);
    assert!(row(&out, "rancher")[0].contains('#'));
    assert!(row(&out, "worker01")[0].contains('#'));
    assert!(out.contains("critical path"), "{out}");
}

#[test]
fn a_node_slower_than_rancher_puts_its_machine_on_the_critical_path() {
    // master01's machine takes 5 s: its run_agent waited for its own machine.
    let h = H::new(1, 0)
        .start(1, "rancher", Step::CreateMachine, 1)
        .start(1, "master01", Step::CreateMachine, 1)
        .ok(100, "rancher", Step::CreateMachine);
    let (h, t) = h.rancher_until_node_command(101, 5);
    let h = h
        .start(t, "rancher", Step::WaitClusterActive, 1)
        .ok(5000, "master01", Step::CreateMachine)
        .grant(5001, "master01")
        .step(5002, 5010, "master01", Step::RunAgent)
        .step(5011, 5300, "master01", Step::WaitNodeListed)
        .start(5301, "master01", Step::WaitNodeActive, 1)
        .ok(5400, "rancher", Step::WaitClusterActive)
        .ok(5450, "master01", Step::WaitNodeActive)
        .completed(5451);
    let path = critical(&h.timeline());
    assert_eq!(path.first().map(|(a, s, _)| (a.as_str(), *s)), Some(("master01", Step::CreateMachine)), "{path:?}");
    // Rancher was ready long before: none of its chain up to the node command
    // is critical (only its wait for the cluster, which ended with master01 listed).
    let rancher: Vec<Step> = path.iter().filter(|(a, _, _)| a == "rancher").map(|(_, s, _)| *s).collect();
    assert_eq!(rancher, vec![Step::WaitClusterActive], "{path:?}");
}

#[test]
fn retries_and_failures_are_marked() {
    let h = retry_and_failure();
    let run = h.timeline();
    let out = text(&h, 80, false);
    println!("{out}");
    assert_fits(&out, 80);
    assert_plain(&out);
    let worker = row(&out, "worker01");
    assert!(worker[0].contains('x'), "failed tries marked on worker01's row:\n{out}");
    let master = row(&out, "master01");
    assert!(master[0].contains('x'), "the failed agent is marked:\n{out}");
    assert!(out.contains("x failed try"), "legend names the mark:\n{out}");
    assert!(out.contains("failed"), "{out}");
    // Three bars for worker01's machine: two failed tries and the retry that worked.
    let tries: Vec<(u32, bool)> = run
        .bars
        .iter()
        .filter(|b| run.actors[b.actor].name == "worker01" && b.step == Step::CreateMachine)
        .map(|b| (b.try_no, matches!(b.end, BarEnd::Failed { .. })))
        .collect();
    assert_eq!(tries, vec![(1, true), (2, true), (3, false)]);
    // The failures are listed in full, and the escape sequence from the log is gone.
    assert!(out.contains("bad --ca-checksum"));
    assert!(!out.contains('\x1b'));
    // The run failed at master01's agent: that is where the path ends.
    let path = critical(&run);
    assert_eq!(path.last(), Some(&("master01".to_string(), Step::RunAgent, 1)));
    assert!(out.contains('F'), "run failed mark on the coordinator row");
}

#[test]
fn crashed_and_resumed_run_shows_two_attempts_and_cuts_the_gap() {
    let h = crashed_and_resumed();
    let run = h.timeline();
    assert_eq!(run.attempts.len(), 2);
    assert_eq!(run.attempts[0].end.word(), "crashed");
    assert_eq!(run.attempts[1].end.word(), "completed");
    let out = text(&h, 80, false);
    println!("{out}");
    assert_fits(&out, 80);
    assert_plain(&out);
    // The separator runs through every chart row, and the gap is named.
    for actor in ["rancher", "master01", "coordinator"] {
        assert!(row(&out, actor)[0].contains('|'), "separator in {actor}'s row:\n{out}");
    }
    assert!(out.contains("a2 +10m00s"), "the gap is labelled:\n{out}");
    assert!(out.contains("resumed 10m00s later"), "{out}");
    // The cut intent and the adoption are marked.
    assert!(row(&out, "rancher")[0].contains('?'), "{out}");
    assert!(out.contains("no outcome (crashed)"), "{out}");
    assert!(out.contains("ok (adopted"), "{out}");
    // Each attempt has its own critical path; the second starts at the resume.
    assert_eq!(run.critical.len(), 2);
    let second: Vec<(String, Step)> = run.critical[1].iter().map(|&i| (run.actors[run.bars[i].actor].name.clone(), run.bars[i].step)).collect();
    assert_eq!(second.first(), Some(&("rancher".to_string(), Step::CreateCluster)));
    assert_eq!(second.last(), Some(&("master01".to_string(), Step::WaitNodeActive)));
    // The 10 minutes between the attempts are not in the run's time.
    assert!(run.busy_ms() < 3_000, "{}", run.busy_ms());
    assert!(out.lines().nth(1).unwrap().contains("2 attempts"), "{out}");
}

#[test]
fn no_escape_codes_without_colour_and_colour_only_when_asked() {
    for h in [happy(), retry_and_failure(), crashed_and_resumed()] {
        let plain = text(&h, 80, false);
        assert!(!plain.contains('\x1b'));
        assert_plain(&plain);
        let colour = text(&h, 80, true);
        assert!(colour.contains("\x1b["), "colour mode colours");
        assert_fits(&colour, 80);
        // The colour version says the same things.
        assert_eq!(strip_ansi(&colour).lines().count(), plain.lines().count());
    }
}

#[test]
fn wider_terminals_are_used_and_narrower_ones_get_80() {
    let h = happy();
    let wide = text(&h, 160, false);
    assert_fits(&wide, 160);
    assert!(wide.lines().any(|l| l.chars().count() > 100), "uses the width");
    let narrow = text(&h, 40, false);
    assert_fits(&narrow, 80);
}

#[test]
fn several_runs_are_drawn_one_after_the_other() {
    let h = happy();
    let end = h.events.last().unwrap().at_ms - h.t0;
    let h = h
        .down(end + 60_000)
        .start(end + 60_001, "rancher", Step::RemoveMachine, 1)
        .start(end + 60_001, "master01", Step::RemoveMachine, 1)
        .ok(end + 60_200, "master01", Step::RemoveMachine)
        .ok(end + 60_300, "rancher", Step::RemoveMachine)
        .completed(end + 60_301);
    let runs = build(&h.events);
    assert_eq!(runs.len(), 2);
    let out = text(&h, 80, false);
    assert_eq!(out.lines().filter(|l| l.starts_with("run ")).count(), 2, "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("completed in")).count(), 2, "{out}");
    assert!(out.contains("down tinysetup"));
    assert_fits(&out, 80);
    // The down run's path: the slowest removal.
    assert_eq!(critical(&runs[1]), vec![("rancher".to_string(), Step::RemoveMachine, 1)]);
}

#[test]
fn an_unfinished_run_shows_its_step_in_flight() {
    let h = H::new(1, 0).start(1, "rancher", Step::CreateMachine, 1).start(1, "master01", Step::CreateMachine, 1).ok(300, "master01", Step::CreateMachine);
    let out = text(&h, 80, false);
    assert!(row(&out, "rancher")[0].contains('?'), "{out}");
    assert!(out.contains("no end recorded"), "{out}");
    assert!(out.contains("in flight"), "{out}");
}

#[test]
fn empty_and_tiny_logs_do_not_panic() {
    assert!(timeline_text(&[], &TimelineOptions::default()).contains("no events"));
    let h = H::new(3, 3);
    let out = text(&h, 80, false);
    assert_fits(&out, 80);
    let html = html_report(&h.events);
    assert!(html.contains("</html>"));
    assert!(html_report(&[]).contains("</html>"));
}

#[test]
fn html_is_self_contained_and_escapes_the_log() {
    let mut h = retry_and_failure();
    // Hostile strings anywhere the log has text.
    h.events.push(Envelope {
        seq: h.events.len() as u64 + 1,
        id: Uuid::now_v7(),
        run: h.run,
        attempt: 1,
        actor: "<img src=x onerror=alert(1)>".into(),
        cause: None,
        at_ms: h.t0 + 9999,
        event: Event::StepFailed {
            step: Step::Login,
            try_no: 1,
            error: "</script><script>alert('x')</script>\"'&".into(),
            retryable: true,
        },
    });
    let html = html_report(&h.events);
    assert!(!html.contains("<img"), "actor name escaped");
    assert!(!html.contains("<script>alert"), "error escaped");
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(html.contains("&lt;/script&gt;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&#39;&amp;"));
    assert!(!html.contains('\x1b'), "control characters replaced");
    // One script element, and nothing that would fetch.
    assert_eq!(html.matches("<script").count(), 1);
    for banned in ["<link", "@import", "url(", " src=\"", "href=\"http", "<iframe", "<img", "fetch(", "XMLHttpRequest"] {
        assert!(!html.contains(banned), "{banned} in the report");
    }
    assert!(html.contains("Content-Security-Policy") && html.contains("default-src 'none'"));
    // The SVG has one lane per actor, with its name as data.
    let run = h.timeline();
    assert_eq!(html.matches("<g class=\"row\"").count(), run.actors.len());
    for actor in ["rancher", "master01", "worker01", "coordinator"] {
        assert!(html.contains(&format!("<g class=\"row\" data-actor=\"{actor}\">")), "{actor}");
    }
    assert!(html.contains("class=\"bar failed\""));
    assert!(html.contains("crit"));
    // The event table has a row per event, with filters.
    assert_eq!(html.matches("<tr id=\"e").count(), h.events.len());
    for id in ["f-actor", "f-kind", "f-text"] {
        assert!(html.contains(&format!("id=\"{id}\"")));
    }
    // The marker the browser test looks for is only made by the script.
    assert!(!html.contains("id=\"rmm-rendered\""));
}

#[test]
fn html_shows_attempts_and_the_gap() {
    let h = crashed_and_resumed();
    let html = html_report(&h.events);
    assert!(html.contains("attempt 2 · completed · resumed 10m00s later"), "heading of the second attempt");
    assert!(html.contains("class=\"sep\""));
    assert!(html.contains("bar open"));
    assert!(html.contains("bar adopted crit") || html.contains("bar adopted"));
}

#[test]
fn with_one_creation_slot_a_machine_waits_for_the_one_before() {
    // parallel = 1: master01's machine is created after rancher's, and that
    // wait is on the path (the slot, not a step of master01, held it up).
    let mut h = H::new(1, 0);
    if let Event::RunStarted { plan, .. } = &mut h.events[0].event {
        plan.parallel = 1;
    }
    let h = h
        .step(1, 1000, "rancher", Step::CreateMachine)
        .start(1001, "master01", Step::CreateMachine, 1);
    let (h, t) = h.rancher_until_node_command(1002, 5);
    let h = h
        .start(t, "rancher", Step::WaitClusterActive, 1)
        .ok(t + 2000, "master01", Step::CreateMachine)
        .grant(t + 2001, "master01")
        .step(t + 2002, t + 2010, "master01", Step::RunAgent)
        .step(t + 2011, t + 2300, "master01", Step::WaitNodeListed)
        .start(t + 2301, "master01", Step::WaitNodeActive, 1)
        .ok(t + 2400, "rancher", Step::WaitClusterActive)
        .ok(t + 2450, "master01", Step::WaitNodeActive)
        .completed(t + 2451);
    let path = critical(&h.timeline());
    let head: Vec<(&str, Step)> = path.iter().take(2).map(|(a, s, _)| (a.as_str(), *s)).collect();
    assert_eq!(head, vec![("rancher", Step::CreateMachine), ("master01", Step::CreateMachine)], "{path:?}");
    // With 8 slots the same history has no such link: master01's machine starts the path.
    let mut h8 = h;
    if let Event::RunStarted { plan, .. } = &mut h8.events[0].event {
        plan.parallel = 8;
    }
    let path = critical(&h8.timeline());
    assert_eq!(path.first().map(|(a, s, _)| (a.as_str(), *s)), Some(("master01", Step::CreateMachine)), "{path:?}");
}

#[test]
fn touching_bars_get_two_shades_in_colour() {
    let out = text(&happy(), 80, true);
    let rancher = row(&out, "rancher")[0];
    assert!(rancher.contains("\x1b[1;30;43m") && rancher.contains("\x1b[30;103m"), "{rancher:?}");
}

#[test]
fn many_attempts_still_fit() {
    // A run resumed 60 times (more attempts than the chart has room to separate).
    let mut h = H::new(1, 0);
    let mut t = 1;
    for n in 1..=60u32 {
        if n > 1 {
            h = h.attempt(t, n);
        }
        h = h.start(t + 1, "rancher", Step::CreateMachine, n);
        t += 1000;
    }
    for width in [80, 81, 120] {
        let out = text(&h, width, false);
        assert_fits(&out, width);
        assert_eq!(h.timeline().attempts.len(), 60);
        assert!(row(&out, "rancher")[0].contains('?'));
    }
    let html = html_report(&h.events);
    assert!(html.contains("attempt 60"));
}

#[test]
fn a_down_on_an_existing_rancher_has_the_cluster_s_deletion_on_its_critical_path() {
    let h = H::new(1, 1)
        .down(10_000)
        .step(10_010, 12_000, "rancher", Step::DeleteCluster)
        .step(12_010, 12_050, "master01", Step::RemoveMachine)
        .step(12_010, 12_300, "worker01", Step::RemoveMachine)
        .completed(12_310);
    let path = critical(&h.timeline());
    let names: Vec<String> = path.iter().map(|(a, s, _)| format!("{a}/{}", s.as_str())).collect();
    assert_eq!(names, ["rancher/delete_cluster", "worker01/remove_machine"]);
}
