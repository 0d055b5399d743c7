//! Signal handlers registered through the library (the paper's `hs_sigreg`).
//!
//! A handler's address means nothing to another process, so handlers are known by name: the
//! application defines the same name -> handler table in every process of its binary
//! ([`SignalRegistry::define`]), registers `(signal, name, flags)` to install a handler now
//! ([`SignalRegistry::register`]), and the metadata record carries `(signal, name, flags,
//! mask)`. On promotion, [`SignalRegistry::restore`] looks each name up in the spare's table
//! and installs the handler again.
//!
//! Handlers run on whatever the process was doing when the signal arrived: they must be
//! async-signal-safe (no allocation, no locks, no `println!`; atomics and raw `write(2)` are
//! fine). That is the application's job, which is why [`SignalRegistry::define`] is unsafe.

use std::collections::BTreeMap;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::sys::signal::{self as syssig, Entry};

/// The longest handler name.
pub const MAX_NAME_LEN: usize = 255;

/// A handler function, as the application defines it.
#[derive(Debug, Clone, Copy)]
pub struct Handler(Entry);

impl Handler {
    /// A `void handler(int)`.
    pub fn plain(f: extern "C" fn(libc::c_int)) -> Self {
        Self(Entry::Plain(f))
    }

    /// A `void handler(int, siginfo_t *, void *)`, installed with `SA_SIGINFO`.
    pub fn with_info(
        f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void),
    ) -> Self {
        Self(Entry::Info(f))
    }
}

/// The `sigaction` flags a registration may ask for (`SA_SIGINFO` follows from the handler).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalFlags {
    /// `SA_RESTART`: restart interrupted system calls.
    pub restart: bool,
    /// `SA_NODEFER`: do not block the signal while its handler runs.
    pub no_defer: bool,
    /// `SA_RESETHAND`: reset to the default action when the handler is entered.
    pub reset_hand: bool,
    /// `SA_ONSTACK`: run on the alternate signal stack.
    pub on_stack: bool,
}

impl SignalFlags {
    /// The `sa_flags` bits.
    pub fn bits(self) -> libc::c_int {
        let mut bits = 0;
        for (on, bit) in [
            (self.restart, libc::SA_RESTART),
            (self.no_defer, libc::SA_NODEFER),
            (self.reset_hand, libc::SA_RESETHAND),
            (self.on_stack, libc::SA_ONSTACK),
        ] {
            if on {
                bits |= bit;
            }
        }
        bits
    }
}

/// One registered handler, as the metadata record carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalRecord {
    /// The signal number.
    pub signal: i32,
    /// The name the handler is defined under.
    pub handler: String,
    /// The flags it was installed with.
    pub flags: SignalFlags,
    /// The signals blocked while it runs (besides the signal itself, unless `no_defer`).
    pub mask: Vec<i32>,
}

/// What went wrong registering or restoring a signal handler.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// No handler is defined under the name in this process.
    #[error("signal {signal}: no handler named {name:?} is defined in this process")]
    UnknownHandler {
        /// The signal number.
        signal: i32,
        /// The name.
        name: String,
    },
    /// A handler is defined under the name already.
    #[error("a handler is defined as {name:?} already")]
    DuplicateHandler {
        /// The name.
        name: String,
    },
    /// The name is empty or too long.
    #[error("handler names are 1 to {MAX_NAME_LEN} bytes, not {len}")]
    BadName {
        /// The name's length.
        len: usize,
    },
    /// The signal cannot carry an application handler: SIGKILL and SIGSTOP cannot be caught,
    /// and hslib's write tracking owns SIGSEGV and SIGBUS.
    #[error("signal {signal}: handlers for it cannot be registered (reserved)")]
    Reserved {
        /// The signal number.
        signal: i32,
    },
    /// A number in a record is not a signal.
    #[error("{signal} is not a signal number")]
    BadSignal {
        /// The number.
        signal: i32,
    },
    /// `sigaction` failed.
    #[error("signal {signal}: installing handler {name:?} failed: {errno}")]
    Install {
        /// The signal number.
        signal: i32,
        /// The handler's name.
        name: String,
        /// The OS error.
        errno: std::io::Error,
    },
}

/// The name -> handler table and the handlers installed through it.
#[derive(Debug, Default, Clone)]
pub struct SignalRegistry {
    table: BTreeMap<String, Handler>,
    records: Vec<SignalRecord>,
}

impl SignalRegistry {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Defines `handler` under `name`. Every process of the binary (primary and spare)
    /// defines the same names; a name is defined once.
    ///
    /// # Safety
    /// `handler` must be async-signal-safe: it may interrupt the process anywhere, including
    /// inside the allocator or while a lock is held.
    pub unsafe fn define(&mut self, name: &str, handler: Handler) -> Result<(), SignalError> {
        check_name(name)?;
        if self.table.contains_key(name) {
            return Err(SignalError::DuplicateHandler {
                name: name.to_owned(),
            });
        }
        self.table.insert(name.to_owned(), handler);
        Ok(())
    }

    /// `hs_sigreg`: installs the handler defined as `name` for `signal` now, with `flags` and
    /// `mask` blocked while it runs, and records it for the metadata. Replaces an earlier
    /// registration for the same signal.
    #[doc(alias = "hs_sigreg")]
    pub fn register(
        &mut self,
        signal: Signal,
        name: &str,
        flags: SignalFlags,
        mask: &[Signal],
    ) -> Result<(), SignalError> {
        let record = SignalRecord {
            signal: signal as i32,
            handler: name.to_owned(),
            flags,
            mask: mask.iter().map(|&s| s as i32).collect(),
        };
        self.install(&record)?;
        match self.records.iter_mut().find(|r| r.signal == record.signal) {
            Some(r) => *r = record,
            None => self.records.push(record),
        }
        Ok(())
    }

    /// The registered handlers, for the metadata record.
    pub fn records(&self) -> &[SignalRecord] {
        &self.records
    }

    /// Checks that every record names a defined handler and a signal that may be handled,
    /// without installing anything.
    pub fn check(&self, records: &[SignalRecord]) -> Result<(), SignalError> {
        for r in records {
            self.lookup(r)?;
        }
        Ok(())
    }

    /// Reinstalls the handlers of `records` (from a checkpoint) by name. Every record is
    /// checked first, so an unknown name installs nothing. Afterwards this registry's
    /// records are `records`.
    pub fn restore(&mut self, records: &[SignalRecord]) -> Result<(), SignalError> {
        self.check(records)?;
        for r in records {
            self.install(r)?;
        }
        self.records = records.to_vec();
        Ok(())
    }

    fn lookup(&self, r: &SignalRecord) -> Result<Handler, SignalError> {
        let signal =
            Signal::try_from(r.signal).map_err(|_| SignalError::BadSignal { signal: r.signal })?;
        if matches!(
            signal,
            Signal::SIGKILL | Signal::SIGSTOP | Signal::SIGSEGV | Signal::SIGBUS
        ) {
            return Err(SignalError::Reserved { signal: r.signal });
        }
        for &m in &r.mask {
            Signal::try_from(m).map_err(|_| SignalError::BadSignal { signal: m })?;
        }
        self.table
            .get(&r.handler)
            .copied()
            .ok_or_else(|| SignalError::UnknownHandler {
                signal: r.signal,
                name: r.handler.clone(),
            })
    }

    fn install(&self, r: &SignalRecord) -> Result<(), SignalError> {
        let Handler(entry) = self.lookup(r)?;
        // SAFETY: handlers enter the table only through `define`, whose caller promised
        // they are async-signal-safe.
        unsafe { syssig::install(r.signal, entry, r.flags.bits(), &r.mask) }.map_err(|errno| {
            SignalError::Install {
                signal: r.signal,
                name: r.handler.clone(),
                errno: errno.into(),
            }
        })
    }
}

fn check_name(name: &str) -> Result<(), SignalError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(SignalError::BadName { len: name.len() });
    }
    Ok(())
}
