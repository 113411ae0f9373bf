//! The results of one run: kept as JSON, rendered as Markdown tables (the
//! figures of BENCHMARKS.md) and as two SVG charts.

use std::fmt::Write as _;

use serde::Serialize;

use crate::{
    noop::NoopDrain,
    pgbench::PgbenchRun,
    plot::{Chart, Series},
    probe::{ServerInfo, Statement},
    stats::Percentiles,
    system::ProcUsage,
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
    /// `WORKER_CONCURRENCY` of every worker process.
    pub worker_concurrency: usize,
    /// Simulated provider latency per action (ms).
    pub simulated_latency_ms: u32,
    /// Workers running during the rate sweep and the half-saturation step.
    pub sweep_workers: usize,
    /// Seconds per sweep step.
    pub step_secs: f64,
    /// Seconds of each saturation run.
    pub saturation_secs: f64,
    /// Offered rate of the concurrent `GET /api/tickets` stream.
    pub get_rate: f64,
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
    /// The step at half the end-to-end saturation throughput.
    pub half: Option<Step>,
    /// The drain.
    pub drain: Option<Drain>,
    /// Top statements by phase.
    pub statements: Vec<(String, Vec<Statement>)>,
    /// Tickets that ended FAILED or DERIVED (0 on a clean run).
    pub not_executed: i64,
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
    for u in usage {
        match u.name.as_str() {
            "api" => api += u.cores,
            "postgres" => pg += u.cores,
            "bench" => bench += u.cores,
            _ => workers += u.cores,
        }
    }
    format!("{api:.2} / {workers:.2} / {pg:.2} / {bench:.2}")
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
        let conns = if u.name == "bench" {
            "–".to_owned()
        } else {
            u.peak_db_connections.to_string()
        };
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.2} | {rss} | {hwm} | {conns} |",
            u.name, u.cpu_secs, u.cores
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
        r.settings.worker_concurrency,
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
        "\n## POST /api/tickets at fixed offered rates ({} worker processes running)\n\nOpen loop: each request is sent at its intended time; latency runs from that time to the full response. POST→EXECUTED is `executed_at − created_at` in the database. GET is `GET /api/tickets?limit=50` sent at {}/s alongside. Cores: api / workers / PostgreSQL / load generator.\n\n| offered/s | 201/s | POST p50 | p95 | p99 | max | errors | POST→EXECUTED p50 | p95 | p99 | executed/s | GET p50 | GET p99 | cores |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
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

    let _ = writeln!(
        s,
        "\n## End-to-end saturation throughput by worker processes\n\nThe api offered more than the pipeline can take; executed/s counts tickets reaching EXECUTED after the first quarter of the run.\n\n| workers | offered/s | 201/s | executed/s | ÷ pgbench one-at-a-time | ÷ pgbench batched | POST p99 | cores (api / workers / PG / generator) | peak RSS api / max worker MiB |\n|---:|---:|---:|---:|---:|---:|---:|---|---|"
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
            "| {} | {:.0} | {:.0} | **{:.0}** | {} | {} | {:.0} ms | {} | {api_rss:.1} / {worker_rss:.1} |",
            sat.workers,
            sat.offered_rate,
            sat.post_ok_rate,
            sat.executed_rate,
            ratio(sat.executed_rate, one),
            ratio(sat.executed_rate, batched),
            sat.post_p99,
            usage_brief(&sat.usage)
        );
    }

    if let Some(h) = &r.half {
        let _ = writeln!(
            s,
            "\n## At half the end-to-end saturation throughput ({} workers)\n\n| offered/s | POST p50 | p95 | p99 | max | POST→EXECUTED p50 | p95 | p99 | max | GET p50 | p95 | p99 | max |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n| {:.0} | {:.1} | {:.1} | **{:.1}** | {:.1} | {:.1} | {:.1} | **{:.1}** | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            h.workers,
            h.offered_rate,
            h.post.p50,
            h.post.p95,
            h.post.p99,
            h.post.max,
            h.e2e.p50,
            h.e2e.p95,
            h.e2e.p99,
            h.e2e.max,
            h.get.p50,
            h.get.p95,
            h.get.p99,
            h.get.max
        );
        usage_table(&mut s, "Resources at half saturation:", &h.usage);
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
    let half_post = r.half.as_ref().map(|h| h.post.p99);
    target(
        "half saturation: POST p99 ≤ 15 ms",
        half_post.map(|x| format!("{x:.1} ms")),
        half_post.map(|x| x <= 15.0),
    );
    let half_e2e = r.half.as_ref().map(|h| h.e2e.p99);
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
    if r.not_executed > 0 {
        let _ = writeln!(
            s,
            "\n**{} tickets ended FAILED or DERIVED**: the run did not stay on the happy path.",
            r.not_executed
        );
    }
    s
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
