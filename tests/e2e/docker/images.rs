//! The Docker driver's test images, built locally (no image can be pulled
//! here): root file systems of files copied from this machine (its Debian
//! packages' binaries and their shared libraries, and the rmm binary),
//! imported `FROM scratch` with `docker import`, in about a second.
//!
//! * **Rancher**: the entrypoint runs `rmm emulator serve` on 443 at every
//!   address of the container (`--listen 0.0.0.0:443` puts each into the
//!   certificate), as `--rancher-version`; the bootstrap password comes
//!   from `CATTLE_BOOTSTRAP_PASSWORD`, as Rancher's. It has `sh`, which the
//!   driver's entrypoint wrapper uses to read the password from a file, and
//!   a `kubectl` ([`RANCHER_KUBECTL`]) that gives the server's CA as the
//!   real image's does, which the driver reads it with.
//! * **Node**: `sh`, `curl`, `sha256sum` and the few coreutils the served
//!   installer uses. Its command ([`NODE_INIT`]) keeps the container up and
//!   plays systemd's part for the one unit that matters: once the
//!   installer has written `rancher-system-agent.service` (enabled, as the
//!   real installer leaves it: reference/rancher-current.md §2.7), it runs
//!   the unit's `ExecStart` and starts it again when it dies — also after
//!   the container was stopped and started again, as systemd starts an
//!   enabled unit at boot on `rancher/systemd-node`. The node command downloads the
//!   emulator's install script, which downloads the agent binary (rmm) from
//!   `<server>/assets/` and registers through `/v3/connect/agent`.
//!
//! Each build gets unique tags; [`TestImages`] removes them on drop.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Tools the node image carries (all from Debian packages: dash, curl,
/// coreutils).
const NODE_TOOLS: &[&str] =
    &["/bin/sh", "/usr/bin/curl", "/usr/bin/sha256sum", "/usr/bin/tail", "/usr/bin/mkdir", "/usr/bin/chmod", "/usr/bin/mv", "/usr/bin/cat", "/usr/bin/sleep", "/usr/bin/rm", "/usr/bin/ls"];

/// The node image's init (see the module doc): a shell loop, with `kill -0`
/// to see whether the service still runs (dash reaps it in `wait`).
const NODE_INIT: &str = r#"trap 'exit 0' TERM
unit=/etc/systemd/system/rancher-system-agent.service
pid=
while :; do
  if [ -f "$unit" ] && { [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; }; then
    cmd=
    while IFS= read -r l; do
      case "$l" in
        Environment=*) export "${l#Environment=}" ;;
        ExecStart=*) cmd="${l#ExecStart=}" ;;
      esac
    done < "$unit"
    $cmd >>/tmp/rancher-system-agent.log 2>&1 &
    pid=$!
  fi
  /usr/bin/sleep 1 & wait $!
done
"#;

/// The Rancher image's `kubectl`: answers the one query rmm's docker
/// driver makes inside the server container (`SERVER_CA_COMMAND`: the CA
/// in the secret `cattle-system/tls-rancher`, base64, as the embedded k3s
/// of Rancher's Docker install answers it) from the emulator's CA file;
/// NotFound until the emulator has made it, as before Rancher made it.
const RANCHER_KUBECTL: &str = r#"#!/bin/sh
ca=/var/lib/rancher/emulator/ca.crt
if [ "$*" = "-n cattle-system get secret tls-rancher -o jsonpath={.data.tls\.crt}" ]; then
  if [ -s "$ca" ]; then exec /usr/bin/base64 -w0 "$ca"; fi
  echo 'Error from server (NotFound): secrets "tls-rancher" not found' >&2
  exit 1
fi
echo "error: the test image's kubectl answers only the tls-rancher query, not: $*" >&2
exit 1
"#;

/// The images of one test; removed (with `docker rmi -f`) on drop.
pub struct TestImages {
    pub rancher: String,
    pub node: String,
}

impl Drop for TestImages {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.rancher, &self.node]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// The shared libraries `bin` loads (`ldd`), with the loader.
fn libraries(bin: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(bin).output().expect("ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Copies `src` to `root/<dst>` (following links: the file itself).
fn put(root: &Path, src: &Path, dst: &Path) {
    let to = root.join(dst.strip_prefix("/").unwrap_or(dst));
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(src, &to).unwrap_or_else(|e| panic!("copy {} → {}: {e}", src.display(), to.display()));
}

/// A root file system with `bins` (at their paths) and every library they
/// load, at their paths and under `/lib64` and `/lib/x86_64-linux-gnu`
/// (the loader's path is compiled into each binary).
fn rootfs(root: &Path, bins: &[(PathBuf, PathBuf)]) {
    let mut libs = BTreeSet::new();
    for (src, dst) in bins {
        put(root, src, dst);
        libs.extend(libraries(src));
    }
    for lib in libs {
        put(root, &lib, &lib);
    }
    for d in ["tmp", "etc", "var/lib/rancher", "run", "usr/local/bin", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
}

/// `tar -C root -c . | docker import --change … - tag`.
fn import(root: &Path, tag: &str, changes: &[String]) {
    let mut tar = Command::new("tar").args(["-C"]).arg(root).args(["-c", "."]).stdout(Stdio::piped()).spawn().expect("tar");
    let mut import = Command::new("docker");
    import.arg("import");
    for c in changes {
        import.arg("--change").arg(c);
    }
    let out = import.args(["-", tag]).stdin(tar.stdout.take().unwrap()).output().expect("docker import");
    assert!(tar.wait().unwrap().success(), "tar failed");
    assert!(out.status.success(), "docker import {tag}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The rmm binary without its debug information (30 MB instead of 170:
/// every node downloads it), or as it is when `strip` is missing.
fn rmm_binary(work: &Path) -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_rmm"));
    let stripped = work.join("rmm");
    match Command::new("strip").arg("-o").arg(&stripped).arg(&exe).status() {
        Ok(s) if s.success() => stripped,
        _ => exe,
    }
}

/// Builds both images under unique tags, for `rancher_version` (`2.15`).
pub fn build(rancher_version: &str) -> TestImages {
    let work = tempfile::Builder::new().prefix("rmm-images-").tempdir().expect("temp dir");
    let rmm = rmm_binary(work.path());
    let unique = format!("{}-{}", std::process::id(), super::unique());
    let images = TestImages { rancher: format!("rmm-test-rancher:{unique}"), node: format!("rmm-test-node:{unique}") };

    let root = work.path().join("rancher");
    rootfs(&root, &[(rmm.clone(), "/usr/bin/rancher".into()), ("/bin/sh".into(), "/bin/sh".into()), ("/usr/bin/base64".into(), "/usr/bin/base64".into())]);
    {
        use std::os::unix::fs::PermissionsExt;
        let kubectl = root.join("usr/bin/kubectl");
        std::fs::write(&kubectl, RANCHER_KUBECTL).unwrap();
        std::fs::set_permissions(&kubectl, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let entry = serde_json::to_string(&[
        "/usr/bin/rancher", "emulator", "serve", "--data-dir", "/var/lib/rancher/emulator", "--listen", "0.0.0.0:443", "--rancher-version", rancher_version,
    ])
    .unwrap();
    import(&root, &images.rancher, &[format!("ENTRYPOINT {entry}"), "ENV HOME=/root".into(), "EXPOSE 443".into()]);

    let root = work.path().join("node");
    let tools: Vec<(PathBuf, PathBuf)> = NODE_TOOLS.iter().map(|t| (PathBuf::from(t), PathBuf::from(t))).collect();
    rootfs(&root, &tools);
    // The agent binary the installer downloads needs rmm's libraries too.
    for lib in libraries(&rmm) {
        put(&root, &lib, &lib);
    }
    std::os::unix::fs::symlink("/usr/bin/sleep", root.join("bin/sleep")).ok();
    std::fs::create_dir_all(root.join("sbin")).unwrap();
    std::fs::write(root.join("sbin/rmm-init"), NODE_INIT).unwrap();
    import(
        &root,
        &images.node,
        &[
            r#"CMD ["/bin/sh", "/sbin/rmm-init"]"#.into(),
            "ENV PATH=/usr/local/bin:/usr/bin:/bin HOME=/root".into(),
            // as rancher/systemd-node (reference/rancher-current.md §6 item 2)
            r#"VOLUME ["/var/lib/kubelet", "/var/lib/rancher"]"#.into(),
        ],
    );
    images
}
