//! `rmm status [--json] [--refresh]`

use std::io::Write;

use rmm_actors::ports::MachineState;
use serde_json::{json, Value};

use crate::engine;
use crate::error::{Error, Result};
use crate::state_dir::{fold_latest, StateDir};
use crate::view;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print JSON (the shape is documented in the README).
    #[arg(long)]
    pub json: bool,
    /// Also ask the driver what exists: `observed` per actor, and `orphans`.
    #[arg(long)]
    pub refresh: bool,
}

pub fn run(args: StatusArgs, dir: &StateDir) -> Result<()> {
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
        if let Some(run) = run {
            refresh(&mut v, run, dir)?;
        }
    }
    let mut out = crate::cli::stdout();
    if args.json {
        let _ = writeln!(out, "{v}");
    } else {
        let _ = write!(out, "{}", view::status_text(&v));
    }
    Ok(())
}

fn refresh(v: &mut Value, run: &rmm_events::RunState, dir: &StateDir) -> Result<()> {
    let driver = engine::driver(&run.plan, dir)?;
    let cluster = run.plan.cluster_name.clone();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| Error::Other(e.to_string()))?;
    let names: Vec<String> = v["actors"].as_array().into_iter().flatten().filter_map(|a| a["name"].as_str().map(String::from)).collect();
    let (observed, listed) = rt.block_on(async {
        let mut observed = Vec::new();
        for name in &names {
            observed.push(driver.inspect(name).await);
        }
        (observed, driver.list(&cluster).await)
    });
    for (a, o) in v["actors"].as_array_mut().into_iter().flatten().zip(observed) {
        a["observed"] = json!(match o {
            Ok(None) => "absent".to_string(),
            Ok(Some(m)) => match m.state {
                MachineState::Running => "running".into(),
                MachineState::Stopped => "stopped".into(),
                MachineState::Creating => "creating".into(),
                MachineState::Error(e) => format!("error: {e}"),
            },
            Err(e) => format!("unknown: {e}"),
        });
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
