//! A checkpoint log: the stream written to a file, from which a replica can be rebuilt later.
//! Reading it back replays up to the last complete commit; a torn tail (a writer killed
//! mid-frame) is ignored by the replay and cut off before anything is appended after it.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Endpoint, TransportError};
use crate::replica::{Replica, ReplicaConfig, StreamEnd};
use crate::wire::{self, Acked, WireError};

/// A checkpoint log file.
#[derive(Debug)]
pub struct FileLog {
    file: File,
    path: PathBuf,
}

fn path_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TransportError {
    let path = path.to_owned();
    move |source| TransportError::Path { what, path, source }
}

impl FileLog {
    /// A new, empty log (an existing file is truncated), readable only by this user.
    pub fn create(path: &Path) -> Result<Self, TransportError> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(path_err("creating log", path))?;
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    /// Opens a log for appending a new session (which starts with a hello), creating it if
    /// missing; a torn tail after the last complete checkpoint is cut off first, so the new
    /// frames follow a frame boundary. A log that does not replay is refused, not cut. `config` bounds the replay that finds it.
    pub fn append(path: &Path, config: ReplicaConfig) -> Result<Self, TransportError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(path_err("opening log", path))?;
        let keep = committed_len(&mut file, path, config)?;
        file.set_len(keep)
            .map_err(path_err("truncating log", path))?;
        file.seek(SeekFrom::Start(keep))
            .map_err(path_err("seeking log", path))?;
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    /// Opens a log for reading from its start.
    pub fn open(path: &Path) -> Result<Self, TransportError> {
        let file = File::open(path).map_err(path_err("opening log", path))?;
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the written frames durable (`fsync`).
    pub fn sync(&self) -> Result<(), TransportError> {
        self.file
            .sync_data()
            .map_err(path_err("syncing log", &self.path))
    }
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// The length of the prefix of the log up to its last complete commit. A torn or corrupt
/// tail (a frame that does not read back) is what gets cut; a read error, or frames that read
/// back but that a replica refuses, are errors: cutting there could destroy good checkpoints.
fn committed_len(
    file: &mut File,
    path: &Path,
    config: ReplicaConfig,
) -> Result<u64, TransportError> {
    let mut r = Counting {
        inner: BufReader::new(&mut *file),
        read: 0,
    };
    let mut replica = Replica::new(config);
    let mut keep = 0;
    let refused = |source| TransportError::Log {
        path: path.to_owned(),
        source,
    };
    loop {
        let frame = match wire::read_frame(&mut r) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(keep),
            Err(e @ WireError::Io(_)) => return Err(refused(e.into())),
            // The torn tail of a writer that died mid-frame.
            Err(_) => return Ok(keep),
        };
        match replica.accept(frame) {
            Ok(Some(ack)) if ack.acked == Acked::Commit => keep = r.read,
            Ok(_) => {}
            Err(e) => return Err(refused(e)),
        }
    }
}

/// Rebuilds a replica from the log at `path`: the result holds the last checkpoint the log
/// completed, and the [`StreamEnd`] says how the log ended (a torn tail is an error there,
/// not here).
pub fn rebuild(path: &Path, config: ReplicaConfig) -> Result<(Replica, StreamEnd), TransportError> {
    let file = File::open(path).map_err(path_err("opening log", path))?;
    let mut replica = Replica::new(config);
    let end = replica.replay(&mut BufReader::new(file));
    Ok((replica, end))
}

impl Read for FileLog {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Write for FileLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.file.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Endpoint for FileLog {
    fn describe(&self) -> String {
        format!("file:{}", self.path.display())
    }

    fn set_read_timeout(&self, _timeout: Option<Duration>) -> io::Result<()> {
        // Reads of a regular file never block on a peer.
        Ok(())
    }

    fn try_clone_endpoint(&self) -> io::Result<Box<dyn Endpoint>> {
        Ok(Box::new(Self {
            file: self.file.try_clone()?,
            path: self.path.clone(),
        }))
    }

    fn shutdown(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn as_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        Some(std::os::fd::AsFd::as_fd(&self.file))
    }

    fn acks(&self) -> bool {
        false
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}
