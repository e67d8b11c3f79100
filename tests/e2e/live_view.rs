//! The live view of `rmm up`, read off a pseudo-terminal: the real binary
//! draws on a pty of a known size, a vt100 parser keeps the screen, and
//! the tests read it as a user would (issue 11, "The live view and the
//! words").

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::pty::{openpty, Winsize};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::support::TestDir;

/// `rmm ARGS` on a pty of `cols` columns, its screen kept by a vt100 parser.
pub struct Screen {
    pub child: Child,
    parser: Arc<Mutex<vt100::Parser>>,
    raw: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Screen {
    /// `rmm ARGS` on a pty whose keyboard types `input` (once rmm reads).
    pub fn spawn_with_input(dir: &TestDir, args: &[&str], env: &[(&str, &str)], input: &str) -> Screen {
        Screen::start(dir, args, env, 120, Some(input))
    }

    pub fn spawn(dir: &TestDir, args: &[&str], env: &[(&str, &str)], cols: u16) -> Screen {
        Screen::start(dir, args, env, cols, None)
    }

    fn start(dir: &TestDir, args: &[&str], env: &[(&str, &str)], cols: u16, input: Option<&str>) -> Screen {
        let rows = 60;
        let size = Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = openpty(Some(&size), None).expect("openpty");
        let mut cmd = dir.rmm(args).cmd;
        cmd.env_remove("RMM_PLAIN").env_remove("NO_COLOR").env_remove("COLUMNS").env("TERM", "xterm-256color");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let slave: OwnedFd = pty.slave;
        // Its own process group: Ctrl-C is a SIGINT to the group, as a
        // terminal sends it.
        let stdin = match input {
            Some(_) => Stdio::from(slave.try_clone().unwrap()),
            None => Stdio::null(),
        };
        cmd.stdin(stdin)
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave))
            .process_group(0);
        let child = cmd.spawn().expect("spawn rmm on a pty");
        drop(cmd);
        let parser = Arc::new(Mutex::new(vt100::Parser::new(rows, cols, 0)));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let mut master = std::fs::File::from(pty.master);
        if let Some(input) = input {
            // The terminal's line discipline holds typed input until rmm reads it.
            std::io::Write::write_all(&mut master, input.as_bytes()).unwrap();
        }
        let (p, r) = (parser.clone(), raw.clone());
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            // EIO once every holder of the slave side has closed it.
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                p.lock().unwrap().process(&buf[..n]);
                r.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Screen { child, parser, raw, reader: Some(reader) }
    }

    /// The screen's rows, trailing blanks trimmed.
    pub fn rows(&self) -> Vec<String> {
        let p = self.parser.lock().unwrap();
        p.screen().rows(0, p.screen().size().1).map(|r| r.trim_end().to_string()).collect()
    }

    pub fn text(&self) -> String {
        self.rows().join("\n")
    }

    /// Waits until the screen shows `needle` (the test fails naming the
    /// screen if it does not within `bound`, or if rmm ends first).
    pub fn wait_for(&mut self, needle: &str, bound: Duration) {
        let start = Instant::now();
        loop {
            if self.text().contains(needle) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("rmm ended ({status}) before the screen showed {needle:?}:\n{}", self.text());
            }
            assert!(start.elapsed() < bound, "the screen did not show {needle:?} within {bound:?}:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for rmm to end and its output to be read; its exit code.
    pub fn wait(&mut self, bound: Duration) -> Option<i32> {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > bound {
                let _ = self.child.kill();
                panic!("rmm did not end within {bound:?}:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader ends when the last holder of the pty's slave side is
        // gone; a detached emulator of the local world holds none (its
        // stdio is /dev/null), so this ends with rmm.
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        status.code()
    }

    /// Ctrl-C: SIGINT to rmm's process group.
    pub fn ctrl_c(&self) {
        killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGINT).expect("SIGINT");
    }

    /// The foreground colour of the first cell on the screen showing `glyph`.
    pub fn colour_of(&self, glyph: &str) -> Option<vt100::Color> {
        let p = self.parser.lock().unwrap();
        let (rows, cols) = p.screen().size();
        for r in 0..rows {
            for c in 0..cols {
                if let Some(cell) = p.screen().cell(r, c) {
                    if cell.contents() == glyph {
                        return Some(cell.fgcolor());
                    }
                }
            }
        }
        None
    }

    pub fn raw(&self) -> String {
        String::from_utf8_lossy(&self.raw.lock().unwrap()).into_owned()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

const SPINNER: &[char] = &['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

fn marked_row<'a>(rows: &'a [String], actor: &str) -> &'a str {
    rows.iter()
        .find(|r| r.split_whitespace().nth(1) == Some(actor) && r.starts_with(['✓', '✗', '⠋', '⚠']))
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no end line of {actor}:\n{}", rows.join("\n")))
}

#[test]
fn a_completed_run_ends_every_line_with_a_green_check_and_fits_the_terminal() {
    let dir = TestDir::new();
    let cols = 64;
    let mut screen = Screen::spawn(&dir, &["up", "--masters", "1", "--workers", "1"], &[], cols);
    assert_eq!(screen.wait(Duration::from_secs(120)), Some(0), "{}", screen.text());
    let rows = screen.rows();
    for actor in ["rancher", "master01", "worker01", "coordinator"] {
        let row = marked_row(&rows, actor);
        assert!(row.starts_with('✓'), "{actor}: {row}");
    }
    assert_eq!(screen.colour_of("✓"), Some(vt100::Color::Idx(2)), "✓ is green");
    // Lines longer than the terminal are cut and end in `…`; none wraps
    // onto a row of its own.
    assert!(rows.iter().any(|r| r.ends_with('…')), "some line is cut at {cols} columns:\n{}", rows.join("\n"));
    // The view's rows are end lines only: none wraps onto a row of its own.
    let first = rows.iter().position(|r| r.starts_with('✓')).unwrap();
    let last = rows.iter().rposition(|r| r.starts_with('✓')).unwrap();
    for r in &rows[first..=last] {
        assert!(r.starts_with(['✓', '✗', '⚠']), "a wrapped line in the view: {r:?}\n{}", rows.join("\n"));
        assert!(r.chars().count() <= usize::from(cols));
    }
    assert!(!rows.iter().any(|r| r.contains(SPINNER)), "no spinner left:\n{}", rows.join("\n"));
}

#[test]
fn a_failed_run_marks_the_failed_line_red_and_prints_its_error_whole() {
    let dir = TestDir::new();
    let cols = 60;
    // worker01 cannot be created: every try fails, and the last one gives up.
    let env = [("RMM_LOCAL_FAIL_CREATE", "worker01:99")];
    let mut screen = Screen::spawn(&dir, &["up", "--masters", "1", "--workers", "1"], &env, cols);
    assert_eq!(screen.wait(Duration::from_secs(120)), Some(1), "{}", screen.text());
    let rows = screen.rows();
    let line = marked_row(&rows, "worker01");
    assert!(line.starts_with('✗'), "{line}");
    assert!(!line.contains("will retry"), "the last try does not say it will be retried: {line}");
    assert_eq!(screen.colour_of("✗"), Some(vt100::Color::Idx(1)), "✗ is red");
    assert!(marked_row(&rows, "coordinator").starts_with('✗'));
    // The error is on its own line, whole: the screen holds all of it
    // (it may wrap, never cut).
    let flat: String = rows.concat();
    assert!(
        flat.contains("injected failure") && flat.contains("(RMM_LOCAL_FAIL_CREATE)"),
        "the whole error is on the screen:\n{}",
        rows.join("\n")
    );
    // The log agrees: the last try is recorded as not retried.
    let events = dir.events();
    let last = events.iter().rev().find(|e| e["kind"] == "StepFailed" && e["actor"] == "worker01").unwrap();
    assert_eq!(last["data"]["retryable"], false);
}

#[test]
fn ctrl_c_leaves_no_spinner_and_records_the_stopped_step_as_interrupted() {
    let dir = TestDir::new();
    // Rancher boots slowly: the nodes' machines are made long before the
    // node command exists, so they wait for it, and so does rancher's
    // wait_ready step when Ctrl-C comes.
    let env = [("RMM_LOCAL_RANCHER_BOOT_MS", "8000")];
    let mut screen = Screen::spawn(&dir, &["up", "--masters", "1", "--workers", "1"], &env, 100);
    screen.wait_for("waiting: node command", Duration::from_secs(60));
    screen.wait_for("wait_ready (try 1)", Duration::from_secs(60));
    let rows = screen.rows();
    let master = rows.iter().find(|r| r.contains("master01")).unwrap();
    assert!(master.contains("waiting: node command"), "{master}");
    assert!(!master.contains("create_machine ok"), "the finished step is not shown as running: {master}");
    screen.ctrl_c();
    assert_eq!(screen.wait(Duration::from_secs(60)), Some(130), "{}", screen.text());
    let rows = screen.rows();
    assert!(!rows.iter().any(|r| r.contains(SPINNER)), "no spinner left after Ctrl-C:\n{}", rows.join("\n"));
    let rancher = marked_row(&rows, "rancher");
    assert!(rancher.starts_with('⚠') && rancher.contains("interrupted"), "{rancher}");
    assert_eq!(screen.colour_of("⚠"), Some(vt100::Color::Idx(3)), "⚠ is yellow");
    assert!(marked_row(&rows, "master01").starts_with('⚠'));
    assert!(marked_row(&rows, "coordinator").starts_with('⚠'));
    assert_eq!(rows.iter().filter(|r| r.contains("rmm: interrupted; letting steps")).count(), 1, "{}", rows.join("\n"));

    // Recorded as interrupted, never as a failed try.
    let events = dir.events();
    assert!(events.iter().any(|e| e["kind"] == "StepInterrupted" && e["actor"] == "rancher"), "{events:#?}");
    assert!(!events.iter().any(|e| e["kind"] == "StepFailed"), "no failed try: {events:#?}");
    let log = crate::support::text(&dir.rmm(&["log"]).ok().stdout);
    assert!(log.contains("interrupted (try 1)"), "{log}");
    assert!(!log.contains("failed"), "{log}");
    let timeline = crate::support::text(&dir.rmm(&["log", "--timeline"]).env("COLUMNS", "120").ok().stdout);
    assert!(timeline.contains("interrupted"), "{timeline}");
    // `status` keeps its columns aligned with `interrupted` in them.
    let status = crate::support::text(&dir.rmm(&["status"]).ok().stdout);
    let lines: Vec<&str> = status.lines().collect();
    let header = lines.iter().find(|l| l.starts_with("NAME ")).expect("a header");
    let step_at = header.find("STEP").unwrap();
    let row = lines.iter().find(|l| l.starts_with("rancher ")).expect("rancher's row");
    assert!(row.contains("interrupted"), "{status}");
    assert_eq!(row.find("wait_"), Some(step_at), "the STEP column stays aligned:\n{status}");
    let html = dir.tmp.path().join("r.html");
    dir.rmm(&["report", "--html", html.to_str().unwrap()]).ok();
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("interrupted (not a failed try)"), "the HTML report shows the interrupted try");
    assert!(!page.contains("failed, retryable"));

    // The resume runs the step again and completes.
    dir.up_ok(&["--resume"]);
    assert_eq!(dir.status()["run"]["state"], "completed");
    let _ = screen.raw();
}

/// `s` without ANSI escape sequences (CSI and the cursor keys indicatif uses).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[test]
fn an_rke1_master_waiting_for_its_turn_says_whom_it_waits_for() {
    let dir = TestDir::on(crate::support::Kind::Rke1);
    // Masters join one at a time on rke1: master02 waits until master01
    // is listed, which takes a while here.
    let env = [("RMM_LOCAL_NODE_READY_MS", "2500")];
    let mut screen = Screen::spawn(&dir, &["up", "--masters", "3", "--workers", "1"], &env, 100);
    screen.wait_for("waiting: master01 to register", Duration::from_secs(90));
    let rows = screen.rows();
    let master02 = rows.iter().find(|r| r.contains("master02")).unwrap();
    assert!(master02.contains("waiting: master01 to register"), "{master02}");
    let worker = rows.iter().find(|r| r.contains("worker01")).unwrap();
    assert!(worker.contains("waiting: master01 to register"), "a worker waits for the masters: {worker}");
    // The coordinator counts the joins it granted (master01's so far).
    let coordinator = rows.iter().find(|r| r.contains("coordinator")).unwrap();
    assert!(coordinator.contains("joins granted: 1 of 4 nodes (last: master01)"), "{coordinator}");
    assert_eq!(screen.wait(Duration::from_secs(120)), Some(0), "{}", screen.text());
    assert!(marked_row(&screen.rows(), "master03").starts_with('✓'));
}

#[test]
fn a_second_ctrl_c_aborts_and_leaves_no_spinner_behind() {
    let dir = TestDir::new();
    // Machine creations take long and are let finish after the first
    // Ctrl-C: the second one aborts at once.
    let env = [("RMM_LOCAL_CREATE_MS", "30000")];
    let mut screen = Screen::spawn(&dir, &["up", "--masters", "1", "--workers", "1"], &env, 100);
    screen.wait_for("create_machine (try 1)", Duration::from_secs(60));
    screen.ctrl_c();
    screen.wait_for("rmm: interrupted; letting steps in flight finish", Duration::from_secs(30));
    screen.ctrl_c();
    assert_eq!(screen.wait(Duration::from_secs(20)), Some(130), "{}", screen.text());
    let rows = screen.rows();
    assert!(!rows.iter().any(|r| r.contains(SPINNER)), "no spinner left after the abort:\n{}", rows.join("\n"));
    assert!(rows.iter().any(|r| r.contains("rmm: aborted; `rmm up --resume` continues")), "{}", rows.join("\n"));
}
