//! The fault proxy (`e2e::fault_proxy`) in front of the real kube-apiserver:
//! what it forwards arrives unchanged, and each fault it injects is seen by
//! a kube client as a real apiserver's would be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::fault_proxy::{FaultProxy, Faults};
use e2e::harness::{Cluster, TempNamespace, client_from_kubeconfig};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use kube::{Client, Config};
use serde_json::json;

const T: Duration = Duration::from_secs(30);
const SA: &str = "system:serviceaccount:default:default";

/// A test's cluster (its exclusive turn), the proxy in front of it, and a
/// client through the proxy authenticating as the `default` ServiceAccount
/// of `default`, which is bound to cluster-admin.
struct Setup {
    cluster: Cluster,
    proxy: FaultProxy,
    /// Through the proxy.
    client: Client,
    kubeconfig: tempfile::NamedTempFile,
    ns: TempNamespace,
}

async fn setup() -> Setup {
    let cluster = Cluster::start().await.unwrap();
    let cp = cluster.require_control_plane().unwrap();
    cluster
        .apply_yaml(
            &format!(
                "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: e2e-fault-proxy-sa-admin
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: cluster-admin
subjects:
- kind: User
  name: {SA}
  apiGroup: rbac.authorization.k8s.io
"
            ),
            None,
        )
        .await
        .unwrap();
    let mut kubectl = tokio::process::Command::from(cluster.kubectl());
    kubectl.args([
        "-n",
        "default",
        "create",
        "token",
        "default",
        "--duration",
        "1h",
    ]);
    let out = tokio::time::timeout(T, kubectl.output())
        .await
        .expect("kubectl create token timed out")
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl create token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(!token.is_empty());
    let ca = std::fs::read_to_string(cp.ca_file()).unwrap();
    let proxy = FaultProxy::start(&cp.server, &ca).await.unwrap();
    assert!(
        proxy.url().starts_with("https://127.0.0.1:"),
        "{}",
        proxy.url()
    );
    let kubeconfig = tempfile::NamedTempFile::new().unwrap();
    proxy.write_kubeconfig(kubeconfig.path(), &token).unwrap();
    let client = client_from_kubeconfig(kubeconfig.path()).await.unwrap();
    let ns = cluster.temp_namespace("fp").await.unwrap();
    Setup {
        cluster,
        proxy,
        client,
        kubeconfig,
        ns,
    }
}

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}})).unwrap()
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_writes_pass_through_unchanged() {
    let s = setup().await;
    // The token reached the apiserver: it says who we are.
    let review: SelfSubjectReview = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"
    }))
    .unwrap();
    let review = tokio::time::timeout(
        T,
        Api::<SelfSubjectReview>::all(s.client.clone()).create(&PostParams::default(), &review),
    )
    .await
    .unwrap()
    .unwrap();
    let user = review.status.unwrap().user_info.unwrap();
    assert_eq!(user.username.as_deref(), Some(SA));

    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    let created = tokio::time::timeout(T, cms.create(&PostParams::default(), &config_map("a")))
        .await
        .unwrap()
        .unwrap();
    let got = tokio::time::timeout(T, cms.get("a"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.data, created.data);
    assert_eq!(
        got.metadata.resource_version,
        created.metadata.resource_version
    );
    // It is really on the cluster.
    let direct: Api<ConfigMap> = Api::namespaced(s.cluster.client(), &s.ns.name);
    let d = direct.get("a").await.unwrap();
    assert_eq!(d.metadata.uid, created.metadata.uid);
    let list = tokio::time::timeout(T, cms.list(&Default::default()))
        .await
        .unwrap()
        .unwrap();
    assert!(
        list.items
            .iter()
            .any(|c| c.metadata.name.as_deref() == Some("a"))
    );
    // A 404 from the apiserver passes through as such.
    let e = cms.get("missing").await.unwrap_err();
    assert_eq!(api_code(&e), Some(404), "{e:?}");

    let st = s.proxy.stats();
    assert!(st.forwarded >= 5, "{st:?}");
    assert_eq!(
        (
            st.injected_500,
            st.injected_409,
            st.injected_429,
            st.watches_closed
        ),
        (0, 0, 0, 0),
        "{st:?}"
    );
    // The kubeconfig works for kubectl as well.
    let out = std::process::Command::new(e2e::control_plane::tool("kubectl").unwrap())
        .env("KUBECONFIG", s.kubeconfig.path())
        .args([
            "-n",
            &s.ns.name,
            "get",
            "configmap",
            "a",
            "-o",
            "jsonpath={.data.k}",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v");

    // Dropped, the proxy stops: its open connections and its listener.
    drop(s.proxy);
    let after = tokio::time::timeout(T, cms.get("a")).await.unwrap();
    assert!(after.is_err(), "a request got through a dropped proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_500_and_409_fail_writes_that_never_reach_the_apiserver() {
    let s = setup().await;
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    let direct: Api<ConfigMap> = Api::namespaced(s.cluster.client(), &s.ns.name);

    s.proxy.set_faults(Faults {
        write_error_500: 1.0,
        ..Faults::default()
    });
    let e = tokio::time::timeout(T, cms.create(&PostParams::default(), &config_map("five")))
        .await
        .unwrap()
        .unwrap_err();
    match &e {
        kube::Error::Api(st) => {
            assert_eq!(st.code, 500, "{st:?}");
            assert_eq!(st.reason, "InternalError", "{st:?}");
        }
        other => panic!("expected a 500 Status, got {other:?}"),
    }
    assert!(direct.get_opt("five").await.unwrap().is_none());
    // Reads are not writes.
    assert!(
        tokio::time::timeout(T, cms.list(&Default::default()))
            .await
            .unwrap()
            .is_ok()
    );

    s.proxy.set_faults(Faults {
        write_error_409: 1.0,
        ..Faults::default()
    });
    let e = tokio::time::timeout(T, cms.create(&PostParams::default(), &config_map("nine")))
        .await
        .unwrap()
        .unwrap_err();
    match &e {
        kube::Error::Api(st) => {
            assert_eq!(st.code, 409, "{st:?}");
            assert_eq!(st.reason, "Conflict", "{st:?}");
        }
        other => panic!("expected a 409 Status, got {other:?}"),
    }
    assert!(direct.get_opt("nine").await.unwrap().is_none());
    let st = s.proxy.stats();
    assert_eq!((st.injected_500, st.injected_409), (1, 1), "{st:?}");

    // Faults off: the same write goes through.
    s.proxy.set_faults(Faults::default());
    tokio::time::timeout(T, cms.create(&PostParams::default(), &config_map("nine")))
        .await
        .unwrap()
        .unwrap();
    assert!(direct.get_opt("nine").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_429_answers_with_retry_after() {
    let s = setup().await;
    // A client that does not retry sees the 429 itself.
    let kc = kube::config::Kubeconfig::read_from(s.kubeconfig.path()).unwrap();
    let mut config = Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    config.default_retry = false;
    let no_retry = Client::try_from(config).unwrap();
    s.proxy.set_faults(Faults {
        throttle_429: 1.0,
        ..Faults::default()
    });
    let cms: Api<ConfigMap> = Api::namespaced(no_retry.clone(), &s.ns.name);
    let e = tokio::time::timeout(T, cms.get("anything"))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(api_code(&e), Some(429), "{e:?}");
    let req = http::Request::get(format!("/api/v1/namespaces/{}/configmaps", s.ns.name))
        .body(kube::client::Body::empty())
        .unwrap();
    let resp = tokio::time::timeout(T, no_retry.send(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), http::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status["reason"], "TooManyRequests", "{status}");
    assert_eq!(status["code"], 429, "{status}");
    assert_eq!(s.proxy.stats().injected_429, 2);

    // kube's default client retries 429s after Retry-After: it gets through
    // once the throttling stops.
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    let started = Instant::now();
    let get = tokio::spawn(async move { cms.list(&Default::default()).await });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!get.is_finished(), "the throttled list did not wait");
    s.proxy.set_faults(Faults::default());
    let list = tokio::time::timeout(T, get).await.unwrap().unwrap();
    assert!(list.is_ok(), "{list:?}");
    assert!(started.elapsed() >= Duration::from_millis(2500));
    assert!(s.proxy.stats().injected_429 >= 4, "{:?}", s.proxy.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_delays_every_request() {
    let s = setup().await;
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    // Warm the connection, so the measured requests do not include a handshake.
    cms.list(&Default::default()).await.unwrap();
    s.proxy.set_faults(Faults {
        latency_ms: 300,
        ..Faults::default()
    });
    for _ in 0..2 {
        let started = Instant::now();
        let r = tokio::time::timeout(T, cms.get_opt("x")).await.unwrap();
        assert!(r.unwrap().is_none());
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "took {took:?}");
    }
    s.proxy.set_faults(Faults::default());
    let started = Instant::now();
    cms.get_opt("x").await.unwrap();
    // Only a loose bound without latency: the machine is shared.
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_through_the_proxy_are_closed_cleanly() {
    let s = setup().await;
    let direct: Api<ConfigMap> = Api::namespaced(s.cluster.client(), &s.ns.name);
    direct
        .create(&PostParams::default(), &config_map("seen"))
        .await
        .unwrap();
    s.proxy.set_faults(Faults {
        watch_close_every_secs: Some(1.0),
        ..Faults::default()
    });
    let proxied: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    // Only our object (the namespace also holds kube-root-ca.crt).
    let wp = WatchParams::default()
        .fields("metadata.name=seen")
        .timeout(290);
    let started = Instant::now();
    let mut through = proxied.watch(&wp, "0").await.unwrap().boxed();
    let mut plain = direct.watch(&wp, "0").await.unwrap().boxed();

    // The events come through the proxy: from "0" the existing object is ADDED.
    let names = |ev: WatchEvent<ConfigMap>| match ev {
        WatchEvent::Added(cm) => cm.metadata.name,
        _ => None,
    };
    let first = tokio::time::timeout(T, through.try_next())
        .await
        .unwrap()
        .unwrap()
        .expect("the proxied watch ended before its first event");
    assert_eq!(names(first).as_deref(), Some("seen"));
    let first = tokio::time::timeout(T, plain.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(names(first).as_deref(), Some("seen"));

    // The proxied watch ends (cleanly: no error) about a second in.
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        let mut n = 0;
        while let Some(ev) = through.next().await {
            ev.unwrap();
            n += 1;
        }
        n
    })
    .await;
    assert!(rest.is_ok(), "the proxied watch did not end within 5 s");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "ended after {took:?}");
    assert!(s.proxy.stats().watches_closed >= 1, "{:?}", s.proxy.stats());
    // The direct watch goes on (bookmarks may come; it does not end).
    let end = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match plain.next().await {
                Some(Ok(_)) => {}
                other => return other.map(|r| r.map(|_| ())),
            }
        }
    })
    .await;
    assert!(end.is_err(), "the direct watch ended: {end:?}");

    // The connection is usable again after a cut watch.
    assert!(proxied.get_opt("seen").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_resumes_across_closed_watches() {
    use kube::runtime::watcher;
    let s = setup().await;
    s.proxy.set_faults(Faults {
        watch_close_every_secs: Some(1.0),
        ..Faults::default()
    });
    let proxied: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    let direct: Api<ConfigMap> = Api::namespaced(s.cluster.client(), &s.ns.name);
    let mut events = watcher(proxied, watcher::Config::default()).boxed();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen2 = seen.clone();
    let collect = tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            if let Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) = ev {
                seen2
                    .lock()
                    .unwrap()
                    .push(cm.metadata.name.unwrap_or_default());
            }
        }
    });
    for name in ["one", "two", "three"] {
        tokio::time::sleep(Duration::from_millis(1300)).await;
        direct
            .create(&PostParams::default(), &config_map(name))
            .await
            .unwrap();
    }
    let deadline = Instant::now() + T;
    loop {
        let got = seen.lock().unwrap().clone();
        if ["one", "two", "three"]
            .iter()
            .all(|n| got.iter().any(|g| g == n))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the watcher saw only {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    collect.abort();
    assert!(s.proxy.stats().watches_closed >= 2, "{:?}", s.proxy.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_holds_requests_until_unpaused() {
    let s = setup().await;
    let proxy = Arc::new(s.proxy);
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    proxy.set_faults(Faults {
        paused: true,
        ..Faults::default()
    });
    let started = Instant::now();
    let get = tokio::spawn({
        let cms = cms.clone();
        async move { cms.list(&Default::default()).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!get.is_finished(), "a request got through while paused");
    assert_eq!(proxy.stats().forwarded, 0, "{:?}", proxy.stats());
    let unpause = tokio::spawn({
        let proxy = proxy.clone();
        async move {
            proxy.set_faults(Faults::default());
        }
    });
    unpause.await.unwrap();
    let list = tokio::time::timeout(T, get).await.unwrap().unwrap();
    assert!(list.is_ok(), "{list:?}");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert!(proxy.stats().forwarded >= 1);
    drop(s.ns);
    drop(s.cluster);
}
