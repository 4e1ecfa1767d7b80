//! The benchmarks of arch-events live in `benches/`: `cargo bench -p
//! arch-events-benches` runs them all, `--bench dispatch` (the bus beside
//! hand-written dispatch and peer crates), `--bench relay` (the outbox
//! relay) or `--bench history` (one allocation's cost as a product's history
//! grows) one of them. BENCHMARKS.md has the figures and what they mean.
//!
//! A crate of their own, not published, so that `cargo test --workspace`
//! builds neither criterion nor the peer crates.
