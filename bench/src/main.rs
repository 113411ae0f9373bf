//! `bench`: the whole TxDx pipeline measured against PostgreSQL's own limits.
//!
//! On one PostgreSQL server (`DATABASE_URL`, an administrator's URL; the
//! benchmark creates and drops its own databases `txdx_bench`,
//! `txdx_pgbench` and `txdx_noop` there) it runs, in order:
//!
//! 1. pgbench with a one-job-at-a-time and a 100-jobs-per-statement queue
//!    lifecycle: the baselines;
//! 2. bare apalis draining no-op jobs;
//! 3. the real `api` and `worker` release binaries with K companies whose
//!    integrations are simulated, under an open-loop load generator:
//!    a sweep of fixed offered POST rates (with a GET stream alongside),
//!    end-to-end saturation with 1, 2, 4 worker processes, a step at half
//!    saturation, and a drain of N pre-queued tickets;
//! 4. the api's and the workers' memory at rest, a burst of concurrent
//!    logins under a steady `GET /api/tickets` stream, and growth: the
//!    saturation, half-saturation and drain figures again, in rounds each
//!    judged against the one before it: on the tables as they are, with a
//!    large history seeded into them, then with many more companies.
//!
//! It writes `results.json` and `report.md` to `--out-dir` and the two SVG
//! charts to `--plot-dir`. `scripts/bench.sh` builds and runs it.

mod history;
mod load;
mod noop;
mod pgbench;
mod phases;
mod plot;
mod probe;
mod procfs;
mod report;
mod stats;
mod system;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use clap::Parser;
use sqlx::PgPool;

use crate::{
    load::{Request, Tenant},
    report::{Drain, RampRun, Results, Saturation, Step},
    stats::Percentiles,
    system::System,
};

/// Command line. Every count has a full-run default and a smoke default.
#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "Benchmark the TxDx pipeline against pgbench on the same PostgreSQL"
)]
struct Cli {
    /// An administrator's URL of the PostgreSQL server to use.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Seconds-long run with tiny counts (CI).
    #[arg(long)]
    smoke: bool,
    /// Directory of the `api` and `worker` binaries (default: beside this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The pgbench program (default: newest /usr/lib/postgresql/*/bin/pgbench, else PATH).
    #[arg(long)]
    pgbench: Option<PathBuf>,
    /// Where results.json, report.md and the process logs go.
    #[arg(long, default_value = "artifacts/bench")]
    out_dir: PathBuf,
    /// Where the SVG charts go (default: docs/bench, or --out-dir for --smoke).
    #[arg(long)]
    plot_dir: Option<PathBuf>,
    /// Companies the load is spread over.
    #[arg(long)]
    companies: Option<usize>,
    /// Offered POST rates of the sweep, comma-separated.
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<f64>>,
    /// Seconds per sweep step.
    #[arg(long)]
    step_secs: Option<f64>,
    /// Worker processes during the sweep and the half-saturation step.
    #[arg(long)]
    sweep_workers: Option<usize>,
    /// Worker counts of the saturation runs, comma-separated.
    #[arg(long, value_delimiter = ',')]
    workers: Option<Vec<usize>>,
    /// Seconds of each saturation run and of each half-saturation step.
    #[arg(long)]
    saturation_secs: Option<f64>,
    /// Most saturation runs per worker count: each offers 25 % more than the
    /// one before while the pipeline keeps up, 25 % less while it falls
    /// behind, until two runs bracket the rate it keeps up with (default 5,
    /// smoke 2).
    #[arg(long)]
    ramp_runs: Option<usize>,
    /// Half-saturation steps, back to back, of the main figures and of each
    /// growth run (their figures are the medians; default 3, smoke 2).
    #[arg(long)]
    half_steps: Option<usize>,
    /// Tickets queued before the drain (the issue asks for 50,000).
    #[arg(long)]
    drain_tickets: Option<usize>,
    /// Worker processes draining them.
    #[arg(long)]
    drain_workers: Option<usize>,
    /// `WORKER_CONCURRENCY` of each worker (default: the product's own).
    #[arg(long)]
    worker_concurrency: Option<usize>,
    /// Simulated provider latency per action (ms).
    #[arg(long, default_value_t = 0)]
    simulated_latency_ms: u32,
    /// Offered rate of the `GET /api/tickets` stream during sweep steps.
    #[arg(long, default_value_t = 10.0)]
    get_rate: f64,
    /// pgbench clients.
    #[arg(long)]
    pgbench_clients: Option<usize>,
    /// Seconds of each pgbench run.
    #[arg(long)]
    pgbench_secs: Option<u64>,
    /// No-op jobs of the bare apalis drain (0 skips it).
    #[arg(long)]
    noop_jobs: Option<u64>,
    /// Growth: finished jobs (tickets with their action, queue job and
    /// audit rows) seeded before the growth runs (0 with --pending-jobs 0
    /// skips the history run).
    #[arg(long)]
    history_jobs: Option<u64>,
    /// Growth: pending queue jobs, due a day later, seeded with the history.
    #[arg(long)]
    pending_jobs: Option<u64>,
    /// Growth: companies of the last growth run, registered through the api
    /// (0, or no more than --companies, skips it).
    #[arg(long)]
    growth_companies: Option<usize>,
    /// Growth: tickets of each growth run's drain (default --drain-tickets;
    /// 0 skips those drains).
    #[arg(long)]
    growth_drain_tickets: Option<usize>,
    /// Concurrent `POST /api/auth/login` of the login burst (0 skips it).
    #[arg(long)]
    login_burst: Option<usize>,
    /// Login bursts, one after another; the GETs during them are pooled
    /// (default 5, smoke 1).
    #[arg(long)]
    login_bursts: Option<usize>,
    /// Offered rate of the `GET /api/tickets` stream around the login burst.
    #[arg(long, default_value_t = 50.0)]
    burst_get_rate: f64,
    /// Seconds at rest before the idle memory is read (default 45: past the
    /// api's 30 s keep-alive timeout, which closes the load generator's
    /// pooled connections).
    #[arg(long)]
    idle_secs: Option<f64>,
    /// Extra `KEY=VALUE` environment for the api and the workers.
    #[arg(long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// The counts of one run, from the flags and the full or smoke defaults.
#[derive(Debug, Clone)]
struct Plan {
    companies: usize,
    rates: Vec<f64>,
    step: Duration,
    sweep_workers: usize,
    workers: Vec<usize>,
    saturation: Duration,
    /// Most saturation runs per worker count.
    ramp_runs: usize,
    half_steps: usize,
    drain_tickets: usize,
    drain_workers: usize,
    pgbench_clients: usize,
    pgbench_secs: u64,
    noop_jobs: u64,
    history_jobs: u64,
    pending_jobs: u64,
    growth_companies: usize,
    growth_drain_tickets: usize,
    login_burst: usize,
    login_bursts: usize,
    /// GETs alone before the first login burst.
    burst_lead: Duration,
    /// From one login burst's last answer to the next burst.
    burst_gap: Duration,
    idle: Duration,
}

impl Plan {
    fn from(cli: &Cli) -> Self {
        let smoke = cli.smoke;
        let secs = |v: Option<f64>, full: f64, small: f64| {
            Duration::from_secs_f64(v.unwrap_or(if smoke { small } else { full }).max(0.2))
        };
        Self {
            companies: cli.companies.unwrap_or(if smoke { 2 } else { 10 }).max(1),
            rates: cli.rates.clone().unwrap_or_else(|| {
                if smoke {
                    vec![20.0, 40.0]
                } else {
                    vec![
                        25.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 800.0, 1000.0,
                        1250.0, 1500.0, 2000.0, 2500.0, 3000.0,
                    ]
                }
            }),
            step: secs(cli.step_secs, 10.0, 1.5),
            sweep_workers: cli
                .sweep_workers
                .unwrap_or(if smoke { 1 } else { 2 })
                .max(1),
            workers: cli
                .workers
                .clone()
                .unwrap_or_else(|| if smoke { vec![1, 2] } else { vec![1, 2, 4] }),
            saturation: secs(cli.saturation_secs, 20.0, 2.0),
            ramp_runs: cli.ramp_runs.unwrap_or(if smoke { 2 } else { 5 }).max(1),
            half_steps: cli.half_steps.unwrap_or(if smoke { 2 } else { 3 }).max(1),
            drain_tickets: cli
                .drain_tickets
                .unwrap_or(if smoke { 200 } else { 50_000 }),
            drain_workers: cli
                .drain_workers
                .unwrap_or(if smoke { 1 } else { 2 })
                .max(1),
            pgbench_clients: cli.pgbench_clients.unwrap_or(if smoke { 2 } else { 8 }),
            pgbench_secs: cli.pgbench_secs.unwrap_or(if smoke { 2 } else { 20 }),
            noop_jobs: cli.noop_jobs.unwrap_or(if smoke { 500 } else { 50_000 }),
            history_jobs: cli
                .history_jobs
                .unwrap_or(if smoke { 20_000 } else { 1_000_000 }),
            pending_jobs: cli
                .pending_jobs
                .unwrap_or(if smoke { 2_000 } else { 100_000 }),
            growth_companies: cli
                .growth_companies
                .unwrap_or(if smoke { 50 } else { 1_000 }),
            growth_drain_tickets: cli
                .growth_drain_tickets
                .or(cli.drain_tickets)
                .unwrap_or(if smoke { 200 } else { 50_000 }),
            login_burst: cli.login_burst.unwrap_or(50),
            login_bursts: cli.login_bursts.unwrap_or(if smoke { 1 } else { 5 }).max(1),
            burst_lead: secs(None, 10.0, 2.0),
            burst_gap: secs(None, 3.0, 1.0),
            idle: secs(cli.idle_secs, 45.0, 2.0),
        }
    }
}

/// Most requests in flight before the generator sheds (far past saturation).
const MAX_IN_FLIGHT: usize = 4000;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn say(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |k| k / 1024)
}

fn find_pgbench() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin/pgbench"))
        .filter(|p| p.exists())
        .collect();
    found.sort_by_key(|p| {
        p.components()
            .nth(4)
            .and_then(|c| c.as_os_str().to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().unwrap_or_else(|| PathBuf::from("pgbench"))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let plan = Plan::from(&cli);
    let load_before = loadavg();
    say(format!("plan: {plan:?}; load average {load_before}"));
    let bin_dir = match &cli.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary has no directory")?
            .to_path_buf(),
    };
    let out_dir = cli.out_dir.clone();
    let plot_dir = cli.plot_dir.clone().unwrap_or_else(|| {
        if cli.smoke {
            out_dir.clone()
        } else {
            PathBuf::from("docs/bench")
        }
    });
    std::fs::create_dir_all(&out_dir)?;
    std::fs::create_dir_all(&plot_dir)?;
    let admin = probe::connect(&cli.database_url)
        .await
        .context("cannot connect to DATABASE_URL")?;
    let pg_port = cli
        .database_url
        .parse::<sqlx::postgres::PgConnectOptions>()?
        .get_port();
    let postmaster = probe::postmaster_pid(&admin).await?;
    for db in ["txdx_bench", "txdx_pgbench", "txdx_noop"] {
        probe::recreate_database(&admin, db).await?;
    }
    let bench_url = probe::with_database(&cli.database_url, "txdx_bench");
    let bench_db = probe::connect(&bench_url).await?;
    let server = probe::server_info(&bench_db).await?;
    say(format!(
        "{}; pg_stat_statements: {}",
        server.version, server.stat_statements
    ));

    // 1. pgbench baselines.
    let pgbench_url = probe::with_database(&cli.database_url, "txdx_pgbench");
    pgbench::prepare(&probe::connect(&pgbench_url).await?).await?;
    let pgbench_bin = cli.pgbench.clone().unwrap_or_else(find_pgbench);
    let mut pgbench_runs = Vec::new();
    for batched in [false, true] {
        let r = pgbench::run(
            &pgbench_bin,
            &pgbench_url,
            &out_dir,
            batched,
            plan.pgbench_clients,
            plan.pgbench_secs,
            postmaster,
        )
        .await?;
        say(format!(
            "pgbench {}: {:.0} jobs/s",
            r.script, r.jobs_per_sec
        ));
        pgbench_runs.push(r);
    }

    // 2. Bare apalis.
    let noop = if plan.noop_jobs > 0 {
        let url = probe::with_database(&cli.database_url, "txdx_noop");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(&url)
            .await?;
        let n = noop::run(&pool, plan.noop_jobs, postmaster).await?;
        say(format!(
            "bare apalis: {:.0} no-op jobs/s drained",
            n.drain_per_sec
        ));
        pool.close().await;
        Some(n)
    } else {
        None
    };

    // 3. The real system.
    let mut env = Vec::new();
    if let Some(n) = cli.worker_concurrency {
        env.push(("WORKER_CONCURRENCY".to_owned(), n.to_string()));
    }
    env.extend(cli.env.iter().cloned());
    let mut system = System::new(&bin_dir, &out_dir.join("logs"), &bench_url, pg_port, &env)?;
    system.postmaster = postmaster;
    let client = load::client()?;
    system.start_api(&client).await?;
    let result = measure(
        &plan,
        &cli,
        &mut system,
        &client,
        &bench_db,
        &bench_url,
        server.stat_statements,
    )
    .await;
    system.stop().await;
    let measured = result?;

    let results = Results {
        machine: report::Machine {
            nproc: std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            memory_mib: memory_mib(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            load_before,
            load_after: loadavg(),
            postgres: server,
        },
        settings: report::Settings {
            command: std::env::var("TXDX_BENCH_COMMAND")
                .unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" ")),
            smoke: cli.smoke,
            companies: plan.companies,
            worker_concurrency: cli.worker_concurrency,
            simulated_latency_ms: cli.simulated_latency_ms,
            sweep_workers: plan.sweep_workers,
            step_secs: plan.step.as_secs_f64(),
            saturation_secs: plan.saturation.as_secs_f64(),
            saturation_ramp_runs: plan.ramp_runs,
            get_rate: cli.get_rate,
            burst_get_rate: cli.burst_get_rate,
        },
        pgbench: pgbench_runs,
        noop,
        sweep: measured.sweep,
        saturation: measured.saturation,
        half: measured.half,
        drain: measured.drain,
        idle: measured.idle,
        login_burst: measured.login_burst,
        growth: measured.growth,
        statements: measured.statements,
        not_executed: probe::not_executed(&bench_db).await?,
        errors: measured.errors,
    };
    write_outputs(&results, &out_dir, &plot_dir)?;
    // The figures are written either way; a phase that failed still fails the run.
    if !results.errors.is_empty() {
        anyhow::bail!("{}", results.errors.join("; "));
    }
    Ok(())
}

fn write_outputs(results: &Results, out_dir: &Path, plot_dir: &Path) -> anyhow::Result<()> {
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(results)?,
    )?;
    let md = report::markdown(results);
    std::fs::write(out_dir.join("report.md"), &md)?;
    std::fs::write(
        plot_dir.join("latency-vs-rate.svg"),
        report::latency_chart(results),
    )?;
    std::fs::write(
        plot_dir.join("throughput-vs-workers.svg"),
        report::throughput_chart(results),
    )?;
    println!("{md}");
    say(format!(
        "wrote {}/results.json, {}/report.md, {}/latency-vs-rate.svg, {}/throughput-vs-workers.svg",
        out_dir.display(),
        out_dir.display(),
        plot_dir.display(),
        plot_dir.display()
    ));
    Ok(())
}

/// What the phases against the real system produced.
struct Measured {
    sweep: Vec<Step>,
    saturation: Vec<Saturation>,
    half: Option<report::HalfSteps>,
    drain: Option<Drain>,
    idle: Option<report::Idle>,
    login_burst: Option<report::LoginBurst>,
    growth: Option<report::Growth>,
    statements: Vec<(String, Vec<probe::Statement>)>,
    /// Phases after the main figures that failed (the run still reports).
    errors: Vec<String>,
}

#[expect(clippy::too_many_lines, reason = "the phases in order")]
async fn measure(
    plan: &Plan,
    cli: &Cli,
    system: &mut System,
    client: &reqwest::Client,
    db: &PgPool,
    db_url: &str,
    stat_statements: bool,
) -> anyhow::Result<Measured> {
    let api = system.api_url.clone();
    // The api's memory before any request but /ready.
    let api_at_start = system
        .procs()
        .find(|p| p.name == "api")
        .and_then(|p| procfs::rss_mib(p.pid()));
    let tenants =
        load::seed_tenants(client, &api, plan.companies, cli.simulated_latency_ms).await?;
    say(format!("{} companies registered", tenants.len()));
    let drain_timeout = if cli.smoke {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(900)
    };

    // Rate sweep.
    system.start_workers(plan.sweep_workers)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut sweep = Vec::new();
    for &rate in &plan.rates {
        let step = run_step(
            system,
            client,
            db,
            &tenants,
            rate,
            plan.step,
            cli.get_rate,
            drain_timeout,
        )
        .await?;
        say(format!(
            "sweep {rate:.0}/s: POST {:.0}/s p99 {:.1} ms, e2e p99 {:.1} ms, executed {:.0}/s",
            step.post_ok_rate, step.post.p99, step.e2e.p99, step.executed_rate
        ));
        let stop = !step.post_sustained;
        sweep.push(step);
        if stop {
            break;
        }
    }
    system.stop_workers().await;
    let post_sat = sweep
        .iter()
        .filter(|s| s.post_sustained)
        .map(|s| s.offered_rate)
        .reduce(f64::max);
    let best_post = sweep.iter().map(|s| s.post_ok_rate).fold(0.0, f64::max);
    // Overload: the highest rate the api itself answered in full, or what it managed.
    let overload = post_sat.unwrap_or(best_post).max(best_post).max(1.0);

    // Saturation by worker count: each starts at the highest rate the
    // previous one kept up with, near where its own bracket is likely to be
    // (more workers need not take more: on two cores each one takes CPU
    // from the api and PostgreSQL).
    let mut saturation: Vec<Saturation> = Vec::new();
    let mut statements = Vec::new();
    for &workers in &plan.workers {
        let last = Some(&workers) == plan.workers.iter().max();
        if last && stat_statements {
            probe::reset_statements(db).await?;
        }
        let start = saturation
            .last()
            .and_then(|s| report::highest_kept_up(&s.ramp))
            .map_or(overload, |r| r.max(overload));
        let sat = ramp_saturation(
            system,
            client,
            db,
            &tenants,
            workers,
            (start, plan.ramp_runs),
            plan.saturation,
            drain_timeout,
        )
        .await?;
        saturation.push(sat);
        if last && stat_statements {
            statements.push((
                format!("saturation with {workers} workers"),
                probe::top_statements(db, 15).await?,
            ));
        }
    }

    // Half saturation.
    let sat_rate = saturation
        .iter()
        .find(|s| s.workers == plan.sweep_workers)
        .or(saturation.last())
        .map(|s| s.executed_rate);
    let ctx = phases::Ctx {
        plan,
        cli,
        client,
        db,
        db_url,
        stat_statements,
        drain_timeout,
    };
    let half = if let Some(sat_rate) = sat_rate.filter(|r| *r > 0.0) {
        let rate = (sat_rate / 2.0).max(1.0);
        phases::half_steps(&ctx, system, &tenants, rate, "half saturation").await?
    } else {
        None
    };

    // Drain of pre-queued tickets; its workers stay for the idle reading.
    let drain = if plan.drain_tickets > 0 {
        let (d, top) = run_drain(
            system,
            client,
            db,
            &tenants,
            plan.drain_tickets,
            plan.drain_workers,
            drain_timeout,
            stat_statements,
        )
        .await?;
        statements.extend(top.map(|t| (format!("drain with {} workers", d.workers), t)));
        Some(d)
    } else {
        None
    };

    let mut errors = Vec::new();
    say(format!(
        "idle: {:.0} s at rest, then the memory of every process",
        plan.idle.as_secs_f64()
    ));
    let idle = phases::idle(system, plan.idle, api_at_start)
        .await
        .map_err(|e| errors.push(format!("idle memory: {e:#}")))
        .ok();
    system.stop_workers().await;

    let login_burst = if plan.login_burst > 0 {
        let burst = phases::login_burst(
            system,
            client,
            &tenants,
            plan.login_burst,
            plan.login_bursts,
            plan.burst_gap,
            cli.burst_get_rate,
            plan.burst_lead,
        )
        .await
        .map_err(|e| errors.push(format!("login burst: {e:#}")))
        .ok();
        system.stop_workers().await;
        burst
    } else {
        None
    };

    let growth = if plan.history_jobs > 0
        || plan.pending_jobs > 0
        || plan.growth_companies > tenants.len()
    {
        let baseline = phases::Baseline {
            saturation: &saturation,
            half: half.as_ref(),
        };
        let (growth, top) = phases::growth(&ctx, system, &tenants, &baseline).await;
        statements.extend(top);
        if let Some(e) = &growth.error {
            errors.push(format!("growth: {e}"));
        }
        Some(growth)
    } else {
        None
    };
    Ok(Measured {
        sweep,
        saturation,
        half,
        drain,
        idle,
        login_burst,
        growth,
        statements,
        errors,
    })
}

/// Queues `tickets` tickets with no worker running, starts `workers`
/// workers and measures how fast they drain the queue. The workers are left
/// running. Returns the top statements of the drain too, when available.
#[expect(clippy::too_many_arguments, reason = "one drain's inputs")]
async fn run_drain(
    system: &mut System,
    client: &reqwest::Client,
    db: &PgPool,
    tenants: &[Tenant],
    tickets: usize,
    workers: usize,
    drain_timeout: Duration,
    stat_statements: bool,
) -> anyhow::Result<(Drain, Option<Vec<probe::Statement>>)> {
    let api = system.api_url.clone();
    say(format!("queueing {tickets} tickets with no worker running"));
    let (queued, took) = load::closed_loop_create(client, &api, tenants, tickets, 32).await;
    anyhow::ensure!(
        queued == tickets,
        "only {queued} of {tickets} tickets were created"
    );
    if stat_statements {
        probe::reset_statements(db).await?;
    }
    let t0 = probe::db_now(db).await?;
    system.start_workers(workers)?;
    let _sampler = system.sample_connections();
    let wait_sampler = probe::WaitSampler::start(db, Duration::from_millis(20));
    let mark = system.mark();
    // The drain's end is read from the tickets' own executed_at: a
    // coarse poll costs the measurement nothing.
    let left = probe::wait_drained(db, drain_timeout, Duration::from_secs(2)).await?;
    let usage = system.usage_since(&mark);
    let (wait_rounds, waits) = wait_sampler.finish(20).await;
    let steps = system.worker_steps(client).await;
    system.check_alive()?;
    anyhow::ensure!(
        left == 0,
        "{left} tickets still PENDING after the drain timeout"
    );
    let t1 = probe::last_executed(db).await?.unwrap_or(t0);
    let seconds = ((t1 - t0).num_microseconds().unwrap_or(0) as f64 / 1e6).max(1e-3);
    #[expect(clippy::cast_precision_loss, reason = "ticket counts")]
    let d = Drain {
        tickets: queued,
        workers,
        enqueue_rate: queued as f64 / took.as_secs_f64().max(1e-9),
        actions_per_sec: queued as f64 / seconds,
        seconds,
        usage,
        wait_rounds,
        waits,
        steps,
    };
    say(format!(
        "drain: {:.0} actions/s ({} tickets, {} workers, {:.1} s)",
        d.actions_per_sec, d.tickets, d.workers, d.seconds
    ));
    let top = if stat_statements {
        Some(probe::top_statements(db, 15).await?)
    } else {
        None
    };
    Ok((d, top))
}

/// One open-loop step with the workers already running: POSTs at `rate`,
/// GETs at `get_rate`, then waits for the queue to drain and reads the
/// tickets' database timestamps.
#[expect(clippy::too_many_arguments, reason = "one step's inputs")]
async fn run_step(
    system: &mut System,
    client: &reqwest::Client,
    db: &PgPool,
    tenants: &[Tenant],
    rate: f64,
    duration: Duration,
    get_rate: f64,
    drain_timeout: Duration,
) -> anyhow::Result<Step> {
    let api = system.api_url.clone();
    let workers = system.procs().count() - 1;
    let _sampler = system.sample_connections();
    let mark = system.mark();
    let from = probe::db_now(db).await?;
    let gets = async {
        if get_rate > 0.0 {
            load::open_loop(
                client,
                &api,
                tenants,
                Request::ListTickets,
                get_rate,
                duration,
                MAX_IN_FLIGHT,
            )
            .await
        } else {
            load::Run::default()
        }
    };
    let posts = load::open_loop(
        client,
        &api,
        tenants,
        Request::CreateTicket,
        rate,
        duration,
        MAX_IN_FLIGHT,
    );
    let (posts, gets) = tokio::join!(posts, gets);
    let to = probe::db_now(db).await?;
    let usage = system.usage_since(&mark);
    system.check_alive()?;
    // Drain first: the count below reads every ticket (history too), and
    // must not delay the step's last tickets on their way to EXECUTED.
    probe::wait_drained(db, drain_timeout, Duration::from_millis(250)).await?;
    let executed_in_step = probe::executed_between(db, from, to).await?;
    let ids = posts.ticket_ids();
    let (e2e, e2e_missing) = probe::e2e_latencies(db, &ids).await?;
    let post = Percentiles::of(&posts.ok_latencies());
    let window = posts
        .samples
        .iter()
        .map(|s| s.done_at_s)
        .fold(duration.as_secs_f64(), f64::max);
    #[expect(clippy::cast_precision_loss, reason = "request counts")]
    let post_ok_rate = ids.len() as f64 / window;
    let post_errors = posts.errors();
    let e2e = Percentiles::of(&e2e);
    let seconds = duration.as_secs_f64();
    #[expect(clippy::cast_precision_loss, reason = "ticket counts")]
    let executed_rate = executed_in_step as f64
        / ((to - from).num_microseconds().unwrap_or(1) as f64 / 1e6).max(1e-3);
    Ok(Step {
        workers,
        offered_rate: rate,
        seconds,
        post_ok_rate,
        post_errors,
        post,
        get: Percentiles::of(&gets.ok_latencies()),
        e2e,
        e2e_missing,
        executed_rate,
        post_sustained: post_errors == 0 && post_ok_rate >= 0.95 * rate && post.p99 <= 1000.0,
        e2e_sustained: e2e_missing == 0 && e2e.n > 0 && e2e.p99 <= 1000.0,
        max_send_lag_ms: posts.max_send_lag_ms.max(gets.max_send_lag_ms),
        usage,
    })
}

/// Each ramp run offers this much more than the one before.
const RAMP_FACTOR: f64 = 1.25;

/// Saturation runs with `workers` workers from `start` offered/s, up or
/// down by [`RAMP_FACTOR`] ([`report::next_ramp_rate`]) until two runs
/// bracket the rate the pipeline keeps up with (falling behind is fewer
/// than 95 % of the POSTs answered 201, or fewer than 95 % of the answered
/// tickets EXECUTED per second), or after `runs_at_most` runs. A rate the
/// sweep answered in full may be one the pipeline still keeps up with: the
/// ramp goes past it. Returns the run with the most EXECUTED per second,
/// with every run's rates in `ramp`.
#[expect(clippy::too_many_arguments, reason = "one run's inputs")]
async fn ramp_saturation(
    system: &mut System,
    client: &reqwest::Client,
    db: &PgPool,
    tenants: &[Tenant],
    workers: usize,
    (start, runs_at_most): (f64, usize),
    duration: Duration,
    drain_timeout: Duration,
) -> anyhow::Result<Saturation> {
    let mut best: Option<Saturation> = None;
    let mut ramp: Vec<RampRun> = Vec::new();
    let mut rate = start;
    for _ in 0..runs_at_most.max(1) {
        let sat = run_saturation(
            system,
            client,
            db,
            tenants,
            workers,
            rate,
            duration,
            drain_timeout,
        )
        .await?;
        say(format!(
            "saturation with {workers} workers: {:.0} executed/s (offered {rate:.0}/s, {:.0} answered 201/s)",
            sat.executed_rate, sat.post_ok_rate
        ));
        ramp.push(RampRun::of(&sat));
        if best
            .as_ref()
            .is_none_or(|b| sat.executed_rate > b.executed_rate)
        {
            best = Some(sat);
        }
        match report::next_ramp_rate(&ramp, RAMP_FACTOR) {
            Some(next) => rate = next,
            None => break,
        }
    }
    let best = best.context("a saturation ramp runs at least once")?;
    Ok(Saturation { ramp, ..best })
}

/// Starts `workers` workers, overloads the pipeline at `rate` for
/// `duration`, counts EXECUTED per second after the first quarter, lets
/// the queue drain, stops the workers.
#[expect(clippy::too_many_arguments, reason = "one run's inputs")]
async fn run_saturation(
    system: &mut System,
    client: &reqwest::Client,
    db: &PgPool,
    tenants: &[Tenant],
    workers: usize,
    rate: f64,
    duration: Duration,
    drain_timeout: Duration,
) -> anyhow::Result<Saturation> {
    system.start_workers(workers)?;
    // Let the workers connect and register before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let api = system.api_url.clone();
    let _sampler = system.sample_connections();
    let mark = system.mark();
    let counting = async {
        tokio::time::sleep(duration / 4).await;
        let from = probe::db_now(db).await?;
        tokio::time::sleep(duration - duration / 4).await;
        let to = probe::db_now(db).await?;
        anyhow::Ok((from, to))
    };
    let posts = load::open_loop(
        client,
        &api,
        tenants,
        Request::CreateTicket,
        rate,
        duration,
        MAX_IN_FLIGHT,
    );
    let (posts, window) = tokio::join!(posts, counting);
    let (from, to) = window?;
    let usage = system.usage_since(&mark);
    system.check_alive()?;
    let executed = probe::executed_between(db, from, to).await?;
    let drain_started = std::time::Instant::now();
    let left = probe::wait_drained(db, drain_timeout, Duration::from_millis(250)).await?;
    anyhow::ensure!(
        left == 0,
        "{left} tickets still PENDING after the saturation run"
    );
    let drain_after_secs = drain_started.elapsed().as_secs_f64();
    system.stop_workers().await;
    let window_secs = ((to - from).num_microseconds().unwrap_or(1) as f64 / 1e6).max(1e-3);
    let ok = posts.ticket_ids().len();
    #[expect(clippy::cast_precision_loss, reason = "ticket counts")]
    Ok(Saturation {
        workers,
        offered_rate: rate,
        post_ok_rate: ok as f64 / duration.as_secs_f64(),
        executed_rate: executed as f64 / window_secs,
        post_p99: Percentiles::of(&posts.ok_latencies()).p99,
        drain_after_secs,
        usage,
        ramp: Vec::new(),
    })
}
