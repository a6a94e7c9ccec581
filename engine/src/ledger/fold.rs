//! How ledger entries fold into lineage totals, the one home of the rule
//! that the engine's replay, report totals, metrics and the leader's
//! rebuild all follow:
//!
//! - A Decided record with verdict Admit charges its `charged` FLOP onto
//!   every lineage in `chargedLineages`, in that order, or onto the record's
//!   own lineage when that list is empty; the job is remembered as admitted
//!   under those lineages (a later admission of the same job replaces it).
//! - A Finished, DeadlineExceeded or Deleted record meters its consumed FLOP
//!   and accelerator-seconds onto the lineages the job was last admitted
//!   under, or onto its own lineage if it never was.
//!
//! [`LineageFold`] keeps that memory; each caller keeps beside the lineages
//! what else it attributes metering to (a report's namespace, accelerator
//! and tier; the metrics' labels) and adds the amounts to its own sums in
//! the order [`Effect`] gives them, so floating-point totals are the same
//! whichever caller computed them.

use std::collections::HashMap;

use super::facts::{EventFacts, JobRef, RecordFacts, StrList};
use crate::decision::Verdict;
use crate::units::{AcceleratorSeconds, Flop};

/// The lineages an admission charges: `chargedLineages`, or the record's own
/// lineage when that list is empty.
#[derive(Clone, Copy, Debug)]
pub struct ChargedLineages<'r> {
    listed: StrList<'r>,
    own: Option<&'r str>,
}

impl<'r> ChargedLineages<'r> {
    pub fn of(charged_lineages: StrList<'r>, own: Option<&'r str>) -> ChargedLineages<'r> {
        ChargedLineages {
            listed: charged_lineages,
            own: if charged_lineages.is_empty() {
                own
            } else {
                None
            },
        }
    }

    /// In charging order (the job's own lineage first).
    pub fn iter(&self) -> impl Iterator<Item = &'r str> + use<'r> {
        self.listed.iter().chain(self.own)
    }

    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_string).collect()
    }
}

impl<'a> RecordFacts<'a> {
    /// The FLOP an admission charges and the lineages it charges them on
    /// ([`ChargedLineages`]). `None` unless this is an admission.
    pub fn admitted(&self) -> Option<(Flop, impl Iterator<Item = &'a str> + use<'a>)> {
        match self.event {
            EventFacts::Decided {
                verdict: Verdict::Admit,
                charged,
                charged_lineages,
                ..
            } => Some((
                charged,
                ChargedLineages::of(charged_lineages, self.lineage).iter(),
            )),
            _ => None,
        }
    }
}

/// What the fold remembers of a job's latest admission: the lineages it was
/// charged on, and what the caller keeps besides (`extra`).
#[derive(Clone, Debug)]
pub struct Admitted<A> {
    pub lineages: Vec<String>,
    pub extra: A,
}

/// What one record does to lineage totals.
#[derive(Debug)]
pub enum Effect<'f, 'r, A> {
    /// An admission: `charged` FLOP onto each of `lineages`.
    Charged {
        charged: Flop,
        lineages: ChargedLineages<'r>,
    },
    /// Metering, onto the lineages of `admitted` when the job was admitted,
    /// else onto `own` (the record's lineage): see [`Effect::metered_onto`].
    Metered {
        consumed: Flop,
        accelerator_seconds: AcceleratorSeconds,
        admitted: Option<&'f Admitted<A>>,
        own: Option<&'r str>,
    },
    /// Any other record (an admission refused, an approval, a start, a
    /// policy change): no effect on totals.
    None,
}

impl<'f, 'r: 'f, A> Effect<'f, 'r, A> {
    /// For [`Effect::Metered`], the lineages the metering goes onto, in
    /// order; nothing for other effects.
    pub fn metered_onto(&self) -> impl Iterator<Item = &'f str> + use<'f, 'r, A> {
        let (admitted, own) = match self {
            Effect::Metered {
                admitted: Some(a), ..
            } => (Some(a.lineages.as_slice()), None),
            Effect::Metered {
                admitted: None,
                own,
                ..
            } => (None, *own),
            _ => (None, None),
        };
        admitted
            .into_iter()
            .flatten()
            .map(String::as_str)
            .chain(own)
    }
}

/// The memory of which lineages each job was admitted under, by job.
#[derive(Clone, Debug)]
pub struct LineageFold<A = ()> {
    admitted: HashMap<String, Admitted<A>>,
    /// Scratch for [`job_key`], so lookups do not allocate.
    key: String,
}

impl<A> Default for LineageFold<A> {
    fn default() -> Self {
        LineageFold {
            admitted: HashMap::new(),
            key: String::new(),
        }
    }
}

/// One string for a job identity (namespace, name, uid), written into `out`.
fn job_key(out: &mut String, j: &JobRef<'_>) {
    out.clear();
    for (i, part) in [j.namespace, j.name, j.uid].into_iter().enumerate() {
        if i > 0 {
            // Not allowed in Kubernetes names, so the parts cannot run together.
            out.push('\u{0}');
        }
        out.push_str(part);
    }
}

impl<A> LineageFold<A> {
    pub fn new() -> LineageFold<A> {
        LineageFold::default()
    }

    /// Folds one record (call in ledger order): what it charges or meters,
    /// and onto which lineages. An admission of a job is remembered with
    /// `extra()` beside its lineages (`extra` is called only then).
    pub fn fold<'f, 'r>(
        &'f mut self,
        r: &RecordFacts<'r>,
        extra: impl FnOnce() -> A,
    ) -> Effect<'f, 'r, A> {
        match r.event {
            EventFacts::Decided {
                verdict: Verdict::Admit,
                charged,
                charged_lineages,
                ..
            } => {
                let lineages = ChargedLineages::of(charged_lineages, r.lineage);
                if let Some(job) = &r.job {
                    job_key(&mut self.key, job);
                    let admitted = Admitted {
                        lineages: lineages.to_vec(),
                        extra: extra(),
                    };
                    if let Some(a) = self.admitted.get_mut(self.key.as_str()) {
                        *a = admitted;
                    } else {
                        self.admitted.insert(self.key.clone(), admitted);
                    }
                }
                Effect::Charged { charged, lineages }
            }
            EventFacts::Metered {
                consumed,
                accelerator_seconds,
            } => {
                let admitted = match &r.job {
                    Some(j) => {
                        job_key(&mut self.key, j);
                        self.admitted.get(self.key.as_str())
                    }
                    None => None,
                };
                Effect::Metered {
                    consumed,
                    accelerator_seconds,
                    admitted,
                    own: r.lineage,
                }
            }
            EventFacts::Decided { .. } | EventFacts::Other => Effect::None,
        }
    }

    /// Forgets a job's admission (a caller that keeps memory only for jobs
    /// not yet metered); its later metering goes onto its own lineage.
    pub fn forget(&mut self, job: &JobRef<'_>) {
        job_key(&mut self.key, job);
        self.admitted.remove(self.key.as_str());
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;

    fn job() -> JobRef<'static> {
        JobRef {
            namespace: "ml",
            name: "ft",
            uid: "u",
        }
    }

    fn admit<'a>(listed: &'a [String], charged: f64) -> RecordFacts<'a> {
        RecordFacts {
            time: Timestamp::UNIX_EPOCH,
            job: Some(job()),
            lineage: Some("ft"),
            base_lineage: None,
            accelerator: None,
            event: EventFacts::Decided {
                verdict: Verdict::Admit,
                policy: None,
                tier: None,
                charged: Flop(charged),
                charged_lineages: StrList::Owned(listed),
                selected_by: None,
            },
        }
    }

    fn metered(job: Option<JobRef<'static>>) -> RecordFacts<'static> {
        RecordFacts {
            time: Timestamp::UNIX_EPOCH,
            job,
            lineage: Some("ft"),
            base_lineage: None,
            accelerator: None,
            event: EventFacts::Metered {
                consumed: Flop(2.0),
                accelerator_seconds: AcceleratorSeconds(3.0),
            },
        }
    }

    fn onto(effect: &Effect<'_, '_, u8>) -> Vec<String> {
        effect.metered_onto().map(str::to_string).collect()
    }

    #[test]
    fn an_admission_charges_its_listed_lineages_else_its_own() {
        let mut fold = LineageFold::<u8>::new();
        let listed = vec!["ft".to_string(), "base".to_string()];
        match fold.fold(&admit(&listed, 5.0), || 1) {
            Effect::Charged { charged, lineages } => {
                assert_eq!(charged, Flop(5.0));
                assert_eq!(lineages.to_vec(), listed);
            }
            other => panic!("{other:?}"),
        }
        match fold.fold(&admit(&[], 5.0), || 2) {
            Effect::Charged { lineages, .. } => assert_eq!(lineages.to_vec(), ["ft"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn metering_goes_onto_the_lineages_last_admitted_under() {
        let mut fold = LineageFold::<u8>::new();
        // Never admitted: its own lineage.
        assert_eq!(onto(&fold.fold(&metered(Some(job())), || 0)), ["ft"]);
        let listed = vec!["ft".to_string(), "base".to_string()];
        fold.fold(&admit(&listed, 5.0), || 7);
        let effect = fold.fold(&metered(Some(job())), || 0);
        assert_eq!(onto(&effect), listed);
        match effect {
            Effect::Metered {
                consumed,
                accelerator_seconds,
                admitted: Some(a),
                ..
            } => {
                assert_eq!(
                    (consumed, accelerator_seconds),
                    (Flop(2.0), AcceleratorSeconds(3.0))
                );
                assert_eq!(a.extra, 7);
            }
            other => panic!("{other:?}"),
        }
        // No job: nothing to remember it by.
        assert_eq!(onto(&fold.fold(&metered(None), || 0)), ["ft"]);
        fold.forget(&job());
        assert_eq!(onto(&fold.fold(&metered(Some(job())), || 0)), ["ft"]);
    }
}
