use clap::Parser;

fn main() {
    let cli = skyroute_cli::cli::Cli::parse();
    std::process::exit(skyroute_cli::cli::run(cli));
}
