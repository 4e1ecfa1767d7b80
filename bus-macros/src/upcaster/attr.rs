//! The arguments of `#[upcaster(Event, from = N)]`.

use proc_macro2::{Span, TokenStream};
use syn::parse::{Parse, ParseStream};
use syn::{LitInt, Path, Token};

use crate::errors::Errors;

pub(crate) struct UpcasterArgs {
    /// The event type whose stored shape it upcasts.
    pub(crate) event: Path,
    /// The schema version it reads; it writes `from + 1`.
    pub(crate) from: u32,
}

/// What was written, before it is checked.
struct Raw {
    event: Option<Path>,
    from: Option<LitInt>,
}

impl Parse for Raw {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut raw = Raw {
            event: None,
            from: None,
        };
        if input.is_empty() {
            return Ok(raw);
        }
        if !(input.peek(syn::Ident) && input.peek2(Token![=])) {
            raw.event = Some(input.parse()?);
            if input.is_empty() {
                return Ok(raw);
            }
            input.parse::<Token![,]>()?;
        }
        while !input.is_empty() {
            let key: syn::Ident = input.parse()?;
            if key != "from" {
                return Err(syn::Error::new(
                    key.span(),
                    format!("unknown argument `{key}` for `#[upcaster]`: write `#[upcaster(EventType, from = 1)]`"),
                ));
            }
            if raw.from.is_some() {
                return Err(syn::Error::new(key.span(), "`from` is given twice"));
            }
            input.parse::<Token![=]>()?;
            raw.from = Some(input.parse()?);
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(raw)
    }
}

/// The arguments, or `None` (with the errors) when they are wrong.
pub(crate) fn parse(args: TokenStream, errors: &mut Errors) -> Option<UpcasterArgs> {
    let raw: Raw = match syn::parse2(args) {
        Ok(raw) => raw,
        Err(error) => {
            errors.push(error);
            return None;
        }
    };
    let event = match raw.event {
        Some(event) => Some(event),
        None => {
            errors.push(syn::Error::new(
                Span::call_site(),
                "`#[upcaster]` names the event whose stored shape it upcasts, and the version it reads: \
                 `#[upcaster(EventType, from = 1)]`",
            ));
            None
        }
    };
    let from = match raw.from {
        Some(literal) => match literal.base10_parse::<u32>() {
            Ok(0) => {
                errors.spanned(
                    &literal,
                    "schema versions start at 1: an upcaster reads `from = 1` or more",
                );
                None
            }
            Ok(from) => Some(from),
            Err(_) => {
                errors.spanned(
                    &literal,
                    "`from` is a schema version: a whole number, such as `from = 1`",
                );
                None
            }
        },
        None => {
            if event.is_some() {
                errors.push(syn::Error::new(
                    Span::call_site(),
                    "`#[upcaster]` says which schema version it reads: add `from = 1` (it writes `from + 1`)",
                ));
            }
            None
        }
    };
    Some(UpcasterArgs {
        event: event?,
        from: from?,
    })
}
