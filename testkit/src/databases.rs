//! Real database servers from the Debian packages, started by the tests (root only: the
//! PostgreSQL server refuses to run as root and is started as the `postgres` user): each on
//! 127.0.0.1 with a port of its own and its data in a temp dir, stopped on drop.
//!
//! - [`Postgres`]: `initdb` + `postgres`; [`Postgres::standby`] makes a streaming standby with
//!   `pg_basebackup -R`. The superuser `postgres` has the password [`PASSWORD`] over TCP
//!   (scram-sha-256); [`Postgres::sql`] runs SQL through `psql` over the Unix socket.
//! - [`Mariadb`]: `mariadb-install-db` + `mariadbd`; [`Mariadb::replica_of`] replicates;
//! - [`Redis`]: `redis-server` with `requirepass` [`PASSWORD`]; [`Redis::replica_of`]
//!   replicates another one; [`Redis::in_namespace`] runs one inside a network namespace on
//!   the region's address (the failover drill).
//! - [`Postgres::tls`], [`Mariadb::tls`], [`Redis::tls`]: certificates from the test kit's
//!   throwaway [`crate::peers::Pki`].

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::black_box::{TempDir, free_port};
use crate::services::Daemon;

/// The password of every test server's privileged user.
pub const PASSWORD: &str = "s3cret-db-pass-Zq7";

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Whether the servers can be started here: root (PostgreSQL runs as `postgres`) and the
/// binaries installed.
pub fn available() -> Result<(), String> {
    if !crate::black_box::is_root() {
        return Err("starting database servers needs root".into());
    }
    for binary in [
        format!("{PG_BIN}/initdb"),
        format!("{PG_BIN}/postgres"),
        "/usr/bin/redis-server".into(),
        "/usr/sbin/mariadbd".into(),
    ] {
        if !Path::new(&binary).is_file() {
            return Err(format!(
                "{binary} is not installed (postgresql-15, redis-server, mariadb-server)"
            ));
        }
    }
    Ok(())
}

fn wait_until(timeout: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} not ready after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn postgres_ids() -> (u32, u32) {
    let user = nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("the postgres user (package postgresql)");
    (user.uid.as_raw(), user.gid.as_raw())
}

fn as_postgres(program: &str) -> Command {
    let (uid, gid) = postgres_ids();
    let mut command = Command::new(program);
    command.uid(uid).gid(gid).env("PGPASSWORD", PASSWORD);
    command
}

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A PostgreSQL 15 server.
#[derive(Debug)]
pub struct Postgres {
    pub port: u16,
    data: PathBuf,
    daemon: Daemon,
    _dir: TempDir,
}

impl Postgres {
    /// A new primary.
    pub fn primary() -> Self {
        let (dir, data) = Self::init();
        Self::start(dir, data, &[])
    }

    /// A new primary with `ssl = on` (plain text still allowed), its certificate for `names`
    /// signed by `pki`.
    pub fn tls(pki: &crate::peers::Pki, names: &[&str]) -> Self {
        let (dir, data) = Self::init();
        let (cert, key) = pki.leaf_pem(names);
        let (uid, gid) = postgres_ids();
        let mut settings = vec!["-c".to_owned(), "ssl=on".to_owned()];
        for (name, text, setting) in [
            ("cert.pem", cert, "ssl_cert_file"),
            ("key.pem", key, "ssl_key_file"),
        ] {
            // The server refuses a key file others can read; it runs as `postgres`.
            let path = dir.write(name, &text);
            nix::unistd::chown(&path, Some(uid.into()), Some(gid.into())).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            settings.push("-c".to_owned());
            settings.push(format!("{setting}={}", path.display()));
        }
        let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
        Self::start(dir, data, &settings)
    }

    /// `initdb` in a new temp dir owned by `postgres`: the dir and the data directory.
    fn init() -> (TempDir, PathBuf) {
        let dir = TempDir::new("pg");
        let (uid, gid) = postgres_ids();
        nix::unistd::chown(&dir.0, Some(uid.into()), Some(gid.into())).unwrap();
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o700)).unwrap();
        let data = dir.0.join("data");
        let pwfile = dir.0.join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        nix::unistd::chown(&pwfile, Some(uid.into()), Some(gid.into())).unwrap();
        run(as_postgres(&format!("{PG_BIN}/initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["--no-sync", "-E", "UTF8", "--locale=C"]));
        (dir, data)
    }

    /// A streaming standby of `self` (`pg_basebackup -R`), started.
    pub fn standby(&self) -> Self {
        let dir = TempDir::new("pg-standby");
        let (uid, gid) = postgres_ids();
        nix::unistd::chown(&dir.0, Some(uid.into()), Some(gid.into())).unwrap();
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o700)).unwrap();
        let data = dir.0.join("data");
        run(as_postgres(&format!("{PG_BIN}/pg_basebackup"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg("-D")
            .arg(&data)
            .args(["-R", "-X", "stream", "--no-sync", "-c", "fast"]));
        Self::start(dir, data, &[])
    }

    fn start(dir: TempDir, data: PathBuf, extra: &[&str]) -> Self {
        let port = free_port();
        let daemon = Daemon::spawn(
            &format!("postgres:{port}"),
            as_postgres(&format!("{PG_BIN}/postgres"))
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
                .arg("-c")
                .arg(format!("unix_socket_directories={}", dir.0.display()))
                .args(["-c", "fsync=off", "-c", "shared_buffers=16MB"])
                .args([
                    "-c",
                    "max_connections=40",
                    "-c",
                    "wal_receiver_status_interval=1s",
                ])
                .args(extra),
        );
        let mut server = Postgres {
            port,
            data,
            daemon,
            _dir: dir,
        };
        server
            .daemon
            .wait_for_line(Duration::from_secs(30), |line| {
                line.contains("ready to accept").then_some(())
            });
        server
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Runs `sql` as `postgres` over the Unix socket; the rows, `|`-separated.
    pub fn sql(&self, sql: &str) -> String {
        run(as_postgres(&format!("{PG_BIN}/psql"))
            .arg("-h")
            .arg(self._dir.0.as_os_str())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql]))
        .trim()
        .to_owned()
    }

    /// Waits until the standby `self` has replayed everything it received.
    pub fn wait_streaming(&self) {
        wait_until(Duration::from_secs(30), "standby streaming", || {
            self.sql("SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'") == "1"
        });
    }

    /// Stops the server (fast shutdown); it stays stopped.
    pub fn stop(&mut self) {
        self.daemon
            .stop_with(Signal::SIGINT, Duration::from_secs(10));
    }

    pub fn data(&self) -> &Path {
        &self.data
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Immediate shutdown: the backends go with the postmaster.
        self.daemon
            .stop_with(Signal::SIGQUIT, Duration::from_secs(5));
    }
}

/// A Redis server.
#[derive(Debug)]
pub struct Redis {
    pub port: u16,
    host: std::net::IpAddr,
    daemon: Daemon,
    _dir: TempDir,
    _files: Option<TempDir>,
}

impl Redis {
    /// A primary with `requirepass`.
    pub fn primary() -> Self {
        Self::start(&[])
    }

    /// A primary speaking TLS only, with a certificate for `names` signed by `pki`.
    pub fn tls(pki: &crate::peers::Pki, names: &[&str]) -> Self {
        let files = TempDir::new("redis-tls");
        let (cert, key) = pki.leaf_pem(names);
        let cert = files.write("cert.pem", &cert).display().to_string();
        let key = files.write("key.pem", &key).display().to_string();
        let ca = files.write("ca.pem", &pki.ca_pem).display().to_string();
        let port = free_port().to_string();
        let mut server = Self::start(&[
            "--port",
            "0",
            "--tls-port",
            &port,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ]);
        server.port = port.parse().unwrap();
        server._files = Some(files);
        server
    }

    /// A replica of `primary`.
    pub fn replica_of(primary: &Redis) -> Self {
        let port = primary.port.to_string();
        Self::start(&["--replicaof", "127.0.0.1", &port, "--masterauth", PASSWORD])
    }

    /// A server run with the command `prefix` (`ip netns exec NS`: inside a network
    /// namespace) on `addr`; with `primary`, its replica (the primary must be reachable from
    /// there).
    pub fn in_namespace(prefix: &[&str], addr: SocketAddr, primary: Option<SocketAddr>) -> Self {
        let mut extra = Vec::new();
        if let Some(primary) = primary {
            extra = vec![
                "--replicaof".to_owned(),
                primary.ip().to_string(),
                primary.port().to_string(),
                "--masterauth".to_owned(),
                PASSWORD.to_owned(),
            ];
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        Self::start_at(prefix, addr, &extra)
    }

    fn start(extra: &[&str]) -> Self {
        Self::start_at(&[], SocketAddr::from(([127, 0, 0, 1], free_port())), extra)
    }

    fn start_at(prefix: &[&str], addr: SocketAddr, extra: &[&str]) -> Self {
        let dir = TempDir::new("redis");
        // `--port` among `extra` (TLS only) wins: the last one given counts.
        let port = addr.port();
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg("/usr/bin/redis-server");
                command
            }
            None => Command::new("/usr/bin/redis-server"),
        };
        let mut daemon = Daemon::spawn(
            &format!("redis:{addr}"),
            command
                .args([
                    "--bind",
                    &addr.ip().to_string(),
                    "--port",
                    &port.to_string(),
                ])
                .args([
                    "--requirepass",
                    PASSWORD,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(&dir.0)
                .args([
                    "--repl-ping-replica-period",
                    "1",
                    "--enable-debug-command",
                    "yes",
                ])
                .args(extra),
        );
        daemon.wait_for_line(Duration::from_secs(30), |line| {
            line.contains("Ready to accept connections").then_some(())
        });
        Redis {
            port,
            host: addr.ip(),
            daemon,
            _dir: dir,
            _files: None,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// Sends one command (authenticated) and returns the raw reply text.
    pub fn command(&self, args: &[&str]) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut out = String::new();
        for command in [&["AUTH", PASSWORD][..], args] {
            out.push_str(&format!("*{}\r\n", command.len()));
            for arg in command {
                out.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
            }
        }
        stream.write_all(out.as_bytes()).unwrap();
        let mut reply = Vec::new();
        let mut buf = [0; 4096];
        // "+OK\r\n" for AUTH, then the command's reply: read until both are in.
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&reply);
            if let Some(rest) = text.strip_prefix("+OK\r\n")
                && complete(rest)
            {
                return rest.to_owned();
            }
        }
        String::from_utf8_lossy(&reply).into_owned()
    }

    /// Waits until the replica `self` has its link up.
    pub fn wait_link_up(&self) {
        wait_until(Duration::from_secs(30), "redis replica link", || {
            self.command(&["INFO", "replication"])
                .contains("master_link_status:up")
        });
    }

    /// Stops the server now.
    pub fn stop(&mut self) {
        self.daemon
            .stop_with(Signal::SIGKILL, Duration::from_secs(5));
    }
}

/// Whether `text` holds one whole simple, error, integer or bulk reply.
fn complete(text: &str) -> bool {
    match text.as_bytes().first() {
        Some(b'$') => {
            let Some((head, rest)) = text.split_once("\r\n") else {
                return false;
            };
            match head[1..].parse::<i64>() {
                Ok(n) if n < 0 => true,
                Ok(n) => rest.len() >= n as usize + 2,
                Err(_) => true,
            }
        }
        Some(_) => text.ends_with("\r\n"),
        None => false,
    }
}

/// A MariaDB server (`mariadb-install-db` + `mariadbd`, run as root with `--user=root`). The
/// primary has the user `probe` (password [`PASSWORD`]: `SELECT, INSERT, UPDATE, CREATE` and
/// `SLAVE MONITOR`, no `SUPER`, so a read-only replica refuses its writes) and the database
/// `probe`; a replica replicates all of it from the primary's first binlog.
#[derive(Debug)]
pub struct Mariadb {
    pub port: u16,
    socket: PathBuf,
    daemon: Daemon,
    _dir: TempDir,
    _files: Option<TempDir>,
}

impl Mariadb {
    pub fn primary() -> Self {
        let server = Self::start(1, &[]);
        server.create_probe_user();
        server
    }

    fn create_probe_user(&self) {
        self.sql(&format!(
            "CREATE USER 'probe'@'%' IDENTIFIED BY '{PASSWORD}'; \
             GRANT SELECT, INSERT, UPDATE, CREATE ON *.* TO 'probe'@'%'; \
             GRANT SLAVE MONITOR ON *.* TO 'probe'@'%'; \
             CREATE USER 'repl'@'%' IDENTIFIED BY '{PASSWORD}'; \
             GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%'; \
             CREATE DATABASE probe;"
        ));
    }

    /// A primary (as [`Mariadb::primary`]) that also speaks TLS, its certificate for `names`
    /// signed by `pki`.
    pub fn tls(pki: &crate::peers::Pki, names: &[&str]) -> Self {
        let files = TempDir::new("mariadb-tls");
        let (cert, key) = pki.leaf_pem(names);
        let cert = files.write("cert.pem", &cert);
        let key = files.write("key.pem", &key);
        let ca = files.write("ca.pem", &pki.ca_pem);
        let settings = [
            format!("--ssl-cert={}", cert.display()),
            format!("--ssl-key={}", key.display()),
            format!("--ssl-ca={}", ca.display()),
        ];
        let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
        let mut server = Self::start(1, &settings);
        server._files = Some(files);
        server.create_probe_user();
        server
    }

    /// A read-only replica of `primary`, replicating.
    pub fn replica_of(primary: &Mariadb) -> Self {
        let server = Self::start(2, &["--read-only=1"]);
        server.sql(&format!(
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='repl', \
             MASTER_PASSWORD='{PASSWORD}', MASTER_USE_GTID=no, MASTER_LOG_FILE='bin.000001', \
             MASTER_LOG_POS=4; START SLAVE;",
            primary.port
        ));
        wait_until(
            Duration::from_secs(30),
            "mariadb replica has the probe user",
            || server.sql("SELECT count(*) FROM mysql.user WHERE user = 'probe'") == "1",
        );
        server
    }

    fn start(id: u32, extra: &[&str]) -> Self {
        let dir = TempDir::new("mariadb");
        let data = dir.0.join("data");
        // Each server's own temporary directory: bootstraps running at once in the shared
        // /tmp failed now and then (CI: "Could not remove temporary table
        // '/tmp/#sql-temptable-...', error: 2", then "Unknown table 'mysql.tmp_user_sys'").
        let tmp = dir.0.join("tmp");
        std::fs::create_dir_all(&tmp).expect("mariadb tmpdir");
        run(Command::new("/usr/bin/mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=root",
            ]));
        let port = free_port();
        let socket = dir.0.join("sock");
        let mut daemon = Daemon::spawn(
            &format!("mariadb:{port}"),
            Command::new("/usr/sbin/mariadbd")
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--tmpdir={}", tmp.display()))
                .arg(format!("--socket={}", socket.display()))
                .arg(format!("--pid-file={}", dir.0.join("pid").display()))
                .arg(format!("--log-bin={}", dir.0.join("bin").display()))
                .args([
                    "--user=root",
                    "--bind-address=127.0.0.1",
                    "--skip-name-resolve",
                ])
                .arg(format!("--port={port}"))
                .arg(format!("--server-id={id}"))
                .args(["--innodb-buffer-pool-size=16M", "--skip-log-error"])
                .args(extra),
        );
        daemon.wait_for_line(Duration::from_secs(60), |line| {
            line.contains("ready for connections").then_some(())
        });
        Mariadb {
            port,
            socket,
            daemon,
            _dir: dir,
            _files: None,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Runs `sql` as root over the socket; the rows, tab-separated.
    pub fn sql(&self, sql: &str) -> String {
        run(Command::new("/usr/bin/mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-uroot", "-N", "-B", "-e", sql]))
        .trim()
        .to_owned()
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        self.daemon
            .stop_with(Signal::SIGKILL, Duration::from_secs(5));
    }
}
