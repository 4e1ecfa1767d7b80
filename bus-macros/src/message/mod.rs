//! `#[derive(Command)]`, `#[derive(Event)]` and `#[derive(Query)]`: the
//! arguments are read ([`attr`]), checked ([`valid`]), and the impls and
//! link-time registration generated ([`expand`]). Every problem is reported
//! at once; the impls are generated whenever the type can have them, so
//! that one mistake in an attribute does not cascade into errors at every
//! use of the type.

mod attr;
mod expand;
mod valid;

use proc_macro2::TokenStream;
use quote::quote;
use syn::DeriveInput;

pub(crate) use attr::MessageKind;

use crate::errors::Errors;

pub(crate) fn derive(input: TokenStream, kind: MessageKind) -> TokenStream {
    let input: DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(error) => return error.to_compile_error(),
    };
    let mut errors = Errors::default();
    let structural = valid::structural(&input, kind, &mut errors);
    let args = attr::parse(&input, kind, &mut errors);
    valid::arguments(&input, kind, &args, &mut errors);
    let impls = if structural {
        expand::impls(&input, kind, &args)
    } else {
        TokenStream::new()
    };
    let compile_errors = errors.to_compile_errors();
    quote! {
        #compile_errors
        #impls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_gets_its_traits_meta_and_registration() {
        let out = derive(
            quote!(
                #[command(output = u32, error = Refused, name = "shop.ship")]
                struct Ship;
            ),
            MessageKind::Command,
        )
        .to_string();
        for expected in [
            "impl :: arch_events :: __private :: Message for Ship",
            "type Marker = :: arch_events :: __private :: CommandMarker",
            "impl :: arch_events :: __private :: Command for Ship",
            "type Output = u32",
            "type Error = Refused",
            "\"shop.ship\"",
            "MessageEntry",
        ] {
            assert!(out.contains(expected), "`{expected}` missing from {out}");
        }
        assert!(!out.contains("compile_error"), "{out}");
    }

    #[test]
    fn an_external_event_gets_a_codec_and_its_stream() {
        let out = derive(
            quote!(
                #[event(external = "shipments")]
                struct Shipped;
            ),
            MessageKind::Event,
        )
        .to_string();
        assert!(out.contains("EventCodec :: json :: < Shipped >"), "{out}");
        assert!(out.contains("with_external (\"shipments\")"), "{out}");
    }

    #[test]
    fn argument_mistakes_are_all_reported_and_the_impls_still_generated() {
        let out = derive(
            quote!(
                #[query(name = "", name = "again", serde, bogus)]
                struct Basket;
            ),
            MessageKind::Query,
        )
        .to_string();
        for expected in [
            "a message name cannot be empty",
            "duplicate argument `name`",
            "unknown argument `serde`",
            "unknown argument `bogus`",
            "add `#[query(output = T)]`",
        ] {
            assert!(out.contains(expected), "`{expected}` missing from {out}");
        }
        assert!(
            out.contains("impl :: arch_events :: __private :: Query for Basket"),
            "{out}"
        );
    }

    #[test]
    fn a_generic_type_or_a_union_gets_no_impls() {
        let out = derive(
            quote!(
                struct Ship<T>(T);
            ),
            MessageKind::Command,
        )
        .to_string();
        assert!(out.contains("does not support generic types"), "{out}");
        assert!(!out.contains("impl"), "{out}");
        let out = derive(quote!(union Ship { a: u32 }), MessageKind::Event).to_string();
        assert!(out.contains("does not support unions"), "{out}");
        assert!(!out.contains("impl"), "{out}");
    }
}
