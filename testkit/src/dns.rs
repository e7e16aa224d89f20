//! The test DNS server ([`DnsServer`]): a small authoritative server built on hickory's message
//! types; it answers over UDP and TCP (2-byte length prefix) on the same loopback port and
//! records every query ([`Received`]).
//!
//! Zone `example.test.`:
//! - `www` A 192.0.2.10 and 192.0.2.11, AAAA 2001:db8::10
//! - `alias` CNAME `www` (an A query gets the CNAME and www's A records)
//! - `mail` MX 10 `mx1.example.test.`
//! - `example.test.` TXT "v=spf1 -all"
//! - `servfail` answers SERVFAIL, `refused` REFUSED ([`DnsServer::set_rcode`] adds more)
//! - a known name without records of the type asked: NOERROR, no answers; unknown: NXDOMAIN

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME, MX, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// One query as the server received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// Lower-case, fully qualified (`www.example.test.`).
    pub name: String,
    pub record_type: RecordType,
    pub recursion_desired: bool,
    pub transport: Transport,
    /// The client's address: a fresh socket per probe shows as a fresh port.
    pub peer: SocketAddr,
}

#[derive(Debug, Default)]
struct State {
    delay: Duration,
    silent: bool,
    truncated: bool,
    rcodes: HashMap<String, ResponseCode>,
    received: Vec<Received>,
    tcp_accepted: usize,
    tcp_open: usize,
}

/// The server: UDP and TCP on `addr`. Dropping it stops both.
#[derive(Debug)]
pub struct DnsServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl DnsServer {
    /// Binds UDP and TCP on one free port of 127.0.0.1 and starts serving on the current
    /// tokio runtime.
    pub async fn start() -> Self {
        Self::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .await
            .expect("bind 127.0.0.1")
    }

    /// Like [`DnsServer::start`] on another address; `None` when it cannot be bound (no IPv6).
    pub async fn start_on(ip: IpAddr) -> Option<Self> {
        let (udp, tcp) = bind_both(ip).await?;
        let addr = udp.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            rcodes: HashMap::from([
                ("servfail.example.test.".to_owned(), ResponseCode::ServFail),
                ("refused.example.test.".to_owned(), ResponseCode::Refused),
            ]),
            ..State::default()
        }));
        let tasks = vec![
            tokio::spawn(serve_udp(Arc::new(udp), state.clone())),
            tokio::spawn(serve_tcp(tcp, state.clone())),
        ];
        Some(DnsServer { addr, state, tasks })
    }

    /// Waits this long after receiving a query before answering it.
    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    /// Receives (and records) queries but never answers; TCP connections stay open.
    pub fn set_silent(&self, silent: bool) {
        self.state.lock().unwrap().silent = silent;
    }

    /// Sets the TC flag on every answer (the records are still sent).
    pub fn set_truncated(&self, truncated: bool) {
        self.state.lock().unwrap().truncated = truncated;
    }

    /// Answers `name` (fully qualified) with `rcode` and no records.
    pub fn set_rcode(&self, name: &str, rcode: ResponseCode) {
        self.state
            .lock()
            .unwrap()
            .rcodes
            .insert(name.to_ascii_lowercase(), rcode);
    }

    /// Every query received so far, in order of arrival.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// TCP connections accepted so far.
    pub fn tcp_accepted(&self) -> usize {
        self.state.lock().unwrap().tcp_accepted
    }

    /// TCP connections the client has not closed yet.
    pub fn tcp_open(&self) -> usize {
        self.state.lock().unwrap().tcp_open
    }
}

/// UDP and TCP sockets on the same port (a port free for UDP may be taken for TCP: retry).
async fn bind_both(ip: IpAddr) -> Option<(UdpSocket, TcpListener)> {
    for _ in 0..50 {
        let udp = UdpSocket::bind(SocketAddr::new(ip, 0)).await.ok()?;
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
            return Some((udp, tcp));
        }
    }
    panic!("no port free for both UDP and TCP on {ip}");
}

async fn serve_udp(socket: Arc<UdpSocket>, state: Arc<Mutex<State>>) {
    let mut buf = vec![0; 65_535];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Some((response, delay)) = handle(&buf[..len], peer, Transport::Udp, &state) else {
            continue;
        };
        // Answer from a task of its own so that one delayed answer does not hold up the rest.
        let socket = socket.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = socket.send_to(&response, peer).await;
        });
    }
}

async fn serve_tcp(listener: TcpListener, state: Arc<Mutex<State>>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        {
            let mut state = state.lock().unwrap();
            state.tcp_accepted += 1;
            state.tcp_open += 1;
        }
        let state = state.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, &state).await;
            state.lock().unwrap().tcp_open -= 1;
        });
    }
}

/// Serves length-prefixed messages on one connection until the client closes it.
async fn serve_connection(mut stream: TcpStream, peer: SocketAddr, state: &Mutex<State>) {
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut message = vec![0; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut message).await.is_err() {
            return;
        }
        let Some((response, delay)) = handle(&message, peer, Transport::Tcp, state) else {
            continue;
        };
        tokio::time::sleep(delay).await;
        let mut framed = u16::try_from(response.len())
            .unwrap()
            .to_be_bytes()
            .to_vec();
        framed.extend_from_slice(&response);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// Records the query and builds its answer; `None`: do not answer (silent, or not a query).
fn handle(
    bytes: &[u8],
    peer: SocketAddr,
    transport: Transport,
    state: &Mutex<State>,
) -> Option<(Vec<u8>, Duration)> {
    let request = Message::from_vec(bytes).ok()?;
    let query = request.queries.first()?.clone();
    let name = query.name().to_ascii().to_ascii_lowercase();
    let mut state = state.lock().unwrap();
    state.received.push(Received {
        name: name.clone(),
        record_type: query.query_type(),
        recursion_desired: request.metadata.recursion_desired,
        transport,
        peer,
    });
    if state.silent {
        return None;
    }
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.message_type = MessageType::Response;
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.truncation = state.truncated;
    response.add_query(query.clone());
    match state.rcodes.get(&name) {
        Some(rcode) => response.metadata.response_code = *rcode,
        None => match answers(&name, query.query_type()) {
            Some(records) => {
                response.add_answers(records);
            }
            None => response.metadata.response_code = ResponseCode::NXDomain,
        },
    }
    Some((response.to_vec().ok()?, state.delay))
}

/// The zone: records of `name` of type `record_type`; `None` when the name does not exist.
fn answers(name: &str, record_type: RecordType) -> Option<Vec<Record>> {
    let n = |text: &str| Name::from_str(text).unwrap();
    let record = |owner: &str, data: RData| Record::from_rdata(n(owner), 300, data);
    let www_a = || {
        vec![
            record(
                "www.example.test.",
                RData::A(A(Ipv4Addr::new(192, 0, 2, 10))),
            ),
            record(
                "www.example.test.",
                RData::A(A(Ipv4Addr::new(192, 0, 2, 11))),
            ),
        ]
    };
    let alias = || {
        record(
            "alias.example.test.",
            RData::CNAME(CNAME(n("www.example.test."))),
        )
    };
    let records = match (name, record_type) {
        ("www.example.test.", RecordType::A) => www_a(),
        ("www.example.test.", RecordType::AAAA) => vec![record(
            "www.example.test.",
            RData::AAAA(AAAA(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10))),
        )],
        ("alias.example.test.", RecordType::CNAME) => vec![alias()],
        ("alias.example.test.", _) => {
            let mut chain = vec![alias()];
            if record_type == RecordType::A {
                chain.extend(www_a());
            }
            chain
        }
        ("mail.example.test.", RecordType::MX) => vec![record(
            "mail.example.test.",
            RData::MX(MX::new(10, n("mx1.example.test."))),
        )],
        ("example.test.", RecordType::TXT) => vec![record(
            "example.test.",
            RData::TXT(TXT::new(vec!["v=spf1 -all".to_owned()])),
        )],
        ("www.example.test." | "mail.example.test." | "example.test.", _) => Vec::new(),
        _ => return None,
    };
    Some(records)
}

/// A TCP port on 127.0.0.1 that nothing listens on.
pub fn closed_tcp_port() -> SocketAddr {
    std::net::TcpListener::bind((IpAddr::V4(Ipv4Addr::LOCALHOST), 0))
        .unwrap()
        .local_addr()
        .unwrap()
}
