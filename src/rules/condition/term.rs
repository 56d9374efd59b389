//! What a condition is made of: comparisons and expressions ([`Term`]),
//! combined by `all`/`any` ([`Condition`]), the [`Guard`]s that decide
//! whether the data is trusted, and the three-valued [`Verdict`] they come
//! to. The semantics are in [`super`]'s notes.

use std::fmt;

use crate::rules::device::LabelMatchers;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
}

impl Op {
    /// Every operator, as written.
    pub(crate) const ALL: [Op; 6] = [Op::Eq, Op::Ne, Op::Gt, Op::Ge, Op::Lt, Op::Le];

    /// Reads `==`, `!=`, `>`, `>=`, `<` or `<=`.
    pub(crate) fn parse(text: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.as_str() == text)
    }

    /// The operator as written.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
        }
    }

    /// Whether `left op right` holds (`==` is exact float equality, as in
    /// PromQL).
    pub(crate) fn holds(self, left: f64, right: f64) -> bool {
        match self {
            Op::Eq => left == right,
            Op::Ne => left != right,
            Op::Gt => left > right,
            Op::Ge => left >= right,
            Op::Lt => left < right,
            Op::Le => left <= right,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One condition term.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    /// `metric op value`, compared here (see the module notes).
    Compare {
        /// Metric name.
        metric: String,
        /// Operator.
        op: Op,
        /// Threshold.
        value: f64,
    },
    /// Raw PromQL: a series returned for a device means true.
    Expr(String),
}

impl Term {
    /// The query this term needs, given the job's device matchers.
    pub(crate) fn query(&self, devices: &LabelMatchers) -> String {
        match self {
            Term::Compare { metric, .. } => devices.selector(metric),
            Term::Expr(expr) => expr.trim().to_string(),
        }
    }
}

impl fmt::Display for Term {
    /// `addreality_device_online == 0`, or the expression with its white
    /// space collapsed; used in generated job names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Term::Compare { metric, op, value } => write!(f, "{metric} {op} {value}"),
            Term::Expr(expr) => f.write_str(&expr.split_whitespace().collect::<Vec<_>>().join(" ")),
        }
    }
}

/// A job's condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `metric`/`op`/`value` or `expr` directly in the job.
    Single(Term),
    /// `all = [...]`: every term holds.
    All(Vec<Term>),
    /// `any = [...]`: at least one term holds.
    Any(Vec<Term>),
}

impl Condition {
    /// The terms, in order.
    pub(crate) fn terms(&self) -> &[Term] {
        match self {
            Condition::Single(term) => std::slice::from_ref(term),
            Condition::All(terms) | Condition::Any(terms) => terms,
        }
    }
}

impl fmt::Display for Condition {
    /// Terms joined by ` and ` / ` or `.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let joiner = match self {
            Condition::Single(term) => return term.fmt(f),
            Condition::All(_) => " and ",
            Condition::Any(_) => " or ",
        };
        for (i, term) in self.terms().iter().enumerate() {
            if i > 0 {
                f.write_str(joiner)?;
            }
            term.fmt(f)?;
        }
        Ok(())
    }
}

/// A guard: an expression that must return a series for the device (joined
/// on `on`) before the job's verdict is believed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Guard {
    /// The PromQL expression.
    pub expr: String,
    /// Labels joining its series to a device; empty = any series will do.
    pub on: Vec<String>,
}

impl fmt::Display for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.on.is_empty() {
            write!(f, "{}", self.expr.trim())
        } else {
            write!(f, "{} on ({})", self.expr.trim(), self.on.join(", "))
        }
    }
}

/// Three-valued truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The condition holds and the data is trusted.
    True,
    /// The condition does not hold and the data is trusted.
    False,
    /// Missing data, a failed query or a guard that does not hold.
    Unknown,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::True => "true",
            Verdict::False => "false",
            Verdict::Unknown => "unknown",
        })
    }
}
