//! `rmm list` (issue 11): every cluster this user brought up, from the
//! registry under `$XDG_STATE_HOME/rmm` that `up` and `down` keep. Each
//! test has its own `XDG_STATE_HOME` (never the user's).

use serde_json::Value;

use crate::support::*;

fn list(dir: &TestDir, xdg: &std::path::Path) -> Vec<Value> {
    let out = dir.rmm(&["list", "--json"]).env("XDG_STATE_HOME", xdg.to_str().unwrap()).ok();
    json(&out.stdout).as_array().cloned().expect("a JSON array")
}

fn entry<'a>(all: &'a [Value], dir: &TestDir) -> &'a Value {
    let state = dir.state().display().to_string();
    all.iter().find(|e| e["dir"] == state.as_str()).unwrap_or_else(|| panic!("{state} in {all:?}"))
}

#[test]
fn list_shows_every_cluster_brought_up_in_any_dir_and_a_state_dir_deleted_by_hand() {
    let (a, b) = (TestDir::new(), TestDir::new());
    let xdg = a.xdg();
    // Two `up`s at once, in two dirs, one registry.
    std::thread::scope(|s| {
        s.spawn(|| a.rmm(&["up", "--masters", "1", "--workers", "1"]).ok());
        s.spawn(|| b.rmm(&["up", "--masters", "1", "--workers", "1", "--cluster-name", "other"]).env("XDG_STATE_HOME", xdg.to_str().unwrap()).ok());
    });
    let all = list(&a, &xdg);
    assert_eq!(all.len(), 2, "{all:?}");
    for (dir, name) in [(&a, "tinysetup"), (&b, "other")] {
        let e = entry(&all, dir);
        assert_eq!(e["name"], name, "{e}");
        assert_eq!(e["driver"], "local", "{e}");
        assert_eq!(e["state"], "completed", "{e}");
        assert_eq!(e["url"], dir.credentials()["url"], "{e}");
        let keys: Vec<&String> = e.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["dir", "driver", "name", "state", "url"], "{e}");
    }
    // `down` updates it.
    b.rmm(&["down"]).env("XDG_STATE_HOME", xdg.to_str().unwrap()).ok();
    assert_eq!(entry(&list(&a, &xdg), &b)["state"], "down");
    // A dir deleted after its `down` lost nothing: still `down`, not missing.
    let b_moved = b.tmp.path().join("moved");
    std::fs::rename(b.state(), &b_moved).unwrap();
    assert_eq!(entry(&list(&a, &xdg), &b)["state"], "down");
    std::fs::rename(&b_moved, b.state()).unwrap();
    // A state dir gone (moved away here, so the test can still clean up).
    let moved = a.tmp.path().join("moved");
    std::fs::rename(a.state(), &moved).unwrap();
    let all = list(&a, &xdg);
    assert_eq!(entry(&all, &a)["state"], "state dir missing", "{all:?}");
    let text_out = text(&a.rmm(&["list"]).ok().stdout);
    let header = text_out.lines().next().unwrap();
    assert!(header.starts_with("DIR") && header.contains("NAME") && header.contains("DRIVER") && header.contains("STATE") && header.contains("URL"), "{text_out}");
    assert!(text_out.lines().any(|l| l.starts_with(&a.state().display().to_string()) && l.contains("state dir missing")), "{text_out}");
    // `status` there says more than "no run yet": the registry knows a cluster.
    let status = text(&a.rmm(&["status"]).env("XDG_STATE_HOME", xdg.to_str().unwrap()).ok().stdout);
    assert!(status.contains("the cluster registry (`rmm list`) has cluster tinysetup") && status.contains("may still exist"), "{status}");
    assert_eq!(json(&a.rmm(&["status", "--json"]).env("XDG_STATE_HOME", xdg.to_str().unwrap()).ok().stdout)["registry"]["name"], "tinysetup");
    // A new `up` there would make a second cluster and forget the first
    // one's machines: refused (exit 3), one line naming `rmm down --cluster`,
    // nothing made.
    let refused = a.rmm(&["up", "--masters", "1", "--workers", "1"]).code(3);
    let line = single_stderr_line(&refused);
    assert!(line.contains("cluster tinysetup") && line.contains("its machines may still exist") && line.contains("`rmm down --cluster tinysetup`"), "{line}");
    assert!(!a.state().exists(), "the refused up made the state dir");
    // `down --cluster` finds none of its machines (the local world went
    // with its dir): nothing is left to track, and `up` may start anew.
    let down = a.rmm(&["down", "--cluster", "tinysetup", "--yes"]).ok();
    assert!(text(&down.stdout).contains("Nothing to remove"), "{}", text(&down.stdout));
    assert_eq!(entry(&list(&a, &xdg), &a)["state"], "down");
    assert!(!a.state().exists());
    std::fs::rename(&moved, a.state()).unwrap();
    a.rmm(&["down"]).ok();
}

#[test]
fn list_without_any_cluster_says_so_and_succeeds() {
    let dir = TestDir::new();
    let out = dir.rmm(&["list"]).ok();
    assert_eq!(text(&out.stdout), "");
    assert!(text(&out.stderr).starts_with("rmm: no clusters recorded in "), "{}", text(&out.stderr));
    assert_eq!(list(&dir, &dir.xdg()), Vec::<Value>::new());
}
