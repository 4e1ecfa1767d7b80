//! `#[saga]`: on an `impl` block of a saga's state type, registers each
//! method marked `#[starts]`, `#[handles]` or `#[timeout]` as a handler of
//! its message. The arguments are read ([`attr`]), each handler checked
//! ([`valid`]), and the registrations generated ([`expand`]); the block is
//! always emitted, its step attributes removed, so that a mistake shows
//! only its own errors.

mod attr;
mod expand;
mod valid;

use proc_macro2::TokenStream;
use quote::quote;
use syn::spanned::Spanned;
use syn::{ImplItem, Item};

use crate::errors::Errors;
use attr::StepKind;

/// One handler of the saga, accepted.
pub(crate) struct Step {
    pub(crate) method: syn::Ident,
    pub(crate) message: syn::Type,
    pub(crate) args: attr::StepArgs,
    /// The return type, unless it returns nothing.
    pub(crate) returns: Option<syn::Type>,
}

pub(crate) fn attribute(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = attr::parse_saga(args, &mut errors);
    let parsed: Item = match syn::parse2(item.clone()) {
        Ok(parsed) => parsed,
        Err(error) => {
            errors.push(error);
            let compile_errors = errors.to_compile_errors();
            return quote!(#compile_errors #item);
        }
    };
    let Item::Impl(mut block) = parsed else {
        errors.push(syn::Error::new(
            parsed.span(),
            "`#[saga]` goes on the `impl` block of the saga's state type, whose methods marked \
             `#[starts(..)]`, `#[handles(..)]` or `#[timeout(..)]` handle its messages",
        ));
        let compile_errors = errors.to_compile_errors();
        return quote!(#compile_errors #item);
    };
    if let Some((_, path, _)) = &block.trait_ {
        errors.spanned(
            path,
            "`#[saga]` goes on an inherent `impl` block (`impl MySaga { .. }`), not a trait's",
        );
    }
    if !block.generics.params.is_empty() {
        errors.spanned(&block.generics, "a saga's state type cannot be generic");
    }
    if args.name.is_none() {
        errors.push(syn::Error::new(
            block.impl_token.span,
            "give the saga a stable name: `#[saga(name = \"shop.await_payment\")]`; it is the \
             key of its stored instances, so it must not change when the type moves or is renamed",
        ));
    }

    let mut steps = Vec::new();
    for item in &mut block.items {
        let ImplItem::Fn(method) = item else {
            continue;
        };
        let mut found: Vec<attr::StepArgs> = Vec::new();
        method
            .attrs
            .retain(|attribute| match StepKind::of(attribute) {
                Some(kind) => {
                    found.push(attr::parse_step(kind, attribute, &mut errors));
                    false
                }
                None => true,
            });
        let mut found = found.into_iter();
        let Some(step) = found.next() else {
            continue;
        };
        for extra in found {
            errors.push(syn::Error::new(
                extra.span,
                "a saga's handler takes one of `#[starts]`, `#[handles]`, `#[timeout]`: \
                 a message has one role in a saga",
            ));
        }
        if let Some(message) = valid::message_type(method, &mut errors) {
            steps.push(Step {
                method: method.sig.ident.clone(),
                message,
                args: step,
                returns: match &method.sig.output {
                    syn::ReturnType::Default => None,
                    syn::ReturnType::Type(_, ty) => Some((**ty).clone()),
                },
            });
        }
    }
    if steps.is_empty() && errors.is_empty() {
        errors.push(syn::Error::new(
            block.impl_token.span,
            "a saga handles messages: mark at least one method `#[starts(by = field)]`",
        ));
    } else if !steps.iter().any(|s| s.args.kind == StepKind::Starts) && errors.is_empty() {
        errors.push(syn::Error::new(
            block.impl_token.span,
            "nothing starts this saga: mark the method of the message that starts it \
             `#[starts(by = field)]`",
        ));
    }

    let compile_errors = errors.to_compile_errors();
    if !errors.is_empty() {
        steps.clear();
    }
    let generated = expand::registrations(&block, args.name.as_ref(), &steps);
    quote! {
        #compile_errors
        #block
        #generated
    }
}
