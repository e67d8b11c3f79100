//! The shapes `status`, `replay` and `log` print (README documents each).

use rmm_actors::decide::plan_steps;
use rmm_events::{ActorState, Envelope, History, Role, RunKind, RunState, RunStatus, Step, StepState};
use serde_json::{json, Value};

/// Run state as users see it: a `running` run whose process is gone
/// (crashed) is `interrupted`.
pub fn run_state_str(run: &RunState, writer_alive: bool) -> &'static str {
    match run.status {
        RunStatus::Running if !writer_alive => "interrupted",
        s => s.as_str(),
    }
}

/// A machine's role from its name (`rancher`, `masterNN`, `workerNN`).
pub(crate) fn role_of(name: &str) -> Role {
    if name == "rancher" {
        Role::Rancher
    } else if name.starts_with("master") {
        Role::Master
    } else {
        Role::Worker
    }
}

/// One actor's state word and current step. A step in flight when no
/// process works on the run is `in_doubt`: the next resume asks the world.
pub fn actor_state(run: &RunState, name: &str, actor: Option<&ActorState>, role: Role, writer_alive: bool) -> (&'static str, Option<Step>) {
    let down = run.kind == RunKind::Down;
    let Some(a) = actor else { return ("pending", None) };
    // A node a scale removes: deleted in Rancher, then its machine removed.
    let removing = !down && role != Role::Rancher && !run.plan.machine_names().iter().any(|(n, _)| n == name);
    let steps = if removing { rmm_actors::decide::SCALE_DOWN_STEPS } else { plan_steps(role, down, &run.plan) };
    if steps.iter().all(|s| a.done(*s)) {
        return (if down || removing { "removed" } else { "done" }, None);
    }
    if let Some((step, _)) = a.in_flight() {
        let alive = writer_alive && run.status == RunStatus::Running;
        return (if alive { "running" } else { "in_doubt" }, Some(step));
    }
    if steps.iter().any(|s| matches!(a.step(*s), Some(StepState::Interrupted { .. }))) && run.status != RunStatus::Running {
        let step = steps.iter().find(|s| matches!(a.step(**s), Some(StepState::Interrupted { .. }))).copied();
        return ("interrupted", step);
    }
    let failed = steps.iter().find(|s| matches!(a.step(**s), Some(StepState::Failed { .. })));
    if let Some(step) = failed {
        // A failed try of a run still going (or resumable) is tried again.
        return (if run.status == RunStatus::Failed { "failed" } else { "retrying" }, Some(*step));
    }
    if a.steps.is_empty() {
        ("pending", None)
    } else {
        ("waiting", steps.iter().find(|s| !a.done(**s)).copied())
    }
}

/// `status --json` (and `replay --json`).
pub fn status_json(history: &History, run: Option<&RunState>, writer_alive: bool) -> Value {
    let Some(run) = run else {
        return json!({
            "run": {"id": null, "kind": null, "state": "none", "attempts": 0},
            "rancher": {"url": null, "username": null, "cluster_id": null, "cluster_state": null, "ca_checksum": null},
            "actors": []
        });
    };
    // The Rancher side comes from the latest `up` run up to this one.
    let upto = history.runs.iter().position(|r| r.id == run.id).map_or(history.runs.len(), |i| i + 1);
    let up = if run.kind == RunKind::Up {
        Some(run)
    } else {
        history.runs[..upto].iter().rev().find(|r| r.kind == RunKind::Up)
    };
    let removed = run.kind == RunKind::Down && run.status == RunStatus::Completed;
    let cluster_state = up.and_then(|u| {
        let r = u.actor("rancher")?;
        if removed {
            Some("removed")
        } else if r.done(Step::WaitClusterActive) || r.done(Step::WaitClusterReady) {
            Some("active")
        } else if r.done(Step::CreateCluster) {
            Some("provisioning")
        } else {
            None
        }
    });
    let mut names: Vec<(String, Role)> = if run.kind == RunKind::Up {
        // With the nodes a scale is removing, until they are gone (else
        // `status --refresh` would call their machines orphans).
        run.attempt_actors()
    } else {
        run.actors.keys().filter(|n| *n != "coordinator").map(|n| (n.clone(), role_of(n))).collect()
    };
    names.sort_by_key(|(n, r)| (*r, n.clone()));
    let actors: Vec<Value> = names
        .iter()
        .map(|(name, role)| {
            let a = run.actor(name);
            let (state, step) = actor_state(run, name, a, *role, writer_alive);
            let ip = a.and_then(|a| a.ip()).or_else(|| up.and_then(|u| u.actor(name)).and_then(|a| a.ip()));
            json!({
                "name": name,
                "role": role.as_str(),
                "state": state,
                "step": step.map(|s| s.as_str()),
                "ip": ip,
                "started": a.and_then(|a| a.first_ms).map(rmm_events::rfc3339_ms),
                "updated": a.and_then(|a| a.last_ms).map(rmm_events::rfc3339_ms),
            })
        })
        .collect();
    json!({
        "run": {
            "id": run.id.to_string(),
            "kind": match run.kind { RunKind::Up => "up", RunKind::Down => "down" },
            "state": run_state_str(run, writer_alive),
            "attempts": run.attempts,
            "started": rmm_events::rfc3339_ms(run.started_ms),
            "ended": run.ended_ms.map(rmm_events::rfc3339_ms),
            "failure": run.failure,
            "last_seq": run.last_seq,
        },
        "rancher": {
            "url": up.and_then(|u| u.rancher_url()),
            "username": up.and_then(|u| u.rancher_url()).map(|_| "admin"),
            "cluster_id": up.and_then(|u| u.cluster_id()),
            "cluster_state": cluster_state,
            "ca_checksum": up.and_then(|u| u.ca_checksum()),
        },
        "actors": actors,
    })
}

/// Human form of [`status_json`].
pub fn status_text(v: &Value) -> String {
    let mut out = String::new();
    let run = &v["run"];
    if run["state"] == "none" {
        return "no run yet (start one with `rmm up`)\n".into();
    }
    out.push_str(&format!(
        "run {} ({}): {}, attempt{} {}\n",
        run["id"].as_str().unwrap_or("?"),
        run["kind"].as_str().unwrap_or("?"),
        run["state"].as_str().unwrap_or("?"),
        if run["attempts"].as_u64() == Some(1) { "" } else { "s" },
        run["attempts"]
    ));
    if let Some(f) = run["failure"].as_str() {
        out.push_str(&format!("failure: {f}\n"));
    }
    let r = &v["rancher"];
    if let Some(url) = r["url"].as_str() {
        out.push_str(&format!(
            "rancher: {url}  user {}  cluster {} ({})\n",
            r["username"].as_str().unwrap_or("admin"),
            r["cluster_id"].as_str().unwrap_or("-"),
            r["cluster_state"].as_str().unwrap_or("-")
        ));
    }
    // Columns as wide as their widest cell (`interrupted` is wider than
    // `STATE`'s old 9, a long node name than NAME's 11), so rows stay aligned.
    let rows: Vec<[&str; 6]> = v["actors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            [
                a["name"].as_str().unwrap_or(""),
                a["role"].as_str().unwrap_or(""),
                a["state"].as_str().unwrap_or(""),
                a["step"].as_str().unwrap_or("-"),
                a["ip"].as_str().unwrap_or("-"),
                a["observed"].as_str().unwrap_or(""),
            ]
        })
        .collect();
    let header = ["NAME", "ROLE", "STATE", "STEP", "IP", "OBSERVED"];
    let mins = [11, 8, 9, 26, 16, 0];
    let w: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).chain([header[i].len(), mins[i]]).max().unwrap_or(0))
        .collect();
    for r in std::iter::once(&header).chain(rows.iter()) {
        out.push_str(&format!(
            "{:<w0$} {:<w1$} {:<w2$} {:<w3$} {:<w4$} {}\n",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3],
            w4 = w[4]
        ));
    }
    if let Some(orphans) = v["orphans"].as_array() {
        if orphans.is_empty() {
            out.push_str("orphans: none\n");
        } else {
            let names: Vec<&str> = orphans.iter().filter_map(|o| o["name"].as_str()).collect();
            out.push_str(&format!("orphans (machines of this cluster the log does not know): {}\n", names.join(", ")));
        }
    }
    out
}

/// `log --json`: one object a line.
pub fn event_json(e: &Envelope, hash: &[u8; 32]) -> Value {
    let data = event_data(&e.event);
    json!({
        "seq": e.seq,
        "id": e.id.to_string(),
        "run": e.run.to_string(),
        "attempt": e.attempt,
        "actor": e.actor,
        "kind": e.event.kind(),
        "cause": e.cause.map(|c| c.to_string()),
        "at": e.at_rfc3339(),
        "data": data,
        "hash": hex::encode(hash),
    })
}

/// The `data` of [`event_json`]: the event's fields, without its kind.
pub fn event_data(event: &rmm_events::Event) -> Value {
    match serde_json::to_value(event).unwrap_or(Value::Null) {
        Value::Object(mut m) if m.len() == 1 => m.values_mut().next().map(std::mem::take).unwrap_or(Value::Null),
        _ => json!({}),
    }
}

/// Appends [`event_json`]`(e, hash)` to `out`, byte for byte as
/// `event_json(e, hash).to_string()` prints it (keys sorted, as
/// serde_json's map sorts them), without building a `Value`: the hot path of
/// `rmm log --json`. The frequent kinds (steps and joins) are written field
/// by field; the rare ones go through `Value`. `tests::fast_json_is_event_json`
/// holds the two together for every kind and outcome.
pub fn write_event_json(out: &mut Vec<u8>, e: &Envelope, hash: &[u8; 32]) {
    out.extend_from_slice(b"{\"actor\":");
    json_str(out, &e.actor);
    out.extend_from_slice(b",\"at\":\"");
    write_rfc3339_ms(out, e.at_ms);
    out.extend_from_slice(b"\",\"attempt\":");
    out.extend_from_slice(itoa::Buffer::new().format(e.attempt).as_bytes());
    out.extend_from_slice(b",\"cause\":");
    match &e.cause {
        Some(c) => uuid_str(out, c),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"data\":");
    write_event_data(out, &e.event);
    out.extend_from_slice(b",\"hash\":\"");
    let mut hex_buf = [0u8; 64];
    hex::encode_to_slice(hash, &mut hex_buf).expect("64 hex digits for 32 bytes");
    out.extend_from_slice(&hex_buf);
    out.extend_from_slice(b"\",\"id\":");
    uuid_str(out, &e.id);
    out.extend_from_slice(b",\"kind\":\"");
    out.extend_from_slice(e.event.kind().as_bytes());
    out.extend_from_slice(b"\",\"run\":");
    uuid_str(out, &e.run);
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(itoa::Buffer::new().format(e.seq).as_bytes());
    out.push(b'}');
}

/// Appends the `data` of [`event_json`] to `out` (see [`write_event_json`]).
pub fn write_event_data(out: &mut Vec<u8>, event: &rmm_events::Event) {
    use rmm_events::Event;
    match event {
        Event::StepStarted { step, try_no, detail } => {
            out.extend_from_slice(b"{\"detail\":");
            json_str(out, detail);
            step_field(out, *step);
            out.extend_from_slice(b",\"try_no\":");
            out.extend_from_slice(itoa::Buffer::new().format(*try_no).as_bytes());
            out.push(b'}');
        }
        Event::StepSucceeded { step, outcome, via } => {
            out.extend_from_slice(b"{\"outcome\":");
            write_outcome(out, outcome);
            step_field(out, *step);
            out.extend_from_slice(match via {
                rmm_events::Via::Done => b",\"via\":\"done\"}".as_slice(),
                rmm_events::Via::Adopted => b",\"via\":\"adopted\"}".as_slice(),
            });
        }
        Event::StepFailed { step, try_no, error, retryable } => {
            out.extend_from_slice(b"{\"error\":");
            json_str(out, error);
            out.extend_from_slice(if *retryable { b",\"retryable\":true".as_slice() } else { b",\"retryable\":false".as_slice() });
            step_field(out, *step);
            out.extend_from_slice(b",\"try_no\":");
            out.extend_from_slice(itoa::Buffer::new().format(*try_no).as_bytes());
            out.push(b'}');
        }
        Event::JoinGranted { node } => {
            out.extend_from_slice(b"{\"node\":");
            json_str(out, node);
            out.push(b'}');
        }
        Event::RunStarted { .. }
        | Event::AttemptStarted { .. }
        | Event::RunCompleted
        | Event::RunFailed { .. }
        | Event::AttemptInterrupted { .. }
        | Event::Progress { .. }
        | Event::PlanChanged { .. }
        | Event::StepInterrupted { .. } => {
            serde_json::to_writer(&mut *out, &event_data(event)).expect("writing JSON into a Vec never fails");
        }
    }
}

fn step_field(out: &mut Vec<u8>, step: Step) {
    out.extend_from_slice(b",\"step\":\"");
    out.extend_from_slice(step.as_str().as_bytes());
    out.push(b'"');
}

/// An `Outcome` as serde writes it (externally tagged, snake_case), keys sorted.
fn write_outcome(out: &mut Vec<u8>, outcome: &rmm_events::Outcome) {
    use rmm_events::Outcome as O;
    let one = |out: &mut Vec<u8>, tag: &str, key: &str, value: &str| {
        out.extend_from_slice(b"{\"");
        out.extend_from_slice(tag.as_bytes());
        out.extend_from_slice(b"\":{\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        json_str(out, value);
        out.extend_from_slice(b"}}");
    };
    let secret = |out: &mut Vec<u8>, tag: &str, key: &str, s: &rmm_events::SecretRef| {
        out.extend_from_slice(b"{\"");
        out.extend_from_slice(tag.as_bytes());
        out.extend_from_slice(b"\":{\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        secret_ref(out, s);
        out.extend_from_slice(b"}}");
    };
    let unit = |out: &mut Vec<u8>, tag: &str| {
        out.push(b'"');
        out.extend_from_slice(tag.as_bytes());
        out.push(b'"');
    };
    match outcome {
        O::MachineCreated { ip } => one(out, "machine_created", "ip", ip),
        O::ServerStarted { image } => one(out, "server_started", "image", image),
        O::Ready => unit(out, "ready"),
        O::CaPinned { checksum } => one(out, "ca_pinned", "checksum", checksum),
        O::LoggedIn { token } => secret(out, "logged_in", "token", token),
        O::PasswordChanged { password } => secret(out, "password_changed", "password", password),
        O::ApiTokenCreated { token_id, token } => {
            out.extend_from_slice(b"{\"api_token_created\":{\"token\":");
            secret_ref(out, token);
            out.extend_from_slice(b",\"token_id\":");
            json_str(out, token_id);
            out.extend_from_slice(b"}}");
        }
        O::ServerUrlSet { url } => one(out, "server_url_set", "url", url),
        O::ClusterCreated { cluster_id } => one(out, "cluster_created", "cluster_id", cluster_id),
        O::RegistrationTokenCreated { token_id } => one(out, "registration_token_created", "token_id", token_id),
        O::NodeCommandReady { command } => secret(out, "node_command_ready", "command", command),
        O::ClusterActive => unit(out, "cluster_active"),
        O::AgentStarted => unit(out, "agent_started"),
        O::NodeListed { node_id } => one(out, "node_listed", "node_id", node_id),
        O::NodeActive => unit(out, "node_active"),
        O::MachineRemoved => unit(out, "machine_removed"),
        O::ServerRunning => unit(out, "server_running"),
        O::ServerRestarted { state } => one(out, "server_restarted", "state", state),
        // The outcomes of the v1 path: serde's own shape (the same as above).
        O::RancherVersion { .. }
        | O::ApiReady
        | O::KubernetesVersionChosen { .. }
        | O::ClusterNamed { .. }
        | O::MachineRunning { .. }
        | O::ClusterReady
        | O::CaSystemRoots
        | O::PasswordKept
        | O::ClusterDeleted { .. }
        | O::MachineUp { .. }
        | O::MachineStartedAgain { .. }
        | O::MachineMadeAgain { .. }
        | O::HostClaimed { .. }
        | O::NodeDeleted { .. }
        | O::ApiTokensDeleted { .. } => {
            // Through a Value: its keys come out sorted, as serde_json's own event JSON has them.
            let v = serde_json::to_value(outcome).expect("an Outcome is JSON");
            serde_json::to_writer(&mut *out, &v).expect("writing JSON into a Vec never fails")
        }
    }
}

fn secret_ref(out: &mut Vec<u8>, s: &rmm_events::SecretRef) {
    let rmm_events::SecretRef { name, fingerprint } = s;
    out.extend_from_slice(b"{\"fingerprint\":");
    json_str(out, fingerprint);
    out.extend_from_slice(b",\"name\":");
    json_str(out, name);
    out.push(b'}');
}

/// A JSON string, escaped as serde_json escapes it.
fn json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("writing JSON into a Vec never fails");
    }
}

fn uuid_str(out: &mut Vec<u8>, id: &uuid::Uuid) {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.push(b'"');
    out.extend_from_slice(id.hyphenated().encode_lower(&mut buf).as_bytes());
    out.push(b'"');
}

/// Appends `at_ms` as [`rmm_events::rfc3339_ms`] formats it
/// (`2026-11-24T13:00:55.366Z`), without going through `Display`.
pub fn write_rfc3339_ms(out: &mut Vec<u8>, at_ms: i64) {
    let ms = at_ms.max(0);
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        out.extend_from_slice(rmm_events::rfc3339_ms(at_ms).as_bytes());
        return;
    }
    let (h, m, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    let digits = |out: &mut Vec<u8>, v: i64, n: u32| {
        for i in (0..n).rev() {
            out.push(b'0' + (v / 10i64.pow(i) % 10) as u8);
        }
    };
    digits(out, year, 4);
    out.push(b'-');
    digits(out, month, 2);
    out.push(b'-');
    digits(out, day, 2);
    out.push(b'T');
    digits(out, h, 2);
    out.push(b':');
    digits(out, m, 2);
    out.push(b':');
    digits(out, s, 2);
    out.push(b'.');
    digits(out, milli, 3);
    out.push(b'Z');
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmm_events::{Event, Outcome, Plan, RunKind, SecretRef, Via};
    use uuid::Uuid;

    fn every_event() -> Vec<Event> {
        let secret = SecretRef { name: "rancher/api-token".into(), fingerprint: "0123456789ab".into() };
        let outcomes = vec![
            Outcome::MachineCreated { ip: "127.0.0.2".into() },
            Outcome::ServerStarted { image: "rancher/rancher:v2.11.3".into() },
            Outcome::Ready,
            Outcome::CaPinned { checksum: "ab".repeat(32) },
            Outcome::LoggedIn { token: secret.clone() },
            Outcome::PasswordChanged { password: secret.clone() },
            Outcome::ApiTokenCreated { token_id: "token-x1".into(), token: secret.clone() },
            Outcome::ServerUrlSet { url: "https://127.0.0.1:8443".into() },
            Outcome::ClusterCreated { cluster_id: "c-abcde".into() },
            Outcome::RegistrationTokenCreated { token_id: "crt-1".into() },
            Outcome::NodeCommandReady { command: secret },
            Outcome::ClusterActive,
            Outcome::AgentStarted,
            Outcome::NodeListed { node_id: "m-1".into() },
            Outcome::NodeActive,
            Outcome::MachineRemoved,
        ];
        let plan = Plan { cluster_name: "tiny \"quoted\"".into(), ..Plan::default() };
        let mut events = vec![
            Event::RunStarted { kind: RunKind::Up, plan },
            Event::AttemptStarted {
                attempt: 2,
                command: "rmm up --resume".into(),
                pid: 42,
                rmm_version: "0.1.0".into(),
                user: "ops".into(),
                host: "h".into(),
            },
            Event::StepStarted { step: Step::RunAgent, try_no: 2, detail: "tab\there \"q\" \\ é \u{1}".into() },
            Event::StepFailed { step: Step::Login, try_no: 1, error: "401\nUnauthorized".into(), retryable: true },
            Event::StepFailed { step: Step::Login, try_no: 4, error: "gone".into(), retryable: false },
            Event::JoinGranted { node: "master02".into() },
            Event::RunCompleted,
            Event::RunFailed { actor: "master01".into(), step: Some(Step::RunAgent), reason: "no space".into() },
            Event::RunFailed { actor: "coordinator".into(), step: None, reason: "x".into() },
            Event::AttemptInterrupted { reason: "SIGTERM".into() },
            Event::StepInterrupted { step: Step::WaitClusterReady, try_no: 1, reason: "stopped while waiting".into() },
        ];
        for (i, outcome) in outcomes.into_iter().enumerate() {
            let step = [Step::CreateMachine, Step::WaitNodeActive, Step::CreateRegistrationToken][i % 3];
            let via = if i % 2 == 0 { Via::Done } else { Via::Adopted };
            events.push(Event::StepSucceeded { step, outcome, via });
        }
        events
    }

    #[test]
    fn fast_json_is_event_json() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("events/tests/fixtures");
        let mut envelopes: Vec<Envelope> = Vec::new();
        for version in std::fs::read_dir(&fixtures).unwrap().flatten() {
            for file in std::fs::read_dir(version.path()).unwrap().flatten() {
                if file.path().extension().is_some_and(|x| x == "bin") {
                    let bytes = std::fs::read(file.path()).unwrap();
                    if let Ok(e) = rmm_events::codec::decode(&bytes) {
                        envelopes.push(e);
                    }
                }
            }
        }
        assert!(!envelopes.is_empty(), "fixtures decode");
        for (i, event) in every_event().into_iter().enumerate() {
            envelopes.push(Envelope {
                seq: i as u64 + 1,
                id: Uuid::now_v7(),
                run: Uuid::now_v7(),
                attempt: 1 + i as u32 % 3,
                actor: if i % 4 == 0 { "coordinator".into() } else { "wörker\"01".into() },
                cause: (i % 5 != 0).then(Uuid::now_v7),
                at_ms: 1_764_000_000_000 + (i as i64) * 86_399_999,
                event,
            });
        }
        let hash = [0xa5u8; 32];
        for e in &envelopes {
            let mut fast = Vec::new();
            write_event_json(&mut fast, e, &hash);
            assert_eq!(String::from_utf8(fast).unwrap(), event_json(e, &hash).to_string(), "{:?}", e.event);
        }
    }

    #[test]
    fn rfc3339_matches_humantime() {
        let mut at = -5i64;
        while at < 253_402_300_799_999 {
            let mut out = Vec::new();
            write_rfc3339_ms(&mut out, at);
            assert_eq!(String::from_utf8(out).unwrap(), rmm_events::rfc3339_ms(at), "{at}");
            at = at * 3 + 7_777_777;
        }
    }
}
