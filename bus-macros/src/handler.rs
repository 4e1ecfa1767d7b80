//! `#[handler]`: registers a plain `fn` or `async fn` with the bus.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{FnArg, Item, ItemFn, Path, ReturnType, Token, Type};

use crate::args::ArgWalker;
use crate::errors::Errors;

/// How the handler takes its message.
enum MessageParam {
    ByValue(Type),
    ByRef(Type),
}

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let releases = parse_args(args, &mut errors);

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
            item_keyword_span(&parsed),
            "`#[handler]` goes on a free function (`fn` or `async fn`) whose first parameter is \
             the message it handles",
        ));
        let compile_errors = errors.to_compile_errors();
        return quote!(#compile_errors #item);
    };

    let (message, dependencies) = check_signature(&function, &mut errors);
    if !errors.is_empty() {
        let compile_errors = errors.to_compile_errors();
        return quote!(#compile_errors #function);
    }
    let Some(message) = message else {
        return quote!(#function);
    };
    let registration = registration(&function, &message, &dependencies, &releases);
    quote! {
        #function
        #registration
    }
}

fn parse_args(args: TokenStream, errors: &mut Errors) -> Vec<Path> {
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

fn item_keyword_span(item: &Item) -> proc_macro2::Span {
    match item {
        Item::Struct(i) => i.struct_token.span,
        Item::Enum(i) => i.enum_token.span,
        Item::Impl(i) => i.impl_token.span,
        Item::Mod(i) => i.mod_token.span,
        Item::Trait(i) => i.trait_token.span,
        Item::Const(i) => i.const_token.span,
        Item::Static(i) => i.static_token.span,
        Item::Type(i) => i.type_token.span,
        Item::Use(i) => i.use_token.span,
        other => other.span(),
    }
}

/// Checks everything that can be checked on the tokens, reporting all of it.
fn check_signature(function: &ItemFn, errors: &mut Errors) -> (Option<MessageParam>, Vec<Type>) {
    let sig = &function.sig;
    if !sig.generics.params.is_empty() {
        errors.spanned(
            &sig.generics,
            "a handler cannot be generic: the bus needs one concrete function per message type; \
             write a handler per type, or inject a `&dyn Trait` instead of a type parameter",
        );
    }
    if let Some(clause) = &sig.generics.where_clause {
        errors.spanned(clause, "a handler cannot have a `where` clause");
    }
    if let Some(token) = &sig.constness {
        errors.spanned(token, "a handler cannot be a `const fn`");
    }
    if let Some(token) = &sig.unsafety {
        errors.spanned(
            token,
            "a handler cannot be an `unsafe fn`: the bus calls it without an `unsafe` block",
        );
    }
    if let Some(abi) = &sig.abi {
        errors.spanned(abi, "a handler cannot have an `extern` ABI");
    }
    if let Some(variadic) = &sig.variadic {
        errors.spanned(variadic, "a handler cannot be variadic");
    }

    // An attribute cannot see whether its function sits in an `impl` block;
    // `self` or `Self` in the signature says it does.
    let has_receiver = sig
        .inputs
        .iter()
        .any(|input| matches!(input, FnArg::Receiver(_)));
    if !has_receiver {
        if let Some(self_type) = first_self_type(sig.to_token_stream()) {
            errors.push(syn::Error::new(
                self_type.span(),
                not_free(sig, "its signature names `Self`"),
            ));
        }
    }

    let mut message = None;
    let mut dependencies = Vec::new();
    for (index, input) in sig.inputs.iter().enumerate() {
        let ty = match input {
            FnArg::Receiver(receiver) => {
                errors.spanned(receiver, not_free(sig, "it takes `self`"));
                continue;
            }
            FnArg::Typed(typed) => &*typed.ty,
        };
        if contains_impl_trait(ty) {
            errors.spanned(
                ty,
                "a handler parameter cannot be `impl Trait` (that makes the handler generic): \
                 take `&dyn Trait` or `Arc<dyn Trait>` instead",
            );
            continue;
        }
        if index == 0 {
            message = message_param(ty, errors);
        } else {
            dependencies.push(ty.clone());
        }
    }
    if sig.inputs.is_empty() {
        errors.spanned(
            &sig.ident,
            "a handler takes the message it handles as its first parameter, e.g. \
             `fn allocate(cmd: Allocate, ...)`",
        );
    }
    (message, dependencies)
}

/// The error for a handler written as a method or an associated function:
/// what a handler is, and how to call a method from one.
fn not_free(sig: &syn::Signature, why: &str) -> String {
    let name = &sig.ident;
    let message = sig.inputs.iter().find_map(|input| match input {
        FnArg::Typed(typed) if first_self_type(typed.ty.to_token_stream()).is_none() => {
            Some(compact(&typed.ty.to_token_stream().to_string()))
        }
        _ => None,
    });
    let message = message.as_deref().unwrap_or("YourCommand");
    format!(
        "a handler is a free `fn`, and `{name}` is a method or an associated function ({why}): \
         move it out of the `impl` block. To call a method from a handler, write a free \
         `#[handler] fn {name}(message: {message}, service: &YourType)` that calls \
         `service.{name}(message)`, and register the value with `Dependencies::shared`"
    )
}

/// Tokens as a person writes them: `& Allocate` → `&Allocate`.
fn compact(tokens: &str) -> String {
    tokens
        .replace("& ", "&")
        .replace(" :: ", "::")
        .replace(":: ", "::")
        .replace(" < ", "<")
        .replace(" <", "<")
        .replace("< ", "<")
        .replace(" >", ">")
        .replace(" ,", ",")
}

/// The first `Self` in a token stream.
fn first_self_type(tokens: TokenStream) -> Option<proc_macro2::Ident> {
    tokens.into_iter().find_map(|token| match token {
        proc_macro2::TokenTree::Ident(ident) if ident == "Self" => Some(ident),
        proc_macro2::TokenTree::Group(group) => first_self_type(group.stream()),
        _ => None,
    })
}

fn message_param(ty: &Type, errors: &mut Errors) -> Option<MessageParam> {
    match ty {
        Type::Reference(reference) if reference.mutability.is_some() => {
            errors.spanned(
                ty,
                "a handler takes its message by value or by shared reference (`&T`), not `&mut T`",
            );
            None
        }
        Type::Reference(reference) => Some(MessageParam::ByRef((*reference.elem).clone())),
        other => Some(MessageParam::ByValue(other.clone())),
    }
}

/// Whether a parameter type is spelled `EventReleaser` (any path ending so).
fn is_releaser(ty: &Type) -> bool {
    match ty {
        Type::Path(path) => path
            .path
            .segments
            .last()
            .is_some_and(|segment| segment.ident == "EventReleaser"),
        Type::Paren(paren) => is_releaser(&paren.elem),
        Type::Group(group) => is_releaser(&group.elem),
        _ => false,
    }
}

fn contains_impl_trait(ty: &Type) -> bool {
    match ty {
        Type::ImplTrait(_) => true,
        Type::Reference(r) => contains_impl_trait(&r.elem),
        Type::Paren(p) => contains_impl_trait(&p.elem),
        Type::Group(g) => contains_impl_trait(&g.elem),
        Type::Slice(s) => contains_impl_trait(&s.elem),
        Type::Array(a) => contains_impl_trait(&a.elem),
        Type::Tuple(t) => t.elems.iter().any(contains_impl_trait),
        Type::Path(p) => p.path.segments.iter().any(|seg| match &seg.arguments {
            syn::PathArguments::AngleBracketed(args) => args.args.iter().any(|arg| match arg {
                syn::GenericArgument::Type(t) => contains_impl_trait(t),
                _ => false,
            }),
            _ => false,
        }),
        _ => false,
    }
}

/// The registration: a type-namespace handle named like the function, the
/// erased call, the static registration and its inventory submission.
fn registration(
    function: &ItemFn,
    message: &MessageParam,
    dependencies: &[Type],
    releases: &[Path],
) -> TokenStream {
    let sig = &function.sig;
    let ident = &sig.ident;
    let vis = &function.vis;
    let return_ty = match &sig.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, ty) => quote!(#ty),
    };
    let return_span = match &sig.output {
        ReturnType::Default => sig.ident.span(),
        ReturnType::Type(_, ty) => ty.span(),
    };

    // The checks below are spanned on the user's tokens, so that a type
    // error points there. Every local they name is interpolated from an
    // identifier made here (call-site hygiene): written literally inside
    // `quote_spanned!`, it would take the user's hygiene and not resolve when
    // the handler is itself produced by a `macro_rules!` macro.
    let call = format_ident!("call");
    let shape = format_ident!("__bus_shape");
    let output = format_ident!("__bus_output");
    let returned = format_ident!("__bus_returned");
    let message_value = format_ident!("__bus_message");
    let kind = format_ident!("__bus_kind");
    let (take_message, describe_message) = match message {
        MessageParam::ByValue(ty) => (
            quote_spanned! {ty.span()=> #call.message_by_value::<#ty>() },
            quote_spanned! {ty.span()=> let #kind = #shape.message_by_value::<#ty>(); },
        ),
        MessageParam::ByRef(ty) => (
            quote_spanned! {ty.span()=> #call.message_by_ref::<#ty>() },
            quote_spanned! {ty.span()=> let #kind = #shape.message_by_ref::<#ty>(); },
        ),
    };
    let dep_idents: Vec<_> = (0..dependencies.len())
        .map(|i| format_ident!("__bus_dependency_{}", i))
        .collect();
    let take_dependencies: Vec<_> = dependencies
        .iter()
        .enumerate()
        .map(|(i, ty)| quote_spanned! {ty.span()=> #call.dependency::<#ty>(#i) })
        .collect();
    let describe_dependencies = dependencies.iter().map(|ty| {
        // `EventReleaser` is refused in a query handler; spelled as itself,
        // that is a compile error on this parameter. The message's kind is
        // bound again under a name spanned on the parameter (declared and
        // used with that one span, so it resolves whatever its hygiene), so
        // that the error points there.
        let kind_here = proc_macro2::Ident::new("__bus_releaser_kind", ty.span());
        let releaser = is_releaser(ty).then(|| {
            quote_spanned! {ty.span()=>
                let #kind_here = &#kind;
                #shape.releaser(#kind_here);
            }
        });
        quote_spanned! {ty.span()=> #shape.dependency::<#ty>(); #releaser }
    });
    // A query handler declares no event (the same binding, on the path).
    let describe_releases = releases.iter().map(|path| {
        let kind_here = proc_macro2::Ident::new("__bus_releases_kind", path.span());
        quote_spanned! {path.span()=>
            let #kind_here = &#kind;
            #shape.releases::<#path, _>(#kind_here);
        }
    });
    let deliver = quote_spanned! {return_span=>
        #output.deliver::<#return_ty>(#returned)
    };
    let describe = |typed: TokenStream, answer: TokenStream| {
        quote! {
            if let ::core::option::Option::Some(mut #shape) = #call.describe() {
                #describe_message
                #(#describe_dependencies)*
                #(#describe_releases)*
                #typed
                return #answer;
            }
        }
    };

    let (call_fn, handler_fn) = if sig.asyncness.is_some() {
        let async_span = sig
            .asyncness
            .map(|a| a.span)
            .unwrap_or_else(|| ident.span());
        let describe = describe(
            TokenStream::new(),
            quote!(::arch_events::__private::ready_ok()),
        );
        let boxed = quote_spanned! {async_span=>
            ::arch_events::__private::boxed(async move {
                let #returned = #ident(#message_value #(, #dep_idents)*).await;
                #deliver
            })
        };
        (
            quote! {
                fn __bus_call<'a>(
                    mut #call: ::arch_events::__private::Call<'a>,
                ) -> ::arch_events::__private::BoxFuture<'a, ::core::result::Result<(), ::arch_events::__private::BoxError>> {
                    #describe
                    let (#message_value, #output) = match #take_message {
                        ::core::result::Result::Ok(value) => value,
                        ::core::result::Result::Err(error) => return ::arch_events::__private::ready_err(error),
                    };
                    #(
                        let #dep_idents = match #take_dependencies {
                            ::core::result::Result::Ok(value) => value,
                            ::core::result::Result::Err(error) => return ::arch_events::__private::ready_err(error),
                        };
                    )*
                    #boxed
                }
            },
            quote!(::arch_events::__private::HandlerFn::Async(__bus_call)),
        )
    } else {
        // The typed entry: the same call, given the event itself, so that an
        // event's route calls it without a downcast. It lives in this body so
        // that a type mistake is still reported once.
        let dependencies_var = format_ident!("__bus_dependencies");
        let scope_var = format_ident!("__bus_scope");
        let (shared, typed_entry, take_shared) = match message {
            MessageParam::ByValue(ty) => (
                quote_spanned! {ty.span()=> <#ty as ::arch_events::__private::TakeMessage>::SHARED },
                quote_spanned! {ty.span()=> #shape.typed_sync::<#ty> },
                quote_spanned! {ty.span()=>
                    <#ty as ::arch_events::__private::TakeMessage>::take_shared(#message_value)?
                },
            ),
            MessageParam::ByRef(ty) => (
                quote_spanned! {ty.span()=> <#ty as ::arch_events::__private::TakeMessage>::SHARED },
                quote_spanned! {ty.span()=> #shape.typed_sync::<#ty> },
                quote_spanned! {ty.span()=>
                    <#ty as ::arch_events::__private::TakeMessage>::borrow_shared(#message_value)
                },
            ),
        };
        let inject_dependencies = dependencies.iter().enumerate().map(|(i, ty)| {
            quote_spanned! {ty.span()=>
                ::arch_events::__private::inject::<#ty>(#dependencies_var, #i, #scope_var)
            }
        });
        // Only events have typed entries: for a command the constant is
        // false and the entry compiles away.
        let typed = quote! {
            if #shared {
                #typed_entry(|#message_value, #dependencies_var, #scope_var| {
                    let (#message_value, #output) = #take_shared;
                    #( let #dep_idents = #inject_dependencies?; )*
                    let #returned = #ident(#message_value #(, #dep_idents)*);
                    #deliver
                });
            }
        };
        let describe = describe(typed, quote!(::core::result::Result::Ok(())));
        (
            quote! {
                fn __bus_call(
                    mut #call: ::arch_events::__private::Call<'_>,
                ) -> ::core::result::Result<(), ::arch_events::__private::BoxError> {
                    #describe
                    let (#message_value, #output) = #take_message?;
                    #( let #dep_idents = #take_dependencies?; )*
                    let #returned = #ident(#message_value #(, #dep_idents)*);
                    #deliver
                }
            },
            quote!(::arch_events::__private::HandlerFn::Sync(__bus_call)),
        )
    };

    let file_line = quote_spanned!(ident.span()=> ::core::file!(), ::core::line!());
    // The handle is spanned on the function's name: a `#[handler]` inside an
    // `impl` block then fails on the user's token, saying to move it out.
    let handle = quote_spanned! {ident.span()=>
        #[allow(non_camel_case_types, dead_code)]
        #[doc(hidden)]
        #vis struct #ident {}
    };
    quote! {
        #handle

        #[allow(non_upper_case_globals, clippy::all)]
        const _: () = {
            #call_fn

            static __BUS_HANDLER: ::arch_events::__private::HandlerRegistration =
                ::arch_events::__private::HandlerRegistration::new(
                    ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident)),
                    #file_line,
                    #handler_fn,
                );

            #[automatically_derived]
            impl ::arch_events::__private::HandlerDef for #ident {
                #[inline]
                fn registration() -> &'static ::arch_events::__private::HandlerRegistration {
                    &__BUS_HANDLER
                }
            }

            ::arch_events::__private::inventory::submit! {
                ::arch_events::__private::HandlerEntry(&__BUS_HANDLER)
            }
        };
    }
}
