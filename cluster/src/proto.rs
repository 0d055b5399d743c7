//! The messages between the user's client and a host's agent, and their framing.
//!
//! The client holds the numbered key log and the terminal; the agent holds its game. Every
//! message from an agent names the epoch of the game it speaks for, so the client's
//! [`crate::fence::Fence`] can refuse a deposed primary. Keys carry their offset in the log,
//! so an agent writes each byte to its game once, in order, and a promoted game gets exactly
//! the bytes its state has not accounted for.
//!
//! A frame is `len: u32 LE | crc32c(body): u32 LE | body`, the body a postcard-encoded
//! [`ToAgent`] or [`ToClient`]; at most [`MAX_FRAME`] bytes. The connection is authenticated
//! before the first frame (the shared key, as hslib's TCP transport does).
//!
//! **The relay's hold.** Every heartbeat carries a stamp of the agent's clock and the client
//! echoes it at once ([`ToAgent::Echo`]). An agent relays its game's output to a client, and
//! the key log to its game, only while the freshest echo of every client it serves is
//! younger than a grace of two thirds of that client's suspicion window (named in its
//! hello). A client suspects its leader only after hearing nothing from it for the whole
//! window, and it heard the echoed heartbeat, so a primary that lost its client stops
//! relaying before the client's suspicion exists, and so before any heir can lead on it:
//! the old primary's game gets no input and shows nothing once the fast path may move the
//! lead.

use std::io::{Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::coordinator::Epoch;

/// The largest frame body.
pub const MAX_FRAME: usize = 1 << 20;

/// From the client to an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToAgent {
    /// The first frame: which session, and the highest epoch the client has seen.
    Hello {
        /// The session.
        session: String,
        /// The client's fence.
        epoch: Epoch,
        /// The client suspects a leader it has heard nothing from for this long (the agent
        /// holds its relay to the client after two thirds of it without an echo).
        suspect_ms: u32,
    },
    /// The echo of a heartbeat's `stamp`, sent as soon as the heartbeat is read.
    Echo {
        /// The heartbeat's stamp.
        stamp: u64,
    },
    /// Key-log bytes `offset..offset + bytes.len()`.
    Keys {
        /// Offset of the first byte in the key log.
        offset: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The user's terminal changed size.
    Resize {
        /// Rows for the game (the status row excluded).
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// SIGKILL this agent's game (the axe key).
    Axe,
    /// A signal for the game (^C, ^Z...) by number.
    Signal(i32),
    /// The key log ends at `offset` (a headless script's end): once the game has every byte
    /// before it, its input is closed, and a headless game prints its result and ends.
    EndInput {
        /// The key log's length.
        offset: u64,
    },
}

/// From an agent to the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToClient {
    /// The answer to hello: this agent's game leads `epoch` and has accounted for `position`
    /// bytes of the key log (the client sends from there).
    Leading {
        /// The game's epoch.
        epoch: Epoch,
        /// The node.
        node: String,
        /// Key-log bytes its state accounts for.
        position: u64,
    },
    /// This agent's game does not lead (any more): the client looks elsewhere.
    NotLeading {
        /// The highest epoch this agent knows of.
        epoch: Epoch,
    },
    /// What the game drew.
    Output {
        /// The game's epoch.
        epoch: Epoch,
        /// Terminal bytes.
        bytes: Vec<u8>,
    },
    /// Liveness, every 25 ms, with how much of the log the game has accounted for.
    Heartbeat {
        /// The game's epoch.
        epoch: Epoch,
        /// The agent's clock (CLOCK_MONOTONIC microseconds) when it sent this: the client
        /// echoes it.
        stamp: u64,
        /// Key-log bytes accounted for.
        position: u64,
        /// Whether a spare holds a checkpoint of this game (a scripted client gives keys only
        /// while one does, so a death always finds a spare that can take over).
        spare_synced: bool,
    },
    /// The game ended.
    Ended {
        /// The game's epoch.
        epoch: Epoch,
        /// On purpose (quit, game over) rather than killed.
        finished: bool,
        /// What it printed last (a headless game's result line).
        output: Vec<u8>,
    },
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed or ended.
    #[error("the connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// A length over the limit.
    #[error("a frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLong(usize),
    /// The checksum did not match.
    #[error("a frame's checksum does not match (crc {found:#010x}, expected {expected:#010x})")]
    Checksum {
        /// As received.
        found: u32,
        /// As computed.
        expected: u32,
    },
    /// The body did not decode.
    #[error("a frame did not decode: {0}")]
    Decode(#[from] postcard::Error),
}

/// Writes one message as a frame.
pub fn write_frame<T: Serialize>(out: &mut impl Write, msg: &T) -> Result<(), FrameError> {
    let body = postcard::to_stdvec(msg)?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLong(body.len()));
    }
    let mut frame = Vec::with_capacity(8 + body.len());
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    frame.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    frame.extend_from_slice(&body);
    out.write_all(&frame)?;
    Ok(())
}

/// Reads one frame and decodes its message.
pub fn read_frame<T: DeserializeOwned>(input: &mut impl Read) -> Result<T, FrameError> {
    let mut head = [0u8; 8];
    input.read_exact(&mut head)?;
    let [l0, l1, l2, l3, c0, c1, c2, c3] = head;
    let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLong(len));
    }
    let found = u32::from_le_bytes([c0, c1, c2, c3]);
    let mut body = vec![0u8; len];
    input.read_exact(&mut body)?;
    let expected = crc32c::crc32c(&body);
    if found != expected {
        return Err(FrameError::Checksum { found, expected });
    }
    Ok(postcard::from_bytes(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_the_frame_round_trip() {
        let msgs = [
            ToClient::Leading {
                epoch: 7,
                node: "a".into(),
                position: 42,
            },
            ToClient::Output {
                epoch: 7,
                bytes: b"\x1b[H".to_vec(),
            },
            ToClient::Ended {
                epoch: 9,
                finished: true,
                output: b"{}\n".to_vec(),
            },
        ];
        let mut buf = Vec::new();
        for m in &msgs {
            write_frame(&mut buf, m).unwrap_or_else(|e| panic!("{e}"));
        }
        let mut r = &buf[..];
        for m in &msgs {
            let got: ToClient = read_frame(&mut r).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&got, m);
        }
        assert!(matches!(
            read_frame::<ToClient>(&mut r),
            Err(FrameError::Io(_))
        ));
    }

    #[test]
    fn a_flipped_bit_or_an_oversized_length_is_refused() {
        let mut buf = Vec::new();
        write_frame(
            &mut buf,
            &ToAgent::Keys {
                offset: 3,
                bytes: b"jkl".to_vec(),
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        for i in 8..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            assert!(
                matches!(
                    read_frame::<ToAgent>(&mut &bad[..]),
                    Err(FrameError::Checksum { .. })
                ),
                "byte {i}"
            );
        }
        let mut long = buf.clone();
        long[..4].copy_from_slice(&(MAX_FRAME as u32 + 1).to_le_bytes());
        assert!(matches!(
            read_frame::<ToAgent>(&mut &long[..]),
            Err(FrameError::TooLong(_))
        ));
    }
}
