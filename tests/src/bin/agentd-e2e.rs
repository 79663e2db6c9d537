//! The `agentd` program, built inside this package so that its end-to-end
//! tests always run a binary built from the current source.

fn main() -> std::process::ExitCode {
    agentd_cli::main()
}
