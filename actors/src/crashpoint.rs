//! Crash points for crash drills, in the shipped binary (users run them
//! against their own setups):
//!
//! * `RMM_CRASH_AFTER_APPEND=N` — abort right after the N-th durable append
//!   of this process (the event is on disk, the next effect has not started).
//! * `RMM_CRASH_BEFORE_OUTCOME=N` — abort after the N-th side effect of this
//!   process has happened, before its outcome is appended.
//!
//! `abort()` runs no destructors and flushes nothing, like a power cut for
//! everything not yet synced.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

struct Points {
    after_append: Option<u64>,
    before_outcome: Option<u64>,
}

fn points() -> &'static Points {
    static POINTS: OnceLock<Points> = OnceLock::new();
    POINTS.get_or_init(|| Points {
        after_append: read("RMM_CRASH_AFTER_APPEND"),
        before_outcome: read("RMM_CRASH_BEFORE_OUTCOME"),
    })
}

fn read(var: &str) -> Option<u64> {
    std::env::var(var).ok().and_then(|v| v.trim().parse().ok()).filter(|n| *n > 0)
}

static APPENDS: AtomicU64 = AtomicU64::new(0);
static EFFECTS: AtomicU64 = AtomicU64::new(0);

/// How many more records may be appended before the append crash point;
/// the journal cuts a batch there so the crash comes exactly after the
/// N-th record.
pub fn appends_before_crash() -> Option<u64> {
    let n = points().after_append?;
    Some(n.saturating_sub(APPENDS.load(Ordering::SeqCst)))
}

/// Called by the journal after `count` more records became durable.
pub fn appended(count: u64) {
    let before = APPENDS.fetch_add(count, Ordering::SeqCst);
    if let Some(n) = points().after_append {
        if before < n && n <= before + count {
            eprintln!("rmm: crash point RMM_CRASH_AFTER_APPEND={n} reached; aborting");
            std::process::abort();
        }
    }
}

/// Called after a side effect finished, before its outcome is appended.
pub fn effect_done() {
    let n_now = EFFECTS.fetch_add(1, Ordering::SeqCst) + 1;
    if points().before_outcome == Some(n_now) {
        eprintln!("rmm: crash point RMM_CRASH_BEFORE_OUTCOME={n_now} reached; aborting");
        std::process::abort();
    }
}
