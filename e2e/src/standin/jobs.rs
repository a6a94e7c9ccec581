//! The Job lifecycle simulator. The stand-in runs no pods, so it plays the
//! Job controller: a Job that is not suspended becomes active with a
//! `startTime`; after the runtime in the annotation
//! `e2e.komptroller.dev/runtime` (on the Job or its pod template; absent:
//! runs forever) it completes; at `activeDeadlineSeconds` it fails with
//! `DeadlineExceeded`. Conditions follow Kubernetes ≥ 1.31: `SuccessCriteriaMet`
//! then `Complete`, `FailureTarget` then `Failed`.
//!
//! Time runs `time_scale` times faster than the wall clock. Durations in
//! status are simulated: `completionTime - startTime` equals the runtime.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::Server;
use super::resources::ResKey;
use super::store::meta_str;

/// The annotation giving a simulated Job's runtime.
pub const RUNTIME_ANNOTATION: &str = "e2e.komptroller.dev/runtime";

/// Parses `30s`, `5m`, `1h30m`, `250ms`, `2d` (as Go's time.ParseDuration, plus days).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let v: f64 = num.parse().ok()?;
        num.clear();
        let mult = match unit.as_str() {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return None,
        };
        total += v * mult;
        any = true;
    }
    if !num.is_empty() || !any {
        return None;
    }
    Some(Duration::from_secs_f64(total))
}

fn runtime_of(job: &Value) -> Option<Duration> {
    let ann = |v: Option<&Value>| {
        v.and_then(|a| a.get(RUNTIME_ANNOTATION))
            .and_then(Value::as_str)
            .and_then(parse_duration)
    };
    ann(job.pointer("/metadata/annotations"))
        .or_else(|| ann(job.pointer("/spec/template/metadata/annotations")))
}

fn ts(t: jiff::Timestamp) -> String {
    jiff::Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

fn condition(type_: &str, reason: &str, message: &str, at: &str) -> Value {
    json!({"type": type_, "status": "True", "reason": reason, "message": message,
           "lastProbeTime": at, "lastTransitionTime": at})
}

/// One step of the simulated Job controller for one Job; `None` if unchanged.
pub fn step(
    job: &Value,
    now: jiff::Timestamp,
    scale: f64,
    started_wall: &mut std::collections::HashMap<String, jiff::Timestamp>,
) -> Option<Value> {
    let status = job.get("status").cloned().unwrap_or(json!({}));
    let conds = status
        .get("conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let has = |t: &str| {
        conds.iter().any(|c| {
            c.get("type").and_then(Value::as_str) == Some(t)
                && c.get("status").and_then(Value::as_str) == Some("True")
        })
    };
    if has("Complete") || has("Failed") {
        return None;
    }
    if job.pointer("/metadata/deletionTimestamp").is_some() {
        return None;
    }
    let uid = meta_str(job, "uid").to_string();
    let suspended = job.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true);
    let parallelism = job
        .pointer("/spec/parallelism")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let completions = job
        .pointer("/spec/completions")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let mut new = job.clone();
    let now_s = ts(now);
    if suspended {
        let already = conds.iter().any(|c| {
            c.get("type").and_then(Value::as_str) == Some("Suspended")
                && c.get("status").and_then(Value::as_str) == Some("True")
        });
        if already && status.get("active").and_then(Value::as_i64).unwrap_or(0) == 0 {
            return None;
        }
        let mut cs: Vec<Value> = conds
            .into_iter()
            .filter(|c| c.get("type").and_then(Value::as_str) != Some("Suspended"))
            .collect();
        cs.push(condition(
            "Suspended",
            "JobSuspended",
            "Job suspended",
            &now_s,
        ));
        new["status"] = json!({"conditions": cs, "active": 0, "ready": 0, "terminating": 0, "uncountedTerminatedPods": {}});
        if let Some(st) = status.get("startTime") {
            new["status"]["startTime"] = st.clone();
        }
        started_wall.remove(&uid);
        return Some(new);
    }
    let start: jiff::Timestamp = match status
        .get("startTime")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
    {
        Some(s)
            if started_wall.contains_key(&uid)
                || status.get("active").and_then(Value::as_i64).unwrap_or(0) > 0 =>
        {
            s
        }
        _ => {
            // Start (or resume): the Job controller sets startTime and creates pods.
            let mut cs: Vec<Value> = conds
                .into_iter()
                .map(|mut c| {
                    if c.get("type").and_then(Value::as_str) == Some("Suspended") {
                        c["status"] = json!("False");
                        c["reason"] = json!("JobResumed");
                        c["message"] = json!("Job resumed");
                        c["lastTransitionTime"] = json!(now_s);
                    }
                    c
                })
                .collect();
            cs.retain(|c| !c.is_null());
            let mut st = json!({"startTime": now_s, "active": parallelism.min(completions), "ready": parallelism.min(completions), "terminating": 0, "uncountedTerminatedPods": {}});
            if !cs.is_empty() {
                st["conditions"] = json!(cs);
            }
            new["status"] = st;
            started_wall.insert(uid, now);
            return Some(new);
        }
    };
    let wall_start = *started_wall.entry(uid.clone()).or_insert(start);
    let elapsed_wall = (now.as_millisecond() - wall_start.as_millisecond()).max(0) as f64 / 1000.0;
    let simulated = elapsed_wall * scale;
    let deadline = job
        .pointer("/spec/activeDeadlineSeconds")
        .and_then(Value::as_i64)
        .map(|d| d as f64);
    let runtime = runtime_of(job).map(|d| d.as_secs_f64());
    let at = |secs: f64| ts(start + jiff::SignedDuration::from_secs_f64(secs));
    let finish_failed = deadline.is_some_and(|d| simulated >= d && runtime.is_none_or(|r| r > d));
    if finish_failed {
        let d = deadline.unwrap_or(0.0);
        let when = at(d);
        let msg = "Job was active longer than specified deadline";
        let mut cs = conds;
        cs.push(condition("FailureTarget", "DeadlineExceeded", msg, &when));
        cs.push(condition("Failed", "DeadlineExceeded", msg, &when));
        new["status"] = json!({
            "startTime": status.get("startTime").cloned().unwrap_or(json!(ts(start))),
            "active": 0, "ready": 0, "terminating": 0,
            "failed": status.get("active").and_then(Value::as_i64).unwrap_or(parallelism.min(completions)),
            "conditions": cs, "uncountedTerminatedPods": {},
        });
        started_wall.remove(&uid);
        return Some(new);
    }
    if let Some(r) = runtime
        && simulated >= r
    {
        let when = at(r);
        let mut cs = conds;
        cs.push(condition(
            "SuccessCriteriaMet",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
            &when,
        ));
        cs.push(condition(
            "Complete",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
            &when,
        ));
        let mut st = json!({
            "startTime": status.get("startTime").cloned().unwrap_or(json!(ts(start))),
            "completionTime": when,
            "active": 0, "ready": 0, "terminating": 0, "succeeded": completions,
            "conditions": cs, "uncountedTerminatedPods": {},
        });
        if job.pointer("/spec/completionMode").and_then(Value::as_str) == Some("Indexed") {
            st["completedIndexes"] = json!(if completions == 1 {
                "0".to_string()
            } else {
                format!("0-{}", completions - 1)
            });
        }
        new["status"] = st;
        started_wall.remove(&uid);
        return Some(new);
    }
    None
}

/// When (wall clock) a started Job next needs a look: its runtime or its
/// deadline, whichever comes first in simulated time; `None`: never.
fn due_at(job: &Value, wall_start: jiff::Timestamp, scale: f64) -> Option<jiff::Timestamp> {
    let deadline = job
        .pointer("/spec/activeDeadlineSeconds")
        .and_then(Value::as_i64)
        .map(|d| d as f64);
    let runtime = runtime_of(job).map(|d| d.as_secs_f64());
    let first = match (deadline, runtime) {
        (Some(d), Some(r)) => d.min(r),
        (Some(x), None) | (None, Some(x)) => x,
        (None, None) => return None,
    };
    Some(wall_start + jiff::SignedDuration::from_secs_f64(first / scale))
}

/// Runs the simulator until the runtime stops. Each tick looks only at Jobs
/// changed since the previous tick and at started Jobs whose runtime or
/// deadline has come, so thousands of running Jobs cost nothing between events.
pub async fn run(server: Arc<Server>) {
    let mut tick = tokio::time::interval(Duration::from_millis(25));
    let mut started_wall = std::collections::HashMap::new();
    let key = ResKey::new("batch", "jobs");
    let mut seen_rv = 0u64;
    let mut running: std::collections::HashMap<(String, String), Option<jiff::Timestamp>> =
        std::collections::HashMap::new();
    loop {
        tick.tick().await;
        if server.faults().paused {
            continue;
        }
        let now = jiff::Timestamp::now();
        let mut store = server.lock();
        let mut candidates: Vec<(String, String)> = running
            .iter()
            .filter(|(_, due)| due.is_some_and(|d| d <= now))
            .map(|(k, _)| k.clone())
            .collect();
        if seen_rv < store.compacted_rv {
            candidates.extend(store.list(&key, None).iter().map(|j| {
                (
                    meta_str(j, "namespace").to_string(),
                    meta_str(j, "name").to_string(),
                )
            }));
        } else {
            let start = store.history.partition_point(|e| e.rv <= seen_rv);
            for e in store.history.range(start..) {
                if e.res == key {
                    candidates.push((e.ns.clone(), meta_str(&e.obj, "name").to_string()));
                }
            }
        }
        candidates.sort();
        candidates.dedup();
        for (ns, name) in candidates {
            let id = (ns, name);
            let Some(job) = store.get(&key, &id.0, &id.1) else {
                running.remove(&id);
                continue;
            };
            let current = match step(&job, now, server.time_scale, &mut started_wall) {
                Some(mut updated) => {
                    if let Some(m) = updated.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.remove("resourceVersion");
                    }
                    store.put(&key, updated)
                }
                None => job,
            };
            let uid = meta_str(&current, "uid");
            match started_wall.get(uid) {
                Some(wall_start) => {
                    running.insert(id, due_at(&current, *wall_start, server.time_scale));
                }
                None => {
                    running.remove(&id);
                }
            }
        }
        seen_rv = store.rv;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration(""), None);
    }
}
