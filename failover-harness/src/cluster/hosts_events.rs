//! What the rig learns from the event files of agents and clients (JSON lines with
//! `t_us` = CLOCK_MONOTONIC microseconds, see docs/CLUSTER.md), and the safety checks run
//! on them: the client's epochs never decrease and its output never comes from two epochs
//! interleaved, leaders' epochs only grow, and no game of an older epoch still runs when a
//! newer one leads.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

/// One event line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC microseconds.
    pub t_us: u64,
    /// The node (agents' events; empty for the client's).
    pub node: String,
    /// What happened (`leading`, `game_started`, `first_output`...).
    pub event: String,
    /// Its epoch, when it has one.
    pub epoch: Option<u64>,
    /// A game's pid (`game_started`, `game_ended`).
    pub pid: Option<u32>,
    /// A game's role (`game_started`).
    pub role: Option<String>,
    /// Whether a game finished on purpose (`ended`).
    pub finished: Option<bool>,
    /// When a relay's hold took effect (`held`: a little before the agent noted it).
    pub at_us: Option<u64>,
}

/// Reads an event file (missing: no events; a torn last line is skipped).
pub fn read(path: &Path) -> Vec<Event> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter_map(parse).collect()
}

/// One line, if it is an event.
pub fn parse(line: &str) -> Option<Event> {
    let v: Value = serde_json::from_str(line).ok()?;
    let num = |k: &str| v.get(k).and_then(Value::as_u64);
    Some(Event {
        t_us: num("t_us")?,
        node: v
            .get("node")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        event: v.get("event").and_then(Value::as_str)?.to_owned(),
        epoch: num("epoch"),
        pid: num("pid").and_then(|p| u32::try_from(p).ok()),
        role: v.get("role").and_then(Value::as_str).map(str::to_owned),
        finished: v.get("finished").and_then(Value::as_bool),
        at_us: num("at_us"),
    })
}

/// The client's first output of an epoch above `above`: its time and epoch.
pub fn first_output_above(client: &[Event], above: u64) -> Option<(u64, u64)> {
    client
        .iter()
        .filter(|e| e.event == "first_output")
        .find_map(|e| e.epoch.filter(|&ep| ep > above).map(|ep| (e.t_us, ep)))
}

/// The highest epoch the client has had output from.
pub fn client_epoch(client: &[Event]) -> u64 {
    client
        .iter()
        .filter(|e| e.event == "first_output")
        .filter_map(|e| e.epoch)
        .max()
        .unwrap_or(0)
}

/// Every epoch a leader took, in time order: (time, node, epoch).
pub fn leaderships(agents: &[Event]) -> Vec<(u64, String, u64)> {
    let mut v: Vec<(u64, String, u64)> = agents
        .iter()
        .filter(|e| e.event == "leading")
        .filter_map(|e| e.epoch.map(|ep| (e.t_us, e.node.clone(), ep)))
        .collect();
    v.sort();
    v
}

/// Something done to a game or host from outside, which ends or pauses games without an
/// event of theirs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outside {
    /// The game `pid` was SIGKILLed at `t_us`.
    Killed {
        /// The game.
        pid: u32,
        /// When.
        t_us: u64,
    },
    /// The game `pid` was SIGSTOPped at `t_us`.
    Stopped {
        /// The game.
        pid: u32,
        /// When.
        t_us: u64,
    },
    /// The game `pid` was SIGCONTed at `t_us`.
    Continued {
        /// The game.
        pid: u32,
        /// When.
        t_us: u64,
    },
    /// Every process of host `node` was killed at `t_us`.
    Axed {
        /// The host.
        node: String,
        /// When.
        t_us: u64,
    },
}

/// A primary game's life: which node, which epoch, and when it could act.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PrimaryGame {
    node: String,
    pid: Option<u32>,
    epoch: u64,
    /// When it began to lead.
    from: u64,
    /// Intervals [from, to) in which it ran (not stopped, not dead); `u64::MAX`: still.
    active: Vec<(u64, u64)>,
}

/// The safety violations (split brains) in a session's events: one line each, empty when
/// there are none.
///
/// - the client: epochs of `leader` never decrease, and `first_output` epochs strictly grow
///   (output from an older epoch after a newer one is interleaving);
/// - the agents: `leading` epochs strictly grow in time; and when a node leads epoch E, no
///   game that led an older epoch may run at or after that moment (ended, killed, axed,
///   stopped and not continued before its agent ended it, or held by its agent's relay and
///   not released: a held game gets no input and shows nothing).
pub fn violations(agents: &[Event], client: &[Event], outside: &[Outside]) -> Vec<String> {
    let mut out = Vec::new();
    let mut client = client.to_vec();
    client.sort_by_key(|e| e.t_us);
    let mut last_leader = 0;
    let mut last_output = 0;
    for e in &client {
        let Some(ep) = e.epoch else { continue };
        match e.event.as_str() {
            "leader" if ep < last_leader => out.push(format!(
                "client: leader epoch {ep} after {last_leader} at t={}us",
                e.t_us
            )),
            "leader" => last_leader = ep,
            "first_output" if ep <= last_output => out.push(format!(
                "client: output of epoch {ep} after epoch {last_output}'s at t={}us",
                e.t_us
            )),
            "first_output" => last_output = ep,
            _ => {}
        }
    }
    let leads = leaderships(agents);
    for w in leads.windows(2) {
        if w[1].2 <= w[0].2 {
            out.push(format!(
                "agents: {} leads epoch {} at t={}us after {} led epoch {} at t={}us",
                w[1].1, w[1].2, w[1].0, w[0].1, w[0].2, w[0].0
            ));
        }
    }
    let games = primary_games(agents, outside);
    for (t, node, epoch) in &leads {
        for g in games.iter().filter(|g| g.epoch < *epoch && g.from < *t) {
            if let Some((from, to)) = g.active.iter().find(|(_, to)| to > t) {
                let to = if *to == u64::MAX {
                    "the end".to_owned()
                } else {
                    format!("t={to}us")
                };
                out.push(format!(
                    "split brain: {node} leads epoch {epoch} at t={t}us while {}'s game \
                     (pid {:?}) of epoch {} runs from t={from}us to {to}",
                    g.node, g.pid, g.epoch
                ));
            }
        }
    }
    out
}

/// A node's current game: its pid, and once it leads, its epoch and when it began to.
type NodeGame = (Option<u32>, Option<(u64, u64)>);

/// Every game that led an epoch, with the intervals in which it ran.
fn primary_games(agents: &[Event], outside: &[Outside]) -> Vec<PrimaryGame> {
    let mut by_node: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in agents {
        by_node.entry(e.node.as_str()).or_default().push(e);
    }
    let mut games = Vec::new();
    for (node, mut events) in by_node {
        events.sort_by_key(|e| e.t_us);
        // The node's game now: its pid and, once it leads, its epoch and start.
        let mut current: Option<NodeGame> = None;
        let mut close = |cur: Option<NodeGame>, end: u64| {
            if let Some((pid, Some((epoch, from)))) = cur {
                games.push((node.to_owned(), pid, epoch, from, end));
            }
        };
        for e in events {
            match e.event.as_str() {
                "game_started" => {
                    // A fresh primary's agent says `leading` just before it starts the game.
                    if let Some((pid @ None, Some((epoch, _)))) = &mut current
                        && e.role.as_deref() == Some("primary")
                        && e.epoch == Some(*epoch)
                    {
                        *pid = e.pid;
                        continue;
                    }
                    close(current.take(), e.t_us);
                    current = Some((e.pid, None));
                }
                "leading" => {
                    let epoch = e.epoch.unwrap_or(0);
                    match &mut current {
                        Some((_, lead @ None)) => *lead = Some((epoch, e.t_us)),
                        // A leading without a game_started of its own: a fresh primary.
                        _ => {
                            close(current.take(), e.t_us);
                            current = Some((None, Some((epoch, e.t_us))));
                        }
                    }
                }
                "game_ended" => {
                    let same = match (&current, e.pid) {
                        (Some((Some(p), _)), Some(q)) => *p == q,
                        _ => true,
                    };
                    if same {
                        close(current.take(), e.t_us);
                    }
                }
                _ => {}
            }
        }
        close(current.take(), u64::MAX);
    }
    games
        .into_iter()
        .map(|(node, pid, epoch, from, end)| {
            let mut end = end;
            let mut pauses: Vec<(u64, u64)> = Vec::new();
            for o in outside {
                match o {
                    Outside::Killed { pid: p, t_us } if Some(*p) == pid => end = end.min(*t_us),
                    Outside::Axed { node: n, t_us } if *n == node && *t_us >= from => {
                        end = end.min(*t_us);
                    }
                    Outside::Stopped { pid: p, t_us } if Some(*p) == pid => {
                        pauses.push((*t_us, u64::MAX));
                    }
                    Outside::Continued { pid: p, t_us } if Some(*p) == pid => {
                        if let Some(last) = pauses.last_mut().filter(|l| l.1 == u64::MAX) {
                            last.1 = *t_us;
                        }
                    }
                    _ => {}
                }
            }
            // Its agent's relay held: the game took no input and showed nothing from the
            // hold's effect to its release (see `agent::relay`).
            let mut held: Option<u64> = None;
            for e in agents
                .iter()
                .filter(|e| e.node == node && e.epoch == Some(epoch))
            {
                match e.event.as_str() {
                    "held" => held = held.or(Some(e.at_us.unwrap_or(e.t_us))),
                    "released" => {
                        if let Some(s) = held.take() {
                            pauses.push((s, e.t_us));
                        }
                    }
                    _ => {}
                }
            }
            if let Some(s) = held {
                pauses.push((s, u64::MAX));
            }
            let mut active = Vec::new();
            let mut at = from;
            pauses.sort_unstable();
            for (s, c) in pauses {
                if s >= end {
                    break;
                }
                if s > at {
                    active.push((at, s));
                }
                at = at.max(c);
            }
            if at < end {
                active.push((at, end));
            }
            PrimaryGame {
                node,
                pid,
                epoch,
                from,
                active,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: u64, node: &str, event: &str, epoch: Option<u64>, pid: Option<u32>) -> Event {
        Event {
            t_us: t,
            node: node.to_owned(),
            event: event.to_owned(),
            epoch,
            pid,
            role: None,
            finished: None,
            at_us: None,
        }
    }

    #[test]
    fn parses_the_contract_line() {
        let e = parse(
            r#"{"t_us":12,"node":"a","event":"game_started","role":"spare","epoch":3,"pid":77}"#,
        )
        .unwrap_or_else(|| panic!("not parsed"));
        assert_eq!(e.t_us, 12);
        assert_eq!(e.node, "a");
        assert_eq!(e.pid, Some(77));
        assert_eq!(e.role.as_deref(), Some("spare"));
        assert!(
            parse("{\"t_us\":1,\"ev").is_none(),
            "a torn line is no event"
        );
    }

    /// a leads 5, its game is killed at 100, b leads 9 at 110: clean.
    fn failover(end_of_a: Option<u64>, outside: &[Outside]) -> Vec<String> {
        let mut agents = vec![
            ev(1, "a", "game_started", None, Some(10)),
            ev(2, "a", "leading", Some(5), None),
            ev(3, "b", "game_started", None, Some(20)),
            ev(110, "b", "leading", Some(9), None),
        ];
        if let Some(t) = end_of_a {
            agents.push(ev(t, "a", "game_ended", Some(5), Some(10)));
        }
        let client = vec![
            ev(4, "", "leader", Some(5), None),
            ev(5, "", "first_output", Some(5), None),
            ev(111, "", "leader", Some(9), None),
            ev(112, "", "first_output", Some(9), None),
        ];
        violations(&agents, &client, outside)
    }

    #[test]
    fn an_old_primary_ended_before_the_new_one_leads_is_no_violation() {
        assert!(failover(Some(100), &[]).is_empty());
        // Killed from outside, its agent's event comes later: the kill is its end.
        let killed = [Outside::Killed { pid: 10, t_us: 90 }];
        assert!(failover(Some(200), &killed).is_empty());
        let axed = [Outside::Axed {
            node: "a".into(),
            t_us: 90,
        }];
        assert!(failover(None, &axed).is_empty());
    }

    #[test]
    fn an_old_primary_still_running_when_the_new_one_leads_is_a_split_brain() {
        let v = failover(Some(200), &[]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("split brain"), "{v:?}");
        assert_eq!(failover(None, &[]).len(), 1);
    }

    #[test]
    fn a_stopped_old_primary_counts_only_if_continued_before_its_end() {
        let stopped = |cont: u64| {
            [
                Outside::Stopped { pid: 10, t_us: 50 },
                Outside::Continued {
                    pid: 10,
                    t_us: cont,
                },
            ]
        };
        assert!(failover(Some(150), &stopped(300)).is_empty());
        assert_eq!(failover(Some(150), &stopped(120)).len(), 1);
        assert_eq!(failover(None, &stopped(300)).len(), 1);
    }

    #[test]
    fn an_old_primary_held_by_its_relay_counts_only_if_released_before_its_end() {
        let held = |at: u64, released: Option<u64>| {
            let mut agents = vec![
                ev(1, "a", "game_started", None, Some(10)),
                ev(2, "a", "leading", Some(5), None),
                ev(3, "b", "game_started", None, Some(20)),
                ev(110, "b", "leading", Some(9), None),
                ev(200, "a", "game_ended", Some(5), Some(10)),
            ];
            // Noted at 104, in effect since `at`.
            let mut h = ev(104, "a", "held", Some(5), None);
            h.at_us = Some(at);
            agents.push(h);
            if let Some(t) = released {
                agents.push(ev(t, "a", "released", Some(5), None));
            }
            violations(&agents, &[], &[])
        };
        assert!(held(100, None).is_empty());
        assert!(held(100, Some(300)).is_empty());
        assert_eq!(held(100, Some(120)).len(), 1, "released while b leads");
        assert_eq!(held(115, None).len(), 1, "held only after b led");
    }

    #[test]
    fn client_epochs_that_decrease_or_interleave_are_violations() {
        let client = vec![
            ev(1, "", "leader", Some(5), None),
            ev(2, "", "first_output", Some(5), None),
            ev(3, "", "leader", Some(9), None),
            ev(4, "", "first_output", Some(9), None),
            ev(5, "", "leader", Some(7), None),
            ev(6, "", "first_output", Some(5), None),
        ];
        assert_eq!(violations(&[], &client, &[]).len(), 2);
        assert_eq!(first_output_above(&client, 5), Some((4, 9)));
        assert_eq!(client_epoch(&client), 9);
    }

    #[test]
    fn a_fresh_primary_announced_before_its_game_starts_is_that_game() {
        let mut started = ev(2, "a", "game_started", Some(5), Some(10));
        started.role = Some("primary".into());
        let agents = vec![
            ev(1, "a", "leading", Some(5), None),
            started,
            ev(3, "b", "game_started", Some(5), Some(20)),
            ev(110, "b", "leading", Some(9), None),
        ];
        let killed = [Outside::Killed { pid: 10, t_us: 100 }];
        assert!(violations(&agents, &[], &killed).is_empty());
        let v = violations(&agents, &[], &[]);
        assert_eq!(v.len(), 1, "the game that was never seen to end: {v:?}");
    }

    #[test]
    fn leader_epochs_that_do_not_grow_are_violations() {
        let agents = vec![
            ev(1, "a", "leading", Some(9), None),
            ev(2, "a", "game_ended", Some(9), None),
            ev(3, "b", "leading", Some(7), None),
        ];
        let v = violations(&agents, &[], &[]);
        assert_eq!(v.len(), 1, "{v:?}");
    }
}
