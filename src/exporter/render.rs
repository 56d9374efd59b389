//! The per-device metric families, written as Prometheus text (format 0.0.4).
//!
//! The whole fleet is rendered once per poll and every scrape then serves
//! the same bytes, so this is on the path of every poll but of no scrape. It
//! is written by hand rather than through the `prometheus` crate's registry:
//! that would build a label map per series (400,000 of them for 100,000
//! devices) only to print them, and would sort and hash what the cache has
//! already sorted.
//!
//! Four families, whose names and labels are a contract with dashboards,
//! alert rules and `jobctl` jobs:
//!
//! | family | value |
//! |---|---|
//! | `addreality_device_online` | 1 when `connection_state` is `online`, else 0 |
//! | `addreality_device_playing` | 1 when `player_status` is `playback`, else 0 |
//! | `addreality_device_last_online_timestamp_seconds` | Unix time, ms precision; no series when unknown |
//! | `addreality_device_info` | always 1; labels `player_version`, `time_zone`, `activated` |
//!
//! Every series carries `platform_id`, `device_id` and `name`. A family with
//! no series is left out altogether, `# HELP` and `# TYPE` included, as the
//! official client libraries do for a labelled metric with no children: an
//! empty family says nothing a query could use, and "no devices" is better
//! told by the exporter's own per-platform metrics.

use std::time::Duration;

use super::cache::CachedDevice;
use crate::addreality::model::Device;

/// Family: whether the player is connected to the AddReality cloud.
pub(crate) const DEVICE_ONLINE: &str = "addreality_device_online";
/// Family: whether the player is playing content.
pub(crate) const DEVICE_PLAYING: &str = "addreality_device_playing";
/// Family: when the player was last connected, as Unix seconds.
pub(crate) const DEVICE_LAST_ONLINE: &str = "addreality_device_last_online_timestamp_seconds";
/// Family: descriptive labels of the player, value always 1.
pub(crate) const DEVICE_INFO: &str = "addreality_device_info";

/// One platform's devices, as handed to [`render_devices`].
#[derive(Debug, Clone, Copy)]
pub struct PlatformDevices<'a> {
    /// The platform's id from the configuration; the `platform_id` label.
    pub platform_id: &'a str,
    /// Its devices, sorted by id, each id at most once.
    pub devices: &'a [CachedDevice],
}

/// Appends the four per-device families to `out`.
///
/// Series appear in the order given: platforms as passed (sort them by id
/// for a stable page), devices as stored. The HELP texts say the values come
/// from a cache refreshed every `poll_interval`.
///
/// `out` is grown once, by an estimate that errs on the large side by a few
/// bytes per series; shrink it before keeping it if that matters.
pub fn render_devices(
    out: &mut Vec<u8>,
    platforms: &[PlatformDevices<'_>],
    poll_interval: Duration,
) {
    let devices =
        || platforms.iter().flat_map(|p| p.devices.iter().map(move |d| (p.platform_id, &d.device)));
    if devices().next().is_none() {
        return;
    }
    let every = humantime::format_duration(poll_interval).to_string();
    out.reserve(estimated_len(platforms, &every));

    help_and_type(
        out,
        DEVICE_ONLINE,
        "Whether the player is connected to the AddReality cloud (1) or not (0)",
        &every,
    );
    for (platform_id, device) in devices() {
        series_start(out, DEVICE_ONLINE, platform_id, device);
        out.extend_from_slice(if device.is_online() { b"\"} 1\n" } else { b"\"} 0\n" });
    }

    help_and_type(
        out,
        DEVICE_PLAYING,
        "Whether the player is playing content (1) or not (0: paused, stopped or unknown)",
        &every,
    );
    for (platform_id, device) in devices() {
        series_start(out, DEVICE_PLAYING, platform_id, device);
        out.extend_from_slice(if device.is_playing() { b"\"} 1\n" } else { b"\"} 0\n" });
    }

    if devices().any(|(_, device)| device.last_online.is_some()) {
        help_and_type(
            out,
            DEVICE_LAST_ONLINE,
            "When the player was last connected to the AddReality cloud, as Unix time \
             (no series when the API does not say)",
            &every,
        );
        for (platform_id, device) in devices() {
            if let Some(seconds) = device.last_online {
                series_start(out, DEVICE_LAST_ONLINE, platform_id, device);
                out.extend_from_slice(b"\"} ");
                push_seconds(out, seconds);
                out.push(b'\n');
            }
        }
    }

    help_and_type(
        out,
        DEVICE_INFO,
        "Player software version, time zone and activation (true, false, or empty when \
         unknown); always 1",
        &every,
    );
    for (platform_id, device) in devices() {
        series_start(out, DEVICE_INFO, platform_id, device);
        out.extend_from_slice(b"\",player_version=\"");
        push_label_value(out, device.player_version.as_deref().unwrap_or(""));
        out.extend_from_slice(b"\",time_zone=\"");
        push_label_value(out, device.time_zone.as_deref().unwrap_or(""));
        out.extend_from_slice(match device.activation_state {
            Some(true) => b"\",activated=\"true\"} 1\n",
            Some(false) => b"\",activated=\"false\"} 1\n",
            None => b"\",activated=\"\"} 1\n",
        });
    }
}

/// Bytes the rendering takes at most, escapes aside.
fn estimated_len(platforms: &[PlatformDevices<'_>], every: &str) -> usize {
    // The four `# HELP` and `# TYPE` pairs, `every` aside; rounded up.
    const HEADERS: usize = 1024;
    // Per device: name, fixed label text and value of each family, the
    // timestamp and the id at their longest; measured, rounded up.
    const FIXED: usize = 64 + 64 + 96 + 128;
    const ID: usize = 20;
    let series: usize = platforms
        .iter()
        .flat_map(|p| p.devices.iter().map(move |d| (p.platform_id, &d.device)))
        .map(|(platform_id, d)| {
            FIXED
                + 4 * (platform_id.len() + ID + d.name.len())
                + d.player_version.as_ref().map_or(0, String::len)
                + d.time_zone.as_ref().map_or(0, String::len)
        })
        .sum();
    HEADERS + 4 * every.len() + series
}

fn help_and_type(out: &mut Vec<u8>, family: &str, help: &str, every: &str) {
    // `help` and `every` are ours and hold no backslash or newline, the only
    // characters HELP text escapes.
    out.extend_from_slice(b"# HELP ");
    out.extend_from_slice(family.as_bytes());
    out.push(b' ');
    out.extend_from_slice(help.as_bytes());
    out.extend_from_slice(b", from a cache refreshed every ");
    out.extend_from_slice(every.as_bytes());
    out.extend_from_slice(b".\n# TYPE ");
    out.extend_from_slice(family.as_bytes());
    out.extend_from_slice(b" gauge\n");
}

/// Writes `family{platform_id="…",device_id="…",name="…` — the closing quote
/// is the caller's, so that the info family can add labels.
fn series_start(out: &mut Vec<u8>, family: &str, platform_id: &str, device: &Device) {
    out.extend_from_slice(family.as_bytes());
    out.extend_from_slice(b"{platform_id=\"");
    push_label_value(out, platform_id);
    out.extend_from_slice(b"\",device_id=\"");
    push_integer(out, device.id);
    out.extend_from_slice(b"\",name=\"");
    push_label_value(out, &device.name);
}

/// A label value, escaped as the text format requires: backslash, double
/// quote and line feed. Everything else, Cyrillic included, is kept as UTF-8.
fn push_label_value(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    let mut plain_from = 0;
    for (at, byte) in bytes.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'\\' => b"\\\\",
            b'"' => b"\\\"",
            b'\n' => b"\\n",
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain_from..at]);
        out.extend_from_slice(escaped);
        plain_from = at + 1;
    }
    out.extend_from_slice(&bytes[plain_from..]);
}

fn push_integer(out: &mut Vec<u8>, value: i64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = value.unsigned_abs();
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if value < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[start..]);
}

/// Unix seconds with millisecond precision, written so that Prometheus reads
/// back exactly `milliseconds / 1000.0`: the whole seconds, then up to three
/// decimals without trailing zeros.
fn push_seconds(out: &mut Vec<u8>, seconds: f64) {
    /// Beyond this, f64 no longer holds every millisecond.
    const EXACT_MILLIS: f64 = 9_007_199_254_740_992.0;
    let millis = (seconds * 1000.0).round();
    if seconds.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if millis.abs() >= EXACT_MILLIS {
        // Also ±Inf; Rust prints any other such value exactly, in plain digits.
        let text = match seconds {
            f64::INFINITY => "+Inf".to_owned(),
            f64::NEG_INFINITY => "-Inf".to_owned(),
            _ => seconds.to_string(),
        };
        out.extend_from_slice(text.as_bytes());
    } else {
        let millis = millis as i64;
        if millis < 0 {
            out.push(b'-');
        }
        let (whole, fraction) = (millis.unsigned_abs() / 1000, millis.unsigned_abs() % 1000);
        push_integer(out, whole as i64);
        if fraction != 0 {
            let digits = [b'.', b'0' + (fraction / 100) as u8, b'0' + (fraction / 10 % 10) as u8];
            let last = b'0' + (fraction % 10) as u8;
            if last != b'0' {
                out.extend_from_slice(&digits);
                out.push(last);
            } else if digits[2] != b'0' {
                out.extend_from_slice(&digits);
            } else {
                out.extend_from_slice(&digits[..2]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(device: Device) -> CachedDevice {
        CachedDevice { device, first_seen: 0.0, last_seen: 0.0 }
    }

    fn player(id: i64, name: &str) -> Device {
        Device::online_for_tests(id, name)
    }

    fn render(platforms: &[PlatformDevices<'_>], poll_interval: Duration) -> String {
        let mut out = Vec::new();
        render_devices(&mut out, platforms, poll_interval);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_tiny_fleet_renders_exactly() {
        let first = [
            cached(player(30785, "Arzamas_Lesnaia_1")),
            cached(Device {
                id: 30786,
                name: "Склад".into(),
                connection_state: Some("offline".into()),
                player_status: Some("pause".into()),
                last_online: Some(1_700_000_000.0),
                activation_state: Some(false),
                player_version: None,
                time_zone: Some("+03:00".into()),
            }),
        ];
        let second = [cached(Device {
            id: 7,
            name: String::new(),
            connection_state: None,
            player_status: None,
            last_online: None,
            activation_state: None,
            player_version: None,
            time_zone: None,
        })];
        let text = render(
            &[
                PlatformDevices { platform_id: "12", devices: &first },
                PlatformDevices { platform_id: "north", devices: &second },
            ],
            Duration::from_secs(60),
        );
        let expected = r#"# HELP addreality_device_online Whether the player is connected to the AddReality cloud (1) or not (0), from a cache refreshed every 1m.
# TYPE addreality_device_online gauge
addreality_device_online{platform_id="12",device_id="30785",name="Arzamas_Lesnaia_1"} 1
addreality_device_online{platform_id="12",device_id="30786",name="Склад"} 0
addreality_device_online{platform_id="north",device_id="7",name=""} 0
# HELP addreality_device_playing Whether the player is playing content (1) or not (0: paused, stopped or unknown), from a cache refreshed every 1m.
# TYPE addreality_device_playing gauge
addreality_device_playing{platform_id="12",device_id="30785",name="Arzamas_Lesnaia_1"} 1
addreality_device_playing{platform_id="12",device_id="30786",name="Склад"} 0
addreality_device_playing{platform_id="north",device_id="7",name=""} 0
# HELP addreality_device_last_online_timestamp_seconds When the player was last connected to the AddReality cloud, as Unix time (no series when the API does not say), from a cache refreshed every 1m.
# TYPE addreality_device_last_online_timestamp_seconds gauge
addreality_device_last_online_timestamp_seconds{platform_id="12",device_id="30785",name="Arzamas_Lesnaia_1"} 1748266148.166
addreality_device_last_online_timestamp_seconds{platform_id="12",device_id="30786",name="Склад"} 1700000000
# HELP addreality_device_info Player software version, time zone and activation (true, false, or empty when unknown); always 1, from a cache refreshed every 1m.
# TYPE addreality_device_info gauge
addreality_device_info{platform_id="12",device_id="30785",name="Arzamas_Lesnaia_1",player_version="4.1.76",time_zone="+01:00",activated="true"} 1
addreality_device_info{platform_id="12",device_id="30786",name="Склад",player_version="",time_zone="+03:00",activated="false"} 1
addreality_device_info{platform_id="north",device_id="7",name="",player_version="",time_zone="",activated=""} 1
"#;
        assert_eq!(text, expected);
    }

    #[test]
    fn label_values_are_escaped_as_the_text_format_requires() {
        let devices = [cached(Device {
            player_version: Some("4.1\\beta\"".into()),
            time_zone: Some("\n".into()),
            ..player(-3, "a\\b \"c\"\nd\\n Лесная\0\t\r")
        })];
        let text = render(
            &[PlatformDevices { platform_id: "p\"\\\n", devices: &devices }],
            Duration::from_secs(90),
        );
        assert!(text.contains("every 1m 30s.\n"), "{text}");
        let info = text.lines().last().unwrap();
        assert_eq!(
            info,
            "addreality_device_info{platform_id=\"p\\\"\\\\\\n\",device_id=\"-3\",\
             name=\"a\\\\b \\\"c\\\"\\nd\\\\n Лесная\0\t\r\",player_version=\"4.1\\\\beta\\\"\",\
             time_zone=\"\\n\",activated=\"true\"} 1"
        );
        // Only the escaped forms may appear: one series per line.
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 4);
    }

    #[test]
    fn families_without_series_are_left_out() {
        assert_eq!(render(&[], Duration::from_secs(60)), "");
        assert_eq!(
            render(&[PlatformDevices { platform_id: "p", devices: &[] }], Duration::from_secs(60)),
            ""
        );
        let devices = [cached(Device { last_online: None, ..player(1, "x") })];
        let text =
            render(&[PlatformDevices { platform_id: "p", devices: &devices }], Duration::ZERO);
        assert!(!text.contains(DEVICE_LAST_ONLINE), "{text}");
        assert_eq!(text.matches("# TYPE").count(), 3);
    }

    #[test]
    fn timestamps_read_back_exactly_at_millisecond_precision() {
        let written = |seconds: f64| {
            let mut out = Vec::new();
            push_seconds(&mut out, seconds);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(written(1_748_266_148.166), "1748266148.166");
        assert_eq!(written(1_748_266_148.1), "1748266148.1");
        assert_eq!(written(1_748_266_148.02), "1748266148.02");
        assert_eq!(written(1_748_266_148.0), "1748266148");
        assert_eq!(written(1_748_266_148.000_4), "1748266148");
        assert_eq!(written(0.0), "0");
        assert_eq!(written(-1.5), "-1.5");
        assert_eq!(written(-0.001), "-0.001");
        assert_eq!(written(f64::NAN), "NaN");
        assert_eq!(written(f64::INFINITY), "+Inf");
        assert_eq!(written(f64::NEG_INFINITY), "-Inf");
        assert_eq!(written(1e300).parse::<f64>().unwrap(), 1e300);

        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..100_000 {
            let millis = rng.i64(-4_000_000_000_000..8_000_000_000_000);
            let seconds = millis as f64 / 1000.0;
            let text = written(seconds);
            assert_eq!(text.parse::<f64>().unwrap(), seconds, "{millis} ms written as {text}");
        }
    }

    #[test]
    fn integers_are_written_in_full() {
        for value in [0, 7, -7, 30785, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            push_integer(&mut out, value);
            assert_eq!(String::from_utf8(out).unwrap(), value.to_string());
        }
    }

    #[test]
    fn the_estimate_covers_the_output_closely() {
        let interval = Duration::from_secs(3600 * 24 * 365 + 3661);
        let every = humantime::format_duration(interval).to_string();
        for size in [1, 500] {
            // The longest timestamps and ids there are.
            let devices: Vec<CachedDevice> = (0..size)
                .map(|i| {
                    let last_online = Some(-1e12 - 0.123);
                    cached(Device { last_online, ..player(i64::MIN + i, "n") })
                })
                .collect();
            let platforms = [PlatformDevices { platform_id: "platform", devices: &devices }];
            let mut out = Vec::new();
            render_devices(&mut out, &platforms, interval);
            let estimate = estimated_len(&platforms, &every);
            assert!(out.len() <= estimate, "{size} devices: {} > {estimate}", out.len());
            if size > 1 {
                assert!(out.len() * 5 > estimate * 4, "{} of {estimate}", out.len());
            }
        }
    }

    /// Prometheus' own linter and parser, on a fleet with every awkward name.
    #[test]
    fn promtool_finds_nothing_to_complain_about() {
        use std::io::Write;
        use std::process::{Command, Stdio};

        let names = [
            "quote \" in it",
            "back\\slash",
            "ends with backslash \\",
            "new\nline",
            "Арзамас_Лесная_1",
            "nul\0byte\ttab\rcr",
            "",
            "{braces}=,\"",
            "# not a comment",
        ];
        let devices: Vec<CachedDevice> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut device = player(i as i64, name);
                if i % 2 == 0 {
                    device.connection_state = Some("offline".into());
                    device.last_online = None;
                    device.activation_state = None;
                    device.player_version = Some("\\\"\n".into());
                }
                cached(device)
            })
            .collect();
        let platforms = [
            PlatformDevices { platform_id: "12", devices: &devices },
            PlatformDevices { platform_id: "Север \"2\"", devices: &devices },
        ];
        let mut text = Vec::new();
        render_devices(&mut text, &platforms, Duration::from_secs(60));

        let child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("skipped: promtool is not installed (CI installs it)");
                return;
            }
            Err(err) => panic!("cannot run promtool: {err}"),
        };
        child.stdin.take().unwrap().write_all(&text).unwrap();
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stdout.is_empty() && stderr.is_empty(),
            "promtool: {}\nstdout: {stdout}\nstderr: {stderr}",
            output.status
        );
        let series = text.iter().filter(|&&b| b == b'\n').count() - 8;
        assert_eq!(series, 2 * (4 * names.len() - names.len().div_ceil(2)));
    }
}
