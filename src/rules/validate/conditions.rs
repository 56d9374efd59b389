//! The checks of a job's condition (`metric` + `op` + `value`, `expr`,
//! `all`, `any`) and of guards, the file's and a job's; and, when the rules
//! scrape the exporters themselves (`[source]`), the refusal of what needs
//! PromQL, where it is written.

use std::ops::Range;

use toml::Spanned;

use crate::rules::checker::{not_a_label, Checker};
use crate::rules::condition::{Condition, Guard, Op, ScrapeQuery, Term};
use crate::rules::config::{RawGuard, RawJob, RawTerm};
use crate::rules::device::{is_label_name, is_metric_name, DeviceKeyLabels};

/// What a `[source]` rules file is told about PromQL it cannot evaluate.
const SCRAPE_HINT: &str = "[source] scrape answers only metric + op + value comparisons; read Prometheus with [prometheus] instead for PromQL";

/// Guards, `prefix` naming the job they belong to (empty for the file's).
/// With `scraping`, a guard must be a comparison a scrape can answer
/// (`metric op number`).
pub(super) fn guards_of(
    ck: &mut Checker<'_>,
    raw: &[Spanned<RawGuard>],
    device_key: &DeviceKeyLabels,
    prefix: &str,
    scraping: bool,
) -> Vec<Guard> {
    let mut guards = Vec::new();
    for guard in raw {
        let RawGuard { expr, on } = guard.get_ref();
        let expr = match expr {
            None => {
                ck.at(
                    guard.span(),
                    format!(
                        "{prefix}guard has no expr; write it like {{ expr = \"addreality_platform_up == 1\", on = [\"platform_id\"] }}"
                    ),
                );
                continue;
            }
            Some(expr) => match ck.non_empty(expr, &format!("{prefix}guard expr")) {
                Some(e) if scraping && ScrapeQuery::parse(&e).is_none() => {
                    ck.at(
                        expr.span(),
                        format!(
                            "{prefix}guard {:?} needs PromQL; write it as a comparison like \"addreality_platform_up == 1\": {SCRAPE_HINT}",
                            e.trim()
                        ),
                    );
                    continue;
                }
                Some(e) => e.trim().to_string(),
                None => continue,
            },
        };
        let on = match on {
            None => device_key.labels().to_vec(),
            Some(on) => {
                let mut labels: Vec<String> = Vec::new();
                for label in on.get_ref() {
                    if !is_label_name(label.get_ref()) {
                        ck.at(
                            label.span(),
                            format!("{prefix}guard on: {}", not_a_label(label.get_ref())),
                        );
                    } else if !labels.contains(label.get_ref()) {
                        labels.push(label.get_ref().clone());
                    }
                }
                labels
            }
        };
        guards.push(Guard { expr, on });
    }
    guards
}

/// A job's one condition, whichever way it is written.
pub(super) fn job_condition(
    ck: &mut Checker<'_>,
    label: &str,
    job_span: Range<usize>,
    r: &RawJob,
) -> Option<Condition> {
    let compare_span = r
        .metric
        .as_ref()
        .map(Spanned::span)
        .or_else(|| r.op.as_ref().map(Spanned::span))
        .or_else(|| r.value.as_ref().map(Spanned::span));
    let mut given: Vec<(&str, Range<usize>)> = Vec::new();
    if let Some(span) = compare_span {
        given.push((if r.metric.is_some() { "metric" } else { "op/value" }, span));
    }
    if let Some(e) = &r.expr {
        given.push(("expr", e.span()));
    }
    if let Some(a) = &r.all {
        given.push(("all", a.span()));
    }
    if let Some(a) = &r.any {
        given.push(("any", a.span()));
    }
    given.sort_by_key(|(_, span)| span.start);
    match given.as_slice() {
        [] => {
            ck.at(
                job_span,
                format!("{label} has no condition; add metric + op + value, expr, all = [...] or any = [...]"),
            );
            None
        }
        [_] => {
            if let Some(all) = &r.all {
                terms(ck, label, "all", all).map(Condition::All)
            } else if let Some(any) = &r.any {
                terms(ck, label, "any", any).map(Condition::Any)
            } else {
                term(ck, label, job_span, &r.metric, &r.op, &r.value, &r.expr)
                    .map(Condition::Single)
            }
        }
        [(first, _), (second, span), ..] => {
            let (first, second) = (first.to_string(), second.to_string());
            if first == "op/value" || second == "op/value" {
                // metric-less op/value next to expr: say what op/value need.
                term(ck, label, job_span, &r.metric, &r.op, &r.value, &r.expr);
                return None;
            }
            ck.at(
                span.clone(),
                format!(
                    "{label}: {first} and {second} are both given; a job has one condition (metric + op + value, expr, all or any)"
                ),
            );
            None
        }
    }
}

/// Refuses, when the rules scrape (`[source]`), every `expr` of a job's
/// condition, at the place it is written: a scrape has no PromQL to
/// evaluate it with. Returns whether there was none.
pub(super) fn scrapable(ck: &mut Checker<'_>, label: &str, r: &RawJob) -> bool {
    let mut exprs: Vec<(String, &Spanned<String>)> = Vec::new();
    if let Some(expr) = &r.expr {
        exprs.push((label.to_string(), expr));
    }
    for (which, list) in [("all", &r.all), ("any", &r.any)] {
        for (i, t) in list.iter().flat_map(|l| l.get_ref().iter().enumerate()) {
            if let Some(expr) = &t.get_ref().expr {
                exprs.push((format!("{label}: {which}[{}]", i + 1), expr));
            }
        }
    }
    for (label, expr) in &exprs {
        ck.at(
            expr.span(),
            format!(
                "{label}: expr {:?} is PromQL, which needs [prometheus]; {SCRAPE_HINT}",
                expr.get_ref().trim()
            ),
        );
    }
    exprs.is_empty()
}

fn terms(
    ck: &mut Checker<'_>,
    label: &str,
    which: &str,
    raw: &Spanned<Vec<Spanned<RawTerm>>>,
) -> Option<Vec<Term>> {
    if raw.get_ref().is_empty() {
        ck.at(raw.span(), format!("{label}: {which} is empty; list at least one condition"));
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (i, t) in raw.get_ref().iter().enumerate() {
        let prefix = format!("{label}: {which}[{}]", i + 1);
        let RawTerm { metric, op, value, expr } = t.get_ref();
        match term(ck, &prefix, t.span(), metric, op, value, expr) {
            Some(term) => out.push(term),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn term(
    ck: &mut Checker<'_>,
    label: &str,
    span: Range<usize>,
    metric: &Option<Spanned<String>>,
    op: &Option<Spanned<String>>,
    value: &Option<Spanned<f64>>,
    expr: &Option<Spanned<String>>,
) -> Option<Term> {
    let ops = "==, !=, >, >=, <, <=";
    match (metric, expr) {
        (Some(_), Some(expr)) => {
            ck.at(
                expr.span(),
                format!("{label}: metric and expr are both given; keep one (combine several with all = [...] or any = [...])"),
            );
            None
        }
        (None, None) => {
            match op.as_ref().map(Spanned::span).or(value.as_ref().map(Spanned::span)) {
                Some(extra) => ck.at(
                    extra,
                    format!("{label}: op and value need a metric, like metric = \"addreality_device_online\""),
                ),
                None => ck.at(
                    span,
                    format!("{label} has no condition; give metric + op + value, or expr"),
                ),
            }
            None
        }
        (None, Some(expr)) => {
            if let Some(extra) =
                op.as_ref().map(Spanned::span).or(value.as_ref().map(Spanned::span))
            {
                ck.at(
                    extra,
                    format!("{label}: op and value only go with metric; an expr carries its own comparison"),
                );
                return None;
            }
            ck.non_empty(expr, &format!("{label}: expr")).map(|e| Term::Expr(e.trim().to_string()))
        }
        (Some(metric), None) => {
            let mut ok = true;
            if !is_metric_name(metric.get_ref()) {
                ck.at(
                    metric.span(),
                    format!(
                        "{label}: {:?} is not a metric name; for PromQL use expr = \"…\"",
                        metric.get_ref()
                    ),
                );
                ok = false;
            }
            let (Some(op), Some(value)) = (op, value) else {
                ck.at(
                    metric.span(),
                    format!("{label}: metric needs op and value, like op = \"==\" and value = 0"),
                );
                return None;
            };
            let parsed = Op::parse(op.get_ref().trim());
            if parsed.is_none() {
                ck.at(
                    op.span(),
                    format!("{label}: unknown operator {:?}; use one of {ops}", op.get_ref()),
                );
                ok = false;
            }
            if value.get_ref().is_nan() {
                ck.at(value.span(), format!("{label}: value must be a number, not nan"));
                ok = false;
            }
            if !ok {
                return None;
            }
            Some(Term::Compare {
                metric: metric.get_ref().clone(),
                op: parsed?,
                value: *value.get_ref(),
            })
        }
    }
}
