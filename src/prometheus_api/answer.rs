//! Decodes the `data` of a successful Prometheus answer, once the client has
//! made sure that the answer is one.
//!
//! Kept apart from the client because it is the part that grows with the
//! fleet: an instant answer describes every device, so
//! [`InstantAnswer::for_each_sample`] walks the series straight from the
//! answer's bytes with a serde visitor that lends each series' labels
//! ([`Label`]) instead of building a map per series. Nothing here talks HTTP
//! or sees a credential: it is fed bytes and tested with bytes.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use reqwest::Url;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::PromError;

/// One series of an instant query's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series' labels, including `__name__` when the expression keeps it.
    pub labels: BTreeMap<String, String>,
    /// The value; Prometheus's `NaN`, `+Inf` and `-Inf` become the matching `f64`.
    pub value: f64,
}

/// One point of a range query's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// When Prometheus evaluated the expression.
    pub time: jiff::Timestamp,
    /// The value at that time.
    pub value: f64,
}

/// One series of a range query's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The series' labels.
    pub labels: BTreeMap<String, String>,
    /// The points, oldest first, only at steps where the series had a value.
    pub points: Vec<Point>,
}

/// A successful API answer: the whole body, and where its `data` lies in it.
/// The client builds it; this module reads `data` out of it.
pub(super) struct Success {
    /// The endpoint that answered, for error messages.
    pub(super) url: Url,
    /// The answer's bytes, kept whole so that labels can be borrowed from them.
    pub(super) body: Vec<u8>,
    /// Where `data` lies in `body`.
    pub(super) data: std::ops::Range<usize>,
}

impl Success {
    /// `data` decoded as `T`.
    fn data<'a, T: Deserialize<'a>>(&'a self) -> Result<T, PromError> {
        serde_json::from_slice(&self.body[self.data.clone()]).map_err(|err| self.bad(err))
    }

    fn bad(&self, err: serde_json::Error) -> PromError {
        PromError::BadResponse { url: self.url.to_string(), reason: format!("\"data\": {err}") }
    }
}

/// One label of a series in an answer, as (name, value). The text is
/// borrowed from the answer unless JSON escapes had to be undone.
pub type Label<'a> = (Cow<'a, str>, Cow<'a, str>);

/// The answer to an instant query, as Prometheus sent it (a successful API
/// answer; its series not yet decoded).
///
/// [`InstantAnswer::for_each_sample`] decodes the series one at a time
/// straight from the answer's bytes, so walking an answer of ten thousand
/// series costs no more memory than the answer itself.
pub struct InstantAnswer(pub(super) Success);

impl InstantAnswer {
    /// The answer's size in bytes, as received (decompressed).
    pub fn size(&self) -> usize {
        self.0.body.len()
    }

    /// Calls `each` with the labels and value of every series, in
    /// Prometheus's order, and returns how many there were. A scalar is one
    /// series without labels.
    ///
    /// A series that cannot be used (a native histogram, a value that is not
    /// a number, no value at all), a range vector, a string or a malformed
    /// `data` is an error; `each` may have been called for the series
    /// before it, which a caller keeping them must then drop.
    pub(crate) fn for_each_sample(
        &self,
        mut each: impl FnMut(&[Label<'_>], f64),
    ) -> Result<usize, PromError> {
        let answer = &self.0;
        let data: InstantData<'_> = answer.data()?;
        let not_instant =
            |found| PromError::WrongResultType { expected: "an instant vector", found };
        match &*data.result_type.0 {
            "vector" => {
                let mut walk = Walk {
                    url: &answer.url,
                    each: &mut each,
                    labels: Vec::new(),
                    count: 0,
                    problem: None,
                };
                let mut json = serde_json::Deserializer::from_str(data.result.get());
                match serde::Deserializer::deserialize_seq(&mut json, &mut walk) {
                    Ok(()) => Ok(walk.count),
                    Err(err) => Err(walk.problem.take().unwrap_or_else(|| answer.bad(err))),
                }
            }
            "scalar" => {
                let (_, text): (IgnoredAny, Text<'_>) =
                    serde_json::from_str(data.result.get()).map_err(|err| answer.bad(err))?;
                each(&[], parse_value(&text.0, &answer.url)?);
                Ok(1)
            }
            "matrix" => Err(not_instant("a range vector")),
            "string" => Err(not_instant("a string")),
            other => Err(PromError::BadResponse {
                url: answer.url.to_string(),
                reason: format!("\"data\": unknown resultType {other:?}"),
            }),
        }
    }

    /// Every series as a [`Sample`] with its own label map.
    pub(crate) fn samples(&self) -> Result<Vec<Sample>, PromError> {
        let mut samples = Vec::new();
        self.for_each_sample(|labels, value| {
            let labels = labels.iter().map(|(name, text)| (name.to_string(), text.to_string()));
            samples.push(Sample { labels: labels.collect(), value });
        })?;
        Ok(samples)
    }
}

/// `data` of an instant query's answer, its `result` left as text until the
/// type is known.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InstantData<'a> {
    #[serde(borrow)]
    result_type: Text<'a>,
    #[serde(borrow)]
    result: &'a RawValue,
}

/// A JSON string, borrowed from the answer when it has no escapes.
/// (serde's own `Cow<str>` always copies.)
struct Text<'de>(Cow<'de, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor<'a>(std::marker::PhantomData<&'a str>);
        impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(text)))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(TextVisitor(std::marker::PhantomData))
    }
}

/// Walks an instant vector's `result`, handing each series to `each` as
/// soon as its object ends; one label list is reused for all of them.
struct Walk<'de, 'w, F> {
    url: &'w Url,
    each: &'w mut F,
    labels: Vec<Label<'de>>,
    count: usize,
    /// Why the walk stopped, when it is more than a JSON shape error.
    problem: Option<PromError>,
}

impl<F> Walk<'_, '_, F> {
    /// Stops the walk for `problem`.
    fn stop<E: de::Error>(&mut self, problem: PromError) -> E {
        let error = E::custom(&problem);
        self.problem = Some(problem);
        error
    }
}

impl<'de, F: FnMut(&[Label<'_>], f64)> Visitor<'de> for &mut Walk<'de, '_, F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of series")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(SeriesSeed(&mut *self))?.is_some() {}
        Ok(())
    }
}

/// One series object: `metric`, and `value` or `histogram`, in any order.
struct SeriesSeed<'s, 'de, 'w, F>(&'s mut Walk<'de, 'w, F>);

impl<'de, F: FnMut(&[Label<'_>], f64)> DeserializeSeed<'de> for SeriesSeed<'_, 'de, '_, F> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, F: FnMut(&[Label<'_>], f64)> Visitor<'de> for SeriesSeed<'_, 'de, '_, F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a series")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let walk = self.0;
        walk.labels.clear();
        let (mut value, mut histogram) = (None, false);
        while let Some(key) = map.next_key::<Text<'de>>()? {
            match &*key.0 {
                "metric" => map.next_value_seed(LabelsSeed(&mut walk.labels))?,
                "value" => value = Some(map.next_value::<(IgnoredAny, Text<'de>)>()?.1),
                "histogram" => {
                    map.next_value::<IgnoredAny>()?;
                    histogram = true;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let value = match (value, histogram) {
            (Some(text), _) => parse_value(&text.0, walk.url).map_err(|e| walk.stop(e))?,
            (None, true) => {
                return Err(walk.stop(PromError::WrongResultType {
                    expected: "a number per series",
                    found: "a native histogram",
                }))
            }
            (None, false) => {
                let reason = "a series has neither \"value\" nor \"histogram\"".into();
                return Err(walk.stop(PromError::BadResponse { url: walk.url.to_string(), reason }));
            }
        };
        (walk.each)(&walk.labels, value);
        walk.count += 1;
        Ok(())
    }
}

/// A series' `metric` object, appended to a label list.
struct LabelsSeed<'l, 'de>(&'l mut Vec<Label<'de>>);

impl<'de> DeserializeSeed<'de> for LabelsSeed<'_, 'de> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for LabelsSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of label names to values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some((name, text)) = map.next_entry::<Text<'de>, Text<'de>>()? {
            self.0.push((name.0, text.0));
        }
        Ok(())
    }
}

/// The answer to a range query, as Prometheus sent it (a successful API
/// answer; its series not yet decoded).
///
/// [`RangeAnswer::for_each_series`] decodes the series one at a time
/// straight from the answer's bytes into one reused list of points, so a
/// chunk of history costs the answer's bytes and one series' points, not a
/// string per point and a label map per series on top.
pub struct RangeAnswer(pub(super) Success);

impl RangeAnswer {
    /// Calls `each` with the labels and points (oldest first, only at steps
    /// where the series has a value) of every series, in Prometheus's
    /// order, and returns how many there were.
    ///
    /// A series of native histograms, a value that is not a number, an
    /// answer that is not a range vector or a malformed `data` is an error;
    /// `each` may have been called for the series before it, which a caller
    /// keeping them must then drop.
    pub(crate) fn for_each_series(
        &self,
        mut each: impl FnMut(&[Label<'_>], &[Point]),
    ) -> Result<usize, PromError> {
        let answer = &self.0;
        let data: InstantData<'_> = answer.data()?;
        if data.result_type.0 != "matrix" {
            return Err(PromError::BadResponse {
                url: answer.url.to_string(),
                reason: "a range query answered something other than a range vector".into(),
            });
        }
        let mut walk = RangeWalk {
            url: &answer.url,
            each: &mut each,
            labels: Vec::new(),
            points: Vec::new(),
            count: 0,
            problem: None,
        };
        let mut json = serde_json::Deserializer::from_str(data.result.get());
        match serde::Deserializer::deserialize_seq(&mut json, &mut walk) {
            Ok(()) => Ok(walk.count),
            Err(err) => Err(walk.problem.take().unwrap_or_else(|| answer.bad(err))),
        }
    }

    /// Every series as a [`Series`] with its own label map.
    pub(crate) fn series(&self) -> Result<Vec<Series>, PromError> {
        let mut all = Vec::new();
        self.for_each_series(|labels, points| {
            let labels = labels.iter().map(|(name, text)| (name.to_string(), text.to_string()));
            all.push(Series { labels: labels.collect(), points: points.to_vec() });
        })?;
        Ok(all)
    }
}

/// Walks a range vector's `result`, handing each series to `each` as soon
/// as its object ends; one label list and one point list serve them all.
struct RangeWalk<'de, 'w, F> {
    url: &'w Url,
    each: &'w mut F,
    labels: Vec<Label<'de>>,
    points: Vec<Point>,
    count: usize,
    /// Why the walk stopped, when it is more than a JSON shape error.
    problem: Option<PromError>,
}

impl<F> RangeWalk<'_, '_, F> {
    /// Stops the walk for `problem`.
    fn stop<E: de::Error>(&mut self, problem: PromError) -> E {
        let error = E::custom(&problem);
        self.problem = Some(problem);
        error
    }
}

impl<'de, F: FnMut(&[Label<'_>], &[Point])> Visitor<'de> for &mut RangeWalk<'de, '_, F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of series")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(RangeSeriesSeed(&mut *self))?.is_some() {}
        Ok(())
    }
}

/// One series object: `metric`, and `values` or `histograms`, in any order.
struct RangeSeriesSeed<'s, 'de, 'w, F>(&'s mut RangeWalk<'de, 'w, F>);

impl<'de, F: FnMut(&[Label<'_>], &[Point])> DeserializeSeed<'de>
    for RangeSeriesSeed<'_, 'de, '_, F>
{
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, F: FnMut(&[Label<'_>], &[Point])> Visitor<'de> for RangeSeriesSeed<'_, 'de, '_, F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a series")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let walk = self.0;
        walk.labels.clear();
        walk.points.clear();
        let mut histograms = false;
        while let Some(key) = map.next_key::<Text<'de>>()? {
            match &*key.0 {
                "metric" => map.next_value_seed(LabelsSeed(&mut walk.labels))?,
                "values" => map.next_value_seed(PointsSeed(&mut *walk))?,
                "histograms" => {
                    map.next_value::<IgnoredAny>()?;
                    histograms = true;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if histograms {
            return Err(walk.stop(PromError::WrongResultType {
                expected: "numbers per series",
                found: "a native histogram",
            }));
        }
        (walk.each)(&walk.labels, &walk.points);
        walk.count += 1;
        Ok(())
    }
}

/// A series' `values`: `[[time, "value"], …]`, appended to the walk's points.
struct PointsSeed<'s, 'de, 'w, F>(&'s mut RangeWalk<'de, 'w, F>);

impl<'de, F> DeserializeSeed<'de> for PointsSeed<'_, 'de, '_, F> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, F> Visitor<'de> for PointsSeed<'_, 'de, '_, F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of [time, \"value\"] pairs")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let walk = self.0;
        while let Some((time, text)) = seq.next_element::<(f64, Text<'de>)>()? {
            let point = parse_time(time, walk.url)
                .and_then(|time| Ok(Point { time, value: parse_value(&text.0, walk.url)? }));
            match point {
                Ok(point) => walk.points.push(point),
                Err(problem) => return Err(walk.stop(problem)),
            }
        }
        Ok(())
    }
}

/// Prometheus sends sample values as strings so that `NaN` and infinities survive JSON.
fn parse_value(text: &str, url: &Url) -> Result<f64, PromError> {
    match text {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => text.parse().map_err(|_| PromError::BadResponse {
            url: url.to_string(),
            reason: format!("sample value {text:?} is not a number"),
        }),
    }
}

/// Prometheus sends times as Unix seconds with millisecond precision.
fn parse_time(seconds: f64, url: &Url) -> Result<jiff::Timestamp, PromError> {
    jiff::Timestamp::from_millisecond((seconds * 1000.0).round() as i64).map_err(|_| {
        PromError::BadResponse {
            url: url.to_string(),
            reason: format!("sample time {seconds} is out of range"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An instant query's answer whose `data` is `data`, inside the envelope
    /// Prometheus wraps it in, as the client hands it over.
    fn answer(data: &str) -> InstantAnswer {
        let body = format!(r#"{{"status":"success","data":{data},"warnings":["careful"]}}"#);
        let start = body.find(data).unwrap();
        InstantAnswer(Success {
            url: Url::parse("http://127.0.0.1:9/prom/api/v1/query").unwrap(),
            body: body.into_bytes(),
            data: start..start + data.len(),
        })
    }

    #[test]
    fn vectors_decode_with_special_values_and_unicode_labels() {
        let data = r#"{"resultType":"vector","result":[
            {"metric":{"name":"Арзамас \"1\"\\\n"},"value":[1700000000.5,"NaN"]},
            {"metric":{"a":"b"},"value":[1700000000.5,"+Inf"]},
            {"metric":{},"value":[1700000000.5,"-Inf"]},
            {"metric":{},"value":[1700000000.5,"1e3"]}]}"#;
        let samples = answer(data).samples().unwrap();
        assert_eq!(samples[0].labels["name"], "Арзамас \"1\"\\\n");
        assert!(samples[0].value.is_nan());
        assert_eq!(samples[1].value, f64::INFINITY);
        assert_eq!(samples[2].value, f64::NEG_INFINITY);
        assert_eq!(samples[3].value, 1000.0);
    }

    #[test]
    fn series_are_walked_in_any_key_order_borrowing_what_has_no_escapes() {
        let data = r#"{"result":[
            {"value":[1700000000,"1"],"metric":{"device_id":"7","name":"Lobby \"A\""}},
            {"extra":{"ignored":[1]},"metric":{},"value":[1700000000,"0"]}],
            "resultType":"vector"}"#;
        let mut seen = Vec::new();
        let count = answer(data)
            .for_each_sample(|labels, value| {
                let shown: Vec<String> = labels
                    .iter()
                    .map(|(name, text)| {
                        let borrowed = matches!(text, Cow::Borrowed(_));
                        format!("{name}={text}{}", if borrowed { "" } else { " (copied)" })
                    })
                    .collect();
                seen.push((shown, value));
            })
            .unwrap();
        assert_eq!(count, 2);
        assert_eq!(
            seen,
            [
                (vec!["device_id=7".to_string(), "name=Lobby \"A\" (copied)".to_string()], 1.0),
                (vec![], 0.0)
            ]
        );
    }

    #[test]
    fn unusable_answers_are_errors_whatever_came_before() {
        let vector = |result: &str| format!(r#"{{"resultType":"vector","result":[{result}]}}"#);
        let good = r#"{"metric":{"device_id":"1"},"value":[1,"1"]}"#;
        let cases = [
            (
                vector(&format!(r#"{good},{{"metric":{{}},"histogram":[1,{{"count":"2"}}]}}"#)),
                "yields a native histogram where a number per series is needed",
            ),
            (
                vector(&format!(r#"{good},{{"metric":{{}},"value":[1,"one"]}}"#)),
                "sample value \"one\" is not a number",
            ),
            (
                vector(&format!(r#"{good},{{"metric":{{}}}}"#)),
                "a series has neither \"value\" nor \"histogram\"",
            ),
            (
                vector(r#"{"metric":["device_id"],"value":[1,"1"]}"#),
                "\"data\": invalid type: sequence, expected a map of label names to values",
            ),
            (r#"{"resultType":"matrix","result":[]}"#.to_string(), "a range vector"),
            (
                r#"{"resultType":"histogram","result":[]}"#.to_string(),
                "\"data\": unknown resultType \"histogram\"",
            ),
            (r#"{"resultType":"vector"}"#.to_string(), "\"data\": missing field `result`"),
        ];
        for (data, expected) in cases {
            let err = answer(&data).samples().unwrap_err();
            assert!(err.to_string().contains(expected), "{data}\n→ {err}");
        }
        let scalar = r#"{"resultType":"scalar","result":[1,"+Inf"]}"#;
        let samples = answer(scalar).samples().unwrap();
        assert_eq!(samples, [Sample { labels: BTreeMap::new(), value: f64::INFINITY }]);
    }

    #[test]
    fn range_answers_are_walked_series_by_series_in_any_key_order() {
        let data = r#"{"result":[
            {"values":[[1700000000,"1"],[1700000030.5,"NaN"]],"metric":{"device_id":"7","name":"A\"b"}},
            {"metric":{},"values":[]},
            {"metric":{"device_id":"8"},"extra":1,"values":[[1700000060,"-Inf"]]}
        ],"resultType":"matrix"}"#;
        let range = RangeAnswer(answer(data).0);
        let mut seen = Vec::new();
        let count = range
            .for_each_series(|labels, points| {
                let labels: Vec<String> = labels.iter().map(|(n, v)| format!("{n}={v}")).collect();
                let points: Vec<(i64, String)> =
                    points.iter().map(|p| (p.time.as_millisecond(), p.value.to_string())).collect();
                seen.push((labels.join(","), points));
            })
            .unwrap();
        assert_eq!(count, 3);
        assert_eq!(
            seen,
            [
                (
                    "device_id=7,name=A\"b".to_string(),
                    vec![(1_700_000_000_000, "1".to_string()), (1_700_000_030_500, "NaN".into())]
                ),
                (String::new(), vec![]),
                ("device_id=8".to_string(), vec![(1_700_000_060_000, "-inf".to_string())]),
            ]
        );
        let series = range.series().unwrap();
        assert_eq!(series[0].labels["name"], "A\"b");
        assert_eq!(series[2].points[0].value, f64::NEG_INFINITY);
    }

    #[test]
    fn unusable_range_answers_are_errors() {
        let range = |data: &str| RangeAnswer(answer(data).0).series().unwrap_err().to_string();
        assert_eq!(
            range(r#"{"resultType":"vector","result":[]}"#),
            "Prometheus at http://127.0.0.1:9/prom/api/v1/query sent an answer that is not a valid \
             Prometheus API response: a range query answered something other than a range vector; \
             check that the URL points at Prometheus"
        );
        let histograms = r#"{"resultType":"matrix","result":[{"metric":{},"histograms":[]}]}"#;
        assert!(range(histograms).contains("a native histogram"), "{}", range(histograms));
        let text = r#"{"resultType":"matrix","result":[{"metric":{},"values":[[1,"one"]]}]}"#;
        assert!(range(text).contains("sample value \"one\" is not a number"), "{}", range(text));
        let cut = r#"{"resultType":"matrix","result":[{"metric":{},"values":[[1]]}]}"#;
        assert!(range(cut).contains("\"data\": "), "{}", range(cut));
    }

    #[test]
    fn values_and_times_parse() {
        let url = Url::parse("http://p/api/v1/query").unwrap();
        assert!(parse_value("NaN", &url).unwrap().is_nan());
        assert_eq!(parse_value("-0.5", &url).unwrap(), -0.5);
        let err = parse_value("one", &url).unwrap_err().to_string();
        assert!(
            err.contains("http://p/api/v1/query sent an answer")
                && err.contains("\"one\" is not a number"),
            "{err}"
        );
        assert_eq!(parse_time(1700000000.123, &url).unwrap().as_millisecond(), 1_700_000_000_123);
    }
}
