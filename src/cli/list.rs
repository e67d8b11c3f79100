//! `rmm list [--json]`: every cluster this user brought up, from the
//! registry `up` and `down` keep (`crate::registry`). A state dir deleted
//! by hand shows as `state dir missing`: its machines may still exist
//! (`rmm down --cluster NAME --state-dir DIR` removes them).

use serde_json::json;

use crate::error::{Error, Result};
use crate::registry;

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// One JSON array: dir, name, driver, state, url.
    #[arg(long)]
    pub json: bool,
}

/// dir, name, driver, state, url.
type Row = (String, String, String, String, String);

/// What `list` shows for a state dir that is gone.
pub const MISSING: &str = "state dir missing";

pub fn run(args: ListArgs) -> Result<()> {
    let reg = registry::dir()
        .ok_or_else(|| Error::Config("no registry of clusters: neither XDG_STATE_HOME nor HOME is an absolute path".into()))?;
    let entries = registry::read_in(&reg).map_err(|e| Error::StateDir(format!("cannot read the cluster registry {e}")))?;
    let rows: Vec<Row> = entries
        .into_iter()
        .map(|e| {
            // A cluster taken down has no machines left to lose track of:
            // its dir deleted afterwards is no news, and it stays `down`.
            let gone = e.state != "down" && !std::path::Path::new(&e.dir).join("events").exists();
            let state = if gone { MISSING.to_string() } else { e.state };
            (e.dir, e.name, e.driver, state, e.url.unwrap_or_default())
        })
        .collect();
    if args.json {
        let all: Vec<_> = rows
            .iter()
            .map(|(dir, name, driver, state, url)| {
                json!({"dir": dir, "name": name, "driver": driver, "state": state, "url": if url.is_empty() { serde_json::Value::Null } else { json!(url) }})
            })
            .collect();
        crate::outln!("{}", serde_json::Value::Array(all));
        return Ok(());
    }
    if rows.is_empty() {
        crate::errln!("rmm: no clusters recorded in {} (`rmm up` records them)", reg.display());
        return Ok(());
    }
    let header = ("DIR", "NAME", "DRIVER", "STATE", "URL");
    let w = |f: &dyn Fn(&Row) -> usize, h: &str| rows.iter().map(f).max().unwrap_or(0).max(h.len());
    let (wd, wn, wr, ws) = (w(&|r| r.0.len(), header.0), w(&|r| r.1.len(), header.1), w(&|r| r.2.len(), header.2), w(&|r| r.3.len(), header.3));
    crate::outln!("{:wd$}  {:wn$}  {:wr$}  {:ws$}  {}", header.0, header.1, header.2, header.3, header.4);
    for (dir, name, driver, state, url) in &rows {
        let url = if url.is_empty() { "-" } else { url };
        crate::outln!("{dir:wd$}  {name:wn$}  {driver:wr$}  {state:ws$}  {url}");
    }
    Ok(())
}
