//! A PostgreSQL server of a test's own, for tests that stop and start the
//! database: the shared server must stay up for every other test.

use std::path::PathBuf;
use std::process::Command;

/// A running private PostgreSQL on 127.0.0.1; stopped and removed on drop.
pub struct PrivatePostgres {
    dir: PathBuf,
    port: u16,
}

fn bin(name: &str) -> PathBuf {
    let root = PathBuf::from("/usr/lib/postgresql");
    let version = std::fs::read_dir(&root)
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .max()
        .expect("a PostgreSQL version directory");
    root.join(version).join("bin").join(name)
}

/// Runs a command as the `postgres` user (initdb refuses to run as root).
fn as_postgres(program: PathBuf, args: &[&str]) {
    let status = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(&program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    assert!(status.success(), "{} {args:?} failed", program.display());
}

impl PrivatePostgres {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("courier-pg-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let chown = Command::new("chown")
            .args(["postgres:postgres", dir.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(chown.success());
        let data = dir.join("data");
        as_postgres(
            bin("initdb"),
            &[
                "-A",
                "trust",
                "-U",
                "postgres",
                "-D",
                data.to_str().unwrap(),
            ],
        );
        let pg = Self { dir, port };
        pg.up();
        pg
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// Starts the server and waits until it accepts connections.
    pub fn up(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log").display().to_string();
        as_postgres(
            bin("pg_ctl"),
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }

    /// Fast shutdown: open connections are cut, as in a crash or failover.
    pub fn down(&self) {
        as_postgres(
            bin("pg_ctl"),
            &["-D", &self.data(), "-m", "fast", "-w", "stop"],
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
