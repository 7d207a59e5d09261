//! `bench-harness`: see `bench-harness --help`. Errors print as `error: ...` and exit with
//! status 2; a panic prints one line, without a backtrace.

fn main() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error: {info}");
    }));
    // Stderr is not locked for the whole run: a panic on a worker thread prints through this
    // hook, which would wait forever on a lock the main thread holds while it waits for the
    // worker.
    let code = bench_harness::main_with(
        std::env::args_os(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr(),
    );
    std::process::exit(code);
}
