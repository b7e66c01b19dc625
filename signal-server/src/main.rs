fn main() -> std::process::ExitCode {
    signal_server::cli::main()
}
