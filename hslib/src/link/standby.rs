//! A thread started before it is needed, idle until it is given its one job: a spare starts
//! the thread that will be its link's sender (and opens the listener) while it waits for its
//! primary, so a promoted spare starts no thread on the way to its worker; an application
//! may keep one for a thread of its own (a status reporter) the same way.

use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;

use super::{LinkError, spawn};

type Job = Box<dyn FnOnce() + Send>;

/// A thread waiting for its job ([`Standby::run`]); dropped unused, it ends.
#[derive(Debug)]
pub struct Standby {
    name: &'static str,
    job: Sender<Job>,
    thread: JoinHandle<()>,
}

impl Standby {
    /// Starts the thread `name` (the name it keeps when it runs its job).
    pub fn start(name: &'static str) -> Result<Self, LinkError> {
        let (job, waiting) = mpsc::channel::<Job>();
        let thread = spawn(name, move || {
            if let Ok(job) = waiting.recv() {
                job();
            }
        })?;
        Ok(Self { name, job, thread })
    }

    /// Runs `f` on the waiting thread (or, if that thread is gone, on a new one) and
    /// returns the thread's handle.
    pub fn run<F: FnOnce() + Send + 'static>(self, f: F) -> Result<JoinHandle<()>, LinkError> {
        match self.job.send(Box::new(f)) {
            Ok(()) => Ok(self.thread),
            Err(mpsc::SendError(f)) => {
                tracing::warn!(
                    thread = self.name,
                    "the standby thread is gone; starting a new one"
                );
                spawn(self.name, f)
            }
        }
    }
}
