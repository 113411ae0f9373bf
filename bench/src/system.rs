//! The system under test: the real `api` and `worker` release binaries,
//! started as child processes on 127.0.0.1 with the environment they read in
//! production, and watched through `/proc`.

use std::{
    collections::HashMap,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::procfs;

/// Time spent in one step of the workers' pipeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepTime {
    /// The histogram and its labels, e.g. `txdx_batch_seconds{batcher="outcomes"}`.
    pub step: String,
    /// How many times the step ran.
    pub calls: u64,
    /// Seconds spent in it, all calls together.
    pub total_secs: f64,
}

/// Adds the `*_seconds` histograms of a Prometheus text exposition (their
/// `_sum` and `_count` lines) to `steps`, summing a step several
/// expositions name.
fn add_step_times(text: &str, steps: &mut Vec<StepTime>) {
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').map_or((series, ""), |(n, l)| (n, l));
        let (family, is_sum) = if let Some(f) = name.strip_suffix("_seconds_sum") {
            (f, true)
        } else if let Some(f) = name.strip_suffix("_seconds_count") {
            (f, false)
        } else {
            continue;
        };
        let step = if labels.is_empty() {
            format!("{family}_seconds")
        } else {
            format!("{family}_seconds{{{labels}")
        };
        let entry = match steps.iter_mut().position(|s| s.step == step) {
            Some(i) => &mut steps[i],
            None => {
                steps.push(StepTime {
                    step,
                    calls: 0,
                    total_secs: 0.0,
                });
                let last = steps.len() - 1;
                &mut steps[last]
            }
        };
        if is_sum {
            entry.total_secs += value;
        } else {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a count"
            )]
            let calls = value as u64;
            entry.calls += calls;
        }
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One process of the system, by role.
pub struct Proc {
    /// `api`, `worker-1`, ...
    pub name: String,
    child: Child,
    pid: u32,
    /// A worker's `/metrics` address.
    metrics_url: Option<String>,
}

impl Proc {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// The [`ProcUsage`] of the machine's busy time that none of the measured
/// processes used.
pub const OTHERS: &str = "others";
/// The [`ProcUsage`] of the time the hypervisor ran something else.
pub const STOLEN: &str = "stolen";

/// CPU and memory of one process over one phase.
#[derive(Debug, Clone, Serialize)]
pub struct ProcUsage {
    /// Role.
    pub name: String,
    /// CPU seconds used during the phase.
    pub cpu_secs: f64,
    /// CPU seconds per wall second (1.0 = one core busy).
    pub cores: f64,
    /// Largest resident set size (`VmRSS`, MiB) seen during the phase
    /// (sampled every 100 ms).
    pub peak_rss_mib: f64,
    /// `VmHWM` at the end of the phase (MiB): the process's lifetime peak,
    /// earlier phases included.
    pub lifetime_peak_rss_mib: f64,
    /// Most connections it held to PostgreSQL at once (sampled every 100 ms).
    pub peak_db_connections: usize,
}

/// The api, the workers and the settings they were started with.
pub struct System {
    bin_dir: PathBuf,
    log_dir: PathBuf,
    env: Vec<(String, String)>,
    /// Base URL of the api.
    pub api_url: String,
    api: Option<Proc>,
    workers: Vec<Proc>,
    worker_serial: usize,
    /// Peak (connections, RSS MiB) by pid, fed by [`System::sample_connections`].
    peaks: Arc<Mutex<HashMap<u32, (usize, f64)>>>,
    pg_port: u16,
    /// The PostgreSQL server process, when it runs on this machine.
    pub postmaster: Option<u32>,
}

impl System {
    /// Prepares the environment shared by every process: the database,
    /// secrets made up for this run, and `extra` overrides.
    pub fn new(
        bin_dir: &Path,
        log_dir: &Path,
        database_url: &str,
        pg_port: u16,
        extra: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let api_port = free_port()?;
        std::fs::create_dir_all(log_dir)?;
        let frontend = log_dir.join("frontend");
        std::fs::create_dir_all(&frontend)?;
        let jwt: String = ulid::Ulid::generate().to_string().repeat(3);
        let mut env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), database_url.into()),
            ("JWT_SECRET_KEY".into(), jwt),
            ("API_ADDR".into(), format!("127.0.0.1:{api_port}")),
            (
                "TXDX_LOCAL_SECRET_KEY".into(),
                // 32 bytes, base64: a throw-away key for this run's store.
                "YmVuY2gtbG9jYWwtc2VjcmV0LWtleS0zMi1ieXRlcyE=".into(),
            ),
            ("RUST_LOG".into(), "info,sqlx=warn".into()),
            // The worker's allocator setting, as the Docker image and `./dev
            // up` set it (ARCHITECTURE.md, "Memory").
            ("MALLOC_MMAP_THRESHOLD_".into(), "131072".into()),
            ("FRONTEND_DIR".into(), frontend.display().to_string()),
        ];
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push((k.clone(), v.clone()));
        }
        Ok(Self {
            bin_dir: bin_dir.to_path_buf(),
            log_dir: log_dir.to_path_buf(),
            env,
            api_url: format!("http://127.0.0.1:{api_port}"),
            api: None,
            workers: Vec::new(),
            worker_serial: 0,
            peaks: Arc::default(),
            pg_port,
            postmaster: None,
        })
    }

    fn command(&self, bin: &str, log: &str) -> anyhow::Result<Command> {
        let path = self.bin_dir.join(bin);
        if !path.exists() {
            bail!(
                "{} is missing: build it with `cargo build --release --bin api --bin worker` (scripts/bench.sh does)",
                path.display()
            );
        }
        let out = std::fs::File::create(self.log_dir.join(format!("{log}.log")))?;
        let mut cmd = Command::new(path);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true);
        Ok(cmd)
    }

    /// `api migrate`, then `api serve` until `/ready` answers.
    pub async fn start_api(&mut self, client: &reqwest::Client) -> anyhow::Result<()> {
        let status = self
            .command("api", "api-migrate")?
            .arg("migrate")
            .status()
            .await?;
        if !status.success() {
            bail!("`api migrate` failed (see api-migrate.log)");
        }
        let child = self.command("api", "api")?.arg("serve").spawn()?;
        let pid = child.id().context("api exited at once")?;
        self.api = Some(Proc {
            name: "api".into(),
            child,
            pid,
            metrics_url: None,
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(format!("{}/ready", self.api_url)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the api did not become ready in 60 s (see api.log)");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts `n` worker processes (each its own metrics port).
    pub fn start_workers(&mut self, n: usize) -> anyhow::Result<()> {
        for _ in 0..n {
            self.worker_serial += 1;
            let name = format!("worker-{}", self.worker_serial);
            let mut cmd = self.command("worker", &name)?;
            let addr = format!("127.0.0.1:{}", free_port()?);
            cmd.env("WORKER_METRICS_ADDR", &addr);
            let child = cmd.spawn()?;
            let pid = child.id().context("worker exited at once")?;
            self.workers.push(Proc {
                name,
                child,
                pid,
                metrics_url: Some(format!("http://{addr}/metrics")),
            });
        }
        Ok(())
    }

    /// The time the running workers spent in each step of their pipeline,
    /// summed over the workers: every `*_seconds` histogram of theirs,
    /// read from `/metrics` (cumulative since each worker started). A
    /// worker that does not answer is left out.
    pub async fn worker_steps(&self, client: &reqwest::Client) -> Vec<StepTime> {
        let mut steps: Vec<StepTime> = Vec::new();
        for url in self.workers.iter().filter_map(|w| w.metrics_url.as_deref()) {
            let Ok(response) = client.get(url).send().await else {
                continue;
            };
            let Ok(text) = response.text().await else {
                continue;
            };
            add_step_times(&text, &mut steps);
        }
        steps
    }

    /// SIGTERM to every worker; waits for them (graceful drain).
    pub async fn stop_workers(&mut self) {
        for w in &self.workers {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(w.pid.to_string())
                .status();
        }
        for w in &mut self.workers {
            if tokio::time::timeout(Duration::from_secs(40), w.child.wait())
                .await
                .is_err()
            {
                let _ = w.child.kill().await;
            }
        }
        self.workers.clear();
    }

    /// Stops everything.
    pub async fn stop(&mut self) {
        self.stop_workers().await;
        if let Some(api) = &mut self.api {
            let _ = api.child.kill().await;
        }
        self.api = None;
    }

    /// The api and the workers now running.
    pub fn procs(&self) -> impl Iterator<Item = &Proc> {
        self.api.iter().chain(self.workers.iter())
    }

    /// Whether every process is still alive.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in self.api.iter_mut().chain(self.workers.iter_mut()) {
            if let Ok(Some(status)) = p.child.try_wait() {
                bail!("{} exited ({status}); see {}.log", p.name, p.name);
            }
        }
        Ok(())
    }

    /// Samples every process's resident memory every 100 ms and its
    /// PostgreSQL connections every second (pool sizes change slowly, and
    /// reading the kernel's socket tables is the costly part: at 100 ms for
    /// each process the benchmark took a tenth of the machine's CPU during
    /// the drain), until the returned handle is dropped.
    pub fn sample_connections(&self) -> ConnectionSampler {
        let pids: Vec<u32> = self.procs().map(Proc::pid).collect();
        let peaks = self.peaks.clone();
        let port = self.pg_port;
        let task = tokio::spawn(async move {
            let mut connections = HashMap::new();
            for round in 0_u64.. {
                if round % 10 == 0 {
                    connections = procfs::connections_to_port(&pids, port);
                }
                for pid in &pids {
                    let n = connections.get(pid).copied().unwrap_or(0);
                    let rss = procfs::rss_mib(*pid).unwrap_or(0.0);
                    let mut map = peaks
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let peak = map.entry(*pid).or_default();
                    *peak = (peak.0.max(n), peak.1.max(rss));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        ConnectionSampler(task)
    }

    /// A snapshot to measure a phase from.
    pub fn mark(&self) -> Mark {
        self.peaks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        Mark {
            at: Instant::now(),
            cpu: self
                .procs()
                .map(|p| (p.pid, procfs::cpu_seconds(p.pid, false).unwrap_or(0.0)))
                .collect(),
            postgres: self.postmaster.and_then(procfs::postgres_cpu_seconds),
            bench: procfs::cpu_seconds(std::process::id(), false),
            machine: procfs::machine_cpu(),
        }
    }

    /// Usage of each process since `mark`.
    pub fn usage_since(&self, mark: &Mark) -> Vec<ProcUsage> {
        let wall = mark.at.elapsed().as_secs_f64().max(1e-9);
        let peaks = self
            .peaks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut usage: Vec<ProcUsage> = self
            .procs()
            .map(|p| {
                let before = mark.cpu.get(&p.pid).copied().unwrap_or(0.0);
                let cpu = procfs::cpu_seconds(p.pid, false).unwrap_or(0.0) - before;
                let (conns, rss) = peaks.get(&p.pid).copied().unwrap_or_default();
                ProcUsage {
                    name: p.name.clone(),
                    cpu_secs: cpu,
                    cores: cpu / wall,
                    peak_rss_mib: rss,
                    lifetime_peak_rss_mib: procfs::peak_rss_mib(p.pid).unwrap_or(0.0),
                    peak_db_connections: conns,
                }
            })
            .collect();
        let db_connections: usize = usage.iter().map(|u| u.peak_db_connections).sum();
        if let (Some(before), Some(after)) = (
            mark.postgres,
            self.postmaster.and_then(procfs::postgres_cpu_seconds),
        ) {
            usage.push(ProcUsage {
                name: "postgres".into(),
                cpu_secs: after - before,
                cores: (after - before) / wall,
                peak_rss_mib: 0.0,
                lifetime_peak_rss_mib: 0.0,
                // Sum of the per-process peaks: an upper bound of the total.
                peak_db_connections: db_connections,
            });
        }
        let me = std::process::id();
        if let (Some(before), Some(after)) = (mark.bench, procfs::cpu_seconds(me, false)) {
            usage.push(ProcUsage {
                name: "bench".into(),
                cpu_secs: after - before,
                cores: (after - before) / wall,
                peak_rss_mib: procfs::rss_mib(me).unwrap_or(0.0),
                lifetime_peak_rss_mib: procfs::peak_rss_mib(me).unwrap_or(0.0),
                peak_db_connections: 0,
            });
        }
        // What the processes above did not use of the machine's busy time
        // (other processes, interrupts such as loopback networking), and
        // what the hypervisor took: a phase that shares its machine says so.
        if let (Some(before), Some(after)) = (mark.machine, procfs::machine_cpu()) {
            let ours: f64 = usage.iter().map(|u| u.cpu_secs).sum();
            for (name, secs) in [
                (OTHERS, (after.busy_secs - before.busy_secs - ours).max(0.0)),
                (STOLEN, (after.steal_secs - before.steal_secs).max(0.0)),
            ] {
                usage.push(ProcUsage {
                    name: name.into(),
                    cpu_secs: secs,
                    cores: secs / wall,
                    peak_rss_mib: 0.0,
                    lifetime_peak_rss_mib: 0.0,
                    peak_db_connections: 0,
                });
            }
        }
        usage
    }
}

/// CPU counters at the start of a phase.
pub struct Mark {
    at: Instant,
    cpu: HashMap<u32, f64>,
    postgres: Option<f64>,
    bench: Option<f64>,
    machine: Option<procfs::MachineCpu>,
}

/// Stops sampling when dropped.
pub struct ConnectionSampler(tokio::task::JoinHandle<()>);

impl Drop for ConnectionSampler {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_times_pair_each_histograms_sum_and_count() {
        let text = "# TYPE txdx_batch_seconds histogram\n\
txdx_batch_seconds_bucket{batcher=\"outcomes\",le=\"0.005\"} 3\n\
txdx_batch_seconds_sum{batcher=\"outcomes\"} 1.5\n\
txdx_batch_seconds_count{batcher=\"outcomes\"} 40\n\
txdx_worker_queue_seconds_sum{step=\"fetch\"} 0.25\n\
txdx_worker_queue_seconds_count{step=\"fetch\"} 10\n\
txdx_batch_size_sum{batcher=\"outcomes\"} 4000\n\
txdx_worker_actions_started_total 7\n";
        let mut steps = Vec::new();
        add_step_times(text, &mut steps);
        assert_eq!(
            steps,
            vec![
                StepTime {
                    step: "txdx_batch_seconds{batcher=\"outcomes\"}".into(),
                    calls: 40,
                    total_secs: 1.5,
                },
                StepTime {
                    step: "txdx_worker_queue_seconds{step=\"fetch\"}".into(),
                    calls: 10,
                    total_secs: 0.25,
                },
            ]
        );
        // A second worker's exposition adds to the same steps.
        add_step_times(text, &mut steps);
        assert_eq!((steps[0].calls, steps[0].total_secs), (80, 3.0));
    }
}
