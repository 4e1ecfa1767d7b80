//! What a message's fields may hold, checked once, wherever the message
//! enters (an HTTP body, a broker's stream): the commands' constructors and
//! their `Deserialize` both go through here.
//!
//! Identifiers (references, skus, order ids) are 1 to
//! [`MAX_IDENTIFIER_BYTES`] bytes of printable text: no control characters
//! (NUL, newlines, escapes), which a database, a log line or a terminal
//! would otherwise take as something else. The limits are the same on every
//! database, so a request that SQLite takes, PostgreSQL takes too.

use chrono::{Datelike, NaiveDate};

/// The longest identifier, in bytes of UTF-8.
pub const MAX_IDENTIFIER_BYTES: usize = 200;

/// The largest quantity.
pub const MAX_QUANTITY: u32 = 1_000_000_000;

/// A field that does not hold what it must; the message names the field
/// and says what is wrong, without echoing an oversized value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct InvalidField {
    /// The field, as the client spells it.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl InvalidField {
    fn new(field: &'static str, problem: impl Into<String>) -> Self {
        InvalidField {
            field,
            problem: problem.into(),
        }
    }
}

/// An identifier: not blank, at most [`MAX_IDENTIFIER_BYTES`] bytes, no
/// control characters.
pub fn identifier(field: &'static str, value: String) -> Result<String, InvalidField> {
    if value.len() > MAX_IDENTIFIER_BYTES {
        return Err(InvalidField::new(
            field,
            format!(
                "must be at most {MAX_IDENTIFIER_BYTES} bytes, got {}",
                value.len()
            ),
        ));
    }
    if value.trim().is_empty() {
        return Err(InvalidField::new(field, "must not be empty"));
    }
    if let Some(position) = value.chars().position(refused_character) {
        return Err(InvalidField::new(
            field,
            format!(
                "must not contain control or invisible formatting characters \
                 (one at character {position})"
            ),
        ));
    }
    if value.trim() != value {
        return Err(InvalidField::new(
            field,
            "must not start or end with whitespace",
        ));
    }
    Ok(value)
}

/// A character that is not text a person can read and tell apart: a control
/// character (NUL, newline, escape...), a line or paragraph separator, or
/// an invisible formatting one (zero-width, bidirectional overrides, the
/// byte-order mark, variation selectors, tag characters), a blank that is
/// not a space (no-break and ideographic spaces, Hangul fillers, the blank
/// Braille cell), or a private-use character: what would make two
/// identifiers look the same or reorder what a log or a terminal shows.
/// (Text is not normalized: `CAFÉ` composed and decomposed are two skus.)
///
/// ```
/// use example_app::domain::validation::refused_character;
///
/// assert!(refused_character('\u{200B}'), "zero-width space");
/// assert!(refused_character('\u{00A0}'), "no-break space");
/// assert!(!refused_character(' '));
/// assert!(!refused_character('é'));
/// ```
pub fn refused_character(c: char) -> bool {
    c.is_control()
        || (c.is_whitespace() && c != ' ')
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
            | '\u{034F}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{2800}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FFA0}'
            | '\u{E0000}'..='\u{E0FFF}'
            | '\u{F0000}'..='\u{10FFFF}'
            | '\u{E000}'..='\u{F8FF}'
        )
}

/// A quantity: a whole number from 1 to [`MAX_QUANTITY`].
pub fn quantity(field: &'static str, value: i64) -> Result<u32, InvalidField> {
    match u32::try_from(value) {
        Ok(qty) if (1..=MAX_QUANTITY).contains(&qty) => Ok(qty),
        _ => Err(InvalidField::new(
            field,
            format!("must be a whole number from 1 to {MAX_QUANTITY}, got {value}"),
        )),
    }
}

/// A date as `YYYY-MM-DD`, years 1 to 9999, or none.
pub fn date(field: &'static str, value: Option<String>) -> Result<Option<NaiveDate>, InvalidField> {
    value
        .map(|text| {
            let shaped = text.len() == 10
                && text.bytes().enumerate().all(|(i, b)| match i {
                    4 | 7 => b == b'-',
                    _ => b.is_ascii_digit(),
                });
            Some(&text)
                .filter(|_| shaped)
                .and_then(|text| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok())
                .filter(|date| (1..=9999).contains(&date.year()))
                .ok_or_else(|| {
                    let shown: String = text.chars().take(32).collect();
                    InvalidField::new(
                        field,
                        format!(
                            "must be a date YYYY-MM-DD (years 1 to 9999) or null, got {shown:?}"
                        ),
                    )
                })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_short_printable_text() {
        assert_eq!(identifier("sku", "LAMP".into()), Ok("LAMP".into()));
        assert_eq!(identifier("sku", "é".repeat(100)).map(|s| s.len()), Ok(200));
        assert_eq!(
            identifier("sku", "RED CHAIR".into()),
            Ok("RED CHAIR".into())
        );
        for (value, problem) in [
            (String::new(), "must not be empty"),
            ("  ".into(), "must not be empty"),
            (
                "b\u{0}".into(),
                "control or invisible formatting characters (one at character 1)",
            ),
            ("a\u{200B}b".into(), "invisible formatting"),
            ("\u{202E}PMAL".into(), "invisible formatting"),
            ("a\u{2028}b".into(), "invisible formatting"),
            ("\u{FEFF}LAMP".into(), "invisible formatting"),
            (" LAMP".into(), "must not start or end with whitespace"),
            ("A\u{00A0}B".into(), "invisible formatting"),
            ("\u{3164}".into(), "invisible formatting"),
            ("\u{2800}".into(), "invisible formatting"),
            ("LAMP\u{E0041}".into(), "invisible formatting"),
            ("LAMP\u{FE0F}".into(), "invisible formatting"),
            ("LAMP ".into(), "must not start or end with whitespace"),
            ("a\nb".into(), "control or invisible"),
            ("\u{1b}[31m".into(), "control or invisible"),
            ("x".repeat(201), "at most 200 bytes, got 201"),
            ("é".repeat(101), "at most 200 bytes, got 202"),
        ] {
            let error = identifier("sku", value.clone()).unwrap_err();
            assert_eq!(error.field, "sku");
            assert!(error.to_string().contains(problem), "{value:?}: {error}");
        }
    }

    #[test]
    fn quantities_are_whole_numbers_from_one() {
        assert_eq!(quantity("qty", 1), Ok(1));
        assert_eq!(quantity("qty", i64::from(MAX_QUANTITY)), Ok(MAX_QUANTITY));
        for value in [0, -1, i64::from(MAX_QUANTITY) + 1, i64::MAX, i64::MIN] {
            let error = quantity("qty", value).unwrap_err();
            assert!(
                error.to_string().contains(&format!("got {value}")),
                "{error}"
            );
        }
    }

    #[test]
    fn a_bad_date_is_named_and_not_echoed_whole() {
        assert_eq!(date("eta", None), Ok(None));
        assert!(date("eta", Some("2026-12-01".into())).unwrap().is_some());
        let error = date("eta", Some("9".repeat(10_000))).unwrap_err();
        assert!(error.to_string().len() < 120, "{error}");
        for out_of_range in [
            "-100000-01-01",
            "0000-12-31",
            "+10000-01-01",
            "2026-1-1",
            "+2026-01-01",
            " 2026-01-01",
        ] {
            assert!(
                date("eta", Some(out_of_range.into())).is_err(),
                "{out_of_range}"
            );
        }
        assert!(date("eta", Some("9999-12-31".into())).unwrap().is_some());
        assert!(date("eta", Some("0001-01-01".into())).unwrap().is_some());
    }
}
