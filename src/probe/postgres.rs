//! `probe = "postgres"`: tokio-postgres over a connection we open ourselves (so resolve and
//! connect are timed apart), TLS through our rustls client (timed from the `SSLRequest` to the
//! end of the handshake), the read query, the heartbeat write and the replication state.

use std::error::Error as _;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{ChannelBinding, TlsConnect};
use tokio_postgres::{Client, SimpleQueryMessage};

use super::db::{self, ReplicaReport, ReplicationReport, Target, Timings};
use super::outcome::{Failure, Phase, Reason};
use super::resolve::Host;
use super::tls::TlsClient;
use crate::config::Replication;

/// PostgreSQL's protocol for [`db::Db`].
#[derive(Debug, Default)]
pub struct Postgres {
    /// The heartbeat table was created (or found) by this prober.
    table_ready: bool,
}

/// A connection: the client, and the task that drives it.
#[derive(Debug)]
pub struct Kept {
    client: Client,
    driver: Option<JoinHandle<()>>,
}

impl Drop for Kept {
    /// The client goes first, so the driver says goodbye (`Terminate`) and the server logs
    /// no broken connection; a driver still stuck a second later (a peer that stopped
    /// reading) is aborted.
    fn drop(&mut self) {
        if let Some(driver) = self.driver.take() {
            let abort = driver.abort_handle();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if tokio::time::timeout(std::time::Duration::from_secs(1), driver)
                        .await
                        .is_err()
                    {
                        abort.abort();
                    }
                });
            } else {
                abort.abort();
            }
        }
    }
}

impl db::Engine for Postgres {
    type Conn = Kept;

    fn usable(kept: &Kept) -> bool {
        !kept.client.is_closed()
    }

    async fn open(&mut self, target: &mut Target, timings: &mut Timings) -> Result<Kept, Failure> {
        let password = db::password(&target.config)?;
        let stream = target.connect(&mut timings.phases).await?;
        let target = &*target;
        let mut config = tokio_postgres::Config::new();
        config.user(target.config.user.as_deref().unwrap_or("postgres"));
        if let Some(password) = &password {
            config.password(password);
        }
        if let Some(database) = &target.config.database {
            config.dbname(database);
        }
        config.application_name("regionprobe");
        let handshake = Arc::new(Mutex::new(TlsDone::default()));
        let started = Instant::now();
        let connected = match &target.tls {
            Some(tls) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let connector = Connector {
                    tls: tls.clone(),
                    host: target.host.name().to_owned(),
                    done: handshake.clone(),
                };
                config
                    .connect_raw(stream, connector)
                    .await
                    .map(|(client, connection)| {
                        (client, tokio::spawn(async move { drop(connection.await) }))
                    })
            }
            None => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                config.connect_raw(stream, tokio_postgres::NoTls).await.map(
                    |(client, connection)| {
                        (client, tokio::spawn(async move { drop(connection.await) }))
                    },
                )
            }
        };
        let total = started.elapsed();
        let done = std::mem::take(&mut *handshake.lock().expect("tls lock"));
        let (client, driver) = connected.map_err(|err| match done.failure {
            Some(failure) => failure,
            None if target.tls.is_some() && done.took.is_none() => Failure::new(
                Reason::Tls,
                format!("{}: {}", target.host.name(), describe(&err)),
            ),
            None => failure(&target.host, "connect", &err),
        })?;
        let tls = done.took.unwrap_or_default();
        timings.phases.add(Phase::Tls, tls);
        timings.phases.add(Phase::Auth, total.saturating_sub(tls));
        timings.cert_expiry = done.cert_expiry;
        Ok(Kept {
            client,
            driver: Some(driver),
        })
    }

    async fn queries(
        &mut self,
        target: &Target,
        kept: &mut Kept,
        timings: &mut Timings,
    ) -> Result<(), Failure> {
        let client = &kept.client;
        let started = Instant::now();
        client
            .simple_query(&target.config.query)
            .await
            .map_err(|err| failure(&target.host, "query", &err))?;
        timings.phases.add(Phase::Query, started.elapsed());
        if target.config.write {
            if !self.table_ready {
                // Made once, if missing; a user without CREATE gets the write's own error.
                let _ = client
                    .batch_execute(&format!(
                        "CREATE TABLE IF NOT EXISTS {} (region text PRIMARY KEY, at timestamptz NOT NULL)",
                        target.config.heartbeat_table
                    ))
                    .await;
                self.table_ready = true;
            }
            let started = Instant::now();
            client
                .execute(
                    &format!(
                        "INSERT INTO {} (region, at) VALUES ($1, now()) \
                         ON CONFLICT (region) DO UPDATE SET at = excluded.at",
                        target.config.heartbeat_table
                    ),
                    &[&target.region],
                )
                .await
                .map_err(|err| failure(&target.host, "write", &err))?;
            timings.phases.add(Phase::Write, started.elapsed());
        }
        timings.replication = match target.config.replication {
            None => None,
            Some(Replication::Replica) => Some(standby(client, &target.host).await?),
            Some(Replication::Primary) => Some(primary(client, &target.host).await?),
            Some(Replication::Heartbeat) => {
                let rows = rows(
                    client,
                    &target.host,
                    &format!(
                        "SELECT extract(epoch FROM now() - max(at)) FROM {}",
                        target.config.heartbeat_table
                    ),
                )
                .await?;
                let age = db::number("heartbeat age", cell(&rows, 0, 0))?;
                Some(ReplicationReport {
                    lag: age.map(|age| age.max(0.0)),
                    ..ReplicationReport::default()
                })
            }
        };
        Ok(())
    }
}

/// A standby's own lag: the time since the last replayed transaction committed on the
/// primary, except when everything received is replayed (an idle primary sends nothing, and
/// the standby is then exactly as current as it can be: 0).
const STANDBY: &str = "SELECT pg_is_in_recovery()::text, \
     CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
          ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END, \
     (SELECT status FROM pg_stat_wal_receiver LIMIT 1)";

async fn standby(client: &Client, host: &Host) -> Result<ReplicationReport, Failure> {
    let rows = rows(client, host, STANDBY).await?;
    if cell(&rows, 0, 0) != Some("true") {
        return Err(Failure::new(
            Reason::Validation,
            format!(
                "{}: replication = \"replica\" but the server is not a standby",
                host.name()
            ),
        ));
    }
    let link_up = cell(&rows, 0, 2) == Some("streaming");
    let lag = db::number("replication lag", cell(&rows, 0, 1))?;
    Ok(ReplicationReport {
        lag: lag.map(|lag| lag.max(0.0)),
        link_up: Some(link_up),
        ..ReplicationReport::default()
    })
}

/// Each standby as the primary sees it. The lag columns are NULL once a standby has caught
/// up on an idle primary: that is 0.
const PRIMARY: &str = "SELECT coalesce(nullif(application_name, ''), client_addr::text, 'local'), \
     coalesce(extract(epoch FROM write_lag), 0), coalesce(extract(epoch FROM flush_lag), 0), \
     coalesce(extract(epoch FROM replay_lag), 0), \
     pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) \
     FROM pg_stat_replication ORDER BY 1";

async fn primary(client: &Client, host: &Host) -> Result<ReplicationReport, Failure> {
    let rows = rows(client, host, PRIMARY).await?;
    let mut replicas = Vec::new();
    for row in 0..rows.len() {
        let name = cell(&rows, row, 0).unwrap_or("unknown").to_owned();
        let mut lag = Vec::new();
        for (column, stage) in [(1, "write"), (2, "flush"), (3, "replay")] {
            if let Some(seconds) = db::number("standby lag", cell(&rows, row, column))? {
                lag.push((stage, seconds));
            }
        }
        let gap = db::number("standby gap", cell(&rows, row, 4))?;
        replicas.push(ReplicaReport {
            name,
            lag,
            gap_bytes: gap.map(|bytes| bytes.max(0.0) as u64),
        });
    }
    Ok(ReplicationReport {
        replicas,
        ..ReplicationReport::default()
    })
}

async fn rows(
    client: &Client,
    host: &Host,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, Failure> {
    let messages = client
        .simple_query(sql)
        .await
        .map_err(|err| failure(host, "replication query", &err))?;
    Ok(messages
        .into_iter()
        .filter_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

fn cell(rows: &[Vec<Option<String>>], row: usize, column: usize) -> Option<&str> {
    rows.get(row)?.get(column)?.as_deref()
}

/// The error as words: the server's message, or the cause of a client-side error.
fn describe(err: &tokio_postgres::Error) -> String {
    match (err.as_db_error(), err.source()) {
        (Some(db), _) => format!("{} ({})", db.message(), db.code().code()),
        (None, Some(source)) => format!("{err}: {source}"),
        (None, None) => err.to_string(),
    }
}

/// A tokio-postgres error as a [`Failure`]: SQLSTATE classes to reasons, I/O errors as any
/// connection's.
fn failure(host: &Host, during: &str, err: &tokio_postgres::Error) -> Failure {
    let detail = format!("{} {during}: {}", host.name(), describe(err));
    if let Some(code) = err.code() {
        let reason = if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            Reason::Auth
        } else if *code == SqlState::INVALID_CATALOG_NAME {
            Reason::UnknownDatabase
        } else if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
            Reason::ReadOnly
        } else {
            Reason::Error
        };
        return Failure::new(reason, detail);
    }
    let io = err
        .source()
        .and_then(|source| source.downcast_ref::<io::Error>());
    let reason = match io.map(io::Error::kind) {
        Some(io::ErrorKind::TimedOut) => Reason::Timeout,
        Some(io::ErrorKind::ConnectionRefused) => Reason::Refused,
        _ => Reason::Error,
    };
    Failure::new(reason, detail)
}

/// What the TLS connector left for the prober.
#[derive(Debug, Default)]
struct TlsDone {
    took: Option<std::time::Duration>,
    cert_expiry: Option<SystemTime>,
    failure: Option<Failure>,
}

/// Our rustls client as tokio-postgres's `TlsConnect`, noting the handshake's time (from
/// the start of the connection setup, so the `SSLRequest` round trip is TLS's) and result.
struct Connector {
    tls: TlsClient,
    host: String,
    done: Arc<Mutex<TlsDone>>,
}

impl TlsConnect<TcpStream> for Connector {
    type Stream = Tls;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Tls>> + Send>>;

    fn connect(self, stream: TcpStream) -> Self::Future {
        let started = Instant::now();
        Box::pin(async move {
            let result = self.tls.handshake(stream, &self.host).await;
            let mut done = self.done.lock().expect("tls lock");
            match result {
                Ok(handshake) => {
                    done.took = Some(started.elapsed());
                    done.cert_expiry = handshake.cert_expiry;
                    Ok(Tls(handshake.stream))
                }
                Err(failure) => {
                    let message = failure.detail.clone();
                    done.failure = Some(failure);
                    Err(io::Error::other(message))
                }
            }
        })
    }
}

/// The TLS stream tokio-postgres reads and writes (no channel binding: SCRAM without `-PLUS`).
struct Tls(tokio_rustls::client::TlsStream<TcpStream>);

impl tokio_postgres::tls::TlsStream for Tls {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for Tls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
