//! Entrypoints: how requests reach the bus.

pub mod http;
