//! The phases after the main figures: the memory of the processes at rest,
//! a burst of logins under a steady `GET /api/tickets` stream, and growth
//! (the saturation, half-saturation and drain figures measured again with a
//! large history in the tables, then with many more companies).

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use sqlx::PgPool;

use crate::{
    Cli, MAX_IN_FLIGHT, Plan, history,
    load::{self, Request, Tenant},
    probe, procfs, ramp_saturation,
    report::{
        self, Growth, GrowthRound, HalfSteps, Idle, IdleProc, LoginBurst, Registration, Saturation,
    },
    run_drain, run_step, say,
    stats::Percentiles,
    system::{ProcUsage, System},
};

/// What every growth run needs.
pub struct Ctx<'a> {
    pub plan: &'a Plan,
    pub cli: &'a Cli,
    pub client: &'a reqwest::Client,
    /// The benchmark's database, as its administrator.
    pub db: &'a PgPool,
    /// Its URL (the seeding opens a connection of its own).
    pub db_url: &'a str,
    pub stat_statements: bool,
    pub drain_timeout: Duration,
}

/// The main figures growth is compared with.
pub struct Baseline<'a> {
    pub saturation: &'a [Saturation],
    pub half: Option<&'a HalfSteps>,
}

/// The half-saturation figure: the database settled
/// ([`probe::settle`]), then the plan's `half_steps` steps of
/// `saturation` at `rate`, back to back, with `sweep_workers` fresh workers
/// that are stopped afterwards; says its medians after `label`.
///
/// # Errors
/// A step that failed, or workers that cannot start.
pub async fn half_steps(
    ctx: &Ctx<'_>,
    system: &mut System,
    tenants: &[Tenant],
    rate: f64,
    label: &str,
) -> anyhow::Result<Option<HalfSteps>> {
    let plan = ctx.plan;
    let settled = probe::settle(&mut *ctx.db.acquire().await?).await?;
    say(format!(
        "{label}: VACUUM (ANALYZE) and CHECKPOINT first, {:.1} s{}",
        settled.seconds,
        settled
            .no_checkpoint
            .as_ref()
            .map_or(String::new(), |e| format!(" (no checkpoint: {e})"))
    ));
    system.start_workers(plan.sweep_workers)?;
    // Let the workers connect and register before the clock starts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut steps = Vec::with_capacity(plan.half_steps);
    let mut failed = None;
    for _ in 0..plan.half_steps {
        match run_step(
            system,
            ctx.client,
            ctx.db,
            tenants,
            rate,
            plan.saturation,
            ctx.cli.get_rate,
            ctx.drain_timeout,
        )
        .await
        {
            Ok(step) => steps.push(step),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    system.stop_workers().await;
    if let Some(e) = failed {
        return Err(e);
    }
    let half = HalfSteps::new(steps, settled);
    if let Some(h) = &half {
        say(format!(
            "{label}: {:.0}/s, median of {} steps: POST p99 {:.1} ms, e2e p99 {:.1} ms, GET p99 {:.1} ms",
            h.offered_rate(),
            h.steps.len(),
            h.median(|s| s.post.p99),
            h.median(|s| s.e2e.p99),
            h.median(|s| s.get.p99)
        ));
    }
    Ok(half)
}

/// Starts one fresh worker beside whatever runs (the api and the drain's
/// workers, after their load), waits `rest` with no request at all, and
/// reads every process's resident memory.
///
/// # Errors
/// A worker that cannot start; a process that died.
pub async fn idle(
    system: &mut System,
    rest: Duration,
    api_at_start_mib: Option<f64>,
) -> anyhow::Result<Idle> {
    let loaded: Vec<String> = system.procs().map(|p| p.name.clone()).collect();
    system.start_workers(1)?;
    tokio::time::sleep(rest).await;
    system.check_alive()?;
    let procs: Vec<IdleProc> = system
        .procs()
        .map(|p| IdleProc {
            name: p.name.clone(),
            after_load: loaded.contains(&p.name),
            rss_mib: procfs::rss_mib(p.pid()).unwrap_or(0.0),
            lifetime_peak_rss_mib: procfs::peak_rss_mib(p.pid()).unwrap_or(0.0),
        })
        .collect();
    for p in &procs {
        say(format!(
            "idle {}{}: {:.1} MiB resident",
            p.name,
            if p.after_load {
                " (after load)"
            } else {
                " (fresh)"
            },
            p.rss_mib
        ));
    }
    Ok(Idle {
        seconds: rest.as_secs_f64(),
        api_at_start_mib,
        procs,
    })
}

/// GETs alone for `lead`, then `bursts` bursts of `logins` concurrent
/// logins, `gap` apart, with the GETs going on; they stop half a second
/// after the last burst's last answer. The GETs sent during any burst are
/// pooled, so the "during" percentiles rest on `bursts` times as many
/// GETs as one burst lasts.
///
/// # Errors
/// A process that died.
#[expect(clippy::too_many_arguments, reason = "one phase's knobs")]
pub async fn login_burst(
    system: &mut System,
    client: &reqwest::Client,
    tenants: &[Tenant],
    logins: usize,
    bursts: usize,
    gap: Duration,
    get_rate: f64,
    lead: Duration,
) -> anyhow::Result<LoginBurst> {
    /// GETs sent before this are the warm-up (connections opening).
    const WARM_UP_S: f64 = 0.5;
    /// One burst: its start, its last answer, the answers and what the
    /// processes used meanwhile.
    struct Round {
        from: tokio::time::Instant,
        to: tokio::time::Instant,
        answers: Vec<load::Login>,
        usage: Vec<ProcUsage>,
    }
    let bursts = bursts.max(1);
    let api = system.api_url.clone();
    let stop = AtomicBool::new(false);
    let _sampler = system.sample_connections();
    say(format!(
        "login burst: GET /api/tickets at {get_rate:.0}/s, {bursts} × {logins} logins ({:.0} s apart) after {:.0} s",
        gap.as_secs_f64(),
        lead.as_secs_f64()
    ));
    let gets = load::open_loop_until(
        client,
        &api,
        tenants,
        Request::ListTickets,
        get_rate,
        // At most: the bursts end the stream as soon as they are over.
        lead + (gap + Duration::from_secs(120)) * u32::try_from(bursts).unwrap_or(u32::MAX),
        MAX_IN_FLIGHT,
        &stop,
    );
    let rounds = async {
        tokio::time::sleep(lead).await;
        let mut rounds = Vec::with_capacity(bursts);
        for i in 0..bursts {
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            let mark = system.mark();
            let from = tokio::time::Instant::now();
            let answers = load::login_burst(client, &api, tenants, logins).await;
            let to = tokio::time::Instant::now();
            let usage = system.usage_since(&mark);
            rounds.push(Round {
                from,
                to,
                answers,
                usage,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        rounds
    };
    let (gets, rounds) = tokio::join!(gets, rounds);
    system.check_alive()?;
    let Some(first) = rounds.first() else {
        anyhow::bail!("no login burst ran");
    };
    let started = gets.started.unwrap_or(first.from);
    let since_start =
        |at: tokio::time::Instant| at.saturating_duration_since(started).as_secs_f64();
    let windows: Vec<(f64, f64)> = rounds
        .iter()
        .map(|r| (since_start(r.from), since_start(r.to)))
        .collect();
    let first_start = since_start(first.from);
    let before: Vec<_> = gets
        .samples
        .iter()
        .filter(|s| s.sent_at_s >= WARM_UP_S && s.done_at_s <= first_start)
        .collect();
    // The GETs sent during each burst, then all of them.
    let per_burst: Vec<Vec<&load::Sample>> = windows
        .iter()
        .map(|(b0, b1)| {
            gets.samples
                .iter()
                .filter(|s| s.sent_at_s >= *b0 && s.sent_at_s <= *b1)
                .collect()
        })
        .collect();
    let during: Vec<&load::Sample> = per_burst.iter().flatten().copied().collect();
    // Answered GETs timed from their intended send, and from their send.
    let ok = |v: &[&load::Sample], from_send: bool| -> Vec<f64> {
        v.iter()
            .filter(|s| s.ok)
            .map(|s| s.latency_ms - if from_send { s.send_lag_ms } else { 0.0 })
            .collect()
    };
    let lag = |v: &[&load::Sample]| -> Vec<f64> { v.iter().map(|s| s.send_lag_ms).collect() };
    let answers: Vec<&load::Login> = rounds.iter().flat_map(|r| &r.answers).collect();
    let ok_logins: Vec<f64> = answers
        .iter()
        .filter(|l| l.status == Some(200))
        .map(|l| l.latency_ms)
        .collect();
    let all_logins: Vec<f64> = answers.iter().map(|l| l.latency_ms).collect();
    let throttled = answers.iter().filter(|l| l.status == Some(429)).count();
    let sent = logins * rounds.len();
    let burst = LoginBurst {
        logins,
        bursts: rounds.len(),
        gap_secs: gap.as_secs_f64(),
        users: tenants.len().min(logins),
        get_rate,
        get_before: Percentiles::of(&ok(&before, false)),
        get_during: Percentiles::of(&ok(&during, false)),
        get_during_worst: per_burst
            .iter()
            .map(|gets| ok(gets, false).into_iter().fold(0.0, f64::max))
            .collect(),
        get_before_sent: Percentiles::of(&ok(&before, true)),
        get_during_sent: Percentiles::of(&ok(&during, true)),
        get_lag_before: Percentiles::of(&lag(&before)),
        get_lag_during: Percentiles::of(&lag(&during)),
        get_errors: before.iter().chain(&during).filter(|s| !s.ok).count() + gets.shed,
        login_ok: Percentiles::of(&ok_logins),
        login_all: Percentiles::of(&all_logins),
        ok: ok_logins.len(),
        throttled,
        other_errors: sent.saturating_sub(ok_logins.len() + throttled),
        burst_secs: windows.iter().map(|(b0, b1)| b1 - b0).collect(),
        max_send_lag_ms: gets.max_send_lag_ms,
        usage: merge_usage(
            rounds
                .iter()
                .map(|r| (r.to.saturating_duration_since(r.from), r.usage.as_slice())),
        ),
    };
    say(format!(
        "login burst: {} of {sent} logins OK ({} throttled) in {} × {:.2} s (median), login p99 {:.0} ms; GET p99 {:.1} ms during vs {:.1} ms before",
        burst.ok,
        burst.throttled,
        burst.bursts,
        Percentiles::of(&burst.burst_secs).p50,
        burst.login_all.p99,
        burst.get_during.p99,
        burst.get_before.p99
    ));
    Ok(burst)
}

/// The processes' use over several windows, each `(wall time, use)`: CPU
/// seconds add up, cores are their sum over the windows' summed wall time,
/// peaks are the largest of any window.
fn merge_usage<'a>(windows: impl Iterator<Item = (Duration, &'a [ProcUsage])>) -> Vec<ProcUsage> {
    let mut merged: Vec<ProcUsage> = Vec::new();
    let mut wall = 0.0;
    for (secs, usage) in windows {
        wall += secs.as_secs_f64();
        for u in usage {
            match merged.iter_mut().find(|m| m.name == u.name) {
                Some(m) => {
                    m.cpu_secs += u.cpu_secs;
                    m.peak_rss_mib = m.peak_rss_mib.max(u.peak_rss_mib);
                    m.lifetime_peak_rss_mib = m.lifetime_peak_rss_mib.max(u.lifetime_peak_rss_mib);
                    m.peak_db_connections = m.peak_db_connections.max(u.peak_db_connections);
                }
                None => merged.push(u.clone()),
            }
        }
    }
    for m in &mut merged {
        m.cores = m.cpu_secs / wall.max(1e-9);
    }
    merged
}

/// The growth runs; a failure ends them and is kept in [`Growth::error`].
/// Returns the top statements of their drains too.
pub async fn growth(
    ctx: &Ctx<'_>,
    system: &mut System,
    tenants: &[Tenant],
    baseline: &Baseline<'_>,
) -> (Growth, Vec<(String, Vec<probe::Statement>)>) {
    let mut growth = Growth {
        history_jobs: ctx.plan.history_jobs,
        pending_jobs: ctx.plan.pending_jobs,
        companies: ctx.plan.growth_companies,
        drain_tickets: ctx.plan.growth_drain_tickets,
        seed: None,
        registration: None,
        rounds: Vec::new(),
        error: None,
    };
    let mut statements = Vec::new();
    if let Err(e) = growth_runs(ctx, system, tenants, baseline, &mut growth, &mut statements).await
    {
        say(format!("growth failed: {e:#}"));
        growth.error = Some(format!("{e:#}"));
    }
    system.stop_workers().await;
    (growth, statements)
}

async fn growth_runs(
    ctx: &Ctx<'_>,
    system: &mut System,
    tenants: &[Tenant],
    baseline: &Baseline<'_>,
    growth: &mut Growth,
    statements: &mut Vec<(String, Vec<probe::Statement>)>,
) -> anyhow::Result<()> {
    let plan = ctx.plan;
    // The cheapest saturation ramp of the main figures (1 worker by
    // default), repeated from the highest rate it kept up with: the ramp
    // then finds this round's own saturation, and the figures compared are
    // the best runs of two ramps. Repeating the main ramp's best run at its
    // offered rate would repeat a rate the pipeline may have fallen behind
    // at, and overloaded runs are the noisiest.
    let workers = plan.workers.iter().copied().min().unwrap_or(1).max(1);
    let sat_rate = baseline
        .saturation
        .iter()
        .find(|s| s.workers == workers)
        .map(|s| report::highest_kept_up(&s.ramp).unwrap_or(s.offered_rate));
    let half_rate = baseline.half.map(HalfSteps::offered_rate);
    // Each round is judged against the round before it, so the first one
    // repeats the main figures' round on the tables as they are: the history
    // is then compared with a round minutes before it rather than with the
    // main phases a quarter of an hour earlier, and the companies with the
    // history round they share their rows with. The machine's speed drifts
    // by more than 10 % over a run.
    let (before, top) = round(
        ctx,
        system,
        "before",
        tenants,
        workers,
        sat_rate,
        half_rate,
        (0, 0),
    )
    .await?;
    statements.extend(top);
    growth.rounds.push(before);
    let mut history_in_tables = (0, 0);
    if plan.history_jobs > 0 || plan.pending_jobs > 0 {
        say(format!(
            "growth: seeding {} finished jobs of history and {} pending ones",
            plan.history_jobs, plan.pending_jobs
        ));
        let seeded =
            history::seed(ctx.db_url, tenants, plan.history_jobs, plan.pending_jobs).await?;
        say(format!(
            "growth: seeded in {:.1} s ({:.1} s of it VACUUM (ANALYZE) and CHECKPOINT){}",
            seeded.seconds,
            seeded.vacuum_secs,
            seeded
                .notes
                .iter()
                .map(|n| format!("; {n}"))
                .collect::<String>()
        ));
        history_in_tables = (seeded.history_jobs, seeded.pending_jobs);
        growth.seed = Some(seeded);
        let (round, top) = round(
            ctx,
            system,
            "history",
            tenants,
            workers,
            sat_rate,
            half_rate,
            history_in_tables,
        )
        .await?;
        statements.extend(top);
        growth.rounds.push(round);
    }
    if plan.growth_companies > tenants.len() {
        let extra = plan.growth_companies - tenants.len();
        say(format!(
            "growth: registering {extra} more companies through the api"
        ));
        let t0 = Instant::now();
        let more = load::seed_tenants(
            ctx.client,
            &system.api_url,
            extra,
            ctx.cli.simulated_latency_ms,
        )
        .await?;
        let seconds = t0.elapsed().as_secs_f64();
        #[expect(clippy::cast_precision_loss, reason = "a company count")]
        let registration = Registration {
            companies: more.len(),
            seconds,
            per_sec: more.len() as f64 / seconds.max(1e-9),
        };
        say(format!(
            "growth: {} companies registered in {:.1} s ({:.1}/s)",
            registration.companies, registration.seconds, registration.per_sec
        ));
        growth.registration = Some(registration);
        let all: Vec<Tenant> = tenants.iter().chain(&more).cloned().collect();
        let label = if history_in_tables == (0, 0) {
            "companies"
        } else {
            "history + companies"
        };
        let (round, top) = round(
            ctx,
            system,
            label,
            &all,
            workers,
            sat_rate,
            half_rate,
            history_in_tables,
        )
        .await?;
        statements.extend(top);
        growth.rounds.push(round);
    }
    Ok(())
}

/// One growth run: a saturation ramp with `workers` workers from `sat_rate`,
/// the half-saturation steps at the main run's rate, and a drain.
#[expect(clippy::too_many_arguments, reason = "one growth run's inputs")]
async fn round(
    ctx: &Ctx<'_>,
    system: &mut System,
    label: &str,
    tenants: &[Tenant],
    workers: usize,
    sat_rate: Option<f64>,
    half_rate: Option<f64>,
    (history_jobs, pending_jobs): (u64, u64),
) -> anyhow::Result<(GrowthRound, Option<(String, Vec<probe::Statement>)>)> {
    let plan = ctx.plan;
    let saturation = if let Some(rate) = sat_rate {
        let sat = ramp_saturation(
            system,
            ctx.client,
            ctx.db,
            tenants,
            workers,
            (rate, plan.ramp_runs),
            plan.saturation,
            ctx.drain_timeout,
        )
        .await?;
        say(format!(
            "growth ({label}): saturation with {workers} workers: {:.0} executed/s at {:.0}/s offered (best of {} runs from {rate:.0}/s)",
            sat.executed_rate,
            sat.offered_rate,
            sat.ramp.len()
        ));
        Some(sat)
    } else {
        None
    };
    let half = if let Some(rate) = half_rate {
        half_steps(ctx, system, tenants, rate, &format!("growth ({label})")).await?
    } else {
        None
    };
    let (drain, top) = if plan.growth_drain_tickets > 0 {
        let drained = run_drain(
            system,
            ctx.client,
            ctx.db,
            tenants,
            plan.growth_drain_tickets,
            plan.drain_workers,
            ctx.drain_timeout,
            ctx.stat_statements,
        )
        .await;
        system.stop_workers().await;
        let (d, top) = drained?;
        let top = top.map(|t| {
            (
                format!("drain with {} workers, growth ({label})", d.workers),
                t,
            )
        });
        (Some(d), top)
    } else {
        (None, None)
    };
    let history_jobs_left = if history_jobs > 0 {
        Some(history::history_jobs_left(ctx.db).await?)
    } else {
        None
    };
    Ok((
        GrowthRound {
            label: label.to_owned(),
            companies: tenants.len(),
            history_jobs,
            history_jobs_left,
            pending_jobs,
            saturation,
            half,
            drain,
        },
        top,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(name: &str, cpu_secs: f64, wall: f64, rss: f64, conns: usize) -> ProcUsage {
        ProcUsage {
            name: name.into(),
            cpu_secs,
            cores: cpu_secs / wall,
            peak_rss_mib: rss,
            lifetime_peak_rss_mib: rss,
            peak_db_connections: conns,
        }
    }

    #[test]
    fn windows_add_their_cpu_over_their_summed_time_and_keep_the_largest_peaks() {
        let one = [
            usage("api", 1.0, 1.0, 30.0, 4),
            usage("postgres", 0.5, 1.0, 0.0, 6),
        ];
        let two = [usage("api", 2.0, 3.0, 25.0, 7)];
        let merged = merge_usage(
            [
                (Duration::from_secs(1), one.as_slice()),
                (Duration::from_secs(3), two.as_slice()),
            ]
            .into_iter(),
        );
        let api = merged.iter().find(|u| u.name == "api").unwrap();
        assert!((api.cpu_secs - 3.0).abs() < 1e-9);
        assert!((api.cores - 0.75).abs() < 1e-9, "{}", api.cores);
        assert!((api.peak_rss_mib - 30.0).abs() < 1e-9);
        assert_eq!(api.peak_db_connections, 7);
        // A process seen in one window only counts over all of them.
        let postgres = merged.iter().find(|u| u.name == "postgres").unwrap();
        assert!((postgres.cores - 0.125).abs() < 1e-9, "{}", postgres.cores);
    }
}
