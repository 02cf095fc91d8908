fn main() -> std::process::ExitCode {
    floatlm::cli::main()
}
