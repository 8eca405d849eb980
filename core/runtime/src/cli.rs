//! The `skyroute` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use rand_core::OsRng;
use skyroute_proto::SecretKey;

use crate::keyfile;
use crate::sim::scenario;

#[derive(Parser, Debug)]
#[command(name = "skyroute", version, about = "Multi-route mesh connectivity (Skywire meshnet design).")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Runs the demo (also what `skyroute` with no command does).
    Demo,
    /// Creates a node identity (secp256k1 key), or shows an existing one with --show.
    Keygen {
        /// Where to write the secret key [default: <data dir>/identity.key].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Data directory [default: ~/.local/share/skyroute].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Overwrite an existing key file.
        #[arg(long)]
        force: bool,
        /// Print the public key and address of an existing key file instead.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["out", "force"])]
        show: Option<PathBuf>,
    },
    /// Runs a node on real sockets (UDP), with its identity and control socket in the data dir.
    Node {
        /// Data directory [default: ~/.local/share/skyroute].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Configuration file (TOML): listen address, static peers, buffer sizes.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Shows a running node's identity, links and routes (over its control socket).
    Status {
        /// Data directory [default: ~/.local/share/skyroute].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// A UDP proxy that loses, delays, reorders and cuts datagrams (seeded), for tests on real
    /// sockets where `tc netem` is not available.
    Impair {
        /// Address to listen on (clients send here).
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Address to forward to.
        #[arg(long)]
        forward: std::net::SocketAddr,
        /// Loss probability (0..1).
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Delay added to every datagram, in ms.
        #[arg(long, default_value_t = 0)]
        delay: u64,
        /// Extra random delay up to this, in ms.
        #[arg(long, default_value_t = 0)]
        jitter: u64,
        /// Probability that a datagram is held back so later ones overtake it.
        #[arg(long, default_value_t = 0.0)]
        reorder: f64,
        /// Take the link down every this many seconds...
        #[arg(long, default_value_t = 0.0)]
        down_every: f64,
        /// ...for this many seconds.
        #[arg(long, default_value_t = 0.0)]
        down_for: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Runs a simulated network scenario (deterministic, virtual time).
    Sim {
        scenario: Scenario,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Loss probability of every link (eight-hop-loss).
        #[arg(long, default_value_t = 0.5)]
        loss: f64,
        /// Bytes to transfer [default: per scenario].
        #[arg(long)]
        bytes: Option<usize>,
        /// Simulated seconds (moving-car) [default: 300].
        #[arg(long)]
        duration: Option<f64>,
        /// Draw deadline-met and goodput over time per strategy to this PNG (moving-car).
        #[arg(long, value_name = "FILE.png")]
        plot: Option<PathBuf>,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Scenario {
    /// 9 nodes in a line; a route telescoped over 8 hops carries 1 MiB.
    EightHop,
    /// 9 nodes in a line, every link losing --loss (0.5); 10 MiB with per-hop retransmission,
    /// against an end-to-end-only baseline.
    EightHopLoss,
    /// A bulk transfer and a realtime flow on one route: realtime latency with two service
    /// classes against one FIFO class.
    Qos,
    /// A car passes WiFi nodes while LTE flaps: one session (voice + bulk download) under
    /// skyroute's coded multi-route strategy and three baselines.
    MovingCar,
}

/// Runs the CLI; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    match cli.command.unwrap_or(Command::Demo) {
        Command::Demo => {
            println!("skyroute demo: 9 simulated nodes, a route telescoped over 8 encrypted hops, 1 MiB through it.\n");
            let r = scenario::eight_hop(1, 1 << 20);
            print!("{}", r.table());
            exit_for(r.intact)
        }
        Command::Keygen { show: Some(path), .. } => match keyfile::read(&path) {
            Ok(key) => {
                print_identity(&key);
                0
            }
            Err(e) => fail(e),
        },
        Command::Keygen { out, data_dir, force, show: None } => {
            let path = out.unwrap_or_else(|| data_dir.unwrap_or_else(keyfile::default_data_dir).join("identity.key"));
            let key = SecretKey::generate(&mut OsRng);
            match keyfile::write(&path, &key, force) {
                Ok(()) => {
                    println!("wrote {}", path.display());
                    print_identity(&key);
                    0
                }
                Err(e) => fail(e),
            }
        }
        Command::Node { data_dir, config } => {
            crate::daemon::run(data_dir.unwrap_or_else(keyfile::default_data_dir), config)
        }
        Command::Status { data_dir, json } => {
            match crate::daemon::status(&data_dir.unwrap_or_else(keyfile::default_data_dir)) {
                Ok(s) => {
                    if json {
                        print!("{}", to_json(&s));
                    } else {
                        print!("{}", s.table());
                    }
                    0
                }
                Err(e) => fail(e),
            }
        }
        Command::Impair { listen, forward, loss, delay, jitter, reorder, down_every, down_for, seed } => {
            if !(0.0..=1.0).contains(&loss) || !(0.0..=1.0).contains(&reorder) {
                return fail("--loss and --reorder must be in [0, 1]");
            }
            if down_every < 0.0 || down_for < 0.0 || down_for > down_every {
                return fail("--down-for must be between 0 and --down-every");
            }
            let imp = crate::impair::Impairment {
                loss,
                delay: std::time::Duration::from_millis(delay),
                jitter: std::time::Duration::from_millis(jitter),
                reorder,
                down_every: std::time::Duration::from_secs_f64(down_every),
                down_for: std::time::Duration::from_secs_f64(down_for),
                seed,
            };
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return fail(e),
            };
            rt.block_on(async {
                let socket = match tokio::net::UdpSocket::bind(listen).await {
                    Ok(s) => s,
                    Err(e) => return fail(format!("{listen}: {e}")),
                };
                eprintln!("skyroute impair: {listen} <-> {forward} {imp:?}");
                let stop = async {
                    let _ = tokio::signal::ctrl_c().await;
                };
                match crate::impair::run(socket, forward, imp, stop).await {
                    Ok(s) => {
                        eprintln!("skyroute impair: {s:?}");
                        0
                    }
                    Err(e) => fail(e),
                }
            })
        }
        Command::Sim { scenario, seed, json, loss, bytes, duration, plot } => {
            let (out, ok) = match scenario {
                Scenario::EightHop => {
                    let r = scenario::eight_hop(seed, bytes.unwrap_or(1 << 20));
                    (if json { to_json(&r) } else { r.table() }, r.intact)
                }
                Scenario::EightHopLoss => {
                    if !(0.0..1.0).contains(&loss) {
                        return fail(format!("--loss must be in [0, 1), got {loss}"));
                    }
                    let r = scenario::eight_hop_loss(seed, loss, bytes.unwrap_or(10 << 20), 60);
                    (if json { to_json(&r) } else { r.table() }, r.intact)
                }
                Scenario::Qos => {
                    let r = scenario::qos(seed, std::time::Duration::from_secs(20));
                    let ok = r.realtime_p99_latency_ms.is_finite() && r.bulk_goodput > 0.0;
                    (if json { to_json(&r) } else { r.table() }, ok)
                }
                Scenario::MovingCar => {
                    let secs = duration.unwrap_or(300.0);
                    if !(1.0..=86_400.0).contains(&secs) {
                        return fail(format!("--duration must be between 1 and 86400 seconds, got {secs}"));
                    }
                    let r = crate::sim::car::moving_car(
                        seed,
                        std::time::Duration::from_secs_f64(secs),
                        crate::progress::stage,
                    );
                    crate::progress::done();
                    if let Some(path) = &plot {
                        if let Err(e) = crate::sim::plot::moving_car(&r, path) {
                            return fail(format!("{}: {e}", path.display()));
                        }
                    }
                    let s = &r.strategies.skyroute;
                    (if json { to_json(&r) } else { r.table() }, s.frames_sent > 0)
                }
            };
            print!("{out}");
            exit_for(ok)
        }
    }
}

fn to_json(r: &impl serde::Serialize) -> String {
    serde_json::to_string(r).map(|s| s + "\n").unwrap_or_default()
}

fn print_identity(key: &SecretKey) {
    let pk = key.public_key();
    println!("public key: {pk}");
    println!("address:    {}", pk.address());
}

fn fail(e: impl std::fmt::Display) -> i32 {
    eprintln!("error: {e}");
    1
}

fn exit_for(ok: bool) -> i32 {
    if ok {
        0
    } else {
        1
    }
}
