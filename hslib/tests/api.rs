//! The application's interface as an adopter relies on it, through the public API with a
//! checkpoint log as the spare's stream (rebuilt into a [`Replica`] the way a spare or a
//! resume builds its image):
//!
//! - a checkpoint that fails at any step loses no page: the next one ships the pages the
//!   failed one found (or is full, when the scan itself failed), so the spare's image equals
//!   the primary's (copy and fork, every tracker; failures injected with the
//!   `fault-injection` feature);
//! - a restored worker gets back its root value without an offset, its descriptors without a
//!   number, and the list of connections lost in the restore; the worker's value comes back;
//! - every `HS_*` value is validated: no environment makes the library panic.
//!
//! Every test holds the global lock: a restore re-creates descriptors at their recorded
//! numbers in this process, and mprotect tracking and fork are process-wide.

mod common;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;

use hslib::fault::{self, Step};
use hslib::meta::SocketName;
use hslib::replica::ReplicaConfig;
use hslib::transport::file;
use hslib::{
    Backend, Context, HotSpare, HsError, LinkConfig, Mode, Outcome, PAGE_SIZE, RegionId, Role,
    Strategy, WorkerResult,
};
use proptest::prelude::*;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Where the spare's image differs from the primary's regions, if anywhere.
fn image_differs(ctx: &Context, log: &Path, ids: &[RegionId]) -> WorkerResult<Option<String>> {
    let (replica, _) = file::rebuild(log, ReplicaConfig::default())?;
    let image = replica
        .image()
        .ok_or("the log holds no complete checkpoint")?;
    for &id in ids {
        let want = ctx.region(id)?.as_bytes();
        let got = image.region(id.0).ok_or("the image lacks a region")?;
        if let Some(page) = (0..want.len() / PAGE_SIZE).find(|p| {
            let r = p * PAGE_SIZE..(p + 1) * PAGE_SIZE;
            want[r.clone()] != got[r]
        }) {
            return Ok(Some(format!("region {id} page {page}")));
        }
    }
    Ok(None)
}

/// Runs a primary that, for each step, writes pages, has a checkpoint fail at that step,
/// writes other pages, checkpoints again and compares the spare's image with its regions.
/// Returns one line per step that left the images different.
fn failed_checkpoints(strategy: Strategy, backend: Backend) -> Vec<String> {
    let _g = common::global_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("cpt.log");
    let (a, b) = (common::fresh_id(), common::fresh_id());
    let steps: &[Step] = match strategy {
        Strategy::Fork => &[
            Step::Scan,
            Step::Capture,
            Step::Encode,
            Step::Fork,
            Step::Submit,
        ],
        _ => &[
            Step::Scan,
            Step::Capture,
            Step::Encode,
            Step::Staging,
            Step::Submit,
        ],
    };
    let log_in = log.clone();
    let outcome = HotSpare::new("failed-checkpoint")
        .region(a, 64 * PAGE_SIZE)
        .region(b, 16 * PAGE_SIZE)
        .strategy(strategy)
        .mode(Mode::Sync)
        .tracker(backend)
        .role(Role::Standalone)
        .link(LinkConfig::File {
            path: log.clone(),
            append: false,
        })
        .worker(move |ctx: &mut Context| -> WorkerResult<Vec<String>> {
            let mut wrong = Vec::new();
            // The first (full) checkpoint's fork child is gone: the next one may fork.
            ctx.flush()?;
            for (round, &step) in steps.iter().enumerate() {
                let value = round as u8 + 1;
                // Pages that only the failing checkpoint's scan sees written.
                ctx.region_mut(a)?.as_bytes_mut()[(round * 5) * PAGE_SIZE] = value;
                ctx.region_mut(b)?.as_bytes_mut()[round * PAGE_SIZE + 9] = value;
                fault::fail_next(step);
                match ctx.checkpoint() {
                    Err(HsError::Injected(s)) if s == step => {}
                    other => wrong.push(format!("{step:?}: the checkpoint gave {other:?}")),
                }
                // Pages written after the failure.
                ctx.region_mut(a)?.as_bytes_mut()[(round * 5 + 2) * PAGE_SIZE + 1] = value;
                let cp = ctx.checkpoint()?;
                ctx.flush()?;
                // After a failed scan the pages are unknown: only a full checkpoint is right;
                // otherwise the carried pages make an incremental one enough.
                if cp.full != (step == Step::Scan) || cp.strategy.is_none() {
                    wrong.push(format!("{step:?}: not the checkpoint expected: {cp:?}"));
                }
                if let Some(at) = image_differs(ctx, &log_in, &[a, b])? {
                    wrong.push(format!("{step:?}: the spare's image differs at {at}"));
                }
            }
            Ok(wrong)
        })
        .run()
        .expect("run");
    match outcome {
        Outcome::Finished { value, .. } => value
            .into_iter()
            .map(|w| format!("{strategy}/{backend}: {w}"))
            .collect(),
        other => vec![format!("the run ended as {other:?}")],
    }
}

#[test]
fn a_failed_copy_checkpoint_loses_no_page_with_uffd() {
    assert_eq!(
        failed_checkpoints(Strategy::Copy, Backend::Uffd),
        Vec::<String>::new()
    );
}

#[test]
fn a_failed_copy_checkpoint_loses_no_page_with_mprotect() {
    assert_eq!(
        failed_checkpoints(Strategy::Copy, Backend::Mprotect),
        Vec::<String>::new()
    );
}

#[test]
fn a_failed_copy_checkpoint_loses_no_page_with_full() {
    assert_eq!(
        failed_checkpoints(Strategy::Copy, Backend::Full),
        Vec::<String>::new()
    );
}

#[test]
fn a_failed_cbw_checkpoint_loses_no_page_with_uffd() {
    assert_eq!(
        failed_checkpoints(Strategy::Cbw, Backend::Uffd),
        Vec::<String>::new()
    );
}

#[test]
fn a_failed_cbw_checkpoint_loses_no_page_with_mprotect() {
    assert_eq!(
        failed_checkpoints(Strategy::Cbw, Backend::Mprotect),
        Vec::<String>::new()
    );
}

#[test]
fn a_failed_cbw_checkpoint_loses_no_page_with_full() {
    assert_eq!(
        failed_checkpoints(Strategy::Cbw, Backend::Full),
        Vec::<String>::new()
    );
}

#[test]
fn a_failed_fork_checkpoint_loses_no_page_with_uffd() {
    assert_eq!(
        failed_checkpoints(Strategy::Fork, Backend::Uffd),
        Vec::<String>::new()
    );
}

#[test]
fn a_failed_fork_checkpoint_loses_no_page_with_mprotect() {
    assert_eq!(
        failed_checkpoints(Strategy::Fork, Backend::Mprotect),
        Vec::<String>::new()
    );
}

#[test]
fn a_failed_fork_checkpoint_loses_no_page_with_full() {
    assert_eq!(
        failed_checkpoints(Strategy::Fork, Backend::Full),
        Vec::<String>::new()
    );
}

/// The resumed worker's root value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Counter {
    count: u64,
    other: u64,
}

/// What the resumed worker saw.
#[derive(Debug)]
struct Seen {
    counter: Counter,
    lost: Vec<hslib::LostConnection>,
    listener_answers: bool,
}

/// A standalone run hands a listener and a connected socket to the registry and places its
/// state as the region's root; a resume from its log finds the state with `root`, the
/// listener with `take` (listening on the same address), and the connection in
/// `lost_connections`; its worker's value comes back in the outcome.
#[test]
fn a_resumed_worker_gets_its_root_its_listener_and_its_lost_connections_back() {
    let _g = common::global_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("cpt.log");
    let region = common::fresh_id();
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let addr = listener.local_addr().expect("address");
    let client = TcpStream::connect(addr).expect("connect");
    let (peer, _) = listener.accept().expect("accept");
    let first = HotSpare::new("resumed")
        .region(region, PAGE_SIZE)
        .tracker(Backend::Full)
        .link(LinkConfig::File {
            path: log.clone(),
            append: false,
        })
        .init(move |ctx| {
            ctx.fds()
                .register_listener_owned("listener", listener, 16)?;
            ctx.fds().register_socket_owned("client", client)?;
            // Something before the root, so its offset is not the first one.
            ctx.region_mut(region)?.alloc(0xAAu8)?;
            ctx.place(region, Counter { count: 0, other: 7 })?;
            Ok(())
        })
        .worker(move |ctx| -> WorkerResult<u64> {
            let slot = ctx.root::<Counter>(region)?;
            ctx.get_mut(region, slot)?.count = 41;
            ctx.checkpoint()?;
            Ok(ctx.get(region, slot)?.count)
        })
        .run()
        .expect("first run");
    assert!(
        matches!(
            first,
            Outcome::Finished {
                value: 41,
                restored: None,
                ..
            }
        ),
        "{first:?}"
    );
    drop(peer);
    let resumed = HotSpare::new("resumed")
        .region(region, PAGE_SIZE)
        .tracker(Backend::Full)
        .role(Role::Resume(log.clone()))
        .worker(move |ctx| -> WorkerResult<Seen> {
            let counter = *ctx.get(region, ctx.root::<Counter>(region)?)?;
            let listener = TcpListener::from(ctx.fds().take("listener")?);
            let mut probe = TcpStream::connect(addr)?;
            let (mut served, _) = listener.accept()?;
            served.write_all(b"k")?;
            let mut one = [0u8; 1];
            probe.read_exact(&mut one)?;
            Ok(Seen {
                counter,
                lost: ctx.lost_connections().to_vec(),
                listener_answers: one == *b"k",
            })
        })
        .run()
        .expect("resume");
    let Outcome::Finished {
        value: seen,
        restored,
        ..
    } = resumed
    else {
        panic!("the resume ended as {resumed:?}");
    };
    assert!(restored.is_some());
    assert_eq!(
        seen.counter,
        Counter {
            count: 41,
            other: 7
        }
    );
    assert!(
        seen.listener_answers,
        "the restored listener did not answer"
    );
    assert_eq!(seen.lost.len(), 1, "{:?}", seen.lost);
    assert_eq!(seen.lost[0].name, "client");
    assert_eq!(seen.lost[0].peer, SocketName::Inet(addr));
}

/// The error `from_vars` gives for one variable set to `value`, the others unset.
fn config_error(var: &str, value: &str) -> Option<String> {
    let (var, value) = (var.to_owned(), OsString::from(value));
    HotSpare::new("env")
        .from_vars(move |name| (name == var).then(|| value.clone()))
        .err()
        .map(|e| e.to_string())
}

#[test]
fn an_epoch_of_zero_is_refused_naming_the_variable_and_value() {
    let msg = config_error("HS_EPOCH", "0").expect("HS_EPOCH=0 refused");
    assert!(msg.contains("HS_EPOCH") && msg.contains("\"0\""), "{msg}");
    let msg = config_error("HS_EPOCH", &u64::MAX.to_string()).expect("u64::MAX refused");
    assert!(msg.contains("HS_EPOCH"), "{msg}");
    assert_eq!(config_error("HS_EPOCH", "3"), None);
    let run = HotSpare::new("env").epoch(0).worker(|_| Ok(())).run();
    assert!(
        matches!(&run, Err(HsError::Config { what: "epoch", .. })),
        "{run:?}"
    );
}

#[test]
fn bad_values_are_refused_naming_the_variable_and_value() {
    for (var, value) in [
        ("HS_ROLE", "leader"),
        ("HS_TRANSPORT", "pigeon"),
        ("HS_MODE", "eventually"),
        ("HS_STRATEGY", "guess"),
        ("HS_TRACKER", "psychic"),
        ("HS_EPOCH", "-1"),
        ("HS_SOCKET_NAME", "../up"),
        ("HS_ACK_DEADLINE_MS", "0"),
        ("HS_ACK_DEADLINE_MS", "1s"),
        ("HS_HEARTBEAT_MS", "soon"),
        ("HS_SUSPECT_MS", "-5"),
        ("HS_SILENCE_FD", "stderr"),
        // A number no descriptor of this process holds.
        ("HS_SILENCE_FD", "987654"),
    ] {
        let mut value = value.to_owned();
        let vars: Vec<(&str, String)> = match var {
            "HS_SOCKET_NAME" => vec![("HS_TRANSPORT", "unix".to_owned())],
            _ => vec![],
        };
        let (v, val) = (var.to_owned(), std::mem::take(&mut value));
        let msg = HotSpare::new("env")
            .from_vars(move |name| {
                if name == v {
                    return Some(OsString::from(&val));
                }
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, x)| OsString::from(x))
            })
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| panic!("{var} accepted a bad value"));
        assert!(msg.contains(var), "{msg}");
    }
    let not_utf8: OsString = std::os::unix::ffi::OsStringExt::from_vec(vec![0xff]);
    let msg = HotSpare::new("env")
        .from_vars(move |name| (name == "HS_MODE").then(|| not_utf8.clone()))
        .err()
        .map(|e| e.to_string())
        .expect("non-UTF-8 refused");
    assert!(msg.contains("HS_MODE") && msg.contains("UTF-8"), "{msg}");
    // The hang detection's good values pass.
    for (var, value) in [
        ("HS_ACK_DEADLINE_MS", "250"),
        ("HS_HEARTBEAT_MS", "20"),
        ("HS_SUSPECT_MS", "150"),
        ("HS_SILENCE_FD", "2"),
    ] {
        assert_eq!(config_error(var, value), None, "{var}={value}");
    }
}

const VARS: [&str; 12] = [
    "HS_ROLE",
    "HS_TRANSPORT",
    "HS_SOCKET_DIR",
    "HS_SOCKET_NAME",
    "HS_TCP_ADDR",
    "HS_KEY",
    "HS_LOG_FILE",
    "HS_EPOCH",
    "HS_MODE",
    "HS_STRATEGY",
    "HS_TRACKER",
    "HS_NOTHING",
];

proptest! {
    /// Any value of any variable, with the transports that read the others, is accepted or
    /// refused with an error naming a variable: never a panic.
    #[test]
    fn no_environment_makes_from_env_panic(
        values in proptest::collection::vec(
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            VARS.len(),
        ),
        transport in prop_oneof![
            Just("unix"), Just("tcp"), Just("file"), Just("null"), Just("")
        ],
    ) {
        let mut env: Vec<(&str, OsString)> = VARS
            .iter()
            .zip(&values)
            .filter_map(|(k, v)| {
                v.as_ref().map(|v| (*k, std::os::unix::ffi::OsStringExt::from_vec(v.clone())))
            })
            .collect();
        if !transport.is_empty() && values[1].is_none() {
            env.push(("HS_TRANSPORT", OsString::from(transport)));
        }
        let got = HotSpare::new("env").from_vars(|name| {
            env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
        });
        if let Err(e) = got {
            let msg = e.to_string();
            prop_assert!(VARS.iter().any(|v| msg.contains(v)), "{}", msg);
        }
    }
}
