//! `#[upcaster(Event, from = N)]`: registers a step that brings a stored
//! event from schema version `N` to `N + 1`. Its arguments are read
//! ([`attr`]), the function checked here, and the registration generated
//! ([`expand`]); a refused function is still emitted, with the errors.

mod attr;
mod expand;

use proc_macro2::TokenStream;
use quote::quote;
use syn::spanned::Spanned;
use syn::{FnArg, Item, ReturnType};

use crate::errors::Errors;

pub(crate) fn attribute(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = attr::parse(args, &mut errors);
    let parsed: Item = match syn::parse2(item.clone()) {
        Ok(parsed) => parsed,
        Err(error) => {
            errors.push(error);
            let compile_errors = errors.to_compile_errors();
            return quote!(#compile_errors #item);
        }
    };
    let Item::Fn(function) = parsed else {
        errors.push(syn::Error::new(
            parsed.span(),
            "`#[upcaster]` goes on a free `fn(serde_json::Value) -> Result<serde_json::Value, E>`",
        ));
        let compile_errors = errors.to_compile_errors();
        return quote!(#compile_errors #item);
    };
    let signature = &function.sig;
    if let Some(asyncness) = &signature.asyncness {
        errors.spanned(
            asyncness,
            "an upcaster is a plain `fn`: it only reshapes JSON, remove `async`",
        );
    }
    if !signature.generics.params.is_empty() {
        errors.spanned(&signature.generics, "an upcaster cannot be generic");
    }
    let inputs: Vec<&FnArg> = signature.inputs.iter().collect();
    match inputs.as_slice() {
        [FnArg::Typed(_)] => {}
        [FnArg::Receiver(receiver)] => errors.spanned(
            receiver,
            "an upcaster is a free function: take the stored JSON as `value: serde_json::Value`",
        ),
        _ => errors.push(syn::Error::new(
            if inputs.is_empty() {
                signature.paren_token.span.join()
            } else {
                signature.inputs.span()
            },
            "an upcaster takes one parameter, the stored JSON: `value: serde_json::Value`",
        )),
    }
    if let ReturnType::Default = signature.output {
        errors.spanned(
            &signature.ident,
            "an upcaster returns the reshaped JSON: `-> Result<serde_json::Value, E>`",
        );
    }
    let Some(args) = args.filter(|_| errors.is_empty()) else {
        let compile_errors = errors.to_compile_errors();
        return quote!(#compile_errors #function);
    };
    let registration = expand::registration(&function, &args);
    quote! {
        #function
        #registration
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upcaster_is_registered_with_its_event_and_version() {
        let out = attribute(
            quote!(Shipped, from = 1),
            quote!(
                fn shipped_v1(value: Value) -> Result<Value, E> {
                    Ok(value)
                }
            ),
        )
        .to_string();
        for expected in [
            "fn shipped_v1",
            "UpcasterEntry :: new",
            "Upcast :: upcast",
            "upcast_target :: < Shipped >",
            "1u32",
            "inventory :: submit !",
        ] {
            assert!(out.contains(expected), "{expected} in {out}");
        }
    }

    #[test]
    fn a_refused_upcaster_is_still_emitted_with_every_error() {
        let out = attribute(
            quote!(from = 0),
            quote!(
                async fn shipped_v1() {}
            ),
        )
        .to_string();
        assert!(out.contains("async fn shipped_v1"), "{out}");
        for expected in [
            "names the event",
            "start at 1",
            "remove `async`",
            "takes one parameter",
            "returns the reshaped",
        ] {
            assert!(out.contains(expected), "{expected} in {out}");
        }
        assert!(!out.contains("submit"), "{out}");
    }
}
