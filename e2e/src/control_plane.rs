//! The real Kubernetes control plane every e2e scenario runs on by default:
//! etcd, kube-apiserver, kube-controller-manager and kube-scheduler built from
//! the upstream Go modules by `e2e/cluster/build`, with kwok simulating GPU
//! nodes and their pods (no kubelet, no container runtime, no pod network).
//!
//! One control plane per test binary: the first scenario that asks starts it
//! (`e2e/cluster/start --owner-pid <this process>`), later ones reuse it, and
//! it stops by itself when the test binary exits. Its directory is
//! `<target>/e2e-clusters/<test binary>-<pid>` (logs under `logs/`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::base::{Error, Result, repo_root};

/// Kueue's namespace (its Secret and webhook Service; the manager runs out
/// of cluster, `e2e/cluster/kueue-start`). The harness's reset keeps it.
pub const KUEUE_NAMESPACE: &str = "kueue-system";
/// The prefix of Kueue's webhook configurations' names, which the
/// harness's reset keeps.
pub const KUEUE_WEBHOOK_PREFIX: &str = "kueue-";

/// Environment variable: the Kubernetes release to build and run (`1.37`
/// default, `1.34`), as `e2e/cluster/build` reads it.
pub const KUBE_MINOR_ENV: &str = "KOMPTROLLER_KUBE_MINOR";

/// Environment variable: how many H100 kwok nodes the shared control plane
/// gets (default 4, 8 GPUs each, plus one MI300X node).
pub const NODES_ENV: &str = "KOMPTROLLER_E2E_NODES";

/// The address on the loopback interface that stands for a Service's
/// endpoints. kube-apiserver calls a webhook named by `clientConfig.service`
/// at the Service's endpoint addresses (`--enable-aggregator-routing`), and
/// an Endpoints address may not be 127.0.0.0/8, so this one is added to `lo`
/// (needs root, as CI and these machines have).
pub const SERVICE_IP: &str = "10.255.0.1";

/// Adds [`SERVICE_IP`] to `lo` (once; an address already there is fine) and
/// returns it: a process that listens on it is reachable as a Service's
/// endpoint from the control plane, and from nowhere off this machine.
pub fn service_ip() -> Result<&'static str> {
    static ADDED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    ADDED
        .get_or_init(|| {
            // Already there (a previous run, or another test binary)?
            let shown = Command::new("ip")
                .args(["-o", "-4", "addr", "show", "dev", "lo"])
                .output()
                .map_err(|e| format!("running `ip addr show dev lo`: {e} (Debian iproute2)"))?;
            if String::from_utf8_lossy(&shown.stdout).contains(&format!(" {SERVICE_IP}/")) {
                return Ok(());
            }
            let out = Command::new("ip")
                .args(["addr", "add", &format!("{SERVICE_IP}/32"), "dev", "lo"])
                .output()
                .map_err(|e| format!("running `ip addr add {SERVICE_IP}/32 dev lo`: {e} (Debian iproute2)"))?;
            let err = String::from_utf8_lossy(&out.stderr);
            if out.status.success()
                || err.contains("File exists")
                || err.contains("already assigned")
            {
                Ok(())
            } else {
                Err(format!(
                    "`ip addr add {SERVICE_IP}/32 dev lo` failed ({err}); webhooks reached through a Service need it (root)"
                ))
            }
        })
        .clone()
        .map_err(Error::ControlPlane)?;
    Ok(SERVICE_IP)
}

/// A control plane started by `e2e/cluster/start`.
#[derive(Debug)]
pub struct ControlPlane {
    /// Its directory (`kubeconfig`, `bin/`, `logs/`, `pids/`, `pki/`).
    pub dir: PathBuf,
    /// The cluster admin's kubeconfig.
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// etcd's client URL.
    pub etcd: String,
}

static SHARED: OnceLock<std::result::Result<ControlPlane, String>> = OnceLock::new();

/// The `e2e/cluster` scripts.
pub fn scripts_dir() -> PathBuf {
    repo_root().join("e2e/cluster")
}

/// The directory `e2e/cluster/build` puts the binaries in (building what
/// the control plane needs first, if missing): kubectl, helm, etcd,
/// kube-apiserver, … (and `kueue`, once `e2e::kueue` started it).
pub fn tool_bin_dir() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new(scripts_dir().join("build"))
            .arg("--control-plane")
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| format!("running e2e/cluster/build: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "e2e/cluster/build failed ({}); it needs Go 1.26+ and the Go module proxy",
                out.status
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .last()
            .map(|l| PathBuf::from(l.trim()))
            .ok_or_else(|| "e2e/cluster/build printed no directory".to_string())
    })
    .clone()
    .map_err(Error::ControlPlane)
}

/// A tool built by `e2e/cluster/build` (`kubectl`, `helm`, …).
pub fn tool(name: &str) -> Result<PathBuf> {
    Ok(tool_bin_dir()?.join(name))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                repo_root().join(p)
            }
        })
        .unwrap_or_else(|| repo_root().join("target"))
}

/// Whether a process with this pid runs.
fn alive(pid: u32) -> bool {
    i32::try_from(pid)
        .is_ok_and(|p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok())
}

/// Removes control-plane directories of test binaries that are gone.
fn remove_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !alive(pid) {
            let _ = Command::new(scripts_dir().join("stop"))
                .arg("--dir")
                .arg(e.path())
                .output();
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl ControlPlane {
    /// This test binary's control plane, started on first use.
    pub fn shared() -> Result<&'static ControlPlane> {
        SHARED
            .get_or_init(|| {
                let exe = std::env::current_exe().map_err(|e| e.to_string())?;
                let stem = exe
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_else(|| "e2e".into());
                // cargo names test binaries `<test>-<hash>`: keep the test's name.
                let stem = stem.split('-').next().unwrap_or("e2e").to_string();
                let root = target_dir().join("e2e-clusters");
                remove_stale(&root);
                let dir = root.join(format!("{stem}-{}", std::process::id()));
                let nodes = std::env::var(NODES_ENV).unwrap_or_else(|_| "4".into());
                Self::start(&dir, &nodes).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Error::ControlPlane(e.clone()))
    }

    /// Starts a control plane in `dir` (stopped when this process ends).
    pub fn start(dir: &Path, nodes: &str) -> Result<ControlPlane> {
        std::fs::create_dir_all(dir)?;
        let mut cmd = Command::new(scripts_dir().join("start"));
        cmd.arg("--dir")
            .arg(dir)
            .args(["--nodes", nodes, "--gpus-per-node", "8"])
            .args(["--owner-pid", &std::process::id().to_string()])
            .stderr(std::process::Stdio::inherit());
        let out = cmd.output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() || !stdout.contains("ready") {
            return Err(Error::ControlPlane(format!(
                "e2e/cluster/start --dir {} failed ({}): {stdout}",
                dir.display(),
                out.status
            )));
        }
        eprintln!("e2e: {}", stdout.trim());
        let env = std::fs::read_to_string(dir.join("env"))?;
        let get = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(str::to_string)
                .ok_or_else(|| Error::ControlPlane(format!("{}/env has no {k}", dir.display())))
        };
        Ok(ControlPlane {
            dir: dir.to_path_buf(),
            kubeconfig: dir.join("kubeconfig"),
            server: get("SERVER")?,
            etcd: get("ETCD")?,
        })
    }

    /// The cluster CA's certificate (PEM file).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("pki/ca.crt")
    }

    /// The pid of a component (`etcd`, `kube-apiserver`, …).
    pub fn pid(&self, component: &str) -> Result<i32> {
        let text = std::fs::read_to_string(self.dir.join("pids").join(format!("{component}.pid")))?;
        text.trim()
            .parse()
            .map_err(|_| Error::ControlPlane(format!("bad pid file for {component}: {text:?}")))
    }

    /// Kills a component with `signal` (`KILL`: a crash) and starts it again
    /// as before, waiting until etcd or the apiserver serve again.
    pub fn restart(&self, component: &str, signal: &str) -> Result<()> {
        let out = Command::new(scripts_dir().join("restart"))
            .arg("--dir")
            .arg(&self.dir)
            .args(["--signal", signal, component])
            .output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::ControlPlane(format!(
                "restarting {component}: {}",
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) a component.
    pub fn pause(&self, component: &str, paused: bool) -> Result<()> {
        let sig = if paused {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid(component)?), sig)
            .map_err(|e| Error::ControlPlane(format!("signalling {component}: {e}")))
    }

    /// Compacts etcd's history up to its current revision, so watches from
    /// older resource versions get a real `410 Gone`. Returns the revision.
    pub async fn compact_etcd(&self) -> Result<i64> {
        let http = |path: &str, body: String| {
            let url = format!("{}{path}", self.etcd);
            async move {
                let out = tokio::process::Command::new("curl")
                    .args(["-sf", "-X", "POST", &url, "-d", &body])
                    .output()
                    .await?;
                if !out.status.success() {
                    return Err(Error::ControlPlane(format!("etcd {url}: {}", out.status)));
                }
                serde_json::from_slice::<serde_json::Value>(&out.stdout)
                    .map_err(|e| Error::ControlPlane(format!("etcd {url}: {e}")))
            }
        };
        // Range over one key to read the header's revision ("AA==" is "\0").
        let r = http("/v3/kv/range", r#"{"key":"AA==","limit":1}"#.into()).await?;
        let rev: i64 = r
            .pointer("/header/revision")
            .and_then(|v| v.as_str().and_then(|s| s.parse().ok()).or(v.as_i64()))
            .ok_or_else(|| Error::ControlPlane(format!("etcd gave no revision: {r}")))?;
        http(
            "/v3/kv/compaction",
            format!(r#"{{"revision":"{rev}","physical":true}}"#),
        )
        .await?;
        Ok(rev)
    }

    /// A kubeconfig authenticating as `user` in `groups` by a client
    /// certificate signed by the cluster CA (kube-apiserver takes the user
    /// from CN and each group from an O). Cached per (user, groups).
    pub fn kubeconfig_for_user(&self, user: &str, groups: &[&str]) -> Result<PathBuf> {
        let users = self.dir.join("users");
        std::fs::create_dir_all(&users)?;
        let safe: String = format!("{user}_{}", groups.join("_"))
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = users.join(format!("{safe}.kubeconfig"));
        if path.exists() {
            return Ok(path);
        }
        let (key, csr, crt) = (
            users.join(format!("{safe}.key")),
            users.join(format!("{safe}.csr")),
            users.join(format!("{safe}.crt")),
        );
        let esc = |s: &str| s.replace('\\', "\\\\").replace('/', "\\/");
        let mut subject = format!("/CN={}", esc(user));
        for g in groups {
            subject.push_str(&format!("/O={}", esc(g)));
        }
        let run = |args: &[&std::ffi::OsStr]| -> Result<()> {
            let out = Command::new("openssl").args(args).output()?;
            if out.status.success() {
                Ok(())
            } else {
                Err(Error::ControlPlane(format!(
                    "openssl {:?}: {}",
                    args,
                    String::from_utf8_lossy(&out.stderr)
                )))
            }
        };
        let os = |s: &str| std::ffi::OsString::from(s);
        run(&[
            &os("genpkey"),
            &os("-algorithm"),
            &os("EC"),
            &os("-pkeyopt"),
            &os("ec_paramgen_curve:P-256"),
            &os("-out"),
            key.as_os_str(),
        ])?;
        run(&[
            &os("req"),
            &os("-new"),
            &os("-key"),
            key.as_os_str(),
            &os("-subj"),
            &os(&subject),
            &os("-out"),
            csr.as_os_str(),
        ])?;
        let (ca, ca_key) = (self.ca_file(), self.dir.join("pki/ca.key"));
        let ext = users.join(format!("{safe}.ext"));
        std::fs::write(
            &ext,
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
        )?;
        run(&[
            &os("x509"),
            &os("-req"),
            &os("-in"),
            csr.as_os_str(),
            &os("-CA"),
            ca.as_os_str(),
            &os("-CAkey"),
            ca_key.as_os_str(),
            &os("-CAcreateserial"),
            &os("-days"),
            &os("30"),
            &os("-extfile"),
            ext.as_os_str(),
            &os("-out"),
            crt.as_os_str(),
        ])?;
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: u@e2e\n  context: {{cluster: e2e, user: u}}\ncurrent-context: u@e2e\n",
            self.server,
            ca.display(),
            crt.display(),
            key.display()
        );
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }
}

/// How long a fresh namespace may take to go away before a reset gives up.
pub const RESET_TIMEOUT: Duration = Duration::from_secs(60);
