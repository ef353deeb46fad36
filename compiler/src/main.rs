//! The `nibble` binary: everything lives in `nibble_compiler::cli`.

fn main() {
    let code = nibble_compiler::cli::run(
        std::env::args_os(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    );
    std::process::exit(code);
}
