//! A small `log` backend writing to stderr (procd forwards stderr to logd/logread).

use log::{Level, LevelFilter, Metadata, Record};

struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record<'_>) {
        if self.enabled(r.metadata()) {
            let lvl = match r.level() {
                Level::Error => "error",
                Level::Warn => "warn",
                Level::Info => "info",
                Level::Debug => "debug",
                Level::Trace => "trace",
            };
            if STAMPED.load(std::sync::atomic::Ordering::Relaxed) {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                eprintln!(
                    "{}.{:03} shadowmesh[{lvl}] {}",
                    t.as_secs(),
                    t.subsec_millis(),
                    r.args()
                );
            } else {
                eprintln!("shadowmesh[{lvl}] {}", r.args());
            }
        }
    }

    fn flush(&self) {}
}

static LOGGER: Stderr = Stderr;

/// Lines start with the time (`SHADOWMESH_LOG_TIME=1`: for labs and terminals; logd stamps
/// what procd hands it).
static STAMPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Parses a level name (error, warn, info, debug, trace, off).
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    Some(match s {
        "off" => LevelFilter::Off,
        "error" => LevelFilter::Error,
        "warn" | "warning" => LevelFilter::Warn,
        "info" => LevelFilter::Info,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => return None,
    })
}

/// Installs the logger at `level` (our crates) ; other crates log at warn at most.
pub fn init(level: LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
    if std::env::var_os("SHADOWMESH_LOG_TIME").is_some_and(|v| v == "1") {
        STAMPED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
