//! Issue 11, "Errors" and "Help": what the CLI says when there is nothing
//! to show, when a flag is wrong, and what its help holds — through the
//! real binary.

use crate::support::{single_stderr_line, text, TestDir};

#[test]
fn a_usage_error_starts_with_rmm_keeps_clap_s_tip_and_exits_2() {
    let dir = TestDir::new();
    let out = dir.rmm(&["up", "--wrokers", "2"]).code(2);
    let stderr = text(&out.stderr);
    let first = stderr.lines().next().unwrap();
    assert!(first.starts_with("rmm: unexpected argument '--wrokers'"), "{stderr}");
    assert!(stderr.contains("tip:") && stderr.contains("--workers"), "clap's tip stays: {stderr}");
    // A bare `rmm`: the help, under a first line that says what is wrong.
    let out = dir.rmm(&[]).code(2);
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("rmm: no command given"), "{stderr}");
    assert!(stderr.contains("Commands:") && out.stdout.is_empty(), "{stderr}");
    assert!(!stderr.contains("emulator") && !stderr.contains("tamper"), "hidden commands stay hidden: {stderr}");
    let out = dir.rmm(&["lgo"]).code(2);
    assert!(text(&out.stderr).starts_with("rmm: unrecognized subcommand 'lgo'"), "{}", text(&out.stderr));
    assert!(!dir.state().exists());
}

#[test]
fn an_unknown_key_in_rmm_toml_names_its_own_line() {
    let dir = TestDir::new();
    std::fs::write(dir.tmp.path().join("rmm.toml"), "masters = 3\nworkers = 2\nwrokers = 5\n").unwrap();
    let line = single_stderr_line(&dir.rmm(&["up"]).code(2));
    assert!(line.contains("rmm.toml (line 3): unknown field `wrokers`"), "{line}");
    std::fs::write(dir.tmp.path().join("rmm.toml"), "bogus = 1\n").unwrap();
    let line = single_stderr_line(&dir.rmm(&["up"]).code(2));
    assert!(line.contains("(line 1)"), "{line}");
    assert!(!dir.state().exists());
}

#[test]
fn an_empty_state_dir_says_there_is_no_run_there() {
    let dir = TestDir::new();
    // `up --resume` where there is nothing: refused, and nothing created.
    let line = single_stderr_line(&dir.rmm(&["up", "--resume"]).code(3));
    assert!(line.contains("nothing to resume") && line.contains(&dir.state().display().to_string()), "{line}");
    assert!(!dir.state().exists(), "up --resume created nothing");
    // An empty state dir, and then an empty store in it.
    std::fs::create_dir(dir.state()).unwrap();
    let shown = dir.state().display().to_string();
    for cmd in [&["log"][..], &["replay"], &["credentials"], &["report", "--html", "r.html"]] {
        let line = single_stderr_line(&dir.rmm(cmd).code(3));
        assert_eq!(line, format!("rmm: no run in {shown} yet (start one with `rmm up`)"), "{cmd:?}");
    }
    dir.rmm(&["synth", "--events", "0"]).ok();
    assert!(dir.state().join("events").exists());
    for cmd in [
        &["log"][..],
        &["log", "--timeline"],
        &["log", "show", "3"],
        &["replay"],
        &["replay", "--to", "5"],
        &["credentials"],
        &["kubeconfig"],
        &["report", "--html", "r.html"],
    ] {
        let line = single_stderr_line(&dir.rmm(cmd).code(3));
        assert_eq!(line, format!("rmm: no run in {shown} yet (start one with `rmm up`)"), "{cmd:?}");
    }
    assert!(!dir.tmp.path().join("r.html").exists(), "no report of an empty log");
    let status = text(&dir.rmm(&["status"]).ok().stdout);
    assert_eq!(status, format!("no run in {shown} yet (start one with `rmm up`)\n"));
}

#[test]
fn status_names_its_dir_and_filters_that_match_nothing_say_so() {
    let dir = TestDir::new();
    dir.up_ok(&["--masters", "1", "--workers", "1"]);
    let shown = dir.state().display().to_string();
    let status = text(&dir.rmm(&["status"]).ok().stdout);
    assert!(status.contains(&format!("state dir: {shown}")), "{status}");
    assert_eq!(dir.status()["state_dir"], shown.as_str());

    let out = dir.rmm(&["log", "--actor", "master09"]).ok();
    assert!(out.stdout.is_empty());
    let line = single_stderr_line(&out);
    assert!(line.starts_with("rmm: no event matches the filter (the log holds "), "{line}");
    // --follow on a run that has ended: the same line, once it is over.
    let out = dir.rmm(&["log", "--follow", "--actor", "master09"]).ok();
    assert!(out.stdout.is_empty());
    assert!(single_stderr_line(&out).starts_with("rmm: no event matches the filter (the log holds "));
    let out = dir.rmm(&["log", "--timeline", "--kind", "RunFailed"]).ok();
    assert!(single_stderr_line(&out).starts_with("rmm: no event matches the filter"));
    // A filter that matches prints and says nothing more.
    let out = dir.rmm(&["log", "--actor", "master01"]).ok();
    assert!(!out.stdout.is_empty() && out.stderr.is_empty());

    // replay --to outside the log: one line, non-zero.
    let line = single_stderr_line(&dir.rmm(&["replay", "--to", "100000"]).code(2));
    assert!(line.starts_with("rmm: --to 100000 is outside the log: it holds seq 1 to "), "{line}");
}

#[test]
fn credentials_after_down_say_the_server_is_gone() {
    let dir = TestDir::new();
    dir.up_ok(&["--masters", "1", "--workers", "1"]);
    assert!(dir.credentials()["password"].is_string());
    dir.rmm(&["down"]).ok();
    let line = single_stderr_line(&dir.rmm(&["credentials"]).code(3));
    assert!(line.contains("Rancher server") && line.contains("is gone") && line.contains("`rmm down`"), "{line}");
    // The kubeconfig too: one line that says why, not a refused connection.
    let line = single_stderr_line(&dir.rmm(&["kubeconfig"]).code(3));
    assert!(line.contains("cluster of run") && line.contains("is gone") && line.contains("`rmm down`"), "{line}");
}

#[test]
fn help_groups_global_options_shows_defaults_and_values_and_hides_the_emulator() {
    let dir = TestDir::new();
    let help = text(&dir.rmm(&["--help"]).ok().stdout);
    let commands = &help[help.find("Commands:").unwrap()..help.find("Options:").unwrap()];
    assert!(!commands.contains("emulator"), "{commands}");
    assert!(commands.contains("completion") && commands.contains("environment"));
    let global = &help[help.find("Global options:").expect("a heading of its own")..];
    assert!(global.contains("--state-dir") && global.contains("--config") && global.contains("--verbose"));
    assert!(global.contains("[default: .rmm]") && global.contains("[default: rmm.toml]"));

    let up = text(&dir.rmm(&["up", "--help"]).ok().stdout);
    assert!(up.contains("[possible values: local, docker, docker-machine, ssh]"), "{up}");
    assert!(up.contains("[possible values: rke2, k3s, rke1]"), "{up}");
    // Every option that takes a value names its default.
    let entries = option_entries(&up);
    for e in entries.iter().filter(|e| e.contains(" <")) {
        assert!(e.contains("[default: "), "no default shown: {e}");
    }
    assert!(entries.len() >= 10);

    // Every option that takes a value, in every command, names its default.
    for cmd in [&["status"][..], &["plan"], &["list"], &["log"], &["log", "show"], &["report"], &["replay"], &["down"], &["kubeconfig"], &["credentials"]] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let h = text(&dir.rmm(&args).ok().stdout);
        let entries = option_entries(&h);
        for e in entries.iter().filter(|e| e.contains(" <")) {
            assert!(e.contains("[default: ") || e.contains("[required]"), "rmm {cmd:?}: no default shown: {e}");
        }
    }

    // Examples for every command.
    for cmd in ["up", "plan", "list", "status", "log", "report", "replay", "down", "credentials", "kubeconfig", "completion"] {
        let h = text(&dir.rmm(&[cmd, "--help"]).ok().stdout);
        assert!(h.contains("Examples:\n  rmm "), "{cmd} has examples");
    }
}

#[test]
fn help_environment_lists_every_rmm_variable_the_code_reads() {
    let dir = TestDir::new();
    let listed = text(&dir.rmm(&["help", "environment"]).ok().stdout);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut names = std::collections::BTreeSet::new();
    let mut stack = vec![root.join("src"), root.join("actors/src"), root.join("events/src")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let src = std::fs::read_to_string(&p).unwrap();
                let mut rest = src.as_str();
                while let Some(i) = rest.find("RMM_") {
                    let name: String = rest[i..].chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect();
                    rest = &rest[i + name.len()..];
                    names.insert(name);
                }
            }
        }
    }
    names.remove("RMM_");
    assert!(names.len() >= 25, "{names:?}");
    for name in &names {
        let shown = if name.ends_with('_') { format!("{name}*") } else { name.clone() };
        assert!(listed.contains(&shown), "`rmm help environment` does not list {shown}:\n{listed}");
    }
}

#[test]
fn completion_scripts_for_bash_zsh_and_fish_name_the_commands() {
    let dir = TestDir::new();
    for (shell, marker) in [("bash", "complete -F _rmm"), ("zsh", "#compdef rmm"), ("fish", "complete -c rmm")] {
        let script = text(&dir.rmm(&["completion", shell]).ok().stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("kubeconfig") && script.contains("--resume"), "{shell}");
    }
    let out = dir.rmm(&["completion", "powershell"]).code(2);
    assert!(text(&out.stderr).starts_with("rmm: invalid value 'powershell'"));
}

#[test]
fn log_lines_fit_the_terminal_and_the_timeline_uses_its_real_width() {
    use crate::live_view::Screen;
    let dir = TestDir::new();
    dir.up_ok(&["--masters", "1", "--workers", "1"]);
    // `rmm log` on an 80-column terminal: one header line with the day,
    // then lines that fit, the long ones cut with `…`.
    let mut screen = Screen::spawn(&dir, &["log"], &[], 80);
    assert_eq!(screen.wait(std::time::Duration::from_secs(30)), Some(0));
    let raw = screen.raw();
    let lines: Vec<&str> = raw.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert!(lines[0].starts_with("── run ") && lines[0].contains("(times UTC)"), "{raw}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("── run ")).count(), 1, "one header line: {raw}");
    for l in &lines {
        assert!(l.chars().count() <= 80, "fits 80 columns: {l:?}");
    }
    assert!(lines.iter().any(|l| l.ends_with('…')), "{raw}");
    // Not on a terminal: whole lines.
    let piped = text(&dir.rmm(&["log"]).ok().stdout);
    assert!(piped.lines().any(|l| l.chars().count() > 80) && !piped.contains('…'));

    // --timeline with COLUMNS unset: the terminal's width, not 80.
    let mut screen = Screen::spawn(&dir, &["log", "--timeline"], &[], 140);
    assert_eq!(screen.wait(std::time::Duration::from_secs(30)), Some(0));
    let raw = crate::support::text(crate::live_view::strip_ansi(&screen.raw()).as_bytes());
    let widest = raw.split("\r\n").map(|l| l.chars().count()).max().unwrap();
    assert!(widest > 80 && widest <= 140, "drawn for 140 columns, widest line {widest}:\n{raw}");
}

#[test]
fn a_timeline_of_one_actor_of_a_completed_run_shows_the_run_s_end() {
    let dir = TestDir::new();
    dir.up_ok(&["--masters", "1", "--workers", "1"]);
    let out = text(&dir.rmm(&["log", "--timeline", "--actor", "master01"]).env("COLUMNS", "120").ok().stdout);
    assert!(!out.contains("no end recorded"), "{out}");
    assert!(out.contains("completed"), "{out}");
    assert!(out.contains("master01"));
    assert!(!out.contains("worker01"), "only the chosen actor's bars: {out}");
}

/// The entries of a help text's `Options:` section (up to `Global
/// options:`), one string each, continuation lines joined.
fn option_entries(help: &str) -> Vec<String> {
    let options = &help[help.find("Options:").unwrap()..help.find("Global options:").unwrap()];
    let mut entries: Vec<String> = Vec::new();
    for l in options.lines().skip(1) {
        if l.trim_start().starts_with('-') {
            entries.push(l.to_string());
        } else if let Some(last) = entries.last_mut() {
            last.push_str(l);
        }
    }
    entries
}
