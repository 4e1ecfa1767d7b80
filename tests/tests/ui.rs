//! Compile-fail cases: every plausible misuse of the macros is an error that
//! points at the user's own token and names the fix.
//!
//! The `.stderr` snapshots are recorded with rustc 1.95; other compilers word
//! diagnostics differently, so the suite is skipped on them (it says so).
//! Re-record with `TRYBUILD=overwrite cargo test -p arch-events-tests --test ui`
//! and review every changed `.stderr`.

use std::process::Command;

const RECORDED_WITH: &str = "rustc 1.95.";

fn rustc_version() -> Option<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let output = Command::new(rustc).arg("--version").output().ok()?;
    String::from_utf8(output.stdout).ok()
}

#[test]
fn misuse_of_the_macros_fails_to_compile_with_a_clear_message() {
    match rustc_version() {
        Some(version) if version.starts_with(RECORDED_WITH) => {}
        other => {
            eprintln!(
                "skipping the compile-fail suite: its snapshots are recorded with {RECORDED_WITH}x, \
                 this is {other:?}"
            );
            return;
        }
    }
    let cases = trybuild::TestCases::new();
    cases.compile_fail("ui/*.rs");
}
