//! What a message derive refuses, checked on the tokens before anything is
//! generated: every problem is collected, each spanned on the user's token.

use syn::{Data, DeriveInput};

use super::attr::{MessageArgs, MessageKind};
use crate::errors::Errors;

/// Whether the type can have the message impls at all: a generic type or a
/// union cannot (every use of it would be wrong), an argument mistake can
/// (with defaults, so that uses of the type do not cascade into more errors).
pub(crate) fn structural(input: &DeriveInput, kind: MessageKind, errors: &mut Errors) -> bool {
    let derive = kind.trait_name();
    if !input.generics.params.is_empty() {
        errors.spanned(
            &input.generics,
            format!(
                "`#[derive({derive})]` does not support generic types: the bus routes each message \
                 by one concrete type; declare a concrete type for each message"
            ),
        );
    } else if let Some(clause) = &input.generics.where_clause {
        errors.spanned(
            clause,
            format!("`#[derive({derive})]` does not support `where` clauses"),
        );
    }
    if let Data::Union(data) = &input.data {
        errors.spanned(
            data.union_token,
            format!("`#[derive({derive})]` does not support unions: use a struct or an enum"),
        );
    }
    input.generics.params.is_empty()
        && input.generics.where_clause.is_none()
        && !matches!(input.data, Data::Union(_))
}

/// The arguments' own rules.
pub(crate) fn arguments(
    input: &DeriveInput,
    kind: MessageKind,
    args: &MessageArgs,
    errors: &mut Errors,
) {
    if kind == MessageKind::Query && args.output.is_none() {
        errors.spanned(
            &input.ident,
            "a query declares what its handler returns: add `#[query(output = T)]`",
        );
    }
    if let Some(name) = &args.name {
        if name.value().trim().is_empty() {
            errors.spanned(name, "a message name cannot be empty");
        }
    }
    if let Some(external) = &args.external {
        if external.value().trim().is_empty() {
            errors.spanned(external, "an external name cannot be empty");
        }
    }
    if let Some(version) = &args.version {
        match version.base10_parse::<u32>() {
            Ok(0) => errors.spanned(
                version,
                "schema versions start at 1: write `version = 1` or more",
            ),
            Ok(_) => {}
            Err(_) => errors.spanned(
                version,
                "a schema version is a whole number from 1 to 4294967295, such as `version = 2`",
            ),
        }
        if args.serde.is_none() && args.external.is_none() {
            errors.spanned(
                version,
                "a schema version describes the event's stored JSON: add `serde` (`#[event(serde, version = ..)]`)",
            );
        }
    }
    if let Some(personal) = &args.personal {
        personal_fields(input, args, personal, errors);
    }
}

/// The personal fields name fields of the struct; each one can read as
/// erased (`Option`); the event is stored (`serde`).
fn personal_fields(
    input: &DeriveInput,
    args: &MessageArgs,
    personal: &super::attr::Personal,
    errors: &mut Errors,
) {
    let fields: Vec<&syn::Field> = match &input.data {
        Data::Struct(data) => data.fields.iter().collect(),
        _ => {
            errors.push(syn::Error::new(
                personal.span,
                "`personal` describes the named fields of a struct: an enum's cannot be listed",
            ));
            return;
        }
    };
    let find = |name: &syn::Ident| {
        fields
            .iter()
            .find(|f| f.ident.as_ref() == Some(name))
            .copied()
    };
    if args.serde.is_none() && args.external.is_none() {
        errors.push(syn::Error::new(
            personal.span,
            "personal fields are encrypted where the event is stored: add `serde` (`#[event(serde, personal(..))]`)",
        ));
    }
    match &personal.subject {
        Some(subject) if find(subject).is_none() => {
            errors.spanned(subject, format!("`{subject}` is not a field of `{}`: the subject is the field that names whose data it is", input.ident));
        }
        Some(_) => {}
        None => errors.push(syn::Error::new(
            personal.span,
            "`personal` names the field that says whose data it is: add `subject = <field>`",
        )),
    }
    if personal.fields.is_empty() {
        errors.push(syn::Error::new(
            personal.span,
            "`personal` lists the fields to encrypt: add `fields(<field>, ...)`",
        ));
    }
    for name in &personal.fields {
        match find(name) {
            None => errors.spanned(
                name,
                format!("`{name}` is not a field of `{}`", input.ident),
            ),
            Some(field) if !is_option(&field.ty) => errors.spanned(
                &field.ty,
                format!(
                    "`{name}` is personal: once its subject is forgotten it reads as erased, so it \
                     must be an `Option<..>`"
                ),
            ),
            Some(_) => {}
        }
        if personal.subject.as_ref() == Some(name) {
            errors.spanned(
                name,
                "the subject cannot be encrypted under its own key: it is how the key is found",
            );
        }
    }
}

fn is_option(ty: &syn::Type) -> bool {
    match ty {
        syn::Type::Path(path) => path
            .path
            .segments
            .last()
            .is_some_and(|segment| segment.ident == "Option"),
        _ => false,
    }
}
