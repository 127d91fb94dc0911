//! Batched datagram I/O: `recvmmsg` and `sendmmsg`, many datagrams per system call.

use crate::sys::byte_count;
use crate::sys::net::{for_socket, from_storage, no_destination, DatagramBuf};
use socket2::SockAddr;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// The headers, vectors and addresses of one batch call, allocated once per device half and
/// rewritten before every call.
pub(crate) struct MmsgIo {
    headers: Box<[libc::mmsghdr]>,
    vectors: Box<[libc::iovec]>,
    received_from: Box<[libc::sockaddr_storage]>,
    send_to: Box<[SockAddr]>,
    v6: bool,
}

// SAFETY: the raw pointers in `headers` and `vectors` are only ever set to point at buffers
// that the call in progress borrows (and at this struct's own arrays), and are rewritten
// before each call; between calls nothing reads them. The struct moves between threads only
// with the device half that owns it.
unsafe impl Send for MmsgIo {}

impl MmsgIo {
    pub(crate) fn new(max_batch: usize, v6: bool) -> Self {
        let max = max_batch.max(1);
        let unspecified = SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)));
        MmsgIo {
            // SAFETY: mmsghdr and iovec are plain C structs; all zeroes (null pointers,
            // zero lengths) is a valid value for both.
            headers: (0..max).map(|_| unsafe { std::mem::zeroed() }).collect(),
            // SAFETY: as above.
            vectors: (0..max).map(|_| unsafe { std::mem::zeroed() }).collect(),
            // SAFETY: all zeroes is a valid sockaddr_storage.
            received_from: (0..max).map(|_| unsafe { std::mem::zeroed() }).collect(),
            send_to: (0..max).map(|_| unspecified.clone()).collect(),
            v6,
        }
    }

    pub(crate) fn max_batch(&self) -> usize {
        self.headers.len()
    }

    /// Receives up to `bufs.len()` datagrams without blocking (`MSG_DONTWAIT`).
    pub(crate) fn recv<B: DatagramBuf>(&mut self, fd: RawFd, bufs: &mut [B]) -> io::Result<usize> {
        let n = bufs.len().min(self.headers.len());
        if n == 0 {
            return Ok(0);
        }
        for (i, buf) in bufs.iter_mut().enumerate().take(n) {
            let area = buf.area();
            self.vectors[i] = libc::iovec {
                iov_base: area.as_mut_ptr().cast(),
                iov_len: area.len(),
            };
            let header = &mut self.headers[i];
            header.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_hdr.msg_name =
                (&mut self.received_from[i] as *mut libc::sockaddr_storage).cast();
            header.msg_hdr.msg_iov = &mut self.vectors[i];
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_control = std::ptr::null_mut();
            header.msg_hdr.msg_controllen = 0;
            header.msg_hdr.msg_flags = 0;
            header.msg_len = 0;
        }
        // SAFETY: the first `n` headers point at live, exclusively borrowed areas (the
        // buffers in `bufs`) and at this struct's address storage, all sized as their
        // lengths say; the kernel writes only within them.
        let got = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let got = byte_count(got as isize)?;
        for (i, buf) in bufs.iter_mut().enumerate().take(got) {
            let header = &self.headers[i];
            // A datagram longer than the area arrives cut to it (MSG_TRUNC): the reader's
            // area is one byte past the largest datagram, so it sees the datagram oversize.
            let len = header.msg_len as usize;
            let from = from_storage(&self.received_from[i], header.msg_hdr.msg_namelen);
            buf.received(len, from);
        }
        Ok(got)
    }

    /// Sends up to `bufs.len()` datagrams, each to its endpoint, without blocking; returns
    /// how many went. The first one without an endpoint ends the batch (and, first in the
    /// batch, is the error).
    pub(crate) fn send<B: DatagramBuf>(&mut self, fd: RawFd, bufs: &[B]) -> io::Result<usize> {
        let mut n = 0;
        for buf in bufs.iter().take(self.headers.len()) {
            let (data, to) = buf.datagram();
            let Some(to) = to else {
                break;
            };
            self.send_to[n] = for_socket(to, self.v6);
            self.vectors[n] = libc::iovec {
                iov_base: data.as_ptr() as *mut _,
                iov_len: data.len(),
            };
            let header = &mut self.headers[n];
            header.msg_hdr.msg_name = self.send_to[n].as_ptr() as *mut _;
            header.msg_hdr.msg_namelen = self.send_to[n].len();
            header.msg_hdr.msg_iov = &mut self.vectors[n];
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_control = std::ptr::null_mut();
            header.msg_hdr.msg_controllen = 0;
            header.msg_hdr.msg_flags = 0;
            header.msg_len = 0;
            n += 1;
        }
        if n == 0 {
            return if bufs.is_empty() {
                Ok(0)
            } else {
                Err(no_destination())
            };
        }
        // SAFETY: the first `n` headers point at the datagrams of `bufs` (borrowed for the
        // call) and at this struct's addresses; the kernel only reads them.
        let sent = unsafe {
            libc::sendmmsg(
                fd,
                self.headers.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        byte_count(sent as isize)
    }
}
