//! The `#[task]` attribute and the `export!` macro of `wtq-sdk`; use them through that crate.
//!
//! `#[task]` leaves the function as it is and adds a hidden `__wtq_task_<fn>` constant (a
//! `wtq_sdk::__private::TaskDef`: name, doc, parameter names, dispatcher). `export!` lists those
//! constants and implements the component's `tasks` export over them. The decoding rules live in
//! `wtq_sdk`'s runtime, not in the expansion, so each task adds only a few lines of code.

use proc_macro::TokenStream;
use proc_macro2::{Ident, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    Error, Expr, ExprLit, FnArg, ItemFn, Lit, LitStr, Meta, Pat, Path, PathArguments, ReturnType,
    Token, Type, parse_macro_input,
};

/// The `#[task]` attribute.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut name: Option<LitStr> = None;
    let options = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            name = Some(meta.value()?.parse()?);
            Ok(())
        } else {
            Err(meta.error("unknown #[task] option; the only one is `name = \"...\"`"))
        }
    });
    parse_macro_input!(attr with options);
    let function = parse_macro_input!(item as ItemFn);
    match task_def(&function, name) {
        Ok(def) => quote!(#function #def).into(),
        // Keep the function so that the error is the only one reported.
        Err(error) => {
            let error = error.to_compile_error();
            quote!(#function #error).into()
        }
    }
}

/// The hidden `TaskDef` constant for `function`.
fn task_def(function: &ItemFn, name: Option<LitStr>) -> syn::Result<TokenStream2> {
    let sig = &function.sig;
    if let Some(token) = &sig.asyncness {
        return Err(Error::new(
            token.span(),
            "a task cannot be `async`; tasks run synchronously",
        ));
    }
    if let Some(token) = &sig.unsafety {
        return Err(Error::new(token.span(), "a task cannot be `unsafe fn`"));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(Error::new(
            sig.generics.span(),
            "a task cannot be generic: its parameter types are decoded from JSON, so they must be concrete",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        return Err(Error::new(variadic.span(), "a task cannot be variadic"));
    }

    let ident = &sig.ident;
    let mut params = Vec::new();
    let mut takes = Vec::new();
    for (index, input) in sig.inputs.iter().enumerate() {
        let typed = match input {
            FnArg::Receiver(receiver) => {
                return Err(Error::new(
                    receiver.span(),
                    "a task cannot take `self`; make it a free function",
                ));
            }
            FnArg::Typed(typed) => typed,
        };
        let param = match &*typed.pat {
            Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => &pat.ident,
            other => {
                return Err(Error::new(
                    other.span(),
                    "task parameters must be plain names (`x: T`): the name is the keyword argument",
                ));
            }
        };
        match &*typed.ty {
            Type::Reference(_) => {
                return Err(Error::new(
                    typed.ty.span(),
                    "task parameters are decoded from JSON and must be owned (e.g. `String`, not `&str`)",
                ));
            }
            Type::ImplTrait(_) => {
                return Err(Error::new(
                    typed.ty.span(),
                    "a task cannot be generic: its parameter types are decoded from JSON, so they must be concrete",
                ));
            }
            _ => {}
        }
        params.push(param.unraw().to_string());
        // Spanned at the type so that "DeserializeOwned is not implemented" points at it.
        takes.push(quote_spanned!(typed.ty.span()=> __wtq_args.take(#index)?));
    }

    let name = match name {
        Some(name) if name.value().is_empty() => {
            return Err(Error::new(name.span(), "a task name cannot be empty"));
        }
        Some(name) => name.value(),
        None => ident.unraw().to_string(),
    };
    let doc = doc_text(function);
    let def_ident = def_ident(ident);
    let vis = &function.vis;
    let args = if params.is_empty() {
        quote!(__wtq_args)
    } else {
        quote!(mut __wtq_args)
    };
    let call = quote!(#ident(#(#takes),*));
    // Spanned at the return type so that "Serialize is not implemented" points at it.
    let output_span = match &sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => ident.span(),
    };
    let output = quote_spanned!(output_span=> ::wtq_sdk::__private::output);
    let into_error =
        quote_spanned!(output_span=> ::core::convert::Into::<::wtq_sdk::TaskError>::into);
    let finish = if returns_result(&sig.output) {
        quote! {
            match #call {
                ::core::result::Result::Ok(value) => #output(value),
                ::core::result::Result::Err(error) => ::core::result::Result::Err(#into_error(error)),
            }
        }
    } else {
        quote!(#output(#call))
    };

    Ok(quote! {
        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        #vis const #def_ident: ::wtq_sdk::__private::TaskDef = {
            const __WTQ_PARAMS: &[&str] = &[#(#params),*];
            // Names start with `__wtq` so that they cannot shadow the task function.
            fn __wtq_call(
                __wtq_json: &str,
            ) -> ::core::result::Result<::std::string::String, ::wtq_sdk::TaskError> {
                let #args = ::wtq_sdk::__private::Args::parse(#name, __WTQ_PARAMS, __wtq_json)?;
                #finish
            }
            ::wtq_sdk::__private::TaskDef {
                name: #name,
                doc: #doc,
                params: __WTQ_PARAMS,
                call: __wtq_call,
            }
        };
    })
}

/// The `///` lines of `function`, each without the space after `///`, joined and trimmed.
fn doc_text(function: &ItemFn) -> String {
    let lines: Vec<String> = function
        .attrs
        .iter()
        .filter_map(|attr| match &attr.meta {
            Meta::NameValue(nv) if nv.path.is_ident("doc") => match &nv.value {
                Expr::Lit(ExprLit {
                    lit: Lit::Str(text),
                    ..
                }) => Some(text.value()),
                _ => None,
            },
            _ => None,
        })
        .map(|line| line.strip_prefix(' ').map(str::to_owned).unwrap_or(line))
        .collect();
    lines.join("\n").trim().to_owned()
}

/// Whether the return type is spelled `...::Result<..>`; its error then converts into
/// `TaskError`. Syntactic because a macro cannot see types.
fn returns_result(output: &ReturnType) -> bool {
    match output {
        ReturnType::Type(_, ty) => match &**ty {
            Type::Path(path) => path
                .path
                .segments
                .last()
                .is_some_and(|s| s.ident == "Result"),
            _ => false,
        },
        ReturnType::Default => false,
    }
}

/// The name of the hidden `TaskDef` constant of function `ident`.
fn def_ident(ident: &Ident) -> Ident {
    format_ident!("__wtq_task_{}", ident.unraw(), span = ident.span())
}

/// The `export!` macro.
#[proc_macro]
pub fn export(input: TokenStream) -> TokenStream {
    let paths = parse_macro_input!(input with Punctuated::<Path, Token![,]>::parse_terminated);
    match export_impl(paths) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

fn export_impl(paths: Punctuated<Path, Token![,]>) -> syn::Result<TokenStream2> {
    if paths.is_empty() {
        return Err(Error::new(
            proc_macro2::Span::call_site(),
            "export! takes the #[task] functions to export, e.g. `wtq_sdk::export!(add, div);`",
        ));
    }
    let mut defs = Vec::new();
    for path in paths {
        let mut def = path.clone();
        let last = def
            .segments
            .last_mut()
            .ok_or_else(|| Error::new(path.span(), "empty path"))?;
        if !matches!(last.arguments, PathArguments::None) {
            return Err(Error::new(
                path.span(),
                "export! takes function paths without generics",
            ));
        }
        last.ident = def_ident(&last.ident);
        defs.push(def);
    }
    let private = quote!(::wtq_sdk::__private);
    Ok(quote! {
        const _: () = {
            const TASKS: &[#private::TaskDef] = &[#(#defs),*];
            const _: () = #private::assert_unique_names(TASKS);

            struct WtqTasks;

            impl #private::Guest for WtqTasks {
                fn list() -> ::std::string::String {
                    #private::list(TASKS)
                }

                fn call(
                    name: ::std::string::String,
                    args: ::std::string::String,
                ) -> ::core::result::Result<::std::string::String, #private::WitTaskError> {
                    #private::call(TASKS, &name, &args).map_err(::core::convert::Into::into)
                }
            }

            #private::export!(WtqTasks);
        };
    })
}
