//! Derive and attribute macros for arch-events. Use them through `arch-events`,
//! which re-exports them and documents them: `arch_events::Command`,
//! `arch_events::Event`, `arch_events::Query` and `arch_events::handler`.

mod args;
mod errors;
mod handler;
mod message;
mod saga;
mod upcaster;

use proc_macro::TokenStream;

use message::MessageKind;

/// Makes a struct or enum a command: exactly one handler, whose typed result
/// reaches the caller of `Bus::dispatch`.
///
/// Arguments, all optional, in `#[command(...)]`:
/// - `output = T`: what the handler returns on success (default `()`);
/// - `error = E`: the handler's error type (default `Infallible`);
/// - `name = "..."`: the stable name (default: module path and type name).
#[proc_macro_derive(Command, attributes(command))]
pub fn derive_command(input: TokenStream) -> TokenStream {
    message::derive(input.into(), MessageKind::Command).into()
}

/// Makes a struct or enum an event: zero or more handlers, each failing alone.
/// The type must also be `Debug + Clone + Send + Sync`.
///
/// Argument, optional, in `#[event(...)]`: `name = "..."`.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    message::derive(input.into(), MessageKind::Event).into()
}

/// Makes a struct or enum a query of the read side: exactly one handler.
///
/// Arguments in `#[query(...)]`: `output = T` (required), `error = E` and
/// `name = "..."` (optional).
#[proc_macro_derive(Query, attributes(query))]
pub fn derive_query(input: TokenStream) -> TokenStream {
    message::derive(input.into(), MessageKind::Query).into()
}

/// Registers a free `fn` or `async fn` as a handler. The first parameter is
/// the message; every other parameter is a dependency injected by type.
///
/// Argument, optional: `releases(EventA, EventB)` declares the events the
/// handler may release.
#[proc_macro_attribute]
pub fn handler(args: TokenStream, item: TokenStream) -> TokenStream {
    handler::attribute(args.into(), item.into()).into()
}

/// Registers a step that brings a stored event from schema version `from`
/// to `from + 1`: `#[upcaster(EventType, from = 1)]` on a
/// `fn(serde_json::Value) -> Result<serde_json::Value, E>`. See the
/// `arch_events::event_store` docs.
#[proc_macro_attribute]
pub fn upcaster(args: TokenStream, item: TokenStream) -> TokenStream {
    upcaster::attribute(args.into(), item.into()).into()
}

/// Makes a type's `impl` block a saga: its methods marked
/// `#[starts(by = field)]`, `#[handles(by = field, not_found = ..)]` or
/// `#[timeout(by = field)]` handle messages on the saga's stored state.
/// See the `arch_events::saga` docs.
#[proc_macro_attribute]
pub fn saga(args: TokenStream, item: TokenStream) -> TokenStream {
    saga::attribute(args.into(), item.into()).into()
}
