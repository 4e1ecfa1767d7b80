//! `#[handler(...)]`'s arguments: `releases(EventA, EventB)`.

use proc_macro2::TokenStream;
use syn::punctuated::Punctuated;
use syn::{Path, Token};

use crate::args::ArgWalker;
use crate::errors::Errors;

/// The events the handler declares it releases; an unknown, repeated or
/// malformed argument is reported.
pub(crate) fn parse(args: TokenStream, errors: &mut Errors) -> Vec<Path> {
    let mut releases = Vec::new();
    if args.is_empty() {
        return releases;
    }
    let mut walker = ArgWalker::new("handler", &["releases"], errors);
    let parser = syn::meta::parser(|meta| {
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
    releases
}
