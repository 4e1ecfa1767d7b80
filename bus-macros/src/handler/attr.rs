//! `#[handler(...)]`'s arguments: `releases(EventA, EventB)`.

use proc_macro2::TokenStream;
use syn::punctuated::Punctuated;
use syn::{LitStr, Path, Token};

use crate::args::ArgWalker;
use crate::errors::Errors;

/// `#[handler]`'s arguments.
#[derive(Default)]
pub(crate) struct HandlerArgs {
    /// The events the handler declares it releases.
    pub(crate) releases: Vec<Path>,
    /// Set by `#[saga]` on the handlers it generates: the name the handler
    /// goes by after its module's path (`Saga::method`), instead of the
    /// generated function's.
    pub(crate) saga_step: Option<LitStr>,
}

/// The arguments; an unknown, repeated or malformed one is reported.
pub(crate) fn parse(args: TokenStream, errors: &mut Errors) -> HandlerArgs {
    let mut parsed = HandlerArgs::default();
    if args.is_empty() {
        return parsed;
    }
    let releases = &mut parsed.releases;
    let saga_step = &mut parsed.saga_step;
    let mut walker = ArgWalker::new("handler", &["releases"], errors);
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("__saga_step") {
            *saga_step = Some(meta.value()?.parse()?);
            return Ok(());
        }
        walker.walk(meta, &mut |key, meta, _| {
            if key == "releases" {
                let content;
                syn::parenthesized!(content in meta.input);
                let list = Punctuated::<Path, Token![,]>::parse_terminated(&content)?;
                releases.extend(list);
            }
            Ok(())
        })
    });
    if let Err(error) = syn::parse::Parser::parse2(parser, args) {
        walker.errors.push(error);
    }
    parsed
}
