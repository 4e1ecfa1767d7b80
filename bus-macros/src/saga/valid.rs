//! What a saga's handler must look like, checked on the tokens: a plain
//! `fn(&mut self, message: &Message, saga: &mut SagaContext)`. Every
//! problem is collected, each spanned on the user's token.

use syn::spanned::Spanned;
use syn::{FnArg, ImplItemFn, Type};

use crate::errors::Errors;

/// The message type a handler takes, if its signature is one.
pub(crate) fn message_type(method: &ImplItemFn, all: &mut Errors) -> Option<Type> {
    let sig = &method.sig;
    let mut errors = Errors::default();
    if let Some(token) = &sig.asyncness {
        errors.spanned(
            token,
            "a saga's handler only decides, on its state: it cannot be `async`; send a command \
             (`saga.send(..)`) for work that waits",
        );
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.spanned(&sig.generics, "a saga's handler cannot be generic");
    }
    if let Some(token) = &sig.unsafety {
        errors.spanned(token, "a saga's handler cannot be an `unsafe fn`");
    }
    let inputs: Vec<&FnArg> = sig.inputs.iter().collect();
    let shape = "a saga's handler takes `&mut self`, the message by reference and the saga's \
                 context: `fn name(&mut self, message: &Message, saga: &mut SagaContext)`";
    let message = match inputs.as_slice() {
        [FnArg::Receiver(receiver), FnArg::Typed(message), FnArg::Typed(_)] => {
            if receiver.reference.is_none() || receiver.mutability.is_none() {
                errors.spanned(receiver, shape);
            }
            match &*message.ty {
                Type::Reference(reference) if reference.mutability.is_none() => {
                    Some((*reference.elem).clone())
                }
                other => {
                    errors.spanned(
                        other,
                        "take the message by reference: `message: &Message` (the saga may handle \
                         it again on fresh state after a conflict)",
                    );
                    None
                }
            }
        }
        _ => {
            errors.push(syn::Error::new(
                if inputs.is_empty() {
                    sig.paren_token.span.join()
                } else {
                    sig.inputs.span()
                },
                shape,
            ));
            None
        }
    };
    if errors.is_empty() {
        message
    } else {
        all.merge(errors);
        None
    }
}
