//! How the game loop is reached: what arrives in its inbox ([`Inbound`]), the self-pipe that
//! wakes its `poll` ([`Waker`]), and the control thread's handle on it ([`Mailbox`]).

use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc::Sender;

use anyhow::Context as _;
use hotspare_cluster::proto::ToAgent;
use nix::fcntl::OFlag;

use super::Order;

/// What reaches the game loop.
#[derive(Debug)]
pub enum Inbound {
    /// From the control thread.
    Order(Order),
    /// A client authenticated; the loop writes to it on `stream`.
    Connected {
        /// The connection's number.
        id: u64,
        /// Its write half.
        stream: TcpStream,
    },
    /// A client's frame.
    Frame {
        /// The connection.
        id: u64,
        /// The message.
        msg: ToAgent,
    },
    /// A client's connection ended.
    Gone {
        /// The connection.
        id: u64,
        /// Why.
        why: String,
    },
}

/// Wakes the game loop's `poll` (a non-blocking self-pipe); cheap to clone.
#[derive(Clone, Debug)]
pub struct Waker {
    /// The end the loop polls.
    pub read: Arc<OwnedFd>,
    write: Arc<OwnedFd>,
}

impl Waker {
    /// A new self-pipe.
    pub fn new() -> anyhow::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .context("cannot create the game loop's wake-up pipe")?;
        Ok(Self {
            read: Arc::new(read),
            write: Arc::new(write),
        })
    }

    /// Wakes the loop (a full pipe already holds a wake-up).
    pub fn wake(&self) {
        let _ = nix::unistd::write(self.write.as_fd(), &[1]);
    }

    /// Empties the pipe (the loop is awake).
    pub fn drain(&self) {
        let mut buf = [0u8; 256];
        while matches!(nix::unistd::read(self.read.as_fd(), &mut buf), Ok(n) if n > 0) {}
    }
}

/// The control thread's way to the game loop.
#[derive(Debug)]
pub struct Mailbox {
    tx: Sender<Inbound>,
    waker: Waker,
}

impl Mailbox {
    /// A mailbox sending on `tx` and waking with `waker`.
    pub fn new(tx: Sender<Inbound>, waker: Waker) -> Self {
        Self { tx, waker }
    }

    /// Gives the loop an order.
    pub fn send(&self, order: Order) -> anyhow::Result<()> {
        self.tx
            .send(Inbound::Order(order))
            .map_err(|_| anyhow::anyhow!("the agent's game loop has stopped"))?;
        self.waker.wake();
        Ok(())
    }
}
