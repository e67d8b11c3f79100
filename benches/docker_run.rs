//! `rmm up --driver docker` (1 + 3 + 3 containers, rke2 on the emulated
//! 2.15) with the test images of `tests/e2e/docker` and the emulator's
//! default controller delays: the wall time against the critical path as
//! the local world computes it (`benches/local_run.rs`: from the
//! emulator's own knobs, the world's delays here being the engine's), and
//! the engine's own cost measured in the same run: container create+start
//! latency (p50, max) and the peak number of creates at once (the docker
//! driver logs each at `-v`). Target: wall ≤ 1.10 × (critical path + one
//! container start, the run's max). The chain `rmm log --timeline` finds in
//! the log is printed beside it. Prints SKIPPED when no engine answers.
//! `RMM_BENCH_RUNS=N` (default 3).
//!
//! Critical path, as `local_run` computes it for rke2 with no machine
//! creation or Rancher boot delay of its own (here both are real: the
//! server container's create and start, counted as the "one container
//! start" of the target, and the emulator's start inside it):
//!
//! ```text
//!   the webhook window (600; the 300 ms login window inside it)
//!   + status.clusterName (300) + default-token (300)
//!   + the planner, 5 steps of p = 150
//!   = 600 + 300 + 300 + 750 = 1950 ms.
//! ```

#[path = "../tests/e2e/docker/images.rs"]
mod images;

use std::process::Command;
use std::time::Instant;

use rmm::emulator::{Knobs, Line};

/// `local_run`'s rke2 critical path with no creation or boot delay.
fn critical_path() -> f64 {
    let k = Knobs::defaults(Line::parse("2.15").expect("line 2.15"));
    (k.webhook_window_ms.max(k.login_window_ms) + k.cluster_name_ms + k.default_token_ms + 5 * k.planner_ms) as f64
}

/// Image tags unique within this process (`images` asks for it).
pub fn unique() -> u32 {
    0
}

fn rmm(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rmm"))
        .current_dir(dir)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(args)
        .env("XDG_STATE_HOME", dir.join("xdg"))
        .env("RMM_PLAIN", "1")
        .output()
        .expect("run rmm")
}

/// The `key=N` numbers of the driver's log lines.
fn numbers(text: &str, key: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix(&format!("{key}="))))
        .filter_map(|v| v.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
        .collect()
}

/// `1.23s` / `456ms` → ms.
fn ms(word: &str) -> Option<f64> {
    if let Some(v) = word.strip_suffix("ms") {
        v.parse().ok()
    } else {
        word.strip_suffix('s').and_then(|v| v.parse::<f64>().ok()).map(|s| s * 1000.0)
    }
}

fn main() {
    if !Command::new("docker").args(["version"]).output().is_ok_and(|o| o.status.success()) {
        println!("SKIPPED: docker_run needs a Docker Engine that answers (`docker version`)");
        return;
    }
    let runs: usize = std::env::var("RMM_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let t = Instant::now();
    let imgs = images::build("2.15");
    println!("test images built in {} ms", t.elapsed().as_millis());
    let critical = critical_path();
    println!("critical path (as the local world computes it): {critical:.0} ms");
    let mut ratios = Vec::new();
    for i in 0..runs {
        let dir = tempfile::Builder::new().prefix("rmm-bench-docker-").tempdir().unwrap();
        let cluster = format!("bench{}-{i}", std::process::id());
        let config = format!(
            "driver = \"docker\"\ndistribution = \"rke2\"\nrancher_image = \"{}\"\ncluster_name = \"{cluster}\"\npoll_ms = 50\n\n[docker]\nnode_image = \"{}\"\nprivileged = false\n",
            imgs.rancher, imgs.node
        );
        std::fs::write(dir.path().join("rmm.toml"), config).unwrap();
        let start = Instant::now();
        let up = rmm(dir.path(), &["-v", "up"]);
        let wall = start.elapsed().as_millis() as f64;
        let err = String::from_utf8_lossy(&up.stderr).to_string();
        if !up.status.success() {
            let _ = rmm(dir.path(), &["down", "--yes"]);
            panic!("up failed: {err}");
        }
        let timeline = String::from_utf8_lossy(&rmm(dir.path(), &["log", "--timeline"]).stdout).to_string();
        if i == 0 {
            println!("run 0's timeline (`rmm log --timeline`):\n{timeline}");
        }
        let chain_line = timeline.lines().find(|l| l.to_lowercase().contains("critical path") && l.contains("between")).unwrap_or("").to_string();
        let chain = chain_line.split_whitespace().find_map(ms).unwrap_or(f64::NAN);
        let mut lat = numbers(&err, "create_start_ms");
        lat.sort_unstable();
        let peak = numbers(&err, "creating").into_iter().max().unwrap_or(0);
        let p50 = lat.get(lat.len() / 2).copied().unwrap_or(0);
        let max = lat.last().copied().unwrap_or(0);
        let ratio = wall / critical;
        let target_ratio = wall / (critical + max as f64);
        let target = (critical + max as f64) * 1.10;
        println!(
            "run {i}: wall {wall:.0} ms; critical path {critical:.0} ms, ratio {ratio:.3}; wall / (critical + one start) {target_ratio:.3}; the log's chain {chain:.0} ms (wall / chain {:.3}); container create+start over {} containers: p50 {p50} ms, max {max} ms; peak concurrent creates {peak}; target wall <= 1.10 x (critical + one start) = {target:.0} ms: {}",
            wall / chain,
            lat.len(),
            if wall <= target { "met" } else { "missed" }
        );
        ratios.push(target_ratio);
        let down = rmm(dir.path(), &["down", "--yes"]);
        assert!(down.status.success(), "down failed: {}", String::from_utf8_lossy(&down.stderr));
    }
    ratios.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("median ratio wall / (critical path + one container start): {:.3} (target <= 1.10)", ratios[ratios.len() / 2]);
}
