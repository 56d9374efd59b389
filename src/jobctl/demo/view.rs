//! What a person watching `jobctl demo` sees: on a terminal, a view
//! redrawn in place (players by state, the job's devices by phase, SMS and
//! budget use, the last events); otherwise one line per event, for logs
//! and tests.
//!
//! Plain ANSI (move up, clear to the end of the screen) is enough for a
//! dozen lines; lines are cut to the terminal's width so that none wraps
//! and the redraw stays in place.

use std::collections::VecDeque;
use std::time::Duration;

use super::fleet::FleetStates;

/// Events the live view keeps on screen.
const RECENT_EVENTS: usize = 12;

/// One thing that happened, at its demo time since the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    /// Demo time since the start.
    pub(crate) at: Duration,
    /// The line shown.
    pub(crate) text: String,
}

impl Event {
    /// The line as printed: `  17.2s  text`.
    pub(crate) fn line(&self) -> String {
        format!("{:>6.1}s  {}", self.at.as_secs_f64(), self.text)
    }
}

/// A job's devices by phase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct JobPhases {
    /// The job.
    pub(crate) job: String,
    /// Condition true, `for` running.
    pub(crate) pending: usize,
    /// Firing (acted on, or due).
    pub(crate) firing: usize,
    /// Of those, an action is being verified.
    pub(crate) verifying: usize,
}

/// Everything the live view shows besides the events.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Status {
    /// Demo time since the start.
    pub(crate) elapsed: Duration,
    /// When the demo stops by itself, if it does.
    pub(crate) stops_at: Option<Duration>,
    /// Players in the account.
    pub(crate) players: usize,
    /// Players by state.
    pub(crate) fleet: FleetStates,
    /// Each job's devices by phase.
    pub(crate) jobs: Vec<JobPhases>,
    /// Messages sent so far.
    pub(crate) sent: usize,
    /// Messages sent within the last hour, and `[budgets] total_per_hour`.
    pub(crate) hour_budget: (usize, Option<u32>),
    /// Actions that helped.
    pub(crate) recovered: usize,
    /// Actions that did not.
    pub(crate) not_recovered: usize,
    /// Escalations journalled.
    pub(crate) escalated: usize,
}

/// Where the demo's output goes.
#[derive(Debug)]
pub(crate) enum View {
    /// One line per event.
    Lines,
    /// Redrawn in place on a terminal.
    Live {
        /// The last events.
        recent: VecDeque<Event>,
        /// Lines the last frame took, to move back over.
        drawn: usize,
    },
}

impl View {
    /// The live view when stdout is a terminal, lines otherwise.
    pub(crate) fn for_stdout() -> View {
        use std::io::IsTerminal;
        if std::io::stdout().is_terminal() {
            View::Live { recent: VecDeque::new(), drawn: 0 }
        } else {
            View::Lines
        }
    }

    /// Shows `events` (printed at once as lines, or kept for the next
    /// frame).
    pub(crate) fn events(&mut self, events: Vec<Event>) {
        match self {
            View::Lines => {
                for event in events {
                    crate::exit::outln!("{}", event.line());
                }
            }
            View::Live { recent, .. } => {
                for event in events {
                    if recent.len() == RECENT_EVENTS {
                        recent.pop_front();
                    }
                    recent.push_back(event);
                }
            }
        }
    }

    /// Redraws the live view with `status`; lines need no frame.
    pub(crate) fn draw(&mut self, status: &Status) {
        let View::Live { recent, drawn } = self else { return };
        let width = terminal_width();
        let mut frame = String::new();
        if *drawn > 0 {
            // Back to the start of the previous frame, and clear it.
            frame.push_str(&format!("\x1b[{drawn}F\x1b[J"));
        }
        let lines = frame_lines(status, recent);
        for line in &lines {
            frame.push_str(&cut(line, width));
            frame.push('\n');
        }
        *drawn = lines.len();
        crate::exit::out!("{frame}");
    }

    /// Leaves the view: the last frame stays on screen; a line follows it.
    pub(crate) fn finish(&mut self) {
        if let View::Live { drawn, .. } = self {
            *drawn = 0;
            crate::exit::outln!();
        }
    }
}

/// The live view's lines.
pub(crate) fn frame_lines(status: &Status, recent: &VecDeque<Event>) -> Vec<String> {
    let stops = match status.stops_at {
        Some(at) => format!("stops at {}s", at.as_secs()),
        None => "runs until Ctrl-C".to_string(),
    };
    let fleet = &status.fleet;
    let mut lines = vec![
        format!(
            "jobctl demo  {:.0}s ({stops}; Ctrl-C stops it)",
            status.elapsed.as_secs_f64()
        ),
        format!(
            "players {}: {} playing, {} offline, {} frozen, {} power off, {} booting, {} never activated",
            status.players,
            fleet.playing,
            fleet.offline,
            fleet.frozen,
            fleet.powered_off,
            fleet.booting,
            fleet.inactive
        ),
    ];
    for job in &status.jobs {
        lines.push(format!(
            "job {:?}: {} pending, {} firing ({} being verified)",
            job.job, job.pending, job.firing, job.verifying
        ));
    }
    let (used, limit) = status.hour_budget;
    let budget = match limit {
        Some(limit) => format!("{used} of {limit} this hour"),
        None => format!("{used} this hour, no hourly budget"),
    };
    lines.push(format!(
        "SMS {} sent (budget: {budget}); {} recovered, {} not recovered, {} escalated",
        status.sent, status.recovered, status.not_recovered, status.escalated
    ));
    lines.push(String::new());
    lines.push("last events:".to_string());
    lines.extend(recent.iter().map(Event::line));
    lines
}

/// The terminal's width in columns (80 when it cannot be read).
fn terminal_width() -> usize {
    rustix::termios::tcgetwinsize(std::io::stdout())
        .ok()
        .map(|size| usize::from(size.ws_col))
        .filter(|&cols| cols > 10)
        .unwrap_or(80)
}

/// `line` cut to `width` characters (no wrap, so the redraw stays put).
fn cut(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_string();
    }
    let mut cut: String = line.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_shows_counts_budget_and_the_last_events() {
        let status = Status {
            elapsed: Duration::from_secs(42),
            stops_at: Some(Duration::from_secs(90)),
            players: 273,
            fleet: FleetStates {
                playing: 260,
                offline: 3,
                frozen: 2,
                powered_off: 1,
                booting: 1,
                inactive: 6,
            },
            jobs: vec![JobPhases { job: "J".into(), pending: 2, firing: 3, verifying: 1 }],
            sent: 4,
            hour_budget: (4, Some(60)),
            recovered: 2,
            not_recovered: 1,
            escalated: 1,
        };
        let recent =
            VecDeque::from([Event { at: Duration::from_millis(17_300), text: "x".into() }]);
        assert_eq!(
            frame_lines(&status, &recent),
            [
                "jobctl demo  42s (stops at 90s; Ctrl-C stops it)",
                "players 273: 260 playing, 3 offline, 2 frozen, 1 power off, 1 booting, 6 never activated",
                "job \"J\": 2 pending, 3 firing (1 being verified)",
                "SMS 4 sent (budget: 4 of 60 this hour); 2 recovered, 1 not recovered, 1 escalated",
                "",
                "last events:",
                "  17.3s  x",
            ]
        );
    }

    #[test]
    fn long_lines_are_cut_to_the_width() {
        assert_eq!(cut("abcdef", 6), "abcdef");
        assert_eq!(cut("abcdefg", 6), "abcde…");
        assert_eq!(cut("Казань, ТЦ «Мега»", 8), "Казань,…");
    }
}
