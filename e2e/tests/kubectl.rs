//! The real `kubectl`, built by `e2e/cluster/build` from k8s.io/kubernetes,
//! against the real e2e control plane (or the cluster named by
//! `KOMPTROLLER_E2E_KUBECONFIG`). kubectl missing is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use e2e::harness::Cluster;

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn run(cmd: &mut Command, stdin: Option<&str>) -> Out {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("the kubectl e2e/cluster/build builds must exist for these tests");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let o = child.wait_with_output().unwrap();
    let out = Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into(),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
    };
    eprintln!("$ {cmd:?}\n{}{}", out.stdout, out.stderr);
    out
}

fn kubectl(c: &Cluster, args: &[&str]) -> Out {
    // The real kubectl's `wait --for=condition` fails at once ("accessor
    // error: <nil>") on an object whose status the server has not written
    // yet (a CRD applied a moment ago): ask again, as a script would.
    for _ in 0..20 {
        let o = run(c.kubectl().args(args), None);
        if !(args.contains(&"wait") && !o.ok && o.stderr.contains("accessor error")) {
            return o;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    run(c.kubectl().args(args), None)
}

fn kubectl_in(c: &Cluster, args: &[&str], stdin: &str) -> Out {
    run(c.kubectl().args(args), Some(stdin))
}

async fn setup() -> Cluster {
    let c = Cluster::start().await.unwrap();
    let crds = fixtures().join("crds");
    let o = kubectl(&c, &["apply", "-f", crds.to_str().unwrap()]);
    assert!(o.ok, "kubectl apply -f crds/");
    assert!(
        o.stdout
            .contains("customresourcedefinition.apiextensions.k8s.io/widgets.test.komptroller.dev")
    );
    let o = kubectl(
        &c,
        &[
            "wait",
            "--for=condition=Established",
            "crd/widgets.test.komptroller.dev",
            "--timeout=20s",
        ],
    );
    assert!(o.ok);
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_crds_then_get_with_printer_columns() {
    let c = setup().await;
    let ns = c.temp_namespace("kget").await.unwrap();
    let o = kubectl(
        &c,
        &[
            "-n",
            &ns.name,
            "apply",
            "-f",
            fixtures().join("widget-a.yaml").to_str().unwrap(),
        ],
    );
    assert!(o.ok);
    assert!(
        o.stdout
            .contains("widget.test.komptroller.dev/widget-a created")
    );
    let o = kubectl(&c, &["-n", &ns.name, "get", "widgets"]);
    assert!(o.ok);
    let header: Vec<&str> = o
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        vec!["NAME", "SIZE", "COLOR", "PHASE", "READY", "AGE"]
    );
    let row: Vec<&str> = o
        .stdout
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(&row[..3], &["widget-a", "3", "blue"]);
    // Short name, category, -o wide, jsonpath.
    assert!(kubectl(&c, &["-n", &ns.name, "get", "wd", "widget-a"]).ok);
    assert!(
        kubectl(&c, &["-n", &ns.name, "get", "komptroller-test"])
            .stdout
            .contains("widget-a")
    );
    let o = kubectl(
        &c,
        &[
            "-n",
            &ns.name,
            "get",
            "wd",
            "widget-a",
            "-o",
            "jsonpath={.spec.minSize}",
        ],
    );
    assert_eq!(o.stdout, "1", "defaults visible through kubectl");
    // kubectl explain reads the CRD schema from OpenAPI v3.
    let o = kubectl(&c, &["explain", "widgets.spec.color"]);
    assert!(
        o.ok && o.stdout.contains("FIELD: color <string>") && o.stdout.contains("green"),
        "{}",
        o.stdout
    );
    // Client-side apply again: a patch, generation bumps.
    let changed = std::fs::read_to_string(fixtures().join("widget-a.yaml"))
        .unwrap()
        .replace("size: 3", "size: 4");
    let o = kubectl_in(&c, &["-n", &ns.name, "apply", "-f", "-"], &changed);
    assert!(o.stdout.contains("configured"), "{}", o.stdout);
    let o = kubectl(
        &c,
        &[
            "-n",
            &ns.name,
            "get",
            "wd",
            "widget-a",
            "-o",
            "jsonpath={.metadata.generation}",
        ],
    );
    assert_eq!(o.stdout, "2");
    // Schema errors come back as kubectl prints the real server's.
    let o = kubectl_in(
        &c,
        &["-n", &ns.name, "apply", "-f", "-"],
        "apiVersion: test.komptroller.dev/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {size: 0, color: pink}\n",
    );
    assert!(!o.ok);
    assert!(
        o.stderr.contains(
            "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"
        ),
        "{}",
        o.stderr
    );
    assert!(
        o.stderr.contains("spec.color: Unsupported value: \"pink\""),
        "{}",
        o.stderr
    );
    let o = kubectl_in(
        &c,
        &["-n", &ns.name, "apply", "-f", "-"],
        "apiVersion: test.komptroller.dev/v1\nkind: Widget\nmetadata: {name: strict}\nspec: {size: 1, bogus: 2}\n",
    );
    assert!(
        !o.ok && o.stderr.contains("unknown field \"spec.bogus\""),
        "kubectl's default strict validation: {}",
        o.stderr
    );
    let o = kubectl_in(
        &c,
        &["-n", &ns.name, "apply", "--validate=warn", "-f", "-"],
        "apiVersion: test.komptroller.dev/v1\nkind: Widget\nmetadata: {name: warned}\nspec: {size: 1, bogus: 2}\n",
    );
    assert!(
        o.ok && o.stderr.contains("Warning: unknown field \"spec.bogus\""),
        "warnings printed: {}",
        o.stderr
    );
    // Built-ins through client-side apply (strategic merge patch on the second apply).
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {a: \"1\"}\n";
    assert!(kubectl_in(&c, &["-n", &ns.name, "apply", "-f", "-"], cm).ok);
    assert!(
        kubectl_in(
            &c,
            &["-n", &ns.name, "apply", "-f", "-"],
            &cm.replace("a: \"1\"", "b: \"2\"")
        )
        .ok
    );
    let o = kubectl(
        &c,
        &["-n", &ns.name, "get", "cm", "cfg", "-o", "jsonpath={.data}"],
    );
    assert_eq!(
        o.stdout, "{\"b\":\"2\"}",
        "the key dropped from the applied config is removed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn generators_send_protobuf() {
    let c = setup().await;
    let name = format!("gen-{}", std::process::id());
    assert!(kubectl(&c, &["create", "namespace", &name]).ok);
    assert!(
        kubectl(
            &c,
            &[
                "-n",
                &name,
                "create",
                "configmap",
                "c",
                "--from-literal=a=b"
            ]
        )
        .ok
    );
    assert!(
        kubectl(
            &c,
            &[
                "-n",
                &name,
                "create",
                "secret",
                "generic",
                "s",
                "--from-literal=p=q"
            ]
        )
        .ok
    );
    assert!(kubectl(&c, &["-n", &name, "create", "serviceaccount", "bot"]).ok);
    assert_eq!(
        kubectl(
            &c,
            &["-n", &name, "get", "cm", "c", "-o", "jsonpath={.data.a}"]
        )
        .stdout,
        "b"
    );
    assert_eq!(
        kubectl(
            &c,
            &[
                "-n",
                &name,
                "get",
                "secret",
                "s",
                "-o",
                "jsonpath={.data.p}"
            ]
        )
        .stdout,
        "cQ=="
    );
    // A Deployment: the real deployment and ReplicaSet controllers create
    // its pod, kwok runs it, and the rollout completes.
    let o = kubectl(
        &c,
        &["-n", &name, "create", "deployment", "d", "--image=busybox"],
    );
    assert!(o.ok, "{}", o.stderr);
    let o = kubectl(
        &c,
        &[
            "-n",
            &name,
            "rollout",
            "status",
            "deployment/d",
            "--timeout=60s",
        ],
    );
    assert!(
        o.ok && o.stdout.contains("successfully rolled out"),
        "{}{}",
        o.stdout,
        o.stderr
    );
    assert!(
        kubectl(
            &c,
            &["delete", "namespace", &name, "--wait=true", "--timeout=20s"]
        )
        .ok
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn server_side_apply_with_conflicts() {
    let c = setup().await;
    let ns = c.temp_namespace("kssa").await.unwrap();
    let w = |size: u32| {
        format!(
            "apiVersion: test.komptroller.dev/v1\nkind: Widget\nmetadata: {{name: s}}\nspec: {{size: {size}}}\n"
        )
    };
    let o = kubectl_in(
        &c,
        &["-n", &ns.name, "apply", "--server-side", "-f", "-"],
        &w(2),
    );
    assert!(o.ok && o.stdout.contains("serverside-applied"));
    let o = kubectl_in(
        &c,
        &[
            "-n",
            &ns.name,
            "apply",
            "--server-side",
            "--field-manager=other",
            "-f",
            "-",
        ],
        &w(3),
    );
    assert!(!o.ok);
    assert!(
        o.stderr.contains("conflict with \"kubectl\"") && o.stderr.contains(".spec.size"),
        "{}",
        o.stderr
    );
    let o = kubectl_in(
        &c,
        &[
            "-n",
            &ns.name,
            "apply",
            "--server-side",
            "--field-manager=other",
            "--force-conflicts",
            "-f",
            "-",
        ],
        &w(3),
    );
    assert!(o.ok);
    let o = kubectl(
        &c,
        &[
            "-n",
            &ns.name,
            "get",
            "wd",
            "s",
            "-o",
            "jsonpath={.spec.size} {.metadata.managedFields[*].manager}",
        ],
    );
    assert_eq!(o.stdout, "3 other");
    let o = kubectl_in(
        &c,
        &[
            "-n",
            &ns.name,
            "apply",
            "--server-side",
            "--dry-run=server",
            "-f",
            "-",
        ],
        &w(50).replace("name: s", "name: dry"),
    );
    assert!(o.ok);
    assert!(
        !kubectl(&c, &["-n", &ns.name, "get", "wd", "dry"]).ok,
        "server dry run stores nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_for_job_conditions() {
    // The real Job controller; pods on kwok nodes run for the annotated time.
    let c = setup().await;
    let ns = c.temp_namespace("kwait").await.unwrap();
    let job = |name: &str, runtime: &str, deadline: &str| {
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n  {deadline}\n  backoffLimit: 0\n  template:\n    metadata:\n      annotations: {{pod-complete.stage.kwok.x-k8s.io/delay: \"{runtime}\"}}\n    spec:\n      restartPolicy: Never\n      containers: [{{name: c, image: busybox}}]\n"
        )
    };
    assert!(
        kubectl_in(
            &c,
            &["-n", &ns.name, "apply", "-f", "-"],
            &job("ok", "2s", "completions: 1")
        )
        .ok
    );
    assert!(
        kubectl_in(
            &c,
            &["-n", &ns.name, "apply", "-f", "-"],
            &job("late", "1h", "activeDeadlineSeconds: 3")
        )
        .ok
    );
    let t0 = Instant::now();
    let o = kubectl(
        &c,
        &[
            "-n",
            &ns.name,
            "wait",
            "--for=condition=Complete",
            "job/ok",
            "--timeout=40s",
        ],
    );
    assert!(o.ok && o.stdout.contains("condition met"));
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "its pod runs 2 s: {:?}",
        t0.elapsed()
    );
    let o = kubectl(
        &c,
        &[
            "-n",
            &ns.name,
            "wait",
            "--for=condition=Failed",
            "job/late",
            "--timeout=20s",
        ],
    );
    assert!(o.ok);
    let o = kubectl(&c, &["-n", &ns.name, "get", "jobs"]);
    let late = o.stdout.lines().find(|l| l.starts_with("late")).unwrap();
    assert!(late.contains("Failed"), "{late}");
    let o = kubectl(
        &c,
        &[
            "-n",
            &ns.name,
            "get",
            "job",
            "late",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Failed\")].reason}",
        ],
    );
    assert_eq!(o.stdout, "DeadlineExceeded");
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_blocked_by_finalizer_until_removed() {
    let c = setup().await;
    let ns = c.temp_namespace("kfin").await.unwrap();
    let o = kubectl_in(
        &c,
        &["-n", &ns.name, "apply", "-f", "-"],
        "apiVersion: test.komptroller.dev/v1\nkind: Widget\nmetadata: {name: f, finalizers: [test.komptroller.dev/hold]}\nspec: {size: 1}\n",
    );
    assert!(o.ok);
    let o = kubectl(&c, &["-n", &ns.name, "delete", "wd", "f", "--wait=false"]);
    assert!(o.ok && o.stdout.contains("deleted"));
    let o = kubectl(
        &c,
        &[
            "-n",
            &ns.name,
            "wait",
            "--for=delete",
            "wd/f",
            "--timeout=1s",
        ],
    );
    assert!(!o.ok, "the finalizer blocks deletion");
    let o = kubectl(
        &c,
        &[
            "-n",
            &ns.name,
            "get",
            "wd",
            "f",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ],
    );
    assert!(!o.stdout.is_empty());
    let o = kubectl(
        &c,
        &[
            "-n",
            &ns.name,
            "patch",
            "wd",
            "f",
            "--type=json",
            "-p",
            "[{\"op\":\"remove\",\"path\":\"/metadata/finalizers\"}]",
        ],
    );
    assert!(o.ok);
    let o = kubectl(
        &c,
        &[
            "-n",
            &ns.name,
            "wait",
            "--for=delete",
            "wd/f",
            "--timeout=10s",
        ],
    );
    assert!(o.ok);
    assert!(!kubectl(&c, &["-n", &ns.name, "get", "wd", "f"]).ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn get_watch_streams_changes() {
    let c = setup().await;
    let ns = c.temp_namespace("kwatch").await.unwrap();
    assert!(kubectl_in(&c, &["-n", &ns.name, "apply", "-f", "-"], "apiVersion: test.komptroller.dev/v1\nkind: Widget\nmetadata: {name: first}\nspec: {size: 1}\n").ok);
    let mut child = c
        .kubectl()
        .args([
            "-n",
            &ns.name,
            "get",
            "widgets",
            "--watch",
            "--output-watch-events",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("kubectl");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("watch> {line}");
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(first.contains("EVENT") || first.contains("NAME"), "{first}");
    let mut lines = vec![first];
    assert!(kubectl_in(&c, &["-n", &ns.name, "apply", "-f", "-"], "apiVersion: test.komptroller.dev/v1\nkind: Widget\nmetadata: {name: second}\nspec: {size: 2}\n").ok);
    assert!(
        kubectl(
            &c,
            &[
                "-n",
                &ns.name,
                "patch",
                "wd",
                "first",
                "--type=merge",
                "-p",
                "{\"spec\":{\"size\":9}}"
            ]
        )
        .ok
    );
    assert!(kubectl(&c, &["-n", &ns.name, "delete", "wd", "second"]).ok);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && !lines
            .iter()
            .any(|l| l.starts_with("DELETED") && l.contains("second"))
    {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            lines.push(l);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let norm: Vec<Vec<&str>> = lines
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        norm.iter()
            .any(|l| l.len() >= 3 && l[0] == "ADDED" && l[1] == "first"),
        "{lines:?}"
    );
    assert!(
        norm.iter()
            .any(|l| l.len() >= 3 && l[0] == "ADDED" && l[1] == "second"),
        "{lines:?}"
    );
    assert!(
        norm.iter()
            .any(|l| l.len() >= 3 && l[0] == "MODIFIED" && l[1] == "first" && l[2] == "9"),
        "{lines:?}"
    );
    assert!(
        norm.iter()
            .any(|l| l.len() >= 2 && l[0] == "DELETED" && l[1] == "second"),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_can_i_with_rbac_and_impersonation() {
    let c = setup().await;
    let ns = c.temp_namespace("kauth").await.unwrap();
    let rbac = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: r, namespace: {n}}}\nrules: [{{apiGroups: [\"\"], resources: [configmaps], verbs: [get, list]}}]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: b, namespace: {n}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: r}}\nsubjects: [{{kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}}]\n",
        n = ns.name
    );
    assert!(kubectl_in(&c, &["apply", "-f", "-"], &rbac).ok);
    // `kubectl auth can-i` sends a protobuf SelfSubjectAccessReview.
    let o = kubectl(
        &c,
        &[
            "-n",
            &ns.name,
            "auth",
            "can-i",
            "list",
            "configmaps",
            "--as=alice",
        ],
    );
    assert_eq!(o.stdout.trim(), "yes");
    let o = kubectl(
        &c,
        &[
            "-n",
            &ns.name,
            "auth",
            "can-i",
            "delete",
            "configmaps",
            "--as=alice",
        ],
    );
    assert_eq!(o.stdout.trim(), "no");
    // The same review as JSON.
    let ssar = |verb: &str| {
        format!(
            "apiVersion: authorization.k8s.io/v1\nkind: SelfSubjectAccessReview\nspec:\n  resourceAttributes: {{namespace: {}, verb: {verb}, resource: configmaps}}\n",
            ns.name
        )
    };
    let o = kubectl_in(
        &c,
        &[
            "create",
            "--as=alice",
            "--validate=false",
            "-f",
            "-",
            "-o",
            "jsonpath={.status.allowed}",
        ],
        &ssar("list"),
    );
    assert_eq!(o.stdout.trim(), "true");
    let o = kubectl_in(
        &c,
        &[
            "create",
            "--as=alice",
            "--validate=false",
            "-f",
            "-",
            "-o",
            "jsonpath={.status.allowed}",
        ],
        &ssar("delete"),
    );
    assert_eq!(o.stdout.trim(), "false");
    let o = kubectl(&c, &["-n", &ns.name, "get", "secrets", "--as=alice"]);
    assert!(
        !o.ok
            && o.stderr.contains("Forbidden")
            && o.stderr
                .contains("User \"alice\" cannot list resource \"secrets\""),
        "{}",
        o.stderr
    );
    assert!(kubectl(&c, &["-n", &ns.name, "get", "configmaps", "--as=alice"]).ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn product_crds_with_kubectl_apply_and_get() {
    let c = setup().await;
    let crds = e2e::harness::crds_dir();
    let o = kubectl(&c, &["apply", "-f", crds.to_str().unwrap()]);
    assert!(
        o.ok,
        "kubectl apply -f crds/ (client-side apply: the last-applied annotation must fit 256 KiB)"
    );
    assert!(o.stdout.contains("trainingjobs.komptroller.dev"));
    assert!(
        kubectl(
            &c,
            &[
                "wait",
                "--for=condition=Established",
                "crd/trainingjobs.komptroller.dev",
                "--timeout=20s"
            ]
        )
        .ok
    );
    let ns = c.temp_namespace("ktj").await.unwrap();
    let example =
        std::fs::read_to_string(e2e::harness::repo_root().join("examples/trainingjob.yaml"))
            .unwrap();
    let example: String = example
        .lines()
        .filter(|l| !l.trim_start().starts_with("namespace:"))
        .collect::<Vec<_>>()
        .join("\n");
    let o = kubectl_in(&c, &["-n", &ns.name, "apply", "-f", "-"], &example);
    assert!(o.ok);
    let o = kubectl(&c, &["-n", &ns.name, "get", "tj"]);
    let header: Vec<&str> = o
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(header.first(), Some(&"NAME"));
    assert!(
        header.contains(&"PHASE") && header.contains(&"AGE"),
        "{header:?}"
    );
    // Too large for client-side apply's annotation, as on a real server.
    let big = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: big}}\ndata: {{x: \"{}\"}}\n",
        "y".repeat(300_000)
    );
    let o = kubectl_in(&c, &["-n", &ns.name, "apply", "-f", "-"], &big);
    assert!(!o.ok && o.stderr.contains("Too long"), "{}", o.stderr);
    assert!(
        kubectl_in(
            &c,
            &["-n", &ns.name, "apply", "--server-side", "-f", "-"],
            &big
        )
        .ok,
        "server-side apply has no annotation"
    );
}
