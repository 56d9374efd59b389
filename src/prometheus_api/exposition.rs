//! A reader of the Prometheus text exposition format (version 0.0.4), the
//! page an exporter serves on `/metrics`.
//!
//! jobctl's scrape source (`[source] scrape = [...]`) reads exporters
//! directly instead of asking Prometheus, so it must read their pages the
//! way Prometheus does: `# HELP` and `# TYPE` in any order (or absent),
//! other comments and empty lines skipped, label values with the escapes
//! `\\`, `\"` and `\n`, values such as `NaN`, `+Inf` and `-Inf`, an
//! optional timestamp in milliseconds, and histograms and summaries read as
//! the plain series they are written as (`_bucket{le="…"}`, `_sum`,
//! `_count`). No crate for this is both maintained and small (the few on
//! crates.io are single releases or years old, and allocate a map per
//! series), so this is the project's own: one pass over the page, label
//! text borrowed from it unless an escape had to be undone.
//!
//! Anything else is an [`ExpositionError`] naming the line and what was
//! expected there; the parser never panics on any input (property tests
//! in `proptests.rs`, next to the exporter's renderer whose pages it must
//! read back).

use std::borrow::Cow;
use std::fmt;

use super::answer::Label;

/// One sample of a page.
#[derive(Debug, Clone, PartialEq)]
pub struct ExposedSample<'a> {
    /// The metric name (`addreality_device_online`, `x_bucket`).
    pub name: &'a str,
    /// The labels as written (the name is not among them).
    pub labels: Vec<Label<'a>>,
    /// The value.
    pub value: f64,
    /// The optional timestamp, in Unix milliseconds.
    pub timestamp: Option<i64>,
}

/// Why a page is not in the text format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ExpositionError {
    /// The line, counted from 1.
    pub line: usize,
    /// What was expected, and what was found instead.
    pub reason: String,
}

/// The metric types `# TYPE` may name.
const TYPES: [&str; 5] = ["counter", "gauge", "histogram", "summary", "untyped"];

/// How much of a bad line is quoted in an error.
const EXCERPT_CHARS: usize = 40;

/// Reads every sample of `page`, in order, handing each to `each`. Stops at
/// the first line that is not in the format.
pub fn parse<'a>(
    page: &'a str,
    mut each: impl FnMut(&ExposedSample<'a>),
) -> Result<usize, ExpositionError> {
    let mut sample = ExposedSample { name: "", labels: Vec::new(), value: 0.0, timestamp: None };
    let mut count = 0;
    for (index, line) in page.split('\n').enumerate() {
        let fail = |reason: String| ExpositionError { line: index + 1, reason };
        let line = line.strip_suffix('\r').unwrap_or(line);
        let trimmed = line.trim_start_matches([' ', '\t']);
        if trimmed.is_empty() {
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            comment_line(comment).map_err(fail)?;
            continue;
        }
        sample.labels.clear();
        sample_line(trimmed, &mut sample).map_err(fail)?;
        each(&sample);
        count += 1;
    }
    Ok(count)
}

/// Reads `bytes` as UTF-8, or says on which line it is not.
pub fn utf8(bytes: &[u8]) -> Result<&str, ExpositionError> {
    std::str::from_utf8(bytes).map_err(|err| {
        let before = &bytes[..err.valid_up_to()];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        ExpositionError { line, reason: "expected UTF-8 text, found invalid bytes".to_string() }
    })
}

/// `# HELP name text`, `# TYPE name type`, or any other comment.
fn comment_line(comment: &str) -> Result<(), String> {
    let mut words = Cursor::new(comment);
    words.blanks();
    let keyword = words.take_while(|c| !matches!(c, ' ' | '\t'));
    if keyword != "HELP" && keyword != "TYPE" {
        return Ok(());
    }
    if !words.blanks() {
        // `# HELPER` or a bare `# HELP`: a comment like any other.
        return Ok(());
    }
    let name = words.name(true).ok_or_else(|| {
        format!("expected a metric name after # {keyword}, found {}", words.excerpt())
    })?;
    if keyword == "HELP" {
        // The text may hold `\\` and `\n`; it is not kept, so any text will do.
        if !words.at_end() && !words.blanks() {
            return Err(format!("expected a space after # HELP {name}, found {}", words.excerpt()));
        }
        return Ok(());
    }
    if !words.blanks() {
        return Err(format!("expected a metric type after # TYPE {name}"));
    }
    let kind = words.take_while(|c| !matches!(c, ' ' | '\t'));
    words.blanks();
    if !TYPES.contains(&kind) || !words.at_end() {
        return Err(format!(
            "expected a metric type ({}) after # TYPE {name}, found {}",
            TYPES.join(", "),
            quoted(kind)
        ));
    }
    Ok(())
}

/// `name{label="value",…} value [timestamp]`.
fn sample_line<'a>(line: &'a str, sample: &mut ExposedSample<'a>) -> Result<(), String> {
    let mut at = Cursor::new(line);
    sample.name = at
        .name(true)
        .ok_or_else(|| format!("expected a metric name or a # comment, found {}", at.excerpt()))?;
    at.blanks();
    if at.eat('{') {
        labels(&mut at, sample)?;
        at.blanks();
    }
    let value = at.take_while(|c| !matches!(c, ' ' | '\t'));
    if value.is_empty() {
        return Err(format!("expected a value after {}, found {}", sample.name, at.excerpt()));
    }
    sample.value = float(value).ok_or_else(|| {
        format!("expected a number (or NaN, +Inf, -Inf) as the value, found {}", quoted(value))
    })?;
    at.blanks();
    sample.timestamp = None;
    if !at.at_end() {
        let stamp = at.take_while(|c| !matches!(c, ' ' | '\t'));
        sample.timestamp = Some(stamp.parse::<i64>().map_err(|_| {
            format!("expected a timestamp in milliseconds after the value, found {}", quoted(stamp))
        })?);
        at.blanks();
        if !at.at_end() {
            return Err(format!(
                "expected the end of the line after the timestamp, found {}",
                at.excerpt()
            ));
        }
    }
    Ok(())
}

/// The labels after `{`, up to and including `}`.
fn labels<'a>(at: &mut Cursor<'a>, sample: &mut ExposedSample<'a>) -> Result<(), String> {
    loop {
        at.blanks();
        if at.eat('}') {
            return Ok(());
        }
        let name = at
            .name(false)
            .ok_or_else(|| format!("expected a label name or }}, found {}", at.excerpt()))?;
        at.blanks();
        if !at.eat('=') {
            return Err(format!("expected = after label name {name}, found {}", at.excerpt()));
        }
        at.blanks();
        if !at.eat('"') {
            return Err(format!(
                "expected a double-quoted value for label {name}, found {}",
                at.excerpt()
            ));
        }
        let value = at.quoted().map_err(|why| format!("label {name}: {why}"))?;
        if sample.labels.iter().any(|(seen, _)| seen == name) {
            return Err(format!("label {name} appears twice"));
        }
        sample.labels.push((Cow::Borrowed(name), value));
        at.blanks();
        if at.eat(',') {
            continue;
        }
        if at.eat('}') {
            return Ok(());
        }
        return Err(format!("expected , or }} after label {name}, found {}", at.excerpt()));
    }
}

/// A value as Go's `strconv.ParseFloat` reads it for the text format:
/// decimal or exponent notation, `NaN`, `Inf` with an optional sign.
fn float(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        // Rust would also take "inf", "infinity" and "nan" in any case.
        _ if text.bytes().any(|b| b.is_ascii_alphabetic() && !matches!(b, b'e' | b'E')) => None,
        _ => text.parse().ok(),
    }
}

/// `"text"` or, when long, its first characters and `…`.
fn quoted(text: &str) -> String {
    if text.is_empty() {
        return "nothing".to_string();
    }
    let excerpt: String = text.chars().take(EXCERPT_CHARS).collect();
    let more = if excerpt.len() < text.len() { "…" } else { "" };
    format!("{excerpt:?}{more}")
}

/// A position in a line.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Cursor<'a> {
        Cursor { text, at: 0 }
    }

    fn rest(&self) -> &'a str {
        &self.text[self.at..]
    }

    fn at_end(&self) -> bool {
        self.at == self.text.len()
    }

    fn excerpt(&self) -> String {
        match self.rest() {
            "" => "the end of the line".to_string(),
            rest => quoted(rest),
        }
    }

    /// Skips spaces and tabs; whether there were any.
    fn blanks(&mut self) -> bool {
        let before = self.at;
        self.take_while(|c| matches!(c, ' ' | '\t'));
        self.at > before
    }

    fn eat(&mut self, c: char) -> bool {
        let found = self.rest().starts_with(c);
        if found {
            self.at += c.len_utf8();
        }
        found
    }

    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> &'a str {
        let rest = self.rest();
        let end = rest.find(|c| !keep(c)).unwrap_or(rest.len());
        self.at += end;
        &rest[..end]
    }

    /// A metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`) or, without `colons`, a
    /// label name.
    fn name(&mut self, colons: bool) -> Option<&'a str> {
        let rest = self.rest();
        let first = rest.chars().next()?;
        if !(first.is_ascii_alphabetic() || first == '_' || (colons && first == ':')) {
            return None;
        }
        Some(self.take_while(|c| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':')))
    }

    /// A label value after its opening `"`, up to and including the closing
    /// one, with `\\`, `\"` and `\n` undone.
    fn quoted(&mut self) -> Result<Cow<'a, str>, String> {
        let rest = self.rest();
        let Some(end) = rest.find(['"', '\\']) else {
            return Err("expected a closing \" before the end of the line".to_string());
        };
        if rest.as_bytes()[end] == b'"' {
            self.at += end + 1;
            return Ok(Cow::Borrowed(&rest[..end]));
        }
        let mut value = String::with_capacity(rest.len());
        let mut chars = rest.char_indices();
        while let Some((offset, c)) = chars.next() {
            match c {
                '"' => {
                    self.at += offset + 1;
                    return Ok(Cow::Owned(value));
                }
                '\\' => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => {
                        return Err(format!(
                            "expected \\\\, \\\" or \\n in a label value, found \\{other}"
                        ))
                    }
                    None => break,
                },
                c => value.push(c),
            }
        }
        Err("expected a closing \" before the end of the line".to_string())
    }
}

impl fmt::Display for ExposedSample<'_> {
    /// The sample as a line of the format (escaped), for messages and tests.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)?;
        if !self.labels.is_empty() {
            f.write_str("{")?;
            for (i, (name, value)) in self.labels.iter().enumerate() {
                let value = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                write!(f, "{}{name}=\"{value}\"", if i == 0 { "" } else { "," })?;
            }
            f.write_str("}")?;
        }
        write!(f, " {}", self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample as (name, labels, value, timestamp).
    type Read = (String, Vec<(String, String)>, f64, Option<i64>);

    fn all(page: &str) -> Result<Vec<Read>, String> {
        let mut out = Vec::new();
        parse(page, |s| {
            let labels = s.labels.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
            out.push((s.name.to_string(), labels, s.value, s.timestamp));
        })
        .map_err(|e| e.to_string())?;
        Ok(out)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn label_values_unescape_backslash_quote_and_newline() {
        let page = "m{a=\"x\\\\y\",b=\"say \\\"hi\\\"\",c=\"one\\ntwo\",d=\"Лесная\"} 1\n";
        let got = all(page).unwrap();
        assert_eq!(
            got[0].1,
            pairs(&[("a", "x\\y"), ("b", "say \"hi\""), ("c", "one\ntwo"), ("d", "Лесная")])
        );
        let err = all("m{a=\"x\\ty\"} 1\n").unwrap_err();
        assert_eq!(err, "line 1: label a: expected \\\\, \\\" or \\n in a label value, found \\t");
    }

    #[test]
    fn nan_and_infinities_are_values() {
        let got = all("a NaN\nb +Inf\nc -Inf\nd Inf\ne 1.5e3\nf -0\ng 0.25\n").unwrap();
        assert!(got[0].2.is_nan());
        assert_eq!(got[1].2, f64::INFINITY);
        assert_eq!(got[2].2, f64::NEG_INFINITY);
        assert_eq!(got[3].2, f64::INFINITY);
        assert_eq!(got[4].2, 1500.0);
        assert_eq!((got[5].2, got[6].2), (0.0, 0.25));
        let err = all("a inf\n").unwrap_err();
        assert!(err.starts_with("line 1: expected a number (or NaN, +Inf, -Inf)"), "{err}");
    }

    #[test]
    fn timestamps_are_optional_milliseconds() {
        let got = all("a 1 1700000000000\nb{x=\"1\"} 2 -5\nc 3\n").unwrap();
        assert_eq!(got[0].3, Some(1_700_000_000_000));
        assert_eq!(got[1].3, Some(-5));
        assert_eq!(got[2].3, None);
        let err = all("a 1 soon\n").unwrap_err();
        assert_eq!(
            err,
            "line 1: expected a timestamp in milliseconds after the value, found \"soon\""
        );
        let err = all("a 1 2 3\n").unwrap_err();
        assert_eq!(err, "line 1: expected the end of the line after the timestamp, found \"3\"");
    }

    #[test]
    fn comments_help_and_type_in_any_order_and_empty_lines() {
        let page = "\n# a comment\n#another\n# TYPE m gauge\n# HELP m Some \\\\ help\\n text\n\
                    m 1\n\n  \t\n# HELP n only help\nn 2\n# TYPE h histogram\n\
                    h_bucket{le=\"0.5\"} 3\nh_bucket{le=\"+Inf\"} 4\nh_sum 2.5\nh_count 4\n\
                    # TYPE s summary\ns{quantile=\"0.9\"} 0.1\r\ns_count 7\r\n# HELP\n";
        let got = all(page).unwrap();
        let names: Vec<&str> = got.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(names, ["m", "n", "h_bucket", "h_bucket", "h_sum", "h_count", "s", "s_count"]);
        assert_eq!(got[3].1, pairs(&[("le", "+Inf")]));
        assert_eq!(got[7].2, 7.0, "a CRLF line ending is not part of the value");
    }

    #[test]
    fn spacing_and_trailing_commas_are_accepted() {
        let got = all("m { a = \"1\" , b=\"2\", } 4\nn{} 5\n").unwrap();
        assert_eq!(got[0].1, pairs(&[("a", "1"), ("b", "2")]));
        assert_eq!((got[1].1.len(), got[1].2), (0, 5.0));
    }

    #[test]
    fn malformed_lines_say_which_and_what_was_expected() {
        let cases = [
            ("ok 1\n{a=\"1\"} 1\n", "line 2: expected a metric name or a # comment, found \"{a=\\\"1\\\"} 1\""),
            ("m{a=\"1\" 1\n", "line 1: expected , or } after label a, found \"1\""),
            ("m{a\"1\"} 1\n", "line 1: expected = after label name a, found \"\\\"1\\\"} 1\""),
            ("m{a=1} 1\n", "line 1: expected a double-quoted value for label a, found \"1} 1\""),
            ("m{a=\"1} 1\n", "line 1: label a: expected a closing \" before the end of the line"),
            ("m{a=\"1\",a=\"2\"} 1\n", "line 1: label a appears twice"),
            ("m\n", "line 1: expected a value after m, found the end of the line"),
            ("m{} \n", "line 1: expected a value after m, found the end of the line"),
            ("m 1,5\n", "line 1: expected a number (or NaN, +Inf, -Inf) as the value, found \"1,5\""),
            ("# TYPE m gauges\n", "line 1: expected a metric type (counter, gauge, histogram, summary, untyped) after # TYPE m, found \"gauges\""),
            ("# TYPE m\n", "line 1: expected a metric type after # TYPE m"),
            ("# HELP 9m x\n", "line 1: expected a metric name after # HELP, found \"9m x\""),
            ("m{1a=\"x\"} 1\n", "line 1: expected a label name or }, found \"1a=\\\"x\\\"} 1\""),
        ];
        for (page, expected) in cases {
            assert_eq!(all(page).unwrap_err(), expected, "{page:?}");
        }
    }

    #[test]
    fn invalid_utf8_names_its_line() {
        let err = utf8(b"a 1\nb 2\nc{x=\"\xff\"} 3\n").unwrap_err();
        assert_eq!(err.to_string(), "line 3: expected UTF-8 text, found invalid bytes");
        assert_eq!(utf8(b"a 1\n").unwrap(), "a 1\n");
    }

    #[test]
    fn unescaped_values_are_borrowed_from_the_page() {
        let page = String::from("m{a=\"plain\",b=\"e\\\\s\"} 1\n");
        parse(&page, |s| {
            assert!(matches!(s.labels[0].1, Cow::Borrowed(_)));
            assert!(matches!(s.labels[1].1, Cow::Owned(_)));
        })
        .unwrap();
    }
}
