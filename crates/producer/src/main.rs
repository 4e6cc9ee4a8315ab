//! `courier-producer`: publish one event, a realistic demo stream, or a load
//! test into courier's events exchange, each accepted only once RabbitMQ has
//! confirmed it.
//!
//! This file only parses the command line and maps failures to exit codes;
//! the work lives in `cli/` on top of the library's [`Publisher`].
//! stdout carries results (event ids, demo lines, the load summary) so that
//! scripts can read it; logs and errors go to stderr.
//!
//! [`Publisher`]: courier_producer::Publisher

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::cli::Broker;

#[derive(Debug, Parser)]
#[command(
    name = "courier-producer",
    version,
    about = "Publish courier events to RabbitMQ with publisher confirms",
    long_about = "Publish courier events to RabbitMQ with publisher confirms.\n\n\
        An event counts as published only once the broker has confirmed it. \
        Results go to stdout, errors and logs (RUST_LOG, default warn) to stderr.\n\
        Exit codes: 0 success, 1 broker problem, 2 bad input."
)]
struct Cli {
    #[command(flatten)]
    broker: Broker,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish one event and print its id once the broker has confirmed it.
    Publish(cli::publish::PublishArgs),
    /// Publish a realistic stream of order and shipment events until Ctrl-C.
    Demo(cli::demo::DemoArgs),
    /// Publish N synthetic events as fast as allowed and print a JSON summary.
    Load(cli::load::LoadArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();

    let outcome = match &cli.command {
        Command::Publish(args) => cli::publish::run(&cli.broker, args).await,
        Command::Demo(args) => cli::demo::run(&cli.broker, args).await,
        Command::Load(args) => cli::load::run(&cli.broker, args).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {:#}", failure.error());
            ExitCode::from(failure.exit_code())
        }
    }
}

/// Logs go to stderr so stdout stays machine-readable.
fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
