//! `rmm log` through the real binary: filters, `--follow` beside a running
//! `up`, `--verify` on good and tampered logs, `--export` and
//! `--verify --from` (also of altered exports), `log show` with the cause
//! chain, history over several runs and `replay --to` into each of them,
//! and the synthetic store.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

const SMALL: &[&str] = &["--masters", "1", "--workers", "1"];

fn lines(out: &std::process::Output) -> Vec<Value> {
    text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

/// up, down, up: three runs.
fn three_runs() -> TestDir {
    let dir = TestDir::new();
    dir.up_ok(SMALL);
    dir.rmm(&["down"]).ok();
    dir.up_ok(SMALL);
    dir
}

fn runs_of(events: &[Value]) -> Vec<String> {
    let mut runs: Vec<String> = events.iter().map(|e| e["run"].as_str().unwrap().to_string()).collect();
    runs.dedup();
    runs
}

#[test]
fn history_of_several_runs_stays_readable_and_replay_reaches_any_event_of_any_run() {
    let dir = three_runs();
    let all = dir.events();
    let runs = runs_of(&all);
    assert_eq!(runs.len(), 3, "up, down, up are three runs, each contiguous");
    assert_eq!(seqs(&all), (1..=all.len() as u64).collect::<Vec<_>>());

    // By default: the latest run only; its text starts with the run's header.
    let latest = lines(&dir.rmm(&["log", "--json"]).ok());
    assert!(latest.iter().all(|e| e["run"] == runs[2].as_str()));
    assert_eq!(latest.len(), all.iter().filter(|e| e["run"] == runs[2].as_str()).count());
    let text_all = text(&dir.rmm(&["log", "--all-runs"]).ok().stdout);
    for run in &runs {
        assert!(text_all.contains(&format!("── run {run} ──")), "{text_all}");
    }
    assert_eq!(text_all.lines().count(), all.len() + 3);

    // replay --to lands in the run of that event, with the state then.
    for (i, run) in runs.iter().enumerate() {
        let events: Vec<&Value> = all.iter().filter(|e| e["run"] == run.as_str()).collect();
        let (first, last) = (events[0]["seq"].as_u64().unwrap(), events.last().unwrap()["seq"].as_u64().unwrap());
        for seq in [first + 1, (first + last) / 2, last] {
            let v = json(&dir.rmm(&["replay", "--to", &seq.to_string(), "--json"]).ok().stdout);
            assert_eq!(v["run"]["id"], run.as_str(), "replay --to {seq}");
            assert_eq!(v["run"]["last_seq"], seq);
            assert_eq!(v["run"]["kind"], if i == 1 { "down" } else { "up" });
            if seq < last {
                assert_eq!(v["run"]["state"], "running", "replay --to {seq}: {v}");
            }
        }
        let end = json(&dir.rmm(&["replay", "--to", &last.to_string(), "--json"]).ok().stdout);
        assert_eq!(end["run"]["state"], "completed");
        let cluster = if i == 1 { "removed" } else { "active" };
        assert_eq!(end["rancher"]["cluster_state"], cluster, "{end}");
        if i == 1 {
            // The down run shows the machines it removed and the Rancher of the up before it.
            assert!(end["actors"].as_array().unwrap().iter().all(|a| a["state"] == "removed"), "{end}");
            assert!(end["rancher"]["url"].is_string());
        } else {
            assert!(end["actors"].as_array().unwrap().iter().all(|a| a["state"] == "done"), "{end}");
        }
    }
    // The first up, replayed to the end, is not mixed with the second.
    let first_end = all.iter().rfind(|e| e["run"] == runs[0].as_str()).unwrap()["seq"].as_u64().unwrap();
    let v = json(&dir.rmm(&["replay", "--to", &first_end.to_string(), "--json"]).ok().stdout);
    let second = json(&dir.rmm(&["replay", "--json"]).ok().stdout);
    assert_ne!(v["rancher"]["cluster_id"], second["rancher"]["cluster_id"]);
}

#[test]
fn filters_select_by_run_attempt_actor_kind_time_seq_and_text_and_combine() {
    let dir = three_runs();
    let all = dir.events();
    let runs = runs_of(&all);
    let log = |args: &[&str]| {
        let mut a = vec!["log", "--json"];
        a.extend_from_slice(args);
        lines(&dir.rmm(&a).ok())
    };
    let expect = |pred: &dyn Fn(&Value) -> bool| seqs(&all.iter().filter(|e| pred(e)).cloned().collect::<Vec<_>>());

    // --run: a full id or a prefix; --all-runs.
    assert_eq!(seqs(&log(&["--run", &runs[0]])), expect(&|e| e["run"] == runs[0].as_str()));
    let prefix = &runs[1][..runs[1].len() - 6];
    assert_eq!(seqs(&log(&["--run", prefix])), expect(&|e| e["run"] == runs[1].as_str()));
    assert_eq!(seqs(&log(&["--all-runs"])), expect(&|_| true));
    // --actor glob, --kind repeatable (and comma-separated), combined.
    assert_eq!(
        seqs(&log(&["--all-runs", "--actor", "master*", "--kind", "StepSucceeded", "--kind", "JoinGranted"])),
        expect(&|e| e["actor"].as_str().unwrap().starts_with("master") && (e["kind"] == "StepSucceeded" || e["kind"] == "JoinGranted"))
    );
    assert_eq!(
        seqs(&log(&["--all-runs", "--actor", "w?rker0*,rancher", "--kind", "stepstarted,RunCompleted"])),
        expect(&|e| (e["actor"] == "worker01" || e["actor"] == "rancher") && (e["kind"] == "StepStarted" || e["kind"] == "RunCompleted"))
    );
    // --seq ranges, both ends included.
    assert_eq!(seqs(&log(&["--all-runs", "--seq", "5..9"])), vec![5, 6, 7, 8, 9]);
    assert_eq!(seqs(&log(&["--all-runs", "--seq", "..3"])), vec![1, 2, 3]);
    let n = all.len() as u64;
    assert_eq!(seqs(&log(&["--all-runs", "--seq", &format!("{}..", n - 1)])), vec![n - 1, n]);
    // --grep over the data as --json prints it.
    let ip = all.iter().find(|e| e["actor"] == "worker01" && e["kind"] == "StepSucceeded").unwrap()["data"]["outcome"]["machine_created"]["ip"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(seqs(&log(&["--all-runs", "--grep", &ip])), expect(&|e| e["data"].to_string().contains(&ip)));
    assert!(!log(&["--all-runs", "--grep", &ip]).is_empty());
    // --since / --until: RFC 3339 from the log itself, and relative times.
    let mid = &all[all.len() / 2];
    let at = mid["at"].as_str().unwrap();
    assert_eq!(seqs(&log(&["--all-runs", "--since", at])), expect(&|e| e["at"].as_str().unwrap() >= at));
    assert_eq!(seqs(&log(&["--all-runs", "--until", at])), expect(&|e| e["at"].as_str().unwrap() <= at));
    assert_eq!(log(&["--all-runs", "--since", "1h"]).len(), all.len());
    assert!(log(&["--all-runs", "--until", "1h"]).is_empty());
    // --attempt: every event here is of attempt 1.
    assert_eq!(log(&["--attempt", "1"]).len(), log(&[]).len());
    assert!(log(&["--attempt", "2"]).is_empty());
    // The text form honours the same filters.
    let text_out = text(&dir.rmm(&["log", "--all-runs", "--kind", "JoinGranted"]).ok().stdout);
    assert_eq!(text_out.lines().filter(|l| l.contains("JoinGranted")).count(), expect(&|e| e["kind"] == "JoinGranted").len());

    // Bad values are usage errors (exit 2), naming the flag.
    for bad in [&["--kind", "Nope"][..], &["--seq", "9..3"], &["--since", "last tuesday"], &["--run", "zzzz"], &["--run", "0000"]] {
        let mut a = vec!["log"];
        a.extend_from_slice(bad);
        let out = dir.rmm(&a).code(2);
        assert!(text(&out.stderr).starts_with("rmm: ") && text(&out.stderr).contains(bad[0]), "{}", text(&out.stderr));
    }
}

/// A world slow enough that a run takes ~2 s.
fn slow(cmd: RmmCmd) -> RmmCmd {
    cmd.env("RMM_LOCAL_CREATE_MS", "300").env("RMM_LOCAL_RANCHER_BOOT_MS", "400").env("RMM_LOCAL_NODE_READY_MS", "150")
}

/// Waits until `cond` holds, or fails after `secs`.
fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for `child` to exit, or kills it and fails after `secs`.
fn wait_exit(child: &mut Child, what: &str, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not exit within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Spawns `rmm log --follow --json`, its lines sent with the time they were read.
fn follower(dir: &TestDir) -> (Child, mpsc::Receiver<(Instant, String)>) {
    let mut cmd = dir.rmm(&["log", "--follow", "--json"]).cmd;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send((Instant::now(), line)).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

#[test]
fn follow_prints_events_as_an_up_in_another_process_appends_them_and_exits_when_the_run_ends() {
    let dir = TestDir::new();
    let mut up = slow(dir.rmm(&["up"])).cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // Follow from the middle of the run: once machines are being created.
    let mut seen_before = 0;
    wait_for("the run to start a step", 30, || {
        let events = dir.events_while_running();
        seen_before = events.len();
        events.iter().any(|e| e["kind"] == "StepStarted")
    });
    let (mut follow, rx) = follower(&dir);
    let up_status = wait_exit(&mut up, "rmm up", 60);
    let up_ended = Instant::now();
    assert!(up_status.success());
    let status = wait_exit(&mut follow, "rmm log --follow", 20);
    assert!(status.success(), "follow exits 0 when the run ends: {status}");
    let got: Vec<(Instant, Value)> = rx.try_iter().map(|(t, l)| (t, serde_json::from_str(&l).unwrap())).collect();

    // Exactly the run's events, in order, each once, as `rmm log --json` prints them.
    let all = lines(&dir.rmm(&["log", "--json"]).ok());
    let printed: Vec<Value> = got.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(printed, all, "follow printed every event of the run once, identical to rmm log --json");
    assert_eq!(all.last().unwrap()["kind"], "RunCompleted");
    // Live: events appended after the follower started reached it while `up` still ran.
    let live = got.iter().filter(|(t, v)| v["seq"].as_u64().unwrap() > seen_before as u64 + 5 && *t < up_ended).count();
    assert!(live > 0, "no event was streamed while the run was going on (started after {seen_before} events)");
}

#[test]
fn follow_ends_at_once_for_a_finished_run_and_says_so_for_a_crashed_one() {
    let dir = TestDir::new();
    // A run that crashes: its process dies without ending the run.
    let mut up = slow(dir.rmm(&["up"])).env("RMM_CRASH_AFTER_APPEND", "25").cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for("the run to start", 30, || !dir.events_while_running().is_empty());
    let (mut follow, rx) = follower(&dir);
    assert!(!wait_exit(&mut up, "rmm up", 60).success(), "the crash drill aborts the run");
    let status = wait_exit(&mut follow, "rmm log --follow", 20);
    assert!(status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut follow.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("crashed?") && stderr.contains("rmm up --resume"), "{stderr}");
    let printed: Vec<Value> = rx.try_iter().map(|(_, l)| serde_json::from_str(&l).unwrap()).collect();
    assert_eq!(printed.len(), 25, "every durable event of the crashed attempt");

    // Resumed to the end, the run has ended: follow prints it and exits at once.
    dir.rmm(&["up", "--resume"]).ok();
    let out = dir.rmm(&["log", "--follow", "--json"]).ok();
    assert_eq!(lines(&out), dir.events());
}

#[test]
fn verify_passes_a_good_log_and_names_the_first_bad_seq_of_a_tampered_one() {
    let dir = TestDir::new();
    dir.up_ok(SMALL);
    let n = dir.events().len();
    let out = dir.rmm(&["log", "--verify"]).ok();
    let said = text(&out.stdout);
    let head = dir.events().last().unwrap()["hash"].as_str().unwrap().to_string();
    assert!(said.contains(&format!("{n} events")) && said.contains(&head), "{said}");
    dir.rmm(&["log", "--verify", "--head", &head]).ok();
    let wrong = dir.rmm(&["log", "--verify", "--head", &"0".repeat(64)]).code(5);
    assert!(text(&wrong.stderr).contains(&head));

    dir.rmm(&["tamper", "--seq", "7"]).ok();
    let out = dir.rmm(&["log", "--verify"]).code(5);
    let err = text(&out.stderr);
    assert!(err.starts_with("rmm: ") && err.contains("seq 7"), "{err}");
    // Reading the log refuses it too.
    dir.rmm(&["log", "--all-runs"]).code(5);

    let dir = TestDir::new();
    dir.up_ok(SMALL);
    dir.rmm(&["tamper", "--seq", "12", "--delete"]).ok();
    let err = text(&dir.rmm(&["log", "--verify"]).code(5).stderr);
    assert!(err.contains("seq 12") && err.contains("missing"), "{err}");
}

#[test]
fn an_export_verifies_on_its_own_and_any_alteration_of_it_is_named() {
    let dir = three_runs();
    let all = dir.events();
    let file = dir.tmp.path().join("history.jsonl");
    let f = file.to_str().unwrap();
    dir.rmm(&["log", "--export", f]).ok();
    let exported = std::fs::read_to_string(&file).unwrap();
    let rows: Vec<Value> = exported.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), all.len() + 2, "header, every event, end line");
    // Each event line is the `rmm log --json` object plus its record bytes.
    for (row, event) in rows[1..rows.len() - 1].iter().zip(&all) {
        let mut row = row.clone();
        assert!(row.as_object_mut().unwrap().remove("record").is_some());
        assert_eq!(&row, event);
    }
    let head = all.last().unwrap()["hash"].as_str().unwrap();
    assert_eq!(rows.last().unwrap()["head"], head);

    // Checked without the store: another state dir that does not exist.
    let elsewhere = TestDir::new();
    let ok = elsewhere.rmm(&["log", "--verify", "--from", f]).ok();
    let said = text(&ok.stdout);
    assert!(said.contains("whole and unaltered") && said.contains(&format!("{} events", all.len())) && said.contains(head), "{said}");
    elsewhere.rmm(&["log", "--verify", "--from", f, "--head", head]).ok();

    let altered = |name: &str, edit: &dyn Fn(Vec<String>) -> Vec<String>| {
        let lines: Vec<String> = exported.lines().map(String::from).collect();
        let path = dir.tmp.path().join(name);
        std::fs::write(&path, edit(lines).join("\n") + "\n").unwrap();
        let out = elsewhere.rmm(&["log", "--verify", "--from", path.to_str().unwrap()]).code(5);
        text(&out.stderr)
    };
    // A readable field changed (the record bytes left as they were).
    let err = altered("field.jsonl", &|mut l| {
        l[10] = l[10].replacen("\"attempt\":1", "\"attempt\":2", 1);
        l
    });
    assert!(err.contains("line 11") && err.contains("seq 10") && err.contains("attempt"), "{err}");
    // An event removed.
    let err = altered("gap.jsonl", &|mut l| {
        l.remove(20);
        l
    });
    assert!(err.contains("seq 20") && err.contains("chain broken"), "{err}");
    // Two events swapped.
    let err = altered("swap.jsonl", &|mut l| {
        l.swap(30, 31);
        l
    });
    assert!(err.contains("seq 30"), "{err}");
    // Cut short: the last events and the end line gone.
    let err = altered("cut.jsonl", &|mut l| {
        l.truncate(l.len() - 4);
        l
    });
    assert!(err.contains("not whole"), "{err}");
    // Cut short with an end line rewritten to match: the head tells.
    let cut_head = all[all.len() - 4]["hash"].as_str().unwrap().to_string();
    let path = dir.tmp.path().join("cut-and-forged.jsonl");
    let mut l: Vec<String> = exported.lines().map(String::from).collect();
    l.truncate(l.len() - 4);
    l.push(format!("{{\"end\":true,\"events\":{},\"last_seq\":{},\"head\":\"{cut_head}\"}}", all.len() - 3, all.len() - 3));
    std::fs::write(&path, l.join("\n") + "\n").unwrap();
    elsewhere.rmm(&["log", "--verify", "--from", path.to_str().unwrap()]).ok();
    let err = text(&elsewhere.rmm(&["log", "--verify", "--from", path.to_str().unwrap(), "--head", head]).code(5).stderr);
    assert!(err.contains("not at the expected"), "{err}");

    // One run exported: a part of the log, chained from the record before it.
    let runs = runs_of(&all);
    let part = dir.tmp.path().join("run.jsonl");
    dir.rmm(&["log", "--export", part.to_str().unwrap(), "--run", &runs[1]]).ok();
    let said = text(&elsewhere.rmm(&["log", "--verify", "--from", part.to_str().unwrap()]).ok().stdout);
    assert!(said.contains("whole and unaltered") && said.contains("part of a longer log"), "{said}");
    // Filters that leave gaps cannot make a checkable export.
    dir.rmm(&["log", "--export", part.to_str().unwrap(), "--kind", "StepFailed"]).code(2);
}

#[test]
fn show_prints_one_event_with_its_causes_back_to_the_command_typed() {
    let dir = TestDir::new();
    dir.up_ok(SMALL);
    let all = dir.events();
    let by_id = |id: &str| all.iter().find(|e| e["id"] == id).unwrap().clone();
    let target = all.iter().find(|e| e["actor"] == "worker01" && e["kind"] == "StepSucceeded" && e["data"]["step"] == "run_agent").unwrap();
    let seq = target["seq"].as_u64().unwrap().to_string();
    let v = json(&dir.rmm(&["log", "show", &seq, "--json"]).ok().stdout);
    assert_eq!(&v["event"], target);
    // Each cause is the event the one before names, back to the attempt's start.
    let causes = v["causes"].as_array().unwrap();
    let mut current = target.clone();
    for cause in causes {
        assert_eq!(cause, &by_id(current["cause"].as_str().unwrap()));
        current = cause.clone();
    }
    assert_eq!(current["kind"], "AttemptStarted");
    assert!(causes.iter().any(|c| c["kind"] == "JoinGranted"), "a worker's agent runs because the coordinator let it join");
    let command = v["command"].as_str().unwrap();
    assert!(command.starts_with("rmm ") && command.contains(" up"), "{command}");

    let text_out = text(&dir.rmm(&["log", "show", &seq]).ok().stdout);
    assert!(text_out.contains("caused by") && text_out.contains(command), "{text_out}");
    // `--seq N --full` is the same.
    assert_eq!(text(&dir.rmm(&["log", "--seq", &seq, "--full"]).ok().stdout), text_out);
    // The first event of a run has no cause; its command is its first attempt's.
    let first = json(&dir.rmm(&["log", "show", "1", "--json"]).ok().stdout);
    assert_eq!(first["causes"], serde_json::json!([]));
    assert_eq!(first["command"], command);
    dir.rmm(&["log", "show", "100000"]).code(2);
}

#[test]
fn a_synthetic_store_of_many_runs_reads_verifies_and_folds() {
    let dir = TestDir::new();
    let out = dir.rmm(&["synth", "--events", "20000"]).ok();
    assert!(text(&out.stdout).starts_with("20000 events in "), "{}", text(&out.stdout));
    let said = text(&dir.rmm(&["log", "--verify"]).ok().stdout);
    assert!(said.contains("20000 events"), "{said}");
    let all = lines(&dir.rmm(&["log", "--json", "--all-runs"]).ok());
    assert_eq!(seqs(&all), (1..=20000).collect::<Vec<_>>());
    let kinds: std::collections::BTreeSet<&str> = all.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    for kind in ["RunStarted", "AttemptStarted", "StepStarted", "StepSucceeded", "StepFailed", "JoinGranted", "RunCompleted", "RunFailed"] {
        assert!(kinds.contains(kind), "the mix has {kind}");
    }
    assert!(all.iter().any(|e| e["data"]["via"] == "adopted"), "the mix has resumes that adopt");
    // Every cause is an earlier event of the same run.
    let mut seen = std::collections::HashMap::new();
    for e in &all {
        if let Some(c) = e["cause"].as_str() {
            assert_eq!(seen.get(c), Some(&e["run"]), "cause of seq {}", e["seq"]);
        }
        seen.insert(e["id"].as_str().unwrap().to_string(), e["run"].clone());
    }
    let status = dir.status();
    assert_eq!(status["run"]["last_seq"], 20000);
    // A show deep in the log finds its chain.
    dir.rmm(&["log", "show", "19999"]).ok();
    // The text log heads each run once; a run that goes on past a UTC
    // midnight (a resume hours later) gets a date line, not its run
    // header again.
    let listing = text(&dir.rmm(&["log", "--all-runs"]).ok().stdout);
    let runs: std::collections::BTreeSet<&str> = all.iter().map(|e| e["run"].as_str().unwrap()).collect();
    let heads: Vec<&str> = listing.lines().filter(|l| l.starts_with("── run ")).collect();
    assert_eq!(heads.len(), runs.len(), "one header per run");
    let day_lines = listing.lines().filter(|l| l.starts_with("── 20") && l.ends_with("(times UTC) ──")).count();
    assert!(day_lines > 0, "the mix has a run that crosses a UTC midnight");
    // Hidden from help; refuses a store that is not empty.
    assert!(!text(&TestDir::new().rmm(&["--help"]).ok().stdout).contains("synth"));
    dir.rmm(&["synth", "--events", "10"]).code(3);
}

#[test]
fn timeline_takes_the_selected_events() {
    let dir = TestDir::new();
    dir.up_ok(SMALL);
    let out = dir.rmm(&["log", "--timeline"]).env("NO_COLOR", "1").ok();
    assert!(text(&out.stdout).contains("master01"), "{}", text(&out.stdout));
}
