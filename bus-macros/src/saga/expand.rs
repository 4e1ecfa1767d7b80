//! What `#[saga]` generates beside the block: the `Saga` impl, one
//! `#[handler]` per step (an `async fn` taking the message by reference,
//! the runtime, the releaser and the message's ids, which runs the step
//! through `Sagas::handle`), and the saga's registration for the wiring
//! report. Everything sits in one `const _: () = { .. };`.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ItemImpl, LitStr};

use super::attr::{NotFound, StepKind};
use super::Step;

/// The saga's name: the one given, or its type's path.
fn name(block: &ItemImpl, name: Option<&LitStr>) -> TokenStream {
    let self_ty = &block.self_ty;
    match name {
        Some(name) => quote!(#name),
        None => quote!(::core::concat!(
            ::core::module_path!(),
            "::",
            ::core::stringify!(#self_ty)
        )),
    }
}

/// The `Saga` impl, naming the registration `__BUS_SAGA`.
fn saga_impl(block: &ItemImpl, given: Option<&LitStr>) -> TokenStream {
    let self_ty = &block.self_ty;
    let name = name(block, given);
    quote_spanned! {self_ty.span()=>
        #[automatically_derived]
        impl ::arch_events::__private::saga::Saga for #self_ty {
            const NAME: &'static str = #name;

            fn registration() -> &'static ::arch_events::__private::saga::SagaRegistration {
                &__BUS_SAGA
            }
        }
    }
}

/// The type's name as written, for handler paths: `ShipmentWatch`.
fn type_label(block: &ItemImpl) -> String {
    match &*block.self_ty {
        syn::Type::Path(path) => path
            .path
            .segments
            .last()
            .map(|segment| segment.ident.to_string())
            .unwrap_or_default(),
        other => quote!(#other).to_string(),
    }
}

fn role(step: &Step) -> TokenStream {
    let saga = quote!(::arch_events::__private::saga);
    match (step.args.kind, step.args.not_found) {
        (StepKind::Starts, _) => quote!(#saga::Role::Starts),
        (StepKind::Timeout, _) => quote!(#saga::Role::Timeout),
        (StepKind::Handles, Some(NotFound::Error)) => {
            quote!(#saga::Role::Continues(#saga::NotFound::Error))
        }
        (StepKind::Handles, Some(NotFound::DeadLetter)) => {
            quote!(#saga::Role::Continues(#saga::NotFound::DeadLetter))
        }
        (StepKind::Handles, _) => quote!(#saga::Role::Continues(#saga::NotFound::Ignore)),
    }
}

/// Everything, for the accepted `steps` (none when the block was refused:
/// the `Saga` impl and an empty registration are still there, so that the
/// block's errors are only its own).
pub(crate) fn registrations(
    block: &ItemImpl,
    given: Option<&LitStr>,
    steps: &[Step],
) -> TokenStream {
    let self_ty = &block.self_ty;
    let saga_impl = saga_impl(block, given);
    let private = quote!(::arch_events::__private);
    let label = type_label(block);
    let type_name = LitStr::new(&label, self_ty.span());
    let handlers = steps.iter().map(|step| {
        let method = &step.method;
        let message = &step.message;
        let role = role(step);
        // Named and spanned like the method: the bus's errors about this
        // handler point at it.
        let handler = format_ident!("{}", method, span = method.span());
        let by = step.args.by.iter().flat_map(|path| path.iter());
        let by_span = step.args.by.as_ref().map_or(method.span(), |p| p.span());
        let id = quote_spanned! {by_span=>
            ::std::string::ToString::to_string(&__message #(.#by)*)
        };
        let call = match &step.returns {
            None => quote!({ <#self_ty>::#method(__state, __message, __saga); ::core::result::Result::Ok(()) }),
            // Spanned on the return type: a wrong one is an error there.
            Some(returns) => quote_spanned! {returns.span()=>
                #private::saga::into_result(<#self_ty>::#method(__state, __message, __saga))
            },
        };
        let path = LitStr::new(&format!("{label}::{method}"), method.span());
        let releases = &step.args.releases;
        let releases = (!releases.is_empty()).then(|| quote!(, releases(#(#releases),*)));
        quote_spanned! {method.span()=>
            #[::arch_events::handler(__saga_step = #path #releases)]
            async fn #handler(
                __message: &#message,
                __sagas: &#private::saga::Sagas,
                __releaser: #private::EventReleaser,
                __flow: #private::MessageContext,
            ) -> ::core::result::Result<(), #private::saga::SagaError> {
                fn __step(
                    __state: &mut #self_ty,
                    __message: &#message,
                    __saga: &mut #private::saga::SagaContext,
                ) -> ::core::result::Result<(), #private::BoxError> {
                    #call
                }
                let __id = #id;
                __sagas
                    .handle::<#self_ty, #message, #private::BoxError>(
                        #role, __message, __id, __releaser, __flow, __step,
                    )
                    .await
            }
        }
    });
    let registered = steps.iter().map(|step| {
        let method = &step.method;
        let message = &step.message;
        let role = role(step);
        let handler = format_ident!("{}", method, span = method.span());
        quote! {
            #private::saga::SagaStep {
                handler: <#handler as #private::HandlerDef>::registration,
                message: <#message as #private::Message>::meta,
                role: #role,
            }
        }
    });
    let file_line = quote_spanned!(block.impl_token.span=> ::core::file!(), ::core::line!());
    let name = name(block, given);
    quote! {
        #[allow(non_upper_case_globals, non_snake_case, clippy::all)]
        const _: () = {
            #saga_impl

            #(#handlers)*

            static __BUS_SAGA: #private::saga::SagaRegistration = #private::saga::SagaRegistration {
                name: #name,
                rust_path: ::core::concat!(::core::module_path!(), "::", #type_name),
                location: #private::saga::location(#file_line),
                steps: &[#(#registered),*],
            };

            #private::inventory::submit! {
                #private::saga::SagaEntry(&__BUS_SAGA)
            }
        };
    }
}
