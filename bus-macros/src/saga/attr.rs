//! The arguments: `#[saga(name = "...")]` on the `impl` block, and
//! `#[starts(by = ..)]`, `#[handles(by = .., not_found = ..)]`,
//! `#[timeout(by = ..)]` on its handlers.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, LitStr, Member, Token};

use crate::args::ArgWalker;
use crate::errors::Errors;

/// `#[saga(...)]`'s arguments.
pub(crate) struct SagaArgs {
    pub(crate) name: Option<LitStr>,
}

pub(crate) fn parse_saga(args: TokenStream, errors: &mut Errors) -> SagaArgs {
    let mut name = None;
    if args.is_empty() {
        return SagaArgs { name };
    }
    let mut walker = ArgWalker::new("saga", &["name"], errors);
    let parser = syn::meta::parser(|meta| {
        walker.walk(meta, &mut |_, meta, errors| {
            let value: LitStr = meta.value()?.parse()?;
            if value.value().trim().is_empty() {
                errors.spanned(&value, "a saga's name cannot be empty");
            }
            name = Some(value);
            Ok(())
        })
    });
    if let Err(error) = syn::parse::Parser::parse2(parser, args) {
        walker.errors.push(error);
    }
    SagaArgs { name }
}

/// Which of the step attributes a method carries.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepKind {
    Starts,
    Handles,
    Timeout,
}

impl StepKind {
    pub(crate) fn of(attribute: &Attribute) -> Option<Self> {
        let ident = attribute.path().get_ident()?;
        match ident.to_string().as_str() {
            "starts" => Some(StepKind::Starts),
            "handles" => Some(StepKind::Handles),
            "timeout" => Some(StepKind::Timeout),
            _ => None,
        }
    }

    fn word(self) -> &'static str {
        match self {
            StepKind::Starts => "starts",
            StepKind::Handles => "handles",
            StepKind::Timeout => "timeout",
        }
    }
}

/// What a continuing message that finds no saga does.
#[derive(Clone, Copy)]
pub(crate) enum NotFound {
    Ignore,
    Error,
    DeadLetter,
}

/// A step attribute's arguments.
pub(crate) struct StepArgs {
    pub(crate) kind: StepKind,
    /// The message's field (a path of fields) holding the saga's id.
    pub(crate) by: Option<Punctuated<Member, Token![.]>>,
    pub(crate) not_found: Option<NotFound>,
    /// The events it publishes (`releases(EventA, EventB)`), as
    /// `#[handler(releases(..))]` declares them.
    pub(crate) releases: Vec<syn::Path>,
    /// The attribute, for errors about the step as a whole.
    pub(crate) span: Span,
}

const BY_HELP: &str = "name the message's field that holds the saga's id";

pub(crate) fn parse_step(kind: StepKind, attribute: &Attribute, errors: &mut Errors) -> StepArgs {
    let mut args = StepArgs {
        kind,
        by: None,
        not_found: None,
        releases: Vec::new(),
        span: attribute.span(),
    };
    let known: &'static [&'static str] = match kind {
        StepKind::Handles => &["by", "not_found", "releases"],
        StepKind::Starts | StepKind::Timeout => &["by", "releases"],
    };
    let word = kind.word();
    // Whether `not_found` was given, even with a value refused already.
    let mut not_found_given = false;
    match &attribute.meta {
        syn::Meta::List(list) => {
            let mut walker = ArgWalker::new(word, known, errors);
            let parser = syn::meta::parser(|meta| {
                walker.walk(meta, &mut |key, meta, errors| {
                    if key == "by" {
                        let input = meta.value()?;
                        let path =
                            Punctuated::<Member, Token![.]>::parse_separated_nonempty(input)?;
                        args.by = Some(path);
                    } else if key == "releases" {
                        let content;
                        syn::parenthesized!(content in meta.input);
                        let list = Punctuated::<syn::Path, Token![,]>::parse_terminated(&content)?;
                        args.releases.extend(list);
                    } else {
                        not_found_given = true;
                        let value: syn::Ident = meta.value()?.parse()?;
                        args.not_found = match value.to_string().as_str() {
                            "ignore" => Some(NotFound::Ignore),
                            "error" => Some(NotFound::Error),
                            "dead_letter" => Some(NotFound::DeadLetter),
                            _ => {
                                errors.spanned(
                                    &value,
                                    "`not_found` is one of `ignore`, `error`, `dead_letter`",
                                );
                                None
                            }
                        };
                    }
                    Ok(())
                })
            });
            if let Err(error) = syn::parse::Parser::parse2(parser, list.tokens.clone()) {
                walker.errors.push(error);
            }
        }
        other => {
            let example = match kind {
                StepKind::Handles => "#[handles(by = order_id, not_found = ignore)]",
                StepKind::Starts => "#[starts(by = order_id)]",
                StepKind::Timeout => "#[timeout(by = order_id)]",
            };
            errors.spanned(
                other.to_token_stream(),
                format!("`#[{word}]` needs its arguments: {BY_HELP}, as in `{example}`"),
            );
            return args;
        }
    }
    if args.by.is_none() {
        let example = match kind {
            StepKind::Handles => "`#[handles(by = order_id, not_found = ignore)]`",
            StepKind::Starts => "`#[starts(by = order_id)]`",
            StepKind::Timeout => "`#[timeout(by = order_id)]`",
        };
        errors.push(syn::Error::new(
            args.span,
            format!("a saga's message must correlate to its instance: {BY_HELP}, as in {example}"),
        ));
    }
    if kind == StepKind::Handles && !not_found_given {
        errors.push(syn::Error::new(
            args.span,
            "say what this message does when it finds no saga: add `not_found = ignore`, \
             `not_found = error` (retried, then dead-lettered; a command's caller gets the error) \
             or `not_found = dead_letter`",
        ));
    }
    args
}
