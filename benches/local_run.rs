//! Benchmark: one `rmm up` (3 masters, 3 workers) on the local world with
//! world latency, against its critical path.
//!
//! World: `RMM_LOCAL_CREATE_MS=2000`, `RMM_LOCAL_RANCHER_BOOT_MS=3000`,
//! `RMM_LOCAL_NODE_READY_MS=1000`.
//!
//! Critical path = max(Rancher chain, node machine creation)
//!               + 3 serial master joins + 1 worker join
//!               = max(2000 + 3000, 2000) + 3·1000 + 1000 = 9000 ms.
//!
//! That is the RKE1 flow (masters join one at a time), so the run is pinned
//! to rke1 on Rancher 2.11 (`rmm.toml`), whatever the default is; the rke2
//! path (every node registers at once, the controllers' delays) has a
//! critical path of its own (issue 8).
//!
//! Wall time is the whole `rmm up` process, from spawn to exit. Run with
//! `cargo bench --bench local_run` (`RMM_BENCH_RUNS=N` for more runs).

use std::process::Command;
use std::time::Instant;

const CREATE_MS: u64 = 2000;
const BOOT_MS: u64 = 3000;
const READY_MS: u64 = 1000;

fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test` of benches passes nothing useful.
    let runs: usize = std::env::var("RMM_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let critical = (CREATE_MS + BOOT_MS).max(CREATE_MS) + 3 * READY_MS + READY_MS;
    let mut ratios = Vec::new();
    println!("local_run: 3 masters, 3 workers; create {CREATE_MS} ms, rancher boot {BOOT_MS} ms, node ready {READY_MS} ms");
    println!("critical path: {critical} ms");
    for i in 1..=runs {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("state");
        std::fs::write(dir.path().join("rmm.toml"), "distribution = \"rke1\"\nrancher_image = \"rancher/rancher:v2.11.3\"\n").expect("rmm.toml");
        let start = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_rmm"))
            .current_dir(dir.path())
            .args(["--state-dir", state.to_str().unwrap(), "up"])
            .env("RMM_LOCAL_CREATE_MS", CREATE_MS.to_string())
            .env("RMM_LOCAL_RANCHER_BOOT_MS", BOOT_MS.to_string())
            .env("RMM_LOCAL_NODE_READY_MS", READY_MS.to_string())
            .env("RMM_PLAIN", "1")
            .output()
            .expect("run rmm");
        let wall = start.elapsed().as_millis() as u64;
        let ok = out.status.success();
        // Clean up the world (stops the emulator) before judging.
        let _ = Command::new(env!("CARGO_BIN_EXE_rmm"))
            .current_dir(dir.path())
            .args(["--state-dir", state.to_str().unwrap(), "down"])
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
