//! `streamjob`: one thin binary for every role. `run` is local mode (a StreamJob manifest run in this
//! process); `worker` runs one job attempt in a pod with the control API; `crd` prints the
//! CustomResourceDefinition; `operator` runs the StreamJob controller; `verify-sequence` checks the
//! committed output of a `sequence-check` run. `jobs`, `snapshots`, `savepoint`, `suspend`,
//! `resume` and `describe` operate jobs on a cluster (`streamjob-cli`); linked as
//! `kubectl-streamjob`, the binary is a kubectl plugin (`kubectl streamjob jobs`).

use anyhow::Context;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "streamjob",
    version,
    about = "Stateful streaming jobs with Flink-style fault tolerance on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the job of a StreamJob manifest locally: all subtasks in this process, checkpoints in a
    /// folder (or S3), automatic restarts; Ctrl-C stops with a savepoint.
    Run {
        /// StreamJob manifest (the same file you would `kubectl apply`).
        file: std::path::PathBuf,
        /// Snapshot storage (folder, file:// or s3:// URL); default: spec.storage.
        #[arg(long)]
        checkpoint_dir: Option<String>,
        /// Start from this snapshot folder instead of the latest checkpoint.
        #[arg(long)]
        from: Option<String>,
        /// Override spec.parallelism.
        #[arg(long)]
        parallelism: Option<u32>,
        /// Override a job parameter (repeatable): --set events=1000000
        #[arg(long = "set", value_parser = parse_key_value)]
        set: Vec<(String, String)>,
        /// Do not print the progress line.
        #[arg(long)]
        quiet: bool,
        /// Write the run's figures (records, run time without start-up, checkpoint durations and
        /// sizes) as JSON to this file when the job ends.
        #[arg(long)]
        stats_json: Option<std::path::PathBuf>,
    },
    /// Run one attempt of a job in a worker pod (the operator's entrypoint): records the attempt,
    /// restores the given snapshot, runs the job and serves the control API; exits 0 when the job
    /// finished or stopped with a savepoint, non-zero when the attempt failed.
    Worker {
        /// StreamJob manifest rendered by the operator.
        #[arg(long, env = "STREAMJOB_JOB_FILE")]
        job_file: std::path::PathBuf,
        /// Attempt number assigned by the operator (default: the next free one).
        #[arg(long, env = "STREAMJOB_ATTEMPT")]
        attempt: Option<u64>,
        /// `latest`, `none`, or a snapshot folder relative to the job's storage root.
        #[arg(long, env = "STREAMJOB_RESTORE", default_value = "latest")]
        restore: String,
        /// Control API address.
        #[arg(long, env = "STREAMJOB_LISTEN", default_value = "0.0.0.0:8080")]
        listen: std::net::SocketAddr,
        /// Snapshot storage override (folder or URL).
        #[arg(long, env = "STREAMJOB_CHECKPOINT_DIR")]
        checkpoint_dir: Option<String>,
        /// This worker's index among the job's workers (0 hosts the job coordinator).
        #[arg(long, env = "STREAMJOB_WORKER_INDEX", default_value_t = 0)]
        worker_index: u32,
        /// Number of workers of the job attempt (subtasks are split among them).
        #[arg(long, env = "STREAMJOB_WORKERS", default_value_t = 1)]
        workers: u32,
        /// Address of the exchange port (records and control between workers).
        #[arg(
            long,
            env = "STREAMJOB_EXCHANGE_LISTEN",
            default_value = "0.0.0.0:6124"
        )]
        exchange_listen: std::net::SocketAddr,
        /// `host:port` other workers use to reach this one (default: $POD_IP and the exchange port).
        #[arg(long, env = "STREAMJOB_EXCHANGE_ADVERTISE")]
        exchange_advertise: Option<String>,
        /// Worker 0's exchange address (`host:port`); required for workers 1..N.
        #[arg(long, env = "STREAMJOB_COORDINATOR")]
        coordinator: Option<String>,
        /// Seconds to wait for every worker of the attempt to join.
        #[arg(long, env = "STREAMJOB_FORM_TIMEOUT_SECONDS", default_value_t = 120)]
        form_timeout_seconds: u64,
    },
    /// Run the StreamJob controller (in a pod, or anywhere with a KUBECONFIG).
    Operator {
        /// Watch only this namespace (default: all namespaces).
        #[arg(long, env = "STREAMJOB_WATCH_NAMESPACE")]
        namespace: Option<String>,
        /// Address of /metrics, /healthz and /readyz.
        #[arg(long, env = "STREAMJOB_HTTP_ADDR", default_value = "0.0.0.0:8081")]
        http_addr: std::net::SocketAddr,
        /// Elect a leader with a Lease (required when running more than one replica).
        #[arg(long, env = "STREAMJOB_LEADER_ELECTION")]
        leader_election: bool,
        /// Namespace of the leader Lease (default: the watched namespace, else POD_NAMESPACE, else default).
        #[arg(long, env = "STREAMJOB_LEASE_NAMESPACE")]
        lease_namespace: Option<String>,
        /// Name of the leader Lease.
        #[arg(long, default_value = "streamjob-operator")]
        lease_name: String,
        /// Longest wait for a stop-with-savepoint before an upgrade or suspend falls back to the latest checkpoint.
        #[arg(long, default_value = "5m", value_parser = parse_duration_arg)]
        savepoint_timeout: std::time::Duration,
        /// Longest an upgraded spec may take to reach Running before it is rolled back to the last
        /// stable spec (0 disables rollback).
        #[arg(long, default_value = "5m", value_parser = parse_duration_arg)]
        rollback_timeout: std::time::Duration,
        /// Longest a deletion waits for its final savepoint and for the pods to stop.
        #[arg(long, default_value = "2m", value_parser = parse_duration_arg)]
        delete_timeout: std::time::Duration,
    },
    /// List StreamJobs: phase, parallelism, workers, attempt, last checkpoint, restarts, age.
    Jobs {
        /// List the jobs of every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[command(flatten)]
        target: Target,
    },
    /// A job's checkpoints and savepoints, from its status and from storage, each verified;
    /// `*` marks the one a restore would use. S3 keys come from AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY (else the job's credentials Secret, if readable).
    Snapshots {
        /// StreamJob name.
        name: String,
        /// Also download every file of every complete snapshot and check its CRC-32C.
        #[arg(long)]
        deep: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Take a savepoint now (bumps spec.savepointTriggerNonce).
    Savepoint {
        /// StreamJob name.
        name: String,
        #[command(flatten)]
        wait: Wait,
        #[command(flatten)]
        target: Target,
    },
    /// Stop a job with a savepoint and remove its pods (spec.state: suspended).
    Suspend {
        /// StreamJob name.
        name: String,
        #[command(flatten)]
        wait: Wait,
        #[command(flatten)]
        target: Target,
    },
    /// Run a suspended job again from its savepoint (spec.state: running).
    Resume {
        /// StreamJob name.
        name: String,
        #[command(flatten)]
        wait: Wait,
        #[command(flatten)]
        target: Target,
    },
    /// Phase, conditions, attempt, snapshots, savepoint history, pending change, last failure and
    /// recent Warning events of a job.
    Describe {
        /// StreamJob name.
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Print the StreamJob CustomResourceDefinition as YAML (`crds/streamjob.yaml` is this output).
    Crd,
    /// Check the committed output of a `sequence-check` run: expected, committed, lost, duplicated,
    /// out of order per key, count mismatches. Exits 0 only when the output is exact.
    VerifySequence {
        /// The job's output folder (its `output` parameter).
        #[arg(long)]
        output: std::path::PathBuf,
        /// The job's `keys` parameter.
        #[arg(long)]
        keys: u64,
        /// The job's `events` parameter.
        #[arg(long)]
        events: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

impl Command {
    /// The operator-facing commands (`streamjob-cli`), which talk to a cluster as a user.
    fn operates_a_cluster(&self) -> bool {
        matches!(
            self,
            Command::Jobs { .. }
                | Command::Snapshots { .. }
                | Command::Savepoint { .. }
                | Command::Suspend { .. }
                | Command::Resume { .. }
                | Command::Describe { .. }
        )
    }
}

/// Where the operator-facing commands look (the cluster is the kubeconfig's current context).
#[derive(Args)]
struct Target {
    /// Namespace of the job (default: the kubeconfig context's namespace).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
}

/// `--wait` and `--timeout` of the commands that change a job.
#[derive(Args)]
struct Wait {
    /// Wait until the operator has done it, printing progress; exit non-zero on failure or timeout.
    #[arg(long)]
    wait: bool,
    /// Longest wait.
    #[arg(long, default_value = "5m", value_parser = parse_duration_arg)]
    timeout: std::time::Duration,
}

/// The name to show in help and usage: `kubectl streamjob` when run as the kubectl plugin.
fn display_name(argv0: Option<&std::ffi::OsStr>) -> &'static str {
    let file = argv0
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .and_then(|f| f.to_str());
    match file {
        Some("kubectl-streamjob") => "kubectl streamjob",
        _ => "streamjob",
    }
}

fn run_cli_command(cmd: streamjob_cli::Cmd, target: Target) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    if let Err(e) = runtime.block_on(streamjob_cli::commands::run(cmd, target.namespace)) {
        // A storage error was already reported under the snapshot list.
        if !matches!(e, streamjob_cli::CliError::Storage { .. }) {
            eprintln!("error: {e}");
        }
        std::process::exit(1);
    }
    Ok(())
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    streamjob_api::duration::parse_duration(s).map_err(|e| e.to_string())
}

fn main() -> anyhow::Result<()> {
    let argv0 = std::env::args_os().next();
    let matches = Cli::command()
        .bin_name(display_name(argv0.as_deref()))
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // kube and aws-sdk-s3 both link rustls; pick one crypto provider for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The operator-facing commands report errors themselves; their clients' logs only on request.
    let default_log = if cli.command.operates_a_cluster() {
        "off"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STREAMJOB_LOG")
                .unwrap_or_else(|_| default_log.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Run {
            file,
            checkpoint_dir,
            from,
            parallelism,
            set,
            quiet,
            stats_json,
        } => {
            let options = streamjob_worker::local::LocalOptions {
                manifest: file,
                checkpoint_dir,
                from,
                parallelism,
                set,
                progress: !quiet,
            };
            let job = streamjob_worker::local::prepare(&options)?;
            let (outcome, stats) = streamjob_worker::local::run_with_stats(job, !quiet)?;
            if let Some(path) = stats_json {
                let text = serde_json::to_string_pretty(&stats)?;
                std::fs::write(&path, text + "\n").map_err(|e| {
                    anyhow::anyhow!("cannot write the run figures to {}: {e}", path.display())
                })?;
            }
            match outcome {
                streamjob_engine::runner::RunOutcome::Finished { attempts, restarts } => {
                    eprintln!(
                        "streamjob: job finished (attempts: {attempts}, restarts: {restarts})"
                    );
                }
                streamjob_engine::runner::RunOutcome::Stopped { savepoint, .. } => {
                    eprintln!("streamjob: stopped with savepoint {}", savepoint.location);
                    println!("{}", savepoint.location);
                }
                streamjob_engine::runner::RunOutcome::Cancelled { .. } => {
                    eprintln!("streamjob: cancelled");
                    std::process::exit(130);
                }
            }
        }
        Command::Worker {
            job_file,
            attempt,
            restore,
            listen,
            checkpoint_dir,
            worker_index,
            workers,
            exchange_listen,
            exchange_advertise,
            coordinator,
            form_timeout_seconds,
        } => {
            let cluster = (workers > 1).then(|| {
                let advertise = exchange_advertise.unwrap_or_else(|| {
                    let host = std::env::var("POD_IP")
                        .ok()
                        .filter(|ip| !ip.is_empty())
                        .unwrap_or_else(|| exchange_listen.ip().to_string());
                    format!("{host}:{}", exchange_listen.port())
                });
                streamjob_worker::worker_mode::ClusterOptions {
                    worker: worker_index,
                    workers,
                    listen: exchange_listen,
                    advertise,
                    coordinator,
                    form_timeout: std::time::Duration::from_secs(form_timeout_seconds),
                }
            });
            let options = streamjob_worker::worker_mode::WorkerOptions {
                job: streamjob_worker::local::LocalOptions {
                    manifest: job_file,
                    checkpoint_dir,
                    ..Default::default()
                },
                attempt,
                restore,
                listen,
                token: std::env::var("STREAMJOB_CONTROL_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty()),
                cluster,
            };
            match streamjob_worker::worker_mode::run_worker(options)? {
                streamjob_worker::worker_mode::WorkerExit::Done => {}
                streamjob_worker::worker_mode::WorkerExit::Terminated => std::process::exit(143),
            }
        }
        Command::Operator {
            namespace,
            http_addr,
            leader_election,
            lease_namespace,
            lease_name,
            savepoint_timeout,
            rollback_timeout,
            delete_timeout,
        } => {
            let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
                format!(
                    "{}-{}",
                    std::env::var("HOSTNAME").unwrap_or_else(|_| "operator".into()),
                    std::process::id()
                )
            });
            let lease_namespace = lease_namespace
                .or_else(|| namespace.clone())
                .or_else(|| std::env::var("POD_NAMESPACE").ok())
                .unwrap_or_else(|| "default".into());
            let options = streamjob_operator::run::OperatorOptions {
                namespace,
                http_addr,
                leader_election,
                lease_namespace,
                lease_name,
                identity,
                limits: streamjob_operator::decide::Limits {
                    savepoint: savepoint_timeout,
                    delete: delete_timeout,
                    rollback: (!rollback_timeout.is_zero()).then_some(rollback_timeout),
                    ..Default::default()
                },
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("failed to start the async runtime")?;
            runtime.block_on(streamjob_operator::run::run(options))?;
        }
        Command::VerifySequence {
            output,
            keys,
            events,
            json,
        } => {
            let report = streamjob_worker::verify::verify_sequence(&output, keys, events)?;
            if json {
                println!("{}", report.to_json());
            } else {
                println!("{report}");
            }
            if !report.is_exact() {
                std::process::exit(1);
            }
        }
        Command::Jobs {
            all_namespaces,
            target,
        } => run_cli_command(streamjob_cli::Cmd::Jobs { all_namespaces }, target)?,
        Command::Snapshots { name, deep, target } => {
            run_cli_command(streamjob_cli::Cmd::Snapshots { name, deep }, target)?
        }
        Command::Savepoint { name, wait, target } => run_cli_command(
            streamjob_cli::Cmd::Savepoint {
                name,
                wait: wait.wait,
                timeout: wait.timeout,
            },
            target,
        )?,
        Command::Suspend { name, wait, target } => run_cli_command(
            streamjob_cli::Cmd::SetState {
                name,
                suspend: true,
                wait: wait.wait,
                timeout: wait.timeout,
            },
            target,
        )?,
        Command::Resume { name, wait, target } => run_cli_command(
            streamjob_cli::Cmd::SetState {
                name,
                suspend: false,
                wait: wait.wait,
                timeout: wait.timeout,
            },
            target,
        )?,
        Command::Describe { name, target } => {
            run_cli_command(streamjob_cli::Cmd::Describe { name }, target)?
        }
        Command::Crd => {
            let yaml = serde_yaml::to_string(&streamjob_api::v1alpha1::crd())
                .context("failed to render the StreamJob CRD as YAML")?;
            print!("{yaml}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubectl_streamjob_link_is_the_kubectl_plugin() {
        let name = |s: &str| display_name(Some(std::ffi::OsStr::new(s)));
        assert_eq!(
            name("/home/u/.local/bin/kubectl-streamjob"),
            "kubectl streamjob"
        );
        assert_eq!(name("kubectl-streamjob"), "kubectl streamjob");
        assert_eq!(name("/usr/bin/streamjob"), "streamjob");
        assert_eq!(display_name(None), "streamjob");
    }

    #[test]
    fn operator_commands_parse_namespace_wait_and_timeout() {
        let cli = Cli::try_parse_from([
            "kubectl-streamjob",
            "savepoint",
            "wc",
            "-n",
            "prod",
            "--wait",
            "--timeout",
            "90s",
        ])
        .unwrap();
        let Command::Savepoint { name, wait, target } = cli.command else {
            panic!("not savepoint");
        };
        assert_eq!(name, "wc");
        assert_eq!(target.namespace.as_deref(), Some("prod"));
        assert!(wait.wait);
        assert_eq!(wait.timeout, std::time::Duration::from_secs(90));
        let cli = Cli::try_parse_from(["streamjob", "jobs", "-A"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Jobs {
                all_namespaces: true,
                ..
            }
        ));
    }
}
