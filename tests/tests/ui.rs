//! The macros on real code, compiled by trybuild: every plausible misuse
//! is an error that points at the user's own token and names the fix
//! (`ui/*.rs`, each with its reviewed `.stderr`), and what users write is
//! accepted and runs (`ui/pass/*.rs`).
//!
//! The `.stderr` snapshots are recorded with rustc 1.95; other compilers
//! word diagnostics differently, so on them the suite is ignored, and says
//! why (`cargo test` lists it as ignored). Re-record with
//! `TRYBUILD=overwrite cargo test -p arch-events-tests --test ui` and review
//! every changed `.stderr`.

#[test]
#[rustversion::attr(
    not(stable(1.95)),
    ignore = "the .stderr snapshots are recorded with rustc 1.95"
)]
fn misuse_of_the_macros_fails_to_compile_with_a_clear_message() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("ui/*.rs");
}

#[test]
#[rustversion::attr(not(stable(1.95)), ignore = "the ui suite is recorded with rustc 1.95")]
fn what_users_write_compiles_and_runs() {
    let cases = trybuild::TestCases::new();
    cases.pass("ui/pass/*.rs");
}
