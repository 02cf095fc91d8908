//! `floatlm serve`: start-up, the demo setup, and signals.

use std::process::ExitCode;
use std::sync::Arc;

use super::ServeArgs;
use crate::app::{write_private_file, App};
use crate::config::{Config, LogFormat};
use crate::domain::license::{FeatureDef, LicenseDef, VendorSigningKey};

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when the future is first polled: call it before the
/// listening line, or a SIGTERM sent right after that line kills the
/// process without a clean stop.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let (mut term, mut int) = match (term, int) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM and SIGINT");
                return std::future::pending().await;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

/// Creates the demo vendor key, license and identity once.
async fn demo_setup(app: &App) -> anyhow::Result<()> {
    let dir = app.config().data_dir.join("demo");
    let key_path = dir.join("vendor.key");
    let key = if key_path.exists() {
        VendorSigningKey::parse(&std::fs::read_to_string(&key_path)?).map_err(anyhow::Error::msg)?
    } else {
        let k = VendorSigningKey::generate();
        write_private_file(&key_path, &k.to_text())?;
        std::fs::write(dir.join("vendor.pub"), k.public().to_text())?;
        k
    };
    app.licenses().trust_vendor_key(key.public());
    // The start-up integrity check ran before the demo key was trusted: run
    // it again now, or the demo license stays refused until the next one.
    app.licenses().verify_integrity().await?;
    let ident_path = app.config().data_dir.join("demo-identity.txt");
    if ident_path.exists() {
        println!(
            "floatlm: demo mode: using the existing demo license and {}",
            ident_path.display()
        );
        return Ok(());
    }
    let def = LicenseDef {
        license_id: "DEMO".into(),
        serial: 1,
        customer: "DEMO LICENSE - not for production".into(),
        features: vec![FeatureDef {
            name: "demo".into(),
            seats: 5,
            version: None,
            not_before: None,
            expires: None,
        }],
    };
    app.licenses().apply_license(&key.sign(&def)?).await?;
    let (_, ident) = app.access().create_identity("demo", None).await?;
    write_private_file(&ident_path, &format!("{}\n", ident.reveal()))?;
    println!(
        "floatlm: DEMO MODE: created a demo vendor key in {}, applied demo license DEMO (feature 'demo', 5 seats) \
         and wrote the demo identity string to {}",
        dir.display(),
        ident_path.display()
    );
    Ok(())
}

pub async fn run(args: ServeArgs) -> ExitCode {
    let cfg = match args.flags.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("floatlm: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&cfg);
    // Bind first: a taken port fails fast, and port 0 resolves to a real port
    // before identity strings are written.
    let bind = |addr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))
    };
    let (licensing, admin) = match (bind(cfg.listen).await, bind(cfg.admin_listen).await) {
        (Ok(l), Ok(a)) => (l, a),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("floatlm: {e} (choose another with --listen / --admin-listen)");
            return ExitCode::FAILURE;
        }
    };
    let mut cfg = cfg;
    if !cfg.sources.contains_key("public_address") {
        if let Ok(bound) = licensing.local_addr() {
            cfg.public_address = bound.to_string();
            if bound.ip().is_unspecified() {
                tracing::warn!(
                    "listening on {bound}: set public_address to the HOST:PORT clients use, or identity strings will name {bound}"
                );
            }
        }
    }
    let fresh = !cfg.data_dir.exists();
    let app = match App::start(cfg).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("floatlm: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    if fresh {
        println!(
            "floatlm: created data directory {}",
            app.config().data_dir.display()
        );
    }
    if args.demo {
        if let Err(e) = demo_setup(&app).await {
            eprintln!("floatlm: demo setup failed: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    let (lic_addr, adm_addr) = (
        licensing
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        admin
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
    );
    let stop = shutdown_signal();
    // One stable line that scripts and tests read for the bound ports.
    println!(
        "floatlm: instance {} listening licensing={lic_addr} admin={adm_addr} backend={:?}",
        app.instance_id(),
        app.backend()
    );
    tracing::info!(instance = %app.instance_id(), licensing = %lic_addr, admin = %adm_addr, "serving");
    match crate::http::serve(Arc::clone(&app), licensing, admin, stop).await {
        Ok(()) => {
            tracing::info!("stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("floatlm: server error: {e}");
            ExitCode::FAILURE
        }
    }
}
