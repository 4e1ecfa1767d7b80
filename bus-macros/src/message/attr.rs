//! `#[command(...)]`, `#[event(...)]` and `#[query(...)]`: which derive is
//! expanding, and the arguments its attribute gives.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{DeriveInput, LitStr, Type};

use crate::args::ArgWalker;
use crate::errors::Errors;

/// Which derive is expanding.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum MessageKind {
    Command,
    Event,
    Query,
}

impl MessageKind {
    pub(crate) fn attribute(self) -> &'static str {
        match self {
            MessageKind::Command => "command",
            MessageKind::Event => "event",
            MessageKind::Query => "query",
        }
    }

    pub(crate) fn trait_name(self) -> &'static str {
        match self {
            MessageKind::Command => "Command",
            MessageKind::Event => "Event",
            MessageKind::Query => "Query",
        }
    }

    fn known_args(self) -> &'static [&'static str] {
        match self {
            MessageKind::Command => &["name", "output", "error", "serde", "external"],
            MessageKind::Query => &["name", "output", "error"],
            MessageKind::Event => &["name", "serde", "external", "version", "personal"],
        }
    }
}

#[derive(Default)]
pub(crate) struct MessageArgs {
    pub(crate) name: Option<LitStr>,
    /// `#[event(serde)]`: the event can be written as JSON and read back
    /// (a command: read from JSON and dispatched).
    pub(crate) serde: Option<Span>,
    /// `#[event(external = "stream")]`: its name on a broker; implies `serde`.
    pub(crate) external: Option<LitStr>,
    /// `#[event(version = 2)]`: the schema version of the event's stored
    /// shape (1 when absent).
    pub(crate) version: Option<syn::LitInt>,
    /// `#[event(personal(subject = customer, fields(email, name)))]`: the
    /// fields stored encrypted under the subject's key.
    pub(crate) personal: Option<Personal>,
    pub(crate) output: Option<Type>,
    pub(crate) error: Option<Type>,
}

/// The personal data of an event: whose it is, and which fields.
pub(crate) struct Personal {
    /// The `personal` keyword, for errors about the whole argument.
    pub(crate) span: Span,
    pub(crate) subject: Option<syn::Ident>,
    pub(crate) fields: Vec<syn::Ident>,
}

fn parse_personal(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<Personal> {
    let mut personal = Personal {
        span: meta.path.span(),
        subject: None,
        fields: Vec::new(),
    };
    meta.parse_nested_meta(|inner| {
        if inner.path.is_ident("subject") {
            personal.subject = Some(inner.value()?.parse()?);
            Ok(())
        } else if inner.path.is_ident("fields") {
            inner.parse_nested_meta(|field| {
                match field.path.get_ident() {
                    Some(ident) => personal.fields.push(ident.clone()),
                    None => return Err(field.error("a field's name, such as `email`")),
                }
                Ok(())
            })
        } else {
            Err(inner.error(
                "`personal` takes `subject = <field>` and `fields(<field>, ...)`: \
                 `personal(subject = customer, fields(email, name))`",
            ))
        }
    })?;
    Ok(personal)
}

/// Every argument of the derive's attributes; an unknown, repeated or
/// malformed one is reported, and the others are still read.
pub(crate) fn parse(input: &DeriveInput, kind: MessageKind, errors: &mut Errors) -> MessageArgs {
    let mut args = MessageArgs::default();
    let mut walker = ArgWalker::new(kind.attribute(), kind.known_args(), errors);
    for attr in input
        .attrs
        .iter()
        .filter(|a| a.path().is_ident(kind.attribute()))
    {
        let result = attr.parse_nested_meta(|meta| {
            walker.walk(meta, &mut |key, meta, _| {
                match key {
                    "name" => args.name = Some(meta.value()?.parse()?),
                    "output" => args.output = Some(meta.value()?.parse()?),
                    "error" => args.error = Some(meta.value()?.parse()?),
                    "serde" => {
                        if !meta.input.is_empty() && !meta.input.peek(syn::Token![,]) {
                            return Err(meta.error(format!(
                                "`serde` takes no value: write `#[{}(serde)]`",
                                kind.attribute()
                            )));
                        }
                        args.serde = Some(meta.path.span());
                    }
                    "external" => args.external = Some(meta.value()?.parse()?),
                    "version" => args.version = Some(meta.value()?.parse()?),
                    "personal" => args.personal = Some(parse_personal(meta)?),
                    _ => {}
                }
                Ok(())
            })
        });
        if let Err(error) = result {
            walker.errors.push(error);
        }
    }
    args
}
