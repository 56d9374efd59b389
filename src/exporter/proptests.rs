//! Property tests: device names, versions and time zones come from the
//! AddReality account, where anyone who can rename a player writes them.
//! Whatever they hold (quotes, backslashes, line breaks, Cyrillic, control
//! characters), each rendered series stays one line, and its label values,
//! read back by the rules of the Prometheus text format, are the originals.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use super::cache::CachedDevice;
use super::render::{render_devices, PlatformDevices};
use crate::addreality::model::Device;

/// Text rich in what the format must escape, or any text at all.
fn label_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\"\\\\\n\r\t\0 a-zЛесная{}=,#]{0,16}",
        "(\\\\n|\\\\\"|\\\\\\\\|\")*",
    ]
}

/// One series line, `family{name="value",…} number`, read by the text
/// format's rules: a label value ends at an unescaped `"`, and inside it
/// only `\\`, `\"` and `\n` are escapes. `None` when the line breaks them.
fn read_series(line: &str) -> Option<(String, BTreeMap<String, String>)> {
    let (family, mut rest) = line.split_once('{')?;
    let mut labels = BTreeMap::new();
    loop {
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (at, '"') => break at,
                (_, '\\') => match chars.next()?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    _ => return None,
                },
                (_, c) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return None;
        }
        rest = &after[end + 1..];
        if let Some(after_comma) = rest.strip_prefix(',') {
            rest = after_comma;
        } else {
            let number = rest.strip_prefix("} ")?;
            return (!number.is_empty() && !number.contains(' '))
                .then(|| (family.to_string(), labels));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn label_values_read_back_as_they_were(
        platform_id in label_text(),
        id in any::<i64>(),
        name in label_text(),
        player_version in label_text(),
        time_zone in label_text(),
    ) {
        let device = Device {
            player_version: Some(player_version.clone()),
            time_zone: Some(time_zone.clone()),
            ..Device::online_for_tests(id, &name)
        };
        let devices = [CachedDevice { device, first_seen: 0.0, last_seen: 0.0 }];
        let mut out = Vec::new();
        render_devices(
            &mut out,
            &[PlatformDevices { platform_id: &platform_id, devices: &devices }],
            Duration::from_secs(60),
        );
        let text = String::from_utf8(out).unwrap();
        prop_assert!(text.ends_with('\n'));
        let series: Vec<&str> =
            text.trim_end_matches('\n').split('\n').filter(|l| !l.starts_with('#')).collect();
        prop_assert_eq!(series.len(), 4, "{}", text);
        let id = id.to_string();
        for line in series {
            let read = read_series(line);
            prop_assert!(read.is_some(), "{:?}", line);
            let (family, labels) = read.unwrap();
            prop_assert_eq!(&labels["platform_id"], &platform_id);
            prop_assert_eq!(&labels["device_id"], &id);
            prop_assert_eq!(&labels["name"], &name);
            if family == super::render::DEVICE_INFO {
                prop_assert_eq!(&labels["player_version"], &player_version);
                prop_assert_eq!(&labels["time_zone"], &time_zone);
                prop_assert_eq!(labels.len(), 6);
            } else {
                prop_assert_eq!(labels.len(), 3);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// jobctl's scrape source reads exporter pages with its own parser:
    /// every page the renderer writes parses, to exactly the series the
    /// strict line reader above finds, with the same values.
    #[test]
    fn the_exposition_parser_reads_every_rendered_page(
        platforms in proptest::collection::vec(
            (label_text(), proptest::collection::vec((any::<i64>(), label_text(), label_text()), 1..4)),
            1..3,
        ),
        poll in 1u64..100_000,
    ) {
        let cached: Vec<(String, Vec<CachedDevice>)> = platforms
            .into_iter()
            .map(|(platform_id, devices)| {
                let devices = devices
                    .into_iter()
                    .map(|(id, name, version)| {
                        let device = Device {
                            player_version: Some(version),
                            ..Device::online_for_tests(id, &name)
                        };
                        CachedDevice { device, first_seen: 0.0, last_seen: 0.0 }
                    })
                    .collect();
                (platform_id, devices)
            })
            .collect();
        let platforms: Vec<PlatformDevices<'_>> = cached
            .iter()
            .map(|(platform_id, devices)| PlatformDevices { platform_id, devices })
            .collect();
        let mut out = Vec::new();
        render_devices(&mut out, &platforms, Duration::from_millis(poll));
        let text = String::from_utf8(out).unwrap();
        let expected: Vec<(String, BTreeMap<String, String>, String)> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|line| {
                let (family, labels) = read_series(line).expect("a rendered line reads");
                let value = line.rsplit(' ').next().unwrap().to_string();
                (family, labels, value)
            })
            .collect();
        let mut parsed = Vec::new();
        let count = crate::prometheus_api::exposition::parse(&text, |sample| {
            let labels: BTreeMap<String, String> =
                sample.labels.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
            parsed.push((sample.name.to_string(), labels, sample.value, sample.timestamp));
        });
        prop_assert_eq!(count, Ok(expected.len()), "{}", text);
        for ((family, labels, value), (name, read, number, stamp)) in expected.iter().zip(&parsed) {
            prop_assert_eq!(family, name);
            prop_assert_eq!(labels, read);
            prop_assert_eq!(value.parse::<f64>().unwrap(), *number);
            prop_assert_eq!(*stamp, None);
        }
    }
}

/// The parser never panics, whatever the page: an error names a line of it.
#[test]
fn the_exposition_parser_never_panics() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let page =
        "(m|m_total|#|# HELP|# TYPE|\\{|\\}|=|\"|,|\\\\|\\\\n| |\t|\n|1|NaN|[+-]Inf|a|é|Л|0x1|e5)*";
    runner
        .run(&page, |page| {
            let lines = page.split('\n').count();
            if let Err(err) = crate::prometheus_api::exposition::parse(&page, |_| {}) {
                prop_assert!(err.line >= 1 && err.line <= lines, "{:?} for {:?}", err, page);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn the_reader_refuses_what_the_format_does() {
    assert_eq!(read_series(r#"f{a="x\"} 1"#), None);
    assert_eq!(read_series(r#"f{a="x\t"} 1"#), None);
    assert_eq!(read_series(r#"f{a="1",a="2"} 1"#), None);
    let (family, labels) = read_series(r#"f{a="\\\"\n",b=""} 1"#).unwrap();
    assert_eq!(family, "f");
    assert_eq!(labels, [("a".into(), "\\\"\n".into()), ("b".into(), String::new())].into());
}
