//! The spare's watch on its primary's silence: its reads of the stream wake up every so often
//! (a socket read never blocks without limit), and when nothing at all has arrived for the
//! suspect time ([`DEFAULT_SUSPECT`], 300 ms, or [`ENV_SUSPECT_MS`]) the spare says so, once,
//! on the report descriptor its supervisor gave it ([`ENV_SILENCE_FD`]): one line
//! `{"silent_ms":N}`; when the stream speaks again, one line `{"heard":true}`. An idle primary
//! sends heartbeats (every 100 ms by default), so silence means a stopped or cut-off primary.
//! The same descriptor also gets `{"holding":C,"epoch":E}` each time the spare first holds a
//! whole checkpoint in a new stream session (C its number, E the primary's epoch): from then on
//! the spare can take over (a cluster agent campaigns only for a spare that said so). Every
//! line is one JSON object on one line.
//!
//! Silence is only reported: a spare takes over when its stream *ends*, never because it is
//! silent (a stopped primary must be killed by its supervisor first, or it would come back
//! beside its successor).

use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::sys;

/// The environment variable that names the descriptor the silence report is written to.
pub const ENV_SILENCE_FD: &str = "HS_SILENCE_FD";
/// The environment variable that sets the suspect time in milliseconds.
pub const ENV_SUSPECT_MS: &str = "HS_SUSPECT_MS";
/// How long a spare hears nothing from its primary before it reports the silence.
pub const DEFAULT_SUSPECT: Duration = Duration::from_millis(300);

/// Watches the time since anything arrived from the primary.
#[derive(Debug)]
pub struct SilenceWatch {
    suspect: Duration,
    report: Option<RawFd>,
    last: Instant,
    silent: bool,
}

impl SilenceWatch {
    /// A watch that reports silences of `suspect` or more on descriptor `report` (if any; the
    /// log notes them either way).
    pub fn new(suspect: Duration, report: Option<RawFd>) -> Self {
        Self {
            suspect,
            report,
            last: Instant::now(),
            silent: false,
        }
    }

    /// How long one read may block: a fraction of the suspect time, so a silence is noticed
    /// within about a fifth of it.
    pub fn tick(&self) -> Duration {
        (self.suspect / 5).clamp(Duration::from_millis(1), Duration::from_millis(100))
    }

    /// Whether the primary is silent now (reported and not heard since).
    pub fn is_silent(&self) -> bool {
        self.silent
    }

    /// When anything last arrived.
    pub fn last_heard(&self) -> Instant {
        self.last
    }

    /// Bytes arrived.
    fn heard(&mut self) {
        self.last = Instant::now();
        if self.silent {
            self.silent = false;
            tracing::info!("the primary is heard again");
            self.write(b"{\"heard\":true}\n");
        }
    }

    /// The spare holds checkpoint `checkpoint` of the session of epoch `epoch`, its first
    /// whole one in that session: says so on the report descriptor.
    pub fn holding(&mut self, checkpoint: u64, epoch: u64) {
        tracing::info!(
            checkpoint,
            epoch,
            "holding a whole checkpoint of the session"
        );
        self.write(format!("{{\"holding\":{checkpoint},\"epoch\":{epoch}}}\n").as_bytes());
    }

    /// A read timed out: report the silence once it reaches the suspect time.
    fn quiet(&mut self) {
        let silent_for = self.last.elapsed();
        if self.silent || silent_for < self.suspect {
            return;
        }
        self.silent = true;
        let ms = silent_for.as_millis();
        tracing::warn!(silent_ms = ms as u64, "nothing heard from the primary");
        self.write(format!("{{\"silent_ms\":{ms}}}\n").as_bytes());
    }

    fn write(&mut self, line: &[u8]) {
        if let Some(fd) = self.report
            && let Err(e) = sys::fd::write_all_raw(fd, line)
        {
            tracing::warn!(fd, error = %e, "writing the silence report failed; not reporting any more");
            self.report = None;
        }
    }
}

/// A stream whose reads go through a [`SilenceWatch`]: a read that times out is retried after
/// the watch had a look, so bytes are never lost to a timeout in the middle of a frame.
#[derive(Debug)]
pub struct Watched<'a, S> {
    inner: &'a mut S,
    watch: &'a mut SilenceWatch,
}

impl<'a, S> Watched<'a, S> {
    /// `inner`, watched by `watch` (its read timeout should be [`SilenceWatch::tick`]).
    pub fn new(inner: &'a mut S, watch: &'a mut SilenceWatch) -> Self {
        Self { inner, watch }
    }

    /// The watch.
    pub fn watch(&mut self) -> &mut SilenceWatch {
        self.watch
    }
}

impl<S: Read> Read for Watched<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Ok(n) => {
                    if n > 0 {
                        self.watch.heard();
                    }
                    return Ok(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    self.watch.quiet();
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl<S: Write> Write for Watched<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.inner.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
