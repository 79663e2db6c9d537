fn main() -> std::process::ExitCode {
    agentd_cli::main()
}
