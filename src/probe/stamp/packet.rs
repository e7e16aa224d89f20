//! STAMP test packets (RFC 8762 §4.2, §4.3, with RFC 8972's SSID): the two base layouts of
//! each direction, NTP timestamps, the error estimate and the HMAC of authenticated mode.
//! Plain bytes in, plain values out: no sockets, no clocks.

use std::time::Duration;

use ring::hmac;

/// Unauthenticated base packet, both directions.
pub const UNAUTH_SIZE: usize = 44;
/// Authenticated base packet, both directions.
pub const AUTH_SIZE: usize = 112;
/// The HMAC covers the octets before it (RFC 8762 §4.4) and is 16 octets long.
const HMAC_OFFSET: usize = 96;
const HMAC_LEN: usize = 16;
/// Seconds from the NTP era (1900) to the Unix epoch.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// Unauthenticated or authenticated mode: fixes the layout and the size of both packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Unauthenticated,
    Authenticated,
}

impl Mode {
    pub fn size(self) -> usize {
        match self {
            Mode::Unauthenticated => UNAUTH_SIZE,
            Mode::Authenticated => AUTH_SIZE,
        }
    }
}

/// An HMAC-SHA-256 key (RFC 8762 §4.4). Never shown.
#[derive(Clone)]
pub struct Key(hmac::Key);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<hidden>)")
    }
}

impl Key {
    pub fn new(bytes: &[u8]) -> Self {
        Key(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    fn tag(&self, packet: &[u8]) -> [u8; HMAC_LEN] {
        let tag = hmac::sign(&self.0, &packet[..HMAC_OFFSET]);
        let mut out = [0; HMAC_LEN];
        out.copy_from_slice(&tag.as_ref()[..HMAC_LEN]);
        out
    }

    /// Writes the HMAC of an authenticated packet.
    pub fn seal(&self, packet: &mut [u8]) {
        let tag = self.tag(packet);
        packet[HMAC_OFFSET..HMAC_OFFSET + HMAC_LEN].copy_from_slice(&tag);
    }

    /// Whether an authenticated packet carries the right HMAC (compared in constant time).
    pub fn verify(&self, packet: &[u8]) -> bool {
        if packet.len() < AUTH_SIZE {
            return false;
        }
        let tag = self.tag(packet);
        // Truncated tags cannot use `hmac::verify`; compare without an early exit.
        tag.iter()
            .zip(&packet[HMAC_OFFSET..HMAC_OFFSET + HMAC_LEN])
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }
}

/// A 64-bit NTP timestamp: seconds since 1900 and a binary fraction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// From a `CLOCK_REALTIME` reading (time since the Unix epoch).
    pub fn from_unix(since_epoch: Duration) -> Self {
        let secs = (since_epoch.as_secs() + NTP_UNIX_OFFSET) & 0xffff_ffff;
        let frac = (u64::from(since_epoch.subsec_nanos()) << 32) / 1_000_000_000;
        Timestamp((secs << 32) | frac)
    }

    /// Signed seconds from `earlier` to `self`, across an era wrap.
    pub fn since(self, earlier: Timestamp) -> f64 {
        (self.0.wrapping_sub(earlier.0) as i64) as f64 / 4_294_967_296.0
    }
}

/// The error estimate (RFC 4656 §4.1.2, RFC 8762 §4.2.1): S (synchronised to UTC), Z
/// (timestamp format: 0 NTP), and the error as `multiplier * 2^(scale - 32)` seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorEstimate(pub u16);

impl ErrorEstimate {
    const S: u16 = 0x8000;
    const Z: u16 = 0x4000;

    /// An unsynchronised clock with an error of one second (scale 32, multiplier 1).
    pub const UNSYNCHRONISED: ErrorEstimate = ErrorEstimate((32 << 8) | 1);

    /// A clock synchronised to UTC within `error` (rounded up to what the field holds).
    pub fn synchronised(error: Duration) -> Self {
        let units = (error.as_secs_f64() * 4_294_967_296.0).ceil().max(1.0);
        let mut scale = 0u16;
        let mut multiplier = units;
        while multiplier > 255.0 && scale < 63 {
            multiplier = (multiplier / 2.0).ceil();
            scale += 1;
        }
        ErrorEstimate(Self::S | (scale << 8) | multiplier.min(255.0) as u16)
    }

    pub fn synchronised_flag(self) -> bool {
        self.0 & Self::S != 0
    }

    /// PTP-format timestamps (Z set): we only read NTP ones.
    pub fn ptp(self) -> bool {
        self.0 & Self::Z != 0
    }

    /// The error in seconds; `None` for a multiplier of 0, which the RFC forbids.
    pub fn seconds(self) -> Option<f64> {
        let scale = i32::from((self.0 >> 8) & 0x3f);
        let multiplier = self.0 & 0xff;
        (multiplier != 0).then(|| f64::from(multiplier) * 2f64.powi(scale - 32))
    }
}

/// A session-sender test packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub seq: u32,
    pub timestamp: Timestamp,
    pub error: ErrorEstimate,
    pub ssid: u16,
}

/// A session-reflector test packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The reflector's own sequence number for this session (stateful mode).
    pub seq: u32,
    /// When the reply left the reflector (T3).
    pub timestamp: Timestamp,
    pub error: ErrorEstimate,
    pub ssid: u16,
    /// When the request reached the reflector (T2).
    pub receive: Timestamp,
    pub sender_seq: u32,
    /// The request's own timestamp (T1), echoed.
    pub sender_timestamp: Timestamp,
    pub sender_error: ErrorEstimate,
    /// The TTL (hop limit) of the request as it reached the reflector; 0 if unknown.
    pub sender_ttl: u8,
}

/// Why a datagram is not a packet of the expected mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than the base packet.
    Truncated,
    /// Authenticated mode: the HMAC does not match.
    BadHmac,
}

/// Byte offsets of one layout's fields.
struct Layout {
    seq: usize,
    timestamp: usize,
    error: usize,
    ssid: usize,
    receive: usize,
    sender_seq: usize,
    sender_timestamp: usize,
    sender_error: usize,
    sender_ttl: usize,
}

const UNAUTH: Layout = Layout {
    seq: 0,
    timestamp: 4,
    error: 12,
    ssid: 14,
    receive: 16,
    sender_seq: 24,
    sender_timestamp: 28,
    sender_error: 36,
    sender_ttl: 40,
};

/// RFC 8762 §4.3.2: 8 octets MBZ after the receive timestamp, 12 after the sender's
/// sequence number, 6 after its error estimate (found wrong by the stamp-suite interop test).
const AUTH: Layout = Layout {
    seq: 0,
    timestamp: 16,
    error: 24,
    ssid: 26,
    receive: 32,
    sender_seq: 48,
    sender_timestamp: 64,
    sender_error: 72,
    sender_ttl: 80,
};

fn layout(mode: Mode) -> &'static Layout {
    match mode {
        Mode::Unauthenticated => &UNAUTH,
        Mode::Authenticated => &AUTH,
    }
}

fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

/// Checks the size and, in authenticated mode, the HMAC.
fn check(mode: Mode, buf: &[u8], key: Option<&Key>) -> Result<(), Malformed> {
    if buf.len() < mode.size() {
        return Err(Malformed::Truncated);
    }
    match (mode, key) {
        (Mode::Authenticated, Some(key)) if !key.verify(buf) => Err(Malformed::BadHmac),
        (Mode::Authenticated, None) => Err(Malformed::BadHmac),
        _ => Ok(()),
    }
}

impl Request {
    /// The base packet (trailing bytes, such as RFC 8972 TLVs, are ignored).
    pub fn decode(mode: Mode, buf: &[u8], key: Option<&Key>) -> Result<Self, Malformed> {
        check(mode, buf, key)?;
        let l = layout(mode);
        Ok(Request {
            seq: u32_at(buf, l.seq),
            timestamp: Timestamp(u64_at(buf, l.timestamp)),
            error: ErrorEstimate(u16_at(buf, l.error)),
            ssid: u16_at(buf, l.ssid),
        })
    }

    /// Writes the packet into `buf` (which must be `mode.size()` long) and seals it.
    pub fn encode(&self, mode: Mode, key: Option<&Key>, buf: &mut [u8]) {
        let l = layout(mode);
        buf.fill(0);
        buf[l.seq..l.seq + 4].copy_from_slice(&self.seq.to_be_bytes());
        buf[l.timestamp..l.timestamp + 8].copy_from_slice(&self.timestamp.0.to_be_bytes());
        buf[l.error..l.error + 2].copy_from_slice(&self.error.0.to_be_bytes());
        buf[l.ssid..l.ssid + 2].copy_from_slice(&self.ssid.to_be_bytes());
        if let (Mode::Authenticated, Some(key)) = (mode, key) {
            key.seal(buf);
        }
    }
}

impl Reply {
    pub fn decode(mode: Mode, buf: &[u8], key: Option<&Key>) -> Result<Self, Malformed> {
        check(mode, buf, key)?;
        let l = layout(mode);
        Ok(Reply {
            seq: u32_at(buf, l.seq),
            timestamp: Timestamp(u64_at(buf, l.timestamp)),
            error: ErrorEstimate(u16_at(buf, l.error)),
            ssid: u16_at(buf, l.ssid),
            receive: Timestamp(u64_at(buf, l.receive)),
            sender_seq: u32_at(buf, l.sender_seq),
            sender_timestamp: Timestamp(u64_at(buf, l.sender_timestamp)),
            sender_error: ErrorEstimate(u16_at(buf, l.sender_error)),
            sender_ttl: buf[l.sender_ttl],
        })
    }

    /// Writes the packet into `buf` (which must be `mode.size()` long) and seals it.
    pub fn encode(&self, mode: Mode, key: Option<&Key>, buf: &mut [u8]) {
        let l = layout(mode);
        buf.fill(0);
        buf[l.seq..l.seq + 4].copy_from_slice(&self.seq.to_be_bytes());
        buf[l.timestamp..l.timestamp + 8].copy_from_slice(&self.timestamp.0.to_be_bytes());
        buf[l.error..l.error + 2].copy_from_slice(&self.error.0.to_be_bytes());
        buf[l.ssid..l.ssid + 2].copy_from_slice(&self.ssid.to_be_bytes());
        buf[l.receive..l.receive + 8].copy_from_slice(&self.receive.0.to_be_bytes());
        buf[l.sender_seq..l.sender_seq + 4].copy_from_slice(&self.sender_seq.to_be_bytes());
        buf[l.sender_timestamp..l.sender_timestamp + 8]
            .copy_from_slice(&self.sender_timestamp.0.to_be_bytes());
        buf[l.sender_error..l.sender_error + 2].copy_from_slice(&self.sender_error.0.to_be_bytes());
        buf[l.sender_ttl] = self.sender_ttl;
        if let (Mode::Authenticated, Some(key)) = (mode, key) {
            key.seal(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply() -> Reply {
        Reply {
            seq: 7,
            timestamp: Timestamp(0x0102_0304_0506_0708),
            error: ErrorEstimate::synchronised(Duration::from_micros(10)),
            ssid: 0xbeef,
            receive: Timestamp(0x1112_1314_1516_1718),
            sender_seq: 9,
            sender_timestamp: Timestamp(0x2122_2324_2526_2728),
            sender_error: ErrorEstimate::UNSYNCHRONISED,
            sender_ttl: 63,
        }
    }

    #[test]
    fn the_unauthenticated_reply_puts_each_field_where_rfc_8762_says() {
        let mut buf = [0u8; UNAUTH_SIZE];
        reply().encode(Mode::Unauthenticated, None, &mut buf);
        assert_eq!(&buf[0..4], &[0, 0, 0, 7]);
        assert_eq!(buf[4], 0x01);
        assert_eq!(&buf[14..16], &[0xbe, 0xef]);
        assert_eq!(buf[16], 0x11);
        assert_eq!(&buf[24..28], &[0, 0, 0, 9]);
        assert_eq!(buf[28], 0x21);
        assert_eq!(buf[40], 63);
        assert_eq!(
            Reply::decode(Mode::Unauthenticated, &buf, None).unwrap(),
            reply()
        );
    }

    #[test]
    fn an_authenticated_packet_with_one_bit_changed_fails_its_hmac() {
        let key = Key::new(&[0x42; 32]);
        let mut buf = [0u8; AUTH_SIZE];
        reply().encode(Mode::Authenticated, Some(&key), &mut buf);
        assert_eq!(buf[80], 63, "Ses-Sender TTL at octet 80");
        assert_eq!(
            &buf[48..52],
            &[0, 0, 0, 9],
            "Session-Sender Sequence Number"
        );
        assert_eq!(buf[64], 0x21, "Session-Sender Timestamp");
        assert_eq!(
            Reply::decode(Mode::Authenticated, &buf, Some(&key)).unwrap(),
            reply()
        );
        for at in [0, 48, 95] {
            let mut bad = buf;
            bad[at] ^= 1;
            assert_eq!(
                Reply::decode(Mode::Authenticated, &bad, Some(&key)),
                Err(Malformed::BadHmac),
                "octet {at}"
            );
        }
        let other = Key::new(&[0x43; 32]);
        assert_eq!(
            Reply::decode(Mode::Authenticated, &buf, Some(&other)),
            Err(Malformed::BadHmac)
        );
        assert_eq!(
            Reply::decode(Mode::Authenticated, &buf[..100], Some(&key)),
            Err(Malformed::Truncated)
        );
    }

    #[test]
    fn the_hmac_is_rfc_4231_hmac_sha256_truncated_to_16_octets() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let mut packet = [0u8; AUTH_SIZE];
        let data = b"what do ya want for nothing?";
        let key = Key::new(b"Jefe");
        let full = hmac::sign(&key.0, &packet[..HMAC_OFFSET]);
        key.seal(&mut packet);
        assert_eq!(&packet[96..112], &full.as_ref()[..16]);
        let tag = hmac::sign(&key.0, data);
        assert_eq!(
            &tag.as_ref()[..16],
            &[
                0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26, 0x08, 0x95,
                0x75, 0xc7
            ]
        );
    }

    #[test]
    fn timestamps_and_error_estimates_round_trip() {
        let t = Timestamp::from_unix(Duration::new(1_700_000_000, 500_000_000));
        assert_eq!(t.0 >> 32, 1_700_000_000 + NTP_UNIX_OFFSET);
        assert_eq!(t.0 & 0xffff_ffff, 1 << 31);
        let later = Timestamp::from_unix(Duration::new(1_700_000_000, 750_000_000));
        assert!((later.since(t) - 0.25).abs() < 1e-9);
        assert!((t.since(later) + 0.25).abs() < 1e-9);

        let e = ErrorEstimate::synchronised(Duration::from_millis(1));
        assert!(e.synchronised_flag());
        let secs = e.seconds().unwrap();
        assert!((0.001..0.00101).contains(&secs), "{secs}");
        assert!(!ErrorEstimate::UNSYNCHRONISED.synchronised_flag());
        assert_eq!(ErrorEstimate::UNSYNCHRONISED.seconds(), Some(1.0));
        assert_eq!(ErrorEstimate(0x8000).seconds(), None);
    }
}
