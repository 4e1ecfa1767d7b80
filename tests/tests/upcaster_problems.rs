//! Upcasters that cannot bring every stored version of an event to the
//! code's are build problems, all at once, each with its `file:line`: a gap
//! in a chain, two upcasters from one version, one from a version the event
//! has not reached. A binary of its own: its upcasters register at link
//! time, and would refuse every other bus.

use arch_events::{upcaster, Bus, Event, Problem};
use serde_json::Value;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(name = "problems.gap", serde, version = 4)]
struct Gap;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(name = "problems.twice", serde, version = 2)]
struct Twice;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(name = "problems.beyond", serde, version = 2)]
struct Beyond;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(name = "problems.fine", serde, version = 3)]
struct Fine;

/// Bumped to version 2 and no upcaster written.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(name = "problems.bumped", serde, version = 2)]
struct Bumped;

/// Upcasters from 2 on only: version 1 cannot be read.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(name = "problems.late_start", serde, version = 3)]
struct LateStart;

#[upcaster(LateStart, from = 2)]
fn late_start_from_2(value: Value) -> Result<Value, String> {
    Ok(value)
}

#[upcaster(Gap, from = 1)]
fn gap_from_1(value: Value) -> Result<Value, String> {
    Ok(value)
}

#[upcaster(Gap, from = 3)]
fn gap_from_3(value: Value) -> Result<Value, String> {
    Ok(value)
}

#[upcaster(Twice, from = 1)]
fn twice_a(value: Value) -> Result<Value, String> {
    Ok(value)
}

#[upcaster(Twice, from = 1)]
fn twice_b(value: Value) -> Result<Value, String> {
    Ok(value)
}

#[upcaster(Beyond, from = 2)]
fn beyond(value: Value) -> Result<Value, String> {
    Ok(value)
}

#[upcaster(Fine, from = 1)]
fn fine_from_1(value: Value) -> Result<Value, String> {
    Ok(value)
}

#[upcaster(Fine, from = 2)]
fn fine_from_2(value: Value) -> Result<Value, String> {
    Ok(value)
}

#[test]
fn every_upcaster_problem_is_reported_at_build_with_its_place() {
    let error = Bus::builder().build().expect_err("the upcasters are wrong");
    let upcasters: Vec<(&str, &str)> = error
        .problems()
        .iter()
        .filter_map(|problem| match problem {
            Problem::Upcaster { event, reason, .. } => Some((*event, reason.as_str())),
            _ => None,
        })
        .collect();
    // `Bumped` is in the bus's messages because a test names it: link it.
    let _ = std::any::type_name::<Bumped>();
    assert_eq!(upcasters.len(), 6, "{error}");
    assert!(
        upcasters.iter().all(|(event, _)| *event != "problems.fine"),
        "{error}"
    );
    let text = error.to_string();
    for expected in [
        "event `problems.gap`: it is at schema version 4, but no upcaster starts from version 2",
        "event `problems.bumped`: it is at schema version 2, but no upcaster starts from version 1: its events stored then could not be read; add `#[upcaster(upcaster_problems::Bumped, from = ..)]`",
        "event `problems.late_start`: it is at schema version 3, but no upcaster starts from version 1",
        "event `problems.twice`: 2 upcasters start from version 1, and one may",
        "event `problems.beyond`: an upcaster starts from version 2, but the event is at version 2",
        "`upcaster_problems::twice_a` (tests/tests/upcaster_problems.rs:",
        "`upcaster_problems::twice_b` (tests/tests/upcaster_problems.rs:",
    ] {
        assert!(text.contains(expected), "{expected}\n{text}");
    }
}
