//! The message impls: `Message` and its kind's trait, how handlers take the
//! message and give back their result, the static description and its
//! link-time registration.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::{DeriveInput, LitStr};

use super::attr::{MessageArgs, MessageKind};

/// Everything the derive generates for a type that can have it.
pub(crate) fn impls(input: &DeriveInput, kind: MessageKind, args: &MessageArgs) -> TokenStream {
    let ident = &input.ident;
    let span = ident.span();
    let name = match &args.name {
        Some(name) => quote!(#name),
        None => quote!(::core::concat!(
            ::core::module_path!(),
            "::",
            ::core::stringify!(#ident)
        )),
    };
    let file_line = quote_spanned!(span=> ::core::file!(), ::core::line!());
    let (kind_value, kind_type) = match kind {
        MessageKind::Command => (quote!(Command), quote!(CommandMarker)),
        MessageKind::Event => (quote!(Event), quote!(EventMarker)),
        MessageKind::Query => (quote!(Query), quote!(QueryMarker)),
    };
    let specific = match kind {
        MessageKind::Command | MessageKind::Query => {
            let output = args
                .output
                .as_ref()
                .map(|t| quote!(#t))
                .unwrap_or_else(|| quote!(()));
            let error = args
                .error
                .as_ref()
                .map(|t| quote!(#t))
                .unwrap_or_else(|| quote!(::arch_events::__private::DefaultError));
            let trait_ident = syn::Ident::new(kind.trait_name(), Span::call_site());
            let take_message = take_message_impl(
                ident,
                quote!(::core::result::Result<#output, #error>),
                false,
                quote!(take_from_frame),
                quote!(borrow_from_frame),
                quote!(::core::result::Result::Err(
                    ::arch_events::__private::not_shared()
                )),
            );
            quote! {
                #[automatically_derived]
                impl ::arch_events::__private::#trait_ident for #ident {
                    type Output = #output;
                    type Error = #error;
                }

                #take_message

                #[automatically_derived]
                impl ::arch_events::__private::HandlerOutput<#ident>
                    for ::core::result::Result<#output, #error>
                {
                    #[inline]
                    fn deliver(
                        self,
                        slot: ::core::option::Option<&mut ::core::option::Option<Self>>,
                    ) -> ::core::result::Result<(), ::arch_events::__private::BoxError> {
                        ::arch_events::__private::put_output(self, slot)
                    }
                }
            }
        }
        MessageKind::Event => {
            let event_impl = quote_spanned! {span=>
                #[automatically_derived]
                impl ::arch_events::__private::Event for #ident {}
            };
            let take_message = take_message_impl(
                ident,
                quote!(()),
                true,
                quote!(take_event),
                quote!(borrow_event),
                quote!(::core::result::Result::Ok((
                    ::arch_events::__private::clone_event(message),
                    ::arch_events::__private::Output::none(),
                ))),
            );
            quote! {
                #event_impl

                #take_message

                #[automatically_derived]
                impl ::arch_events::__private::HandlerOutput<#ident> for () {
                    #[inline]
                    fn deliver(
                        self,
                        _: ::core::option::Option<&mut ::core::option::Option<()>>,
                    ) -> ::core::result::Result<(), ::arch_events::__private::BoxError> {
                        ::core::result::Result::Ok(())
                    }
                }

                #[automatically_derived]
                impl<E> ::arch_events::__private::HandlerOutput<#ident> for ::core::result::Result<(), E>
                where
                    E: ::core::convert::Into<::arch_events::__private::BoxError>,
                {
                    #[inline]
                    fn deliver(
                        self,
                        _: ::core::option::Option<&mut ::core::option::Option<()>>,
                    ) -> ::core::result::Result<(), ::arch_events::__private::BoxError> {
                        ::arch_events::__private::event_result(self)
                    }
                }
            }
        }
    };
    // `external` implies `serde`; the codec's bounds (`Serialize`,
    // `Deserialize`) are spanned on the argument that asked for them.
    let serde_span = args
        .serde
        .or_else(|| args.external.as_ref().map(LitStr::span));
    // The type named with the argument's span: a missing serde derive is
    // reported on `serde` / `external`, the argument that needs it.
    let codec_type = serde_span.map(|span| syn::Ident::new(&ident.to_string(), span));
    let (codec_static, mut with_codec) = match (serde_span, kind) {
        (Some(span), MessageKind::Event) => (
            quote_spanned! {span=>
                static __BUS_CODEC: ::arch_events::__private::EventCodec =
                    ::arch_events::__private::EventCodec::json::<#codec_type>();
            },
            quote!(.with_codec(&__BUS_CODEC)),
        ),
        (Some(span), MessageKind::Command) => (
            quote_spanned! {span=>
                static __BUS_CODEC: ::arch_events::__private::CommandCodec =
                    ::arch_events::__private::CommandCodec::json::<#codec_type>();
            },
            quote!(.with_command_codec(&__BUS_CODEC)),
        ),
        _ => (TokenStream::new(), TokenStream::new()),
    };
    if let Some(external) = &args.external {
        with_codec.extend(quote!(.with_external(#external)));
    }
    let mut personal_static = TokenStream::new();
    if let Some(personal) = &args.personal {
        if let Some(subject) = &personal.subject {
            let subject = subject.to_string();
            let fields: Vec<String> = personal.fields.iter().map(ToString::to_string).collect();
            personal_static = quote! {
                static __BUS_PERSONAL: ::arch_events::__private::PersonalFields =
                    ::arch_events::__private::PersonalFields::new(#subject, &[#(#fields),*]);
            };
            with_codec.extend(quote!(.with_personal(&__BUS_PERSONAL)));
        }
    }
    if let Some(version) = args
        .version
        .as_ref()
        .and_then(|v| v.base10_parse::<u32>().ok())
    {
        with_codec.extend(quote!(.with_schema_version(#version)));
    }
    quote! {
        #[doc(hidden)]
        #[allow(non_upper_case_globals, clippy::all)]
        const _: () = {
            #codec_static
            #personal_static

            static __BUS_MESSAGE_META: ::arch_events::__private::MessageMeta =
                ::arch_events::__private::MessageMeta::new(
                    ::arch_events::__private::MessageKind::#kind_value,
                    #name,
                    ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident)),
                    #file_line,
                    ::arch_events::__private::type_id_of::<#ident>,
                )#with_codec;

            #[automatically_derived]
            impl ::arch_events::__private::Message for #ident {
                type Marker = ::arch_events::__private::#kind_type;
                #[inline]
                fn meta() -> &'static ::arch_events::__private::MessageMeta {
                    &__BUS_MESSAGE_META
                }
            }

            #specific

            ::arch_events::__private::inventory::submit! {
                ::arch_events::__private::MessageEntry(&__BUS_MESSAGE_META)
            }
        };
    }
}

/// The `TakeMessage` impl: how handlers of this type get the message and give
/// back their result. Commands and queries differ from events in the result
/// type, whether the message is shared, and the helpers that take it.
fn take_message_impl(
    ident: &syn::Ident,
    result: TokenStream,
    shared: bool,
    take: TokenStream,
    borrow: TokenStream,
    take_shared: TokenStream,
) -> TokenStream {
    quote! {
        #[automatically_derived]
        impl ::arch_events::__private::TakeMessage for #ident {
            type Result = #result;
            const SHARED: bool = #shared;
            type Taken<'a> = (Self, ::arch_events::__private::Output<'a, Self>);
            type Borrowed<'a> = (&'a Self, ::arch_events::__private::Output<'a, Self>);

            #[inline]
            fn take(
                message: ::arch_events::__private::MessageRef<'_>,
            ) -> ::core::result::Result<Self::Taken<'_>, ::arch_events::__private::BoxError> {
                ::arch_events::__private::#take(message)
            }

            #[inline]
            fn borrow(
                message: ::arch_events::__private::MessageRef<'_>,
            ) -> ::core::result::Result<Self::Borrowed<'_>, ::arch_events::__private::BoxError> {
                ::arch_events::__private::#borrow(message)
            }

            #[inline]
            #[allow(unused_variables)]
            fn take_shared(
                message: &Self,
            ) -> ::core::result::Result<Self::Taken<'_>, ::arch_events::__private::BoxError> {
                #take_shared
            }

            #[inline]
            fn borrow_shared(message: &Self) -> Self::Borrowed<'_> {
                (message, ::arch_events::__private::Output::none())
            }

            #[inline]
            fn take_owned(
                message: Self,
                slot: &mut ::core::option::Option<Self::Result>,
            ) -> Self::Taken<'_> {
                (message, ::arch_events::__private::Output::to(slot))
            }

            #[inline]
            fn borrow_owned<'a>(
                message: &'a Self,
                slot: &'a mut ::core::option::Option<Self::Result>,
            ) -> Self::Borrowed<'a> {
                (message, ::arch_events::__private::Output::to(slot))
            }
        }
    }
}
