//! The code `#[handler]` generates for a function it accepts.
//!
//! - A *handle*: a unit struct named like the function (in the type
//!   namespace, beside the function in the value namespace), so that
//!   `Registrations::handler::<allocate>()` and
//!   `BusBuilder::handler_retry::<allocate>()` can name the handler.
//! - The *erased call* `__bus_call`: takes a `Call` (the message, the
//!   resolved dependencies, the call's scope), calls the function, delivers
//!   its result. A plain `fn` gets a `SyncCall`, an `async fn` an
//!   `AsyncCall` returning the future of the call (a `HandlerFuture`:
//!   stored in place when it fits, boxed otherwise).
//! - The *describe mode* of that same function (see `arch_events::call`,
//!   "The describe contract"): when the `Call` carries a shape to fill, the
//!   function records its message, dependencies and declared events there
//!   and returns without running the handler. Every use of the user's types
//!   is in that one function, so a type mistake in the signature is one
//!   diagnostic, spanned on the user's token.
//! - *Typed entries*, recorded in describe mode: the same call given the
//!   message itself, so that the bus calls the handler without a downcast
//!   (a plain `fn` event handler's borrows the event; a command's or
//!   query's takes the message and hands back the result; an `async fn`
//!   one's has a blocking driver and an in-place future).
//! - The static `HandlerRegistration`, its `HandlerDef` impl on the handle,
//!   and its `inventory` submission.
//!
//! The checks of the user's types are spanned on the user's tokens, so that
//! a type error points there. Every local they name is interpolated from an
//! identifier made here (call-site hygiene): written literally inside
//! `quote_spanned!`, it would take the user's hygiene and not resolve when
//! the handler is itself produced by a `macro_rules!` macro.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ItemFn, Path, ReturnType, Type};

use super::valid::MessageParam;

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

/// The generated code's local names, made here (call-site hygiene).
struct Locals {
    call: syn::Ident,
    shape: syn::Ident,
    output: syn::Ident,
    returned: syn::Ident,
    message: syn::Ident,
    kind: syn::Ident,
    dependencies: Vec<syn::Ident>,
}

impl Locals {
    fn new(dependencies: usize) -> Self {
        Locals {
            call: format_ident!("call"),
            shape: format_ident!("__bus_shape"),
            output: format_ident!("__bus_output"),
            returned: format_ident!("__bus_returned"),
            message: format_ident!("__bus_message"),
            kind: format_ident!("__bus_kind"),
            dependencies: (0..dependencies)
                .map(|i| format_ident!("__bus_dependency_{}", i))
                .collect(),
        }
    }
}

/// Everything `#[handler]` generates beside an accepted function.
pub(crate) fn registration(
    function: &ItemFn,
    message: &MessageParam,
    dependencies: &[Type],
    args: &super::attr::HandlerArgs,
) -> TokenStream {
    let releases = &args.releases;
    let locals = Locals::new(dependencies.len());
    let (call_fn, handler_fn) = if function.sig.asyncness.is_some() {
        async_call(function, message, dependencies, releases, &locals)
    } else {
        sync_call(function, message, dependencies, releases, &locals)
    };
    let ident = &function.sig.ident;
    let handle = handle(function);
    let path_tail = match &args.saga_step {
        Some(step) => quote!(#step),
        None => quote!(::core::stringify!(#ident)),
    };
    let file_line = quote_spanned!(ident.span()=> ::core::file!(), ::core::line!());
    quote! {
        #handle

        #[allow(non_upper_case_globals, clippy::all)]
        const _: () = {
            #call_fn

            static __BUS_HANDLER: ::arch_events::__private::HandlerRegistration =
                ::arch_events::__private::HandlerRegistration::new(
                    ::core::concat!(::core::module_path!(), "::", #path_tail),
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

/// The handle: a unit struct named like the function. Spanned on the
/// function's name: a `#[handler]` inside an `impl` block then fails on the
/// user's token, saying to move it out.
pub(crate) fn handle(function: &ItemFn) -> TokenStream {
    let ident = &function.sig.ident;
    let vis = &function.vis;
    quote_spanned! {ident.span()=>
        #[allow(non_camel_case_types, dead_code)]
        #[doc(hidden)]
        #vis struct #ident {}
    }
}

/// The statements that take the message out of the call.
fn take_message(message: &MessageParam, locals: &Locals) -> TokenStream {
    let call = &locals.call;
    match message {
        MessageParam::ByValue(ty) => quote_spanned! {ty.span()=> #call.message_by_value::<#ty>() },
        MessageParam::ByRef(ty) => quote_spanned! {ty.span()=> #call.message_by_ref::<#ty>() },
    }
}

/// The expressions that take each dependency out of the call.
fn take_dependencies(dependencies: &[Type], locals: &Locals) -> Vec<TokenStream> {
    let call = &locals.call;
    dependencies
        .iter()
        .enumerate()
        .map(|(i, ty)| quote_spanned! {ty.span()=> #call.dependency::<#ty>(#i) })
        .collect()
}

/// Hands the function's return value to the call's output.
fn deliver(function: &ItemFn, locals: &Locals) -> TokenStream {
    let sig = &function.sig;
    let (return_ty, return_span) = match &sig.output {
        ReturnType::Default => (quote!(()), sig.ident.span()),
        ReturnType::Type(_, ty) => (quote!(#ty), ty.span()),
    };
    let (output, returned) = (&locals.output, &locals.returned);
    quote_spanned! {return_span=>
        #output.deliver::<#return_ty>(#returned)
    }
}

/// The describe mode: when the call carries a shape, record the handler's
/// message, dependencies and declared events (and `typed`, the handler's
/// typed entries), and return `answer` without running it.
fn describe(
    message: &MessageParam,
    dependencies: &[Type],
    releases: &[Path],
    typed: TokenStream,
    answer: TokenStream,
    locals: &Locals,
) -> TokenStream {
    let (call, shape, kind) = (&locals.call, &locals.shape, &locals.kind);
    let describe_message = match message {
        MessageParam::ByValue(ty) => {
            quote_spanned! {ty.span()=> let #kind = #shape.message_by_value::<#ty>(); }
        }
        MessageParam::ByRef(ty) => {
            quote_spanned! {ty.span()=> let #kind = #shape.message_by_ref::<#ty>(); }
        }
    };
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
    quote! {
        if let ::core::option::Option::Some(mut #shape) = #call.describe() {
            #describe_message
            #(#describe_dependencies)*
            #(#describe_releases)*
            #typed
            return #answer;
        }
    }
}

/// An `async fn` handler's erased call: a `SyncCall`'s preparation, then the
/// future of the call, in place when it fits.
fn async_call(
    function: &ItemFn,
    message: &MessageParam,
    dependencies: &[Type],
    releases: &[Path],
    locals: &Locals,
) -> (TokenStream, TokenStream) {
    let sig = &function.sig;
    let ident = &sig.ident;
    let Locals {
        call,
        output,
        returned,
        message: message_value,
        dependencies: dep_idents,
        ..
    } = locals;
    let async_span = sig.asyncness.map_or_else(|| ident.span(), |a| a.span);
    let typed = typed_async_request(function, message, dependencies, locals);
    let describe = describe(
        message,
        dependencies,
        releases,
        typed,
        quote!(::arch_events::__private::ready_ok()),
        locals,
    );
    let take_message = take_message(message, locals);
    let take_dependencies = take_dependencies(dependencies, locals);
    let deliver = deliver(function, locals);
    let boxed = quote_spanned! {async_span=>
        ::arch_events::__private::handler_future(async move {
            let #returned = #ident(#message_value #(, #dep_idents)*).await;
            #deliver
        })
    };
    (
        quote! {
            fn __bus_call<'a>(
                mut #call: ::arch_events::__private::Call<'a>,
            ) -> ::arch_events::__private::HandlerFuture<'a> {
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
}

/// What the typed entries of a handler share: the names of their
/// parameters, how each takes the message, and the dependencies resolved
/// from their slice.
struct TypedParts<'a> {
    ty: &'a Type,
    dependencies_var: proc_macro2::Ident,
    scope_var: proc_macro2::Ident,
    result_var: proc_macro2::Ident,
    /// The message from a shared reference (an event's entry).
    take_shared: TokenStream,
    /// The message owned by the entry, its result going to `result_var`
    /// (a command's or query's entry).
    take_owned: TokenStream,
    inject_dependencies: Vec<TokenStream>,
}

impl TypedParts<'_> {
    /// A command's or query's typed entry: a closure taking the message, the
    /// dependencies and the scope, and handing back what `call` (the
    /// handler's call, given its arguments) returned.
    fn request_entry(
        &self,
        function: &ItemFn,
        locals: &Locals,
        call: impl FnOnce(TokenStream) -> TokenStream,
    ) -> TokenStream {
        let Locals {
            output,
            returned,
            message: message_value,
            dependencies: dep_idents,
            ..
        } = locals;
        let TypedParts {
            dependencies_var,
            scope_var,
            result_var,
            take_owned,
            inject_dependencies,
            ..
        } = self;
        let ident = &function.sig.ident;
        let called = call(quote!(#ident(#message_value #(, #dep_idents)*)));
        let deliver = deliver(function, locals);
        quote! {
            |#message_value, #dependencies_var, #scope_var| {
                let mut #result_var = ::core::option::Option::None;
                {
                    let (#message_value, #output) = #take_owned;
                    #( let #dep_idents = #inject_dependencies?; )*
                    let #returned = #called;
                    #deliver?;
                }
                ::arch_events::__private::request_result(#result_var)
            }
        }
    }
}

fn typed_parts<'a>(
    message: &'a MessageParam,
    dependencies: &[Type],
    locals: &Locals,
) -> TypedParts<'a> {
    let message_value = &locals.message;
    let dependencies_var = format_ident!("__bus_dependencies");
    let scope_var = format_ident!("__bus_scope");
    let result_var = format_ident!("__bus_result");
    let (ty, take_shared, take_owned) = match message {
        MessageParam::ByValue(ty) => (
            ty,
            quote_spanned! {ty.span()=>
                <#ty as ::arch_events::__private::TakeMessage>::take_shared(#message_value)?
            },
            quote_spanned! {ty.span()=>
                <#ty as ::arch_events::__private::TakeMessage>::take_owned(
                    #message_value,
                    &mut #result_var,
                )
            },
        ),
        MessageParam::ByRef(ty) => (
            ty,
            quote_spanned! {ty.span()=>
                <#ty as ::arch_events::__private::TakeMessage>::borrow_shared(#message_value)
            },
            quote_spanned! {ty.span()=>
                <#ty as ::arch_events::__private::TakeMessage>::borrow_owned(
                    &#message_value,
                    &mut #result_var,
                )
            },
        ),
    };
    let inject_dependencies = dependencies
        .iter()
        .enumerate()
        .map(|(i, ty)| {
            quote_spanned! {ty.span()=>
                ::arch_events::__private::inject::<#ty>(#dependencies_var, #i, #scope_var)
            }
        })
        .collect();
    TypedParts {
        ty,
        dependencies_var,
        scope_var,
        result_var,
        take_shared,
        take_owned,
        inject_dependencies,
    }
}

/// An `async fn` command or query handler's typed entry: the message in,
/// a future of the handler's result out (no frame). Like the plain `fn`
/// one, it lives in the describe body; for an event `SHARED` is true and it
/// compiles away.
fn typed_async_request(
    function: &ItemFn,
    message: &MessageParam,
    dependencies: &[Type],
    locals: &Locals,
) -> TokenStream {
    let ident = &function.sig.ident;
    let Locals {
        shape,
        output,
        returned,
        message: message_value,
        dependencies: dep_idents,
        ..
    } = locals;
    let parts = typed_parts(message, dependencies, locals);
    let TypedParts {
        ty,
        dependencies_var,
        scope_var,
        result_var,
        take_owned,
        inject_dependencies,
        ..
    } = &parts;
    let shared =
        quote_spanned! {ty.span()=> <#ty as ::arch_events::__private::TakeMessage>::SHARED };
    let typed_request = quote_spanned! {ty.span()=> #shape.typed_async_request::<#ty> };
    let typed_blocking = quote_spanned! {ty.span()=> #shape.typed_request::<#ty> };
    let deliver = deliver(function, locals);
    // Spanned like the erased call's future: a handler whose future is not
    // `Send` is told so on its `async`.
    let async_span = function
        .sig
        .asyncness
        .map_or_else(|| ident.span(), |a| a.span);
    let blocking_entry = parts.request_entry(
        function,
        locals,
        |call| quote!(::arch_events::__private::drive_future(#call)),
    );
    let future = quote_spanned! {async_span=>
        ::arch_events::__private::request_future(async move {
            let mut #result_var = ::core::option::Option::None;
            {
                let (#message_value, #output) = #take_owned;
                let #returned = #ident(#message_value #(, #dep_idents)*).await;
                #deliver?;
            }
            ::arch_events::__private::request_result(#result_var)
        })
    };
    quote! {
        if !#shared {
            #typed_request(|#message_value, #dependencies_var, #scope_var| {
                #(
                    let #dep_idents = match #inject_dependencies {
                        ::core::result::Result::Ok(value) => value,
                        ::core::result::Result::Err(error) => {
                            return ::arch_events::__private::ready_request_err(error);
                        }
                    };
                )*
                #future
            });
            // For a blocking dispatch: the handler's own future, driven to
            // its end where it was made.
            #typed_blocking(#blocking_entry);
        }
    }
}

/// A plain `fn` handler's erased call, with its typed entry recorded in
/// describe mode.
fn sync_call(
    function: &ItemFn,
    message: &MessageParam,
    dependencies: &[Type],
    releases: &[Path],
    locals: &Locals,
) -> (TokenStream, TokenStream) {
    let ident = &function.sig.ident;
    let Locals {
        call,
        output,
        returned,
        message: message_value,
        dependencies: dep_idents,
        ..
    } = locals;
    let typed = typed_entry(function, message, dependencies, locals);
    let describe = describe(
        message,
        dependencies,
        releases,
        typed,
        quote!(::core::result::Result::Ok(())),
        locals,
    );
    let take_message = take_message(message, locals);
    let take_dependencies = take_dependencies(dependencies, locals);
    let deliver = deliver(function, locals);
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
}

/// The typed entry: the same call, given the message itself, so that the
/// bus calls it without a downcast. An event's entry borrows the event its
/// handlers share; a command's or query's takes the message and hands back
/// the handler's result. It lives in the describe body, so that a type
/// mistake is still reported once; the constant `SHARED` picks the one
/// that applies and the other compiles away.
fn typed_entry(
    function: &ItemFn,
    message: &MessageParam,
    dependencies: &[Type],
    locals: &Locals,
) -> TokenStream {
    let ident = &function.sig.ident;
    let Locals {
        shape,
        output,
        returned,
        message: message_value,
        dependencies: dep_idents,
        ..
    } = locals;
    let parts = typed_parts(message, dependencies, locals);
    let request_entry = parts.request_entry(function, locals, |call| call);
    let TypedParts {
        ty,
        dependencies_var,
        scope_var,
        take_shared,
        inject_dependencies,
        ..
    } = &parts;
    let shared =
        quote_spanned! {ty.span()=> <#ty as ::arch_events::__private::TakeMessage>::SHARED };
    let typed_sync = quote_spanned! {ty.span()=> #shape.typed_sync::<#ty> };
    let typed_request = quote_spanned! {ty.span()=> #shape.typed_request::<#ty> };
    let deliver = deliver(function, locals);
    quote! {
        if #shared {
            #typed_sync(|#message_value, #dependencies_var, #scope_var| {
                let (#message_value, #output) = #take_shared;
                #( let #dep_idents = #inject_dependencies?; )*
                let #returned = #ident(#message_value #(, #dep_idents)*);
                #deliver
            });
        } else {
            #typed_request(#request_entry);
        }
    }
}
