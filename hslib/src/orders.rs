//! A cluster spare's orders: with [`ENV_PROMOTE_FD`] set, a spare never takes over on its
//! own. Its supervisor (the cluster agent, which won the election) writes one line on that
//! descriptor:
//!
//! - `promote <EPOCH>\n`: stop reading the stream, even if it is still open, and run as the
//!   primary of exactly that epoch (refused when the epoch is not above every epoch the spare
//!   saw, or when it holds no whole checkpoint);
//! - end of file before any order: the supervisor let the spare go; it ends without taking
//!   over (exit status 0 for the game).
//!
//! Anything else (another word, a number that is not one, a line without its newline) is a
//! refused order. A small thread reads the descriptor; when a line (or the end of file)
//! arrives it shuts down the stream the spare is reading at that moment, so the spare's read
//! loop ends at once, keeping the last whole checkpoint. The spare arms the cut for each new
//! stream under the same lock the thread takes, so an order that arrives between two streams
//! is seen before the next one is read: no order is lost or late.

use std::os::fd::RawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::sys;
use crate::transport::Endpoint;

/// The environment variable naming the descriptor a spare reads its orders from.
pub const ENV_PROMOTE_FD: &str = "HS_PROMOTE_FD";

/// The longest order line read; a longer one is refused (an order is ~30 bytes).
const MAX_LINE: usize = 256;

/// What the supervisor said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    /// `promote <EPOCH>`.
    Promote(u64),
    /// End of file before any order: the spare is let go.
    Dismissed,
    /// Something that is not an order (the line as read, lossily).
    Junk(String),
    /// Reading the descriptor failed.
    Failed(String),
}

impl Order {
    /// Parses one line (without its newline).
    pub fn parse(line: &[u8]) -> Order {
        let text = String::from_utf8_lossy(line);
        let Some(epoch) = text.strip_prefix("promote ") else {
            return Order::Junk(text.into_owned());
        };
        let digits = !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_digit());
        match epoch.parse::<u64>() {
            Ok(e) if digits => Order::Promote(e),
            _ => Order::Junk(text.into_owned()),
        }
    }
}

#[derive(Default)]
struct State {
    /// The order, once it arrived.
    order: Option<Order>,
    /// A second handle on the stream being read, shut down when the order arrives.
    stream: Option<Box<dyn Endpoint>>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    arrived: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The spare's side of the order descriptor.
pub struct Orders {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Orders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orders")
            .field("order", &self.shared.lock().order)
            .finish_non_exhaustive()
    }
}

impl Orders {
    /// Starts the thread that reads one order from descriptor `fd`.
    pub fn start(fd: RawFd) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let theirs = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("hs-orders".to_owned())
            .spawn(move || {
                let order = read_order(fd);
                tracing::info!(fd, ?order, "the supervisor's order arrived");
                let mut state = theirs.lock();
                state.order = Some(order);
                if let Some(stream) = state.stream.take()
                    && let Err(e) = stream.shutdown()
                {
                    tracing::warn!(error = %e, "shutting the stream down for the order failed");
                }
                drop(state);
                theirs.arrived.notify_all();
            })?;
        Ok(Self { shared })
    }

    /// Arms the cut for the stream `ep` is about to read: the order shuts it down. Returns
    /// `false` (and arms nothing) when the order is in already: do not read the stream.
    pub fn watch_stream(&self, ep: &dyn Endpoint) -> std::io::Result<bool> {
        let mut state = self.shared.lock();
        if state.order.is_some() {
            return Ok(false);
        }
        state.stream = Some(ep.try_clone_endpoint()?);
        Ok(true)
    }

    /// The stream ended: forget it.
    pub fn unwatch(&self) {
        self.shared.lock().stream = None;
    }

    /// Whether the order (or the end of file) arrived.
    pub fn arrived(&self) -> bool {
        self.shared.lock().order.is_some()
    }

    /// Waits for the order.
    pub fn wait(&self) -> Order {
        let mut state = self.shared.lock();
        loop {
            if let Some(order) = &state.order {
                return order.clone();
            }
            state = self
                .shared
                .arrived
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// Reads one line from `fd` (or its end).
fn read_order(fd: RawFd) -> Order {
    let mut line = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    loop {
        let n = match sys::fd::read_raw(fd, &mut buf) {
            Ok(n) => n,
            Err(e) => return Order::Failed(format!("reading descriptor {fd} failed: {e}")),
        };
        if n == 0 {
            return if line.is_empty() {
                Order::Dismissed
            } else {
                Order::Junk(format!(
                    "{} (no newline before the end of file)",
                    String::from_utf8_lossy(&line)
                ))
            };
        }
        let got = &buf[..n];
        if let Some(end) = got.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&got[..end]);
            return Order::parse(&line);
        }
        line.extend_from_slice(got);
        if line.len() > MAX_LINE {
            return Order::Junk(format!(
                "{}... (a line longer than {MAX_LINE} bytes)",
                String::from_utf8_lossy(&line[..32])
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_promote_and_a_decimal_epoch_is_an_order() {
        assert_eq!(Order::parse(b"promote 7"), Order::Promote(7));
        assert_eq!(
            Order::parse(b"promote 18446744073709551615"),
            Order::Promote(u64::MAX)
        );
        for junk in [
            &b"promote"[..],
            b"promote ",
            b"promote +7",
            b"promote -1",
            b"promote 7 ",
            b"promote 18446744073709551616",
            b"Promote 7",
            b"stop",
            b"",
        ] {
            assert!(
                matches!(Order::parse(junk), Order::Junk(_)),
                "{:?}",
                String::from_utf8_lossy(junk)
            );
        }
    }
}
