//! Entrypoints: how requests reach the bus.

pub mod broker;
pub mod http;
