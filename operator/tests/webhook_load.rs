//! Webhook load benchmark: a steady 200 requests/s over TLS on
//! loopback against the real server (axum + rustls, hot-reloadable
//! certificate), open loop — each request is timed from the instant it was
//! scheduled, so a slow answer delays the clock, not the schedule. The mix
//! is 50% TrainingJob validations (catalog, template, a scratch engine
//! decision against the fixture policies), 25% TrainingJob mutations and 25%
//! ComputePolicy validations. A timing never decides pass/fail: the test
//! fails only on errors; the numbers go to BENCHMARKS.md.
//!
//! ```sh
//! cargo test --release -p komptroller --test webhook_load -- --ignored --nocapture
//! # WEBHOOK_LOAD_RATE=200 WEBHOOK_LOAD_SECONDS=30 WEBHOOK_LOAD_CONNECTIONS=8 (defaults)
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod webhook_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use komptroller::webhook::certs::{ReloadingResolver, certified_key, generate_ca, issue_serving};
use komptroller::webhook::review::Route;
use komptroller::webhook::server;
use rustls::pki_types::ServerName;
use std::future::poll_fn;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use webhook_common::{FixedView, fixture};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
async fn webhook_200_rps_over_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rate = env("WEBHOOK_LOAD_RATE", 200);
    let seconds = env("WEBHOOK_LOAD_SECONDS", 30);
    let connections = env("WEBHOOK_LOAD_CONNECTIONS", 8) as usize;

    // In-process cost of one answer per fixture (no TLS, no HTTP), for reference.
    {
        let view = FixedView::load();
        for name in [
            "tj-create-small",
            "tj-create-escalate",
            "tj-mutate-create",
            "policy-valid",
        ] {
            let route = match name {
                "tj-mutate-create" => Route::MutateTrainingJob,
                "policy-valid" => Route::ValidateComputePolicy,
                _ => Route::ValidateTrainingJob,
            };
            let body = fixture(name);
            let n = 2000;
            let t = Instant::now();
            for _ in 0..n {
                let a = komptroller::webhook::review::handle(
                    route,
                    &body,
                    &view,
                    jiff::Timestamp::now(),
                )
                .await;
                assert!(a.allowed);
            }
            println!(
                "in-process {name}: {:.1} µs per review",
                t.elapsed().as_secs_f64() * 1e6 / n as f64
            );
        }
    }
    // Server: the production router and TLS listener, certificate from the self-managed code path.
    let now = jiff::Timestamp::now();
    let (ca, ca_key) = generate_ca(now, 86_400).unwrap();
    let (cert, key) = issue_serving(&ca, &ca_key, &["127.0.0.1".into()], now, 3_600).unwrap();
    let resolver = Arc::new(ReloadingResolver::new(certified_key(&cert, &key).unwrap()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::run(
        listener,
        resolver,
        Arc::new(FixedView::load()),
        async {
            let _ = stop_rx.await;
        },
    ));

    // Client: keep-alive HTTP/1.1 connections trusting the CA.
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let bodies: Vec<(Route, Bytes)> = vec![
        (
            Route::ValidateTrainingJob,
            Arc::new(fixture("tj-create-small")),
        ),
        (
            Route::MutateTrainingJob,
            Arc::new(fixture("tj-mutate-create")),
        ),
        (
            Route::ValidateTrainingJob,
            Arc::new(fixture("tj-create-escalate")),
        ),
        (
            Route::ValidateComputePolicy,
            Arc::new(fixture("policy-valid")),
        ),
    ];
    let (work_tx, work_rx) = async_channel(rate as usize * seconds as usize);
    let results = Arc::new(std::sync::Mutex::new(Vec::<Result<Duration, String>>::new()));
    let mut workers = Vec::new();
    for _ in 0..connections {
        let tls = tls.clone();
        let rx = work_rx.clone();
        let results = results.clone();
        workers.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
                .await
                .unwrap();
            let mut stream = stream;
            while let Ok((scheduled, route, body)) = rx.recv().await {
                let r = exchange(&mut stream, route, &body)
                    .await
                    .map(|()| scheduled.elapsed());
                results.lock().unwrap().push(r);
            }
        }));
    }
    // Warm-up: one of each, not counted.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let total = rate * seconds;
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::from_std(start), period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..total {
        ticker.tick().await;
        let scheduled = start + period * i as u32;
        let (route, body) = bodies[i as usize % bodies.len()].clone();
        work_tx.send((scheduled, route, body)).await.unwrap();
    }
    drop(work_tx);
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = start.elapsed();
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();

    let results = results.lock().unwrap();
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let mut lat: Vec<Duration> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    lat.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "webhook load: {} requests at {rate}/s over TLS ({connections} connections) in {:.1}s = {:.1} req/s; errors {}; latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
        results.len(),
        elapsed.as_secs_f64(),
        results.len() as f64 / elapsed.as_secs_f64(),
        errors.len(),
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.90)),
        ms(percentile(&lat, 0.99)),
        ms(percentile(&lat, 0.999)),
        ms(lat.last().copied().unwrap_or_default()),
    );
    assert!(
        errors.is_empty(),
        "errors: {:?}",
        &errors[..errors.len().min(5)]
    );
    assert_eq!(results.len() as u64, total);
}

type Bytes = Arc<Vec<u8>>;
type Work = (Instant, Route, Bytes);

/// One HTTP/1.1 keep-alive request and its response; the answer must allow.
/// (Hand-rolled on poll functions: the crate's tokio has no io-util.)
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    route: Route,
    body: &[u8],
) -> Result<(), String> {
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        route.path(),
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    let mut buf: &[u8] = &out;
    while !buf.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *stream).poll_write(cx, buf))
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed while writing".into());
        }
        buf = &buf[n..];
    }
    poll_fn(|cx| Pin::new(&mut *stream).poll_flush(cx))
        .await
        .map_err(|e| e.to_string())?;
    let mut got: Vec<u8> = Vec::new();
    let mut tmp = vec![0u8; 64 * 1024];
    let (header_end, length) = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..i]).to_string();
            let length = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .ok_or("no content-length")?;
            break (i + 4, length);
        }
        read_more(stream, &mut got, &mut tmp).await?;
    };
    while got.len() < header_end + length {
        read_more(stream, &mut got, &mut tmp).await?;
    }
    let status_line = String::from_utf8_lossy(&got[..header_end])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let v: serde_json::Value =
        serde_json::from_slice(&got[header_end..header_end + length]).map_err(|e| e.to_string())?;
    if !status_line.starts_with("HTTP/1.1 200") || v["response"]["allowed"] != true {
        return Err(format!("{status_line}: {v}"));
    }
    Ok(())
}

async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    got: &mut Vec<u8>,
    tmp: &mut [u8],
) -> Result<(), String> {
    let mut rb = ReadBuf::new(tmp);
    poll_fn(|cx| Pin::new(&mut *stream).poll_read(cx, &mut rb))
        .await
        .map_err(|e| e.to_string())?;
    if rb.filled().is_empty() {
        return Err("connection closed while reading".into());
    }
    got.extend_from_slice(rb.filled());
    Ok(())
}

/// A multi-consumer queue from tokio primitives (no extra dependency).
fn async_channel(cap: usize) -> (WorkSender, WorkReceiver) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Work>(cap.max(1));
    (
        WorkSender(tx),
        WorkReceiver(Arc::new(tokio::sync::Mutex::new(rx))),
    )
}

struct WorkSender(tokio::sync::mpsc::Sender<Work>);
impl WorkSender {
    async fn send(&self, w: Work) -> Result<(), String> {
        self.0.send(w).await.map_err(|e| e.to_string())
    }
}

#[derive(Clone)]
struct WorkReceiver(Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Work>>>);
impl WorkReceiver {
    async fn recv(&self) -> Result<Work, ()> {
        self.0.lock().await.recv().await.ok_or(())
    }
}
