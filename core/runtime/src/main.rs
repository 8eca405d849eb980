use clap::Parser;

fn main() {
    let cli = skyroute::cli::Cli::parse();
    std::process::exit(skyroute::cli::run(cli));
}
