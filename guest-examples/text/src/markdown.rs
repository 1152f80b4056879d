//! A small Markdown-to-HTML renderer, the subset a task description needs.
//!
//! Blocks: ATX headings (`#` to `######`), fenced code blocks, unordered (`-`, `*`, `+`) and
//! ordered (`1.`) lists without nesting, and paragraphs separated by blank lines. Inline: `code`,
//! `**strong**`, `*emphasis*` (also with `_`, never inside a word) and `[links](url)`. All text and
//! URLs are HTML-escaped, and a link whose scheme is not http, https or mailto stays plain text
//! (no `javascript:` links). Entry point: [`render`].

/// Renders `text` as HTML, one block per line.
pub fn render(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 5 / 4);
    let mut paragraph: Vec<&str> = Vec::new();
    let mut list: Option<&'static str> = None;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        if let Some(info) = line.strip_prefix("```") {
            end_blocks(&mut out, &mut paragraph, &mut list);
            let language = info.trim();
            out.push_str("<pre><code");
            if !language.is_empty() {
                out.push_str(" class=\"language-");
                escape(language, &mut out);
                out.push('"');
            }
            out.push('>');
            // The code keeps its indentation: take the raw lines, not the trimmed ones.
            for code in lines.by_ref() {
                if code.trim_start().starts_with("```") {
                    break;
                }
                escape(code, &mut out);
                out.push('\n');
            }
            out.push_str("</code></pre>\n");
        } else if let Some((level, title)) = heading(line) {
            end_blocks(&mut out, &mut paragraph, &mut list);
            out.push_str(&format!("<h{level}>"));
            inline(title, &mut out);
            out.push_str(&format!("</h{level}>\n"));
        } else if let Some((kind, item)) = list_item(line) {
            end_paragraph(&mut out, &mut paragraph);
            if list != Some(kind) {
                end_list(&mut out, &mut list);
                out.push_str(&format!("<{kind}>\n"));
                list = Some(kind);
            }
            out.push_str("<li>");
            inline(item, &mut out);
            out.push_str("</li>\n");
        } else if line.is_empty() {
            end_blocks(&mut out, &mut paragraph, &mut list);
        } else {
            end_list(&mut out, &mut list);
            paragraph.push(line);
        }
    }
    end_blocks(&mut out, &mut paragraph, &mut list);
    out
}

fn end_blocks(out: &mut String, paragraph: &mut Vec<&str>, list: &mut Option<&'static str>) {
    end_paragraph(out, paragraph);
    end_list(out, list);
}

fn end_paragraph(out: &mut String, paragraph: &mut Vec<&str>) {
    if !paragraph.is_empty() {
        out.push_str("<p>");
        inline(&paragraph.join("\n"), out);
        out.push_str("</p>\n");
        paragraph.clear();
    }
}

fn end_list(out: &mut String, list: &mut Option<&'static str>) {
    if let Some(kind) = list.take() {
        out.push_str(&format!("</{kind}>\n"));
    }
}

/// `## Title` is `(2, "Title")`.
fn heading(line: &str) -> Option<(usize, &str)> {
    let level = line.bytes().take_while(|b| *b == b'#').count();
    let rest = &line[level..];
    let title_follows = rest.is_empty() || rest.starts_with(' ');
    ((1..=6).contains(&level) && title_follows).then(|| (level, rest.trim()))
}

/// `- item` is `("ul", "item")`, `3. item` is `("ol", "item")`.
fn list_item(line: &str) -> Option<(&'static str, &str)> {
    for marker in ["- ", "* ", "+ "] {
        if let Some(item) = line.strip_prefix(marker) {
            return Some(("ul", item.trim()));
        }
    }
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    let item = line[digits..].strip_prefix(". ").filter(|_| digits > 0)?;
    Some(("ol", item.trim()))
}

/// Renders the inline spans of `text`, escaping everything else.
fn inline(text: &str, out: &mut String) {
    let mut rest = text;
    let mut previous: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        let consumed = match span(rest, previous, out) {
            Some(consumed) => consumed,
            None => {
                escape_char(c, out);
                c.len_utf8()
            }
        };
        previous = rest[..consumed].chars().next_back();
        rest = &rest[consumed..];
    }
}

/// Renders the code span, link, strong or emphasis that starts `s`, if one does, and returns how
/// many bytes of `s` it used. `previous` is the character before `s`.
fn span(s: &str, previous: Option<char>, out: &mut String) -> Option<usize> {
    if let Some(body) = s.strip_prefix('`') {
        let end = body.find('`')?;
        out.push_str("<code>");
        escape(&body[..end], out);
        out.push_str("</code>");
        return Some(end + 2);
    }
    if s.starts_with('[') {
        return link(s, out);
    }
    for (delimiter, tag) in [("**", "strong"), ("__", "strong"), ("*", "em"), ("_", "em")] {
        let Some(body) = s.strip_prefix(delimiter) else {
            continue;
        };
        // snake_case_words are not emphasis.
        if delimiter.starts_with('_') && previous.is_some_and(char::is_alphanumeric) {
            return None;
        }
        let Some(end) = closing(body, delimiter) else {
            continue;
        };
        out.push_str(&format!("<{tag}>"));
        inline(&body[..end], out);
        out.push_str(&format!("</{tag}>"));
        return Some(2 * delimiter.len() + end);
    }
    None
}

/// Where in `body` the emphasis opened by `delimiter` closes: the content is not empty and
/// neither starts nor ends with a space, and a single `*` does not close on half of a `**`.
fn closing(body: &str, delimiter: &str) -> Option<usize> {
    if body.starts_with(char::is_whitespace) {
        return None;
    }
    let mut from = 0;
    while let Some(found) = body[from..].find(delimiter) {
        let end = from + found;
        let after = &body[end + delimiter.len()..];
        if delimiter.len() == 1 && after.starts_with(delimiter) {
            from = end + 2;
            continue;
        }
        let intraword = delimiter.starts_with('_') && after.starts_with(char::is_alphanumeric);
        if end > 0 && !body[..end].ends_with(char::is_whitespace) && !intraword {
            return Some(end);
        }
        from = end + delimiter.len();
    }
    None
}

/// Renders `[label](url)` at the start of `s`.
fn link(s: &str, out: &mut String) -> Option<usize> {
    let close = s.find(']')?;
    let target = s[close + 1..].strip_prefix('(')?;
    let url_len = target.find(')')?;
    let url = target[..url_len].trim();
    if !safe_url(url) {
        return None;
    }
    out.push_str("<a href=\"");
    escape(url, out);
    out.push_str("\">");
    inline(&s[1..close], out);
    out.push_str("</a>");
    Some(close + 2 + url_len + 1)
}

/// Relative URLs and http, https and mailto ones; not `javascript:` and friends.
fn safe_url(url: &str) -> bool {
    match url.split_once(':') {
        Some((scheme, _)) if !scheme.contains(['/', '?', '#']) => ["http", "https", "mailto"]
            .iter()
            .any(|safe| scheme.eq_ignore_ascii_case(safe)),
        _ => true,
    }
}

fn escape(text: &str, out: &mut String) {
    text.chars().for_each(|c| escape_char(c, out));
}

fn escape_char(c: char, out: &mut String) {
    match c {
        '&' => out.push_str("&amp;"),
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        '"' => out.push_str("&quot;"),
        '\'' => out.push_str("&#39;"),
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::render;

    fn check(markdown: &str, html: &str) {
        assert_eq!(render(markdown), html, "markdown: {markdown:?}");
    }

    #[test]
    fn blocks() {
        check("# Title", "<h1>Title</h1>\n");
        check("###### Six", "<h6>Six</h6>\n");
        check("####### Seven", "<p>####### Seven</p>\n");
        check("#hashtag", "<p>#hashtag</p>\n");
        check("one\ntwo\n\nthree", "<p>one\ntwo</p>\n<p>three</p>\n");
        check(
            "- a\n- b\n\n1. c\n2. d",
            "<ul>\n<li>a</li>\n<li>b</li>\n</ul>\n<ol>\n<li>c</li>\n<li>d</li>\n</ol>\n",
        );
        check(
            "text\n- item\nafter",
            "<p>text</p>\n<ul>\n<li>item</li>\n</ul>\n<p>after</p>\n",
        );
        check(
            "```rust\nfn main() {\n    1 < 2 && true\n}\n```\nend",
            "<pre><code class=\"language-rust\">fn main() {\n    1 &lt; 2 &amp;&amp; true\n}\n</code></pre>\n<p>end</p>\n",
        );
        check(
            "```\nunclosed <",
            "<pre><code>unclosed &lt;\n</code></pre>\n",
        );
        check("", "");
    }

    #[test]
    fn inlines() {
        check(
            "a *b* **c** _d_ __e__",
            "<p>a <em>b</em> <strong>c</strong> <em>d</em> <strong>e</strong></p>\n",
        );
        check("*a **b** c*", "<p><em>a <strong>b</strong> c</em></p>\n");
        check("**a *b* c**", "<p><strong>a <em>b</em> c</strong></p>\n");
        check(
            "snake_case_name and 2 * 3 * 4",
            "<p>snake_case_name and 2 * 3 * 4</p>\n",
        );
        check(
            "`<b>` and `*x*`",
            "<p><code>&lt;b&gt;</code> and <code>*x*</code></p>\n",
        );
        check(
            "see [the *docs*](https://x.io/?a=1&b=\"2\")",
            "<p>see <a href=\"https://x.io/?a=1&amp;b=&quot;2&quot;\">the <em>docs</em></a></p>\n",
        );
        check(
            "[rel](../a.html) [bad](javascript:alert(1))",
            "<p><a href=\"../a.html\">rel</a> [bad](javascript:alert(1))</p>\n",
        );
        check(
            "<script>alert('x')</script>",
            "<p>&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;</p>\n",
        );
        check(
            "unclosed *star and `tick",
            "<p>unclosed *star and `tick</p>\n",
        );
        check(
            "## A [link](#top) & `code`",
            "<h2>A <a href=\"#top\">link</a> &amp; <code>code</code></h2>\n",
        );
    }
}
