//! The demo's simulated fleet: players that go offline or freeze in
//! episodes, GSM sockets that obey the SimPal commands they receive, and
//! the sockets' own log of what they were told.
//!
//! The fleet is the ground truth the demo's summary counts from: how many
//! players went bad, how many power cycles the sockets carried out, and how
//! often a socket was commanded twice within one episode of its player (a
//! duplicate, which jobctl must never send). The exporter sees the fleet
//! only through the simulated AddReality API ([`Fleet::devices`] is what
//! that API serves), so everything jobctl knows went through real HTTP.
//!
//! Time is the demo clock's, handed in by the caller ([`Fleet::tick`],
//! [`Fleet::receive`]): the fleet itself never reads a clock, which makes
//! it a pure state machine the tests drive step by step.

use std::collections::HashMap;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::Value;

use super::simpal::{parse_simpal, SimpalCommand};
use crate::clock::after;

/// How the fleet's life is paced, in demo time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    /// From the start to the first episode.
    pub(crate) first_episode: Duration,
    /// Between two episodes.
    pub(crate) episode_every: Duration,
    /// What one minute of a socket's command lasts (`power_cycle
    /// minutes=1` keeps the power off this long).
    pub(crate) socket_minute: Duration,
    /// From power back on to the player playing (or showing its fault).
    pub(crate) boot: Duration,
    /// How long a player that drops off by itself stays away.
    pub(crate) blip: Duration,
    /// How long after an episode a player is left alone.
    pub(crate) calm: Duration,
}

impl Pace {
    /// The demo's pace: a loop (fault, `for`, SMS, power cycle, boot,
    /// recovery seen) takes well under a minute of demo time.
    pub(crate) const DEMO: Pace = Pace {
        first_episode: Duration::from_secs(3),
        episode_every: Duration::from_secs(5),
        socket_minute: Duration::from_secs(10),
        boot: Duration::from_secs(5),
        blip: Duration::from_secs(6),
        calm: Duration::from_secs(300),
    };
}

/// A player's fault while its power is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Not connected to the cloud.
    Offline,
    /// Connected, but not playing.
    Frozen,
}

/// The power a player's socket gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Power {
    /// On; `off_at` when a delayed switch-off is set.
    On { off_at: Option<Timestamp> },
    /// Off; `on_at` when a power cycle switches it on again.
    Off { on_at: Option<Timestamp> },
    /// Power is back; the player plays (or shows its fault) at `ready_at`.
    Booting { ready_at: Timestamp },
}

/// A player's current bad spell.
#[derive(Debug, Clone, Copy)]
struct Episode {
    /// When it ends by itself (a blip), if it does.
    heals_at: Option<Timestamp>,
    /// Power commands its socket received during it.
    commands: u32,
}

#[derive(Debug)]
struct Player {
    /// Index in the simulated account's device list.
    device: usize,
    id: i64,
    name: String,
    /// A power cycle does not help it.
    broken: bool,
    fault: Option<Fault>,
    power: Power,
    episode: Option<Episode>,
    /// Not chosen for a new episode before this.
    calm_until: Timestamp,
}

/// A socket as the demo's rules name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SocketSpec {
    /// Its name in the rules.
    pub(crate) name: String,
    /// Its number, E.164.
    pub(crate) phone: String,
    /// The AddReality ids of the players it powers.
    pub(crate) powers: Vec<i64>,
}

#[derive(Debug)]
struct SimSocket {
    name: String,
    /// Indices into the players.
    players: Vec<usize>,
}

/// What a socket's log says of one SMS it received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Obeyed {
    /// Read and carried out; `duplicate` when a player it powers had
    /// already had a power command in its current episode.
    Command {
        /// The command.
        command: SimpalCommand,
        /// A second power command within one episode.
        duplicate: bool,
    },
    /// Not a command the socket knows: ignored, nothing switched.
    Ignored {
        /// Why.
        reason: String,
    },
}

/// One line of a socket's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SocketLogEntry {
    /// When the SMS arrived.
    pub(crate) at: Timestamp,
    /// The socket.
    pub(crate) socket: String,
    /// The text as received.
    pub(crate) text: String,
    /// What the socket made of it.
    pub(crate) obeyed: Obeyed,
}

/// Something the demo shows happening to the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FleetEvent {
    /// A player dropped off the cloud.
    WentOffline(String),
    /// A player stopped playing while connected.
    Froze(String),
    /// A player's blip ended without anyone doing anything.
    BackByItself(String),
    /// A socket received an SMS (its log line).
    Socket(SocketLogEntry),
    /// An SMS reached a number that is no socket: a person.
    ToPerson {
        /// The number.
        phone: String,
        /// The text.
        text: String,
    },
    /// A socket switched the power back on after a power cycle.
    PowerBack(String),
    /// A player is playing again after its power came back.
    Recovered(String),
    /// A player came back from a power cycle still broken.
    StillBroken(String),
}

/// Counts for the summary, from the fleet's and the sockets' own records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FleetCounts {
    /// Players in the account.
    pub(crate) players: usize,
    /// Episodes started (a player went offline or froze).
    pub(crate) went_bad: usize,
    /// Power cycles the sockets carried out.
    pub(crate) power_cycles: usize,
    /// Power commands a socket received a second time within one episode.
    pub(crate) duplicates: usize,
}

/// Players by what they show now, for the live view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FleetStates {
    /// Online and playing.
    pub(crate) playing: usize,
    /// Powered, not connected.
    pub(crate) offline: usize,
    /// Connected, not playing.
    pub(crate) frozen: usize,
    /// Their socket cut the power.
    pub(crate) powered_off: usize,
    /// Power back, starting up.
    pub(crate) booting: usize,
    /// Never activated (never online; no socket).
    pub(crate) inactive: usize,
}

/// The simulated fleet; see the module documentation.
#[derive(Debug)]
pub(crate) struct Fleet {
    devices: Vec<Value>,
    players: Vec<Player>,
    sockets: Vec<SimSocket>,
    by_phone: HashMap<String, usize>,
    pace: Pace,
    rng: fastrand::Rng,
    next_episode: Timestamp,
    episodes: usize,
    log: Vec<SocketLogEntry>,
    events: Vec<FleetEvent>,
    received: u64,
}

impl Fleet {
    /// A fleet of the simulated account `devices` (as
    /// [`crate::addreality::simulator::Simulator::demo_fleet`] makes them),
    /// every activated player playing at `now`, powered by `sockets`; the
    /// same `seed` gives the same episodes.
    pub(crate) fn new(
        mut devices: Vec<Value>,
        sockets: &[SocketSpec],
        pace: Pace,
        seed: u64,
        now: Timestamp,
    ) -> Fleet {
        let mut players = Vec::new();
        for (index, device) in devices.iter_mut().enumerate() {
            let Some(object) = device.as_object_mut() else { continue };
            if object.get("activation_state") != Some(&Value::Bool(true)) {
                continue;
            }
            let Some(id) = object.get("id").and_then(Value::as_i64) else { continue };
            let name = object.get("name").and_then(Value::as_str).unwrap_or("").to_string();
            players.push(Player {
                device: index,
                id,
                name,
                broken: false,
                fault: None,
                power: Power::On { off_at: None },
                episode: None,
                calm_until: now,
            });
        }
        let by_id: HashMap<i64, usize> =
            players.iter().enumerate().map(|(i, p)| (p.id, i)).collect();
        let mut by_phone = HashMap::new();
        let sockets: Vec<SimSocket> = sockets
            .iter()
            .enumerate()
            .map(|(index, spec)| {
                by_phone.insert(spec.phone.clone(), index);
                SimSocket {
                    name: spec.name.clone(),
                    players: spec.powers.iter().filter_map(|id| by_id.get(id).copied()).collect(),
                }
            })
            .collect();
        let mut rng = fastrand::Rng::with_seed(seed);
        // A few players a power cycle does not help, among those with a
        // socket, so that their job's escalation shows.
        let mut powered: Vec<usize> = sockets.iter().flat_map(|s| s.players.clone()).collect();
        powered.sort_unstable();
        powered.dedup();
        for _ in 0..3 {
            if powered.is_empty() {
                break;
            }
            let chosen = powered.swap_remove(rng.usize(..powered.len()));
            players[chosen].broken = true;
        }
        let mut fleet = Fleet {
            devices,
            players,
            sockets,
            by_phone,
            pace,
            rng,
            next_episode: after(now, pace.first_episode),
            episodes: 0,
            log: Vec::new(),
            events: Vec::new(),
            received: 0,
        };
        for player in 0..fleet.players.len() {
            fleet.show(player, now);
        }
        fleet
    }

    /// The account's devices as the simulated API serves them now.
    pub(crate) fn devices(&self) -> Vec<Value> {
        self.devices.clone()
    }

    /// The events since the last call, oldest first.
    pub(crate) fn take_events(&mut self) -> Vec<FleetEvent> {
        std::mem::take(&mut self.events)
    }

    /// The sockets' log, oldest first.
    #[cfg(test)]
    pub(crate) fn log(&self) -> &[SocketLogEntry] {
        &self.log
    }

    /// The summary's counts.
    pub(crate) fn counts(&self) -> FleetCounts {
        let commands = self.log.iter().filter_map(|entry| match &entry.obeyed {
            Obeyed::Command { command, duplicate } => Some((command, *duplicate)),
            Obeyed::Ignored { .. } => None,
        });
        let (mut power_cycles, mut duplicates) = (0, 0);
        for (command, duplicate) in commands {
            power_cycles += usize::from(matches!(command, SimpalCommand::PowerCycle { .. }));
            duplicates += usize::from(duplicate);
        }
        FleetCounts {
            players: self.devices.len(),
            went_bad: self.episodes,
            power_cycles,
            duplicates,
        }
    }

    /// Players by what they show now.
    pub(crate) fn states(&self) -> FleetStates {
        let mut states = FleetStates {
            inactive: self.devices.len() - self.players.len(),
            ..FleetStates::default()
        };
        for player in &self.players {
            match (player.power, player.fault) {
                (Power::Off { .. }, _) => states.powered_off += 1,
                (Power::Booting { .. }, _) => states.booting += 1,
                (Power::On { .. }, None) => states.playing += 1,
                (Power::On { .. }, Some(Fault::Offline)) => states.offline += 1,
                (Power::On { .. }, Some(Fault::Frozen)) => states.frozen += 1,
            }
        }
        states
    }

    /// Moves the fleet on to `now`: power comes back, players boot, blips
    /// end, and a new episode starts when one is due.
    pub(crate) fn tick(&mut self, now: Timestamp) {
        for index in 0..self.players.len() {
            self.advance(index, now);
        }
        while now >= self.next_episode {
            self.next_episode = after(self.next_episode, self.pace.episode_every);
            self.start_episode(now);
        }
        for index in 0..self.players.len() {
            self.show(index, now);
        }
    }

    fn advance(&mut self, index: usize, now: Timestamp) {
        let pace = self.pace;
        let player = &mut self.players[index];
        match player.power {
            Power::On { off_at: Some(at) } if now >= at => {
                player.power = Power::Off { on_at: None };
            }
            Power::Off { on_at: Some(at) } if now >= at => {
                player.power = Power::Booting { ready_at: after(at, pace.boot) };
                self.events.push(FleetEvent::PowerBack(label(player)));
            }
            Power::Booting { ready_at } if now >= ready_at => {
                player.power = Power::On { off_at: None };
                if player.episode.is_some() {
                    if player.broken {
                        self.events.push(FleetEvent::StillBroken(label(player)));
                    } else {
                        player.fault = None;
                        player.episode = None;
                        player.calm_until = after(now, pace.calm);
                        self.events.push(FleetEvent::Recovered(label(player)));
                    }
                }
            }
            _ => {}
        }
        let healed = player.episode.and_then(|e| e.heals_at).is_some_and(|at| now >= at);
        if healed && matches!(player.power, Power::On { .. }) {
            player.fault = None;
            player.episode = None;
            player.calm_until = after(now, pace.calm);
            self.events.push(FleetEvent::BackByItself(label(player)));
        }
    }

    /// Starts the next episode: the first on a player a power cycle
    /// helps, the second on a broken one (so that both outcomes show
    /// early), then mostly on players a power cycle helps; every fourth is
    /// a blip that ends by itself before jobctl's `for` does.
    fn start_episode(&mut self, now: Timestamp) {
        let number = self.episodes + 1;
        let wants_broken = number == 2 || (number > 2 && self.rng.u32(0..100) < 8);
        let candidates: Vec<usize> = (0..self.players.len())
            .filter(|&i| {
                let p = &self.players[i];
                p.episode.is_none()
                    && p.fault.is_none()
                    && matches!(p.power, Power::On { off_at: None })
                    && now >= p.calm_until
                    && p.broken == wants_broken
                    && self.sockets.iter().any(|s| s.players.contains(&i))
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let chosen = candidates[self.rng.usize(..candidates.len())];
        let offline = self.rng.u32(0..100) < 60;
        let (fault, blip) = match number {
            1 => (Fault::Offline, false),
            2 => (Fault::Frozen, false),
            _ if wants_broken => (if offline { Fault::Offline } else { Fault::Frozen }, false),
            _ if number % 4 == 0 => (Fault::Offline, true),
            _ if offline => (Fault::Offline, false),
            _ => (Fault::Frozen, false),
        };
        let heals_at = blip.then(|| after(now, self.pace.blip));
        let player = &mut self.players[chosen];
        player.fault = Some(fault);
        player.episode = Some(Episode { heals_at, commands: 0 });
        self.episodes += 1;
        self.events.push(match fault {
            Fault::Offline => FleetEvent::WentOffline(label(player)),
            Fault::Frozen => FleetEvent::Froze(label(player)),
        });
    }

    /// Writes a player's state into the account's device list.
    fn show(&mut self, index: usize, now: Timestamp) {
        let player = &self.players[index];
        let (online, playing) = match (player.power, player.fault) {
            (Power::On { .. }, None) => (true, true),
            (Power::On { .. }, Some(Fault::Frozen)) => (true, false),
            _ => (false, false),
        };
        let Some(device) = self.devices[player.device].as_object_mut() else { return };
        device.insert("connection_state".into(), if online { "online" } else { "offline" }.into());
        if online {
            device.insert("player_status".into(), if playing { "playback" } else { "stop" }.into());
            device.insert("last_online".into(), now.to_string().into());
        }
    }

    /// An SMS for `phone` arrived at `now`: a socket's number obeys it (or
    /// logs why not), any other number is a person's. Returns the SMS's
    /// number in the order received.
    pub(crate) fn receive(&mut self, phone: &str, text: &str, now: Timestamp) -> u64 {
        self.received += 1;
        let Some(&socket) = self.by_phone.get(phone) else {
            self.events
                .push(FleetEvent::ToPerson { phone: phone.to_string(), text: text.to_string() });
            return self.received;
        };
        let obeyed = match parse_simpal(text) {
            Err(reason) => Obeyed::Ignored { reason },
            Ok(command) => {
                let duplicate = self.obey(socket, &command, now);
                Obeyed::Command { command, duplicate }
            }
        };
        let entry = SocketLogEntry {
            at: now,
            socket: self.sockets[socket].name.clone(),
            text: text.to_string(),
            obeyed,
        };
        self.log.push(entry.clone());
        self.events.push(FleetEvent::Socket(entry));
        for player in self.sockets[socket].players.clone() {
            self.show(player, now);
        }
        self.received
    }

    /// Carries out `command` on the players of `socket`; true when one of
    /// them had already had a power command in its current episode.
    fn obey(&mut self, socket: usize, command: &SimpalCommand, now: Timestamp) -> bool {
        let minute = self.pace.socket_minute;
        let mut duplicate = false;
        for &index in &self.sockets[socket].players {
            let player = &mut self.players[index];
            if !command.switches_power() {
                continue;
            }
            if let Some(episode) = &mut player.episode {
                duplicate |= episode.commands > 0;
                episode.commands += 1;
            }
            player.power = match (command, player.power) {
                (SimpalCommand::PowerCycle { minutes }, _) => {
                    Power::Off { on_at: Some(after(now, minute * *minutes)) }
                }
                (SimpalCommand::PowerOff, _) => Power::Off { on_at: None },
                // Power on now; for a socket that was off, the delayed
                // switch-off of `#12#0#M#0#` is not simulated.
                (
                    SimpalCommand::PowerOn | SimpalCommand::PowerOffAfter { .. },
                    Power::Off { .. },
                ) => Power::Booting { ready_at: after(now, self.pace.boot) },
                (SimpalCommand::PowerOffAfter { minutes }, Power::On { .. }) => {
                    Power::On { off_at: Some(after(now, minute * *minutes)) }
                }
                (_, power) => power,
            };
        }
        duplicate
    }
}

/// A player as the demo's lines name it: id and name (escaped: names may
/// hold quotes, tabs and newlines).
fn label(player: &Player) -> String {
    format!("{} {:?}", player.id, player.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addreality::simulator::Simulator;

    const T0: i64 = 1_800_000_000;

    fn at(seconds: u64) -> Timestamp {
        after(Timestamp::from_second(T0).unwrap(), Duration::from_secs(seconds))
    }

    /// A fleet of 20 players, each on a socket of its own.
    fn fleet() -> Fleet {
        let devices = Simulator::demo_fleet(20, 1);
        let sockets: Vec<SocketSpec> = devices
            .iter()
            .filter(|d| d["activation_state"] == Value::Bool(true))
            .map(|d| {
                let id = d["id"].as_i64().unwrap();
                SocketSpec {
                    name: format!("s{id}"),
                    phone: format!("+7999{id:07}"),
                    powers: vec![id],
                }
            })
            .collect();
        Fleet::new(devices, &sockets, Pace::DEMO, 1, at(0))
    }

    /// The player an event names, and the phone of its socket.
    fn victim(fleet: &Fleet, event: &FleetEvent) -> (usize, String) {
        let (FleetEvent::WentOffline(label) | FleetEvent::Froze(label)) = event else {
            panic!("{event:?}")
        };
        let id: i64 = label.split(' ').next().unwrap().parse().unwrap();
        let index = fleet.players.iter().position(|p| p.id == id).unwrap();
        (index, format!("+7999{id:07}"))
    }

    fn connection(fleet: &Fleet, index: usize) -> &str {
        fleet.devices[fleet.players[index].device]["connection_state"].as_str().unwrap()
    }

    #[test]
    fn a_power_cycle_brings_a_player_back_and_the_log_says_so() {
        let mut fleet = fleet();
        assert!(fleet.players.iter().all(|p| p.fault.is_none()));
        fleet.tick(at(3));
        let events = fleet.take_events();
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(matches!(events[0], FleetEvent::WentOffline(_)));
        let (player, phone) = victim(&fleet, &events[0]);
        assert_eq!(connection(&fleet, player), "offline");
        assert_eq!(fleet.states().offline, 1);

        fleet.receive(&phone, "#12#0#1#1#", at(4));
        assert_eq!(fleet.states().powered_off, 1);
        fleet.tick(at(13));
        assert_eq!(fleet.states().powered_off, 1, "one socket minute is 10 s");
        fleet.tick(at(14));
        assert_eq!(fleet.states().booting, 1);
        fleet.tick(at(19));
        assert_eq!(connection(&fleet, player), "online");
        let events: Vec<FleetEvent> = fleet.take_events();
        assert!(
            matches!(&events[0], FleetEvent::Socket(entry) if !matches!(entry.obeyed, Obeyed::Ignored { .. }))
        );
        assert!(events.iter().any(|e| matches!(e, FleetEvent::PowerBack(_))));
        assert!(events.iter().any(|e| matches!(e, FleetEvent::Recovered(_))));
        assert_eq!(
            fleet.counts(),
            FleetCounts { players: 20, went_bad: 4, power_cycles: 1, duplicates: 0 }
        );
    }

    #[test]
    fn a_second_power_command_in_one_episode_is_a_duplicate() {
        let mut fleet = fleet();
        fleet.tick(at(3));
        let events = fleet.take_events();
        let (_, phone) = victim(&fleet, &events[0]);
        fleet.receive(&phone, "#12#0#1#1#", at(4));
        fleet.receive(&phone, "#12#0#1#1#", at(5));
        assert_eq!(fleet.counts().duplicates, 1);
        assert_eq!(fleet.counts().power_cycles, 2);
        let Obeyed::Command { duplicate, .. } = &fleet.log()[1].obeyed else { panic!() };
        assert!(duplicate);
        // Not a power command: never a duplicate.
        fleet.receive(&phone, "#00#", at(6));
        assert_eq!(fleet.counts().duplicates, 1);
    }

    #[test]
    fn a_text_the_socket_cannot_read_is_logged_and_ignored() {
        let mut fleet = fleet();
        fleet.tick(at(3));
        let events = fleet.take_events();
        let (player, phone) = victim(&fleet, &events[0]);
        fleet.receive(&phone, "reboot please", at(4));
        fleet.receive(&phone, "#12#0#0#1#", at(4));
        assert_eq!(fleet.players[player].power, Power::On { off_at: None });
        assert_eq!(connection(&fleet, player), "offline");
        let reasons: Vec<&Obeyed> = fleet.log().iter().map(|entry| &entry.obeyed).collect();
        assert_eq!(
            reasons,
            [
                &Obeyed::Ignored {
                    reason: "not a SimPal command: it must start and end with #".into()
                },
                &Obeyed::Ignored {
                    reason: "\"0\" is not a number of minutes from 1 to 999".into()
                },
            ]
        );
        assert_eq!(fleet.counts().power_cycles, 0);
        // A later, readable command is still obeyed, and is no duplicate.
        fleet.receive(&phone, "#12#0#1#1#", at(5));
        assert_eq!(
            fleet.counts(),
            FleetCounts { players: 20, went_bad: 1, power_cycles: 1, duplicates: 0 }
        );
    }

    #[test]
    fn a_broken_player_stays_stuck_and_a_person_reads_their_sms() {
        let mut fleet = fleet();
        fleet.tick(at(3));
        fleet.take_events();
        fleet.tick(at(8));
        let events = fleet.take_events();
        assert!(matches!(events[..], [FleetEvent::Froze(_)]), "{events:?}");
        let (player, phone) = victim(&fleet, &events[0]);
        assert!(fleet.players[player].broken);
        assert_eq!(fleet.states().frozen, 1);
        fleet.receive(&phone, "#12#0#1#1#", at(9));
        fleet.tick(at(19));
        fleet.tick(at(24));
        assert!(fleet.take_events().iter().any(|e| matches!(e, FleetEvent::StillBroken(_))));
        assert_eq!(fleet.players[player].fault, Some(Fault::Frozen));
        assert_eq!(fleet.devices[fleet.players[player].device]["player_status"], "stop");

        fleet.receive("+79990001122", "job: it is stuck", at(25));
        assert_eq!(
            fleet.take_events(),
            [FleetEvent::ToPerson {
                phone: "+79990001122".into(),
                text: "job: it is stuck".into()
            }]
        );
        assert_eq!(fleet.log().len(), 1, "a person's SMS is no socket's");
    }

    #[test]
    fn the_same_seed_gives_the_same_episodes() {
        let run = || {
            let mut fleet = fleet();
            let mut events = Vec::new();
            for second in 0..120 {
                fleet.tick(at(second));
                events.extend(fleet.take_events());
            }
            events
        };
        let events = run();
        assert!(events.len() > 10, "{events:?}");
        assert!(events.iter().any(|e| matches!(e, FleetEvent::BackByItself(_))), "{events:#?}");
        assert_eq!(events, run());
    }
}
