fn main() -> std::process::ExitCode {
    agentd_node::cli::main()
}
