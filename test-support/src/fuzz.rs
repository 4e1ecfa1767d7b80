//! The red-team suite's fuzzing half: seeded, deterministic streams of
//! hostile input, against the real binary over HTTP (every route, the
//! operations routes, unknown routes, wrong methods) and against the broker
//! entrance in-process (the `change_batch_quantity` stream, through a
//! `Consumer` with the database's inbox), on whichever database `$fresh`
//! gives. Written once and run on each database (SQLite in
//! `example-app/tests/red_team.rs`, PostgreSQL in the `postgres` target of
//! the tests package); [`fuzz_tests!`](crate::fuzz_tests) expands to both
//! tests.
//!
//! Every case is made from the seed and its own index alone (not from what
//! the cases before it did), so a failure names its seed and index and is
//! made again with `FUZZ_SEED=<seed>`; `FUZZ_CASES=<n>` changes how many
//! cases each test runs, `FUZZ_SHOW=<n>` how many failures of each kind the
//! report shows. The generator knows, for most cases, whether the
//! input is valid (the service's rules: identifiers of 1 to 200 bytes of
//! printable text, quantities from 1 to 1 000 000 000, dates `YYYY-MM-DD`),
//! and checks the answer against that too: an invalid input is never
//! accepted, a field that breaks a rule is named.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arch_events::transport::{
    Consumer, Delivery, Handled, InMemoryBroker, OutboundMessage, Publisher,
};
use arch_events::{EventReleaser, MessageId, Scope};
use example_app::adapters::database::Database;
use example_app::domain::commands::{Allocate, CreateBatch};
use example_app::{bootstrap, Adapters};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::server::{add_batch, post, Server};

/// Expands to the two fuzz tests: the HTTP one starts `$binary` (a `&str`
/// expression, evaluated only by that test) over a fresh database from
/// `$fresh` (an `async fn` whose value has a `url` field, kept for the
/// test's length); the broker one builds the bus in-process over another.
#[macro_export]
macro_rules! fuzz_tests {
    ($binary:expr, $fresh:path) => {
        /// The fuzz tests (a module of their own: `cargo test fuzz` runs them).
        mod fuzz_tests {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn no_request_gets_a_5xx_or_a_body_that_is_not_json() {
                let database = $fresh().await;
                $crate::fuzz::no_request_gets_a_5xx_or_a_body_that_is_not_json(
                    &$binary,
                    &database.url,
                )
                .await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn no_broker_payload_escapes_the_inbound_rules() {
                let database = $fresh().await;
                $crate::fuzz::no_broker_payload_escapes_the_inbound_rules(&database.url).await
            }
        }
    };
}

// ---------------------------------------------------------------------------
// Seeds and cases
// ---------------------------------------------------------------------------

/// The seed when `FUZZ_SEED` is not set.
const DEFAULT_SEED: u64 = 0x00A1_10CA_7E5E_ED01;

/// How many HTTP requests, unless `FUZZ_CASES` says.
const HTTP_CASES: usize = 10_000;

/// How many broker messages, unless `FUZZ_CASES` says.
const BROKER_CASES: usize = 6_000;

/// Concurrent HTTP clients.
const WORKERS: usize = 4;

/// An input string longer than this must never come back in a message.
const ECHO_LIMIT: usize = 300;

/// No message of the API is longer than this unless it echoes its input.
const MAX_MESSAGE_BYTES: usize = 600;

/// The largest body the server reads (its `--max-body-bytes` default) and
/// the largest payload a `Consumer` reads (`Consumer::DEFAULT_MAX_PAYLOAD`).
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The longest URI sent: above the API's limit (8 KiB, a JSON 414), under
/// the client's and hyper's own (64 KiB; over it, hyper answers an empty
/// 414/431 and closes, as `entrypoints/http/server.rs` documents).
const MAX_TESTED_URI_BYTES: usize = 60_000;

/// The admin token of the server under fuzz.
const FUZZ_ADMIN_TOKEN: &str = "fuzz-admin-token-0123456789abcdef";

/// The stream the service reads.
const STREAM: &str = "change_batch_quantity";

fn seed() -> u64 {
    match std::env::var("FUZZ_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("FUZZ_SEED={text:?} is not a whole number")),
        Err(_) => DEFAULT_SEED,
    }
}

fn case_count(default: usize) -> usize {
    match std::env::var("FUZZ_CASES") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("FUZZ_CASES={text:?} is not a whole number")),
        Err(_) => default,
    }
}

/// The random source of case `index` of one test (`stream`): the seed and
/// the index alone decide it.
fn case_rng(seed: u64, stream: u64, index: usize) -> StdRng {
    StdRng::seed_from_u64(
        seed ^ stream.rotate_left(29) ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    )
}

fn database_kind(url: &str) -> &str {
    url.split_once(':').map_or("?", |(scheme, _)| scheme)
}

/// At most `max` bytes of `bytes`, quoted, and the full length when cut.
fn shown(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]);
    if bytes.len() > max {
        format!("{text:?}... ({} bytes)", bytes.len())
    } else {
        format!("{text:?}")
    }
}

/// One assertion that failed, for the report at the end.
struct Failure {
    kind: &'static str,
    case: String,
    detail: String,
}

/// How many failures of each kind a report shows: `FUZZ_SHOW`, or 4.
fn shown_per_kind() -> usize {
    std::env::var("FUZZ_SHOW")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(4)
}

/// Every failure, grouped by kind (the first few of each); `None` when
/// there is none.
fn report(test: &str, seed: u64, failures: &[Failure]) -> Option<String> {
    if failures.is_empty() {
        return None;
    }
    let mut by_kind: BTreeMap<&str, Vec<&Failure>> = BTreeMap::new();
    for failure in failures {
        by_kind.entry(failure.kind).or_default().push(failure);
    }
    let mut text = format!(
        "{test}: {} failed case(s), seed {seed} (FUZZ_SEED={seed} makes them again)\n",
        failures.len()
    );
    for (kind, failures) in by_kind {
        let _ = writeln!(text, "== {kind}: {} case(s)", failures.len());
        for failure in failures.iter().take(shown_per_kind()) {
            let _ = writeln!(text, "  - {}\n    -> {}", failure.case, failure.detail);
        }
    }
    Some(text)
}

// ---------------------------------------------------------------------------
// Strings, numbers, values
// ---------------------------------------------------------------------------

const CONTROLS: &[char] = &[
    '\u{0}', '\u{1}', '\u{7}', '\u{8}', '\t', '\n', '\r', '\u{b}', '\u{c}', '\u{1b}', '\u{1f}',
    '\u{7f}', '\u{85}', '\u{9b}',
];
const RTL: &[&str] = &[
    "\u{202e}kcab-zf\u{202c}",
    "مرحبا-بالعالم",
    "שָׁלוֹם",
    "\u{200f}fz\u{200e}",
    "\u{202b}fz\u{202a}",
];
const EMOJI: &[&str] = &["📦", "🚚💨", "👩‍👩‍👧‍👦", "🏳️‍🌈", "\u{1f600}", "🇫🇷"];
const INJECTIONS: &[&str] = &[
    "'; DROP TABLE batches; --",
    "\" OR \"1\"=\"1",
    "fz' OR 1=1 --",
    "$1",
    "?",
    "%s%s%n",
    "{{7*7}}",
    "${jndi:ldap://x/a}",
    "\\",
    "\\\\x00",
    "<script>alert(1)</script>",
    "NULL",
    "' UNION SELECT * FROM pg_catalog.pg_tables --",
    "\u{0}' OR 1=1",
];
const PATHISH: &[&str] = &[
    "..",
    "../../etc/passwd",
    "%00",
    "%FF",
    "a/b",
    "/",
    ".",
    "~",
    "%2e%2e",
    "\\..\\",
];
const ODD_UNICODE: &[&str] = &[
    "\u{fffe}",
    "\u{ffff}",
    "\u{e000}",
    "\u{10ffff}",
    "\u{fffd}",
    "\u{2028}",
    "\u{2029}",
    "\u{200b}",
    "\u{feff}fz",
    "\u{2060}",
    "ﬁ",
    "ß",
    "İ",
    "\u{1d11e}",
];

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    items.choose(rng).expect("a non-empty list")
}

fn random_char(rng: &mut StdRng) -> char {
    loop {
        let code = match rng.gen_range(0..4) {
            0 => rng.gen_range(0..0x80),
            1 => rng.gen_range(0x80..0x800),
            2 => rng.gen_range(0x800..0x1_0000),
            _ => rng.gen_range(0x1_0000..0x11_0000),
        };
        // Surrogates are no chars: draw again.
        if let Some(c) = char::from_u32(code) {
            return c;
        }
    }
}

/// A string of at least `min_bytes` bytes, of one repeated unit.
fn long_string(rng: &mut StdRng, min_bytes: usize) -> String {
    let unit = *pick(
        rng,
        &["x", "é", "📦", "a\u{301}", "\"\\", "\u{202e}", "\u{0}", "9"],
    );
    unit.repeat(min_bytes / unit.len() + 1)
}

/// A string that is odd in one way or another (some of them are valid
/// identifiers all the same).
fn weird_string(rng: &mut StdRng) -> String {
    match rng.gen_range(0..16) {
        0 => String::new(),
        1 => (*pick(rng, &[" ", "  ", "\u{a0}", "\u{3000}", " \u{2003} "])).to_owned(),
        2 => {
            let mut s = format!("fz-{}", rng.gen::<u16>());
            let at = rng.gen_range(0..=s.len());
            s.insert(at, *pick(rng, CONTROLS));
            s
        }
        3 => (*pick(rng, RTL)).to_owned(),
        4 => pick(rng, EMOJI).repeat(rng.gen_range(1..=12)),
        5 => {
            let mut s = String::from("Z");
            for _ in 0..rng.gen_range(1..=80) {
                s.push(char::from_u32(rng.gen_range(0x300..=0x36f)).expect("a combining mark"));
            }
            s
        }
        6 => (*pick(rng, INJECTIONS)).to_owned(),
        7 => (*pick(rng, PATHISH)).to_owned(),
        8 => pick(rng, ODD_UNICODE).repeat(rng.gen_range(1..=3)),
        9 => {
            let len = rng.gen_range(201..=4096);
            long_string(rng, len)
        }
        10 => pick(
            rng,
            &[
                "x".repeat(200),
                "é".repeat(100),
                "📦".repeat(50),
                "x".repeat(201),
                "é".repeat(101),
                "📦".repeat(51),
                format!("{}é", "x".repeat(199)),
            ],
        )
        .clone(),
        11 => (*pick(
            rng,
            &["true", "0", "-1", "NaN", "1e309", "[]", "{}", "null"],
        ))
        .to_owned(),
        12 => {
            let len = rng.gen_range(1..40);
            (0..len).map(|_| random_char(rng)).collect()
        }
        _ => format!("fz-{}", rng.gen::<u32>()),
    }
}

/// The service's rule for identifiers: at most 200 bytes, not blank, no
/// whitespace at either end, none of the characters it refuses.
fn valid_identifier(s: &str) -> bool {
    // The character classes are the service's own list; the lengths and
    // whitespace rules are checked here independently.
    s.len() <= 200
        && !s.trim().is_empty()
        && s.trim() == s
        && !s
            .chars()
            .any(example_app::domain::validation::refused_character)
}

/// The service's rule for quantities.
fn valid_quantity(n: i64) -> bool {
    (1..=1_000_000_000).contains(&n)
}

const VALID_DATES: &[&str] = &["2026-12-01", "2027-02-28", "2028-02-29", "2026-01-31"];
const INVALID_DATES: &[&str] = &[
    "2026-13-45",
    "2026-02-30",
    "2027-02-29",
    "2026/12/01",
    "",
    "tomorrow",
    "2026-12-01T00:00:00",
    "2026-12-01Z",
    "-100000-01-01",
    "0000-12-31",
    "+10000-01-01",
    "2026-1-1",
    "+2026-01-01",
    " 2026-01-01",
];

const EDGE_INTS: &[i64] = &[
    0,
    -1,
    1,
    1_000_000_000,
    1_000_000_001,
    -1_000_000_000,
    i64::MAX,
    i64::MIN,
    4_294_967_295,
    4_294_967_296,
    2_147_483_648,
    9_007_199_254_740_993,
];

/// Numbers no `i64` holds, and number-like text that is no JSON.
const ODD_NUMBERS: &[&str] = &[
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "1.5",
    "1.0",
    "-0",
    "-0.0",
    "1e3",
    "1E400",
    "-1e400",
    "5e-324",
    "123456789012345678901234567890",
    "0.1",
    "01",
    "+1",
    "1.",
    ".5",
    "NaN",
    "Infinity",
    "-",
    "0x10",
    "1_000",
    "1e",
    "--1",
];

/// Other JSON types, and string literals that are no JSON.
const ODD_VALUES: &[&str] = &[
    "true",
    "false",
    "[]",
    "[1,2,3]",
    "{}",
    "{\"a\":{\"b\":[null,1.5,\"x\"]}}",
    "[\"fz-b1\"]",
    "\"\\ud800\"",
    "\"\\udc00\\ud800\"",
    "\"\\x41\"",
    "\"a\u{1}b\"",
    "\"\\u00\"",
    "\"tab\there\"",
    "\"new\nline\"",
];

/// A JSON value as the service would read it.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Str(String),
    Int(i64),
    Null,
    /// Another type, a number no `i64` holds, or no JSON at all.
    Other,
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string is JSON")
}

/// `s` as a JSON string with every character escaped (`\uXXXX`).
fn escaped_json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for unit in s.encode_utf16() {
        let _ = write!(out, "\\u{unit:04x}");
    }
    out.push('"');
    out
}

fn string_value(s: String) -> (Val, String) {
    let text = json_string(&s);
    (Val::Str(s), text)
}

fn int_value(n: i64) -> (Val, String) {
    (Val::Int(n), n.to_string())
}

/// A value that breaks a rule or a type (or a string that may be fine).
fn bad_value(rng: &mut StdRng, label: &mut Vec<String>) -> (Val, String) {
    let (val, text) = match rng.gen_range(0..10) {
        0 => int_value(*pick(rng, EDGE_INTS)),
        1 => (Val::Other, (*pick(rng, ODD_NUMBERS)).to_owned()),
        2 => (Val::Null, "null".to_owned()),
        3 => (Val::Other, (*pick(rng, ODD_VALUES)).to_owned()),
        4 => {
            let depth = rng.gen_range(1..=400);
            let text = if rng.gen_bool(0.5) {
                format!("{}{}", "[".repeat(depth), "]".repeat(depth))
            } else {
                format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
            };
            (Val::Other, text)
        }
        5..=7 => string_value(weird_string(rng)),
        8 if rng.gen_bool(0.5) => string_value((*pick(rng, INVALID_DATES)).to_owned()),
        8 => string_value((*pick(rng, &["5", "1", "-1", "0", "1e3", "  7"])).to_owned()),
        _ => {
            let len = rng.gen_range(1024..=60_000);
            string_value(long_string(rng, len))
        }
    };
    label.push(format!("value {}", shown(text.as_bytes(), 40)));
    (val, text)
}

// ---------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Identifier,
    Quantity,
    Date,
}

/// A field of a message, as the client spells it.
struct Field {
    name: &'static str,
    kind: Kind,
    required: bool,
}

const fn field(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: true,
    }
}

const ADD_BATCH: &[Field] = &[
    field("ref", Kind::Identifier),
    field("sku", Kind::Identifier),
    field("qty", Kind::Quantity),
    Field {
        name: "eta",
        kind: Kind::Date,
        required: false,
    },
];
const ALLOCATE: &[Field] = &[
    field("orderid", Kind::Identifier),
    field("sku", Kind::Identifier),
    field("qty", Kind::Quantity),
];
const CHANGE_QUANTITY: &[Field] = &[field("ref", Kind::Identifier), field("qty", Kind::Quantity)];
const STREAM_CHANGE_QUANTITY: &[Field] = &[
    field("batchref", Kind::Identifier),
    field("qty", Kind::Quantity),
];

/// Every field name of every message: renames pick among them too.
const FIELD_NAMES: &[&str] = &[
    "ref",
    "sku",
    "qty",
    "eta",
    "orderid",
    "batchref",
    "reference",
];

/// What the generator knows of an input.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    /// The message, every field within the rules.
    Valid,
    /// Refused. With the fields whose values break a rule (the message
    /// names one of them), or none: the input is not the message at all
    /// (its syntax, a type, a field too many or missing, its size).
    Invalid(Vec<&'static str>),
    /// Not predicted (it must still never be a 5xx).
    Unknown,
}

/// One member of a JSON object: its key and value, decoded and as text.
#[derive(Debug, Clone)]
struct Member {
    key: String,
    key_text: String,
    value: Val,
    text: String,
}

fn member(key: &str, (value, text): (Val, String)) -> Member {
    Member {
        key: key.to_owned(),
        key_text: json_string(key),
        value,
        text,
    }
}

/// The values a valid field takes: known batches and products, new ones,
/// unknown ones.
struct Pools {
    refs: &'static [&'static str],
    skus: &'static [&'static str],
    /// Whether new batch references are valid inputs (`add_batch`).
    new_refs: bool,
}

impl Pools {
    fn identifier(&self, rng: &mut StdRng, name: &str) -> String {
        match name {
            "sku" if rng.gen_bool(0.15) => format!("FZ-NEW-{}", rng.gen_range(0..20)),
            "sku" => (*pick(rng, self.skus)).to_owned(),
            "orderid" => format!("fz-o{}", rng.gen_range(0..60)),
            _ if self.new_refs && rng.gen_bool(0.35) => format!("fz-new-{}", rng.gen::<u32>()),
            _ if rng.gen_bool(0.1) => format!("fz-nope-{}", rng.gen_range(0..5)),
            _ => (*pick(rng, self.refs)).to_owned(),
        }
    }

    fn quantity(rng: &mut StdRng) -> i64 {
        match rng.gen_range(0..20) {
            0 => 1_000_000_000,
            1 => 1,
            2 | 3 => rng.gen_range(21..=500),
            _ => rng.gen_range(1..=20),
        }
    }

    fn good_value(&self, rng: &mut StdRng, field: &Field) -> (Val, String) {
        match field.kind {
            Kind::Identifier => string_value(self.identifier(rng, field.name)),
            Kind::Quantity => int_value(Self::quantity(rng)),
            Kind::Date if rng.gen_bool(0.5) => (Val::Null, "null".to_owned()),
            Kind::Date => string_value((*pick(rng, VALID_DATES)).to_owned()),
        }
    }

    /// A good value most of the time, a bad one now and then.
    fn value(&self, rng: &mut StdRng, field: &Field, label: &mut Vec<String>) -> (Val, String) {
        if rng.gen_bool(0.12) {
            label.push(format!("{}:", field.name));
            bad_value(rng, label)
        } else {
            self.good_value(rng, field)
        }
    }
}

fn type_fits(kind: Kind, value: &Val) -> bool {
    match kind {
        Kind::Identifier => matches!(value, Val::Str(_)),
        Kind::Quantity => matches!(value, Val::Int(_)),
        Kind::Date => matches!(value, Val::Str(_) | Val::Null),
    }
}

fn within_rules(kind: Kind, value: &Val) -> bool {
    match (kind, value) {
        (Kind::Identifier, Val::Str(s)) => valid_identifier(s),
        (Kind::Quantity, Val::Int(n)) => valid_quantity(*n),
        (Kind::Date, Val::Null) => true,
        (Kind::Date, Val::Str(s)) => VALID_DATES.contains(&s.as_str()),
        _ => false,
    }
}

/// The verdict on fields whose types fit: the ones that break a rule.
fn rules_verdict<'a>(values: impl Iterator<Item = (&'a Field, &'a Val)>) -> Verdict {
    let broken: Vec<&'static str> = values
        .filter(|(field, value)| !within_rules(field.kind, value))
        .map(|(field, _)| field.name)
        .collect();
    if broken.is_empty() {
        Verdict::Valid
    } else {
        Verdict::Invalid(broken)
    }
}

/// What the service makes of an object with these members.
fn object_verdict(spec: &'static [Field], members: &[Member]) -> Verdict {
    let mut seen = HashSet::new();
    for member in members {
        let Some(field) = spec.iter().find(|f| f.name == member.key) else {
            return Verdict::Invalid(Vec::new()); // an unknown field
        };
        if !seen.insert(field.name) || !type_fits(field.kind, &member.value) {
            return Verdict::Invalid(Vec::new()); // a duplicate, a wrong type
        }
    }
    if spec.iter().any(|f| f.required && !seen.contains(f.name)) {
        return Verdict::Invalid(Vec::new());
    }
    rules_verdict(spec.iter().filter_map(|field| {
        members
            .iter()
            .find(|m| m.key == field.name)
            .map(|m| (field, &m.value))
    }))
}

/// JSON whitespace between tokens, mostly none.
const WHITESPACE: &[&str] = &["", "", "", " ", "\n\t", "\r\n  "];

fn whitespace(rng: &mut StdRng) -> &'static str {
    WHITESPACE.choose(rng).copied().unwrap_or_default()
}

fn object_text(rng: &mut StdRng, members: &[Member]) -> String {
    let mut text = String::from("{");
    for (i, member) in members.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(whitespace(rng));
        text.push_str(&member.key_text);
        text.push_str(whitespace(rng));
        text.push(':');
        text.push_str(whitespace(rng));
        text.push_str(&member.text);
    }
    text.push_str(whitespace(rng));
    text.push('}');
    text
}

/// A body, what the generator knows of it, and the long strings in it
/// (which no answer may echo).
struct Body {
    bytes: Vec<u8>,
    verdict: Verdict,
    /// The spec's fields as decoded (meaningful when valid).
    fields: HashMap<&'static str, Val>,
    long_inputs: Vec<String>,
}

/// Changes the members in one way (which may or may not leave them valid).
fn mutate_members(
    rng: &mut StdRng,
    members: &mut Vec<Member>,
    spec: &'static [Field],
    pools: &Pools,
    label: &mut Vec<String>,
) {
    let any = !members.is_empty();
    let at = if any {
        rng.gen_range(0..members.len())
    } else {
        0
    };
    match rng.gen_range(0..10) {
        0 if any => {
            label.push(format!("drop {}", shown(members[at].key.as_bytes(), 20)));
            members.remove(at);
        }
        1 if any => {
            let mut copy = members[at].clone();
            if let Some(field) = spec.iter().find(|f| f.name == copy.key) {
                let (value, text) = pools.good_value(rng, field);
                copy.value = value;
                copy.text = text;
            }
            label.push(format!("duplicate {}", shown(copy.key.as_bytes(), 20)));
            let to = rng.gen_range(0..=members.len());
            members.insert(to, copy);
        }
        2 if any => {
            let old = members[at].key.clone();
            let new = match rng.gen_range(0..6) {
                0 => weird_string(rng),
                1 => (*pick(rng, FIELD_NAMES)).to_owned(),
                2 => old.to_uppercase(),
                3 => format!("{old} "),
                4 => format!("\u{0}{old}"),
                _ => String::new(),
            };
            label.push(format!(
                "rename {} to {}",
                shown(old.as_bytes(), 20),
                shown(new.as_bytes(), 40)
            ));
            members[at].key_text = json_string(&new);
            members[at].key = new;
        }
        3 => {
            let key = match rng.gen_range(0..3) {
                0 => weird_string(rng),
                _ => (*pick(
                    rng,
                    &[
                        "colour",
                        "id",
                        "__proto__",
                        "constructor",
                        "qty2",
                        "ref_",
                        "$where",
                        "version",
                    ],
                ))
                .to_owned(),
            };
            label.push(format!("unknown field {}", shown(key.as_bytes(), 40)));
            let value = bad_value(rng, label);
            let to = rng.gen_range(0..=members.len());
            members.insert(to, member(&key, value));
        }
        4 if any => {
            label.push(format!("{}:", shown(members[at].key.as_bytes(), 20)));
            let (value, text) = bad_value(rng, label);
            members[at].value = value;
            members[at].text = text;
        }
        5 if any => {
            label.push(format!(
                "escaped key {}",
                shown(members[at].key.as_bytes(), 20)
            ));
            members[at].key_text = escaped_json_string(&members[at].key);
        }
        6 if any => {
            if let Val::Str(s) = &members[at].value {
                label.push(format!(
                    "escaped value of {}",
                    shown(members[at].key.as_bytes(), 20)
                ));
                members[at].text = escaped_json_string(s);
            }
        }
        7 => {
            label.push("shuffled".to_owned());
            members.shuffle(rng);
        }
        8 if any => {
            let len = rng.gen_range(1024..=60_000);
            label.push(format!(
                "{} of {len}+ bytes",
                shown(members[at].key.as_bytes(), 20)
            ));
            let (value, text) = string_value(long_string(rng, len));
            members[at].value = value;
            members[at].text = text;
        }
        _ => {}
    }
}

/// Byte sequences that are no UTF-8.
const INVALID_UTF8: &[&[u8]] = &[
    &[0xFF],
    &[0xC0, 0x80],
    &[0xED, 0xA0, 0x80],
    &[0x80],
    &[0xF8, 0x88, 0x80, 0x80, 0x80],
    &[0xE2, 0x82],
];

/// Breaks (or, for whitespace, keeps) the body's text as a whole.
fn mutate_raw(rng: &mut StdRng, body: &mut Body, text_only: bool, label: &mut Vec<String>) {
    let choices: &[u8] = if text_only {
        &[0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    } else {
        &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    };
    let bytes = &mut body.bytes;
    let mut verdict = Verdict::Invalid(Vec::new());
    match *pick(rng, choices) {
        0 if !bytes.is_empty() => {
            let mut cut = rng.gen_range(0..bytes.len());
            while text_only && cut > 0 && (bytes[cut] & 0xC0) == 0x80 {
                cut -= 1;
            }
            label.push(format!("truncated at {cut}"));
            bytes.truncate(cut);
        }
        1 => {
            let bad = *pick(rng, INVALID_UTF8);
            let at = rng.gen_range(0..=bytes.len());
            label.push(format!("invalid UTF-8 {bad:02X?} at {at}"));
            bytes.splice(at..at, bad.iter().copied());
        }
        2 => {
            label.push("empty".to_owned());
            bytes.clear();
        }
        3 => {
            label.push("whitespace only".to_owned());
            *bytes = b" \n\t\r ".to_vec();
        }
        4 => {
            label.push("BOM".to_owned());
            bytes.splice(0..0, "\u{feff}".bytes());
        }
        5 => {
            label.push("padded with whitespace".to_owned());
            bytes.splice(0..0, b"\n  ".iter().copied());
            bytes.extend_from_slice(b" \r\n\t");
            verdict = body.verdict.clone();
        }
        6 => {
            let garbage = *pick(rng, &[",", "}", "]", "x", "\u{0}", "{}", " 1", "\"", "//"]);
            label.push(format!("trailing {garbage:?}"));
            bytes.extend_from_slice(garbage.as_bytes());
        }
        7 => {
            let other = *pick(
                rng,
                &[
                    "null",
                    "true",
                    "0",
                    "-1",
                    "\"fz\"",
                    "[]",
                    "[1]",
                    "[null,\"x\"]",
                    "{}",
                    "[[[]]]",
                    "[{}]",
                ],
            );
            label.push(format!("top-level {other}"));
            *bytes = other.as_bytes().to_vec();
        }
        8 => {
            let depth = rng.gen_range(1..=30_000);
            let open = *pick(rng, &["[", "{\"a\":"]);
            let closed = rng.gen_bool(0.5);
            label.push(format!("nested {depth} deep {open}, closed: {closed}"));
            let mut text = open.repeat(depth.min(MAX_BODY_BYTES / open.len() - 1));
            if closed && open == "[" {
                text.push_str(&"]".repeat(depth));
            }
            *bytes = text.into_bytes();
        }
        9 => {
            let len = rng.gen_range(1..512);
            label.push(format!("{len} random bytes"));
            *bytes = if text_only {
                (0..len)
                    .map(|_| random_char(rng))
                    .collect::<String>()
                    .into_bytes()
            } else {
                (0..len).map(|_| rng.gen::<u8>()).collect()
            };
        }
        10 => {
            let len = rng.gen_range(MAX_BODY_BYTES + 1..=1024 * 1024);
            if rng.gen_bool(0.5) && bytes.first() == Some(&b'{') {
                label.push(format!("padded to {len}+ bytes"));
                let pad = " ".repeat(len);
                bytes.splice(1..1, pad.bytes());
                verdict = Verdict::Invalid(Vec::new());
            } else {
                let huge = long_string(rng, len);
                label.push(format!("one field of {len}+ bytes"));
                *bytes = format!("{{\"qty\":{}}}", json_string(&huge)).into_bytes();
                body.long_inputs.push(huge);
            }
        }
        _ => {
            label.push("twice".to_owned());
            let copy = bytes.clone();
            bytes.extend_from_slice(&copy);
        }
    }
    body.verdict = verdict;
}

/// A body for the message `spec`: made valid, then changed in a few ways.
/// `text_only`: the body stays UTF-8 (a broker payload is a string).
fn body_for(
    rng: &mut StdRng,
    spec: &'static [Field],
    pools: &Pools,
    text_only: bool,
    label: &mut Vec<String>,
) -> Body {
    let mut members = Vec::new();
    for f in spec {
        if f.required || rng.gen_bool(0.7) {
            let value = pools.value(rng, f, label);
            members.push(member(f.name, value));
        }
    }
    let (text, verdict, fields) = if rng.gen_bool(0.06) {
        // Positional: serde reads a struct from an array of its fields too.
        label.push("as an array".to_owned());
        let values: Vec<(Val, String)> = spec.iter().map(|f| pools.value(rng, f, label)).collect();
        let verdict = if spec
            .iter()
            .zip(&values)
            .all(|(f, (v, _))| type_fits(f.kind, v))
        {
            rules_verdict(spec.iter().zip(values.iter().map(|(v, _)| v)))
        } else {
            Verdict::Invalid(Vec::new())
        };
        let texts: Vec<&str> = values.iter().map(|(_, t)| t.as_str()).collect();
        let fields = spec
            .iter()
            .map(|f| f.name)
            .zip(values.iter().map(|(v, _)| v.clone()));
        (format!("[{}]", texts.join(", ")), verdict, fields.collect())
    } else {
        for _ in 0..*pick(rng, &[0, 0, 1, 1, 1, 2, 3]) {
            mutate_members(rng, &mut members, spec, pools, label);
        }
        let fields = members
            .iter()
            .filter_map(|m| {
                let field = spec.iter().find(|f| f.name == m.key)?;
                Some((field.name, m.value.clone()))
            })
            .collect();
        (
            object_text(rng, &members),
            object_verdict(spec, &members),
            fields,
        )
    };
    let mut long_inputs: Vec<String> = members
        .iter()
        .flat_map(|m| {
            let value = match &m.value {
                Val::Str(s) => Some(s.clone()),
                _ => None,
            };
            std::iter::once(m.key.clone()).chain(value)
        })
        .filter(|s| s.len() > ECHO_LIMIT)
        .collect();
    if text.len() > ECHO_LIMIT {
        long_inputs.push(text.clone());
    }
    let mut body = Body {
        bytes: text.into_bytes(),
        verdict,
        fields,
        long_inputs,
    };
    if rng.gen_bool(0.22) {
        mutate_raw(rng, &mut body, text_only, label);
    }
    body
}

/// Whether `message` echoes more than [`ECHO_LIMIT`] bytes of one of
/// `inputs`: said as the problem, or `None`.
fn echo(message: &str, inputs: &[String]) -> Option<String> {
    if message.len() > MAX_MESSAGE_BYTES {
        return Some(format!(
            "a message of {} bytes (no message is that long unless it echoes the input)",
            message.len()
        ));
    }
    for input in inputs.iter().filter(|s| s.len() > ECHO_LIMIT) {
        for start in [0, input.len() / 2, input.len() - ECHO_LIMIT - 1] {
            let mut start = start.min(input.len() - ECHO_LIMIT - 1);
            while !input.is_char_boundary(start) {
                start -= 1;
            }
            let mut end = start + ECHO_LIMIT + 1;
            while !input.is_char_boundary(end) {
                end += 1;
            }
            if message.contains(&input[start..end]) {
                return Some(format!(
                    "it echoes {} bytes of an input of {} bytes",
                    end - start,
                    input.len()
                ));
            }
        }
    }
    None
}

/// Database error text that must never reach a client (unless the input
/// itself said it).
const DATABASE_WORDS: &[&str] = &[
    "sqlstate",
    "violates",
    "syntax error",
    "sqlx",
    "database",
    "sqlite",
    "postgres",
    "constraint",
    "duplicate key",
    "no such table",
    "no such column",
    "pool timed out",
    "deadlock",
    "relation \"",
    "column \"",
];

fn database_text(message: &str, input: &str) -> Option<&'static str> {
    let message = message.to_lowercase();
    DATABASE_WORDS
        .iter()
        .copied()
        .find(|word| message.contains(word) && !input.contains(word))
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// What a valid request may be answered, by route.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Route {
    AddBatch,
    Allocate,
    ChangeQuantity,
    Allocations,
    Operations,
    Unrouted,
}

impl Route {
    fn answers_valid_input_with(self, status: u16) -> bool {
        match self {
            Route::AddBatch => matches!(status, 201 | 409),
            Route::Allocate | Route::ChangeQuantity => matches!(status, 202 | 400 | 409),
            Route::Allocations => matches!(status, 200 | 404),
            Route::Operations | Route::Unrouted => true,
        }
    }
}

struct HttpCase {
    index: usize,
    label: String,
    method: Method,
    path: String,
    content_type: Option<Vec<u8>>,
    authorization: Option<Vec<u8>>,
    /// Headers more.
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
    route: Route,
    verdict: Verdict,
    long_inputs: Vec<String>,
}

impl HttpCase {
    fn describe(&self, seed: u64) -> String {
        let mut text = format!(
            "seed {seed} case {} [{}]: {} {}",
            self.index,
            self.label,
            self.method,
            shown(self.path.as_bytes(), 160)
        );
        if let Some(content_type) = &self.content_type {
            let _ = write!(text, ", content-type {}", shown(content_type, 60));
        }
        if let Some(authorization) = &self.authorization {
            let _ = write!(text, ", authorization {}", shown(authorization, 60));
        }
        if !self.headers.is_empty() {
            let _ = write!(text, ", {} headers more", self.headers.len());
        }
        match &self.body {
            Some(body) => {
                let _ = write!(text, ", body {}", shown(body, 200));
            }
            None => text.push_str(", no body"),
        }
        text
    }

    /// The request as text, to tell words of the input from the service's.
    fn input_text(&self) -> String {
        let mut text = self.path.clone();
        if let Some(body) = &self.body {
            text.push_str(&String::from_utf8_lossy(body));
        }
        text.to_lowercase()
    }
}

/// How a content type is taken: as JSON, refused, or not predicted.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Taken {
    Json,
    Refused,
    Unknown,
}

/// Content types other than plain JSON, and how the API takes each.
const CONTENT_TYPES: &[(Option<&[u8]>, Taken)] = &[
    (Some(b"application/json; charset=utf-8"), Taken::Json),
    (Some(b"application/vnd.fuzz+json"), Taken::Unknown),
    (Some(b"APPLICATION/JSON"), Taken::Unknown),
    (Some(b"application/json; charset=utf-16"), Taken::Unknown),
    (Some(b"application/json;;;"), Taken::Unknown),
    (None, Taken::Refused),
    (Some(b"text/plain"), Taken::Refused),
    (Some(b"application/x-www-form-urlencoded"), Taken::Refused),
    (Some(b"multipart/form-data; boundary=x"), Taken::Refused),
    (Some(b"application/jsonx"), Taken::Refused),
    (Some(b""), Taken::Refused),
    (Some(b"json"), Taken::Refused),
    (Some(b"application/json\xff"), Taken::Refused),
];

fn content_type(rng: &mut StdRng, label: &mut Vec<String>) -> (Option<Vec<u8>>, Taken) {
    if rng.gen_bool(0.82) {
        return (Some(b"application/json".to_vec()), Taken::Json);
    }
    let (value, taken) = *pick(rng, CONTENT_TYPES);
    label.push(format!(
        "content-type {}",
        value.map_or("none".to_owned(), |v| shown(v, 40))
    ));
    (value.map(<[u8]>::to_vec), taken)
}

/// Every byte as `%XX`.
fn percent_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// Every byte but the unreserved ones as `%XX`.
fn percent_some(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

const HTTP_REFS: &[&str] = &["fz-b1", "fz-b2", "fz-b3", "fz-b4"];
const HTTP_SKUS: &[&str] = &["FZ-LAMP", "FZ-SOFA"];

const UNKNOWN_PATHS: &[&str] = &[
    "/",
    "/add_batch/",
    "/allocate/x",
    "/allocations",
    "/allocations/",
    "/allocations/fz-o1/extra",
    "/ADD_BATCH",
    "/Allocate",
    "/add_batch%00",
    "/%FF",
    "/%00",
    "/..%2F..%2Fetc%2Fpasswd",
    "//allocate",
    "/allocate;jsessionid=1",
    "/add_batch.json",
    "/dead_letters/",
    "/dead_letters/1/replay/again",
    "/metrics",
    "/.env",
    "/admin",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/allocations/%2F/x",
    "/%E2%80%AE",
    "/%F0%9F%93%A6",
];

/// Routes, and methods they do not take.
const WRONG_METHODS: &[(&str, &[&str])] = &[
    (
        "/add_batch",
        &[
            "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FUZZ", "PROPFIND",
        ],
    ),
    (
        "/allocate",
        &["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "FUZZ"],
    ),
    (
        "/change_batch_quantity",
        &["GET", "PUT", "PATCH", "OPTIONS", "FUZZ"],
    ),
    (
        "/allocations/fz-o1",
        &["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "FUZZ"],
    ),
];

fn http_case(seed: u64, index: usize) -> HttpCase {
    let mut rng = case_rng(seed, 1, index);
    let rng = &mut rng;
    let mut label = Vec::new();
    let pools = Pools {
        refs: HTTP_REFS,
        skus: HTTP_SKUS,
        new_refs: true,
    };
    let mut case = HttpCase {
        index,
        label: String::new(),
        method: Method::GET,
        path: String::new(),
        content_type: None,
        authorization: None,
        headers: Vec::new(),
        body: None,
        route: Route::Unrouted,
        verdict: Verdict::Unknown,
        long_inputs: Vec::new(),
    };
    match rng.gen_range(0..100) {
        0..=61 => {
            let (route, spec, path) = match rng.gen_range(0..62) {
                0..=21 => (Route::AddBatch, ADD_BATCH, "/add_batch"),
                22..=43 => (Route::Allocate, ALLOCATE, "/allocate"),
                _ => (
                    Route::ChangeQuantity,
                    CHANGE_QUANTITY,
                    "/change_batch_quantity",
                ),
            };
            let body = body_for(rng, spec, &pools, false, &mut label);
            let (content_type, taken) = content_type(rng, &mut label);
            case.verdict = match (taken, body.verdict) {
                (Taken::Json, verdict) => verdict,
                (Taken::Refused, _) | (Taken::Unknown, Verdict::Invalid(_)) => {
                    Verdict::Invalid(Vec::new())
                }
                (Taken::Unknown, _) => Verdict::Unknown,
            };
            case.method = Method::POST;
            case.path = path.to_owned();
            if rng.gen_bool(0.05) {
                let query = *pick(rng, &["?x=1", "?x=%00", "?qty=5&sku=FZ-LAMP", "?%FF", "?"]);
                label.push(format!("query {query}"));
                case.path.push_str(query);
            }
            case.route = route;
            case.content_type = content_type;
            case.long_inputs = body.long_inputs;
            case.body = Some(body.bytes);
        }
        62..=75 => allocations_case(rng, &mut case, &mut label),
        76..=83 => operations_case(rng, &mut case, &mut label),
        84..=91 => {
            let (path, methods) = *pick(rng, WRONG_METHODS);
            let path = if path.starts_with("/allocations/") && rng.gen_bool(0.3) {
                let long = format!("/allocations/{}", "o".repeat(rng.gen_range(301..=8_000)));
                case.long_inputs.push(long.clone());
                long
            } else {
                path.to_owned()
            };
            let method = *pick(rng, methods);
            label.push(format!("wrong method {method}"));
            case.method = Method::from_bytes(method.as_bytes()).expect("a method");
            case.path = path;
            if method != "TRACE" && method != "GET" && method != "OPTIONS" && rng.gen_bool(0.5) {
                case.content_type = Some(b"application/json".to_vec());
                case.body =
                    Some(br#"{"ref":"fz-b1","sku":"FZ-LAMP","qty":1,"orderid":"fz-o1"}"#.to_vec());
            }
            case.verdict = Verdict::Invalid(Vec::new());
        }
        _ => {
            let path = match rng.gen_range(0..4) {
                0 => {
                    let len = rng.gen_range(300..=20_000);
                    format!("/{}", "a".repeat(len))
                }
                1 => format!("/{}", percent_some(&weird_string(rng))),
                _ => (*pick(rng, UNKNOWN_PATHS)).to_owned(),
            };
            let method = *pick(rng, &["GET", "POST", "PUT", "DELETE"]);
            label.push(format!("unknown route, {method}"));
            case.method = Method::from_bytes(method.as_bytes()).expect("a method");
            if method == "POST" {
                case.content_type = Some(b"application/json".to_vec());
                case.body = Some(br#"{"orderid":"fz-o1","sku":"FZ-LAMP","qty":1}"#.to_vec());
            }
            if path.len() > ECHO_LIMIT {
                case.long_inputs.push(path.clone());
            }
            case.path = path;
            case.verdict = Verdict::Invalid(Vec::new());
        }
    }
    if rng.gen_bool(0.03) {
        extra_headers(rng, &mut case, &mut label);
    }
    case.label = label.join(", ");
    case
}

/// Many headers, or a large one: within the API's limits (100 headers, 16
/// KiB) the verdict stands; over them it is a JSON 431.
fn extra_headers(rng: &mut StdRng, case: &mut HttpCase, label: &mut Vec<String>) {
    let count = rng.gen_range(1..=150);
    let size = *pick(rng, &[8, 64, 300, 20_000]);
    label.push(format!("{count} headers more, one of {size} bytes"));
    for n in 0..count {
        let value: Vec<u8> = if n == 0 {
            (0..size).map(|_| rng.gen_range(0x21..0x7F)).collect()
        } else {
            format!("v{n}").into_bytes()
        };
        case.headers.push((format!("x-fuzz-{n}"), value));
    }
    let over = count > 100 || size > 16 * 1024;
    let surely_within = count <= 90 && size <= 8 * 1024;
    if over {
        case.verdict = Verdict::Invalid(Vec::new());
    } else if !surely_within && case.verdict != Verdict::Invalid(Vec::new()) {
        case.verdict = Verdict::Unknown;
    }
}

/// `GET /allocations/{orderid}`, the segment encoded in several ways.
fn allocations_case(rng: &mut StdRng, case: &mut HttpCase, label: &mut Vec<String>) {
    case.route = Route::Allocations;
    let (segment, verdict) = match rng.gen_range(0..10) {
        0..=3 => {
            let orderid = format!("fz-o{}", rng.gen_range(0..60));
            (percent_some(&orderid), Verdict::Valid)
        }
        4..=6 => {
            let orderid = weird_string(rng);
            label.push(format!("orderid {}", shown(orderid.as_bytes(), 40)));
            let segment = if rng.gen_bool(0.5) {
                percent_all(&orderid)
            } else {
                percent_some(&orderid)
            };
            let verdict = if orderid.is_empty() || orderid == "." || orderid == ".." {
                Verdict::Unknown // no segment, or one the client resolves
            } else if valid_identifier(&orderid) {
                Verdict::Valid
            } else if orderid.len() > 200 {
                Verdict::Invalid(Vec::new()) // too long: 400, or 414 for the URI
            } else {
                Verdict::Invalid(vec!["orderid"])
            };
            if orderid.len() > ECHO_LIMIT {
                case.long_inputs.push(orderid);
            }
            (segment, verdict)
        }
        7 | 8 => {
            let raw = *pick(
                rng,
                &[
                    "%00",
                    "%FF",
                    "%C0%AF",
                    "%",
                    "%zz",
                    "%2",
                    "..%2F",
                    "%2e%2e%2f",
                    "a%00b",
                    "%E2%80%AE",
                    "%F0%9F%93%A6",
                    "%ED%A0%80",
                    "fz-o1%0A",
                    "fz-o1%1B[31m",
                    "fz-o1;x",
                    "fz-o1%2F..",
                ],
            );
            label.push(format!("segment {raw}"));
            let verdict = if raw.contains("%00") || raw.contains("%FF") || raw.contains("%ED%A0%80")
            {
                Verdict::Invalid(Vec::new())
            } else {
                Verdict::Unknown
            };
            (raw.to_owned(), verdict)
        }
        _ => {
            let unit = *pick(rng, &["o", "%41", "%C3%A9", "%00"]);
            let len = rng.gen_range(201..=MAX_TESTED_URI_BYTES / unit.len());
            label.push(format!("segment {unit} x {len}"));
            let segment = unit.repeat(len);
            case.long_inputs.push(segment.clone());
            (segment, Verdict::Invalid(Vec::new()))
        }
    };
    case.path = format!("/allocations/{segment}");
    if rng.gen_bool(0.05) {
        case.path.push_str("?orderid=fz-o1&x=%00");
    }
    case.verdict = verdict;
}

/// The operations routes, with the token and without.
fn operations_case(rng: &mut StdRng, case: &mut HttpCase, label: &mut Vec<String>) {
    case.route = Route::Operations;
    let token = FUZZ_ADMIN_TOKEN;
    let (authorization, accepted): (Option<Vec<u8>>, Option<bool>) = match rng.gen_range(0..20) {
        0..=10 => (Some(format!("Bearer {token}").into_bytes()), Some(true)),
        11 => (Some(format!("bearer {token}").into_bytes()), Some(true)),
        12 => (None, Some(false)),
        13 => (Some(b"Bearer wrong-token-0123456789".to_vec()), Some(false)),
        14 => (Some(b"Bearer".to_vec()), Some(false)),
        15 => (Some(format!("Bearer  {token}").into_bytes()), None),
        16 => (Some(b"Basic Zm9vOmJhcg==".to_vec()), Some(false)),
        17 => {
            let mut value = format!("Bearer {token}").into_bytes();
            value.push(0xFF);
            (Some(value), Some(false))
        }
        18 => {
            let len = rng.gen_range(1_000..=20_000);
            (
                Some(format!("Bearer {}", "x".repeat(len)).into_bytes()),
                Some(false),
            )
        }
        _ => (Some(format!("Bearer {token}x").into_bytes()), Some(false)),
    };
    if accepted != Some(true) {
        label.push(format!(
            "authorization {}",
            authorization
                .as_deref()
                .map_or("none".to_owned(), |a| shown(a, 40))
        ));
    }
    case.authorization = authorization;
    let ids: &[(&str, bool)] = &[
        ("1", true),
        ("0", true),
        ("42", true),
        ("007", true),
        ("9223372036854775807", true),
        ("-1", false),
        ("abc", false),
        ("1e3", false),
        ("%201", false),
        ("%00", false),
        ("%FF", false),
        ("99999999999999999999", false),
        ("1.0", false),
        ("0x1", false),
    ];
    let (path, valid) = match rng.gen_range(0..3) {
        0 => {
            let (query, valid) = *pick(
                rng,
                &[
                    ("", true),
                    ("?all=true", true),
                    ("?all=false", true),
                    ("?all=yes", false),
                    ("?x=1", false),
                    ("?all=%00", false),
                    ("?all=1", true),
                    ("?all=true&all=false", true),
                ],
            );
            case.method = Method::GET;
            (format!("/dead_letters{query}"), valid)
        }
        route => {
            let (id, valid) = match rng.gen_range(0..6) {
                0 => {
                    let id = "9".repeat(rng.gen_range(301..=5_000));
                    case.long_inputs.push(id.clone());
                    (id, false)
                }
                1 => {
                    let id = weird_string(rng);
                    if id.len() > ECHO_LIMIT {
                        case.long_inputs.push(id.clone());
                    }
                    let digits =
                        !id.is_empty() && id.len() < 19 && id.bytes().all(|b| b.is_ascii_digit());
                    (percent_all(&id), digits)
                }
                _ => {
                    let (id, valid) = *pick(rng, ids);
                    (id.to_owned(), valid)
                }
            };
            if route == 1 {
                case.method = Method::POST;
                (format!("/dead_letters/{id}/replay"), valid)
            } else {
                case.method = Method::DELETE;
                (format!("/dead_letters/{id}"), valid)
            }
        }
    };
    label.push(format!("operations {}", case.method));
    case.verdict = match accepted {
        Some(false) => Verdict::Invalid(Vec::new()),
        _ if !valid => Verdict::Invalid(Vec::new()),
        _ => Verdict::Unknown,
    };
    case.path = path;
}

/// Sends `case`: its status and body, or why there is no answer.
async fn send(
    client: &reqwest::Client,
    server: &Server,
    case: &HttpCase,
) -> Result<(StatusCode, Vec<u8>), String> {
    let url = reqwest::Url::parse(&server.url(&case.path))
        .unwrap_or_else(|e| panic!("case {}: a URL the client cannot parse: {e}", case.index));
    let mut request = client.request(case.method.clone(), url);
    if let Some(content_type) = &case.content_type {
        request = request.header(
            CONTENT_TYPE,
            HeaderValue::from_bytes(content_type).expect("a header"),
        );
    }
    if let Some(authorization) = &case.authorization {
        request = request.header(
            AUTHORIZATION,
            HeaderValue::from_bytes(authorization).expect("a header"),
        );
    }
    for (name, value) in &case.headers {
        request = request.header(
            name.as_str(),
            HeaderValue::from_bytes(value).expect("a header"),
        );
    }
    if let Some(body) = &case.body {
        request = request.body(body.clone());
    }
    let chain = |error: reqwest::Error| {
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            let _ = write!(text, ": {cause}");
            source = cause.source();
        }
        text
    };
    let response = request.send().await.map_err(chain)?;
    let status = response.status();
    let body = response.bytes().await.map_err(chain)?;
    Ok((status, body.to_vec()))
}

/// An over-limit request over a raw connection: its head, then only the
/// first `MAX_BODY_BYTES + 1` bytes of its body (all the server reads
/// before it refuses it), then its answer, read to the end.
async fn send_over_limit(
    server: &Server,
    case: &HttpCase,
) -> Result<(StatusCode, Vec<u8>), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let url = reqwest::Url::parse(&server.url(&case.path)).map_err(|e| e.to_string())?;
    let target = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let body = case.body.as_deref().unwrap_or_default();
    let mut head = format!(
        "{} {target} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\nconnection: close\r\n",
        case.method,
        server.addr(),
        body.len()
    )
    .into_bytes();
    let mut header = |name: &str, value: &[u8]| {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    };
    if let Some(content_type) = &case.content_type {
        header("content-type", content_type);
    }
    if let Some(authorization) = &case.authorization {
        header("authorization", authorization);
    }
    for (name, value) in &case.headers {
        header(name, value);
    }
    head.extend_from_slice(b"\r\n");
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(server.addr())
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        stream
            .write_all(&head)
            .await
            .map_err(|e| format!("writing the head: {e}"))?;
        let sent = body.len().min(MAX_BODY_BYTES + 1);
        // The server may answer and close before the last of it: no error.
        let _ = stream.write_all(&body[..sent]).await;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        Ok::<_, String>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| "no answer within 30 s".to_owned())??;
    parse_response(&answer)
}

/// A raw HTTP/1.1 answer's status and body (plain or chunked).
fn parse_response(answer: &[u8]) -> Result<(StatusCode, Vec<u8>), String> {
    let shown = || String::from_utf8_lossy(&answer[..answer.len().min(200)]).into_owned();
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no complete answer: {:?}", shown()))?;
    let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| format!("no status line: {:?}", shown()))?;
    let mut rest = &answer[end + 4..];
    if !head.contains("transfer-encoding: chunked") {
        return Ok((status, rest.to_vec()));
    }
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk without its size")?;
        let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..line_end]).trim(), 16)
            .map_err(|e| format!("a chunk size: {e}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok((status, body));
        }
        let chunk = rest.get(..size).ok_or("a chunk cut short")?;
        body.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or("a chunk cut short")?;
    }
}

/// Every rule an answer must keep; the ones it broke.
fn check_answer(case: &HttpCase, status: StatusCode, body: &[u8]) -> Vec<(&'static str, String)> {
    let mut broken = Vec::new();
    let answer = || format!("{status} {}", shown(body, 300));
    if status.is_server_error() {
        broken.push(("a 5xx", answer()));
    }
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let Some(json) = json else {
        broken.push(("a body that is not JSON", answer()));
        return broken;
    };
    if status.is_client_error() || status.is_server_error() {
        match json.get("message").and_then(Value::as_str) {
            None => broken.push(("an error without a string `message`", answer())),
            Some(message) => {
                if let Some(word) = database_text(message, &case.input_text()) {
                    broken.push((
                        "database text in a message",
                        format!("{word:?} in {}", answer()),
                    ));
                }
                if let Some(problem) = echo(message, &case.long_inputs) {
                    broken.push((
                        "a message that echoes the input",
                        format!("{problem}: {}", answer()),
                    ));
                }
                if let Verdict::Invalid(fields) = &case.verdict {
                    let named = fields.iter().any(|f| message.starts_with(&format!("{f} ")));
                    if status == StatusCode::BAD_REQUEST && !fields.is_empty() && !named {
                        broken.push((
                            "a refusal that does not name the field",
                            format!("expected one of {fields:?}: {}", answer()),
                        ));
                    }
                }
            }
        }
    }
    match &case.verdict {
        Verdict::Invalid(_) if !status.is_client_error() => {
            broken.push(("invalid input not refused with a 4xx", answer()));
        }
        Verdict::Valid if !case.route.answers_valid_input_with(status.as_u16()) => {
            broken.push(("valid input refused", answer()));
        }
        _ => {}
    }
    broken
}

pub async fn no_request_gets_a_5xx_or_a_body_that_is_not_json(binary: &str, database_url: &str) {
    let seed = seed();
    let total = case_count(HTTP_CASES);
    let kind = database_kind(database_url);
    println!(
        "fuzz http on {kind}: seed {seed} (FUZZ_SEED={seed} makes the same cases), {total} cases"
    );
    let server = Arc::new(Server::start_with(
        binary,
        database_url,
        &[("ADMIN_TOKEN", FUZZ_ADMIN_TOKEN)],
    ));
    add_batch(&server, "fz-b1", "FZ-LAMP", 100, None).await;
    add_batch(&server, "fz-b2", "FZ-LAMP", 50, Some("2026-12-01")).await;
    add_batch(&server, "fz-b3", "FZ-SOFA", 1_000_000_000, None).await;
    add_batch(&server, "fz-b4", "FZ-SOFA", 5, Some("2027-01-01")).await;
    for n in 0..10 {
        let sku = HTTP_SKUS[n % 2];
        let (status, body) = post(
            &server,
            "/allocate",
            json!({"orderid": format!("fz-o{n}"), "sku": sku, "qty": 2}),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "seeding: {body}");
    }

    let next = Arc::new(AtomicUsize::new(0));
    let statuses = Arc::new(Mutex::new(BTreeMap::<u16, usize>::new()));
    let failures = Arc::new(Mutex::new(Vec::<Failure>::new()));
    // Over-limit bodies whose 413 the client could not read: how many, the first.
    let cut_off = Arc::new(Mutex::new((0_usize, String::new())));
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (server, next) = (server.clone(), next.clone());
            let (statuses, failures) = (statuses.clone(), failures.clone());
            let cut_off = cut_off.clone();
            tokio::spawn(async move {
                // One kept-alive connection per worker, at most: the case
                // before a request is the one before it on its connection.
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .pool_max_idle_per_host(1)
                    .build()
                    .expect("a client");
                let mut previous: Option<(String, StatusCode)> = None;
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= total {
                        break;
                    }
                    let case = http_case(seed, index);
                    let mut broken = Vec::new();
                    let mut answer = send(&client, &server, &case).await;
                    let over_limit = case.body.as_ref().is_some_and(|b| b.len() > MAX_BODY_BYTES);
                    if answer.is_err() && over_limit {
                        // The server answered 413 before it read the whole
                        // body and closed, while the client was still
                        // sending it: the client never read the 413. Noted;
                        // then sent again over a raw connection that sends
                        // only as much of the body as the server reads, and
                        // reads the answer.
                        {
                            let mut cut = cut_off.lock().unwrap();
                            cut.0 += 1;
                            if cut.1.is_empty() {
                                cut.1 = case.describe(seed);
                            }
                        }
                        answer = send_over_limit(&server, &case).await;
                    } else if let Err(error) = &answer {
                        // The connection the answer before kept alive was
                        // closed under this request: that answer should
                        // have said `Connection: close`. Once more, on a
                        // new connection.
                        let before = previous
                            .as_ref()
                            .map_or("none".to_owned(), |(case, status)| {
                                format!("{case}, answered {status}")
                            });
                        broken.push((
                            "a kept-alive connection closed under the next request",
                            format!("{error}; the request before on this connection: {before}"),
                        ));
                        answer = send(&client, &server, &case).await;
                    }
                    match answer {
                        Ok((status, body)) => {
                            *statuses.lock().unwrap().entry(status.as_u16()).or_default() += 1;
                            broken.extend(check_answer(&case, status, &body));
                            previous = Some((case.describe(seed), status));
                        }
                        Err(error) => {
                            *statuses.lock().unwrap().entry(0).or_default() += 1;
                            broken.push(("no answer", error));
                            previous = None;
                        }
                    }
                    if !broken.is_empty() {
                        let described = case.describe(seed);
                        let mut failures = failures.lock().unwrap();
                        for (kind, detail) in broken {
                            failures.push(Failure {
                                kind,
                                case: described.clone(),
                                detail,
                            });
                        }
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("a fuzz worker panicked");
    }
    let elapsed = started.elapsed();
    let statuses = statuses.lock().unwrap().clone();
    let mut failures = std::mem::take(&mut *failures.lock().unwrap());
    let (cut, first_cut) = cut_off.lock().unwrap().clone();
    println!(
        "fuzz http on {kind}: seed {seed}, {total} cases in {:.1} s, statuses {statuses:?} (0: no answer), {} failure(s); {cut} over-limit body(ies) cut off before the client read the 413{}",
        elapsed.as_secs_f64(),
        failures.len(),
        if cut > 0 { format!(" (first: {})", shown(first_cut.as_bytes(), 200)) } else { String::new() }
    );

    // The server still serves, and still writes.
    let client = reqwest::Client::new();
    let steps = [
        (
            Method::POST,
            "/add_batch",
            Some(json!({"ref": "fz-after", "sku": "FZ-AFTER", "qty": 10, "eta": null})),
            StatusCode::CREATED,
            json!({"ref": "fz-after"}),
        ),
        (
            Method::POST,
            "/allocate",
            Some(json!({"orderid": "fz-after-order", "sku": "FZ-AFTER", "qty": 3})),
            StatusCode::ACCEPTED,
            json!({"batchref": "fz-after"}),
        ),
        (
            Method::GET,
            "/allocations/fz-after-order",
            None,
            StatusCode::OK,
            json!([{"sku": "FZ-AFTER", "qty": 3, "batchref": "fz-after"}]),
        ),
    ];
    for (method, path, body, status, expected) in steps {
        let mut request = client.request(method.clone(), server.url(path));
        if let Some(body) = &body {
            request = request.json(body);
        }
        let answer = match request.send().await {
            Ok(response) => {
                let got = response.status();
                let json: Option<Value> = response.json().await.ok();
                (got == status && json.as_ref() == Some(&expected))
                    .then_some(())
                    .ok_or(format!("{got} {json:?}, expected {status} {expected}"))
            }
            Err(error) => Err(format!("no answer: {error}")),
        };
        if let Err(detail) = answer {
            failures.push(Failure {
                kind: "the server does not serve a valid request after the fuzz",
                case: format!("seed {seed}, after the fuzz: {method} {path} {body:?}"),
                detail,
            });
            break;
        }
    }
    if let Some(report) = report(
        "no_request_gets_a_5xx_or_a_body_that_is_not_json",
        seed,
        &failures,
    ) {
        panic!("{report}");
    }
}

// ---------------------------------------------------------------------------
// The broker
// ---------------------------------------------------------------------------

/// The names a message of the stream is handled under: the command's own,
/// and its external one.
const ACCEPTED_NAMES: &[&str] = &["allocation.change_batch_quantity", "change_batch_quantity"];

/// The service's other messages: never taken from the stream.
const REFUSED_NAMES: &[&str] = &[
    "allocation.allocated",
    "line_allocated",
    "allocation.deallocated",
    "allocation.out_of_stock",
    "allocation.allocate",
    "allocation.create_batch",
    "allocation.allocations",
];

const ODD_NAMES: &[&str] = &[
    "",
    " ",
    "change_batch_quantity ",
    " change_batch_quantity",
    "CHANGE_BATCH_QUANTITY",
    "allocation.change_batch_quantity\u{0}",
    "allocation.Change_Batch_Quantity",
    "change_batch_quantity\n",
    "allocation.*",
    "*",
    "allocation.",
    "allocation",
    "change_batch_quantity.allocation",
    "allocation..change_batch_quantity",
    "allocation.change_batch_quantity\u{200b}",
    "\u{430}llocation.change_batch_quantity",
    "%s",
];

/// A batch: reference, product, units, arrival (year, month, day).
type Stock = (&'static str, &'static str, u32, Option<(i32, u32, u32)>);

/// The stock of the broker test.
const BROKER_BATCHES: &[Stock] = &[
    ("fz-b1", "FZ-LAMP", 40, None),
    ("fz-b2", "FZ-LAMP", 60, Some((2026, 12, 1))),
    ("fz-b3", "FZ-LAMP", 30, Some((2027, 1, 15))),
    ("fz-b4", "FZ-SOFA", 20, None),
    ("fz-b5", "FZ-SOFA", 1000, Some((2026, 11, 1))),
    ("fz-b6", "FZ-DESK", 5, None),
];
const BROKER_REFS: &[&str] = &["fz-b1", "fz-b2", "fz-b3", "fz-b4", "fz-b5", "fz-b6"];
const BROKER_SKUS: &[&str] = &["FZ-LAMP", "FZ-SOFA", "FZ-DESK"];

/// The order of every refused message's payload: no line, no batch may
/// ever come of it.
const EVIL: &str = "fz-evil";

struct BrokerCase {
    index: usize,
    label: String,
    name: String,
    payload: String,
    verdict: Verdict,
    fields: HashMap<&'static str, Val>,
    /// The index of the earlier message whose id this one reuses.
    reuses: Option<usize>,
    /// The stream its delivery claims (the consumer must go by its own).
    claimed_stream: Option<&'static str>,
    redeliveries: u32,
}

impl BrokerCase {
    fn describe(&self, seed: u64) -> String {
        let mut text = format!(
            "seed {seed} message {} [{}]: name {}, payload {}",
            self.index,
            self.label,
            shown(self.name.as_bytes(), 80),
            shown(self.payload.as_bytes(), 200)
        );
        if let Some(earlier) = self.reuses {
            let _ = write!(text, ", the id of message {earlier}");
        }
        if let Some(stream) = self.claimed_stream {
            let _ = write!(text, ", delivered as from stream {stream:?}");
        }
        text
    }

    /// Whether the consumer must dispatch it (an id it has not handled).
    fn is_for_the_command(&self) -> bool {
        let exists = matches!(self.fields.get("batchref"), Some(Val::Str(r)) if BROKER_REFS.contains(&r.as_str()));
        ACCEPTED_NAMES.contains(&self.name.as_str())
            && self.payload.len() <= MAX_BODY_BYTES
            && self.verdict == Verdict::Valid
            && exists
    }

    fn long_inputs(&self) -> Vec<String> {
        [&self.name, &self.payload]
            .into_iter()
            .filter(|s| s.len() > ECHO_LIMIT)
            .cloned()
            .collect()
    }
}

/// A payload fit for one of the service's other messages.
fn own_payload(name: &str) -> Value {
    match name {
        "allocation.allocated" | "line_allocated" => {
            json!({"orderid": EVIL, "sku": "FZ-LAMP", "qty": 1, "batchref": "fz-b1", "version": 99})
        }
        "allocation.deallocated" => {
            json!({"orderid": EVIL, "sku": "FZ-LAMP", "qty": 1, "version": 99})
        }
        "allocation.out_of_stock" => json!({"sku": "FZ-LAMP"}),
        "allocation.allocate" => json!({"orderid": EVIL, "sku": "FZ-LAMP", "qty": 1}),
        "allocation.create_batch" => {
            json!({"reference": EVIL, "sku": "FZ-EVIL", "qty": 1000, "eta": null})
        }
        _ => json!({"orderid": EVIL}),
    }
}

fn broker_case(seed: u64, index: usize) -> BrokerCase {
    let mut rng = case_rng(seed, 2, index);
    let rng = &mut rng;
    let mut label = Vec::new();
    let pools = Pools {
        refs: BROKER_REFS,
        skus: BROKER_SKUS,
        new_refs: false,
    };
    let name = match rng.gen_range(0..100) {
        0..=54 => (*pick(rng, ACCEPTED_NAMES)).to_owned(),
        55..=79 => (*pick(rng, REFUSED_NAMES)).to_owned(),
        80..=89 => (*pick(rng, ODD_NAMES)).to_owned(),
        90..=96 => weird_string(rng),
        _ => {
            let len = rng.gen_range(1_000..=1024 * 1024);
            label.push(format!("a name of {len}+ bytes"));
            if rng.gen_bool(0.5) {
                "allocation.change_batch_quantity".repeat(len / 32 + 1)
            } else {
                long_string(rng, len)
            }
        }
    };
    let (payload, verdict, fields) = if REFUSED_NAMES.contains(&name.as_str()) && rng.gen_bool(0.5)
    {
        label.push("its own payload".to_owned());
        (
            own_payload(&name).to_string(),
            Verdict::Unknown,
            HashMap::new(),
        )
    } else {
        let body = body_for(rng, STREAM_CHANGE_QUANTITY, &pools, true, &mut label);
        let payload = String::from_utf8(body.bytes).expect("a text-only body is UTF-8");
        (payload, body.verdict, body.fields)
    };
    let reuses = (index > 0 && rng.gen_bool(0.07)).then(|| rng.gen_range(0..index));
    let claimed_stream = rng.gen_bool(0.05).then(|| {
        *pick(
            rng,
            &["line_allocated", "", "elsewhere", "change_batch_quantity "],
        )
    });
    BrokerCase {
        index,
        label: label.join(", "),
        name,
        payload,
        verdict,
        fields,
        reuses,
        claimed_stream,
        redeliveries: *pick(rng, &[0, 0, 0, 1, 7, u32::MAX]),
    }
}

/// What the consumer must do with a message.
#[derive(Debug, PartialEq)]
enum Expected {
    Done,
    Duplicate,
    DeadLettered,
}

/// A reason, by the rule it names (for the summary).
fn reason_kind(reason: &str) -> &'static str {
    if reason.starts_with("a payload of") {
        "too large"
    } else if reason.contains("not accepted on stream") {
        "not declared"
    } else if reason.starts_with("no message is named") {
        "unknown name"
    } else if reason.contains("is a query") {
        "a query"
    } else if reason.starts_with("malformed") {
        "malformed"
    } else if reason.contains("failed") {
        "failed"
    } else {
        "other"
    }
}

/// What the run saw.
#[derive(Default)]
struct BrokerRun {
    failures: Vec<Failure>,
    outcomes: BTreeMap<&'static str, usize>,
    reasons: BTreeMap<&'static str, usize>,
    /// Every dead-lettered reason, in order.
    dead: Vec<String>,
    /// The purchased quantity each batch must have now.
    quantities: HashMap<String, u32>,
    /// The longest reason, and the message it was for.
    longest_reason: (usize, String),
    /// Reasons that echo more than `ECHO_LIMIT` bytes of the message: how
    /// many of each kind, and the first.
    echoing_reasons: BTreeMap<&'static str, usize>,
    first_echoing_reason: Option<String>,
}

async fn run_messages(
    seed: u64,
    total: usize,
    database: Arc<Database>,
    bus: arch_events::Bus,
    broker: InMemoryBroker,
    current: Arc<Mutex<String>>,
) -> BrokerRun {
    let mut run = BrokerRun {
        quantities: BROKER_BATCHES
            .iter()
            .map(|(reference, _, qty, _)| ((*reference).to_owned(), *qty))
            .collect(),
        ..BrokerRun::default()
    };
    let mut consumer =
        Consumer::new(bus.clone(), broker.subscribe(STREAM)).with_inbox(database.inbox());
    let mut ids: Vec<MessageId> = Vec::with_capacity(total);
    let mut done: HashSet<MessageId> = HashSet::new();
    let mut lines = 0;
    for index in 0..total {
        // New lines now and then, for the quantity changes to move.
        if index % 25 == 0 {
            for _ in 0..2 {
                lines += 1;
                let sku = BROKER_SKUS[lines % BROKER_SKUS.len()];
                let allocate = Allocate {
                    orderid: format!("fz-line-{lines}"),
                    sku: sku.to_owned(),
                    qty: (lines % 7 + 1) as u32,
                };
                if let Err(error) = bus.dispatch(allocate).await {
                    run.failures.push(Failure {
                        kind: "an allocation between messages failed",
                        case: format!("seed {seed}, before message {index}: fz-line-{lines}"),
                        detail: error.to_string(),
                    });
                }
            }
        }
        let case = broker_case(seed, index);
        let described = case.describe(seed);
        current.lock().unwrap().clone_from(&described);
        let id = case
            .reuses
            .map_or_else(MessageId::new, |earlier| ids[earlier]);
        ids.push(id);
        let expected = if done.contains(&id) {
            Expected::Duplicate
        } else if case.is_for_the_command() {
            Expected::Done
        } else {
            Expected::DeadLettered
        };
        let message = OutboundMessage {
            id,
            stream: STREAM.to_owned(),
            name: case.name.clone(),
            payload: case.payload.clone(),
            correlation_id: id,
            causation_id: (index % 3 == 0).then(MessageId::new),
        };
        let handled = match case.claimed_stream {
            Some(stream) => {
                let delivery = Delivery {
                    message: OutboundMessage {
                        stream: stream.to_owned(),
                        ..message
                    },
                    receipt: format!("claimed-{index}"),
                    redeliveries: case.redeliveries,
                };
                consumer
                    .handle(&delivery)
                    .await
                    .map(|handled| vec![handled])
            }
            None => {
                broker
                    .publish(&message)
                    .await
                    .expect("the in-memory broker takes it");
                consumer.poll_once().await
            }
        };
        let mut fail = |kind: &'static str, detail: String| {
            run.failures.push(Failure {
                kind,
                case: described.clone(),
                detail,
            });
        };
        let handled = match handled {
            Ok(mut handled) if handled.len() == 1 => handled.remove(0),
            Ok(handled) => {
                fail("not one outcome for one message", format!("{handled:?}"));
                continue;
            }
            Err(error) => {
                fail("the consumer failed", error.to_string());
                continue;
            }
        };
        let outcome = match &handled {
            Handled::Done => "done",
            Handled::Duplicate => "duplicate",
            Handled::DeadLettered(_) => "dead-lettered",
            Handled::Left => "left",
            _ => "another outcome",
        };
        *run.outcomes.entry(outcome).or_default() += 1;
        match (&handled, &expected) {
            (Handled::Done, Expected::Done) => {
                done.insert(id);
                if let (Some(Val::Str(reference)), Some(Val::Int(qty))) =
                    (case.fields.get("batchref"), case.fields.get("qty"))
                {
                    run.quantities.insert(reference.clone(), *qty as u32);
                }
            }
            (Handled::Duplicate, Expected::Duplicate) => {}
            (Handled::DeadLettered(reason), Expected::DeadLettered) => {
                if reason.is_empty() {
                    fail("dead-lettered without a reason", String::new());
                }
            }
            (Handled::Left, _) => fail("left unacknowledged", format!("expected {expected:?}")),
            (Handled::Done, _) => {
                done.insert(id);
                fail(
                    "dispatched, and it must not be",
                    format!("expected {expected:?}"),
                );
            }
            (other, _) => fail(
                "not what the inbound rules say",
                format!(
                    "expected {expected:?}, got {}",
                    shown(format!("{other:?}").as_bytes(), 400)
                ),
            ),
        }
        if let Handled::DeadLettered(reason) = handled {
            *run.reasons.entry(reason_kind(&reason)).or_default() += 1;
            if let Some(problem) = echo(&reason, &case.long_inputs()) {
                *run.echoing_reasons.entry(reason_kind(&reason)).or_default() += 1;
                run.first_echoing_reason
                    .get_or_insert_with(|| format!("{described}: {problem}"));
            }
            if reason.len() > run.longest_reason.0 {
                run.longest_reason = (reason.len(), described.clone());
            }
            run.dead.push(reason);
        }
    }
    run
}

pub async fn no_broker_payload_escapes_the_inbound_rules(database_url: &str) {
    let seed = seed();
    let total = case_count(BROKER_CASES);
    let kind = database_kind(database_url);
    println!("fuzz broker on {kind}: seed {seed} (FUZZ_SEED={seed} makes the same messages), {total} messages");
    let database = Arc::new(
        Database::connect(database_url)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let bus = bootstrap(Adapters::for_database(&database)).expect("wiring");
    for (reference, sku, qty, eta) in BROKER_BATCHES {
        bus.dispatch(CreateBatch {
            reference: (*reference).to_owned(),
            sku: (*sku).to_owned(),
            qty: *qty,
            eta: eta.map(|(y, m, d)| chrono::NaiveDate::from_ymd_opt(y, m, d).expect("a date")),
        })
        .await
        .expect("a batch");
    }
    let broker = InMemoryBroker::default();
    let current = Arc::new(Mutex::new(String::from("before the first message")));
    let started = Instant::now();
    let running = tokio::spawn(run_messages(
        seed,
        total,
        database.clone(),
        bus.clone(),
        broker.clone(),
        current.clone(),
    ));
    let mut run = match running.await {
        Ok(run) => run,
        Err(error) => panic!(
            "the consumer panicked ({error}) on {}",
            current.lock().unwrap()
        ),
    };
    let elapsed = started.elapsed();
    let mut fail = |kind: &'static str, detail: String| {
        run.failures.push(Failure {
            kind,
            case: format!("seed {seed}, after {total} messages"),
            detail,
        });
    };

    // Every delivery settled, every refusal in the dead letters.
    if broker.pending() != 0 {
        fail(
            "deliveries left pending",
            format!("{} pending", broker.pending()),
        );
    }
    let letters = broker.dead_letters(STREAM);
    let reasons: Vec<&String> = letters.iter().map(|(_, reason)| reason).collect();
    if reasons.len() != run.dead.len() || reasons.iter().zip(&run.dead).any(|(a, b)| *a != b) {
        fail(
            "the dead letters are not the dead-lettered messages",
            format!(
                "{} dead letters for {} dead-lettered messages",
                reasons.len(),
                run.dead.len()
            ),
        );
    }

    // The cascades done, the write model is sane.
    bus.shutdown(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: the bus does not settle: {e}"));
    let mut holders: HashMap<(String, String), Vec<String>> = HashMap::new();
    for (reference, ..) in BROKER_BATCHES {
        let mut uow = database.unit_of_work(EventReleaser::new());
        let product = uow
            .products()
            .get_with_batch_lines(reference)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: reading {reference}: {e}"))
            .unwrap_or_else(|| panic!("seed {seed}: batch {reference} is gone"));
        let batch = product.batch(reference).expect("its batch");
        let lines: u64 = batch.allocations().iter().map(|l| u64::from(l.qty)).sum();
        let state = format!(
            "{reference}: purchased {}, allocated {}, available {}, lines {lines} (all loaded: {})",
            batch.purchased_quantity(),
            batch.allocated_quantity(),
            batch.available_quantity(),
            batch.all_loaded()
        );
        if batch.available_quantity() < 0
            || batch.allocated_quantity() > u64::from(batch.purchased_quantity())
        {
            fail("a batch oversold", state.clone());
        }
        if batch.all_loaded() && lines != batch.allocated_quantity() {
            fail(
                "a batch's lines do not add up to its allocated quantity",
                state.clone(),
            );
        }
        if Some(&batch.purchased_quantity()) != run.quantities.get(*reference) {
            fail(
                "a batch's quantity is not the last one dispatched",
                format!("{state}; expected {:?}", run.quantities.get(*reference)),
            );
        }
        for line in batch.allocations() {
            if line.orderid == EVIL {
                fail("a refused message allocated a line", state.clone());
            }
            holders
                .entry((line.orderid.clone(), line.sku.clone()))
                .or_default()
                .push((*reference).to_owned());
        }
    }
    for ((orderid, sku), batches) in &holders {
        if batches.len() > 1 {
            fail(
                "a line allocated twice",
                format!("{orderid} ({sku}) in {batches:?}"),
            );
        }
    }
    {
        let mut uow = database.unit_of_work(EventReleaser::new());
        if uow.products().get("FZ-EVIL").await.expect("read").is_some() {
            fail(
                "a refused message created a product",
                "FZ-EVIL exists".to_owned(),
            );
        }
    }
    let view = (Adapters::for_database(&database).views)(&mut Scope::new());
    let rows = view.for_order(EVIL).await.expect("the view reads");
    if !rows.is_empty() {
        fail("a refused message reached the view", format!("{rows:?}"));
    }
    database.close().await;

    println!(
        "fuzz broker on {kind}: seed {seed}, {total} messages in {:.1} s, outcomes {:?}, dead-letter reasons {:?}, longest reason {} bytes ({}), reasons echoing over {ECHO_LIMIT} bytes of the message {:?}{}, {} failure(s)",
        elapsed.as_secs_f64(),
        run.outcomes,
        run.reasons,
        run.longest_reason.0,
        shown(run.longest_reason.1.as_bytes(), 120),
        run.echoing_reasons,
        run.first_echoing_reason
            .as_ref()
            .map_or(String::new(), |first| format!(" (first: {})", shown(first.as_bytes(), 300))),
        run.failures.len()
    );
    if let Some(report) = report(
        "no_broker_payload_escapes_the_inbound_rules",
        seed,
        &run.failures,
    ) {
        panic!("{report}");
    }
}
