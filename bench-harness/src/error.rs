//! The harness's error: a message for the user (printed as `error: ...`, exit status 2), or a
//! clap parse error (which formats itself, including `--help` and `--version` output).

use std::fmt;

/// Why a run could not start or finish.
#[derive(Debug)]
pub enum HarnessError {
    /// Command-line parsing failed, or help/version was requested.
    Cli(clap::Error),
    /// Any other problem, described for the user.
    Msg(String),
}

impl HarnessError {
    /// An error with a message.
    pub fn msg(m: impl Into<String>) -> Self {
        HarnessError::Msg(m.into())
    }

    /// True for `--help` / `--version` output, which is not a failure.
    pub fn is_help(&self) -> bool {
        matches!(self, HarnessError::Cli(e) if matches!(
            e.kind(),
            clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        ))
    }
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HarnessError::Cli(e) => write!(f, "{}", e.to_string().trim_end()),
            HarnessError::Msg(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for HarnessError {}

impl From<clap::Error> for HarnessError {
    fn from(e: clap::Error) -> Self {
        HarnessError::Cli(e)
    }
}

impl From<String> for HarnessError {
    fn from(m: String) -> Self {
        HarnessError::Msg(m)
    }
}

impl From<kernels::KernelError> for HarnessError {
    fn from(e: kernels::KernelError) -> Self {
        HarnessError::Msg(format!("kernel error: {e}"))
    }
}

impl From<std::io::Error> for HarnessError {
    fn from(e: std::io::Error) -> Self {
        HarnessError::Msg(format!("I/O error: {e}"))
    }
}

/// Result with [`HarnessError`].
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;
