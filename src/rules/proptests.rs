//! Property tests: the rules file is outside input, so no text at all, and
//! no damaged copy of the shipped example, makes [`super::parse`] panic. It
//! answers a rule set or errors, and the errors can be shown.

use proptest::prelude::*;
use proptest::sample::Index;

/// The shipped example, which is valid as it is.
const EXAMPLE: &str = include_str!("../../rules.example.toml");

/// The example without its comment lines, so that edits land in keys,
/// values and tables rather than in prose.
fn example_without_comments() -> String {
    EXAMPLE.lines().filter(|l| !l.trim_start().starts_with('#')).map(|l| format!("{l}\n")).collect()
}

/// A byte that TOML gives a meaning to, or any byte at all.
fn toml_byte() -> impl Strategy<Value = u8> {
    prop_oneof![prop::sample::select(b"[]{}=\"'#\n,.0-:\\ tx".to_vec()), any::<u8>()]
}

/// One edit of a text: a byte replaced, removed or inserted, the text cut
/// short, or a line removed or repeated.
#[derive(Debug, Clone)]
enum Edit {
    Replace(Index, u8),
    Remove(Index),
    Insert(Index, u8),
    Truncate(Index),
    RemoveLine(Index),
    RepeatLine(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), toml_byte()).prop_map(|(at, b)| Edit::Replace(at, b)),
        any::<Index>().prop_map(Edit::Remove),
        (any::<Index>(), toml_byte()).prop_map(|(at, b)| Edit::Insert(at, b)),
        any::<Index>().prop_map(Edit::Truncate),
        any::<Index>().prop_map(Edit::RemoveLine),
        any::<Index>().prop_map(Edit::RepeatLine),
    ]
}

/// `text` after `edits`, invalid UTF-8 replaced as a reader of the file would.
fn edited(text: &str, edits: &[Edit]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for edit in edits {
        let len = bytes.len();
        match *edit {
            Edit::Replace(at, b) if len > 0 => bytes[at.index(len)] = b,
            Edit::Remove(at) if len > 0 => drop(bytes.remove(at.index(len))),
            Edit::Insert(at, b) => bytes.insert(at.index(len + 1), b),
            Edit::Truncate(at) => bytes.truncate(at.index(len + 1)),
            Edit::RemoveLine(at) | Edit::RepeatLine(at) => {
                let mut lines: Vec<Vec<u8>> =
                    bytes.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
                if lines.is_empty() {
                    continue;
                }
                let line = at.index(lines.len());
                if matches!(edit, Edit::RemoveLine(_)) {
                    lines.remove(line);
                } else {
                    lines.insert(line, lines[line].clone());
                }
                bytes = lines.concat();
            }
            _ => {}
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Parses `text` and shows the errors as `jobctl check` would: neither may panic.
fn parse_and_show(text: &str) {
    match super::parse(text, "/etc/jobctl/rules.toml") {
        Ok(rules) => drop(rules.queries()),
        Err(errors) => assert!(!errors.to_string().is_empty()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_text_is_rules_or_errors(text in any::<String>()) {
        parse_and_show(&text);
    }

    #[test]
    fn toml_like_text_is_rules_or_errors(
        text in r#"(\[{1,2}[a-z.]{0,12}\]{0,2}\n|[a-z_]{1,10} ?= ?("[^"\n]{0,12}"|[0-9.]{1,4}|\[|\{|true)[ ,\]\}]{0,3}\n){0,24}"#
    ) {
        parse_and_show(&text);
    }

    #[test]
    fn the_example_edited_is_rules_or_errors(edits in prop::collection::vec(edit(), 1..8)) {
        parse_and_show(&edited(EXAMPLE, &edits));
    }

    #[test]
    fn the_example_without_comments_edited_is_rules_or_errors(
        edits in prop::collection::vec(edit(), 1..8)
    ) {
        parse_and_show(&edited(&example_without_comments(), &edits));
    }
}

#[test]
fn the_unedited_example_is_valid() {
    super::parse(EXAMPLE, "/etc/jobctl/rules.toml").unwrap();
    super::parse(&example_without_comments(), "/etc/jobctl/rules.toml").unwrap();
}
