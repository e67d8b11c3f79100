//! Benchmark: one `rmm up` (3 masters, 3 workers) on the local world with
//! world latency, against its critical path. One distribution a run of the
//! bench: `RMM_BENCH_DISTRIBUTION=rke2` (the default; Rancher v2.15.1 with
//! the emulator's default controller delays) or `rke1` (Rancher v2.11.3).
//!
//! World: `RMM_LOCAL_CREATE_MS=2000`, `RMM_LOCAL_RANCHER_BOOT_MS=3000`,
//! `RMM_LOCAL_NODE_READY_MS=1000` (the last is RKE1's: a v3 node is listed
//! that long after its agent registered; on the v1 path a node's readiness
//! is the planner's, whose delays are the emulator's defaults).
//!
//! Critical path, rke1 = max(Rancher chain, node machine creation)
//!               + 3 serial master joins + 1 worker join
//!               = max(2000 + 3000, 2000) + 3·1000 + 1000 = 9000 ms.
//!
//! Critical path, rke2 (the emulator's clock, `src/emulator/v1.rs`):
//!
//! ```text
//!   Rancher machine (2000) + boot (3000)
//!   + the webhook window, in which /v1 reads fail and creates are
//!     refused (600; the 300 ms login window lies inside it)
//!   + status.clusterName (300) + default-token (300)
//!   + the planner: init node plan + probes (2p), then the other etcd /
//!     control-plane nodes and the workers in parallel (2p), then the
//!     cluster Ready (p), p = 150
//!   = 2000 + 3000 + 600 + 300 + 300 + 5·150 = 6950 ms.
//! ```
//!
//! Node machines (2000, in parallel) hide inside the Rancher chain.
//!
//! Wall time is the whole `rmm up` process, from spawn to exit. Run with
//! `cargo bench --bench local_run` (`RMM_BENCH_RUNS=N` for more runs).

use std::process::Command;
use std::time::Instant;

use rmm::emulator::{Knobs, Line};

const CREATE_MS: u64 = 2000;
const BOOT_MS: u64 = 3000;
const READY_MS: u64 = 1000;

fn critical_path(distribution: &str) -> (u64, &'static str) {
    match distribution {
        "rke1" => (CREATE_MS.max(CREATE_MS + BOOT_MS) + 3 * READY_MS + READY_MS, "rancher/rancher:v2.11.3"),
        _ => {
            let k = Knobs::defaults(Line::parse("2.15").expect("line 2.15"));
            let rancher = CREATE_MS + BOOT_MS + k.webhook_window_ms.max(k.login_window_ms);
            (rancher.max(CREATE_MS) + k.cluster_name_ms + k.default_token_ms + 5 * k.planner_ms, "rancher/rancher:v2.15.1")
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test` of benches passes nothing useful.
    let runs: usize = std::env::var("RMM_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let distribution = std::env::var("RMM_BENCH_DISTRIBUTION").unwrap_or_else(|_| "rke2".into());
    let (critical, image) = critical_path(&distribution);
    let mut ratios = Vec::new();
    println!("local_run: {distribution} on {image}; 3 masters, 3 workers; create {CREATE_MS} ms, rancher boot {BOOT_MS} ms, node ready {READY_MS} ms");
    println!("critical path: {critical} ms");
    for i in 1..=runs {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("state");
        std::fs::write(
            dir.path().join("rmm.toml"),
            format!("distribution = \"{distribution}\"\nrancher_image = \"{image}\"\n"),
        )
        .expect("rmm.toml");
        let start = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_rmm"))
            .current_dir(dir.path())
            .args(["--state-dir", state.to_str().unwrap(), "up"])
            .env("RMM_LOCAL_CREATE_MS", CREATE_MS.to_string())
            .env("RMM_LOCAL_RANCHER_BOOT_MS", BOOT_MS.to_string())
            .env("RMM_LOCAL_NODE_READY_MS", READY_MS.to_string())
            .env("XDG_STATE_HOME", dir.path().join("xdg"))
            .env("RMM_PLAIN", "1")
            .output()
            .expect("run rmm");
        let wall = start.elapsed().as_millis() as u64;
        let ok = out.status.success();
        // Clean up the world (stops the emulator) before judging.
        let _ = Command::new(env!("CARGO_BIN_EXE_rmm"))
            .current_dir(dir.path())
            .args(["--state-dir", state.to_str().unwrap(), "down"])
            .env("XDG_STATE_HOME", dir.path().join("xdg"))
            .env("RMM_PLAIN", "1")
            .output();
        assert!(ok, "rmm up failed: {}", String::from_utf8_lossy(&out.stderr));
        let ratio = wall as f64 / critical as f64;
        println!("run {i}: wall {wall} ms, ratio {ratio:.3}");
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!("median ratio wall/critical path: {median:.3} (target <= 1.10)");
}
