//! How `lbd` logs: to stderr, quiet by default, as text or JSON lines.
//!
//! # Flow
//!
//! ```text
//! lbd flags (--log-format) + env (LBD_LOG, NO_COLOR) ─> Logging::from_env ─> init
//!   filter: LBD_LOG if set and valid, else DEFAULT_FILTER
//!   colour: only when stderr is a terminal and NO_COLOR is unset or empty
//!   format: text (one line per event) | json (one object per line)
//! ```
//!
//! The default filter keeps lbmesh's own crates at INFO and every
//! dependency (openraft, hyper, bollard, ...) at WARN: openraft logs every
//! election step and its whole state at INFO, which buried lbd's own lines.
//! `LBD_LOG` takes an `EnvFilter` directive (`LBD_LOG=debug`,
//! `LBD_LOG=info,openraft=info`) and replaces the default whole.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// lbmesh's own crates at INFO, everything else at WARN. One exception:
/// openraft's core warns of a benign race of its own on every membership
/// change (`membership_log_id changed ... ignore`), three lines per join;
/// it stays at ERROR, and lbmesh logs what a failed Raft call means.
pub const DEFAULT_FILTER: &str = "warn,openraft::core::raft_core=error,\
    lbd=info,lbmesh=info,lbmesh_proxy=info,raft_state=info,lb_config=info,lbmesh_api=info";

/// The log line format, `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields`.
    Json,
}

/// The logging set-up, decided from the flags and the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logging {
    pub format: LogFormat,
    /// The filter directives in force.
    pub filter: String,
    /// ANSI colour codes in text lines.
    pub colour: bool,
}

impl Logging {
    /// The set-up for `format` given the environment's `LBD_LOG` and
    /// `NO_COLOR` and whether stderr is a terminal.
    pub fn new(
        format: LogFormat,
        lbd_log: Option<String>,
        no_color: Option<std::ffi::OsString>,
        stderr_is_terminal: bool,
    ) -> Self {
        let filter = lbd_log
            .filter(|directives| EnvFilter::try_new(directives).is_ok())
            .unwrap_or_else(|| DEFAULT_FILTER.to_owned());
        // https://no-color.org: set and not empty means no colour.
        let no_color = no_color.is_some_and(|value| !value.is_empty());
        Self {
            format,
            filter,
            colour: format == LogFormat::Text && stderr_is_terminal && !no_color,
        }
    }

    /// The set-up for `format` in this process's environment.
    pub fn from_env(format: LogFormat) -> Self {
        Self::new(
            format,
            std::env::var("LBD_LOG").ok(),
            std::env::var_os("NO_COLOR"),
            std::io::stderr().is_terminal(),
        )
    }

    /// Installs the global subscriber (once per process).
    pub fn init(&self) {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new(&self.filter))
            .with_writer(std::io::stderr)
            .with_ansi(self.colour);
        match self.format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_are_at_warn_by_default() {
        let logging = Logging::new(LogFormat::Text, None, None, true);
        assert_eq!(logging.filter, DEFAULT_FILTER);
        assert!(DEFAULT_FILTER.starts_with("warn,"));
    }

    #[test]
    fn lbd_log_replaces_the_default_unless_invalid() {
        let set = Logging::new(LogFormat::Text, Some("debug".into()), None, false);
        assert_eq!(set.filter, "debug");
        let invalid = Logging::new(LogFormat::Text, Some("lbmesh=loud".into()), None, false);
        assert_eq!(invalid.filter, DEFAULT_FILTER);
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(Logging::new(LogFormat::Text, None, None, true).colour);
        assert!(!Logging::new(LogFormat::Text, None, None, false).colour);
        assert!(!Logging::new(LogFormat::Text, None, Some("1".into()), true).colour);
        // An empty NO_COLOR does not count (no-color.org).
        assert!(Logging::new(LogFormat::Text, None, Some("".into()), true).colour);
        assert!(!Logging::new(LogFormat::Json, None, None, true).colour);
    }
}
