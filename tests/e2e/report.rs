//! `rmm report --html`: the page a real run produces, loaded in a real
//! headless browser (Debian's `chromium`; `.ci/run` installs it).
//!
//! How a broken page is caught:
//! * the page's script appends `<div id="rmm-rendered" data-lanes=N …>` as
//!   its very last act, so any script error (or a script that never ran)
//!   leaves the marker out of the dumped DOM; a `window.onerror` handler
//!   also writes the message into `#js-errors`, which must stay empty;
//! * chromium runs with `--enable-logging=stderr --v=0`, which prints every
//!   console message (uncaught exceptions, CSP violations, failed loads) as
//!   a `CONSOLE` line: there must be none;
//! * the page's Content-Security-Policy forbids every fetch, so a reference
//!   to anything outside the file would also show up as a console error.
//!
//! Every browser runs in its own process group with a profile under the
//! test's temp dir, under a timeout, and the whole group is killed when the
//! run ends — also when the test fails (a guard's `Drop`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{require_tool, text, TestDir};

const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

/// The headless browser (`RMM_CHROMIUM`, else `chromium` or
/// `chromium-browser` on the PATH), or `None` after printing `SKIPPED: …`
/// (a failure under `CI=true`): see `support::require_tool`.
fn chromium() -> Option<PathBuf> {
    require_tool(
        &["chromium", "chromium-browser"],
        "RMM_CHROMIUM",
        "the HTML report's browser test",
        "apt-get install -y --no-install-recommends chromium",
    )
}

/// Kills the browser when dropped: its whole process group, and the
/// processes that leave the group (chromium's crash handler starts its own
/// session), found by the browser's home dir on their command line.
struct Browser {
    pgid: i32,
    home: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.pgid), nix::sys::signal::Signal::SIGKILL);
        for pid in processes_mentioning(&self.home.to_string_lossy()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

struct BrowserRun {
    stdout: String,
    stderr: String,
}

/// Runs chromium headless on `url` with `args`, with a timeout; its profile
/// and output files live in `work`.
fn run_chromium(browser: &Path, work: &Path, name: &str, url: &str, args: &[&str]) -> BrowserRun {
    use std::os::unix::process::CommandExt;
    // Its own home: profile, config and crash database all under the test's dir.
    let home = work.join(format!("chromium-{name}"));
    std::fs::create_dir_all(&home).unwrap();
    let profile = home.join("profile");
    let out_path = work.join(format!("chromium-{name}.stdout"));
    let err_path = work.join(format!("chromium-{name}.stderr"));
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .env("HOME", &home)
    .env("XDG_CONFIG_HOME", home.join("config"))
    .env("XDG_CACHE_HOME", home.join("cache"))
    // A zone away from UTC: the report's local-time toggle must show it.
    .env("TZ", "Asia/Kolkata")
    .args(args)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(&out_path).unwrap())
    .stderr(std::fs::File::create(&err_path).unwrap())
    .process_group(0);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
    let guard = Browser { pgid: child.id() as i32, home: home.clone() };
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() > deadline {
            drop(guard);
            let _ = child.wait();
            panic!(
                "chromium did not finish within {BROWSER_TIMEOUT:?} on {url}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Helpers it may have left behind go with the group.
    drop(guard);
    let run = BrowserRun {
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    };
    assert!(status.success(), "chromium failed ({status}) on {url}; stderr:\n{}", run.stderr);
    // Every console message is a failure: the page logs nothing on its own.
    let console: Vec<&str> = run.stderr.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "the page wrote to the console (errors?):\n{}", console.join("\n"));
    run
}

fn attr<'a>(dom: &'a str, element_id: &str, name: &str) -> Option<&'a str> {
    let start = dom.find(&format!("id=\"{element_id}\""))?;
    let tag_start = dom[..start].rfind('<')?;
    let tag = &dom[tag_start..tag_start + dom[tag_start..].find('>')?];
    let key = format!("{name}=\"");
    let v = tag.find(&key)? + key.len();
    Some(&tag[v..v + tag[v..].find('"')?])
}

/// Live processes whose command line mentions `needle` (zombies have none).
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return found };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else { continue };
        if pid == std::process::id() as i32 {
            continue;
        }
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            found.push(pid);
        }
    }
    found
}

fn describe(pids: &[i32]) -> String {
    pids.iter()
        .map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            format!("{pid}: {}", String::from_utf8_lossy(&cmdline).replace('\0', " "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn report_html_loads_in_a_headless_browser_with_one_row_per_actor() {
    let Some(browser) = chromium() else { return };
    let dir = TestDir::new();
    dir.up_ok(&["--masters", "1", "--workers", "1"]);
    let html = dir.tmp.path().join("report.html");
    let out = dir.rmm(&["report", "--html", html.to_str().unwrap()]).ok();
    assert!(text(&out.stdout).starts_with("wrote "), "{}", text(&out.stdout));
    let page = std::fs::read_to_string(&html).expect("the report file");
    assert!(page.starts_with("<!doctype html>"));
    let events = dir.events();
    let url = format!("file://{}", html.display());

    // 1. It loads and its script runs to the end, with no errors.
    let run = run_chromium(&browser, dir.tmp.path(), "dom", &url, &["--dump-dom"]);
    let dom = run.stdout;
    assert!(dom.contains("id=\"rmm-rendered\""), "the page's script did not finish (a JS error?):\n{}\n{}", dom, run.stderr);
    assert!(dom.contains("<div id=\"js-errors\" hidden=\"\"></div>"), "script errors reported in the page:\n{dom}");

    // 2. One timeline row per actor.
    let actors = ["rancher", "master01", "worker01", "coordinator"];
    assert_eq!(dom.matches("<g class=\"row\"").count(), actors.len(), "rows in the SVG:\n{dom}");
    for a in actors {
        assert_eq!(dom.matches(&format!("<g class=\"row\" data-actor=\"{a}\"")).count(), 1, "{a}'s row");
    }
    assert_eq!(attr(&dom, "rmm-rendered", "data-lanes"), Some("4"), "rows the script saw");
    assert_eq!(attr(&dom, "rmm-rendered", "data-events"), Some(events.len().to_string().as_str()));
    assert_eq!(attr(&dom, "rmm-rendered", "data-shown"), Some(events.len().to_string().as_str()), "no filter: every event shown");
    // The critical path is drawn.
    assert!(dom.contains("class=\"bar crit\""), "critical bars");

    // 3. The filters work in the browser: from the address, like a shared link.
    let want = events.iter().filter(|e| e["actor"] == "worker01" && e["kind"] == "StepSucceeded").count();
    assert!(want >= 4, "worker01 did its steps");
    let filtered = run_chromium(&browser, dir.tmp.path(), "filter", &format!("{url}#actor=worker01&kind=StepSucceeded"), &["--dump-dom"]);
    assert_eq!(attr(&filtered.stdout, "rmm-rendered", "data-shown"), Some(want.to_string().as_str()));
    let visible = filtered.stdout.matches("data-actor=\"worker01\" data-kind=\"StepSucceeded\"><td").count();
    assert_eq!(visible, want, "rows left visible (not hidden) by the filter");

    // 4. A screenshot.
    let shot = dir.tmp.path().join("report.png");
    run_chromium(
        &browser,
        dir.tmp.path(),
        "shot",
        &url,
        &[&format!("--screenshot={}", shot.display()), "--window-size=1280,900", "--hide-scrollbars"],
    );
    let png = std::fs::read(&shot).expect("the screenshot exists");
    assert!(png.len() > 5_000, "a real picture, not an empty one: {} bytes", png.len());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    assert_eq!(&png[12..16], b"IHDR");
    let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((w, h), (1280, 900), "the window size asked for");

    // 5. No browser process is left behind (helpers included).
    let homes = dir.tmp.path().join("chromium-");
    let left = processes_mentioning(&homes.to_string_lossy());
    assert!(left.is_empty(), "browser processes left running:\n{}", describe(&left));
}

#[test]
fn report_refuses_an_unknown_run_and_needs_a_log() {
    let dir = TestDir::new();
    let out = dir.rmm(&["report", "--html", "r.html"]).code(3);
    assert!(text(&out.stderr).starts_with("rmm: "), "{}", text(&out.stderr));
    dir.up_ok(&["--masters", "1", "--workers", "1"]);
    let out = dir.rmm(&["report", "--html", "r.html", "--run", "ffffffff"]).code(2);
    assert!(text(&out.stderr).contains("no such run"), "{}", text(&out.stderr));
    assert!(!dir.tmp.path().join("r.html").exists());
    // `-` writes to stdout.
    let out = dir.rmm(&["report", "--html", "-"]).ok();
    assert!(text(&out.stdout).contains("</html>"));
}

/// Issue 11, "HTML report": a summary card on top (Rancher URL, cluster
/// id, distribution and version, each node's address, role and final
/// state), timestamps that do not wrap with a local-time toggle, no `run`
/// column in a single-run report, and a page usable 800 px wide (no
/// horizontal scrolling), checked in a real browser.
#[test]
fn report_has_a_summary_card_and_local_times_and_fits_800_pixels() {
    let Some(browser) = chromium() else { return };
    let dir = TestDir::new();
    dir.up_ok(&["--masters", "1", "--workers", "1"]);
    let status = dir.status();
    let html = dir.tmp.path().join("report.html");
    dir.rmm(&["report", "--html", html.to_str().unwrap()]).ok();
    let page = std::fs::read_to_string(&html).unwrap();
    let card = &page[page.find("<section class=\"card\" id=\"summary\">").expect("a summary card")..];
    let card = &card[..card.find("</section>").unwrap()];
    assert!(page.find("id=\"summary\"").unwrap() < page.find("<section class=\"run\"").unwrap(), "the card is on top");
    assert!(card.contains(status["rancher"]["url"].as_str().unwrap()), "{card}");
    assert!(card.contains(status["rancher"]["cluster_id"].as_str().unwrap()), "{card}");
    assert!(card.contains("<dt>distribution</dt><dd>rke2 v"), "distribution and version: {card}");
    for a in status["actors"].as_array().unwrap() {
        let row = format!(
            "<tr><td class=\"mono\">{}</td><td>{}</td><td class=\"mono\">{}</td><td class=\"state-done\">done</td></tr>",
            a["name"].as_str().unwrap(),
            a["role"].as_str().unwrap(),
            a["ip"].as_str().unwrap()
        );
        assert!(card.contains(&row), "{row} in {card}");
    }
    assert!(!page.contains("<th>run</th>") && !page.contains("id=\"f-run\""), "no run column in a single-run report");

    let url = format!("file://{}", html.display());
    let run = run_chromium(&browser, dir.tmp.path(), "w800", &url, &["--dump-dom", "--window-size=800,1000"]);
    let dom = run.stdout;
    assert!(dom.contains("id=\"rmm-rendered\""), "the script ran:\n{}", run.stderr);
    let num = |name: &str| attr(&dom, "rmm-rendered", name).unwrap().parse::<u32>().unwrap();
    assert!(num("data-client-width") <= 800, "an 800 px window");
    assert!(num("data-scroll-width") <= num("data-client-width"), "no horizontal scrolling at 800 px: {} > {}", num("data-scroll-width"), num("data-client-width"));
    assert_eq!(num("data-local-times"), 0, "UTC by default");
    let first = attr(&dom, "rmm-rendered", "data-first-time").unwrap().to_string();
    assert!(first.len() == 23 && !first.contains('+'), "{first}");

    let local = run_chromium(&browser, dir.tmp.path(), "local", &format!("{url}#tz=local"), &["--dump-dom"]);
    let shown = attr(&local.stdout, "rmm-rendered", "data-first-time").unwrap();
    assert!(shown.ends_with(" +05:30"), "local time in the viewer's zone: {shown}");
    assert!(attr(&local.stdout, "rmm-rendered", "data-local-times").unwrap().parse::<u32>().unwrap() > 10);
}
