//! `rmm status [--json] [--refresh] [--cluster NAME]`

use std::io::Write;
use std::time::Duration;

use rmm_actors::ports::{ca_checksum, CaTrust, MachineDriver, MachineState, RancherApi};
use serde_json::{json, Value};

use crate::cli::up::ConfigFileSource;
use crate::config::Overrides;
use crate::engine;
use crate::error::{Error, Result};
use crate::state_dir::{fold_latest, StateDir};
use crate::view;

/// How long `status --refresh` waits for the server to answer.
const SERVER_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print JSON (the shape is documented in the README).
    #[arg(long)]
    pub json: bool,
    /// Also ask the driver what exists: `observed` per actor, the Rancher
    /// server itself (container and answer), and `orphans` — also when the
    /// log has no run.
    #[arg(long)]
    pub refresh: bool,
    /// The cluster to look for with --refresh when the log has no run
    /// [default: `cluster_name` of rmm.toml, else tinysetup]
    #[arg(long)]
    pub cluster: Option<String>,
}

pub fn run(args: StatusArgs, dir: &StateDir, config: &ConfigFileSource) -> Result<()> {
    if !args.refresh {
        dir.check_log_not_lost(" (`rmm status --refresh` lists the machines the driver still has)")?;
    }
    let (history, writer) = if dir.exists() {
        let writer = dir.locked_by_other();
        let log = dir.open_store_for_reading()?;
        (fold_latest(&log, None)?, writer)
    } else {
        (Default::default(), None)
    };
    let run = history.latest();
    let mut v = view::status_json(&history, run, writer.is_some());
    if args.refresh {
        match run {
            Some(run) => refresh(&mut v, run, dir)?,
            None => refresh_without_log(&mut v, dir, config, args.cluster.as_deref())?,
        }
    }
    v["state_dir"] = json!(dir.shown());
    if run.is_none() {
        // No log here, but the registry remembers a cluster brought up in
        // this dir and not taken down: the dir was deleted or moved, and
        // its machines may still exist (issue 11: not losing track of them).
        if let Some(e) = crate::registry::known_in(dir) {
            v["registry"] = json!({"name": e.name, "driver": e.driver, "state": e.state, "url": e.url});
        }
    }
    let mut out = crate::cli::stdout();
    if args.json {
        let _ = writeln!(out, "{v}");
    } else {
        let _ = write!(out, "{}", text(&v));
    }
    Ok(())
}

/// The view's text, plus what only `--refresh` knows.
fn text(v: &Value) -> String {
    let dir = v["state_dir"].as_str().unwrap_or("?");
    if v["run"]["state"] == "none" {
        let known = &v["registry"];
        let known = match known["name"].as_str() {
            Some(name) => format!(
                "but the cluster registry (`rmm list`) has cluster {name} (driver {}, {}) here: this state dir was deleted or moved, and its machines may still exist (`rmm status --refresh --cluster {name}` lists them, `rmm down --cluster {name}` removes them)\n",
                known["driver"].as_str().unwrap_or("?"),
                known["state"].as_str().unwrap_or("?")
            ),
            None => String::new(),
        };
        let Some(orphans) = v["orphans"].as_array() else {
            return format!("no run in {dir} yet (start one with `rmm up`)\n{known}");
        };
        let cluster = v["cluster"].as_str().unwrap_or("?");
        if orphans.is_empty() {
            return format!("no run in the log in {dir}, and driver {} has no machine of cluster {cluster}\n", v["driver"].as_str().unwrap_or("?"));
        }
        let names: Vec<&str> = orphans.iter().filter_map(|o| o["name"].as_str()).collect();
        return format!(
            "no run in the log in {dir}, but driver {} has {} machine{} of cluster {cluster} (orphans): {}\nremove them with `rmm down --cluster {cluster}`\n",
            v["driver"].as_str().unwrap_or("?"),
            names.len(),
            if names.len() == 1 { "" } else { "s" },
            names.join(", ")
        );
    }
    let mut out = view::status_text(v);
    let server = &v["rancher"]["server"];
    if server.is_object() {
        let answering = match (server["answering"].as_bool(), server["ca_matches"].as_bool()) {
            (Some(true), Some(false)) => "answering, but with a CA that is not the one pinned in the log (not ours)",
            (Some(true), _) => "answering",
            _ => "not answering",
        };
        out.push_str(&format!("server: container {}, {answering}\n", server["container"].as_str().unwrap_or("unknown")));
    }
    out.push_str(&format!("state dir: {dir}\n"));
    out
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| Error::Other(e.to_string()))
}

fn observed_word(o: &Result<Option<rmm_actors::ports::Machine>, rmm_actors::ports::DriverError>) -> String {
    match o {
        Ok(None) => "absent".to_string(),
        Ok(Some(m)) => match &m.state {
            MachineState::Running => "running".into(),
            MachineState::Stopped => "stopped".into(),
            MachineState::Creating => "creating".into(),
            MachineState::Error(e) => format!("error: {e}"),
        },
        Err(e) => format!("unknown: {e}"),
    }
}

fn refresh(v: &mut Value, run: &rmm_events::RunState, dir: &StateDir) -> Result<()> {
    let driver = engine::driver(&run.plan, dir)?;
    let cluster = run.plan.cluster_name.clone();
    let rt = runtime()?;
    let names: Vec<String> = v["actors"].as_array().into_iter().flatten().filter_map(|a| a["name"].as_str().map(String::from)).collect();
    let (observed, listed) = rt.block_on(async {
        let mut observed = Vec::new();
        for name in &names {
            observed.push(driver.inspect(name).await);
        }
        (observed, driver.list(&cluster).await)
    });
    let rancher = names.iter().zip(&observed).find(|(n, _)| *n == "rancher").and_then(|(_, o)| o.as_ref().ok().cloned().flatten());
    for (a, o) in v["actors"].as_array_mut().into_iter().flatten().zip(&observed) {
        a["observed"] = json!(observed_word(o));
        // An existing Rancher (`--rancher-url`) has no machine of ours.
        if run.plan.existing_rancher() && a["name"] == "rancher" {
            a["observed"] = json!("not a machine (existing Rancher)");
        }
    }
    // The server itself, when its machine runs and the run started it.
    let started = run.actor("rancher").is_some_and(|a| a.done(rmm_events::Step::StartServer));
    if let Some(m) = rancher.filter(|m| m.state == MachineState::Running && started) {
        let ip = m.ip.clone().unwrap_or_default();
        let url = driver.api_url(&rmm_actors::steps::server_url(&ip, driver.https_port()));
        let pinned = v["rancher"]["ca_checksum"].as_str().map(str::to_string);
        v["rancher"]["server"] = rt.block_on(observe_server(driver.as_ref(), &url, pinned.as_deref()));
    }
    let listed = listed.map_err(|e| Error::Other(format!("driver {}: {e}", run.plan.driver)))?;
    let orphans: Vec<Value> = listed
        .into_iter()
        .filter(|m| !names.contains(&m.name))
        .map(|m| json!({"name": m.name, "ip": m.ip}))
        .collect();
    v["orphans"] = json!(orphans);
    Ok(())
}

/// The Rancher server as the machine and the network see it: the
/// container's state (`docker ps` on the machine), whether `/ping` answers,
/// and whether the CA it serves is the one pinned in the log. Only reads;
/// nothing carrying a credential is sent.
async fn observe_server(driver: &dyn MachineDriver, url: &str, pinned: Option<&str>) -> Value {
    let container = match driver.server_state("rancher").await {
        Ok(out) if out.status == 0 => out.stdout.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("absent").to_string(),
        Ok(out) => format!("unknown: docker ps exited {}", out.status),
        Err(e) => format!("unknown: {e}"),
    };
    let api = match crate::rancher::HttpRancher::with_timeout(url, CaTrust::Unverified, SERVER_PROBE_TIMEOUT) {
        Ok(api) => api,
        Err(e) => return json!({"container": container, "url": url, "answering": false, "error": e.to_string()}),
    };
    let (answering, error) = match api.ping().await {
        Ok(()) => (true, None),
        Err(e) => (false, Some(e.to_string())),
    };
    let ca_matches = match (answering, pinned) {
        (true, Some(pinned)) => api.cacerts().await.ok().map(|pem| ca_checksum(&pem) == pinned),
        _ => None,
    };
    json!({"container": container, "url": url, "answering": answering, "ca_matches": ca_matches, "error": error})
}

/// No run in the log (never made, or the log was lost): what the driver
/// has for the cluster name (flag, rmm.toml or the default) is shown as
/// orphans, so a live cluster can still be found — and removed with
/// `rmm down --cluster NAME`.
fn refresh_without_log(v: &mut Value, dir: &StateDir, config: &ConfigFileSource, cluster: Option<&str>) -> Result<()> {
    let plan = config.load()?.plan(&Overrides { cluster_name: cluster.map(str::to_string), ..Default::default() })?;
    let driver = engine::driver(&plan, dir)?;
    let listed = runtime()?
        .block_on(driver.list(&plan.cluster_name))
        .map_err(|e| Error::Other(format!("driver {}: {e}", plan.driver)))?;
    let orphans: Vec<Value> = listed
        .iter()
        .map(|m| json!({"name": m.name, "ip": m.ip, "observed": observed_word(&Ok(Some(m.clone())))}))
        .collect();
    v["cluster"] = json!(plan.cluster_name);
    v["driver"] = json!(plan.driver);
    v["orphans"] = json!(orphans);
    Ok(())
}
