//! SMS text that cannot go wrong: sanitising and segment counting.
//!
//! Message texts are rendered from templates that include label values, and
//! device names come from the AddReality API: they can contain anything. A
//! Ctrl-Z (0x1A) inside a text handed to a GSM modem ends the message early
//! and ESC (0x1B) cancels it; a newline in a SimPal command makes the socket
//! ignore it. [`sanitize`] removes such characters and bounds the length
//! before any backend sees the text.
//!
//! [`segments`] tells how many SMS a text costs, per 3GPP TS 23.038 and
//! TS 23.040: a text that uses only the GSM 7-bit default alphabet (and its
//! extension table) is sent as GSM-7, 160 septets in one SMS or 153 per part
//! of a concatenated message; anything else forces UCS-2, 70 UTF-16 units in
//! one SMS or 67 per part. A socket command must fit one SMS, so the count
//! decides what `jobctl check` accepts. National language shift tables
//! (Turkish, Portuguese, Indian languages) are not used: phones and GSM
//! sockets disagree about them, so texts outside the default alphabet are
//! counted as UCS-2, which is what a modem in text mode sends.

/// The SMS character encoding a text needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Encoding {
    /// The GSM 7-bit default alphabet; units are septets.
    Gsm7,
    /// UCS-2 (UTF-16 in practice); units are 16-bit code units.
    Ucs2,
}

impl Encoding {
    /// Units that fit in a single, unsegmented SMS.
    pub(crate) fn single_capacity(self) -> usize {
        match self {
            Encoding::Gsm7 => 160,
            Encoding::Ucs2 => 70,
        }
    }

    /// Units that fit in each part of a concatenated SMS (the user data
    /// header takes the rest).
    pub(crate) fn part_capacity(self) -> usize {
        match self {
            Encoding::Gsm7 => 153,
            Encoding::Ucs2 => 67,
        }
    }
}

/// What a text costs to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentCount {
    /// The encoding the whole text needs.
    pub(crate) encoding: Encoding,
    /// Septets (GSM-7) or UTF-16 code units (UCS-2) of the whole text.
    pub(crate) units: usize,
    /// SMS messages needed; an empty text still costs one.
    pub(crate) segments: usize,
}

impl SegmentCount {
    /// True when the text goes out as one plain SMS (required for socket
    /// commands: a GSM socket does not reassemble concatenated messages).
    pub(crate) fn is_single(&self) -> bool {
        self.segments == 1
    }
}

/// The text a truncated message ends with. Three full stops rather than "…":
/// "…" is not in the GSM-7 alphabet and would turn a Latin text into UCS-2,
/// halving what fits in one SMS.
pub(crate) const TRUNCATION_MARK: &str = "...";

/// Makes a text safe to hand to any SMS backend.
///
/// - Line breaks (`\r\n`, `\r`, `\n`, U+0085, U+2028, U+2029) become `\n`
///   when `allow_newlines` is set; otherwise each run of them becomes one
///   space.
/// - A tab becomes a space.
/// - Every other control character is removed: C0 (including Ctrl-Z 0x1A,
///   which ends an AT message, and ESC 0x1B, which cancels it), DEL and C1.
/// - The result has at most `max_chars` characters (Unicode scalar values).
///   A longer text is cut on a character boundary and ends with
///   [`TRUNCATION_MARK`], which counts towards `max_chars` (when `max_chars`
///   is shorter than the mark, the text is cut without it).
pub(crate) fn sanitize(text: &str, allow_newlines: bool, max_chars: usize) -> String {
    let mut clean = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if is_line_break(c) {
            if allow_newlines {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                clean.push('\n');
            } else {
                while chars.peek().is_some_and(|&next| is_line_break(next)) {
                    chars.next();
                }
                clean.push(' ');
            }
        } else if c == '\t' {
            clean.push(' ');
        } else if !c.is_control() {
            clean.push(c);
        }
    }
    truncate(clean, max_chars)
}

fn is_line_break(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\u{0085}' | '\u{2028}' | '\u{2029}')
}

fn truncate(text: String, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text;
    }
    let mark = TRUNCATION_MARK.chars().count();
    let (keep, mark) =
        if max_chars > mark { (max_chars - mark, TRUNCATION_MARK) } else { (max_chars, "") };
    let end = text.char_indices().nth(keep).map_or(text.len(), |(i, _)| i);
    let mut cut = text[..end].to_string();
    cut.push_str(mark);
    cut
}

/// Septets a character takes in GSM-7: 1 for the default alphabet, 2 for the
/// extension table (escape + character), `None` when GSM-7 cannot carry it.
pub(crate) fn gsm7_septets(c: char) -> Option<usize> {
    const BASIC: &str = concat!(
        "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ",
        " !\"#¤%&'()*+,-./0123456789:;<=>?",
        "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§",
        "¿abcdefghijklmnopqrstuvwxyzäöñüà",
    );
    const EXTENSION: &str = "\u{000C}^{}\\[~]|€";
    // ASCII letters and digits first: the common case, without a search.
    if c.is_ascii_alphanumeric() || BASIC.contains(c) {
        Some(1)
    } else if EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// `text` cut (with [`TRUNCATION_MARK`]) to the longest prefix that fits in
/// `max_segments` segments; unchanged when it already fits.
pub(crate) fn fit_segments(text: &str, max_segments: usize) -> String {
    let max_segments = max_segments.max(1);
    if segments(text).segments <= max_segments {
        return text.to_string();
    }
    let chars: Vec<char> = text.chars().collect();
    let with_mark = |n: usize| {
        let mut cut: String = chars[..n].iter().collect();
        cut.push_str(TRUNCATION_MARK);
        cut
    };
    // The longest prefix that fits, found by bisection: segment counts only
    // grow with length.
    let (mut fits, mut too_long) = (0, chars.len());
    while too_long - fits > 1 {
        let mid = (fits + too_long) / 2;
        if segments(&with_mark(mid)).segments <= max_segments {
            fits = mid;
        } else {
            too_long = mid;
        }
    }
    with_mark(fits)
}

/// Classifies a text and counts what it costs, never splitting a GSM-7
/// extension character (escape + character) or a UTF-16 surrogate pair
/// across two parts.
pub(crate) fn segments(text: &str) -> SegmentCount {
    let gsm: Option<Vec<usize>> = text.chars().map(gsm7_septets).collect();
    let (encoding, widths) = match gsm {
        Some(widths) => (Encoding::Gsm7, widths),
        None => (Encoding::Ucs2, text.chars().map(char::len_utf16).collect()),
    };
    let units: usize = widths.iter().sum();
    let segments = if units <= encoding.single_capacity() {
        1
    } else {
        let part = encoding.part_capacity();
        let (mut parts, mut used) = (1, 0);
        for width in widths {
            if used + width > part {
                parts += 1;
                used = 0;
            }
            used += width;
        }
        parts
    };
    SegmentCount { encoding, units, segments }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notifications_are_cut_to_their_segments() {
        let latin = "x".repeat(400);
        let one = fit_segments(&latin, 1);
        assert_eq!(one.len(), 160);
        assert!(one.ends_with(TRUNCATION_MARK));
        assert_eq!(segments(&fit_segments(&latin, 2)).units, 306);
        assert_eq!(fit_segments("short", 1), "short");
        let cyrillic = "Плеер не отвечает ".repeat(10);
        let cut = fit_segments(&cyrillic, 1);
        assert_eq!(segments(&cut).segments, 1);
        assert_eq!(cut.chars().count(), 70);
    }

    #[test]
    fn control_characters_never_survive() {
        let name = "Lobby\u{1a}AT+CMGS\u{1b}[2J\u{0}\u{7f}\u{85}\u{9b}end";
        assert_eq!(sanitize(name, false, 100), "LobbyAT+CMGS[2J end");
        for c in sanitize(&(0u32..0xA0).filter_map(char::from_u32).collect::<String>(), true, 500)
            .chars()
        {
            assert!(c == '\n' || !c.is_control(), "{c:?} survived");
        }
    }

    #[test]
    fn line_breaks_become_one_space_unless_allowed() {
        assert_eq!(sanitize("a\r\nb\n\n\nc\rd\u{2028}e", false, 100), "a b c d e");
        assert_eq!(sanitize("a\r\nb\rc\u{2029}d", true, 100), "a\nb\nc\nd");
        assert_eq!(sanitize("a\tb", false, 100), "a b");
    }

    #[test]
    fn long_texts_are_cut_on_a_char_boundary_with_a_gsm7_mark() {
        assert_eq!(sanitize("Перезагрузка", false, 8), "Перез...");
        assert_eq!(sanitize("Перезагрузка", false, 12), "Перезагрузка");
        assert_eq!(sanitize("abcdef", false, 2), "ab");
        assert_eq!(sanitize("😀😀😀😀😀", false, 4), "😀...");
        let cut = sanitize(&"x".repeat(200), false, 160);
        assert_eq!(cut.chars().count(), 160);
        assert_eq!(segments(&cut).encoding, Encoding::Gsm7);
    }

    #[test]
    fn latin_and_extension_characters_are_gsm7() {
        let count = segments("Power off lobby @ 10:00, cost £1 & 5% [ok]");
        assert_eq!(count.encoding, Encoding::Gsm7);
        assert_eq!(count.units, 42 + 2);
        assert_eq!(
            segments("#12#0#1#1#"),
            SegmentCount { encoding: Encoding::Gsm7, units: 10, segments: 1 }
        );
        assert_eq!(segments("€^{}\\[~]|").units, 18);
        assert_eq!(segments("Ärger über Straße, ÉÑ¿¡").encoding, Encoding::Gsm7);
        assert_eq!(segments("ΔΦΓΛΩΠΨΣΘΞ").units, 10);
    }

    #[test]
    fn characters_outside_the_alphabet_force_ucs2() {
        assert_eq!(
            segments("Перезагрузка"),
            SegmentCount { encoding: Encoding::Ucs2, units: 12, segments: 1 }
        );
        assert_eq!(segments("Reboot `now`").encoding, Encoding::Ucs2);
        assert_eq!(segments("ç").encoding, Encoding::Ucs2);
        assert_eq!(
            segments("Reboot 🙂"),
            SegmentCount { encoding: Encoding::Ucs2, units: 9, segments: 1 }
        );
        assert_eq!(segments(""), SegmentCount { encoding: Encoding::Gsm7, units: 0, segments: 1 });
    }

    #[test]
    fn gsm7_boundaries() {
        assert_eq!(segments(&"a".repeat(160)).segments, 1);
        assert_eq!(segments(&"a".repeat(161)).segments, 2);
        assert_eq!(segments(&"a".repeat(306)).segments, 2);
        assert_eq!(segments(&"a".repeat(307)).segments, 3);
        // 159 + € = 161 septets: over one SMS.
        let count = segments(&format!("{}€", "a".repeat(159)));
        assert_eq!((count.units, count.segments), (161, 2));
        assert_eq!(segments(&format!("{}€", "a".repeat(158))).segments, 1);
    }

    #[test]
    fn an_extension_character_is_never_split_across_parts() {
        // 152 + 2 + 152 = 306 septets, which naive division fits in two
        // parts; the € cannot straddle the boundary, so it takes three.
        let text = format!("{}€{}", "a".repeat(152), "a".repeat(152));
        assert_eq!(
            segments(&text),
            SegmentCount { encoding: Encoding::Gsm7, units: 306, segments: 3 }
        );
        let text = format!("{}€{}", "a".repeat(151), "a".repeat(153));
        assert_eq!(segments(&text).segments, 2);
    }

    #[test]
    fn ucs2_boundaries_and_surrogate_pairs() {
        assert_eq!(segments(&"Ж".repeat(70)).segments, 1);
        assert_eq!(segments(&"Ж".repeat(71)).segments, 2);
        assert_eq!(segments(&"Ж".repeat(134)).segments, 2);
        assert_eq!(segments(&"Ж".repeat(135)).segments, 3);
        assert_eq!(
            segments(&"😀".repeat(35)),
            SegmentCount { encoding: Encoding::Ucs2, units: 70, segments: 1 }
        );
        // 66 + 2 + 66 = 134 units; the emoji's surrogate pair cannot be split.
        let text = format!("{}😀{}", "Ж".repeat(66), "Ж".repeat(66));
        assert_eq!(
            segments(&text),
            SegmentCount { encoding: Encoding::Ucs2, units: 134, segments: 3 }
        );
    }

    #[test]
    fn a_sanitised_cyrillic_notification_is_counted() {
        let text = sanitize("Перезагрузка плеера\n«Арзамас, Лесная 1»", false, 300);
        assert_eq!(text, "Перезагрузка плеера «Арзамас, Лесная 1»");
        assert_eq!(
            segments(&text),
            SegmentCount { encoding: Encoding::Ucs2, units: 39, segments: 1 }
        );
    }
}
