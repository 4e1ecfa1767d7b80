//! The build validates all wiring at once and refuses to start on any mistake.

use std::convert::Infallible;

use arch_events::{
    handler, Bus, Command, Dependencies, Event, Lifetime, Problem, Query, Registrations, Scoped,
};
use arch_events_tests::Log;

#[derive(Debug, Command)]
struct Lonely;

#[derive(Debug, Command)]
struct Twice;

#[handler]
fn twice_a(_: Twice) -> Result<(), Infallible> {
    Ok(())
}

#[handler]
fn twice_b(_: Twice) -> Result<(), Infallible> {
    Ok(())
}

#[derive(Debug, Command)]
struct Thrice;

#[handler]
fn thrice_a(_: Thrice) -> Result<(), Infallible> {
    Ok(())
}
#[handler]
fn thrice_b(_: Thrice) -> Result<(), Infallible> {
    Ok(())
}
#[handler]
fn thrice_c(_: Thrice) -> Result<(), Infallible> {
    Ok(())
}

#[derive(Debug, Query)]
#[query(output = u32)]
struct Unanswered;

#[derive(Debug, Command)]
struct NeedsThings;

struct UnitOfWork;

#[handler]
fn needs_things(_: NeedsThings, _log: &Log, _uow: Scoped<UnitOfWork>) -> Result<(), Infallible> {
    Ok(())
}

#[derive(Debug, Clone, Event)]
struct Quiet;

mod first {
    #[derive(Debug, arch_events::Command)]
    #[command(name = "shared.name")]
    pub struct Clash;
}

mod second {
    #[derive(Debug, Clone, arch_events::Event)]
    #[event(name = "shared.name")]
    pub struct Clash;
}

#[handler]
fn first_clash(_: first::Clash) -> Result<(), Infallible> {
    Ok(())
}

fn line_of(needle: &str) -> u32 {
    let source = include_str!("wiring.rs");
    let index = source
        .lines()
        .position(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("`{needle}` not in wiring.rs"));
    index as u32 + 1
}

#[test]
fn every_problem_is_reported_at_once_sorted_with_file_and_line() {
    let error = Bus::builder()
        .registrations(
            Registrations::new()
                .message::<Lonely>()
                .message::<Unanswered>()
                .message::<Quiet>()
                .message::<second::Clash>()
                .handler::<twice_b>()
                .handler::<twice_a>()
                .handler::<thrice_c>()
                .handler::<thrice_a>()
                .handler::<thrice_b>()
                .handler::<needs_things>()
                .handler::<first_clash>(),
        )
        .build()
        .expect_err("the wiring is wrong in seven ways");

    let problems = error.problems();
    assert_eq!(problems.len(), 7, "{error}");
    let text = error.to_string();
    println!("{text}");
    assert!(text.starts_with("the bus cannot start: 7 wiring problems"));

    // Zero handlers, with the type's file:line.
    assert!(problems.contains(&Problem::NoHandler {
        kind: arch_events::MessageKind::Command,
        message: "wiring::Lonely",
        declared_at: arch_events::registry::Location {
            file: "tests/tests/wiring.rs",
            line: line_of("struct Lonely;"),
        },
    }));
    assert!(text.contains("query `wiring::Unanswered`"), "{text}");

    // Two and three handlers, each named with its file:line, sorted.
    let twice = format!(
        "command `wiring::Twice` has 2 handlers, and a command takes exactly one: \
         `wiring::twice_a` (tests/tests/wiring.rs:{}); `wiring::twice_b` (tests/tests/wiring.rs:{});",
        line_of("fn twice_a"),
        line_of("fn twice_b"),
    );
    assert!(text.contains(&twice), "{text}");
    assert!(
        text.contains("command `wiring::Thrice` has 3 handlers"),
        "{text}"
    );
    for name in ["thrice_a", "thrice_b", "thrice_c"] {
        let site = format!(
            "`wiring::{name}` (tests/tests/wiring.rs:{})",
            line_of(&format!("fn {name}"))
        );
        assert!(text.contains(&site), "{site} missing in {text}");
    }

    // Missing dependencies: the handler, its location and each parameter type.
    let needs = format!(
        "`wiring::needs_things` (tests/tests/wiring.rs:{})",
        line_of("fn needs_things")
    );
    assert!(
        text.contains(&format!(
            "the shared dependency `arch_events_tests::Log` was not provided; 1 handler needs \
             it: {needs}; register it with `Dependencies::shared(value)`"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "the scoped dependency `wiring::UnitOfWork` was not provided; 1 handler needs it: \
             {needs}; register it with `Dependencies::scoped(|scope| value)`"
        )),
        "{text}"
    );

    // Two message types with one name.
    assert!(
        text.contains("2 message types share the name `shared.name`: `wiring::first::Clash`"),
        "{text}"
    );

    // Sorted by the message or handler each problem is about.
    let subjects: Vec<String> = problems
        .iter()
        .map(|p| match p {
            Problem::NoHandler { message, .. } | Problem::MultipleHandlers { message, .. } => {
                message.to_string()
            }
            Problem::MissingDependency { type_name, .. } => type_name.to_string(),
            Problem::DuplicateName { name, .. } => name.to_string(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let mut sorted = subjects.clone();
    sorted.sort();
    assert_eq!(subjects, sorted);
}

#[test]
fn one_handler_per_command_and_events_without_handlers_build() {
    let bus = Bus::builder()
        .registrations(Registrations::new().message::<Quiet>().handler::<twice_a>())
        .build()
        .expect("valid wiring");
    bus.dispatch_blocking(Twice).expect("handled");
    bus.publish_blocking(Quiet)
        .expect("an event with no handler is fine");
}

#[test]
fn a_dependency_registered_with_the_other_lifetime_gets_a_hint() {
    let error = Bus::builder()
        .registrations(Registrations::new().handler::<needs_things>())
        .dependencies(
            Dependencies::new()
                .scoped(|_| Log::default())
                .shared(UnitOfWork),
        )
        .build()
        .expect_err("both lifetimes are wrong");
    let mut registered: Vec<_> = error
        .problems()
        .iter()
        .map(|p| match p {
            Problem::MissingDependency {
                lifetime,
                registered_as,
                ..
            } => (*lifetime, *registered_as),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    registered.sort();
    assert_eq!(
        registered,
        vec![
            (Lifetime::Shared, Some(Lifetime::Scoped)),
            (Lifetime::Scoped, Some(Lifetime::Shared)),
        ]
    );
    assert!(
        error.to_string().contains("it is registered as scoped"),
        "{error}"
    );
}

#[test]
fn providing_the_dependencies_makes_the_same_wiring_valid() {
    let bus = Bus::builder()
        .registrations(Registrations::new().handler::<needs_things>())
        .dependencies(
            Dependencies::new()
                .shared(Log::default())
                .scoped(|_| UnitOfWork),
        )
        .build()
        .expect("all dependencies provided");
    bus.dispatch_blocking(NeedsThings).expect("handled");
}

#[test]
fn an_allowed_unhandled_command_builds_and_reports_at_dispatch() {
    let bus = Bus::builder()
        .registrations(Registrations::new().message::<Lonely>())
        .allow_unhandled::<Lonely>()
        .build()
        .expect("explicitly allowed");
    assert!(matches!(
        bus.dispatch_blocking(Lonely),
        Err(arch_events::DispatchError::Unhandled {
            name: "wiring::Lonely",
            ..
        })
    ));
}

#[test]
fn the_same_registration_listed_twice_counts_once() {
    Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<twice_a>()
                .handler::<twice_a>()
                .message::<Twice>()
                .message::<Twice>(),
        )
        .build()
        .expect("duplicates in the list are not two handlers");
}
