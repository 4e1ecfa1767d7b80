//! The registration of an accepted upcaster.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::ItemFn;

use super::attr::UpcasterArgs;

pub(crate) fn registration(function: &ItemFn, args: &UpcasterArgs) -> TokenStream {
    let name = &function.sig.ident;
    let event = &args.event;
    let from = args.from;
    // Spanned on the user's tokens: a type that is not a stored event is
    // reported on the event, a signature that does not fit on the function.
    let target = quote_spanned! {event.span()=>
        ::arch_events::__private::upcast_target::<#event>
    };
    let call = quote_spanned! {name.span()=>
        ::arch_events::__private::Upcast::upcast(&#name, value)
    };
    quote! {
        #[doc(hidden)]
        #[allow(non_upper_case_globals, clippy::all)]
        const _: () = {
            fn __bus_upcast(
                value: ::arch_events::__private::serde_json::Value,
            ) -> ::core::result::Result<
                ::arch_events::__private::serde_json::Value,
                ::arch_events::__private::BoxError,
            > {
                #call
            }

            ::arch_events::__private::inventory::submit! {
                ::arch_events::__private::UpcasterEntry::new(
                    #target,
                    #from,
                    __bus_upcast,
                    ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#name)),
                    ::core::file!(),
                    ::core::line!(),
                )
            }
        };
    }
}
