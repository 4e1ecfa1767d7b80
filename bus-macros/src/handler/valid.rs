//! What `#[handler]` refuses, checked on the tokens: anything but a free,
//! non-generic, safe function whose first parameter is the message. Every
//! problem is collected, each spanned on the user's token.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::spanned::Spanned;
use syn::{FnArg, Item, ItemFn, Type};

use crate::errors::Errors;

/// How the handler takes its message.
pub(crate) enum MessageParam {
    ByValue(Type),
    ByRef(Type),
}

/// A handler's signature, as far as the tokens tell.
pub(crate) struct Signature {
    /// The message parameter, when the first parameter can be one.
    pub(crate) message: Option<MessageParam>,
    /// Every other parameter's type: a dependency each.
    pub(crate) dependencies: Vec<Type>,
    /// Whether the function sits in an `impl` block (it takes `self` or
    /// names `Self`): no handle type can be emitted beside it there.
    pub(crate) in_impl: bool,
}

/// Where to point an error about an item that is not a function: its
/// keyword.
pub(crate) fn item_keyword_span(item: &Item) -> proc_macro2::Span {
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
pub(crate) fn signature(function: &ItemFn, errors: &mut Errors) -> Signature {
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
    let names_self = !has_receiver && first_self_type(sig.to_token_stream()).is_some();
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
    Signature {
        message,
        dependencies,
        in_impl: has_receiver || names_self,
    }
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
