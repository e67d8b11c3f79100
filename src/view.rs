//! The shapes `status`, `replay` and `log` print (README documents each).

use rmm_actors::decide::steps_for;
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

fn role_of(name: &str) -> Role {
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
pub fn actor_state(run: &RunState, actor: Option<&ActorState>, role: Role, writer_alive: bool) -> (&'static str, Option<Step>) {
    let down = run.kind == RunKind::Down;
    let Some(a) = actor else { return ("pending", None) };
    let steps = steps_for(role, down);
    if steps.iter().all(|s| a.done(*s)) {
        return (if down { "removed" } else { "done" }, None);
    }
    if let Some((step, _)) = a.in_flight() {
        let alive = writer_alive && run.status == RunStatus::Running;
        return (if alive { "running" } else { "in_doubt" }, Some(step));
    }
    let failed = steps.iter().find(|s| matches!(a.step(**s), Some(StepState::Failed { .. })));
    if let Some(step) = failed {
        if run.status == RunStatus::Failed || run.status == RunStatus::Interrupted || run.status == RunStatus::Running {
            return ("failed", Some(*step));
        }
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
        } else if r.done(Step::WaitClusterActive) {
            Some("active")
        } else if r.done(Step::CreateCluster) {
            Some("provisioning")
        } else {
            None
        }
    });
    let mut names: Vec<(String, Role)> = if run.kind == RunKind::Up {
        run.plan.machine_names()
    } else {
        run.actors.keys().filter(|n| *n != "coordinator").map(|n| (n.clone(), role_of(n))).collect()
    };
    names.sort_by_key(|(n, r)| (*r, n.clone()));
    let actors: Vec<Value> = names
        .iter()
        .map(|(name, role)| {
            let a = run.actor(name);
            let (state, step) = actor_state(run, a, *role, writer_alive);
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
    out.push_str(&format!("{:<11} {:<8} {:<9} {:<26} {:<16} {}\n", "NAME", "ROLE", "STATE", "STEP", "IP", "OBSERVED"));
    for a in v["actors"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<11} {:<8} {:<9} {:<26} {:<16} {}\n",
            a["name"].as_str().unwrap_or(""),
            a["role"].as_str().unwrap_or(""),
            a["state"].as_str().unwrap_or(""),
            a["step"].as_str().unwrap_or("-"),
            a["ip"].as_str().unwrap_or("-"),
            a["observed"].as_str().unwrap_or("")
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
    let data = match serde_json::to_value(&e.event).unwrap_or(Value::Null) {
        Value::Object(mut m) if m.len() == 1 => m.values_mut().next().map(std::mem::take).unwrap_or(Value::Null),
        _ => json!({}),
    };
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
