//! The webhook's `provided` and `cert-manager` certificate modes on
//! the real kube-apiserver, which calls the webhooks over TLS trusting only each
//! webhook's `caBundle` (self-managed mode: `webhook_admission.rs`).
//!
//! Certificates are files, as a mounted Secret: the kubelet's layout is
//! emulated (`tls.crt -> ..data/tls.crt`, `..data -> ..<generation>`, a new
//! generation swapped in atomically), so a rotation is what a pod sees.
//! cert-manager's part (issuing into the Secret named by the chart's
//! Certificate, its cainjector filling `caBundle` from the Certificate named
//! in `cert-manager.io/inject-ca-from`) is done by the test.
//!
//! Needs the `komptroller` binary (`cargo build -p komptroller`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use common::operator::{Env, OPERATOR_NS, T, free_port, komptroller, training_job};
use e2e::harness::{Process, parse_yaml_documents};
use e2e::tls::{Ca, Leaf};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::json;

const USERS: &[(&str, &str)] = &[("alice", "researchers")];
const STAMP: &str = "komptroller.dev/submitted-by";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A directory laid out as the kubelet mounts a Secret volume.
struct Mount {
    dir: PathBuf,
    generation: u32,
}

impl Mount {
    fn new(dir: &Path) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        Mount {
            dir: dir.to_path_buf(),
            generation: 0,
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// Writes a new generation of the Secret's keys and swaps it in atomically.
    fn write(&mut self, files: &[(&str, &str)]) {
        self.generation += 1;
        let generation = format!("..{}", self.generation);
        std::fs::create_dir(self.dir.join(&generation)).unwrap();
        for (key, text) in files {
            std::fs::write(self.dir.join(&generation).join(key), text).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&generation, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        for (key, _) in files {
            let link = self.dir.join(key);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(key), &link).unwrap();
            }
        }
    }
}

/// The DER of the certificate the server at `addr` presents for `server_name`,
/// trusting the CAs in `ca_pem`.
async fn served_cert(addr: &str, server_name: &str, ca_pem: &str) -> Result<Vec<u8>, String> {
    let config = e2e::tls::client_config_for_ca(ca_pem.as_bytes()).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| e.to_string())?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, conn) = tls.get_ref();
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .ok_or_else(|| "no peer certificate".to_string())
}

/// Waits until the server presents `leaf`.
async fn wait_served(addr: &str, server_name: &str, ca_pem: &str, leaf: &Leaf) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let got = served_cert(addr, server_name, ca_pem).await;
        if got.as_deref() == Ok(leaf.cert_der.as_ref()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the webhook never served the rotated certificate (last: {:?})",
            got.map(|d| d.len())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Alice creates a TrainingJob; the webhooks answer (the stamp is set).
async fn create_stamped(env: &Env, ns: &str, name: &str) {
    let o = env
        .create_as(
            "alice",
            ns,
            training_job(name, name, "nvidia-h100-sxm", 8, 1, "1h", None),
        )
        .await;
    let stamp = o
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(STAMP))
        .unwrap_or_else(|| panic!("{name}: not stamped by the mutating webhook"));
    assert!(stamp.contains("\"alice\""), "{stamp}");
}

async fn configurations(
    env: &Env,
) -> (MutatingWebhookConfiguration, ValidatingWebhookConfiguration) {
    let m: Api<MutatingWebhookConfiguration> = Api::all(env.cluster.client());
    let v: Api<ValidatingWebhookConfiguration> = Api::all(env.cluster.client());
    (
        m.get("komptroller").await.unwrap(),
        v.get("komptroller").await.unwrap(),
    )
}

/// Every webhook's caBundle (None where unset).
async fn ca_bundles(env: &Env) -> Vec<Option<String>> {
    let (m, v) = configurations(env).await;
    let bundle =
        |b: Option<&k8s_openapi::ByteString>| b.map(|b| String::from_utf8(b.0.clone()).unwrap());
    m.webhooks
        .unwrap_or_default()
        .iter()
        .map(|w| bundle(w.client_config.ca_bundle.as_ref()))
        .chain(
            v.webhooks
                .unwrap_or_default()
                .iter()
                .map(|w| bundle(w.client_config.ca_bundle.as_ref())),
        )
        .collect()
}

async fn wait_ca_bundles(env: &Env, want: &str) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let have = ca_bundles(env).await;
        if have.len() == 5 && have.iter().all(|b| b.as_deref() == Some(want)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "caBundles never became {want:?}: {have:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// cert-manager's cainjector: copies `ca.crt` of the Certificate's Secret
/// into every webhook's caBundle (an update, as another field manager).
async fn inject_ca(env: &Env, ca_pem: &str) {
    let pp = PostParams {
        field_manager: Some("cainjector".into()),
        ..Default::default()
    };
    let (mut m, mut v) = configurations(env).await;
    for w in m.webhooks.iter_mut().flatten() {
        w.client_config.ca_bundle = Some(k8s_openapi::ByteString(ca_pem.as_bytes().to_vec()));
    }
    for w in v.webhooks.iter_mut().flatten() {
        w.client_config.ca_bundle = Some(k8s_openapi::ByteString(ca_pem.as_bytes().to_vec()));
    }
    let ma: Api<MutatingWebhookConfiguration> = Api::all(env.cluster.client());
    let va: Api<ValidatingWebhookConfiguration> = Api::all(env.cluster.client());
    ma.replace("komptroller", &pp, &m).await.unwrap();
    va.replace("komptroller", &pp, &v).await.unwrap();
}

/// `komptroller webhook` in a file-based certificate mode (`--cert-mode
/// mode`, the files of `mount`, plus `extra`), reached at `https://addr`;
/// waits for "webhook ready".
async fn start_file_webhook(
    env: &Env,
    addr: &str,
    mode: &str,
    mount: &Mount,
    extra: &[&str],
) -> Process {
    let url = format!("https://{addr}");
    let (crt, key) = (mount.path("tls.crt"), mount.path("tls.key"));
    let mut args = vec![
        "webhook",
        "--webhook-addr",
        addr,
        "--webhook-url",
        &url,
        "--webhook-namespace",
        OPERATOR_NS,
        "--webhook-cert-check-interval",
        "1s",
        "--cert-mode",
        mode,
        "--tls-cert-file",
        crt.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut p = Process::start(
        &komptroller(),
        &args,
        Some(env.cluster.kubeconfig()),
        &[("RUST_LOG", "info")],
    )
    .unwrap();
    p.wait_for_line("webhook ready", T).await.unwrap();
    p
}

fn output(p: &Process) -> String {
    p.output().join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provided_certificate_is_served_and_rotations_are_picked_up_without_restart() {
    let env = Env::start(USERS).await;
    env.namespace("research", json!({})).await;
    let mut mount = Mount::new(&env.dir.path().join("tls"));
    let ca1 = Ca::new("provided-ca-1").unwrap();
    let leaf1 = ca1.issue_server(&["127.0.0.1"]).unwrap();
    mount.write(&[
        ("tls.crt", &leaf1.cert_pem),
        ("tls.key", &leaf1.key_pem),
        ("ca.crt", ca1.cert_pem()),
    ]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let ca = mount.path("ca.crt");
    let mut p = start_file_webhook(
        &env,
        &addr,
        "provided",
        &mount,
        &["--ca-file", ca.to_str().unwrap()],
    )
    .await;
    let pid = p.id();

    // The operator writes the provided CA into its configurations and serves the provided pair.
    wait_ca_bundles(&env, ca1.cert_pem()).await;
    assert_eq!(
        served_cert(&addr, "127.0.0.1", ca1.cert_pem()).await,
        Ok(leaf1.cert_der.to_vec())
    );
    create_stamped(&env, "research", "first").await;
    let secrets: Api<Secret> = Api::namespaced(env.cluster.client(), OPERATOR_NS);
    assert!(
        secrets
            .get_opt("komptroller-webhook-tls")
            .await
            .unwrap()
            .is_none(),
        "provided mode creates no self-managed Secret"
    );

    // 1. A new serving certificate from the same CA.
    let leaf2 = ca1.issue_server(&["127.0.0.1"]).unwrap();
    mount.write(&[
        ("tls.crt", &leaf2.cert_pem),
        ("tls.key", &leaf2.key_pem),
        ("ca.crt", ca1.cert_pem()),
    ]);
    wait_served(&addr, "127.0.0.1", ca1.cert_pem(), &leaf2).await;
    create_stamped(&env, "research", "after-renewal").await;

    // 2. A new CA, the safe way: both CAs in the bundle first, then the
    //    certificate of the new CA, then the old CA dropped.
    let ca2 = Ca::new("provided-ca-2").unwrap();
    let both = format!("{}{}", ca1.cert_pem(), ca2.cert_pem());
    mount.write(&[
        ("tls.crt", &leaf2.cert_pem),
        ("tls.key", &leaf2.key_pem),
        ("ca.crt", &both),
    ]);
    wait_ca_bundles(&env, &both).await;
    let leaf3 = ca2.issue_server(&["127.0.0.1"]).unwrap();
    mount.write(&[
        ("tls.crt", &leaf3.cert_pem),
        ("tls.key", &leaf3.key_pem),
        ("ca.crt", &both),
    ]);
    wait_served(&addr, "127.0.0.1", &both, &leaf3).await;
    create_stamped(&env, "research", "after-ca-rotation").await;
    mount.write(&[
        ("tls.crt", &leaf3.cert_pem),
        ("tls.key", &leaf3.key_pem),
        ("ca.crt", ca2.cert_pem()),
    ]);
    wait_ca_bundles(&env, ca2.cert_pem()).await;
    create_stamped(&env, "research", "old-ca-dropped").await;

    // 3. Files replaced one at a time (not a Secret volume): while the
    //    certificate is new and the key still old, the previous pair is kept.
    let leaf4 = ca2.issue_server(&["127.0.0.1"]).unwrap();
    let gen_dir = mount.dir.join(format!("..{}", mount.generation));
    std::fs::write(gen_dir.join("tls.crt"), &leaf4.cert_pem).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        served_cert(&addr, "127.0.0.1", ca2.cert_pem()).await,
        Ok(leaf3.cert_der.to_vec()),
        "a certificate without its key must not be served"
    );
    create_stamped(&env, "research", "half-rotated").await;
    assert!(
        output(&p).contains("does not belong to the serving certificate"),
        "{}",
        output(&p)
    );
    std::fs::write(gen_dir.join("tls.key"), &leaf4.key_pem).unwrap();
    wait_served(&addr, "127.0.0.1", ca2.cert_pem(), &leaf4).await;
    create_stamped(&env, "research", "rotated").await;

    assert_eq!(p.id(), pid, "no restart");
    assert!(output(&p).contains("reloaded the webhook serving certificate"));
    p.terminate(Duration::from_secs(5)).await.unwrap();
}

/// The chart's cert-manager mode end to end: its Certificate, webhook
/// configurations (reaching the webhook through its Service) and the
/// Deployment's environment, with cert-manager and the kubelet emulated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_manager_mode_as_the_chart_installs_it() {
    let fixture = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chart-cert-manager.yaml"),
    )
    .unwrap();
    let docs = parse_yaml_documents(&fixture).unwrap();
    let find = |kind: &str| docs.iter().find(|d| d["kind"] == kind).unwrap().clone();
    let certificate = find("Certificate");
    let deployment = find("Deployment");
    let (mutating, validating) = (
        find("MutatingWebhookConfiguration"),
        find("ValidatingWebhookConfiguration"),
    );
    let service = mutating["webhooks"][0]["clientConfig"]["service"].clone();
    let (svc_ns, svc_name) = (
        service["namespace"].as_str().unwrap().to_string(),
        service["name"].as_str().unwrap().to_string(),
    );
    let server_name = format!("{svc_name}.{svc_ns}.svc");
    // The real apiserver reaches the Service at its endpoints: the
    // operator's webhook port on an address of the loopback interface.
    let ip = e2e::control_plane::service_ip().unwrap();
    let port = free_port();
    let addr = format!("{ip}:{port}");
    let env = Env::start(USERS).await;
    let svc_port = service["port"].as_i64().unwrap_or(443);
    env.apply(
        &json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": svc_name, "namespace": svc_ns},
            "spec": {"ports": [{"name": "https", "port": svc_port, "targetPort": port}]}}),
        Some(&svc_ns),
    )
    .await;
    env.apply(
        &json!({"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": svc_name, "namespace": svc_ns},
            "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "https", "port": port}]}]}),
        Some(&svc_ns),
    )
    .await;
    env.namespace("research", json!({})).await;

    // cert-manager issues the Certificate into its Secret (tls.crt, tls.key, ca.crt).
    let dns: Vec<&str> = certificate["spec"]["dnsNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(dns.contains(&server_name.as_str()), "{dns:?}");
    let ca = Ca::new("cert-manager-ca").unwrap();
    let leaf1 = ca.issue_server(&dns).unwrap();
    let secret_name = certificate["spec"]["secretName"].as_str().unwrap();
    let secret_of = |leaf: &Leaf| {
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": secret_name, "namespace": OPERATOR_NS,
                "annotations": {"cert-manager.io/certificate-name": certificate["metadata"]["name"]}},
            "data": {"tls.crt": b64(&leaf.cert_pem), "tls.key": b64(&leaf.key_pem),
                     "ca.crt": b64(ca.cert_pem())}})
    };
    env.apply(&secret_of(&leaf1), Some(OPERATOR_NS)).await;
    // The kubelet mounts it where the Deployment says.
    let pod = &deployment["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["secret"]["secretName"] == secret_name)
        .expect("the Deployment mounts the Certificate's Secret");
    let container = &pod["containers"][0];
    let mount_path = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .unwrap()["mountPath"]
        .as_str()
        .unwrap()
        .to_string();
    let mut mount = Mount::new(&env.dir.path().join("webhook-tls"));
    let files = |leaf: &Leaf| {
        vec![
            ("tls.crt", leaf.cert_pem.clone()),
            ("tls.key", leaf.key_pem.clone()),
            ("ca.crt", ca.cert_pem().to_string()),
        ]
    };
    let write = |mount: &mut Mount, f: Vec<(&str, String)>| {
        let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
        mount.write(&f);
    };
    write(&mut mount, files(&leaf1));

    // Helm applies the webhook configurations; the cainjector fills their
    // caBundle from the Certificate named in the annotation.
    for c in [&mutating, &validating] {
        assert_eq!(
            c["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            format!(
                "{OPERATOR_NS}/{}",
                certificate["metadata"]["name"].as_str().unwrap()
            )
        );
        env.apply(c, None).await;
    }
    assert!(ca_bundles(&env).await.iter().all(Option::is_none));
    inject_ca(&env, ca.cert_pem()).await;

    // The operator as the Deployment runs it: its args and environment, with
    // the mount path, addresses and pod fields of this machine.
    let mut vars: Vec<(String, String)> = Vec::new();
    for e in container["env"].as_array().unwrap() {
        let (name, value) = (e["name"].as_str().unwrap(), &e["value"]);
        let value = match name {
            "POD_NAMESPACE" => OPERATOR_NS.to_string(),
            "POD_NAME" => "komptroller-0".to_string(),
            "KOMPTROLLER_WEBHOOK_ADDR" => addr.clone(),
            "KOMPTROLLER_METRICS_ADDR" => format!("127.0.0.1:{}", free_port()),
            _ => match value.as_str() {
                Some(v) => v.replace(&mount_path, mount.dir.to_str().unwrap()),
                None => continue,
            },
        };
        vars.push((name.to_string(), value));
    }
    assert!(
        vars.iter()
            .any(|(k, v)| k == "KOMPTROLLER_CERT_MODE" && v == "cert-manager")
    );
    vars.push(("RUST_LOG".into(), "info".into()));
    // The chart keeps the default check interval (1m); a second keeps this test short.
    vars.push((
        "KOMPTROLLER_WEBHOOK_CERT_CHECK_INTERVAL".into(),
        "1s".into(),
    ));
    let env_refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let op_kubeconfig = env.kubeconfig_for(common::operator::OPERATOR_SA);
    let mut p = Process::start(&komptroller(), &args, Some(&op_kubeconfig), &env_refs).unwrap();
    p.wait_for_line("webhook ready", T).await.unwrap();
    let pid = p.id();

    // The API server calls the Service by name over TLS trusting the injected CA.
    assert_eq!(
        served_cert(&addr, &server_name, ca.cert_pem()).await,
        Ok(leaf1.cert_der.to_vec())
    );
    create_stamped(&env, "research", "first").await;

    // cert-manager renews (rotationPolicy Always: a new key); the kubelet
    // swaps the mounted files; the operator serves the new pair, unrestarted.
    let leaf2 = ca.issue_server(&dns).unwrap();
    env.apply(&secret_of(&leaf2), Some(OPERATOR_NS)).await;
    write(&mut mount, files(&leaf2));
    wait_served(&addr, &server_name, ca.cert_pem(), &leaf2).await;
    create_stamped(&env, "research", "after-renewal").await;
    assert_eq!(p.id(), pid, "no restart");
    assert!(output(&p).contains("reloaded the webhook serving certificate"));

    // The operator left the configurations and Secrets to the chart and cert-manager.
    let (m, v) = configurations(&env).await;
    for managers in [m.metadata.managed_fields, v.metadata.managed_fields] {
        let names: Vec<String> = managers
            .unwrap_or_default()
            .into_iter()
            .filter_map(|f| f.manager)
            .collect();
        assert!(
            !names.iter().any(|n| n == "komptroller-webhook"),
            "{names:?}"
        );
    }
    assert_eq!(
        ca_bundles(&env).await,
        vec![Some(ca.cert_pem().to_string()); 5]
    );
    let secrets: Api<Secret> = Api::namespaced(env.cluster.client(), OPERATOR_NS);
    assert!(
        secrets
            .get_opt("komptroller-webhook-tls")
            .await
            .unwrap()
            .is_none()
    );
    p.terminate(Duration::from_secs(5)).await.unwrap();
}

/// cert-manager mode with the operator managing its configurations (no
/// chart): it writes the inject-ca-from annotation, never a caBundle, and its
/// re-applies leave the cainjector's caBundle alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_manager_mode_managed_by_the_operator_leaves_the_ca_bundle_to_cainjector() {
    let env = Env::start(USERS).await;
    env.namespace("research", json!({})).await;
    let ca = Ca::new("cert-manager-ca").unwrap();
    let leaf = ca.issue_server(&["127.0.0.1"]).unwrap();
    let mut mount = Mount::new(&env.dir.path().join("tls"));
    mount.write(&[
        ("tls.crt", &leaf.cert_pem),
        ("tls.key", &leaf.key_pem),
        ("ca.crt", ca.cert_pem()),
    ]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut p = start_file_webhook(&env, &addr, "cert-manager", &mount, &[]).await;
    let (m, v) = configurations(&env).await;
    for annotations in [m.metadata.annotations, v.metadata.annotations] {
        assert_eq!(
            annotations.unwrap_or_default()["cert-manager.io/inject-ca-from"],
            format!("{OPERATOR_NS}/komptroller-webhook")
        );
    }
    assert_eq!(ca_bundles(&env).await, vec![None; 5], "no caBundle written");
    // Until the cainjector has run, the API server cannot trust the webhook (failurePolicy Fail).
    let tjs: Api<DynamicObject> = env.api_as("alice", "TrainingJob", "research").await;
    let r = tjs
        .create(
            &PostParams::default(),
            &serde_json::from_value(training_job(
                "early",
                "early",
                "nvidia-h100-sxm",
                8,
                1,
                "1h",
                None,
            ))
            .unwrap(),
        )
        .await;
    assert!(
        matches!(&r, Err(kube::Error::Api(s)) if s.message.contains("failed calling webhook")),
        "{r:?}"
    );
    inject_ca(&env, ca.cert_pem()).await;
    create_stamped(&env, "research", "injected").await;
    // Several re-applies later the injected caBundle is still there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        ca_bundles(&env).await,
        vec![Some(ca.cert_pem().to_string()); 5]
    );
    create_stamped(&env, "research", "later").await;
    p.terminate(Duration::from_secs(5)).await.unwrap();
}
