//! Time → position, attempt by attempt. Each attempt gets a stretch of the
//! chart in proportion to its own duration; the wall-clock gap between two
//! attempts (minutes or days before a resume) is cut out and replaced by a
//! fixed separator, which the renderings label with the gap's length.

use super::model::Run;

#[derive(Debug, Clone)]
pub struct Segment {
    pub attempt: u32,
    pub start_ms: i64,
    pub end_ms: i64,
    /// Position of the segment's first unit and its width in units.
    pub x0: f64,
    pub width: f64,
    /// Wall-clock time between the previous attempt's end and this start.
    pub gap_before_ms: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct Axis {
    pub segments: Vec<Segment>,
    /// Units between two attempts (0 when there are too many attempts to
    /// separate: then they only follow one another).
    pub sep: f64,
}

impl Axis {
    /// Lays `run`'s attempts over `total` units with `sep` units between
    /// two attempts, each attempt at least `min` units wide.
    pub fn new(run: &Run, total: f64, sep: f64, min: f64) -> Axis {
        let n = run.attempts.len().max(1);
        // Every attempt gets at least one unit and a separator, if they fit.
        let sep = if n as f64 + sep * (n - 1) as f64 > total { 0.0 } else { sep };
        let room = total - sep * (n - 1) as f64;
        let min = min.min(room / n as f64);
        let durations: Vec<f64> = run.attempts.iter().map(|a| a.duration_ms().max(1) as f64).collect();
        let sum: f64 = durations.iter().sum::<f64>().max(1.0);
        // Give every attempt its minimum, then the rest in proportion to time.
        let spare = room - min * n as f64;
        let mut x = 0.0;
        let mut segments = Vec::new();
        let mut prev_end: Option<i64> = None;
        for (a, d) in run.attempts.iter().zip(&durations) {
            let width = min + spare * d / sum;
            segments.push(Segment {
                attempt: a.no,
                start_ms: a.start_ms,
                end_ms: a.end_ms.max(a.start_ms + 1),
                x0: x,
                width,
                gap_before_ms: prev_end.map(|p| (a.start_ms - p).max(0)),
            });
            x += width + sep;
            prev_end = Some(a.end_ms);
        }
        Axis { segments, sep }
    }

    pub fn segment(&self, attempt: u32) -> Option<&Segment> {
        self.segments.iter().find(|s| s.attempt == attempt)
    }

    /// Position of `t` within `attempt`'s segment.
    pub fn x(&self, attempt: u32, t: i64) -> f64 {
        match self.segment(attempt) {
            Some(s) => {
                let f = (t - s.start_ms) as f64 / (s.end_ms - s.start_ms) as f64;
                s.x0 + f.clamp(0.0, 1.0) * s.width
            }
            None => 0.0,
        }
    }
}

/// A tick step (ms) from round steps so that ticks are at least
/// `min_units` apart when one unit is `ms_per_unit`.
pub fn tick_step(ms_per_unit: f64, min_units: f64) -> i64 {
    const STEPS: &[i64] = &[
        1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000,
        600_000, 900_000, 1_800_000, 3_600_000, 7_200_000, 21_600_000, 43_200_000, 86_400_000,
    ];
    let want = ms_per_unit * min_units;
    STEPS.iter().copied().find(|&s| s as f64 >= want).unwrap_or_else(|| {
        let days = (want / 86_400_000.0).ceil() as i64;
        days.max(1) * 86_400_000
    })
}

/// Duration for people: 850ms, 1.55s, 12.3s, 2m05s, 1h02m.
pub fn fmt_dur(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 10_000 {
        format!("{:.2}s", ms as f64 / 1000.0)
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    } else if ms < 86_400_000 {
        format!("{}h{:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    } else {
        format!("{}d{:02}h", ms / 86_400_000, (ms % 86_400_000) / 3_600_000)
    }
}

/// A tick label: 0s, 500ms, 1s, 1.5s, 2m, 2m30s.
pub fn fmt_tick(ms: i64) -> String {
    if ms == 0 {
        "0s".into()
    } else if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        if ms % 1000 == 0 {
            format!("{}s", ms / 1000)
        } else {
            let s = format!("{:.3}", ms as f64 / 1000.0);
            format!("{}s", s.trim_end_matches('0'))
        }
    } else if ms < 3_600_000 {
        let (m, s) = (ms / 60_000, (ms % 60_000) / 1000);
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        }
    } else {
        let (h, m) = (ms / 3_600_000, (ms % 3_600_000) / 60_000);
        if m == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{m}m")
        }
    }
}
