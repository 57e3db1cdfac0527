use std::process::ExitCode;

fn main() -> ExitCode {
    netctl::cli::main()
}
