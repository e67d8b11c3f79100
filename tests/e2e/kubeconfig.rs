//! `rmm kubeconfig`: the cluster's kubeconfig from Rancher, to a 0600 file
//! or stdout, never recorded.

use std::os::unix::fs::PermissionsExt;

use crate::support::TestDir;

fn kubeconfig_of_a_run(config: &str) {
    let t = TestDir::new();
    std::fs::write(t.tmp.path().join("rmm.toml"), config).unwrap();
    // Before any run: refused, nothing to ask.
    let early = t.rmm(&["kubeconfig"]).run();
    assert_eq!(early.status.code(), Some(3), "{}", String::from_utf8_lossy(&early.stderr));
    let up = t.up_ok(&["--masters", "1", "--workers", "1"]);
    assert!(String::from_utf8_lossy(&up.stdout).contains("rmm kubeconfig"), "up says how to get it");
    let status = t.status();
    let url = status["rancher"]["url"].as_str().expect("a Rancher URL").to_string();
    let cluster = status["rancher"]["cluster_id"].as_str().expect("a cluster id").to_string();

    t.rmm(&["kubeconfig", "-o", "kc.yaml"]).ok();
    let path = t.tmp.path().join("kc.yaml");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the kubeconfig holds a token: owner-only");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&format!("server: \"{url}/k8s/clusters/{cluster}\"")), "names the cluster's server URL:\n{text}");
    let token = text.lines().find_map(|l| l.trim().strip_prefix("token: \"")).expect("a user token").trim_end_matches('"').to_string();
    assert!(token.len() > 20, "{token}");

    // Stdout gives the same kind of file; neither token is in the log.
    let printed = String::from_utf8(t.rmm(&["kubeconfig"]).ok().stdout).unwrap();
    assert!(printed.starts_with("apiVersion: v1") && printed.contains("/k8s/clusters/"), "{printed}");
    let log = String::from_utf8(t.rmm(&["log", "--json", "--all-runs"]).ok().stdout).unwrap();
    let printed_token = printed.lines().find_map(|l| l.trim().strip_prefix("token: \"")).unwrap().trim_end_matches('"');
    assert!(!log.contains(&token) && !log.contains(printed_token), "a kubeconfig token reached the log");
}

#[test]
fn rmm_kubeconfig_of_an_rke2_cluster_names_its_server_is_0600_and_stays_out_of_the_log() {
    kubeconfig_of_a_run("distribution = \"rke2\"\nrancher_image = \"rancher/rancher:v2.15.1\"\n");
}

#[test]
fn rmm_kubeconfig_of_an_rke1_cluster_too() {
    kubeconfig_of_a_run("distribution = \"rke1\"\nrancher_image = \"rancher/rancher:v2.11.3\"\n");
}
