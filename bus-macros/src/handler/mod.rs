//! `#[handler]`: registers a plain `fn` or `async fn` with the bus. Its
//! arguments are read ([`attr`]), the function checked ([`valid`]), and
//! the registration generated ([`expand`]); a refused function is emitted
//! with its handle type ([`fallback`]), so that every error at once, and
//! only those, names the mistakes.

mod attr;
mod expand;
mod fallback;
mod valid;

use proc_macro2::TokenStream;
use quote::quote;
use syn::Item;

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
            valid::item_keyword_span(&parsed),
            "`#[handler]` goes on a free function (`fn` or `async fn`) whose first parameter is \
             the message it handles",
        ));
        let compile_errors = errors.to_compile_errors();
        return quote!(#compile_errors #item);
    };

    let signature = valid::signature(&function, &mut errors);
    let message = match signature.message {
        Some(message) if errors.is_empty() => message,
        _ => return fallback::refused(&function, signature.in_impl, errors.to_compile_errors()),
    };
    let registration = expand::registration(&function, &message, &signature.dependencies, &args);
    quote! {
        #function
        #registration
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expanded(args: TokenStream, item: TokenStream) -> String {
        attribute(args, item).to_string()
    }

    #[test]
    fn an_accepted_handler_gets_its_handle_call_registration_and_submission() {
        let out = expanded(
            quote!(releases(Shipped)),
            quote!(
                fn ship(cmd: Ship, stock: &Stock) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        for expected in [
            "fn ship",
            "struct ship { }",
            "fn __bus_call",
            "HandlerFn :: Sync",
            "impl :: arch_events :: __private :: HandlerDef for ship",
            "inventory :: submit !",
            "releases :: < Shipped , _ >",
            "dependency :: < & Stock >",
            "typed_sync :: < Ship >",
            "typed_request :: < Ship >",
            "take_owned",
        ] {
            assert!(out.contains(expected), "`{expected}` missing from {out}");
        }
        assert!(!out.contains("compile_error"), "{out}");
    }

    #[test]
    fn an_async_handler_gets_an_in_place_call_and_a_typed_request_entry_only() {
        let out = expanded(
            TokenStream::new(),
            quote!(
                async fn ship(cmd: &Shipped, stock: &Stock) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        for expected in [
            "HandlerFn :: Async",
            "__private :: handler_future",
            "typed_async_request :: < Shipped >",
            "typed_request :: < Shipped >",
            "__private :: drive_future",
            "borrow_owned",
            "__private :: request_future",
            "inject :: < & Stock >",
        ] {
            assert!(out.contains(expected), "`{expected}` missing from {out}");
        }
        assert!(!out.contains("typed_sync"), "{out}");
    }

    #[test]
    fn every_mistake_is_reported_and_the_handle_is_still_emitted() {
        let out = expanded(
            quote!(releases(A), unknown = 1, releases(B)),
            quote!(
                unsafe fn ship<T>(cmd: &mut Ship, x: impl Fn()) {}
            ),
        );
        for expected in [
            "unknown argument `unknown`",
            "duplicate argument `releases`",
            "cannot be generic",
            "cannot be an `unsafe fn`",
            "not `&mut T`",
            "cannot be `impl Trait`",
        ] {
            assert!(out.contains(expected), "`{expected}` missing from {out}");
        }
        assert!(out.contains("struct ship { }"), "{out}");
        assert!(out.contains("unreachable !"), "{out}");
        assert!(!out.contains("__bus_call"), "{out}");
    }

    #[test]
    fn a_method_is_refused_without_a_handle_beside_it() {
        let out = expanded(
            TokenStream::new(),
            quote!(
                fn ship(&self, cmd: Ship) {}
            ),
        );
        assert!(
            out.contains("is a method or an associated function"),
            "{out}"
        );
        assert!(!out.contains("struct ship"), "{out}");
        let out = expanded(
            TokenStream::new(),
            quote!(
                fn ship(cmd: Ship, me: &Self) {}
            ),
        );
        assert!(out.contains("its signature names `Self`"), "{out}");
        assert!(!out.contains("struct ship"), "{out}");
    }

    #[test]
    fn anything_but_a_function_is_refused_and_emitted_as_it_is() {
        let out = expanded(
            TokenStream::new(),
            quote!(
                struct Ship;
            ),
        );
        assert!(out.contains("goes on a free function"), "{out}");
        assert!(out.contains("struct Ship ;"), "{out}");
        assert!(!out.contains("HandlerDef"), "{out}");
    }
}
