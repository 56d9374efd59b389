//! Property tests: a Prometheus answer is outside input (Prometheus, a proxy
//! in front of it, or something else on its port), so no bytes at all, and
//! no damaged copy of a real answer, make the client's envelope handling
//! ([`PromClient::decode`]) or the decoder of its `data` panic; and series
//! of any labels and values come out exactly as they went in.

use std::sync::LazyLock;
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use reqwest::StatusCode;
use serde_json::json;

use super::{Answer, InstantAnswer, PromClient, RangeAnswer, Sample};

static CLIENT: LazyLock<PromClient> = LazyLock::new(|| {
    PromClient::new("http://127.0.0.1:9/prom", Duration::from_secs(2), None).unwrap()
});

/// Real answers: an instant vector with a native histogram and special
/// values, a scalar, a range vector, a string and an API error.
const ANSWERS: [&str; 5] = [
    r#"{"status":"success","data":{"resultType":"vector","result":[
        {"metric":{"__name__":"up","name":"\u0421\u043a\u043b\u0430\u0434 \"1\"\\"},"value":[1700000000.5,"NaN"]},
        {"metric":{"device_id":"7"},"value":[1700000000.5,"+Inf"]},
        {"metric":{},"histogram":[1700000000.5,{"count":"2","sum":"3","buckets":[[0,"0","1","2"]]}]}]},
        "warnings":["careful"],"infos":["x"]}"#,
    r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"-1e3"]}}"#,
    r#"{"status":"success","data":{"resultType":"matrix","result":[
        {"metric":{"device_id":"7"},"values":[[1700000000,"1"],[1700000030.123,"-Inf"]]},
        {"metric":{},"histograms":[[1700000000,{"count":"1"}]]}]}}"#,
    r#"{"status":"success","data":{"resultType":"string","result":[1700000000,"x"]}}"#,
    r#"{"status":"error","errorType":"bad_data","error":"1:4: parse error"}"#,
];

/// A byte that JSON gives a meaning to, or any byte at all.
fn json_byte() -> impl Strategy<Value = u8> {
    prop_oneof![prop::sample::select(b"[]{}:,\"\\0-.eEtnN+I ".to_vec()), any::<u8>()]
}

/// One edit of a body: a byte replaced, removed or inserted, or the body cut.
#[derive(Debug, Clone)]
enum Edit {
    Replace(Index, u8),
    Remove(Index),
    Insert(Index, u8),
    Truncate(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), json_byte()).prop_map(|(at, b)| Edit::Replace(at, b)),
        any::<Index>().prop_map(Edit::Remove),
        (any::<Index>(), json_byte()).prop_map(|(at, b)| Edit::Insert(at, b)),
        any::<Index>().prop_map(Edit::Truncate),
    ]
}

fn edited(body: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut bytes = body.to_vec();
    for edit in edits {
        let len = bytes.len();
        match *edit {
            Edit::Replace(at, b) if len > 0 => bytes[at.index(len)] = b,
            Edit::Remove(at) if len > 0 => drop(bytes.remove(at.index(len))),
            Edit::Insert(at, b) => bytes.insert(at.index(len + 1), b),
            Edit::Truncate(at) => bytes.truncate(at.index(len + 1)),
            _ => {}
        }
    }
    bytes
}

/// An HTTP answer: a status Prometheus or a proxy may send, a content type.
fn answer(status: u16, json: bool, body: Vec<u8>) -> Answer {
    Answer {
        status: StatusCode::from_u16(status).unwrap(),
        content_type: Some(if json { "application/json" } else { "text/html" }.into()),
        location: (status / 100 == 3).then(|| "https://u:p@sso.example/login?next=x".into()),
        body,
    }
}

fn status() -> impl Strategy<Value = u16> {
    prop::sample::select(vec![200, 204, 302, 400, 401, 422, 500, 502, 503])
}

/// Decodes `answer` as the client does, then its `data` both as an instant
/// and as a range answer: each step may fail, none may panic, every error
/// can be shown, and a walk that succeeds counts what it handed over.
fn decode_all(answer: Answer) {
    let client = &*CLIENT;
    match client.decode(&client.query_url, answer) {
        Ok((success, warnings)) => {
            drop(warnings);
            let range = RangeAnswer(success);
            let mut walked = 0;
            match range.for_each_series(|_, _| walked += 1) {
                Ok(count) => {
                    assert_eq!(count, walked);
                    assert_eq!(range.series().unwrap().len(), count);
                }
                Err(err) => assert!(!err.to_string().is_empty()),
            }
            let instant = InstantAnswer(range.0);
            let mut walked = 0;
            match instant.for_each_sample(|_, _| walked += 1) {
                Ok(count) => {
                    assert_eq!(count, walked);
                    assert_eq!(instant.samples().unwrap().len(), count);
                }
                Err(err) => assert!(!err.to_string().is_empty()),
            }
        }
        Err(err) => assert!(!err.to_string().is_empty() && !err.label().is_empty()),
    }
}

/// A sample value as Prometheus writes it.
fn value_text(value: f64) -> String {
    match value {
        v if v.is_nan() => "NaN".into(),
        f64::INFINITY => "+Inf".into(),
        f64::NEG_INFINITY => "-Inf".into(),
        v => v.to_string(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_bytes_are_decoded_or_refused(
        status in status(),
        json in any::<bool>(),
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        decode_all(answer(status, json, body));
    }

    #[test]
    fn edited_answers_are_decoded_or_refused(
        which in 0..ANSWERS.len(),
        status in status(),
        edits in prop::collection::vec(edit(), 1..8),
    ) {
        decode_all(answer(status, true, edited(ANSWERS[which].as_bytes(), &edits)));
    }

    #[test]
    fn any_envelope_around_any_data_is_decoded_or_refused(
        result_type in prop::sample::select(vec!["vector", "matrix", "scalar", "string", "x"]),
        result in prop::collection::vec(
            prop_oneof![
                Just(json!({"metric": {"a": "b"}, "value": [1, "1"]})),
                Just(json!({"metric": {}, "values": [[1, "1"], [1e300, "x"]]})),
                Just(json!({"histogram": [1, {}]})),
                Just(json!({"metric": {"a": 1}})),
                Just(json!([1, "NaN"])),
                Just(json!([f64::MAX, "1"])),
                Just(json!("1")),
                Just(json!(null)),
            ],
            0..4,
        ),
        scalar in any::<bool>(),
    ) {
        let result = if scalar { result.first().cloned().unwrap_or_default() } else { result.into() };
        let body = json!({"status": "success", "data": {"resultType": result_type, "result": result}});
        decode_all(answer(200, true, body.to_string().into_bytes()));
    }

    #[test]
    fn series_of_any_labels_and_values_come_out_as_they_went_in(
        series in prop::collection::vec(
            (prop::collection::btree_map(any::<String>(), any::<String>(), 0..4), any::<f64>()),
            0..6,
        ),
    ) {
        let result: Vec<_> = series
            .iter()
            .map(|(labels, value)| json!({"metric": labels, "value": [1700000000.5, value_text(*value)]}))
            .collect();
        let body = json!({"status": "success", "data": {"resultType": "vector", "result": result}});
        let client = &*CLIENT;
        let (success, _) = client.decode(&client.query_url, answer(200, true, body.to_string().into_bytes())).unwrap();
        let samples = InstantAnswer(success).samples().unwrap();
        prop_assert_eq!(samples.len(), series.len());
        for (Sample { labels, value }, (sent_labels, sent_value)) in samples.iter().zip(&series) {
            prop_assert_eq!(labels, sent_labels);
            prop_assert!(value.to_bits() == sent_value.to_bits() || (value.is_nan() && sent_value.is_nan()));
        }
    }
}
