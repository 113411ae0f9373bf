//! The `api` binary: `serve` (default), `migrate`, `openapi`.

use std::{process::ExitCode, sync::Arc};

use anyhow::Context;
use clap::{Parser, Subcommand};
use metrics_exporter_prometheus::PrometheusBuilder;
use shared::config::Config;

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
    let pool = shared::db::connect_lazy(
        config.database_url.expose(),
        config.database_max_connections,
    )?;
    shared::db::migrate(&pool)
        .await
        .context("cannot prepare the database")?;
    let metrics = PrometheusBuilder::new()
        .set_buckets(&shared::telemetry::LATENCY_BUCKETS)
        .context("metrics buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
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
