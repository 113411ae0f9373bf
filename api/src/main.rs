//! The `api` binary: `serve` (default), `migrate`, `openapi`.

use std::{process::ExitCode, sync::Arc};

use anyhow::Context;
use clap::{Parser, Subcommand};
use shared::config::Config;

/// jemalloc, built so that a background thread returns the pages frees leave
/// unused to the system within about a second (`.cargo/config.toml`).
/// glibc's heap kept what a burst of requests and connections had used:
/// after a sweep to 1,200 requests/s and 45 s at rest the api held 34–37 MiB
/// with glibc and 23–24 MiB with this (BENCHMARKS.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "api", version, about = "TxDx REST API")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Apply the queue's and our migrations, then exit.
    Migrate,
    /// Print the OpenAPI document as YAML.
    Openapi,
    /// Create a platform operator for the queue board (or reset its
    /// password). The password is prompted for on a terminal, or read as
    /// one line from standard input; never taken from the command line.
    CreateOperator {
        /// The operator's username.
        #[arg(long)]
        username: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Openapi) = cli.command {
        return match txdx_api::openapi::render_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("api: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("api: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    shared::telemetry::init(&config.log_filter, config.log_format);
    let result = match cli.command {
        Some(Command::Migrate) => migrate(&config).await,
        Some(Command::CreateOperator { username }) => create_operator(&config, &username).await,
        _ => serve(config).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("api: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    let pool = shared::db::connect_lazy(config.database_url.expose(), 2)?;
    shared::db::migrate(&pool).await?;
    tracing::info!("migrations applied");
    Ok(())
}

async fn create_operator(config: &Config, username: &str) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let username = username.trim().to_lowercase();
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("Password for operator {username}: "))?;
        let again = rpassword::prompt_password("Repeat it: ")?;
        anyhow::ensure!(first == again, "the passwords differ");
        first
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    shared::auth::password::check_policy(&password, &username)
        .map_err(|e| anyhow::anyhow!("password: {e}"))?;
    let hash =
        tokio::task::spawn_blocking(move || shared::auth::password::hash_password(&password))
            .await?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    let pool = shared::db::connect_lazy(config.database_url.expose(), 2)?;
    shared::db::migrate(&pool).await?;
    let created = shared::db::operators::upsert_operator(&pool, &username, &hash).await?;
    println!(
        "operator {username} {}; sign in at /board",
        if created { "created" } else { "password reset" }
    );
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // One more connection than the requests may use: the token checks'
    // listener holds one for the process's life.
    let pool = shared::db::connect_lazy(
        config.database_url.expose(),
        config.database_max_connections.saturating_add(1),
    )?;
    shared::db::migrate(&pool)
        .await
        .context("cannot prepare the database")?;
    let metrics =
        shared::telemetry::install_metrics().context("cannot install the metrics recorder")?;
    let secrets = shared::secrets::from_config(&config, &pool).context("secret store")?;
    match secrets.check().await {
        Ok(()) => tracing::info!("secrets: {}", secrets.describe()),
        Err(e) => anyhow::bail!("secret store does not answer: {e}"),
    }
    let listener = tokio::net::TcpListener::bind(config.api_addr)
        .await
        .with_context(|| format!("cannot listen on API_ADDR={}", config.api_addr))?;
    tracing::info!("api listening on http://{}", config.api_addr);
    let keep_alive = config.api_keep_alive_timeout;
    let state = txdx_api::state::AppState::new(pool, Arc::new(config), secrets, metrics);
    txdx_api::serve::serve(
        listener,
        txdx_api::build_app(state),
        keep_alive,
        shutdown_signal(),
    )
    .await;
    tracing::info!("api stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = terminate => {} }
}

#[cfg(all(test, target_os = "linux", not(target_env = "msvc")))]
mod tests {
    /// Held by each test that measures the process's resident memory, so
    /// that no other test of this binary allocates meanwhile.
    static MEASURING_MEMORY: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// This process's resident memory (`VmRSS`), in KiB.
    fn resident_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Two million request timings recorded and never scraped, about what
    /// the api serves in a full benchmark run, in rounds as a process under
    /// load records them. The recorder holds each sample until an upkeep
    /// folds it into its histogram's buckets; the upkeep task started with
    /// the recorder does that without a scrape, so the memory held stays that
    /// of a round or two (2 MiB). Without the task it grew by about 38 MiB and
    /// was held for the process's life.
    #[test]
    fn histogram_samples_nobody_scrapes_are_folded_by_the_upkeep_so_memory_stays_bounded() {
        let _measuring = MEASURING_MEMORY
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let upkeep_every = std::time::Duration::from_millis(50);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let recorder = {
            let _inside = runtime.enter();
            shared::telemetry::metrics_recorder(upkeep_every).expect("recorder")
        };
        runtime.block_on(record_two_million_samples_in_rounds(&recorder));
    }

    async fn record_two_million_samples_in_rounds(
        recorder: &metrics_exporter_prometheus::PrometheusRecorder,
    ) {
        use metrics::Recorder;
        const ROUNDS: u32 = 20;
        const SAMPLES_PER_ROUND: u32 = 100_000;
        let histogram = recorder.register_histogram(
            &metrics::Key::from_name("txdx_test_request_seconds"),
            &metrics::Metadata::new(module_path!(), metrics::Level::INFO, None),
        );
        let before = resident_kib();
        let mut peak = before;
        for _ in 0..ROUNDS {
            // No await inside a round: on this one-thread runtime the upkeep
            // runs only between rounds.
            for i in 0..SAMPLES_PER_ROUND {
                histogram.record(f64::from(i % 1000) / 1e4);
            }
            peak = peak.max(resident_kib());
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(
            peak < before + 12 * 1024,
            "{} samples recorded, resident {before} KiB before, {peak} KiB at most",
            ROUNDS * SAMPLES_PER_ROUND
        );
        let rendered = recorder.handle().render();
        assert!(
            rendered.contains(&format!(
                "txdx_test_request_seconds_count {}",
                ROUNDS * SAMPLES_PER_ROUND
            )),
            "every sample is in the histogram: {rendered}"
        );
    }

    /// 64 MiB of 16 KiB buffers, then all freed but one in 16: the holes go
    /// back to the system within seconds. glibc's heap keeps holes that are
    /// not at its top, and jemalloc with its default 10 s decay, or without
    /// the background thread, still held all of them after 5 s.
    #[test]
    fn pages_left_unused_by_frees_go_back_to_the_system_within_seconds() {
        let _measuring = MEASURING_MEMORY
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        const BUFFER: usize = 16 * 1024;
        const BUFFERS: usize = 4096;
        let before = resident_kib();
        let buffers: Vec<Vec<u8>> = (0..BUFFERS).map(|_| vec![1u8; BUFFER]).collect();
        let used = resident_kib();
        assert!(
            used >= before + 60 * 1024,
            "64 MiB written, resident {before} -> {used} KiB"
        );

        let kept: Vec<Vec<u8>> = buffers.into_iter().step_by(16).collect();
        assert_eq!(kept.len(), BUFFERS / 16);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut after = resident_kib();
        while after >= before + 16 * 1024 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
            after = resident_kib();
        }
        assert!(
            after < before + 16 * 1024,
            "4 MiB kept of 64, resident {before} -> {used} -> {after} KiB after 5 s"
        );
    }
}
