//! `probe = "redis"`: RESP spoken by hand (commands out as arrays of bulk strings; replies
//! read with every size bounded): `AUTH`, `SELECT`, the read command (`PING`), the heartbeat
//! `SET` with expiry, and `INFO replication`. Why not the redis crate: docs/design.md.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

use super::db::{self, Io, ReplicaReport, ReplicationReport, Target, Timings};
use super::outcome::{Failure, Phase, Reason};
use crate::config::Replication;

/// A bulk string or an array longer than this is a hostile or broken server (`INFO` is a few
/// KiB).
const MAX_BULK: usize = 1 << 20;
const MAX_ARRAY: usize = 1024;
const MAX_DEPTH: usize = 4;
/// The heartbeat key lives this long without a writer: a reader then sees no heartbeat rather
/// than one from last month.
const HEARTBEAT_TTL_SECONDS: &str = "86400";

/// Redis's protocol for [`db::Db`].
#[derive(Debug, Default)]
pub struct Redis;

/// A connection, read through a buffer.
pub type Conn = BufReader<Box<dyn Io>>;

/// A reply.
#[derive(Clone, Debug, PartialEq)]
enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl db::Engine for Redis {
    type Conn = Conn;

    async fn open(&mut self, target: &mut Target, timings: &mut Timings) -> Result<Conn, Failure> {
        let password = db::password(&target.config)?;
        let stream = target.connect(&mut timings.phases).await?;
        let target = &*target;
        let io: Box<dyn Io> = match &target.tls {
            Some(tls) => {
                let started = Instant::now();
                let handshake = tls.handshake(stream, target.host.name()).await?;
                timings.phases.add(Phase::Tls, started.elapsed());
                timings.cert_expiry = handshake.cert_expiry;
                Box::new(handshake.stream)
            }
            None => Box::new(stream),
        };
        let mut conn = BufReader::new(io);
        let started = Instant::now();
        if let Some(password) = password {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = &target.config.user {
                args.push(user.as_bytes());
            }
            args.push(password.as_bytes());
            if let Reply::Error(message) = call(target, &mut conn, &args, "AUTH").await? {
                return Err(Failure::new(
                    Reason::Auth,
                    format!("{} AUTH: {}", target.host.name(), first_line(&message)),
                ));
            }
        }
        if let Some(database) = &target.config.database
            && let Reply::Error(message) = call(
                target,
                &mut conn,
                &[b"SELECT", database.as_bytes()],
                "SELECT",
            )
            .await?
        {
            {
                let reason = if message.starts_with("NOAUTH") || message.starts_with("WRONGPASS") {
                    Reason::Auth
                } else {
                    Reason::UnknownDatabase
                };
                return Err(Failure::new(
                    reason,
                    format!(
                        "{} SELECT {database}: {}",
                        target.host.name(),
                        first_line(&message)
                    ),
                ));
            }
        }
        timings.phases.add(Phase::Auth, started.elapsed());
        Ok(conn)
    }

    async fn queries(
        &mut self,
        target: &Target,
        conn: &mut Conn,
        timings: &mut Timings,
    ) -> Result<(), Failure> {
        let query = target.config.query.clone();
        let args: Vec<&[u8]> = query.split_whitespace().map(str::as_bytes).collect();
        let started = Instant::now();
        let reply = call(target, conn, &args, "query").await?;
        timings.phases.add(Phase::Query, started.elapsed());
        check(target, reply, "query")?;
        if target.config.write {
            let key = target.config.heartbeat_table.clone();
            let now = format!("{:.6} {}", db::unix_now(), target.region);
            let started = Instant::now();
            let reply = call(
                target,
                conn,
                &[
                    b"SET",
                    key.as_bytes(),
                    now.as_bytes(),
                    b"EX",
                    HEARTBEAT_TTL_SECONDS.as_bytes(),
                ],
                "write",
            )
            .await?;
            timings.phases.add(Phase::Write, started.elapsed());
            check(target, reply, "write")?;
        }
        timings.replication = match target.config.replication {
            None => None,
            Some(Replication::Heartbeat) => Some(heartbeat(target, conn).await?),
            Some(mode) => {
                let reply = call(target, conn, &[b"INFO", b"replication"], "INFO").await?;
                let text = match check(target, reply, "INFO")? {
                    Reply::Bulk(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
                    other => {
                        return Err(invalid(target, format!("INFO answered {other:?}")));
                    }
                };
                Some(replication(&text, mode).map_err(|problem| invalid(target, problem))?)
            }
        };
        Ok(())
    }
}

/// The age of the heartbeat, by this sidecar's clock. One key for every writer (the
/// freshest stamp wins), so reading it is one `GET`, never a scan of the keyspace.
async fn heartbeat(target: &Target, conn: &mut Conn) -> Result<ReplicationReport, Failure> {
    let key = target.config.heartbeat_table.as_bytes();
    let reply = call(target, conn, &[b"GET", key], "heartbeat").await?;
    let at = match check(target, reply, "heartbeat")? {
        Reply::Bulk(Some(value)) => {
            let text = String::from_utf8_lossy(&value).into_owned();
            // "<unix seconds> <region>"
            db::number("heartbeat", text.split_whitespace().next())?
        }
        _ => None,
    };
    Ok(ReplicationReport {
        lag: at.map(|at| (db::unix_now() - at).max(0.0)),
        ..ReplicationReport::default()
    })
}

/// Sends one command and reads its reply.
async fn call(
    target: &Target,
    conn: &mut Conn,
    args: &[&[u8]],
    during: &str,
) -> Result<Reply, Failure> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    let io_failure = |err: std::io::Error| {
        let reason = match err.kind() {
            std::io::ErrorKind::TimedOut => Reason::Timeout,
            std::io::ErrorKind::ConnectionRefused => Reason::Refused,
            std::io::ErrorKind::InvalidData => Reason::Validation,
            _ => Reason::Error,
        };
        Failure::new(reason, format!("{} {during}: {err}", target.host.name()))
    };
    conn.get_mut().write_all(&out).await.map_err(io_failure)?;
    conn.get_mut().flush().await.map_err(io_failure)?;
    read_reply(conn, 0).await.map_err(io_failure)
}

/// An error reply as a failure: `READONLY` is `read_only`, `NOAUTH`/`WRONGPASS` `auth`.
fn check(target: &Target, reply: Reply, during: &str) -> Result<Reply, Failure> {
    let Reply::Error(message) = &reply else {
        return Ok(reply);
    };
    let reason = if message.starts_with("READONLY") {
        Reason::ReadOnly
    } else if message.starts_with("NOAUTH") || message.starts_with("WRONGPASS") {
        Reason::Auth
    } else {
        Reason::Validation
    };
    Err(Failure::new(
        reason,
        format!("{} {during}: {}", target.host.name(), first_line(message)),
    ))
}

fn invalid(target: &Target, problem: String) -> Failure {
    Failure::new(
        Reason::Validation,
        format!("{}: {problem}", target.host.name()),
    )
}

fn first_line(message: &str) -> String {
    message
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}

/// Reads one reply, every length bounded.
fn read_reply<'a>(
    conn: &'a mut BufReader<Box<dyn Io>>,
    depth: usize,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Reply>> + Send + 'a>> {
    Box::pin(async move {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        let mut line = Vec::new();
        (&mut *conn)
            .take(MAX_BULK as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if line.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        let Some(text) = line.strip_suffix(b"\r\n") else {
            return Err(bad("a reply line without CRLF"));
        };
        let (kind, rest) = text
            .split_first()
            .ok_or_else(|| bad("an empty reply line"))?;
        let rest = String::from_utf8_lossy(rest).into_owned();
        let length = || -> std::io::Result<i64> {
            rest.parse::<i64>()
                .map_err(|_| bad("a reply length that is not a number"))
        };
        match kind {
            b'+' => Ok(Reply::Simple(rest)),
            b'-' => Ok(Reply::Error(rest)),
            b':' => Ok(Reply::Integer(length()?)),
            b'$' => {
                let n = length()?;
                if n < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let n = usize::try_from(n).map_err(|_| bad("bulk length"))?;
                if n > MAX_BULK {
                    return Err(bad("a bulk reply over 1 MiB"));
                }
                let mut body = vec![0; n + 2];
                conn.read_exact(&mut body).await?;
                body.truncate(n);
                Ok(Reply::Bulk(Some(body)))
            }
            b'*' => {
                let n = length()?;
                if n < 0 {
                    return Ok(Reply::Array(None));
                }
                let n = usize::try_from(n).map_err(|_| bad("array length"))?;
                if n > MAX_ARRAY || depth >= MAX_DEPTH {
                    return Err(bad("an array reply too long or too deep"));
                }
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(read_reply(conn, depth + 1).await?);
                }
                Ok(Reply::Array(Some(items)))
            }
            _ => Err(bad("not a RESP reply")),
        }
    })
}

/// `INFO replication` as a report: a replica's link and lag, or a primary's replicas.
fn replication(info: &str, mode: Replication) -> Result<ReplicationReport, String> {
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.trim_end().strip_prefix(name)?.strip_prefix(':'))
    };
    let number = |name: &str| field(name).and_then(|v| v.parse::<f64>().ok());
    let role = field("role").unwrap_or("");
    match mode {
        Replication::Replica => {
            if role != "slave" {
                return Err(format!(
                    "replication = \"replica\" but the server's role is \"{role}\""
                ));
            }
            let link_up = field("master_link_status") == Some("up");
            // A link that is down lags without bound; up, the lag is the time since the
            // primary last spoke (it pings every `repl-ping-replica-period`, 10 s by default).
            let lag = if link_up {
                number("master_last_io_seconds_ago")
            } else {
                Some(f64::INFINITY)
            };
            Ok(ReplicationReport {
                lag,
                link_up: Some(link_up),
                offset: number("slave_repl_offset").map(|o| o as u64),
                ..ReplicationReport::default()
            })
        }
        _ => {
            if role != "master" {
                return Err(format!(
                    "replication = \"primary\" but the server's role is \"{role}\""
                ));
            }
            let offset = number("master_repl_offset").map(|o| o as u64);
            let mut replicas = Vec::new();
            for line in info.lines() {
                let Some((name, value)) = line.trim_end().split_once(':') else {
                    continue;
                };
                if !name.starts_with("slave")
                    || !name[5..].chars().all(|c| c.is_ascii_digit())
                    || name.len() == 5
                {
                    continue;
                }
                let get = |key: &str| {
                    value
                        .split(',')
                        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
                };
                let replica_offset = get("offset").and_then(|o| o.parse::<u64>().ok());
                replicas.push(ReplicaReport {
                    name: format!(
                        "{}:{}",
                        get("ip").unwrap_or("?"),
                        get("port").unwrap_or("?")
                    ),
                    lag: get("lag")
                        .and_then(|l| l.parse::<f64>().ok())
                        .map(|l| vec![("ack", l)])
                        .unwrap_or_default(),
                    gap_bytes: offset
                        .zip(replica_offset)
                        .map(|(primary, replica)| primary.saturating_sub(replica)),
                });
            }
            Ok(ReplicationReport {
                offset,
                replicas,
                ..ReplicationReport::default()
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_with_its_link_down_lags_without_bound() {
        let info = "# Replication\r\nrole:slave\r\nmaster_link_status:down\r\nmaster_last_io_seconds_ago:-1\r\nslave_repl_offset:42\r\n";
        let report = replication(info, Replication::Replica).unwrap();
        assert_eq!(report.lag, Some(f64::INFINITY));
        assert_eq!(report.link_up, Some(false));
        assert_eq!(report.offset, Some(42));
        let up = info.replace("down", "up").replace("-1", "3");
        assert_eq!(
            replication(&up, Replication::Replica).unwrap().lag,
            Some(3.0)
        );
        assert!(replication(&up, Replication::Primary).is_err());
    }

    #[test]
    fn a_primary_reports_each_replica_offset_gap() {
        let info = "role:master\r\nconnected_slaves:1\r\nslave0:ip=127.0.0.1,port=6380,state=online,offset=900,lag=1\r\nmaster_repl_offset:1000\r\n";
        let report = replication(info, Replication::Primary).unwrap();
        assert_eq!(report.replicas.len(), 1);
        assert_eq!(report.replicas[0].name, "127.0.0.1:6380");
        assert_eq!(report.replicas[0].gap_bytes, Some(100));
        assert_eq!(report.replicas[0].lag, vec![("ack", 1.0)]);
    }
}
