//! Throwaway local servers for the demo and the tests: a PostgreSQL cluster
//! from the Debian packages on 127.0.0.1, run as the `postgres` OS user when
//! we are root (PostgreSQL refuses to run as root).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

/// A running throwaway cluster; stopped on drop.
pub struct PgCluster {
    /// Data directory.
    pub data: PathBuf,
    /// Port on 127.0.0.1.
    pub port: u16,
    /// Superuser password (user `postgres`).
    pub password: String,
    bin: PathBuf,
    as_user: Option<String>,
}

/// The newest `/usr/lib/postgresql/*/bin` that has `initdb`.
pub fn pg_bin() -> anyhow::Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let v: u32 = e.file_name().to_str()?.parse().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").exists().then_some((v, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    match found.pop() {
        Some((_, b)) => Ok(b),
        None => bail!("PostgreSQL server binaries not found under /usr/lib/postgresql; run scripts/setup.sh (installs Debian's postgresql package)"),
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl PgCluster {
    /// initdb + start under `base` (created; must be new or a previous cluster).
    pub fn start(base: &Path) -> anyhow::Result<PgCluster> {
        let bin = pg_bin()?;
        let as_user = is_root().then(|| "postgres".to_string());
        std::fs::create_dir_all(base)?;
        let data = base.join("data");
        let sock = base.join("sock");
        std::fs::create_dir_all(&sock)?;
        let port = free_port()?;
        let password = crate::util::random_id();
        if let Some(u) = &as_user {
            let st = Command::new("chown").args(["-R", u]).arg(base).status()?;
            if !st.success() {
                bail!("cannot chown {} to {u}", base.display());
            }
            // The postgres user must be able to reach the base directory.
            let mut p = base.parent();
            while let Some(dir) = p {
                if dir == Path::new("/") {
                    break;
                }
                use std::os::unix::fs::PermissionsExt;
                if let Ok(meta) = std::fs::metadata(dir) {
                    let mode = meta.permissions().mode();
                    if mode & 0o001 == 0 {
                        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o711));
                    }
                }
                p = dir.parent();
            }
        }
        let pwfile = base.join("pw");
        std::fs::write(&pwfile, &password)?;
        if let Some(u) = &as_user {
            Command::new("chown").arg(u).arg(&pwfile).status()?;
        }
        let c = PgCluster { data: data.clone(), port, password, bin, as_user };
        let out = c
            .cmd("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .context("running initdb")?;
        let _ = std::fs::remove_file(&pwfile);
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nmax_connections = 300\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\nshared_buffers = 128MB\nlog_min_messages = warning\n",
            sock.display()
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, conf.as_bytes()))?;
        let log = base.join("postgres.log");
        if let Some(u) = &c.as_user {
            let _ = Command::new("touch").arg(&log).status();
            let _ = Command::new("chown").arg(u).arg(&log).status();
        }
        let out = c
            .cmd("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "start"])
            .output()
            .context("running pg_ctl start")?;
        if !out.status.success() {
            bail!(
                "pg_ctl start failed: {}{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Ok(c)
    }

    fn cmd(&self, tool: &str) -> Command {
        match &self.as_user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(self.bin.join(tool));
                c
            }
            None => Command::new(self.bin.join(tool)),
        }
    }

    /// Superuser DSN for `db`.
    pub fn dsn(&self, db: &str) -> String {
        format!("postgresql://postgres:{}@127.0.0.1:{}/{db}?sslmode=disable", self.password, self.port)
    }

    /// Run SQL as the superuser with psql (`ON_ERROR_STOP`).
    pub fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let out = Command::new("psql")
            .arg(self.dsn(db))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGSSLMODE", "disable")
            .output()
            .context("running psql (install postgresql-client)")?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stop the server when this process exits, however it exits.
    pub fn stop_when_process_exits(&self) -> anyhow::Result<()> {
        let ctl = self.bin.join("pg_ctl");
        let stop = match &self.as_user {
            Some(u) => format!("runuser -u {u} -- '{}' -D '{}' -m immediate stop", ctl.display(), self.data.display()),
            None => format!("'{}' -D '{}' -m immediate stop", ctl.display(), self.data.display()),
        };
        run_when_process_exits(&stop)
    }

    /// Turn on TLS with a fresh certificate for `127.0.0.1`/`localhost`, issued
    /// by a fresh CA; returns the CA certificate (PEM) clients must trust.
    pub fn enable_tls(&self) -> anyhow::Result<String> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "wardgate test CA");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate()?;
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
        let cert = params.signed_by(&key, &issuer)?;
        std::fs::write(self.data.join("server.crt"), cert.pem())?;
        std::fs::write(self.data.join("server.key"), key.serialize_pem())?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(self.data.join("server.key"), std::fs::Permissions::from_mode(0o600))?;
        }
        if let Some(u) = &self.as_user {
            Command::new("chown")
                .arg(u)
                .arg(self.data.join("server.crt"))
                .arg(self.data.join("server.key"))
                .status()?;
        }
        self.psql("postgres", "ALTER SYSTEM SET ssl = on")?;
        self.psql("postgres", "SELECT pg_reload_conf()")?;
        Ok(ca_cert.pem())
    }

    /// Add a pg_hba line in front of the others and reload.
    pub fn hba_prepend(&self, line: &str) -> anyhow::Result<()> {
        let path = self.data.join("pg_hba.conf");
        let old = std::fs::read_to_string(&path)?;
        std::fs::write(&path, format!("{line}\n{old}"))?;
        self.psql("postgres", "SELECT pg_reload_conf()")?;
        Ok(())
    }

    /// Stop the server now.
    pub fn stop(&self) {
        let _ = self.cmd("pg_ctl").arg("-D").arg(&self.data).args(["-m", "immediate", "-w", "stop"]).output();
    }

    /// Stop the server and start it again on the same port (fault tests).
    pub fn restart(&self) -> anyhow::Result<()> {
        let log = self.data.parent().unwrap_or(Path::new("/tmp")).join("postgres.log");
        let out = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "start"])
            .output()?;
        if !out.status.success() {
            bail!("pg_ctl start failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Kill process `pid` when this process exits.
pub fn kill_when_process_exits(pid: u32) -> anyhow::Result<()> {
    run_when_process_exits(&format!("kill {pid}"))
}

/// Run shell command `cmd` when this process exits, however it exits (tests
/// keep servers in statics, which Rust never drops; a kill -9 runs no
/// destructor at all): a detached shell watches our pid.
pub fn run_when_process_exits(cmd: &str) -> anyhow::Result<()> {
    let me = std::process::id();
    Command::new("sh")
        .arg("-c")
        .arg(format!("while kill -0 {me} 2>/dev/null; do sleep 0.5; done; {cmd} >/dev/null 2>&1"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("spawning a watchdog")?;
    Ok(())
}

/// Seed the demo schema: customers with realistic PII, orders; a role
/// `wardgate_app` for the gateway that may read and write the seeded tables
/// (it owns none of them, so it cannot alter or drop them) and create its own
/// objects in schema `public` of `db` and of `postgres`, as a developer's
/// agent would. Returns that role's password.
pub fn seed_demo(pg: &PgCluster, db: &str) -> anyhow::Result<String> {
    let app_password = crate::util::random_id();
    pg.psql("postgres", &format!("CREATE DATABASE {db}"))?;
    pg.psql(
        db,
        &format!(
            r#"
CREATE ROLE wardgate_app LOGIN PASSWORD '{app_password}';
CREATE TABLE customers (
  id serial PRIMARY KEY, name text NOT NULL, email text NOT NULL, phone text,
  card_number text, ssn text, notes text, created_at timestamptz DEFAULT now());
CREATE TABLE orders (
  id serial PRIMARY KEY, customer_id int REFERENCES customers(id), amount_cents int NOT NULL,
  status text NOT NULL DEFAULT 'paid', placed_at timestamptz DEFAULT now());
INSERT INTO customers (name, email, phone, card_number, ssn, notes) VALUES
 ('Jane Doe', 'jane.doe@example.com', '+1 415 555 0132', '4111 1111 1111 1111', '123-45-6789', 'prefers email; password=hunter2'),
 ('Omar Haddad', 'omar.haddad@example.org', '(212) 555-0199', '5500-0055-5555-5559', '234-56-7890', 'VIP'),
 ('Li Wei', 'li.wei@example.net', '+44 20 7946 0958', '378282246310005', '345-67-8901', 'IBAN GB82 WEST 1234 5698 7654 32'),
 ('Ana Souza', 'ana.souza@example.com', '+55 11 91234 5678', '6011111111111117', '456-78-9012', NULL),
 ('Sam Okafor', 'sam.okafor@example.io', '555-867-5309', '4012888888881881', '567-89-0123', 'API key AKIAIOSFODNN7EXAMPLE');
INSERT INTO orders (customer_id, amount_cents, status)
  SELECT 1 + (g % 5), 500 + (g * 37) % 20000, CASE WHEN g % 7 = 0 THEN 'refunded' ELSE 'paid' END
  FROM generate_series(1, 200) g;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO wardgate_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO wardgate_app;
GRANT CREATE ON SCHEMA public TO wardgate_app;
"#
        ),
    )?;
    pg.psql("postgres", "GRANT CREATE ON SCHEMA public TO wardgate_app")?;
    Ok(app_password)
}
