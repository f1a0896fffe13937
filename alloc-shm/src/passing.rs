//! Handing a pool's file descriptor to another process over a Unix socket (SCM_RIGHTS): one
//! message of at most [`MAX_LEN`] bytes (a pool descriptor) with exactly one descriptor
//! alongside. The kernel never joins a message carrying descriptors with the next one, so each
//! `receive` gets one whole message on a stream socket too.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::descriptor::MAX_LEN;
use crate::error::{PoolError, Result};

fn io_error(operation: &'static str) -> impl Fn(Errno) -> PoolError {
    move |errno| PoolError::Io { operation, source: errno.into() }
}

/// Sends `bytes` with `fd` alongside.
pub(crate) fn send(socket: BorrowedFd<'_>, bytes: &[u8], fd: BorrowedFd<'_>) -> Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        unreachable!("the buffer is sized for one descriptor");
    }
    let sent = loop {
        match sendmsg(socket, &[IoSlice::new(bytes)], &mut control, SendFlags::NOSIGNAL) {
            Err(Errno::INTR) => continue,
            other => break other.map_err(io_error("sending a pool over a socket"))?,
        }
    };
    if sent != bytes.len() {
        return Err(PoolError::Io {
            operation: "sending a pool over a socket",
            source: io::Error::new(io::ErrorKind::WriteZero, "the message was cut short"),
        });
    }
    Ok(())
}

/// Receives one message and the one descriptor that came with it.
pub(crate) fn receive(socket: BorrowedFd<'_>) -> Result<(Vec<u8>, OwnedFd)> {
    let mut data = [0u8; MAX_LEN];
    // Room for a few descriptors, so that a peer sending more than one cannot make us lose the
    // ones we get (the extra ones are closed).
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = loop {
        match recvmsg(socket, &mut [IoSliceMut::new(&mut data)], &mut control, RecvFlags::CMSG_CLOEXEC) {
            Err(Errno::INTR) => continue,
            other => break other.map_err(io_error("receiving a pool over a socket"))?,
        }
    };
    let mut fds: Vec<OwnedFd> = control
        .drain()
        .filter_map(|message| match message {
            RecvAncillaryMessage::ScmRights(fds) => Some(fds),
            _ => None,
        })
        .flatten()
        .collect();
    if received.bytes == 0 {
        return Err(PoolError::Io {
            operation: "receiving a pool over a socket",
            source: io::Error::new(io::ErrorKind::UnexpectedEof, "the other end closed the socket"),
        });
    }
    if received.flags.intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC) || fds.len() != 1 {
        return Err(PoolError::InvalidDescriptor(
            "a pool message is one descriptor of at most 128 bytes with one file descriptor",
        ));
    }
    let fd = fds.pop().unwrap_or_else(|| unreachable!("one descriptor, checked above"));
    Ok((data[..received.bytes].to_vec(), fd))
}
