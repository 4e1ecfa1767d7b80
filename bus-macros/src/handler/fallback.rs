//! What `#[handler]` emits for a function it refuses: the function itself,
//! its handle type and a `HandlerDef` impl that is never called (the crate
//! does not compile), so that the only errors are the ones that name the
//! mistake. Without them, `Registrations::handler::<f>()` or
//! `handler_retry::<f>()` elsewhere would add "cannot find type `f`" or "`f`
//! is not a handler" to the report.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemFn;

use super::expand::handle;

/// The function, and its handle unless the function sits in an `impl`
/// block (where a struct cannot go).
pub(crate) fn refused(function: &ItemFn, in_impl: bool, errors: TokenStream) -> TokenStream {
    if in_impl {
        return quote! {
            #errors
            #function
        };
    }
    let ident = &function.sig.ident;
    let handle = handle(function);
    quote! {
        #errors
        #function
        #handle

        #[automatically_derived]
        impl ::arch_events::__private::HandlerDef for #ident {
            fn registration() -> &'static ::arch_events::__private::HandlerRegistration {
                ::core::unreachable!("a refused handler is never registered: the crate does not compile")
            }
        }
    }
}
