//! `rmm.toml` and the flags that override it → a validated [`Plan`].
//!
//! Every key is optional; unknown keys are refused (a typo must not be
//! silently ignored). See the README for each key.

use std::path::Path;

use rmm_events::{Distribution, Plan, Retry, Timeouts};
use serde::Deserialize;

use crate::error::{Error, Result};


/// The file as written by the user.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub cluster_name: Option<String>,
    pub masters: Option<u32>,
    pub workers: Option<u32>,
    pub driver: Option<String>,
    pub parallel: Option<u32>,
    pub rancher_image: Option<String>,
    pub ca_checksum: Option<String>,
    pub allow_even_masters: Option<bool>,
    pub poll_ms: Option<u64>,
    /// `rke2`, `k3s` or `rke1`.
    pub distribution: Option<String>,
    /// `v1.35.1+rke2r1`; absent: the server's default for the distribution.
    pub kubernetes_version: Option<String>,
    /// An existing Rancher (`https://host[:port]`): no rancher machine.
    pub rancher_url: Option<String>,
    /// A file holding the existing Rancher's password (bootstrap or admin).
    pub rancher_password_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub timeouts: TimeoutsFile,
    #[serde(default)]
    pub retry: RetryFile,
    /// `[docker]`: the Docker driver's settings (`drivers::docker`).
    #[serde(default)]
    pub docker: crate::drivers::docker::DockerFile,
    /// `[docker_machine]`: the docker-machine driver's settings (`drivers::docker_machine`).
    #[serde(default)]
    pub docker_machine: crate::drivers::docker_machine::DockerMachineFile,
    /// `[ssh]` and `[[ssh.hosts]]`: the ssh driver's hosts (`drivers::ssh`).
    #[serde(default)]
    pub ssh: crate::drivers::ssh::SshFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    pub rancher_ready_s: Option<u64>,
    pub login_s: Option<u64>,
    pub node_command_s: Option<u64>,
    pub node_listed_s: Option<u64>,
    pub active_s: Option<u64>,
    pub machine_create_s: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryFile {
    pub max_tries: Option<u32>,
    pub backoff_ms: Option<u64>,
}

/// Flags of `rmm up` that override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub masters: Option<u32>,
    pub workers: Option<u32>,
    pub driver: Option<String>,
    pub cluster_name: Option<String>,
    pub parallel: Option<u32>,
    pub ca_checksum: Option<String>,
    pub allow_even_masters: bool,
    pub distribution: Option<String>,
    pub kubernetes_version: Option<String>,
    pub rancher_url: Option<String>,
    pub rancher_password_file: Option<std::path::PathBuf>,
}

pub const DRIVERS: &[&str] = &["local", "docker", "docker-machine", "ssh"];

impl ConfigFile {
    /// Reads `path`; a missing file is the defaults.
    pub fn load(path: &Path, required: bool) -> Result<ConfigFile> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(ConfigFile::default()),
            Err(e) => return Err(Error::Config(format!("cannot read {}: {e}", path.display()))),
        };
        toml::from_str(&text).map_err(|e| {
            let msg = e.message().replace('\n', " ");
            let at = e
                .span()
                .map(|s| format!(" (line {})", text[..s.start].matches('\n').count() + 1))
                .unwrap_or_default();
            Error::Config(format!("{}{at}: {msg}", path.display()))
        })
    }

    /// Merges flags over the file over the defaults, and validates.
    pub fn plan(self, flags: &Overrides) -> Result<Plan> {
        let base = Plan::default();
        let (d, r) = (&base.timeouts, &base.retry);
        let t = self.timeouts;
        let driver = flags.driver.clone().or(self.driver).unwrap_or(base.driver.clone());
        let distribution = match flags.distribution.clone().or(self.distribution) {
            None => base.distribution,
            Some(d) => Distribution::parse(&d).ok_or_else(|| {
                Error::Config(format!(
                    "unknown distribution {d:?} (known: {})",
                    Distribution::ALL.map(Distribution::as_str).join(", ")
                ))
            })?,
        };
        let kubernetes_version =
            flags.kubernetes_version.clone().or(self.kubernetes_version).map(|v| v.trim().to_string());
        let rancher_url = flags.rancher_url.clone().or(self.rancher_url).map(|u| u.trim().trim_end_matches('/').to_string());
        let plan = Plan {
            rancher_url,
            distribution,
            kubernetes_version,
            cluster_name: flags.cluster_name.clone().or(self.cluster_name).unwrap_or(base.cluster_name.clone()),
            masters: flags.masters.or(self.masters).unwrap_or(base.masters),
            workers: flags.workers.or(self.workers).unwrap_or(base.workers),
            parallel: flags.parallel.or(self.parallel).unwrap_or(base.parallel),
            rancher_image: self.rancher_image.unwrap_or(base.rancher_image.clone()),
            ca_checksum: flags.ca_checksum.clone().or(self.ca_checksum).map(|c| c.to_ascii_lowercase()),
            // The local world answers at once; a real Rancher is polled gently.
            poll_ms: self.poll_ms.unwrap_or(if driver == "local" { base.poll_ms } else { 2000 }),
            driver,
            timeouts: Timeouts {
                rancher_ready_s: t.rancher_ready_s.unwrap_or(d.rancher_ready_s),
                login_s: t.login_s.unwrap_or(d.login_s),
                node_command_s: t.node_command_s.unwrap_or(d.node_command_s),
                node_listed_s: t.node_listed_s.unwrap_or(d.node_listed_s),
                active_s: t.active_s.unwrap_or(d.active_s),
                machine_create_s: t.machine_create_s.unwrap_or(d.machine_create_s),
            },
            retry: Retry {
                max_tries: self.retry.max_tries.unwrap_or(r.max_tries),
                backoff_ms: self.retry.backoff_ms.unwrap_or(r.backoff_ms),
            },
        };
        validate(&plan, flags.allow_even_masters || self.allow_even_masters.unwrap_or(false))?;
        Ok(plan)
    }
}

fn validate(plan: &Plan, allow_even_masters: bool) -> Result<()> {
    let bad = |m: String| Err(Error::Config(m));
    if plan.masters == 0 {
        return bad("masters must be at least 1 (etcd needs a member)".into());
    }
    if plan.masters.is_multiple_of(2) && !allow_even_masters {
        return bad(format!(
            "masters = {} is even: etcd quorum needs an odd count (an even one tolerates no more failures than one fewer); use {} or {}, or pass --allow-even-masters",
            plan.masters,
            plan.masters - 1,
            plan.masters + 1
        ));
    }
    if plan.masters > 99 || plan.workers > 99 {
        return bad("at most 99 masters and 99 workers".into());
    }
    if plan.workers == 0 {
        return bad("workers must be at least 1 (Rancher activates a cluster only with a worker node)".into());
    }
    if plan.parallel == 0 {
        return bad("parallel must be at least 1".into());
    }
    if !DRIVERS.contains(&plan.driver.as_str()) {
        return bad(format!("unknown driver {:?} (known: {})", plan.driver, DRIVERS.join(", ")));
    }
    let name_ok = !plan.cluster_name.is_empty()
        && plan.cluster_name.len() <= 63
        && plan.cluster_name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !plan.cluster_name.starts_with('-')
        && !plan.cluster_name.ends_with('-');
    if !name_ok {
        return bad(format!(
            "cluster name {:?} is not valid: use 1-63 lower-case letters, digits and '-', not starting or ending with '-'",
            plan.cluster_name
        ));
    }
    if let Some(sum) = &plan.ca_checksum {
        if sum.len() != 64 || !sum.chars().all(|c| c.is_ascii_hexdigit()) {
            return bad("ca_checksum must be 64 hex digits (sha256 of the CA PEM plus a newline)".into());
        }
    }
    if plan.rancher_image.trim().is_empty() || plan.rancher_image.contains(char::is_whitespace) {
        return bad(format!("rancher_image {:?} is not an image reference", plan.rancher_image));
    }
    if let Some(v) = &plan.kubernetes_version {
        // The `+rke2…` / `+k3s…` suffix is what selects the distribution
        // (reference/rancher-current.md §2.4); shape as the webhook checks
        // it (§2.7: `v` + semver).
        let shape_ok = v.starts_with('v') && v[1..].split(['.', '+', '-']).take(3).all(|p| p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty());
        match plan.distribution.version_marker() {
            None => {
                return bad(format!(
                    "kubernetes_version is for rke2 and k3s; rke1 uses the server's own default (remove kubernetes_version {v:?})"
                ))
            }
            Some(marker) if !shape_ok || !v.contains(marker) => {
                return bad(format!(
                    "kubernetes_version {v:?} is not a {} version (like v1.35.1{}1)",
                    plan.distribution.as_str(),
                    if marker == "+rke2" { "+rke2r" } else { "+k3s" }
                ))
            }
            Some(_) => {}
        }
    }
    // rke1 on 2.12+ (or rke2/k3s before 2.6) is refused before anything
    // is made when the image's tag names its version; an image whose tag
    // does not (`latest`) is checked at `/rancherversion` once it runs.
    // With `--rancher-url` no image is started: that server's
    // `/rancherversion` decides.
    if let Some(why) = Some(&plan.rancher_image)
        .filter(|_| plan.rancher_url.is_none())
        .and_then(|image| rmm_actors::steps::v1::image_version(image))
        .and_then(|v| rmm_actors::steps::v1::line_refusal(plan.distribution, v))
    {
        return bad(why);
    }
    if let Some(url) = &plan.rancher_url {
        check_rancher_url(url)?;
        if !plan.distribution.is_v1() {
            return bad(format!(
                "--rancher-url provisions rke2 or k3s clusters (an existing Rancher is 2.12 or later, which has no RKE1): add --distribution rke2 (or k3s), not {}",
                plan.distribution.as_str()
            ));
        }
    }
    if plan.retry.max_tries == 0 {
        return bad("retry.max_tries must be at least 1".into());
    }
    if plan.poll_ms == 0 {
        return bad("poll_ms must be at least 1".into());
    }
    let t = &plan.timeouts;
    for (name, v) in [
        ("rancher_ready_s", t.rancher_ready_s),
        ("login_s", t.login_s),
        ("node_command_s", t.node_command_s),
        ("node_listed_s", t.node_listed_s),
        ("active_s", t.active_s),
        ("machine_create_s", t.machine_create_s),
    ] {
        if v == 0 {
            return bad(format!("timeouts.{name} must be at least 1 second"));
        }
    }
    Ok(())
}

/// `https://host[:port]`: a server root, no path, no query, and never a
/// user or password (a URL is on the command line and in the log).
fn check_rancher_url(url: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::Config(format!("rancher_url {url:?} {why}")));
    let Some(rest) = url.strip_prefix("https://") else {
        if url.contains('@') {
            return Err(Error::Config("rancher_url must start with https:// and must not hold a user or password".into()));
        }
        return bad("must start with https:// (Rancher serves its API over TLS)");
    };
    if rest.contains('@') {
        // Not echoed: what precedes the `@` may be a password.
        return Err(Error::Config(
            "rancher_url must not hold a user or password: give the password in RMM_RANCHER_PASSWORD or --rancher-password-file".into(),
        ));
    }
    if rest.is_empty() {
        return bad("has no host");
    }
    if rest.contains(['/', '?', '#']) || rest.contains(char::is_whitespace) {
        return bad("must be the server's root, https://host[:port], with no path");
    }
    // `host`, `host:port`, `[v6]`, `[v6]:port`
    let port = match rest.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((_, "")) => None,
            Some((_, p)) => Some(p.strip_prefix(':').unwrap_or(p)),
            None => return bad("has an unclosed [ in its host"),
        },
        None => rest.split_once(':').map(|(_, p)| p),
    };
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return bad("has a port that is not a number");
    }
    Ok(())
}

/// The password of an existing Rancher, from `RMM_RANCHER_PASSWORD` or a
/// file (`--rancher-password-file`, else `rancher_password_file` in
/// rmm.toml) — never from a flag's value, which `ps` and the log would
/// show. Both given is refused (which one wins would be a guess). `None`:
/// neither is given. A file's trailing newline is not part of it.
pub fn rancher_password(file: Option<&Path>) -> Result<Option<rmm_actors::ports::Secret>> {
    use rmm_actors::context::secret::PASSWORD_ENV;
    let env = std::env::var_os(PASSWORD_ENV);
    let value = match (file, env) {
        (Some(path), Some(_)) => {
            return Err(Error::Config(format!(
                "both {PASSWORD_ENV} and a password file ({}) are given: use one",
                path.display()
            )))
        }
        (Some(path), None) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Config(format!("cannot read the Rancher password file {}: {e}", path.display())))?;
            let text = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_string();
            if text.is_empty() {
                return Err(Error::Config(format!("the Rancher password file {} is empty", path.display())));
            }
            text
        }
        (None, Some(v)) => {
            let v = v.into_string().map_err(|_| Error::Config(format!("{PASSWORD_ENV} is not valid UTF-8")))?;
            if v.is_empty() {
                return Err(Error::Config(format!("{PASSWORD_ENV} is set but empty")));
            }
            v
        }
        (None, None) => return Ok(None),
    };
    Ok(Some(rmm_actors::ports::Secret::new(value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Plan> {
        toml::from_str::<ConfigFile>(text)
            .map_err(|e| Error::Config(e.to_string()))?
            .plan(&Overrides::default())
    }

    #[test]
    fn defaults_are_three_masters_three_workers_local_tinysetup() {
        let plan = parse("").unwrap();
        assert_eq!((plan.masters, plan.workers, plan.driver.as_str()), (3, 3, "local"));
        assert_eq!(plan.cluster_name, "tinysetup");
        assert_eq!(plan.parallel, 8);
    }

    #[test]
    fn flags_override_the_file() {
        let file: ConfigFile = toml::from_str("masters = 5\nworkers = 2").unwrap();
        let plan = file.plan(&Overrides { workers: Some(4), ..Default::default() }).unwrap();
        assert_eq!((plan.masters, plan.workers), (5, 4));
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<ConfigFile>("mastres = 3").is_err());
        assert!(toml::from_str::<ConfigFile>("[timeouts]\nping = 3").is_err());
    }

    #[test]
    fn zero_and_even_masters_are_refused_unless_allowed() {
        assert!(parse("masters = 0").is_err());
        let err = parse("masters = 2").unwrap_err().to_string();
        assert!(err.contains("--allow-even-masters"), "{err}");
        assert!(parse("masters = 2\nallow_even_masters = true").is_ok());
    }

    #[test]
    fn distribution_defaults_and_parses() {
        assert_eq!(parse("").unwrap().distribution, rmm_events::DEFAULT_DISTRIBUTION);
        assert_eq!(parse("distribution = \"k3s\"").unwrap().distribution, Distribution::K3s);
        let file: ConfigFile = toml::from_str("distribution = \"k3s\"").unwrap();
        let plan = file.plan(&Overrides { distribution: Some("rke2".into()), ..Default::default() }).unwrap();
        assert_eq!(plan.distribution, Distribution::Rke2, "the flag wins");
        let err = parse("distribution = \"rke3\"").unwrap_err().to_string();
        assert!(err.contains("unknown distribution \"rke3\"") && err.contains("rke2, k3s, rke1") && !err.contains('\n'), "{err}");
    }

    #[test]
    fn a_kubernetes_version_must_fit_the_distribution() {
        let plan = parse("distribution = \"rke2\"\nkubernetes_version = \"v1.35.1+rke2r1\"").unwrap();
        assert_eq!(plan.kubernetes_version.as_deref(), Some("v1.35.1+rke2r1"));
        assert!(parse("distribution = \"k3s\"\nkubernetes_version = \"v1.35.1+k3s1\"").is_ok());
        for (bad, why) in [
            ("distribution = \"k3s\"\nkubernetes_version = \"v1.35.1+rke2r1\"", "not a k3s version"),
            ("distribution = \"rke2\"\nkubernetes_version = \"1.35\"", "not a rke2 version"),
            ("distribution = \"rke1\"\nkubernetes_version = \"v1.35.1+rke2r1\"", "rke1 uses the server's own default"),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(why) && !err.contains('\n'), "{bad}: {err}");
        }
    }

    #[test]
    fn a_rancher_image_whose_tag_cannot_make_the_distribution_is_refused() {
        let err = parse("distribution = \"rke1\"\nrancher_image = \"rancher/rancher:v2.15.1\"").unwrap_err().to_string();
        assert!(err.contains("Rancher v2.15.1 cannot make an rke1 cluster") && err.contains("--distribution rke2") && !err.contains('\n'), "{err}");
        let err = parse("distribution = \"k3s\"\nrancher_image = \"reg:5000/rancher/rancher:v2.5.16\"").unwrap_err().to_string();
        assert!(err.contains("need Rancher 2.6 or later"), "{err}");
        assert!(parse("distribution = \"rke1\"\nrancher_image = \"rancher/rancher:v2.11.3\"").is_ok());
        assert!(parse("distribution = \"rke2\"\nrancher_image = \"rancher/rancher:v2.15.1\"").is_ok());
        // a tag that names no version is checked at /rancherversion instead
        assert!(parse("distribution = \"rke1\"\nrancher_image = \"rancher/rancher:latest\"").is_ok());
        assert!(parse("distribution = \"rke1\"\nrancher_image = \"rancher/rancher@sha256:0123\"").is_ok());
        // an existing Rancher starts no image: its tag is not the server's version
        assert!(parse("distribution = \"rke2\"\nrancher_image = \"rancher/rancher:v2.5.16\"\nrancher_url = \"https://r.example.com\"").is_ok());
    }

    #[test]
    fn a_rancher_url_is_a_server_root_for_rke2_or_k3s() {
        let plan = parse("distribution = \"rke2\"\nrancher_url = \"https://rancher.example.com:8443/\"").unwrap();
        assert_eq!(plan.rancher_url.as_deref(), Some("https://rancher.example.com:8443"), "the trailing slash goes");
        assert!(plan.existing_rancher());
        assert_eq!(parse("").unwrap().rancher_url, None);
        for (bad, why) in [
            ("distribution = \"rke2\"\nrancher_url = \"http://r.example.com\"", "must start with https://"),
            ("distribution = \"rke2\"\nrancher_url = \"https://admin:pw@r.example.com\"", "must not hold a user or password"),
            ("distribution = \"rke2\"\nrancher_url = \"https://r.example.com/dashboard\"", "no path"),
            ("distribution = \"rke2\"\nrancher_url = \"https://r.example.com:https\"", "port that is not a number"),
            ("distribution = \"rke1\"\nrancher_url = \"https://r.example.com\"", "add --distribution rke2"),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(why) && !err.contains('\n'), "{bad}: {err}");
            assert!(!err.contains("pw@"), "the URL's password is not repeated: {err}");
        }
    }

    #[test]
    fn bad_names_drivers_and_checksums_are_refused() {
        assert!(parse("cluster_name = \"Tiny Setup\"").is_err());
        assert!(parse("driver = \"virtualbox\"").is_err());
        assert!(parse("ca_checksum = \"abc\"").is_err());
    }
}
