//! The ack reader: one thread per session with a spare, reading its commit acks.

use std::sync::atomic::Ordering;

use super::Shared;
use crate::sys::process;
use crate::transport::Endpoint;
use crate::wire::{AckReader, Acked};

pub(super) fn read_acks(
    mut ep: Box<dyn Endpoint>,
    mut acks: AckReader,
    shared: &Shared,
    generation: u64,
) {
    if let Err(e) = process::batch_this_thread() {
        tracing::debug!(error = %e, "SCHED_BATCH for the ack reader refused");
    }
    loop {
        match acks.expect(&mut ep, Acked::Commit, None) {
            Ok(ack) => {
                let mut p = shared.lock();
                p.acked = p.acked.max(ack.checkpoint);
                drop(p);
                shared.changed.notify_all();
            }
            Err(e) => {
                tracing::info!(generation, error = %e, "the spare's ack stream ended");
                let p = shared.lock();
                if shared.generation.load(Ordering::Acquire) == generation {
                    shared.live.store(false, Ordering::Release);
                }
                drop(p);
                shared.changed.notify_all();
                return;
            }
        }
    }
}
