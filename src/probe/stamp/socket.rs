//! The UDP socket both STAMP ends use: kernel receive timestamps (`SO_TIMESTAMPNS`, as the
//! ICMP engine) and the received packets' TTL or hop limit (`IP_RECVTTL`,
//! `IPV6_RECVHOPLIMIT`), read with `recvmsg`.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use nix::sys::socket::{self as nix_socket, ControlMessageOwned, MsgFlags, SockaddrStorage};
use socket2::{Domain, Protocol, Socket, Type};

/// One received datagram.
#[derive(Clone, Copy, Debug)]
pub struct Datagram {
    pub len: usize,
    pub from: SocketAddr,
    /// Kernel receive time, `CLOCK_REALTIME` since the Unix epoch.
    pub stamp: Option<Duration>,
    pub ttl: Option<u8>,
    /// Longer than the buffer: the rest was cut off.
    pub truncated: bool,
}

/// A UDP socket bound to `bind`, with receive timestamps and TTLs switched on where the
/// kernel allows (without them, receive times come from the reading thread's clock).
pub fn open(bind: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    if bind.is_ipv6() {
        // Dual-stack: a reflector on [::] also answers IPv4 senders.
        let _ = socket.set_only_v6(false);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&bind.into())?;
    let _ = nix_socket::setsockopt(&socket, nix_socket::sockopt::ReceiveTimestampns, &true);
    if bind.is_ipv4() {
        let _ = nix_socket::setsockopt(&socket, nix_socket::sockopt::Ipv4RecvTtl, &true);
    } else {
        let _ = nix_socket::setsockopt(&socket, nix_socket::sockopt::Ipv6RecvHopLimit, &true);
        let _ = nix_socket::setsockopt(&socket, nix_socket::sockopt::Ipv4RecvTtl, &true);
    }
    Ok(socket)
}

/// Reads one datagram without blocking (`WouldBlock` when none is queued).
pub fn receive(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<Datagram> {
    receive_fd(fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT)
}

/// Reads one datagram, waiting up to the socket's read timeout (`WouldBlock` after it).
pub fn receive_blocking(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<Datagram> {
    receive_fd(fd.as_raw_fd(), buf, MsgFlags::empty())
}

fn receive_fd(fd: RawFd, buf: &mut [u8], flags: MsgFlags) -> io::Result<Datagram> {
    let mut control = nix::cmsg_space!(nix::libc::timespec, nix::libc::c_int, nix::libc::c_int);
    let mut iov = [IoSliceMut::new(buf)];
    let message = nix_socket::recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut control), flags)?;
    let from = message
        .address
        .as_ref()
        .and_then(|addr| {
            addr.as_sockaddr_in()
                .map(|a| SocketAddr::from((a.ip(), a.port())))
                .or_else(|| {
                    addr.as_sockaddr_in6()
                        .map(|a| SocketAddr::from((a.ip(), a.port())))
                })
        })
        .ok_or_else(|| io::Error::other("UDP datagram without a source address"))?;
    let mut stamp = None;
    let mut ttl = None;
    if let Ok(cmsgs) = message.cmsgs() {
        for cmsg in cmsgs {
            match cmsg {
                ControlMessageOwned::ScmTimestampns(ts) => {
                    stamp = u64::try_from(ts.tv_sec())
                        .ok()
                        .map(|secs| Duration::new(secs, ts.tv_nsec() as u32));
                }
                ControlMessageOwned::Ipv4Ttl(t) => ttl = u8::try_from(t).ok(),
                ControlMessageOwned::Ipv6HopLimit(t) => ttl = u8::try_from(t).ok(),
                _ => {}
            }
        }
    }
    Ok(Datagram {
        len: message.bytes,
        from: unmap(from),
        stamp,
        ttl,
        truncated: message.flags.contains(MsgFlags::MSG_TRUNC),
    })
}

/// An IPv4 sender seen on a dual-stack socket, as the IPv4 address it is.
pub fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

/// Now, on the clock the kernel stamps with.
pub fn realtime() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}
