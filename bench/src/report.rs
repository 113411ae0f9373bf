//! The results of one run: kept as JSON, rendered as Markdown tables (the
//! figures of BENCHMARKS.md) and as two SVG charts.

use std::fmt::Write as _;

use serde::Serialize;

use crate::{
    history::Seeded,
    noop::NoopDrain,
    pgbench::PgbenchRun,
    plot::{Chart, Series},
    probe::{ServerInfo, Settled, Statement, WaitSample},
    stats::Percentiles,
    system::{OTHERS, ProcUsage, STOLEN},
};

/// The machine and server measured.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub nproc: usize,
    /// `MemTotal` (MiB).
    pub memory_mib: u64,
    /// Kernel release.
    pub kernel: String,
    /// `/proc/loadavg` when the run started.
    pub load_before: String,
    /// `/proc/loadavg` when it ended.
    pub load_after: String,
    /// PostgreSQL.
    pub postgres: ServerInfo,
}

/// How the run was configured.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// The command that produced these figures.
    pub command: String,
    /// The seconds-long CI variant.
    pub smoke: bool,
    /// Companies (tenants) the load is spread over.
    pub companies: usize,
    /// `WORKER_CONCURRENCY` of every worker process (`None`: the product's
    /// default).
    pub worker_concurrency: Option<usize>,
    /// Simulated provider latency per action (ms).
    pub simulated_latency_ms: u32,
    /// Workers running during the rate sweep and the half-saturation step.
    pub sweep_workers: usize,
    /// Seconds per sweep step.
    pub step_secs: f64,
    /// Seconds of each saturation run.
    pub saturation_secs: f64,
    /// Most saturation runs per worker count (the ramp's length).
    pub saturation_ramp_runs: usize,
    /// Offered rate of the concurrent `GET /api/tickets` stream.
    pub get_rate: f64,
    /// Offered rate of the `GET /api/tickets` stream around the login burst.
    pub burst_get_rate: f64,
}

/// One open-loop step at a fixed offered rate.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Worker processes running.
    pub workers: usize,
    /// Offered POST rate (per second).
    pub offered_rate: f64,
    /// Seconds of sending.
    pub seconds: f64,
    /// POSTs answered 201 per second.
    pub post_ok_rate: f64,
    /// POSTs not answered 201 (errors, timeouts, shed).
    pub post_errors: usize,
    /// POST latency from the intended send time.
    pub post: Percentiles,
    /// `GET /api/tickets?limit=50` latency, sent open-loop alongside.
    pub get: Percentiles,
    /// POST → EXECUTED (`created_at → executed_at`).
    pub e2e: Percentiles,
    /// Tickets of the step not EXECUTED once the queue drained (or timed out).
    pub e2e_missing: usize,
    /// Tickets EXECUTED per second while the step ran.
    pub executed_rate: f64,
    /// POSTs kept up: no errors, ≥ 95 % of the offered rate, p99 ≤ 1 s.
    pub post_sustained: bool,
    /// The pipeline kept up: every ticket executed, POST→EXECUTED p99 ≤ 1 s.
    pub e2e_sustained: bool,
    /// The generator's worst lateness (ms): large values void the step.
    pub max_send_lag_ms: f64,
    /// CPU, memory and connections of each process during the step.
    pub usage: Vec<ProcUsage>,
}

/// End-to-end throughput with the pipeline overloaded.
#[derive(Debug, Clone, Serialize)]
pub struct Saturation {
    /// Worker processes.
    pub workers: usize,
    /// Offered POST rate.
    pub offered_rate: f64,
    /// POSTs answered 201 per second.
    pub post_ok_rate: f64,
    /// Tickets EXECUTED per second after the first quarter of the run.
    pub executed_rate: f64,
    /// POST p99 (ms) while overloaded.
    pub post_p99: f64,
    /// Seconds the queue then took to drain.
    pub drain_after_secs: f64,
    /// Resources during the run.
    pub usage: Vec<ProcUsage>,
    /// Every run of the ramp this one was picked from, in order (empty for
    /// a single run at a given rate).
    pub ramp: Vec<RampRun>,
}

impl Saturation {
    /// Whether the pipeline fell behind the offered rate: the api answered
    /// fewer than 95 % of the POSTs, or fewer than 95 % of the answered
    /// tickets per second reached EXECUTED.
    pub fn fell_behind(&self) -> bool {
        self.post_ok_rate < 0.95 * self.offered_rate
            || self.executed_rate < 0.95 * self.post_ok_rate
    }
}

/// One run of a saturation ramp.
#[derive(Debug, Clone, Serialize)]
pub struct RampRun {
    /// Offered POST rate.
    pub offered_rate: f64,
    /// POSTs answered 201 per second.
    pub post_ok_rate: f64,
    /// Tickets EXECUTED per second after the first quarter of the run.
    pub executed_rate: f64,
    /// Whether the pipeline kept up with the offered rate
    /// (not [`Saturation::fell_behind`]).
    pub kept_up: bool,
}

impl RampRun {
    /// The rates of one saturation run.
    pub fn of(sat: &Saturation) -> Self {
        Self {
            offered_rate: sat.offered_rate,
            post_ok_rate: sat.post_ok_rate,
            executed_rate: sat.executed_rate,
            kept_up: !sat.fell_behind(),
        }
    }
}

/// The rate a saturation ramp offers next, or `None` once it is done: `factor`
/// times more while every run so far kept up, `factor` times less while
/// every run fell behind, and done when the last run brackets the rate the
/// pipeline keeps up with (it kept up where the first did not, or the other
/// way round). Overload costs throughput (the api's work takes the workers'
/// CPU), so the best figure can lie below the first rate that overloads.
pub fn next_ramp_rate(ramp: &[RampRun], factor: f64) -> Option<f64> {
    let (first, last) = (ramp.first()?, ramp.last()?);
    if first.kept_up != last.kept_up {
        return None;
    }
    Some(if last.kept_up {
        last.offered_rate * factor
    } else {
        last.offered_rate / factor
    })
}

/// The highest offered rate of a ramp that the pipeline kept up with.
pub fn highest_kept_up(ramp: &[RampRun]) -> Option<f64> {
    ramp.iter()
        .filter(|r| r.kept_up)
        .map(|r| r.offered_rate)
        .reduce(f64::max)
}

/// The worker drain.
#[derive(Debug, Clone, Serialize)]
pub struct Drain {
    /// Tickets (one action each) queued before any worker started.
    pub tickets: usize,
    /// Worker processes.
    pub workers: usize,
    /// POSTs per second while queueing them (closed loop, 32 clients).
    pub enqueue_rate: f64,
    /// Actions per second: first worker start to the last `executed_at`.
    pub actions_per_sec: f64,
    /// Seconds.
    pub seconds: f64,
    /// Resources during the drain.
    pub usage: Vec<ProcUsage>,
    /// Samples of `pg_stat_activity` taken during the drain.
    pub wait_rounds: u64,
    /// The most frequent (wait, statement) pairs of those samples.
    pub waits: Vec<WaitSample>,
    /// The workers' time in each step of their pipeline, all workers
    /// together (read from their `/metrics` when the drain ended).
    pub steps: Vec<crate::system::StepTime>,
}

/// One process's memory at rest.
#[derive(Debug, Clone, Serialize)]
pub struct IdleProc {
    /// Role.
    pub name: String,
    /// Whether it ran the earlier load (else it started for this reading).
    pub after_load: bool,
    /// `VmRSS` after the rest (MiB).
    pub rss_mib: f64,
    /// `VmHWM` (MiB): its lifetime peak.
    pub lifetime_peak_rss_mib: f64,
}

/// Memory with no load at all.
#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    /// Seconds at rest before the reading.
    pub seconds: f64,
    /// The api's `VmRSS` right after it first answered `/ready` (MiB).
    pub api_at_start_mib: Option<f64>,
    /// The api and the workers.
    pub procs: Vec<IdleProc>,
}

/// Concurrent logins under a steady `GET /api/tickets` stream.
#[derive(Debug, Clone, Serialize)]
pub struct LoginBurst {
    /// `POST /api/auth/login` sent at once in each burst.
    pub logins: usize,
    /// Bursts, one after another.
    pub bursts: usize,
    /// Seconds from one burst's last answer to the next burst.
    pub gap_secs: f64,
    /// Distinct users they log in (round-robin).
    pub users: usize,
    /// Offered GET rate.
    pub get_rate: f64,
    /// GETs answered before the burst (after a half-second warm-up).
    pub get_before: Percentiles,
    /// GETs sent between a burst's start and its last answer, over all
    /// the bursts.
    pub get_during: Percentiles,
    /// The slowest of those GETs in each burst (ms).
    pub get_during_worst: Vec<f64>,
    /// The GETs before the bursts, timed from the moment their task began
    /// sending instead of their intended send time: without the load
    /// generator's own lateness.
    pub get_before_sent: Percentiles,
    /// The same for the GETs during the bursts.
    pub get_during_sent: Percentiles,
    /// The load generator's lateness in sending the GETs before the bursts
    /// (ms).
    pub get_lag_before: Percentiles,
    /// Its lateness in sending those during the bursts (ms).
    pub get_lag_during: Percentiles,
    /// GETs of both windows that failed or were shed.
    pub get_errors: usize,
    /// Latency of the logins answered 200, from their burst's start (ms).
    pub login_ok: Percentiles,
    /// Latency of every login, whatever the answer.
    pub login_all: Percentiles,
    /// Logins answered 200, over all the bursts.
    pub ok: usize,
    /// Logins answered 429 (throttled), over all the bursts.
    pub throttled: usize,
    /// Logins with any other answer or none, over all the bursts.
    pub other_errors: usize,
    /// Seconds from each burst's start to its last answer.
    pub burst_secs: Vec<f64>,
    /// The GET generator's worst lateness (ms).
    pub max_send_lag_ms: f64,
    /// CPU and memory during the bursts (cores: over their summed time).
    pub usage: Vec<ProcUsage>,
}

/// Companies registered for the last growth run.
#[derive(Debug, Clone, Serialize)]
pub struct Registration {
    /// Companies (each an ADMIN and an integration).
    pub companies: usize,
    /// Seconds.
    pub seconds: f64,
    /// Companies per second.
    pub per_sec: f64,
}

/// Several steps at one rate (half saturation), run back to back with the
/// same workers. The p99 of one step moves by several times between
/// identical steps on a loaded 2-core machine, so the figures compared with
/// a target or between runs are the medians over the steps.
#[derive(Debug, Clone, Serialize)]
pub struct HalfSteps {
    /// In the order they ran; never empty.
    pub steps: Vec<Step>,
    /// The rest taken before the first step.
    pub settled: Settled,
}

impl HalfSteps {
    /// Wraps `steps`, run after `settled`; `None` when there are none.
    pub fn new(steps: Vec<Step>, settled: Settled) -> Option<Self> {
        (!steps.is_empty()).then_some(Self { steps, settled })
    }

    /// The offered rate of the steps.
    pub fn offered_rate(&self) -> f64 {
        self.steps.first().map_or(0.0, |s| s.offered_rate)
    }

    /// Worker processes during the steps.
    pub fn workers(&self) -> usize {
        self.steps.first().map_or(0, |s| s.workers)
    }

    /// The median of `figure` over the steps (the lower middle one of an
    /// even count, so that it is always a measured value).
    pub fn median(&self, figure: impl Fn(&Step) -> f64) -> f64 {
        let mut values: Vec<f64> = self.steps.iter().map(figure).collect();
        values.sort_by(f64::total_cmp);
        values
            .get(values.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(0.0)
    }
}

/// The figures of one growth run.
#[derive(Debug, Clone, Serialize)]
pub struct GrowthRound {
    /// `before` (the tables as the main phases left them), `history`,
    /// `history + companies` or `companies`.
    pub label: String,
    /// Companies the load was spread over.
    pub companies: usize,
    /// Finished jobs of seeded history in the tables.
    pub history_jobs: u64,
    /// Seeded finished jobs still in `apalis.jobs` after the run (the
    /// worker's retention may delete some).
    pub history_jobs_left: Option<i64>,
    /// Seeded pending (not yet due) jobs in the queue's table.
    pub pending_jobs: u64,
    /// Saturation, with the worker count and offered rate of the main run's
    /// smallest worker count.
    pub saturation: Option<Saturation>,
    /// The steps at the main run's half-saturation rate.
    pub half: Option<HalfSteps>,
    /// The drain.
    pub drain: Option<Drain>,
}

/// Growth: the same figures with a large history, then many companies.
#[derive(Debug, Clone, Serialize)]
pub struct Growth {
    /// Finished jobs of history asked for.
    pub history_jobs: u64,
    /// Pending jobs asked for.
    pub pending_jobs: u64,
    /// Companies of the last run asked for.
    pub companies: usize,
    /// Tickets of each growth drain.
    pub drain_tickets: usize,
    /// The seeding.
    pub seed: Option<Seeded>,
    /// The registration of the extra companies.
    pub registration: Option<Registration>,
    /// The rounds, in order (each on top of the one before, and judged
    /// against it).
    pub rounds: Vec<GrowthRound>,
    /// Why the growth runs stopped early.
    pub error: Option<String>,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// Where.
    pub machine: Machine,
    /// How.
    pub settings: Settings,
    /// pgbench baselines.
    pub pgbench: Vec<PgbenchRun>,
    /// Bare apalis.
    pub noop: Option<NoopDrain>,
    /// The rate sweep.
    pub sweep: Vec<Step>,
    /// Saturation by worker count.
    pub saturation: Vec<Saturation>,
    /// The steps at half the end-to-end saturation throughput.
    pub half: Option<HalfSteps>,
    /// The drain.
    pub drain: Option<Drain>,
    /// Memory at rest.
    pub idle: Option<Idle>,
    /// The login burst.
    pub login_burst: Option<LoginBurst>,
    /// Growth.
    pub growth: Option<Growth>,
    /// Top statements by phase.
    pub statements: Vec<(String, Vec<Statement>)>,
    /// Tickets that ended FAILED or DERIVED (0 on a clean run).
    pub not_executed: i64,
    /// Phases that failed (the figures of the others are still here).
    pub errors: Vec<String>,
}

impl Results {
    /// pgbench jobs/s of a script, if run.
    pub fn pgbench_rate(&self, script: &str) -> Option<f64> {
        self.pgbench
            .iter()
            .find(|r| r.script == script)
            .map(|r| r.jobs_per_sec)
    }

    /// The highest offered rate the api answered in full.
    pub fn post_saturation(&self) -> Option<f64> {
        self.sweep
            .iter()
            .filter(|s| s.post_sustained)
            .map(|s| s.offered_rate)
            .reduce(f64::max)
    }

    /// The highest offered rate the whole pipeline kept up with.
    pub fn e2e_sweep_saturation(&self) -> Option<f64> {
        self.sweep
            .iter()
            .filter(|s| s.post_sustained && s.e2e_sustained)
            .map(|s| s.offered_rate)
            .reduce(f64::max)
    }
}

fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

fn usage_brief(usage: &[ProcUsage]) -> String {
    let mut api = 0.0;
    let mut workers = 0.0;
    let mut pg = 0.0;
    let mut bench = 0.0;
    let mut others = None;
    let mut stolen = None;
    for u in usage {
        match u.name.as_str() {
            "api" => api += u.cores,
            "postgres" => pg += u.cores,
            "bench" => bench += u.cores,
            OTHERS => others = Some(u.cores),
            STOLEN => stolen = Some(u.cores),
            _ => workers += u.cores,
        }
    }
    let mut brief = format!("{api:.2} / {workers:.2} / {pg:.2} / {bench:.2}");
    if let (Some(others), Some(stolen)) = (others, stolen) {
        let _ = write!(brief, " + {others:.2} + {stolen:.2}");
    }
    brief
}

fn usage_table(s: &mut String, title: &str, usage: &[ProcUsage]) {
    let _ = writeln!(
        s,
        "\n{title}\n\n| process | CPU s | cores | peak RSS in phase MiB | lifetime VmHWM MiB | peak DB connections |\n|---|---:|---:|---:|---:|---:|"
    );
    for u in usage {
        let mib = |v: f64| {
            if v > 0.0 {
                format!("{v:.1}")
            } else {
                "–".into()
            }
        };
        let (rss, hwm) = (mib(u.peak_rss_mib), mib(u.lifetime_peak_rss_mib));
        let conns = if matches!(u.name.as_str(), "bench" | OTHERS | STOLEN) {
            "–".to_owned()
        } else {
            u.peak_db_connections.to_string()
        };
        let name = match u.name.as_str() {
            OTHERS => "rest of the machine (other processes, interrupts)",
            STOLEN => "stolen by the hypervisor",
            name => name,
        };
        let _ = writeln!(
            s,
            "| {name} | {:.1} | {:.2} | {rss} | {hwm} | {conns} |",
            u.cpu_secs, u.cores
        );
    }
}

/// The run as Markdown.
pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let one = r.pgbench_rate("one-at-a-time");
    let batched = r.pgbench_rate("batched-100");
    let _ = writeln!(
        s,
        "## Machine\n\n| | |\n|---|---|\n| CPUs (nproc) | {} |\n| memory | {} MiB |\n| kernel | {} |\n| PostgreSQL | {} |\n| load average (1/5/15 min) at start | {} |\n| load average at end | {} |\n| command | `{}` |",
        m.nproc,
        m.memory_mib,
        m.kernel,
        m.postgres.version,
        m.load_before,
        m.load_after,
        r.settings.command
    );
    let settings: Vec<String> = m
        .postgres
        .settings
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(
        s,
        "| PostgreSQL settings | {} |\n| companies | {} |\n| WORKER_CONCURRENCY | {} |\n| simulated provider latency | {} ms |",
        settings.join(", "),
        r.settings.companies,
        r.settings
            .worker_concurrency
            .map_or_else(|| "the product's default".to_owned(), |n| n.to_string()),
        r.settings.simulated_latency_ms
    );

    let _ = writeln!(
        s,
        "\n## Baselines on the same PostgreSQL\n\n| what | clients | jobs/s | mean latency per script run | PostgreSQL cores |\n|---|---:|---:|---:|---:|"
    );
    for p in &r.pgbench {
        let _ = writeln!(
            s,
            "| pgbench {} (insert; claim `FOR UPDATE SKIP LOCKED`; done{}) | {} | {:.0} | {:.2} ms | {} |",
            p.script,
            if p.script.starts_with("batched") {
                ": 100 jobs per statement"
            } else {
                ": 3 transactions per job"
            },
            p.clients,
            p.jobs_per_sec,
            p.latency_ms,
            p.postgres_cores.map_or("–".into(), |c| format!("{c:.2}"))
        );
    }
    if let Some(n) = &r.noop {
        let _ = writeln!(
            s,
            "| bare apalis: {} no-op jobs pushed, then drained by one worker (batch = concurrency = {}) | – | {:.0} (push {:.0}) | – | {} |",
            n.jobs,
            n.concurrency,
            n.drain_per_sec,
            n.push_per_sec,
            n.postgres_cores.map_or("–".into(), |c| format!("{c:.2}"))
        );
    }

    let _ = writeln!(
        s,
        "\n## POST /api/tickets at fixed offered rates ({} worker processes running)\n\nOpen loop: each request is sent at its intended time; latency runs from that time to the full response. POST→EXECUTED is `executed_at − created_at` in the database. GET is `GET /api/tickets?limit=50` sent at {}/s alongside. Cores: api / workers / PostgreSQL / load generator, then + the rest of the machine's busy time (other processes, interrupts) + time stolen by the hypervisor.\n\n| offered/s | 201/s | POST p50 | p95 | p99 | max | errors | POST→EXECUTED p50 | p95 | p99 | executed/s | GET p50 | GET p99 | cores |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        r.settings.sweep_workers, r.settings.get_rate
    );
    for st in &r.sweep {
        let _ = writeln!(
            s,
            "| {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {} |",
            st.offered_rate,
            st.post_ok_rate,
            st.post.p50,
            st.post.p95,
            st.post.p99,
            st.post.max,
            st.post_errors,
            st.e2e.p50,
            st.e2e.p95,
            st.e2e.p99,
            st.executed_rate,
            st.get.p50,
            st.get.p99,
            usage_brief(&st.usage)
        );
    }
    let _ = writeln!(
        s,
        "\nPOST saturation (highest offered rate answered in full with p99 ≤ 1 s): **{}**. Highest rate the whole pipeline kept up with (every ticket EXECUTED, POST→EXECUTED p99 ≤ 1 s): **{}**.",
        r.post_saturation()
            .map_or("not reached".into(), |v| format!("{v:.0}/s")),
        r.e2e_sweep_saturation()
            .map_or("none".into(), |v| format!("{v:.0}/s"))
    );

    let (ramp_pct, ramp_runs) = (
        (crate::RAMP_FACTOR - 1.0) * 100.0,
        r.settings.saturation_ramp_runs,
    );
    let _ = writeln!(
        s,
        "\n## End-to-end saturation throughput by worker processes\n\nEach worker count's runs offer {:.0} s of POSTs, starting from the highest rate the sweep answered (or the highest the previous worker count kept up with), {ramp_pct:.0} % more a run while the pipeline keeps up and {ramp_pct:.0} % less while it falls behind (under 95 % answered 201, or under 95 % of those EXECUTED per second), until two runs bracket the rate it keeps up with or after {ramp_runs} runs. executed/s counts tickets reaching EXECUTED after the first quarter of a run; the row is the run with the most, and the last column lists every run as offered → executed/s.\n\n| workers | offered/s | 201/s | executed/s | ÷ pgbench one-at-a-time | ÷ pgbench batched | POST p99 | cores (api / workers / PG / generator + rest + stolen) | peak RSS api / max worker MiB | runs: offered → executed/s |\n|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
        r.settings.saturation_secs
    );
    for sat in &r.saturation {
        let api_rss = sat
            .usage
            .iter()
            .filter(|u| u.name == "api")
            .map(|u| u.peak_rss_mib)
            .fold(0.0, f64::max);
        let worker_rss = sat
            .usage
            .iter()
            .filter(|u| u.name.starts_with("worker"))
            .map(|u| u.peak_rss_mib)
            .fold(0.0, f64::max);
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | **{:.0}** | {} | {} | {:.0} ms | {} | {api_rss:.1} / {worker_rss:.1} | {} |",
            sat.workers,
            sat.offered_rate,
            sat.post_ok_rate,
            sat.executed_rate,
            ratio(sat.executed_rate, one),
            ratio(sat.executed_rate, batched),
            sat.post_p99,
            usage_brief(&sat.usage),
            sat.ramp
                .iter()
                .map(|r| format!("{:.0} → {:.0}", r.offered_rate, r.executed_rate))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    if let Some(h) = &r.half {
        let _ = writeln!(
            s,
            "\n## At half the end-to-end saturation throughput ({} workers)\n\n{} steps of {:.0} s back to back at the same rate and workers, after `VACUUM (ANALYZE)` and `CHECKPOINT` ({:.1} s{}); the targets are judged on the median row.\n\n| step | offered/s | POST p50 | p95 | p99 | max | POST→EXECUTED p50 | p95 | p99 | max | GET p50 | p95 | p99 | max |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            h.workers(),
            h.steps.len(),
            r.settings.saturation_secs,
            h.settled.seconds,
            h.settled
                .no_checkpoint
                .as_ref()
                .map_or(String::new(), |e| format!("; no checkpoint: {e}")),
        );
        // POST, POST→EXECUTED and GET, each p50 / p95 / p99 / max.
        let figure = |step: &Step, i: usize| {
            let p = [step.post, step.e2e, step.get][i / 4];
            [p.p50, p.p95, p.p99, p.max][i % 4]
        };
        let row = |s: &mut String, label: &str, bold: bool, value: &dyn Fn(usize) -> f64| {
            let _ = write!(s, "| {label} | {:.0} |", h.offered_rate());
            for i in 0..12 {
                let v = value(i);
                // The two p99 the targets name.
                if bold && (i == 2 || i == 6) {
                    let _ = write!(s, " **{v:.1}** |");
                } else {
                    let _ = write!(s, " {v:.1} |");
                }
            }
            s.push('\n');
        };
        for (i, step) in h.steps.iter().enumerate() {
            row(&mut s, &(i + 1).to_string(), false, &|f| figure(step, f));
        }
        row(&mut s, "median", true, &|f| {
            h.median(|step| figure(step, f))
        });
        if let Some(first) = h.steps.first() {
            usage_table(
                &mut s,
                "Resources at half saturation (first step):",
                &first.usage,
            );
        }
    }

    if let Some(d) = &r.drain {
        let _ = writeln!(
            s,
            "\n## Worker drain\n\n{} tickets (one action each) queued through the api with no worker running ({:.0} POST/s, closed loop), then {} worker processes started.\n\n| actions/s | seconds | ÷ pgbench one-at-a-time | ÷ pgbench batched | ÷ bare apalis no-op |\n|---:|---:|---:|---:|---:|\n| **{:.0}** | {:.1} | {} | {} | {} |",
            d.tickets,
            d.enqueue_rate,
            d.workers,
            d.actions_per_sec,
            d.seconds,
            ratio(d.actions_per_sec, one),
            ratio(d.actions_per_sec, batched),
            ratio(d.actions_per_sec, r.noop.as_ref().map(|n| n.drain_per_sec))
        );
        usage_table(&mut s, "Resources during the drain:", &d.usage);
    }
    if let Some(sat) = r.saturation.last() {
        usage_table(
            &mut s,
            &format!("Resources at saturation ({} workers):", sat.workers),
            &sat.usage,
        );
    }
    if let Some(idle) = &r.idle {
        idle_section(&mut s, idle);
    }
    if let Some(b) = &r.login_burst {
        login_section(&mut s, b);
    }
    if let Some(g) = &r.growth {
        growth_section(&mut s, r, g);
    }

    s.push_str("\n## Targets\n\n| target | measured | met |\n|---|---|---|\n");
    let mut target = |name: &str, measured: Option<String>, met: Option<bool>| {
        let _ = writeln!(
            s,
            "| {name} | {} | {} |",
            measured.unwrap_or_else(|| "not measured".into()),
            match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            }
        );
    };
    let drain_ratio = r
        .drain
        .as_ref()
        .zip(one)
        .map(|(d, o)| d.actions_per_sec / o);
    target(
        "worker drain ≥ 2× pgbench one-at-a-time",
        drain_ratio.map(|x| format!("{x:.2}×")),
        drain_ratio.map(|x| x >= 2.0),
    );
    let best_sat = r
        .saturation
        .iter()
        .map(|s| s.executed_rate)
        .reduce(f64::max);
    let sat_ratio = best_sat.zip(one).map(|(a, o)| a / o);
    target(
        "end-to-end saturation ≥ 0.75× pgbench one-at-a-time (best worker count)",
        sat_ratio.map(|x| format!("{x:.2}×")),
        sat_ratio.map(|x| x >= 0.75),
    );
    let half_post = r.half.as_ref().map(|h| h.median(|s| s.post.p99));
    target(
        "half saturation: POST p99 ≤ 15 ms",
        half_post.map(|x| format!("{x:.1} ms")),
        half_post.map(|x| x <= 15.0),
    );
    let half_e2e = r.half.as_ref().map(|h| h.median(|s| s.e2e.p99));
    target(
        "half saturation: POST→EXECUTED p99 ≤ 100 ms",
        half_e2e.map(|x| format!("{x:.1} ms")),
        half_e2e.map(|x| x <= 100.0),
    );
    let peak = |prefix: &str| {
        r.saturation
            .iter()
            .flat_map(|s| s.usage.iter())
            .chain(r.drain.iter().flat_map(|d| d.usage.iter()))
            .filter(|u| u.name.starts_with(prefix))
            .map(|u| u.peak_rss_mib)
            .reduce(f64::max)
    };
    let api_rss = peak("api");
    target(
        "api peak RSS ≤ 64 MiB at saturation",
        api_rss.map(|x| format!("{x:.1} MiB")),
        api_rss.map(|x| x <= 64.0),
    );
    let worker_rss = peak("worker");
    target(
        "worker peak RSS ≤ 64 MiB at saturation (largest of all workers)",
        worker_rss.map(|x| format!("{x:.1} MiB")),
        worker_rss.map(|x| x <= 64.0),
    );
    let idle = |prefix: &str| {
        r.idle.as_ref().and_then(|i| {
            i.procs
                .iter()
                .filter(|p| p.name.starts_with(prefix))
                .map(|p| p.rss_mib)
                .reduce(f64::max)
        })
    };
    let (api_idle, worker_idle) = (idle("api"), idle("worker"));
    target(
        "api RSS ≤ 32 MiB idle (after the load above)",
        api_idle.map(|x| format!("{x:.1} MiB")),
        api_idle.map(|x| x <= 32.0),
    );
    target(
        "worker RSS ≤ 32 MiB idle (largest, after load or fresh)",
        worker_idle.map(|x| format!("{x:.1} MiB")),
        worker_idle.map(|x| x <= 32.0),
    );
    let burst = r
        .login_burst
        .as_ref()
        .filter(|b| b.get_before.p99 > 0.0 && b.get_during.n > 0)
        .map(|b| (b.get_during.p99 / b.get_before.p99, b));
    target(
        "a burst of 50 concurrent logins at most doubles GET /api/tickets p99",
        burst.map(|(x, b)| {
            format!(
                "{x:.2}× ({} × {} logins, {:.1} → {:.1} ms)",
                b.bursts, b.logins, b.get_before.p99, b.get_during.p99
            )
        }),
        burst.map(|(x, _)| x <= 2.0),
    );
    let history = r.growth.as_ref().and_then(|g| {
        let i = g.rounds.iter().position(|x| x.label == "history")?;
        growth_figures(r, &g.rounds)
            .iter()
            .filter_map(|f| Some((f.worsening(i)?, f.name.clone())))
            .max_by(|a, b| a.0.total_cmp(&b.0))
    });
    target(
        "a history of 1,000,000 finished jobs changes no figure by more than 10 % (worst worsening)",
        history.as_ref().map(|(x, name)| {
            format!(
                "{x:+.1} % ({name}; {} finished jobs seeded)",
                r.growth.as_ref().map_or(0, |g| g.history_jobs)
            )
        }),
        history.as_ref().map(|(x, _)| *x <= 10.0),
    );

    for (phase, statements) in &r.statements {
        let _ = writeln!(
            s,
            "\n## Top statements by total time: {phase}\n\n| total ms | calls | mean ms | rows | statement |\n|---:|---:|---:|---:|---|"
        );
        for st in statements {
            let _ = writeln!(
                s,
                "| {:.0} | {} | {:.3} | {} | `{}` |",
                st.total_ms,
                st.calls,
                st.mean_ms,
                st.rows,
                st.query.replace('|', "\\|").replace('`', "'")
            );
        }
    }
    let drains = r.drain.iter().map(|d| (String::new(), d)).chain(
        r.growth.iter().flat_map(|g| &g.rounds).filter_map(|round| {
            round
                .drain
                .as_ref()
                .map(|d| (format!(", growth ({})", round.label), d))
        }),
    );
    for (label, d) in drains {
        let _ = writeln!(
            s,
            "\n## What the database's sessions were doing: drain with {} workers{label}\n\n{} samples of `pg_stat_activity`, one every 20 ms. \"sessions\" is how many sessions were in that state on average; `CPU` is running, `Client:idle in transaction` waits on its client inside a transaction.\n\n| sessions | wait | statement |\n|---:|---|---|",
            d.workers, d.wait_rounds
        );
        for t in &d.waits {
            #[expect(clippy::cast_precision_loss, reason = "sample counts")]
            let mean = t.samples as f64 / d.wait_rounds.max(1) as f64;
            let _ = writeln!(
                s,
                "| {mean:.2} | {} | `{}` |",
                t.wait,
                t.query.replace('|', "\\|").replace('`', "'")
            );
        }
        if d.steps.is_empty() {
            continue;
        }
        let _ = writeln!(
            s,
            "\n## Where the workers' time went: drain with {} workers{label}\n\nEach step's time, all workers together, from their `/metrics` when the drain ended. \"share\" is that time over the drain's wall time times the workers: apalis runs a worker's fetches and acks one at a time, and each batcher has two lanes.\n\n| step | calls | total s | mean ms | share |\n|---|---:|---:|---:|---:|",
            d.workers
        );
        #[expect(clippy::cast_precision_loss, reason = "counts")]
        for st in &d.steps {
            let _ = writeln!(
                s,
                "| `{}` | {} | {:.2} | {:.2} | {:.2} |",
                st.step,
                st.calls,
                st.total_secs,
                st.total_secs * 1e3 / st.calls.max(1) as f64,
                st.total_secs / (d.seconds * d.workers.max(1) as f64)
            );
        }
    }
    if r.not_executed > 0 {
        let _ = writeln!(
            s,
            "\n**{} tickets ended FAILED or DERIVED**: the run did not stay on the happy path.",
            r.not_executed
        );
    }
    if !r.errors.is_empty() {
        s.push_str("\n## Phases that failed\n\n");
        for e in &r.errors {
            let _ = writeln!(s, "- {e}");
        }
    }
    s
}

fn idle_section(s: &mut String, idle: &Idle) {
    let _ = writeln!(
        s,
        "\n## Memory at rest\n\nResident memory after {:.0} s with no request at all. The api and the drain's workers have run all the load above; the fresh worker started at the beginning of the rest.\n\n| process | state | VmRSS MiB | lifetime VmHWM MiB |\n|---|---|---:|---:|",
        idle.seconds
    );
    if let Some(start) = idle.api_at_start_mib {
        let _ = writeln!(s, "| api | right after its first /ready | {start:.1} | – |");
    }
    for p in &idle.procs {
        let _ = writeln!(
            s,
            "| {} | {} | **{:.1}** | {:.1} |",
            p.name,
            if p.after_load {
                "idle after load"
            } else {
                "idle, fresh"
            },
            p.rss_mib,
            p.lifetime_peak_rss_mib
        );
    }
}

/// `values` with `decimals` decimals, separated by commas.
fn listed(values: &[f64], decimals: usize) -> String {
    values
        .iter()
        .map(|x| format!("{x:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn login_section(s: &mut String, b: &LoginBurst) {
    let secs = listed(&b.burst_secs, 2);
    let bursts = if b.bursts == 1 {
        "One burst".to_owned()
    } else {
        format!("{} bursts", b.bursts)
    };
    let apart = if b.bursts == 1 {
        String::new()
    } else {
        format!(", {:.0} s apart,", b.gap_secs)
    };
    let _ = writeln!(
        s,
        "\n## Login burst\n\n{bursts} of {} `POST /api/auth/login` sent at once ({} users round-robin, right passwords, from one client address){apart} while `GET /api/tickets?limit=50` runs open-loop at {:.0}/s, no worker running. \"During\" are the GETs sent between a burst's start and its last answer ({secs} s), pooled over the bursts; \"before\" those answered before the first burst (after a half-second warm-up). Each is timed from its intended send time; \"from the send\" times it from the moment its request task began sending, so the difference is the load generator's own lateness (its last two rows). The api throttles failed logins only (10 per username, 50 per client address in 15 minutes, keyed by the socket's address: no proxy header is trusted), so these logins are not throttled; any 429 is counted below.\n\n| GET /api/tickets | n | p50 | p95 | p99 | max |\n|---|---:|---:|---:|---:|---:|",
        b.logins, b.users, b.get_rate
    );
    for (name, p) in [
        ("before the bursts", &b.get_before),
        ("during the bursts", &b.get_during),
        ("before, from the send", &b.get_before_sent),
        ("during, from the send", &b.get_during_sent),
        ("before: the generator's lateness", &b.get_lag_before),
        ("during: the generator's lateness", &b.get_lag_during),
    ] {
        let _ = writeln!(
            s,
            "| {name} | {} | {:.1} | {:.1} | **{:.1}** | {:.1} |",
            p.n, p.p50, p.p95, p.p99, p.max
        );
    }
    let worst = listed(&b.get_during_worst, 1);
    let api = b.usage.iter().find(|u| u.name == "api");
    let api_cores = api.map_or("–".into(), |u| format!("{:.2}", u.cores));
    let api_rss = api.map_or("–".into(), |u| format!("{:.1} MiB", u.peak_rss_mib));
    let _ = writeln!(
        s,
        "\nGET p99 during ÷ before: **{}** (target ≤ 2×); the slowest GET of each burst: {worst} ms; GET errors {}; the generator's worst lateness {:.1} ms; during the bursts the api used {api_cores} cores and peaked at {api_rss} resident.\n\n| logins | 200 | 429 | other | p50 | p95 | p99 | max |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n| {} | {} | {} | {} | {:.0} | {:.0} | **{:.0}** | {:.0} |\n\nLogin latency runs from its burst's start (every login's intended send time) to the full answer, over all answers of all bursts (ms).",
        ratio(b.get_during.p99, Some(b.get_before.p99)),
        b.get_errors,
        b.max_send_lag_ms,
        b.logins * b.bursts,
        b.ok,
        b.throttled,
        b.other_errors,
        b.login_all.p50,
        b.login_all.p95,
        b.login_all.p99,
        b.login_all.max
    );
}

/// One figure of the growth table: the main figures' value and each
/// round's.
struct Figure {
    name: String,
    higher_is_better: bool,
    main: Option<f64>,
    runs: Vec<Option<f64>>,
}

impl Figure {
    /// What round `i` is judged against: the round before it, or the main
    /// figures for the first round.
    fn reference(&self, i: usize) -> Option<f64> {
        match i.checked_sub(1) {
            Some(before) => *self.runs.get(before)?,
            None => self.main,
        }
    }

    /// Signed change of round `i` from its reference (%).
    fn change(&self, i: usize) -> Option<f64> {
        let (base, v) = (self.reference(i)?, (*self.runs.get(i)?)?);
        (base > 0.0).then(|| (v - base) / base * 100.0)
    }

    /// How much worse round `i` is than its reference (%; negative: better).
    fn worsening(&self, i: usize) -> Option<f64> {
        self.change(i)
            .map(|c| if self.higher_is_better { -c } else { c })
    }
}

fn growth_figures(r: &Results, rounds: &[GrowthRound]) -> Vec<Figure> {
    let mut figures = Vec::new();
    let drain_tickets = rounds
        .iter()
        .find_map(|g| g.drain.as_ref())
        .map(|d| (d.tickets, d.workers));
    if let Some((tickets, workers)) = drain_tickets {
        figures.push(Figure {
            name: format!("drain, actions/s ({tickets} tickets, {workers} workers)"),
            higher_is_better: true,
            // Only a drain of the same size compares.
            main: r
                .drain
                .as_ref()
                .filter(|d| d.tickets == tickets && d.workers == workers)
                .map(|d| d.actions_per_sec),
            runs: rounds
                .iter()
                .map(|g| g.drain.as_ref().map(|d| d.actions_per_sec))
                .collect(),
        });
    }
    if let Some(sat) = rounds.iter().find_map(|g| g.saturation.as_ref()) {
        figures.push(Figure {
            name: format!(
                "end-to-end saturation, executed/s ({} workers, the best run of each ramp)",
                sat.workers
            ),
            higher_is_better: true,
            main: r
                .saturation
                .iter()
                .find(|s| s.workers == sat.workers)
                .map(|s| s.executed_rate),
            runs: rounds
                .iter()
                .map(|g| g.saturation.as_ref().map(|s| s.executed_rate))
                .collect(),
        });
    }
    if let Some(half) = rounds.iter().find_map(|g| g.half.as_ref()) {
        type Pick = fn(&Step) -> f64;
        let pick: [(&str, Pick); 3] = [
            ("POST p99, ms", |s| s.post.p99),
            ("POST→EXECUTED p99, ms", |s| s.e2e.p99),
            ("GET /api/tickets p99, ms", |s| s.get.p99),
        ];
        for (what, f) in pick {
            figures.push(Figure {
                name: format!(
                    "at {:.0}/s offered: {what} (median of {} steps)",
                    half.offered_rate(),
                    half.steps.len()
                ),
                higher_is_better: false,
                main: r.half.as_ref().map(|h| h.median(f)),
                runs: rounds
                    .iter()
                    .map(|g| g.half.as_ref().map(|h| h.median(f)))
                    .collect(),
            });
        }
    }
    figures
}

fn growth_section(s: &mut String, r: &Results, g: &Growth) {
    s.push_str("\n## Growth\n\n");
    if let Some(seed) = &g.seed {
        let inserts: Vec<String> = seed
            .inserts
            .iter()
            .map(|(table, rows, secs)| format!("{table} {rows} rows in {secs:.1} s"))
            .collect();
        let _ = writeln!(
            s,
            "Seeded {} finished jobs of history (each an EXECUTED ticket with one SUCCEEDED action, its `Done` job in `apalis.jobs` and {} audit rows: copies of a real ticket of this run, spread over {} companies and dated over the 24 hours that ended an hour before the seeding, so that the worker's 7-day retention of finished jobs deletes none) and {} pending jobs due in a day (copies of the finished job, pointing at finished actions), in {:.1} s ({}; then `VACUUM (ANALYZE)` and `CHECKPOINT` {:.1} s; foreign-key checks and triggers {}).",
            seed.history_jobs,
            seed.audit_rows_per_ticket,
            seed.companies,
            seed.pending_jobs,
            seed.seconds,
            inserts.join(", "),
            seed.vacuum_secs,
            if seed.triggers_skipped {
                "skipped for the copies"
            } else {
                "run for every copy"
            }
        );
        for note in &seed.notes {
            let _ = writeln!(s, "\nNote: {note}.");
        }
    }
    if let Some(reg) = &g.registration {
        let _ = writeln!(
            s,
            "\nThen {} more companies registered through the api (one argon2id hash each, 16 registrations in flight) in {:.1} s ({:.1}/s).",
            reg.companies, reg.seconds, reg.per_sec
        );
    }
    if g.rounds.is_empty() {
        let _ = writeln!(s, "\nNo growth run completed.");
    } else {
        let figures = growth_figures(r, &g.rounds);
        let _ = write!(
            s,
            "\nEach round is on top of the one before (the companies round keeps the history). Each Δ is against the column before it: the first round's against the main figures above (measured the same way with {} companies and no seeded rows, minutes earlier), every later round's against the round before it, so that the machine's drift over a run counts as little as it can.\n\n| figure | main figures |",
            r.settings.companies
        );
        for round in &g.rounds {
            let _ = write!(
                s,
                " {} ({} finished + {} pending jobs, {} companies) | Δ |",
                round.label, round.history_jobs, round.pending_jobs, round.companies
            );
        }
        let _ = write!(s, "\n|---|---:|");
        for _ in &g.rounds {
            s.push_str("---:|---:|");
        }
        s.push('\n');
        let value = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.1}"));
        for f in &figures {
            let _ = write!(s, "| {} | {} |", f.name, value(f.main));
            for (i, v) in f.runs.iter().enumerate() {
                let delta = match (f.change(i), f.worsening(i)) {
                    (Some(c), Some(w)) if w > 10.0 => format!("**{c:+.1} %**"),
                    (Some(c), _) => format!("{c:+.1} %"),
                    _ => "–".into(),
                };
                let _ = write!(s, " {} | {delta} |", value(*v));
            }
            s.push('\n');
        }
        s.push_str("\nA bold Δ is more than 10 % worse than the column before it.\n");
        for round in &g.rounds {
            if let Some(left) = round.history_jobs_left {
                let _ = writeln!(
                    s,
                    "\nAfter the {} run, {left} of the {} seeded finished jobs were still in `apalis.jobs`{}.",
                    round.label,
                    round.history_jobs,
                    if u64::try_from(left).is_ok_and(|l| l < round.history_jobs) {
                        " (**retention deleted some during the measurements**)"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    if let Some(e) = &g.error {
        let _ = writeln!(s, "\n**The growth runs stopped early**: {e}");
    }
}

/// Latency against offered rate (log scale).
pub fn latency_chart(r: &Results) -> String {
    let pick = |f: fn(&Step) -> f64| -> Vec<(f64, f64)> {
        r.sweep.iter().map(|s| (s.offered_rate, f(s))).collect()
    };
    Chart {
        title: format!(
            "Latency against offered POST rate ({} workers, {} CPUs)",
            r.settings.sweep_workers, r.machine.nproc
        ),
        x_label: "offered POST /api/tickets per second (open loop)".into(),
        y_label: "latency, ms (log scale)".into(),
        log_y: true,
        series: vec![
            Series {
                name: "POST p50".into(),
                color: "#1f77b4",
                points: pick(|s| s.post.p50),
                dashed: true,
            },
            Series {
                name: "POST p99".into(),
                color: "#1f77b4",
                points: pick(|s| s.post.p99),
                dashed: false,
            },
            Series {
                name: "POST→EXECUTED p50".into(),
                color: "#d62728",
                points: pick(|s| s.e2e.p50),
                dashed: true,
            },
            Series {
                name: "POST→EXECUTED p99".into(),
                color: "#d62728",
                points: pick(|s| s.e2e.p99),
                dashed: false,
            },
            Series {
                name: "GET list p99".into(),
                color: "#2ca02c",
                points: pick(|s| s.get.p99),
                dashed: false,
            },
        ],
        references: vec![
            ("15 ms (POST p99 target)".into(), "#1f77b4", 15.0),
            ("100 ms (E2E p99 target)".into(), "#d62728", 100.0),
        ],
    }
    .to_svg()
}

/// Throughput against worker processes, with the baselines as lines.
pub fn throughput_chart(r: &Results) -> String {
    let mut references = Vec::new();
    if let Some(one) = r.pgbench_rate("one-at-a-time") {
        references.push(("pgbench one-at-a-time".to_owned(), "#7f7f7f", one));
    }
    if let Some(n) = &r.noop {
        references.push((
            "bare apalis no-op drain".to_owned(),
            "#9467bd",
            n.drain_per_sec,
        ));
    }
    let mut series = vec![Series {
        name: "end-to-end saturation".into(),
        color: "#d62728",
        #[expect(clippy::cast_precision_loss, reason = "a worker count")]
        points: r
            .saturation
            .iter()
            .map(|s| (s.workers as f64, s.executed_rate))
            .collect(),
        dashed: false,
    }];
    if let Some(d) = &r.drain {
        series.push(Series {
            name: format!("drain of {} queued", d.tickets),
            color: "#ff7f0e",
            #[expect(clippy::cast_precision_loss, reason = "a worker count")]
            points: vec![(d.workers as f64, d.actions_per_sec)],
            dashed: false,
        });
    }
    Chart {
        title: format!(
            "Tickets EXECUTED per second against worker processes ({} CPUs)",
            r.machine.nproc
        ),
        x_label: "worker processes".into(),
        y_label: "actions (tickets) per second".into(),
        log_y: false,
        series,
        references,
    }
    .to_svg()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_changes_are_signed_and_worsening_follows_the_direction() {
        let throughput = Figure {
            name: "drain".into(),
            higher_is_better: true,
            main: Some(200.0),
            runs: vec![Some(150.0), None, Some(120.0)],
        };
        assert_eq!(throughput.change(0), Some(-25.0));
        assert_eq!(throughput.worsening(0), Some(25.0));
        assert_eq!(throughput.change(1), None);
        // A round after one with no value has nothing to compare with.
        assert_eq!(throughput.change(2), None);
        let latency = Figure {
            name: "p99".into(),
            higher_is_better: false,
            main: Some(10.0),
            runs: vec![Some(9.0)],
        };
        assert_eq!(latency.worsening(0).map(f64::round), Some(-10.0));
        let no_base = Figure {
            main: Some(0.0),
            ..latency
        };
        assert_eq!(no_base.change(0), None);
    }

    #[test]
    fn a_later_round_is_judged_against_the_round_before_it_not_the_main_figures() {
        let drain = Figure {
            name: "drain".into(),
            higher_is_better: true,
            main: Some(4000.0),
            runs: vec![Some(3000.0), Some(2850.0), Some(2280.0)],
        };
        // The first round against the main figures: the machine's drift.
        assert_eq!(drain.change(0), Some(-25.0));
        // The history round against the round before it: -5 %, not -28.75 %.
        assert_eq!(drain.change(1), Some(-5.0));
        assert_eq!(drain.worsening(2), Some(20.0));
        assert_eq!(drain.change(3), None);
    }

    fn step(post_p99: f64) -> Step {
        Step {
            workers: 2,
            offered_rate: 400.0,
            seconds: 20.0,
            post_ok_rate: 400.0,
            post_errors: 0,
            post: Percentiles {
                p99: post_p99,
                ..Percentiles::default()
            },
            get: Percentiles::default(),
            e2e: Percentiles::default(),
            e2e_missing: 0,
            executed_rate: 400.0,
            post_sustained: true,
            e2e_sustained: true,
            max_send_lag_ms: 0.0,
            usage: Vec::new(),
        }
    }

    #[test]
    fn a_saturation_run_fell_behind_when_the_api_or_the_workers_lag() {
        let run = |offered_rate, post_ok_rate, executed_rate| Saturation {
            workers: 1,
            offered_rate,
            post_ok_rate,
            executed_rate,
            post_p99: 10.0,
            drain_after_secs: 0.0,
            usage: Vec::new(),
            ramp: Vec::new(),
        };
        // Kept up: the ramp goes on.
        assert!(!run(1000.0, 1000.0, 990.0).fell_behind());
        assert!(!run(1000.0, 960.0, 920.0).fell_behind());
        // The api answered under 95 %.
        assert!(run(1000.0, 940.0, 940.0).fell_behind());
        // The workers executed under 95 % of what was answered.
        assert!(run(1000.0, 1000.0, 940.0).fell_behind());
    }

    #[test]
    fn a_saturation_ramp_climbs_while_kept_up_descends_while_behind_and_stops_at_the_bracket() {
        let run = |offered_rate: f64, kept_up| RampRun {
            offered_rate,
            post_ok_rate: offered_rate,
            executed_rate: offered_rate,
            kept_up,
        };
        assert_eq!(next_ramp_rate(&[], 1.25), None);
        assert_eq!(next_ramp_rate(&[run(800.0, true)], 1.25), Some(1000.0));
        assert_eq!(
            next_ramp_rate(&[run(800.0, true), run(1000.0, true)], 1.25),
            Some(1250.0)
        );
        assert_eq!(next_ramp_rate(&[run(1000.0, false)], 1.25), Some(800.0));
        // Bracketed either way: done.
        assert_eq!(
            next_ramp_rate(&[run(800.0, true), run(1000.0, false)], 1.25),
            None
        );
        assert_eq!(
            next_ramp_rate(&[run(1000.0, false), run(800.0, true)], 1.25),
            None
        );
        let ramp = [run(1000.0, false), run(800.0, true), run(640.0, true)];
        assert_eq!(highest_kept_up(&ramp), Some(800.0));
        assert_eq!(highest_kept_up(&ramp[..1]), None);
    }

    #[test]
    fn half_steps_report_a_measured_median_and_refuse_to_be_empty() {
        assert!(HalfSteps::new(Vec::new(), Settled::default()).is_none());
        let odd = HalfSteps::new(vec![step(90.0), step(11.0), step(37.0)], Settled::default());
        assert_eq!(odd.map(|h| h.median(|s| s.post.p99)), Some(37.0));
        // An even count takes the lower middle value, not a mean of two.
        let even = HalfSteps::new(
            vec![step(90.0), step(11.0), step(37.0), step(12.0)],
            Settled::default(),
        );
        assert_eq!(even.map(|h| h.median(|s| s.post.p99)), Some(12.0));
    }
}
