//! Object storage with one monotonic resourceVersion for everything, an
//! event history for watches (compactable, which forces 410 Gone), and a
//! broadcast of new events to live watchers.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::broadcast;

use super::resources::{Registry, ResKey};

/// Kind of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change to one object.
pub struct Event {
    pub rv: u64,
    pub res: ResKey,
    pub ns: String,
    pub type_: EventType,
    pub obj: Arc<Value>,
    /// The object before this change (for selector transitions).
    pub prev: Option<Arc<Value>>,
    json: OnceLock<Bytes>,
}

impl Event {
    /// The object serialized once and shared by all watchers.
    pub fn obj_json(&self) -> Bytes {
        self.json
            .get_or_init(|| Bytes::from(serde_json::to_vec(&*self.obj).unwrap_or_default()))
            .clone()
    }
}

type ObjKey = (String, String);

/// Backlog events and a receiver for what follows them.
pub type Subscription = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>);

/// The state behind the single lock.
pub struct Store {
    pub rv: u64,
    pub registry: Registry,
    pub objects: HashMap<ResKey, BTreeMap<ObjKey, Arc<Value>>>,
    /// uid → where the object lives.
    pub uids: HashMap<String, (ResKey, String, String)>,
    /// owner uid → dependents (by uid).
    pub dependents: HashMap<String, HashSet<String>>,
    pub history: VecDeque<Arc<Event>>,
    pub history_limit: usize,
    /// Events with rv ≤ this are gone from history.
    pub compacted_rv: u64,
    pub tx: broadcast::Sender<Arc<Event>>,
}

/// Metadata string accessor.
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn owner_uids(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str))
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let (tx, _) = broadcast::channel(1 << 16);
        Self {
            rv: 1,
            registry: Registry::with_builtins(),
            objects: HashMap::new(),
            uids: HashMap::new(),
            dependents: HashMap::new(),
            history: VecDeque::new(),
            history_limit,
            compacted_rv: 1,
            tx,
        }
    }

    pub fn get(&self, res: &ResKey, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.objects
            .get(res)
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
            .cloned()
    }

    pub fn get_by_uid(&self, uid: &str) -> Option<(ResKey, Arc<Value>)> {
        let (res, ns, name) = self.uids.get(uid)?;
        self.get(res, ns, name).map(|o| (res.clone(), o))
    }

    /// Objects of a resource, optionally in one namespace, in key order.
    pub fn list(&self, res: &ResKey, ns: Option<&str>) -> Vec<Arc<Value>> {
        let Some(m) = self.objects.get(res) else {
            return Vec::new();
        };
        match ns {
            Some(ns) => m
                .range((ns.to_string(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, v)| v.clone())
                .collect(),
            None => m.values().cloned().collect(),
        }
    }

    pub fn count(&self) -> usize {
        self.objects.values().map(BTreeMap::len).sum()
    }

    /// Stores `obj` (create or update): assigns the next resourceVersion.
    pub fn put(&mut self, res: &ResKey, mut obj: Value) -> Arc<Value> {
        self.rv += 1;
        let rv = self.rv;
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
        let ns = meta_str(&obj, "namespace").to_string();
        let name = meta_str(&obj, "name").to_string();
        let uid = meta_str(&obj, "uid").to_string();
        let obj = Arc::new(obj);
        let prev = self
            .objects
            .entry(res.clone())
            .or_default()
            .insert((ns.clone(), name.clone()), obj.clone());
        if let Some(p) = &prev {
            for o in owner_uids(p) {
                if let Some(set) = self.dependents.get_mut(&o) {
                    set.remove(&uid);
                }
            }
        }
        for o in owner_uids(&obj) {
            self.dependents.entry(o).or_default().insert(uid.clone());
        }
        self.uids.insert(uid, (res.clone(), ns.clone(), name));
        let type_ = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.emit(res, ns, type_, obj.clone(), prev);
        obj
    }

    /// Removes an object; the DELETED event carries a new resourceVersion.
    pub fn remove(&mut self, res: &ResKey, ns: &str, name: &str) -> Option<Arc<Value>> {
        let prev = self
            .objects
            .get_mut(res)?
            .remove(&(ns.to_string(), name.to_string()))?;
        self.rv += 1;
        let uid = meta_str(&prev, "uid").to_string();
        self.uids.remove(&uid);
        for o in owner_uids(&prev) {
            if let Some(set) = self.dependents.get_mut(&o) {
                set.remove(&uid);
            }
        }
        let mut last = (*prev).clone();
        if let Some(m) = last.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        }
        let last = Arc::new(last);
        self.emit(
            res,
            ns.to_string(),
            EventType::Deleted,
            last.clone(),
            Some(prev),
        );
        Some(last)
    }

    fn emit(
        &mut self,
        res: &ResKey,
        ns: String,
        type_: EventType,
        obj: Arc<Value>,
        prev: Option<Arc<Value>>,
    ) {
        let ev = Arc::new(Event {
            rv: self.rv,
            res: res.clone(),
            ns,
            type_,
            obj,
            prev,
            json: OnceLock::new(),
        });
        self.history.push_back(ev.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted_rv = old.rv;
            }
        }
        // No receivers is fine.
        let _ = self.tx.send(ev);
    }

    /// Drops all history: watches from any earlier resourceVersion get 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted_rv = self.rv;
    }

    /// Events after `from` for `res` and a live receiver, or `None` if `from`
    /// is older than the compacted history (410 Gone).
    pub fn subscribe_from(&self, res: &ResKey, from: u64) -> Option<Subscription> {
        if from < self.compacted_rv {
            return None;
        }
        let rx = self.tx.subscribe();
        let start = self.history.partition_point(|e| e.rv <= from);
        let backlog = self
            .history
            .range(start..)
            .filter(|e| &e.res == res)
            .cloned()
            .collect();
        Some((backlog, rx))
    }

    /// Whether an owner uid refers to an existing object.
    pub fn uid_exists(&self, uid: &str) -> bool {
        self.uids.contains_key(uid)
    }
}
