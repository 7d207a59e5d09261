//! `bench-harness`: throughput sweeps of the `kernels` and `decode` crates, reported against
//! this machine's own measured roofs (FMA peak, read bandwidth) and against baselines
//! (matrixmultiply, straightforward softmax and attention, recompute-without-cache).
//!
//! The binary is a thin wrapper over [`main_with`]; tests drive [`parse`] and [`run`]
//! directly.

pub mod cli;
pub mod config;
pub mod error;
pub mod machine;
pub mod measure;
pub mod peak;
pub mod plot;
pub mod profile;
pub mod record;
pub mod report;
pub mod runner;
pub mod suites;
pub mod sweep;

use clap::Parser;
use cli::{Cli, Command, Format, ProfileArgs};
use config::{RunConfig, Suite};
pub use error::{HarnessError, Result};
pub use record::Record;
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

/// What the command line asks for.
#[derive(Debug, Clone)]
pub enum Invocation {
    /// Run suites.
    Run(Box<RunConfig>),
    /// Loop one configuration.
    Profile(Box<ProfileArgs>),
}

/// Parses and validates a command line (the first item is the program name).
pub fn parse<I, T>(args: I) -> Result<Invocation>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(args)?;
    match cli.command {
        None => Ok(Invocation::Run(Box::new(config::run_config(&cli.run)?))),
        Some(Command::Run(a)) => Ok(Invocation::Run(Box::new(config::run_config(&a)?))),
        Some(Command::Profile(p)) => {
            profile::validate(&p)?;
            Ok(Invocation::Profile(Box::new(p)))
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// Every record, header first.
    pub records: Vec<Record>,
    /// The report in the requested format.
    pub report: String,
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Things the user should know (printed to stderr by [`main_with`]).
    pub warnings: Vec<String>,
}

/// Checks every configuration's memory estimate against the available memory.
pub fn check_memory(cfg: &RunConfig) -> Result<()> {
    let avail = machine::mem_available();
    if cfg.peak {
        for (what, bytes) in suites::peak::estimates(cfg) {
            machine::check_fits(&what, bytes, avail)?;
        }
    }
    for &suite in &cfg.suites {
        for (what, bytes) in suites::estimates(suite, cfg) {
            machine::check_fits(&what, bytes, avail)?;
        }
    }
    Ok(())
}

/// Fails before anything runs when an output could not be written at the end: the results
/// directory cannot be created, or the folder of `--out` or `--plot` does not exist. (Whether
/// the file itself is writable is only known by writing it, which would clobber it early.)
pub fn check_outputs(cfg: &RunConfig) -> Result<()> {
    if let Some(dir) = &cfg.results_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| HarnessError::msg(format!("cannot create {}: {e}", dir.display())))?;
    }
    for (flag, path) in [("--out", &cfg.out), ("--plot", &cfg.plot)] {
        let Some(path) = path else { continue };
        if path.is_dir() {
            return Err(HarnessError::msg(format!(
                "{flag} {}: is a directory",
                path.display()
            )));
        }
        let folder = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        if !folder.is_dir() {
            return Err(HarnessError::msg(format!(
                "{flag} {}: no such directory {}",
                path.display(),
                folder.display()
            )));
        }
    }
    Ok(())
}

/// Runs the configured suites: memory check, header, roofs, suites; then writes the report,
/// plot and saved results.
pub fn run(cfg: &RunConfig) -> Result<RunOutput> {
    check_memory(cfg)?;
    check_outputs(cfg)?;
    let isa = cfg
        .isas
        .iter()
        .copied()
        .max()
        .unwrap_or(kernels::Isa::detected());
    let isa_names: Vec<String> = cfg.isas.iter().map(|i| i.name().to_string()).collect();
    let mut records = vec![record::header_record(isa.name(), &cfg.threads, &isa_names)];
    let mut total: u64 = cfg.suites.iter().map(|&s| suites::count(s, cfg)).sum();
    if cfg.peak {
        total += suites::peak::count(cfg);
    }
    let mut ctx = runner::Ctx::new(cfg, total);
    let result = (|| -> Result<()> {
        if cfg.peak {
            records.extend(suites::peak::run(&mut ctx)?);
        }
        for &suite in &cfg.suites {
            let recs = match suite {
                Suite::Peak => Vec::new(),
                Suite::Matmul => suites::matmul::run(&mut ctx)?,
                Suite::Softmax => suites::softmax::run(&mut ctx)?,
                Suite::Attention => suites::attention::run(&mut ctx)?,
                Suite::Prefill => suites::prefill::run(&mut ctx)?,
                Suite::KvVsRecompute => suites::kv_recompute::run(&mut ctx)?,
                Suite::Memory => suites::memory::run(cfg),
            };
            records.extend(recs);
        }
        Ok(())
    })();
    ctx.bar.finish_and_clear();
    result?;

    let report = report::render(cfg.format, &records);
    let mut files = Vec::new();
    let write = |path: &PathBuf, text: &str| -> Result<()> {
        std::fs::write(path, text)
            .map_err(|e| HarnessError::msg(format!("cannot write {}: {e}", path.display())))
    };
    if let Some(out) = &cfg.out {
        write(out, &report)?;
        files.push(out.clone());
    }
    let mut warnings = Vec::new();
    if let Some(p) = &cfg.plot {
        if plot::write_plot(p, &records)? {
            files.push(p.clone());
        } else {
            warnings.push(format!(
                "--plot {}: nothing to plot (run attention or kv-vs-recompute)",
                p.display()
            ));
        }
    }
    if let Some(dir) = &cfg.results_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| HarnessError::msg(format!("cannot create {}: {e}", dir.display())))?;
        let md = dir.join("report.md");
        write(
            &md,
            &if cfg.format == Format::Md {
                report.clone()
            } else {
                report::markdown(&records)
            },
        )?;
        let jl = dir.join("report.jsonl");
        write(&jl, &report::jsonl(&records))?;
        files.push(md);
        files.push(jl);
        let svg = dir.join("attention.svg");
        if plot::write_plot(&svg, &records)? {
            files.push(svg);
        }
    }
    Ok(RunOutput {
        records,
        report,
        files,
        warnings,
    })
}

/// The whole program: parse, run, print. Returns the exit status (0 success, 2 any error).
pub fn main_with(
    args: impl IntoIterator<Item = OsString>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    let fail = |stderr: &mut dyn Write, e: HarnessError| {
        match &e {
            HarnessError::Cli(_) => {
                let _ = writeln!(stderr, "{e}");
            }
            HarnessError::Msg(m) => {
                let _ = writeln!(stderr, "error: {m}");
            }
        }
        2
    };
    match parse(args) {
        Err(e) if e.is_help() => {
            let _ = write!(stdout, "{e}");
            let _ = writeln!(stdout);
            0
        }
        Err(e) => fail(stderr, e),
        Ok(Invocation::Run(cfg)) => match run(&cfg) {
            Ok(out) => {
                if cfg.out.is_none() {
                    let _ = stdout.write_all(out.report.as_bytes());
                }
                for w in &out.warnings {
                    let _ = writeln!(stderr, "warning: {w}");
                }
                if !cfg.quiet {
                    for f in &out.files {
                        let _ = writeln!(stderr, "wrote {}", f.display());
                    }
                }
                0
            }
            Err(e) => fail(stderr, e),
        },
        Ok(Invocation::Profile(p)) => match profile::run(&p, stdout) {
            Ok(()) => 0,
            Err(e) => fail(stderr, e),
        },
    }
}
