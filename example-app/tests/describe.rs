//! The wiring report of the example app: `describe` prints a table and a
//! Mermaid flowchart, and the picture in the README is the app's own.

// A test whose setup fails should panic, helpers included.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Command;
use std::sync::Arc;

use example_app::adapters::memory::InMemoryProducts;
use example_app::{bootstrap, Adapters};

fn wiring() -> arch_events::describe::BusDescription {
    let store = Arc::new(InMemoryProducts::default());
    bootstrap(Adapters::in_memory(&store)).unwrap().describe()
}

#[test]
fn the_readme_shows_the_apps_own_flowchart() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("the README");
    let start = readme.find("```mermaid\n").expect("a mermaid block") + "```mermaid\n".len();
    let end = start + readme[start..].find("```").expect("its end");
    assert_eq!(
        readme[start..end],
        wiring().to_mermaid(),
        "refresh the README's picture with `cargo run -p example-app -- describe`"
    );
}

#[test]
fn every_declared_event_has_a_handler_and_every_message_is_described() {
    let wiring = wiring();
    // But the two that only tell a product's history, allowed by bootstrap.
    let dead_ends: Vec<_> = wiring
        .dead_ends()
        .into_iter()
        .map(|dead_end| (dead_end.event, dead_end.released_by))
        .collect();
    assert_eq!(
        dead_ends,
        [
            (
                "allocation.batch_added",
                vec!["example_app::service_layer::handlers::add_batch"]
            ),
            (
                "allocation.batch_quantity_changed",
                vec!["example_app::service_layer::handlers::change_batch_quantity"]
            ),
        ]
    );
    let allocate = wiring.message("allocation.allocate").unwrap();
    assert_eq!(allocate.kind, arch_events::MessageKind::Command);
    assert_eq!(
        allocate.handlers[0].name,
        "example_app::service_layer::handlers::allocate"
    );
    assert_eq!(
        allocate.handlers[0].releases,
        ["allocation.allocated", "allocation.out_of_stock"]
    );
    assert_eq!(
        allocate.handlers[0].dependencies[0].type_name,
        "dyn example_app::service_layer::unit_of_work::UnitOfWork"
    );
    let deallocated = wiring.message("allocation.deallocated").unwrap();
    assert_eq!(deallocated.handlers.len(), 2);
}

#[test]
fn the_describe_subcommand_prints_the_table_then_the_flowchart() {
    let output = Command::new(env!("CARGO_BIN_EXE_example-app"))
        .arg("describe")
        // Even with a database that cannot be opened: describe needs none.
        .env("DATABASE_URL", "sqlite:///nonexistent/dir/x.db")
        .output()
        .expect("the binary runs");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let mut lines = stdout.lines();
    let header = lines.next().unwrap();
    for column in [
        "kind",
        "message",
        "handler",
        "at",
        "dependencies",
        "releases",
    ] {
        assert!(header.contains(column), "{header}");
    }
    assert!(stdout.contains("example_app::views::add_allocation_to_read_model (async)"));
    assert!(stdout.contains("example-app/src/views/mod.rs:"));
    let flowchart = stdout
        .lines()
        .position(|line| line == "flowchart LR")
        .expect("the flowchart starts on its own line");
    assert_eq!(
        stdout
            .lines()
            .skip(flowchart)
            .collect::<Vec<_>>()
            .join("\n")
            + "\n",
        wiring().to_mermaid()
    );
}
