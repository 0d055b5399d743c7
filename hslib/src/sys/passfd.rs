//! Passing a descriptor over a Unix stream socket (`SCM_RIGHTS`), attached to one byte.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// Sends `byte` on `sock` with `fd` attached. The byte arrives alone: a stream read stops
/// after the data that carries descriptors.
pub fn send_fd(sock: BorrowedFd<'_>, byte: u8, fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let data = [byte];
    let fds = [fd.as_raw_fd()];
    loop {
        match sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(&data)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(1) => return Ok(()),
            Ok(_) => return Err(Errno::EPIPE),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads at most `buf.len()` bytes from `sock` (as `read(2)` would: blocking, with the
/// socket's timeout), and the descriptors attached to them, close-on-exec. Returns the bytes
/// read and the first descriptor received; any other is closed.
pub fn recv_with_fd(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> Result<(usize, Option<OwnedFd>), Errno> {
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 2]);
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        };
        let mut first = None;
        // A truncated control message (more descriptors than room) is closed by the
        // kernel for us; what did arrive is taken below.
        if let Ok(cmsgs) = msg.cmsgs() {
            for cmsg in cmsgs {
                if let ControlMessageOwned::ScmRights(fds) = cmsg {
                    for raw in fds {
                        // SAFETY: the kernel has just installed `raw` in this process's
                        // descriptor table for this call; nothing else knows or owns it.
                        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                        if first.is_none() {
                            first = Some(owned);
                        }
                    }
                }
            }
        }
        return Ok((msg.bytes, first));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_socket_sent_with_a_byte_arrives_alone_and_works() {
        let (a, b) = UnixStream::pair().expect("pair");
        let (mut mine, theirs) = UnixStream::pair().expect("pair");
        send_fd(a.as_fd(), 0xA5, theirs.as_fd()).expect("send");
        drop(theirs);
        (&a).write_all(b"after").expect("data after the descriptor");
        let mut buf = [0u8; 16];
        let (n, fd) = recv_with_fd(b.as_fd(), &mut buf).expect("recv");
        assert_eq!((n, buf[0]), (1, 0xA5), "the byte, alone");
        let mut got = UnixStream::from(fd.expect("a descriptor"));
        got.write_all(b"hi").expect("write on the received socket");
        let mut two = [0u8; 2];
        mine.read_exact(&mut two).expect("read");
        assert_eq!(&two, b"hi");
        let (n, fd) = recv_with_fd(b.as_fd(), &mut buf).expect("recv");
        assert_eq!(&buf[..n], b"after");
        assert!(fd.is_none());
    }
}
