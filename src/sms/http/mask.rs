//! The gateway key, in every form a request carried it, taken out of the
//! text people read.
//!
//! A gateway that answers an error by echoing the request (its query
//! string, its body, its headers) quotes the key as the request encoded it,
//! not as it was read from `key_file`: `a b+c` travels as `a+b%2Bc` in a
//! query or a form, `"a\"b"` in JSON, inside `Basic <base64>` with basic
//! auth. A gateway or proxy re-encoding it may use `%20` and lower-case hex.
//! [`KeyMask`] knows all those forms for one request and replaces each with
//! `***` wherever an answer is quoted: reasons (which go to the log, the
//! journal's `executions.detail` and `attempts.detail`, and `jobctl
//! history`) and references.

/// What replaces the key.
const MASKED: &str = "***";

/// The forms of the key one request carried; see the module documentation.
#[derive(Debug, Default)]
pub(super) struct KeyMask {
    /// Longest first, so that a form containing another is replaced whole.
    forms: Vec<String>,
}

impl KeyMask {
    /// The forms of `key` (none when empty): as read, form-encoded (query
    /// and form bodies), percent-encoded, each with upper- and lower-case
    /// hex, JSON-escaped (also with `\/`), and the base64 of
    /// `basic_credentials` (`user:password`) when basic auth carried it.
    pub(super) fn new(key: &str, basic_credentials: Option<&str>) -> KeyMask {
        if key.is_empty() {
            return KeyMask::default();
        }
        let form = encode(key, b"*-._", true);
        let percent = encode(key, b"-._~", false);
        let json = serde_json::to_string(key).unwrap_or_default();
        let json = json.trim_matches('"').to_string();
        let mut forms = vec![
            key.to_string(),
            lowercase_hex(&form),
            lowercase_hex(&percent),
            json.replace('/', "\\/"),
            form,
            percent,
            json,
        ];
        if let Some(credentials) = basic_credentials {
            forms.push(base64(credentials.as_bytes()));
        }
        forms.retain(|f| !f.is_empty());
        forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        forms.dedup();
        KeyMask { forms }
    }

    /// `text` with every form of the key replaced by `***`.
    pub(super) fn apply(&self, text: &str) -> String {
        let mut text = text.to_string();
        for form in &self.forms {
            if text.contains(form.as_str()) {
                text = text.replace(form.as_str(), MASKED);
            }
        }
        text
    }
}

/// `text` with the hex digits of its `%XX` escapes in lower case.
fn lowercase_hex(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3).unwrap_or(&rest[at..]);
        out.push_str(&escape.to_ascii_lowercase());
        rest = &rest[at + escape.len()..];
    }
    out.push_str(rest);
    out
}

/// Percent-encodes `text`, keeping ASCII letters, digits and `keep`; with
/// `space_as_plus`, as `application/x-www-form-urlencoded` does (the
/// encoding of query strings and form bodies).
fn encode(text: &str, keep: &[u8], space_as_plus: bool) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(b as char);
        } else if b == b' ' && space_as_plus {
            out.push('+');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Standard base64 with padding, as in `Authorization: Basic …`.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_encoding_of_the_key_is_masked() {
        let key = r#"k3y S3CRET+/=&"\value~"#;
        let mask = KeyMask::new(key, Some(&format!("AC12:{key}")));
        let forms = [
            key,
            "k3y+S3CRET%2B%2F%3D%26%22%5Cvalue%7E",
            "k3y+S3CRET%2b%2f%3d%26%22%5cvalue%7e",
            "k3y%20S3CRET%2B%2F%3D%26%22%5Cvalue~",
            "k3y%20S3CRET%2b%2f%3d%26%22%5cvalue~",
            r#"k3y S3CRET+/=&\"\\value~"#,
            r#"k3y S3CRET+\/=&\"\\value~"#,
        ];
        for form in forms {
            assert_eq!(mask.apply(&format!("got api_key={form}&x=1")), "got api_key=***&x=1");
        }
        let basic = base64(format!("AC12:{key}").as_bytes());
        assert_eq!(
            mask.apply(&format!("Authorization: Basic {basic}")),
            "Authorization: Basic ***"
        );
        assert_eq!(KeyMask::new("", None).apply("nothing to hide"), "nothing to hide");
    }

    #[test]
    fn base64_is_the_standard_alphabet_with_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"user:pa ss/+"), "dXNlcjpwYSBzcy8r");
    }
}
