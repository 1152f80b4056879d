//! `text`: the text-processing example guest: `word_count`, `slugify`, `markdown` (a small
//! hand-written subset, see `markdown.rs`) and `sha256`.

mod markdown;

use serde::Serialize;
use sha2::{Digest, Sha256};
use wtq_sdk::task;

/// Counts of a text, as `word_count` returns them.
#[derive(Debug, PartialEq, Eq, Serialize)]
struct Counts {
    words: usize,
    lines: usize,
    chars: usize,
}

/// Counts the words (whitespace-separated), lines and characters (Unicode scalars) of a text.
#[task]
fn word_count(text: String) -> Counts {
    Counts {
        words: text.split_whitespace().count(),
        lines: text.lines().count(),
        chars: text.chars().count(),
    }
}

/// Turns a title into a URL slug: lowercase letters and digits joined by single hyphens.
#[task]
fn slugify(text: String) -> String {
    let mut slug = String::with_capacity(text.len());
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if !slug.is_empty() {
            slug.push('-');
        }
        slug.extend(word.chars().flat_map(char::to_lowercase));
    }
    slug
}

/// Renders Markdown to HTML: headings, paragraphs, emphasis, code, lists and links.
#[task]
fn markdown(text: String) -> String {
    markdown::render(&text)
}

/// The SHA-256 digest of the text's UTF-8 bytes, in lowercase hex.
#[task]
fn sha256(text: String) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

wtq_sdk::export!(word_count, slugify, markdown, sha256);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        let counts = word_count("one two\nthree é\n".to_owned());
        assert_eq!(
            counts,
            Counts {
                words: 4,
                lines: 2,
                chars: 16
            }
        );
        assert_eq!(
            word_count(String::new()),
            Counts {
                words: 0,
                lines: 0,
                chars: 0
            }
        );
    }

    #[test]
    fn slugs() {
        let check = |input: &str, expected: &str| assert_eq!(slugify(input.to_owned()), expected);
        check("Hello, World!", "hello-world");
        check("  Rust 2024 -- edition ", "rust-2024-edition");
        check("Crème Brûlée", "crème-brûlée");
        check("???", "");
    }

    #[test]
    fn digest() {
        assert_eq!(
            sha256("abc".to_owned()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
