//! Upcasters: the steps that bring a stored event written in an older
//! shape (schema version) to the shape the code reads now, one version at a
//! time. Registered at link time with `#[upcaster]`, checked when a bus is
//! built (a gap in a chain, two steps from one version, a step from a
//! version the event never reaches are build problems, with `file:line`),
//! and applied when a stored event is read: an aggregate's load, a
//! projection's [`RecordedEvent::decode`](super::RecordedEvent::decode).

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use serde_json::Value;

use crate::error::{BoxError, Problem};
use crate::message::{Location, MessageMeta};

/// One upcaster, as `#[upcaster]` registers it.
#[doc(hidden)]
pub struct UpcasterEntry {
    event: fn() -> &'static MessageMeta,
    from: u32,
    upcast: fn(Value) -> Result<Value, BoxError>,
    path: &'static str,
    location: Location,
}

impl UpcasterEntry {
    /// Built by `#[upcaster]` only.
    pub const fn new(
        event: fn() -> &'static MessageMeta,
        from: u32,
        upcast: fn(Value) -> Result<Value, BoxError>,
        path: &'static str,
        file: &'static str,
        line: u32,
    ) -> Self {
        UpcasterEntry {
            event,
            from,
            upcast,
            path,
            location: Location { file, line },
        }
    }
}

inventory::collect!(UpcasterEntry);

/// Each event type's steps, by the version each starts from: the first
/// registered when two start from one (a build problem).
fn steps() -> &'static HashMap<&'static str, BTreeMap<u32, &'static UpcasterEntry>> {
    static STEPS: OnceLock<HashMap<&'static str, BTreeMap<u32, &'static UpcasterEntry>>> =
        OnceLock::new();
    STEPS.get_or_init(|| {
        let mut steps: HashMap<&'static str, BTreeMap<u32, &'static UpcasterEntry>> =
            HashMap::new();
        let mut entries: Vec<&'static UpcasterEntry> =
            inventory::iter::<UpcasterEntry>.into_iter().collect();
        entries.sort_by_key(|entry| (entry.path, entry.location.file, entry.location.line));
        for entry in entries {
            steps
                .entry((entry.event)().name())
                .or_default()
                .entry(entry.from)
                .or_insert(entry);
        }
        steps
    })
}

/// Brings `payload`, stored as version `stored` of `meta`'s event, to the
/// code's version; `Err` says why it cannot.
pub(crate) fn to_current(
    meta: &'static MessageMeta,
    stored: u32,
    payload: &str,
) -> Result<Value, String> {
    let current = meta.schema_version();
    let mut value: Value = serde_json::from_str(payload).map_err(|error| error.to_string())?;
    if stored > current {
        return Err(format!(
            "it was written as schema version {stored}, and this code reads up to {current}: \
             a newer build wrote it"
        ));
    }
    let chain = steps().get(meta.name());
    for version in stored..current {
        let Some(step) = chain.and_then(|chain| chain.get(&version)) else {
            return Err(format!(
                "it is schema version {version}, the code's is {current}, and no `#[upcaster({}, from = {version})]` is linked",
                meta.rust_path()
            ));
        };
        value = (step.upcast)(value).map_err(|error| {
            format!(
                "the upcaster `{}` ({}) failed: {error}",
                step.path, step.location
            )
        })?;
    }
    Ok(value)
}

/// The problems of the linked upcasters, for the bus's `messages` and the
/// events upcasters name: two from one version of an event, one from a
/// version the event never had before its current one, and an event at
/// version N > 1 without a step from each of 1 to N - 1 (its stored events
/// of the older versions could not be read).
pub(crate) fn problems(messages: &[&'static MessageMeta]) -> Vec<Problem> {
    let mut by_event: BTreeMap<&'static str, (&'static MessageMeta, Vec<&'static UpcasterEntry>)> =
        BTreeMap::new();
    for meta in messages.iter().filter(|meta| meta.schema_version() > 1) {
        by_event.entry(meta.name()).or_insert((meta, Vec::new()));
    }
    for entry in inventory::iter::<UpcasterEntry> {
        let meta = (entry.event)();
        by_event
            .entry(meta.name())
            .or_insert((meta, Vec::new()))
            .1
            .push(entry);
    }
    let mut problems = Vec::new();
    for (name, (meta, mut entries)) in by_event {
        entries.sort_by_key(|entry| (entry.from, entry.location.file, entry.location.line));
        let current = meta.schema_version();
        let site = |entry: &UpcasterEntry| (entry.path, entry.location);
        let mut from_versions: BTreeMap<u32, Vec<(&'static str, Location)>> = BTreeMap::new();
        for entry in &entries {
            from_versions
                .entry(entry.from)
                .or_default()
                .push(site(entry));
        }
        for (from, sites) in &from_versions {
            if sites.len() > 1 {
                problems.push(Problem::Upcaster {
                    event: name,
                    reason: format!(
                        "{} upcasters start from version {from}, and one may",
                        sites.len()
                    ),
                    upcasters: sites.clone(),
                });
            }
            if *from >= current {
                problems.push(Problem::Upcaster {
                    event: name,
                    reason: format!(
                        "an upcaster starts from version {from}, but the event is at version {current} \
                         (`#[event(serde, version = {current})]`): raise the event's version, or start it lower"
                    ),
                    upcasters: sites.clone(),
                });
            }
        }
        let missing: Vec<String> = (1..current)
            .filter(|version| !from_versions.contains_key(version))
            .map(|version| version.to_string())
            .collect();
        if !missing.is_empty() {
            problems.push(Problem::Upcaster {
                event: name,
                reason: format!(
                    "it is at schema version {current}, but no upcaster starts from version {}: \
                     its events stored then could not be read; add `#[upcaster({}, from = ..)]` \
                     for each",
                    missing.join(", "),
                    meta.rust_path()
                ),
                upcasters: entries.iter().map(|entry| site(entry)).collect(),
            });
        }
    }
    problems
}
