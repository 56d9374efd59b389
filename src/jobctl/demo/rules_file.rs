//! The rules `jobctl demo` writes into its directory and prints: a rules
//! file a person can read, edit and run again with `--rules FILE`, and one
//! socket per player in `rules.d/sockets.toml` next to it.
//!
//! They are ordinary rules: `jobctl check`, `history`, `status` and
//! `report` read them. Only their `[sms] backend = "demo"` is the demo's
//! own: the simulated sockets exist inside `jobctl demo` alone.

use std::fmt::Write as _;

/// Platform id of the simulated account, as the exporter labels it.
pub(crate) const PLATFORM_ID: &str = "1";

/// The number that escalations go to: a person, not a socket.
pub(crate) const ON_CALL: &str = "+79990001122";

/// The name of the demo's job.
pub(crate) const JOB: &str = "Power-cycle stuck players";

/// The rules file, reading the exporter at `metrics_url`.
pub(crate) fn rules_text(metrics_url: &str) -> String {
    format!(
        r##"# The rules `jobctl demo` runs. Edit this file and run it again with
#   jobctl demo --rules <this file>
# Times are demo time: at the default speed, wall time. The players' sockets,
# one per player, are in rules.d/sockets.toml next to this file.

# Who hears when a power cycle did not help (not_recovered) or the job gave
# up (gave_up): an SMS to a person, through the same simulated SMS backend.
escalate = [
  {{ sms = "{{job}}: {{name}} ({{device_id}}) {{event}}", to = ["{ON_CALL}"] }},
]

# While the exporter cannot reach the AddReality API it serves its cache,
# whose values may be old: then no job acts. With [source] scrape a guard is
# written as metric op number.
guards = [{{ expr = "addreality_platform_up == 1", on = ["platform_id"] }}]

[source]
# The demo's exporter, serving the simulated account in this process: jobctl
# reads its /metrics directly, no Prometheus needed.
scrape = ["{metrics_url}"]
interval = "2s"

[journal]
# Relative to this file: `jobctl history --config <this file>` reads it.
path = "journal.db"

[sms]
# The demo's simulated GSM sockets: they obey the SimPal commands they get
# (power_cycle minutes=N keeps the player off for N demo minutes of 10 s),
# and any other number is a person reading the text. Nothing leaves this
# process; only `jobctl demo` can send through this backend.
backend = "demo"

[budgets]
socket_per_hour = 3
total_per_hour = 60

[[jobs]]
name = "{JOB}"
# Players whose socket is in rules.d/sockets.toml (not the never-activated).
only_powered = true
# Offline, or online but not playing.
any = [
  {{ metric = "addreality_device_online", op = "==", value = 0 }},
  {{ metric = "addreality_device_playing", op = "==", value = 0 }},
]
for = "10s"
action = {{ command = "power_cycle", minutes = 1 }}
cooldown = "2m"
# Back within 30 s of the SMS: recovered; still stuck then: not_recovered,
# and the escalation above.
verify = {{ within = "30s" }}
limit = {{ actions = 2, per = "10m" }}
"##
    )
}

/// The socket of each player in `device_ids`: `rules.d/sockets.toml`.
pub(crate) fn sockets_text(device_ids: &[i64]) -> String {
    let mut text =
        String::from("# One simulated SimPal socket per activated player of the demo's account.\n");
    for id in device_ids {
        let _ = write!(
            text,
            "\n[[sockets]]\nname = \"{}\"\nphone = \"{}\"\nmodel = \"simpal-d210\"\npowers = {{ platform_id = \"{PLATFORM_ID}\", device_id = \"{id}\" }}\n",
            socket_name(*id),
            socket_phone(*id)
        );
    }
    text
}

/// The socket powering player `id`.
pub(crate) fn socket_name(id: i64) -> String {
    format!("socket-{id}")
}

/// Its number: +7 999 and the player's id in seven digits.
pub(crate) fn socket_phone(id: i64) -> String {
    format!("+7999{:07}", id.rem_euclid(10_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::SourceConfig;

    #[test]
    fn the_written_rules_load_scrape_the_exporter_and_send_through_the_demo() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rules.d")).unwrap();
        std::fs::write(dir.path().join("rules.d/sockets.toml"), sockets_text(&[30785, 30786]))
            .unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, rules_text("http://127.0.0.1:40001/metrics")).unwrap();
        let rules = crate::rules::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let SourceConfig::Scrape(scrape) = &rules.source else { panic!("{:?}", rules.source) };
        assert_eq!(scrape.targets[0].as_str(), "http://127.0.0.1:40001/metrics");
        assert!(rules.sms.as_ref().unwrap().is_demo());
        assert_eq!(rules.journal.sqlite_path(), Some(dir.path().join("journal.db").as_path()));
        assert_eq!(rules.jobs.len(), 1);
        assert_eq!(rules.jobs[0].name, JOB);
        let sockets: Vec<(&str, String)> =
            rules.sockets.iter().map(|s| (s.name.as_str(), s.phone.to_string())).collect();
        assert_eq!(
            sockets,
            [
                ("socket-30785", "+79990030785".to_string()),
                ("socket-30786", "+79990030786".to_string())
            ]
        );
        assert_eq!(
            rules.sockets[0].render(
                "power_cycle",
                &[("minutes".into(), crate::rules::socket::ArgValue::Integer(1))].into()
            ),
            Ok("#12#0#1#1#".to_string())
        );
    }
}
