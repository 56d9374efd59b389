//! PromQL syntax judged here, without asking an engine.
//!
//! `jobctl check` has Prometheus's own parser judge each query through
//! `/api/v1/format_query`. Where that is not possible, it asks this module
//! instead: offline, when the engine does not answer, and when the engine
//! has no `format_query` (VictoriaMetrics, Thanos, Prometheus before 2.38).
//! The parser is the `promql-parser` crate, GreptimeDB's port of
//! Prometheus's grammar and function table, so its verdicts and messages
//! follow Prometheus's.
//!
//! jobctl's rules are PromQL, whichever engine answers them: a MetricsQL
//! extension (`rate(x)` without a range, `default`, `WITH`) is refused here
//! even where VictoriaMetrics would evaluate it, so that `check --offline`
//! (which systemd runs before the daemon starts) and `check` against the
//! engine agree.

/// Whether `expr` parses as PromQL; the parser's message when it does not
/// (`unclosed left parenthesis`, `unknown function with name 'foo'`).
pub fn check_syntax(expr: &str) -> Result<(), String> {
    // A parser bug on some odd input must not take `check` down with it:
    // a panic is reported as a refusal.
    let parsed = std::panic::catch_unwind(|| promql_parser::parser::parse(expr));
    match parsed {
        Ok(Ok(_)) => Ok(()),
        // The parser's message when no rule matched, which says nothing more.
        Ok(Err(message)) if message == "invalid promql query" => {
            Err("it does not parse".to_string())
        }
        Ok(Err(message)) => Err(message),
        Err(_) => Err("the PromQL parser failed on it".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promql_passes_and_mistakes_are_named() {
        for good in [
            "addreality_device_online{platform_id=\"12\"} == 0",
            "time() - addreality_device_last_online_timestamp_seconds > 300",
            "sum by (platform_id) (rate(up[5m])) > 0 and on(platform_id) addreality_platform_up == 1",
            "last_over_time(x[5m:30s] offset 1m)",
        ] {
            assert_eq!(check_syntax(good), Ok(()), "{good}");
        }
        let refused = |expr: &str| check_syntax(expr).unwrap_err();
        assert_eq!(refused("sum(rate(x[5m])"), "unclosed left parenthesis");
        assert_eq!(refused("up{job=\"a\""), "unexpected end of input inside braces");
        assert_eq!(refused("foo(x)"), "unknown function with name 'foo'");
        assert_eq!(refused("1 +"), "it does not parse");
        // MetricsQL, which VictoriaMetrics evaluates: not PromQL.
        assert_eq!(
            refused("rate(x)"),
            "expected type matrix in call to function 'rate', got vector"
        );
        assert_eq!(refused("x default 0"), "it does not parse");
    }
}
