//! The ledger in the cluster: one immutable, cluster-scoped
//! `ComputeLedgerEntry` per entry, named `ledger-<seq, 12 digits>`.
//!
//! Entries are sealed (sequenced and chained) under the engine lock, so the
//! ledger order is the engine's order, and handed to one writer task that
//! creates up to [`WINDOW`] of them concurrently but acknowledges them in
//! sequence: `persisted` only ever covers a contiguous prefix. A reconcile
//! waits until its entries are in that prefix before it writes status or
//! creates a Job (write-ahead). A crash therefore leaves at most a tail of
//! entries whose effects never reached the cluster — possibly with holes in
//! the last [`WINDOW`] sequence numbers. On the next start the contiguous
//! prefix is the ledger; entries beyond a hole were never acknowledged (no
//! status, Job or report depends on them) and are deleted, with a warning
//! naming them, so their sequence numbers can be written again; the jobs
//! they concerned are decided afresh and nothing is duplicated.
//!
//! A create that finds the name taken reads the existing object: the same
//! canonical line means an earlier attempt of ours succeeded (idempotent);
//! a different one means another writer — the writer stops for good, counts
//! `komptroller_ledger_conflicts_total`, and the operator exits so it can
//! rebuild from the cluster. It never overwrites.

use std::sync::Arc;
use std::time::Duration;

use komptroller_engine::ledger::{LedgerEntry, verify_entries};
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};

use crate::crd::{ComputeLedgerEntry, ComputeLedgerEntrySpec};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Ledger entries written concurrently (acknowledged in order).
pub const WINDOW: usize = 32;

/// Object name of the entry with sequence `seq`.
pub fn entry_name(seq: u64) -> String {
    format!("ledger-{seq:012}")
}

/// The object that stores `entry`.
pub fn entry_object(entry: &LedgerEntry) -> Result<ComputeLedgerEntry> {
    let line = entry
        .canonical_line()
        .map_err(|e| Error::Ledger(e.to_string()))?;
    let line = String::from_utf8(line).map_err(|e| Error::Ledger(e.to_string()))?;
    let r = &entry.record;
    Ok(ComputeLedgerEntry {
        metadata: ObjectMeta {
            name: Some(entry_name(entry.seq)),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    "komptroller".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        spec: ComputeLedgerEntrySpec {
            sequence: entry.seq,
            kind: r.event.kind().to_string(),
            time: r.time.to_string(),
            job: r.job.as_ref().map(|j| j.to_string()),
            lineage: r.lineage.clone(),
            prev_hash: entry.prev_hash.to_hex(),
            hash: entry.hash.to_hex(),
            entry: line,
        },
    })
}

/// Reads every ledger entry from the cluster, in sequence order, and
/// verifies the chain (a broken chain stops the operator with the entry
/// named). Unacknowledged entries beyond a hole in the last [`WINDOW`]
/// sequence numbers (a crash mid-write) are deleted.
pub async fn load(client: &Client) -> Result<Vec<LedgerEntry>> {
    let api: Api<ComputeLedgerEntry> = Api::all(client.clone());
    let objects = list_objects(&api).await?;
    let (kept, orphans) = split_at_hole(objects)?;
    for o in orphans {
        tracing::warn!(
            entry = %entry_name(o.spec.sequence),
            "deleting an unacknowledged ledger entry beyond a hole left by a crash mid-write; its job is decided again"
        );
        match api
            .delete(&entry_name(o.spec.sequence), &Default::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    parse_objects(kept)
}

/// Every stored entry object, page by page.
async fn list_objects(api: &Api<ComputeLedgerEntry>) -> Result<Vec<ComputeLedgerEntry>> {
    let mut objects = Vec::new();
    let mut lp = ListParams::default().limit(2000);
    loop {
        let page = api.list(&lp).await?;
        let next = page.metadata.continue_.clone();
        objects.extend(page.items);
        match next {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    Ok(objects)
}

/// Reads back the persisted ledger, entries `0..upto` (what the writer has
/// acknowledged), verified. Unlike [`load`] it never deletes anything: the
/// writer may have entries beyond `upto` in flight.
pub async fn read_persisted(client: &Client, upto: u64) -> Result<Vec<LedgerEntry>> {
    let api: Api<ComputeLedgerEntry> = Api::all(client.clone());
    let mut objects = list_objects(&api).await?;
    objects.retain(|o| o.spec.sequence < upto);
    let entries = parse_objects(objects)?;
    if entries.len() as u64 != upto {
        return Err(Error::Ledger(format!(
            "stored ledger: {} of the {upto} acknowledged entries were read back",
            entries.len()
        )));
    }
    Ok(entries)
}

/// Splits stored entries into the contiguous prefix from sequence 0 and the
/// entries beyond its first hole. A hole further back than [`WINDOW`] from
/// the newest entry cannot come from a crash mid-write: that is an error.
pub fn split_at_hole(
    mut objects: Vec<ComputeLedgerEntry>,
) -> Result<(Vec<ComputeLedgerEntry>, Vec<ComputeLedgerEntry>)> {
    objects.sort_by_key(|o| o.spec.sequence);
    let prefix = objects
        .iter()
        .enumerate()
        .take_while(|(i, o)| o.spec.sequence == *i as u64)
        .count();
    let orphans = objects.split_off(prefix);
    if let Some(last) = orphans.last() {
        let hole = prefix as u64;
        if last.spec.sequence > hole + WINDOW as u64 {
            return Err(Error::Ledger(format!(
                "stored ledger: {} is missing but entries up to {} exist; the ledger was damaged, not interrupted",
                entry_name(hole),
                entry_name(last.spec.sequence)
            )));
        }
    }
    Ok((objects, orphans))
}

/// Parses and verifies stored entries (sorted by sequence).
pub fn parse_objects(mut objects: Vec<ComputeLedgerEntry>) -> Result<Vec<LedgerEntry>> {
    objects.sort_by_key(|o| o.spec.sequence);
    let mut entries = Vec::with_capacity(objects.len());
    for o in objects {
        let e: LedgerEntry = serde_json::from_str(&o.spec.entry).map_err(|e| {
            Error::Ledger(format!(
                "{}: spec.entry is not a ledger entry: {e}",
                entry_name(o.spec.sequence)
            ))
        })?;
        if e.seq != o.spec.sequence {
            return Err(Error::Ledger(format!(
                "{}: spec.sequence {} differs from the entry's seq {}",
                entry_name(o.spec.sequence),
                o.spec.sequence,
                e.seq
            )));
        }
        entries.push(e);
    }
    verify_entries(&entries).map_err(|e| Error::Ledger(format!("stored ledger: {e}")))?;
    Ok(entries)
}

/// Handle to the writer task.
#[derive(Clone)]
pub struct LedgerWriter {
    tx: mpsc::UnboundedSender<LedgerEntry>,
    /// Next sequence number not yet persisted (all below it are in the cluster).
    persisted: watch::Receiver<u64>,
    /// Set when another writer was detected.
    conflict: watch::Receiver<Option<String>>,
}

impl LedgerWriter {
    /// Starts the writer; `next_seq` is the first sequence number it will write.
    pub fn spawn(
        client: Client,
        metrics: Arc<Metrics>,
        next_seq: u64,
    ) -> (LedgerWriter, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (persisted_tx, persisted) = watch::channel(next_seq);
        let (conflict_tx, conflict) = watch::channel(None);
        let handle = tokio::spawn(write_loop(client, metrics, rx, persisted_tx, conflict_tx));
        (
            LedgerWriter {
                tx,
                persisted,
                conflict,
            },
            handle,
        )
    }

    /// Queues sealed entries (call in sealing order, under the engine lock).
    pub fn enqueue(&self, entries: impl IntoIterator<Item = LedgerEntry>) {
        for e in entries {
            let _ = self.tx.send(e);
        }
    }

    /// Waits until every entry below `next_seq` is persisted.
    pub async fn wait_persisted(&self, next_seq: u64) -> Result<()> {
        let mut persisted = self.persisted.clone();
        let mut conflict = self.conflict.clone();
        loop {
            if let Some(name) = conflict.borrow().clone() {
                return Err(Error::LedgerConflict { name });
            }
            if *persisted.borrow() >= next_seq {
                return Ok(());
            }
            let closed = tokio::select! {
                r = persisted.changed() => r.is_err(),
                r = conflict.changed() => r.is_err(),
            };
            if closed {
                // The writer stopped: say why if it was another writer.
                if let Some(name) = self.conflict.borrow().clone() {
                    return Err(Error::LedgerConflict { name });
                }
                return Err(Error::NotLeader);
            }
        }
    }

    /// Resolves when another writer is detected.
    pub async fn conflicted(&self) -> String {
        let mut conflict = self.conflict.clone();
        loop {
            if let Some(name) = conflict.borrow().clone() {
                return name;
            }
            if conflict.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Next sequence number not yet persisted.
    pub fn persisted(&self) -> u64 {
        *self.persisted.borrow()
    }
}

async fn write_loop(
    client: Client,
    metrics: Arc<Metrics>,
    mut rx: mpsc::UnboundedReceiver<LedgerEntry>,
    persisted: watch::Sender<u64>,
    conflict: watch::Sender<Option<String>>,
) {
    use futures::StreamExt;
    let api: Api<ComputeLedgerEntry> = Api::all(client);
    let mut inflight = futures::stream::FuturesOrdered::new();
    let mut closed = false;
    let mut report = tokio::time::interval(Duration::from_secs(2));
    let mut written = 0u64;
    loop {
        tokio::select! {
            _ = report.tick() => {
                tracing::debug!(
                    target: "komptroller::timing",
                    queued = rx.len(),
                    in_flight = inflight.len(),
                    written,
                    persisted = *persisted.borrow(),
                    "ledger writer"
                );
                written = 0;
            }
            e = rx.recv(), if !closed && inflight.len() < WINDOW => match e {
                Some(e) => inflight.push_back(write_with_retry(api.clone(), e)),
                None => closed = true,
            },
            r = inflight.next(), if !inflight.is_empty() => match r {
                Some(Ok(entry)) => {
                    written += 1;
                    metrics.observe_entry(&entry);
                    let _ = persisted.send(entry.seq + 1);
                }
                Some(Err(name)) => {
                    metrics.ledger_conflicts.inc();
                    tracing::error!(entry = %name, "ledger entry already exists with different content: another writer; stopping ledger writes");
                    let _ = conflict.send(Some(name));
                    return;
                }
                None => {}
            },
            else => return,
        }
    }
}

/// Writes one entry, retrying transient errors; `Err(name)` on another writer.
async fn write_with_retry(
    api: Api<ComputeLedgerEntry>,
    entry: LedgerEntry,
) -> std::result::Result<LedgerEntry, String> {
    let name = entry_name(entry.seq);
    let obj = match entry_object(&entry) {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(seq = entry.seq, error = %e, "cannot encode ledger entry; ledger writes stop");
            return Err(name);
        }
    };
    let mut backoff = Duration::from_millis(50);
    loop {
        match write_one(&api, &obj).await {
            Ok(()) => return Ok(entry),
            Err(Error::LedgerConflict { name }) => return Err(name),
            Err(e) => {
                tracing::warn!(entry = %name, error = %e, retry_in = ?backoff, "writing ledger entry failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Creates one entry; a taken name is fine only with identical content.
async fn write_one(api: &Api<ComputeLedgerEntry>, obj: &ComputeLedgerEntry) -> Result<()> {
    let name = obj.metadata.name.clone().unwrap_or_default();
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => match api.get_opt(&name).await? {
            Some(existing) if existing.spec.entry == obj.spec.entry => Ok(()),
            Some(_) => Err(Error::LedgerConflict { name }),
            // An injected or transient conflict with nothing there: retry.
            None => Err(Error::Ledger(format!("{name}: 409 but absent"))),
        },
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(seq: u64) -> ComputeLedgerEntry {
        ComputeLedgerEntry {
            metadata: ObjectMeta {
                name: Some(entry_name(seq)),
                ..Default::default()
            },
            spec: ComputeLedgerEntrySpec {
                sequence: seq,
                kind: "Started".into(),
                time: String::new(),
                job: None,
                lineage: None,
                prev_hash: String::new(),
                hash: String::new(),
                entry: String::new(),
            },
        }
    }

    #[test]
    fn names_are_zero_padded() {
        assert_eq!(entry_name(7), "ledger-000000000007");
    }

    #[test]
    fn a_crash_hole_in_the_last_window_leaves_the_prefix_and_orphans() {
        let objects = [0, 1, 2, 4, 6].into_iter().map(stored).collect();
        let (kept, orphans) = split_at_hole(objects).unwrap();
        let seqs = |v: &[ComputeLedgerEntry]| v.iter().map(|o| o.spec.sequence).collect::<Vec<_>>();
        assert_eq!(seqs(&kept), [0, 1, 2]);
        assert_eq!(seqs(&orphans), [4, 6]);
    }

    #[test]
    fn a_hole_far_behind_the_head_is_damage() {
        let mut seqs: Vec<u64> = (0..10).collect();
        seqs.extend(11..(12 + WINDOW as u64));
        let err = split_at_hole(seqs.into_iter().map(stored).collect()).unwrap_err();
        assert!(err.to_string().contains("ledger-000000000010"), "{err}");
    }
}
