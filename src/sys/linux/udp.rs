//! Batched datagram I/O: `recvmmsg` and `sendmmsg`, many datagrams per system call; and on
//! send, UDP GSO (`UDP_SEGMENT`, Linux 4.18+): consecutive datagrams of one size to one peer
//! go out as one message that the kernel cuts into datagrams as late as it can (one trip
//! through the stack, and through a veth or a NIC that segments, for up to 64 datagrams).
//! Nothing is copied: each message gathers its datagrams' buffers with one iovec each.

use crate::sys::byte_count;
use crate::sys::net::{for_socket, from_storage, no_destination, DatagramBuf};
use socket2::SockAddr;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// `SOL_UDP` and `UDP_SEGMENT` from `include/uapi/linux/udp.h` (written out: not every libc
/// target defines them).
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
/// The most datagrams one GSO message may carry (`UDP_MAX_SEGMENTS`).
const MAX_SEGMENTS: usize = 64;
/// The most bytes one GSO message may carry: a UDP payload's limit, with room for headers.
const MAX_GSO_BYTES: usize = 65_000;
/// GSO refusals in a row (messages the kernel refused, with no GSO message sent between)
/// after which a half sends without GSO until its socket is replaced (a rebind). One refusal
/// is not enough: EINVAL also means "a segment larger than the path MTU", which a path
/// change causes and the next batches (of another size, to another peer) need not meet.
pub(crate) const GSO_REFUSALS_BEFORE_OFF: u32 = 3;

/// Space for one control message carrying a `u16` (the GSO segment size), aligned for it.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct SegmentControl([u8; 24]);

/// The headers, vectors and addresses of one batch call, allocated once per device half and
/// rewritten before every call.
pub(crate) struct MmsgIo {
    headers: Box<[libc::mmsghdr]>,
    vectors: Box<[libc::iovec]>,
    received_from: Box<[libc::sockaddr_storage]>,
    send_to: Box<[SockAddr]>,
    /// Per message of a send: its GSO control message, and how many datagrams it carries.
    controls: Box<[SegmentControl]>,
    carries: Box<[usize]>,
    /// Whether sends use GSO: unknown until the first send asks the socket, off after the
    /// kernel refused [`GSO_REFUSALS_BEFORE_OFF`] GSO messages in a row; unknown again after
    /// [`MmsgIo::socket_replaced`].
    gso: Option<bool>,
    /// GSO messages refused since the last one sent.
    refusals: u32,
    /// Tests: the next sends whose first message carries more than one datagram fail as the
    /// kernel refusing GSO would (EINVAL), before the system call.
    #[cfg(test)]
    refuse_gso: u32,
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
            controls: vec![SegmentControl([0; 24]); max].into_boxed_slice(),
            carries: vec![0; max].into_boxed_slice(),
            gso: None,
            refusals: 0,
            #[cfg(test)]
            refuse_gso: 0,
            v6,
        }
    }

    /// The half's socket was replaced (a rebind): whether it takes GSO is asked again, and
    /// earlier refusals are forgotten.
    pub(crate) fn socket_replaced(&mut self) {
        self.gso = None;
        self.refusals = 0;
    }

    /// Tests: the next `count` sends that lead with a GSO message are refused with EINVAL.
    #[cfg(test)]
    pub(crate) fn refuse_gso(&mut self, count: u32) {
        self.refuse_gso = count;
    }

    /// Whether sends on this half use UDP GSO (known after the first send).
    #[cfg(test)]
    pub(crate) fn uses_gso(&self) -> Option<bool> {
        self.gso
    }

    /// Turns GSO off for this half (tests compare both paths).
    #[cfg(test)]
    pub(crate) fn disable_gso(&mut self) {
        self.gso = Some(false);
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
    /// batch, is the error). With GSO, a run of datagrams of one size to one peer (the last
    /// may be shorter) is one message; a message sent is all its datagrams sent, and an error
    /// belongs to the first datagram of the first message not sent.
    ///
    /// A GSO message the kernel refuses (EINVAL, EIO, EOPNOTSUPP: a path that cannot segment,
    /// or a segment larger than the path's MTU) is sent again at once without GSO, one
    /// datagram per message, with the rest of the batch: a refusal costs no datagram. GSO is
    /// off for this half only after [`GSO_REFUSALS_BEFORE_OFF`] refusals in a row, until the
    /// socket is replaced.
    pub(crate) fn send<B: DatagramBuf>(&mut self, fd: RawFd, bufs: &[B]) -> io::Result<usize> {
        let gso = *self.gso.get_or_insert_with(|| supports_gso(fd));
        match self.send_with(fd, bufs, gso) {
            Err(e) if gso && self.carries[0] > 1 && gso_refused(&e) => {
                self.refusals += 1;
                if self.refusals >= GSO_REFUSALS_BEFORE_OFF {
                    log::info!(
                        "UDP GSO refused {} times in a row ({e}); sending without it until \
                         a rebind",
                        self.refusals
                    );
                    self.gso = Some(false);
                } else {
                    log::debug!("UDP GSO refused ({e}); this batch goes without it");
                }
                self.send_with(fd, bufs, false)
            }
            sent => sent,
        }
    }

    /// [`MmsgIo::send`], with or without GSO, once.
    fn send_with<B: DatagramBuf>(&mut self, fd: RawFd, bufs: &[B], gso: bool) -> io::Result<usize> {
        // No message yet: an error before the system call is never taken for a refusal.
        self.carries[0] = 0;
        let mut messages = 0;
        let mut group: Option<(SocketAddr, usize, usize)> = None; // (peer, segment, bytes)
        for (datagrams, buf) in bufs.iter().take(self.vectors.len()).enumerate() {
            let (data, to) = buf.datagram();
            let Some(to) = to else {
                break;
            };
            self.vectors[datagrams] = libc::iovec {
                iov_base: data.as_ptr() as *mut _,
                iov_len: data.len(),
            };
            let joins = match group {
                Some((peer, segment, bytes)) => {
                    gso && peer == to
                        && data.len() <= segment
                        && bytes + data.len() <= MAX_GSO_BYTES
                        && self.carries[messages - 1] < MAX_SEGMENTS
                        // Only the last datagram of a message may be shorter.
                        && self.vectors[datagrams - 1].iov_len == segment
                }
                None => false,
            };
            if joins {
                let header = &mut self.headers[messages - 1];
                header.msg_hdr.msg_iovlen += 1;
                self.carries[messages - 1] += 1;
                if let Some((_, segment, bytes)) = group.as_mut() {
                    *bytes += data.len();
                    if self.carries[messages - 1] == 2 {
                        // A second datagram: the message now needs its segment size.
                        let control = &mut self.controls[messages - 1];
                        set_segment_control(&mut header.msg_hdr, control, *segment as u16);
                    }
                }
            } else {
                self.send_to[messages] = for_socket(to, self.v6);
                let header = &mut self.headers[messages];
                header.msg_hdr.msg_name = self.send_to[messages].as_ptr() as *mut _;
                header.msg_hdr.msg_namelen = self.send_to[messages].len();
                header.msg_hdr.msg_iov = &mut self.vectors[datagrams];
                header.msg_hdr.msg_iovlen = 1;
                header.msg_hdr.msg_control = std::ptr::null_mut();
                header.msg_hdr.msg_controllen = 0;
                header.msg_hdr.msg_flags = 0;
                header.msg_len = 0;
                self.carries[messages] = 1;
                group = Some((to, data.len(), data.len()));
                messages += 1;
            }
        }
        if messages == 0 {
            return if bufs.is_empty() {
                Ok(0)
            } else {
                Err(no_destination())
            };
        }
        #[cfg(test)]
        if self.carries[0] > 1 && self.refuse_gso > 0 {
            self.refuse_gso -= 1;
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: the first `messages` headers point at the datagrams of `bufs` (borrowed for
        // the call, gathered by `vectors`), at this struct's addresses and control messages;
        // the kernel only reads them.
        let sent = unsafe {
            libc::sendmmsg(
                fd,
                self.headers.as_mut_ptr(),
                messages as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        let sent = byte_count(sent as isize)?;
        if self.carries[..sent].iter().any(|&c| c > 1) {
            // A GSO message went: the refusals were not in a row.
            self.refusals = 0;
        }
        Ok(self.carries[..sent].iter().sum())
    }
}

/// Whether the socket takes `UDP_SEGMENT` (Linux 4.18+).
fn supports_gso(fd: RawFd) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, which is that large.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            SOL_UDP,
            UDP_SEGMENT,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    ret == 0
}

/// What the kernel says when a path cannot take a GSO message.
fn gso_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP)
    )
}

/// Points `header` at `control`, holding one `UDP_SEGMENT` control message of `segment`.
fn set_segment_control(header: &mut libc::msghdr, control: &mut SegmentControl, segment: u16) {
    let payload = std::mem::size_of::<u16>() as libc::c_uint;
    // SAFETY: CMSG_SPACE and CMSG_LEN only compute sizes.
    let (space, len) = unsafe { (libc::CMSG_SPACE(payload), libc::CMSG_LEN(payload)) };
    debug_assert!(space as usize <= control.0.len());
    control.0 = [0; 24];
    header.msg_control = control.0.as_mut_ptr().cast();
    header.msg_controllen = space as _;
    // SAFETY: `header` points at `control`, which holds CMSG_SPACE(2) bytes, aligned for a
    // cmsghdr: CMSG_FIRSTHDR returns its start, and the header and the u16 after it fit.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(header);
        (*cmsg).cmsg_level = SOL_UDP;
        (*cmsg).cmsg_type = UDP_SEGMENT;
        (*cmsg).cmsg_len = len as _;
        libc::CMSG_DATA(cmsg).cast::<u16>().write_unaligned(segment);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    /// A datagram to send, as the device's buffers present one.
    struct Out(Vec<u8>, Option<SocketAddr>);

    impl DatagramBuf for Out {
        fn area(&mut self) -> &mut [u8] {
            &mut self.0
        }
        fn received(&mut self, len: usize, from: Option<SocketAddr>) {
            self.0.truncate(len);
            self.1 = from;
        }
        fn datagram(&self) -> (&[u8], Option<SocketAddr>) {
            (&self.0, self.1)
        }
    }

    fn receiver() -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket
    }

    fn receive(socket: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
        let mut buf = [0u8; 65536];
        (0..n)
            .map(|_| {
                let (len, _) = socket.recv_from(&mut buf).expect("a datagram");
                buf[..len].to_vec()
            })
            .collect()
    }

    /// Datagram `i` of `len` bytes, telling itself from the others by its bytes.
    fn datagram(i: u8, len: usize, to: SocketAddr) -> Out {
        Out(
            (0..len).map(|k| i.wrapping_add(k as u8)).collect(),
            Some(to),
        )
    }

    #[test]
    fn runs_of_one_size_to_one_peer_arrive_as_separate_datagrams_in_order() {
        for gso in [true, false] {
            let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
            let (a, b) = (receiver(), receiver());
            let (to_a, to_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
            // Ten of 1200 B and a shorter one to A (one GSO message), three to B, one more
            // to A: three messages with GSO.
            let mut batch: Vec<Out> = (0..10).map(|i| datagram(i, 1200, to_a)).collect();
            batch.push(datagram(10, 300, to_a));
            batch.extend((11..14).map(|i| datagram(i, 700, to_b)));
            batch.push(datagram(14, 1200, to_a));
            let mut io = MmsgIo::new(64, false);
            if !gso {
                io.disable_gso();
            }
            let sent = io.send(sender.as_raw_fd(), &batch).unwrap();
            assert_eq!(sent, batch.len());
            assert_eq!(io.uses_gso(), Some(gso && supports_gso(sender.as_raw_fd())));
            let at_a = receive(&a, 12);
            let at_b = receive(&b, 3);
            let expected_a: Vec<&Vec<u8>> = batch
                .iter()
                .filter(|d| d.1 == Some(to_a))
                .map(|d| &d.0)
                .collect();
            assert_eq!(at_a.iter().collect::<Vec<_>>(), expected_a, "gso {gso}");
            assert_eq!(
                at_b,
                vec![
                    batch[11].0.clone(),
                    batch[12].0.clone(),
                    batch[13].0.clone()
                ]
            );
        }
    }

    #[test]
    fn a_failing_datagram_mid_batch_ends_the_count_and_is_the_next_calls_error() {
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = receiver();
        let to_a = a.local_addr().unwrap();
        // An IPv6 peer from an IPv4 socket fails: the first two go, the third is the error.
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        let batch = vec![
            datagram(0, 500, to_a),
            datagram(1, 500, to_a),
            datagram(2, 500, v6),
            datagram(3, 500, to_a),
        ];
        let mut io = MmsgIo::new(64, false);
        let sent = io.send(sender.as_raw_fd(), &batch).unwrap();
        assert_eq!(sent, 2);
        let err = io.send(sender.as_raw_fd(), &batch[2..]).unwrap_err();
        assert!(err.raw_os_error().is_some(), "{err}");
        assert_eq!(io.send(sender.as_raw_fd(), &batch[3..]).unwrap(), 1);
        assert_eq!(
            receive(&a, 3),
            vec![batch[0].0.clone(), batch[1].0.clone(), batch[3].0.clone()]
        );
    }
}
