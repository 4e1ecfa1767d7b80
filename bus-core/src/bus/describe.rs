//! The wiring report: what a built bus routes, to which handlers, with which
//! dependencies, and which events each handler declares it releases; as a
//! plain table and as a Mermaid flowchart.

use std::fmt::{self, Write as _};

use serde::Serialize;

use super::Bus;
use crate::inject::Lifetime;
use crate::message::MessageKind;

/// A built bus, described: every message it knows, in name order.
///
/// ```
/// use arch_events::{handler, Bus, Command, Event, EventReleaser};
///
/// #[derive(Debug, Command)]
/// #[command(name = "shop.checkout")]
/// struct Checkout;
///
/// #[derive(Debug, Clone, Event)]
/// #[event(name = "shop.checked_out")]
/// struct CheckedOut;
///
/// #[handler(releases(CheckedOut))]
/// fn checkout(_: Checkout, events: EventReleaser) -> Result<(), std::convert::Infallible> {
///     events.release(CheckedOut);
///     Ok(())
/// }
///
/// let bus = Bus::builder().build().unwrap();
/// let wiring = bus.describe();
/// let checkout = wiring.message("shop.checkout").unwrap();
/// assert_eq!(checkout.handlers[0].releases, ["shop.checked_out"]);
/// let dead_end = &wiring.dead_ends()[0]; // nobody handles it
/// assert_eq!((dead_end.event, &dead_end.released_by[..]), ("shop.checked_out", &[checkout.handlers[0].name][..]));
/// assert!(wiring.to_mermaid().starts_with("flowchart LR"));
/// println!("{}", wiring.to_table());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BusDescription {
    /// Every message type, sorted by name.
    pub messages: Vec<MessageDescription>,
    /// Every saga whose handlers are in the bus, sorted by name.
    pub sagas: Vec<SagaDescription>,
}

/// A saga: its handlers, and what each message does to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SagaDescription {
    /// Its stable name.
    pub name: &'static str,
    /// Its state type's path.
    pub rust_path: &'static str,
    /// Where its `#[saga]` is (`file:line`).
    pub location: String,
    /// Its handlers, in the order they are written.
    pub steps: Vec<SagaStepDescription>,
}

/// One message a saga handles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SagaStepDescription {
    /// The message's name.
    pub message: &'static str,
    /// Its handler's path (as in [`MessageDescription::handlers`]).
    pub handler: &'static str,
    /// `starts`, `continues` (with what a message that finds no saga
    /// does) or `timeout`.
    pub role: SagaRole,
}

/// What a message does to a saga, as the wiring report shows it.
pub use crate::saga_role::Role as SagaRole;

/// One message type of the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageDescription {
    /// Command, event or query.
    pub kind: MessageKind,
    /// Its stable name.
    pub name: &'static str,
    /// Its Rust path.
    pub rust_path: &'static str,
    /// Where it is declared (`file:line`).
    pub location: String,
    /// Its name on a broker, when it has one (`external = "..."`).
    pub external: Option<&'static str>,
    /// Its handlers, in the order the bus calls them.
    pub handlers: Vec<HandlerDescription>,
}

/// An event type that no handler of the bus handles: its name, where it is
/// declared, and the handlers that declare they release it.
///
/// An event may have no handler (it is published for another service, say,
/// through an outbox: see [`external`](MessageDescription::external)); a
/// handler function that lacks `#[handler]`, or sits in a crate that is not
/// linked, shows up here too. [`BusBuilder::require_event_handlers`](crate::BusBuilder::require_event_handlers)
/// makes every one of them a build problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadEnd {
    /// The event's name.
    pub event: &'static str,
    /// Where it is declared (`file:line`).
    pub location: String,
    /// The handlers that declare they release it, sorted.
    pub released_by: Vec<&'static str>,
}

/// One handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HandlerDescription {
    /// Its path.
    pub name: &'static str,
    /// Where it is defined (`file:line`).
    pub location: String,
    /// Whether it is an `async fn`.
    pub is_async: bool,
    /// What it asks for, in parameter order: the type and how it is given.
    pub dependencies: Vec<DependencyDescription>,
    /// The events it declares it releases (`#[handler(releases(...))]`).
    /// The bus checks every call against this list: an undeclared release
    /// is logged and fails a test's [`Recorder`](crate::testing::Recorder),
    /// so the edges drawn from it are the ones that happen.
    pub releases: Vec<&'static str>,
}

/// One dependency of a handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DependencyDescription {
    /// The type.
    pub type_name: &'static str,
    /// Shared, scoped or bus-provided.
    pub lifetime: Lifetime,
}

impl Bus {
    /// Describes the built bus: each message (kind, name), its handlers
    /// (path, `file:line`, dependencies) and the events each handler declares
    /// it may release. See [`BusDescription`].
    pub fn describe(&self) -> BusDescription {
        let mut messages: Vec<MessageDescription> = self
            .inner
            .messages
            .iter()
            .map(|meta| MessageDescription {
                kind: meta.kind(),
                name: meta.name(),
                rust_path: meta.rust_path(),
                location: meta.location().to_string(),
                external: meta.external(),
                handlers: self
                    .inner
                    .routes
                    .handlers(meta)
                    .iter()
                    .map(|handler| {
                        let registration = handler.registration;
                        HandlerDescription {
                            name: registration.name(),
                            location: registration.location().to_string(),
                            is_async: registration.is_async(),
                            dependencies: registration
                                .dependencies()
                                .map(|key| DependencyDescription {
                                    type_name: key.type_name(),
                                    lifetime: key.lifetime(),
                                })
                                .collect(),
                            releases: registration.releases().map(|m| m.name()).collect(),
                        }
                    })
                    .collect(),
            })
            .collect();
        messages.sort_by(|a, b| a.name.cmp(b.name).then(a.rust_path.cmp(b.rust_path)));
        BusDescription {
            messages,
            sagas: self.describe_sagas(),
        }
    }

    #[cfg(feature = "json")]
    fn describe_sagas(&self) -> Vec<SagaDescription> {
        let handlers = &self.inner.names().handlers;
        let mut sagas: Vec<SagaDescription> = crate::saga::registered()
            .filter(|saga| {
                saga.steps
                    .iter()
                    .any(|step| handlers.contains_key((step.handler)().name()))
            })
            .map(|saga| SagaDescription {
                name: saga.name,
                rust_path: saga.rust_path,
                location: saga.location.to_string(),
                steps: saga
                    .steps
                    .iter()
                    .map(|step| SagaStepDescription {
                        message: (step.message)().name(),
                        handler: (step.handler)().name(),
                        role: step.role,
                    })
                    .collect(),
            })
            .collect();
        sagas.sort_by(|a, b| a.name.cmp(b.name));
        sagas
    }

    #[cfg(not(feature = "json"))]
    fn describe_sagas(&self) -> Vec<SagaDescription> {
        Vec::new()
    }
}

impl BusDescription {
    /// The message with this name.
    pub fn message(&self, name: &str) -> Option<&MessageDescription> {
        self.messages.iter().find(|m| m.name == name)
    }

    /// Every event type that no handler of this bus handles, sorted by
    /// name, each with the handlers that declare they release it. See
    /// [`DeadEnd`].
    pub fn dead_ends(&self) -> Vec<DeadEnd> {
        self.messages
            .iter()
            .filter(|m| m.kind == MessageKind::Event && m.handlers.is_empty())
            .map(|event| {
                let mut released_by: Vec<&'static str> = self
                    .messages
                    .iter()
                    .flat_map(|message| &message.handlers)
                    .filter(|handler| handler.releases.contains(&event.name))
                    .map(|handler| handler.name)
                    .collect();
                released_by.sort_unstable();
                released_by.dedup();
                DeadEnd {
                    event: event.name,
                    location: event.location.clone(),
                    released_by,
                }
            })
            .collect()
    }

    /// A plain-text table: one row per handler (or per message without one).
    pub fn to_table(&self) -> String {
        let headers = [
            "kind",
            "message",
            "handler",
            "at",
            "dependencies",
            "releases",
        ];
        let mut rows: Vec<[String; 6]> = Vec::new();
        for message in &self.messages {
            if message.handlers.is_empty() {
                rows.push([
                    message.kind.to_string(),
                    message.name.to_owned(),
                    "(no handler)".to_owned(),
                    message.location.clone(),
                    String::new(),
                    String::new(),
                ]);
            }
            for handler in &message.handlers {
                let dependencies: Vec<String> = handler
                    .dependencies
                    .iter()
                    .map(|d| format!("{} ({})", short_type(d.type_name), d.lifetime))
                    .collect();
                rows.push([
                    message.kind.to_string(),
                    message.name.to_owned(),
                    format!(
                        "{}{}",
                        handler.name,
                        if handler.is_async { " (async)" } else { "" }
                    ),
                    handler.location.clone(),
                    dependencies.join(", "),
                    handler.releases.join(", "),
                ]);
            }
        }
        let mut widths = headers.map(str::len);
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &[&str]| {
            let mut text = String::new();
            for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                let _ = write!(text, "{cell:width$}");
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(&mut out, &headers);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        line(
            &mut out,
            &rule.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        for row in &rows {
            line(
                &mut out,
                &row.iter().map(String::as_str).collect::<Vec<_>>(),
            );
        }
        for saga in &self.sagas {
            let _ = writeln!(
                out,
                "\nsaga {} ({}, {})",
                saga.name, saga.rust_path, saga.location
            );
            for step in &saga.steps {
                let _ = writeln!(
                    out,
                    "  {:<28} {} → {}",
                    step.role.to_string(),
                    step.message,
                    step.handler
                );
            }
        }
        out
    }

    /// A Mermaid flowchart, starting with `flowchart LR`: commands and
    /// queries → their handler → the events it releases → their handlers.
    /// Events are rounded, commands rectangles, queries hexagons, handlers
    /// subroutine boxes; an event nobody handles is drawn dashed.
    pub fn to_mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        for message in &self.messages {
            let id = node_id("m", message.name);
            let label = escape(message.name);
            let _ = match message.kind {
                MessageKind::Command => writeln!(out, "    {id}[\"{label}\"]"),
                MessageKind::Query => writeln!(out, "    {id}{{{{\"{label}\"}}}}"),
                MessageKind::Event => writeln!(out, "    {id}([\"{label}\"])"),
            };
            if message.kind == MessageKind::Event && message.handlers.is_empty() {
                let _ = writeln!(out, "    style {id} stroke-dasharray: 5 5");
            }
        }
        for message in &self.messages {
            let message_id = node_id("m", message.name);
            for handler in &message.handlers {
                let handler_id = node_id("h", handler.name);
                let _ = writeln!(
                    out,
                    "    {handler_id}[[\"{}\"]]",
                    escape(short_path(handler.name))
                );
                let _ = writeln!(out, "    {message_id} --> {handler_id}");
                for event in &handler.releases {
                    let _ = writeln!(out, "    {handler_id} -.-> {}", node_id("m", event));
                }
            }
        }
        for saga in &self.sagas {
            let saga_id = node_id("s", saga.name);
            let _ = writeln!(
                out,
                "    subgraph {saga_id}[\"saga {}\"]",
                escape(saga.name)
            );
            for step in &saga.steps {
                let _ = writeln!(out, "        {}", node_id("h", step.handler));
            }
            let _ = writeln!(out, "    end");
            for step in &saga.steps {
                let message_id = node_id("m", step.message);
                match step.role {
                    SagaRole::Starts => {
                        let _ = writeln!(out, "    {message_id} == starts ==> {saga_id}");
                    }
                    SagaRole::Timeout => {
                        let _ = writeln!(out, "    {saga_id} -. timeout .-> {message_id}");
                    }
                    SagaRole::Continues(_) => {}
                }
            }
        }
        out
    }
}

impl fmt::Display for BusDescription {
    /// The table, then the flowchart.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n{}", self.to_table(), self.to_mermaid())
    }
}

/// A Mermaid node id: letters, digits and underscores only.
fn node_id(prefix: &str, name: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + 1 + name.len());
    id.push_str(prefix);
    id.push('_');
    id.extend(
        name.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
    );
    id
}

fn escape(text: &str) -> String {
    text.replace('"', "#quot;")
}

/// `a::b::c` → `b::c`: short enough for a diagram.
fn short_path(path: &'static str) -> &'static str {
    match path.rmatch_indices("::").nth(1) {
        Some((at, _)) => &path[at + 2..],
        None => path,
    }
}

/// `alloc::sync::Arc<dyn example_app::views::AllocationsView>` → the last
/// segment of each path inside it.
fn short_type(type_name: &str) -> String {
    let mut out = String::with_capacity(type_name.len());
    let mut segment = String::new();
    for c in type_name.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            segment.push(c);
        } else {
            out.push_str(segment.rsplit("::").next().unwrap_or(&segment));
            segment.clear();
            out.push(c);
        }
    }
    out.push_str(segment.rsplit("::").next().unwrap_or(&segment));
    out
}

#[cfg(test)]
mod tests {
    use super::{node_id, short_path, short_type};

    #[test]
    fn names_are_shortened_and_ids_are_safe() {
        assert_eq!(short_path("example_app::views::add_row"), "views::add_row");
        assert_eq!(short_path("add_row"), "add_row");
        assert_eq!(
            short_type("dyn example_app::views::AllocationsView"),
            "dyn AllocationsView"
        );
        assert_eq!(
            short_type("core::sync::Mutex<alloc::vec::Vec<u8>>"),
            "Mutex<Vec<u8>>"
        );
        assert_eq!(
            node_id("m", "allocation.allocated"),
            "m_allocation_allocated"
        );
    }
}
