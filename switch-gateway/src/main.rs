fn main() -> std::process::ExitCode {
    switch_gateway::cli::main()
}
