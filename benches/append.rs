//! Benchmark: the cost of one durable append, against the disk's own floor.
//!
//! * `rmm`: `SledLog::append` of a typical envelope (sled insert + flush +
//!   `fdatasync`), one at a time, as the journal does when events arrive
//!   alone.
//! * `raw`: `write` of the same number of bytes to a plain file, then
//!   `fdatasync` — what any durable append must at least pay.
//! * `group`: `SledLog::append_batch` of 7 envelopes (every actor's event
//!   arriving together), per event.
//!
//! Both run in one process, interleaved, on the same disk (the temp dir), so
//! the ratio holds on a shared, noisy machine. `cargo bench --bench append`.

use std::io::Write;
use std::time::{Duration, Instant};

use rmm_events::{codec, Envelope, Event, SledLog, Step};
use uuid::Uuid;

fn envelope(run: Uuid, i: u32) -> Envelope {
    Envelope {
        seq: 0,
        id: Uuid::now_v7(),
        run,
        attempt: 1,
        actor: "master02".into(),
        cause: Some(Uuid::now_v7()),
        at_ms: 1_764_000_000_000 + i as i64,
        event: Event::StepStarted { step: Step::RunAgent, try_no: 1, detail: "roles etcd,controlplane".into() },
    }
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let n: u32 = std::env::var("RMM_BENCH_APPENDS").ok().and_then(|v| v.parse().ok()).unwrap_or(400);
    let dir = tempfile::tempdir_in(std::env::var("RMM_BENCH_DIR").unwrap_or_else(|_| ".".into())).expect("temp dir");
    let mut log = SledLog::open(&dir.path().join("events")).unwrap_or_else(|_| panic!("open store"));
    let mut raw = std::fs::OpenOptions::new().create(true).append(true).open(dir.path().join("raw")).unwrap();
    let run = Uuid::now_v7();
    let size = codec::encode(&envelope(run, 0)).len() + 32;
    let (mut ours, mut floor, mut group) = (Vec::new(), Vec::new(), Vec::new());
    let bytes = vec![0x5au8; size];
    for i in 0..n {
        let t = Instant::now();
        log.append(envelope(run, i)).unwrap();
        ours.push(t.elapsed());

        let t = Instant::now();
        raw.write_all(&bytes).unwrap();
        raw.sync_data().unwrap();
        floor.push(t.elapsed());

        if i % 10 == 0 {
            let t = Instant::now();
            log.append_batch((0..7).map(|j| envelope(run, i * 7 + j)).collect()).unwrap();
            group.push(t.elapsed() / 7);
        }
    }
    let (o, f, g) = (percentile(&mut ours, 0.5), percentile(&mut floor, 0.5), percentile(&mut group, 0.5));
    let (o99, f99) = (percentile(&mut ours, 0.99), percentile(&mut floor, 0.99));
    println!("durable append, {n} appends of {size} bytes, dir {}", dir.path().display());
    println!("raw write+fdatasync  p50 {:>8.1} µs  p99 {:>8.1} µs", f.as_secs_f64() * 1e6, f99.as_secs_f64() * 1e6);
    println!("SledLog::append      p50 {:>8.1} µs  p99 {:>8.1} µs", o.as_secs_f64() * 1e6, o99.as_secs_f64() * 1e6);
    println!("group of 7, per event p50 {:>7.1} µs", g.as_secs_f64() * 1e6);
    println!("ratio append/raw (p50): {:.2} (target <= 1.5)", o.as_secs_f64() / f.as_secs_f64());
}
