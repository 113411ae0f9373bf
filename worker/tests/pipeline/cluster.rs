//! A private PostgreSQL cluster for the one test that stops and restarts
//! its server: the shared test cluster serves every other test running in
//! parallel, which a restart would break. Built like `./dev`'s: the server
//! binaries from `/usr/lib/postgresql/*/bin` (or `pg_config --bindir`), run
//! as the `postgres` user when the tests run as root, on 127.0.0.1 and a
//! free port, trust authentication.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::harness::free_port;

pub struct PrivateCluster {
    root: PathBuf,
    data: PathBuf,
    bindir: PathBuf,
    port: u16,
    as_postgres: bool,
}

/// The newest server binary directory holding `initdb` and `pg_ctl`.
fn server_bindir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
        .collect();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop().or_else(|| {
        let out = Command::new("pg_config").arg("--bindir").output().ok()?;
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        (dir.join("initdb").exists() && dir.join("pg_ctl").exists()).then_some(dir)
    })
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl PrivateCluster {
    /// Initialises and starts a cluster; `Err` says why it cannot be done
    /// here (the caller skips its test).
    pub fn start() -> Result<Self, String> {
        let bindir =
            server_bindir().ok_or("no PostgreSQL server binaries (initdb, pg_ctl) found")?;
        let root = std::env::temp_dir().join(format!("txdx-pg-restart-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&root)
            .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        let as_postgres = running_as_root();
        let cluster = Self {
            data: root.join("data"),
            root,
            bindir,
            port: free_port(),
            as_postgres,
        };
        if as_postgres {
            run(Command::new("chown").arg("postgres:").arg(&cluster.root))
                .map_err(|e| format!("running as root needs the postgres user: {e}"))?;
        }
        cluster.pg(
            "initdb",
            &[
                "-D",
                path(&cluster.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
        )?;
        cluster.start_server()?;
        Ok(cluster)
    }

    /// The URL of database `db` on this cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Starts the server (again), on the same port.
    pub fn start_server(&self) -> Result<(), String> {
        let log = self.data.join("server.log");
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off -c max_connections=100",
            self.port
        );
        self.pg(
            "pg_ctl",
            &[
                "-D",
                path(&self.data),
                "-w",
                "-t",
                "30",
                "-l",
                path(&log),
                "-o",
                &options,
                "start",
            ],
        )
    }

    /// Stops the server the way an operator's restart does (`-m fast`:
    /// sessions are disconnected, in-flight transactions roll back).
    pub fn stop_server(&self) -> Result<(), String> {
        self.pg(
            "pg_ctl",
            &["-D", path(&self.data), "-m", "fast", "-w", "stop"],
        )
    }

    /// Crashes the server (`-m immediate`: no checkpoint; recovery replays
    /// the WAL at the next start).
    pub fn crash_server(&self) -> Result<(), String> {
        self.pg(
            "pg_ctl",
            &["-D", path(&self.data), "-m", "immediate", "-w", "stop"],
        )
    }

    fn pg(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let program = self.bindir.join(program);
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(&program);
            cmd
        } else {
            Command::new(&program)
        };
        cmd.args(args);
        run(&mut cmd)
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = self.pg(
            "pg_ctl",
            &["-D", path(&self.data), "-m", "immediate", "-w", "stop"],
        );
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
