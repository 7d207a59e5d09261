//! `bench-harness`: see `bench-harness --help`. Errors print as `error: ...` and exit with
//! status 2; a panic prints one line, without a backtrace.

fn main() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error: {info}");
    }));
    let code = bench_harness::main_with(
        std::env::args_os(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    std::process::exit(code);
}
