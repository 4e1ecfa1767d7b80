//! Parsing `key = value` and `key(list)` attribute arguments, reporting an
//! unknown or repeated key without stopping at the first one.

use std::collections::BTreeSet;

use syn::meta::ParseNestedMeta;
use syn::parse::ParseStream;

use crate::errors::Errors;

/// Walks the arguments of one attribute (`#[command(...)]`, `#[handler(...)]`).
pub(crate) struct ArgWalker<'e> {
    attribute: &'static str,
    known: &'static [&'static str],
    seen: BTreeSet<String>,
    pub(crate) errors: &'e mut Errors,
}

impl<'e> ArgWalker<'e> {
    pub(crate) fn new(
        attribute: &'static str,
        known: &'static [&'static str],
        errors: &'e mut Errors,
    ) -> Self {
        ArgWalker {
            attribute,
            known,
            seen: BTreeSet::new(),
            errors,
        }
    }

    /// Calls `each` with the key of every well-formed, known, first-seen
    /// argument; reports the others and skips their values.
    pub(crate) fn walk(
        &mut self,
        meta: ParseNestedMeta<'_>,
        each: &mut dyn FnMut(&str, &ParseNestedMeta<'_>, &mut Errors) -> syn::Result<()>,
    ) -> syn::Result<()> {
        let Some(ident) = meta.path.get_ident() else {
            self.errors.spanned(
                &meta.path,
                format!(
                    "unknown argument for `#[{}]`: expected one of {}",
                    self.attribute,
                    self.list()
                ),
            );
            return skip_value(&meta);
        };
        let key = ident.to_string();
        if !self.known.contains(&key.as_str()) {
            self.errors.spanned(
                ident,
                format!(
                    "unknown argument `{key}` for `#[{}]`: expected one of {}",
                    self.attribute,
                    self.list()
                ),
            );
            return skip_value(&meta);
        }
        if !self.seen.insert(key.clone()) {
            self.errors.spanned(
                ident,
                format!(
                    "duplicate argument `{key}` for `#[{}]`: give it once",
                    self.attribute
                ),
            );
            return skip_value(&meta);
        }
        if let Err(error) = each(&key, &meta, self.errors) {
            self.errors.push(error);
            return skip_value(&meta);
        }
        Ok(())
    }

    fn list(&self) -> String {
        self.known
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Consumes whatever value follows a key: `= tokens` up to the next comma, or
/// a parenthesized group.
fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    let input: ParseStream<'_> = meta.input;
    if input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in input);
        let _: proc_macro2::TokenStream = content.parse()?;
    } else if input.peek(syn::Token![=]) {
        let _: syn::Token![=] = input.parse()?;
        while !input.is_empty() && !input.peek(syn::Token![,]) {
            let _: proc_macro2::TokenTree = input.parse()?;
        }
    }
    Ok(())
}
