//! Log lines in Lima's form: `limactl` logs as Lima does through logrus,
//! so scripts that read Lima's stderr read ours.
//!
//! ```text
//! text, stderr not a terminal   time="2026-12-06T07:10:00Z" level=info msg="Stopped `dev`"
//! text, stderr a terminal       INFO[0003] Stopped `dev`            (level coloured; seconds since start)
//! json                          {"level":"info","msg":"Stopped `dev`","time":"2026-12-06T07:10:00Z"}
//! ```
//!
//! The rules follow logrus's `TextFormatter` and `JSONFormatter`: RFC 3339
//! local time to the second; a text value is written bare when it holds
//! only `A-Za-z0-9-._/@^+` and otherwise quoted as Go's `%q` does; the
//! terminal form truncates the level to four letters, pads the message to
//! 44 columns and counts seconds since the process began; JSON keys come
//! sorted, with Go's escapes (`<`, `>`, `&` as `\u003c`...). Extra fields
//! (a `tracing` event's fields) follow `msg` as `key=value`, sorted.
//!
//! Two ways in, one format: the command line's own messages (`cli::msg`)
//! call [`log`]; library code logs with `tracing`, and [`init`] installs
//! the one subscriber ([`LogrusLayer`]) that writes its events here. The
//! level (`--log-level`, default info) applies to both; `LIMA_LOG` (an
//! `EnvFilter`, our extension) may replace it for `tracing` events.
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// logrus's levels, most severe first (so `a <= b` means "at least as
/// severe"), with logrus's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Panic,
    Fatal,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl Level {
    /// logrus's `ParseLevel`: any case; `warn` and `warning` are the same.
    pub fn parse(s: &str) -> Result<Level, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "panic" => Level::Panic,
            "fatal" => Level::Fatal,
            "error" => Level::Error,
            "warn" | "warning" => Level::Warn,
            "info" => Level::Info,
            "debug" => Level::Debug,
            "trace" => Level::Trace,
            _ => {
                return Err(format!(
                    "not a valid logrus Level: {} (--log-level takes trace, debug, info, warn, error, fatal or panic)",
                    go_quote(s)
                ))
            }
        })
    }

    /// The name logrus writes (`warning`, not `warn`).
    pub fn name(self) -> &'static str {
        match self {
            Level::Panic => "panic",
            Level::Fatal => "fatal",
            Level::Error => "error",
            Level::Warn => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        }
    }

    /// logrus's colour on a terminal (ANSI SGR).
    fn color(self) -> u8 {
        match self {
            Level::Debug | Level::Trace => 37,
            Level::Warn => 33,
            Level::Error | Level::Fatal | Level::Panic => 31,
            Level::Info => 36,
        }
    }

    /// The most verbose `tracing` level this level lets through.
    fn tracing_filter(self) -> tracing::level_filters::LevelFilter {
        use tracing::level_filters::LevelFilter;
        match self {
            Level::Panic | Level::Fatal => LevelFilter::OFF,
            Level::Error => LevelFilter::ERROR,
            Level::Warn => LevelFilter::WARN,
            Level::Info => LevelFilter::INFO,
            Level::Debug => LevelFilter::DEBUG,
            Level::Trace => LevelFilter::TRACE,
        }
    }

    fn from_tracing(l: &tracing::Level) -> Level {
        match *l {
            tracing::Level::ERROR => Level::Error,
            tracing::Level::WARN => Level::Warn,
            tracing::Level::INFO => Level::Info,
            tracing::Level::DEBUG => Level::Debug,
            tracing::Level::TRACE => Level::Trace,
        }
    }
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format, String> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            _ => Err(format!(
                "unsupported log-format: {} (--log-format takes text or json)",
                go_quote(s)
            )),
        }
    }
}

/// How and what to log; set once by [`init`].
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub level: Level,
    pub format: Format,
    /// The terminal form (text format only): logrus uses it when its
    /// output (stderr) is a terminal.
    pub terminal: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            level: Level::Info,
            format: Format::Text,
            terminal: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }
}

static CONFIG: OnceLock<Config> = OnceLock::new();
static BEGAN: OnceLock<Instant> = OnceLock::new();

fn config() -> Config {
    *CONFIG.get_or_init(Config::default)
}

/// Sets the level and format, and installs the `tracing` subscriber that
/// writes library events in the same form: at `config.level`, or as the
/// `LIMA_LOG` filter says when it is set. Call once, early.
pub fn init(config: Config) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    BEGAN.get_or_init(Instant::now);
    let _ = CONFIG.set(config);
    let filter = tracing_subscriber::EnvFilter::try_from_env("LIMA_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::default().add_directive(config.level.tracing_filter().into())
    });
    let _ = tracing_subscriber::registry()
        .with(LogrusLayer.with_filter(filter))
        .try_init();
}

/// Whether a message at `level` is written.
pub fn enabled(level: Level) -> bool {
    level <= config().level
}

/// Writes `msg` at `level` on stderr, if the level allows it.
pub fn log(level: Level, msg: &str) {
    if enabled(level) {
        write(level, msg, &[]);
    }
}

fn write(level: Level, msg: &str, fields: &[(String, String)]) {
    let cfg = config();
    let began = *BEGAN.get_or_init(Instant::now);
    let entry = Entry {
        level,
        msg,
        fields,
        time: &rfc3339_now(),
        elapsed_secs: began.elapsed().as_secs(),
    };
    let line = render(&entry, cfg.format, cfg.terminal);
    // One write per line, so lines from threads do not interleave.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// One log entry, with its time already formatted.
pub struct Entry<'a> {
    pub level: Level,
    pub msg: &'a str,
    /// Extra `key=value` fields, in any order.
    pub fields: &'a [(String, String)],
    /// RFC 3339, as [`rfc3339`] makes it.
    pub time: &'a str,
    /// Seconds since the process began (the terminal form's `[0012]`).
    pub elapsed_secs: u64,
}

/// The line logrus would write for `entry`, newline included.
pub fn render(entry: &Entry, format: Format, terminal: bool) -> String {
    let mut fields: Vec<&(String, String)> = entry.fields.iter().collect();
    fields.sort();
    let mut out = String::new();
    match format {
        Format::Json => {
            // Sorted keys, as Go's encoder writes a map: the entry's fields
            // first take their places among level, msg and time.
            let mut keys: Vec<(&str, &str)> = fields
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "level" | "msg" | "time"))
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            keys.extend([
                ("level", entry.level.name()),
                ("msg", entry.msg),
                ("time", entry.time),
            ]);
            keys.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_string(&mut out, k);
                out.push(':');
                json_string(&mut out, v);
            }
            out.push('}');
        }
        Format::Text if terminal => {
            let c = entry.level.color();
            let name = entry.level.name().to_ascii_uppercase();
            let msg = entry.msg.strip_suffix('\n').unwrap_or(entry.msg);
            let _ = write!(
                out,
                "\x1b[{c}m{}\x1b[0m[{:04}] {msg:<44} ",
                &name[..4],
                entry.elapsed_secs
            );
            for (k, v) in fields {
                let _ = write!(out, " \x1b[{c}m{k}\x1b[0m=");
                text_value(&mut out, v);
            }
        }
        Format::Text => {
            out.push_str("time=");
            text_value(&mut out, entry.time);
            out.push_str(" level=");
            out.push_str(entry.level.name());
            if !entry.msg.is_empty() {
                out.push_str(" msg=");
                text_value(&mut out, entry.msg);
            }
            for (k, v) in fields {
                let _ = write!(out, " {k}=");
                text_value(&mut out, v);
            }
        }
    }
    out.push('\n');
    out
}

/// A text value: bare if logrus would leave it so, else Go-quoted.
fn text_value(out: &mut String, v: &str) {
    let bare = v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._/@^+".contains(c));
    if bare {
        out.push_str(v);
    } else {
        out.push_str(&go_quote(v));
    }
}

/// Go's `%q` (`strconv.Quote`) of a string.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\x7f' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() || (c.is_whitespace() && c != ' ') => {
                if (c as u32) < 0x10000 {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                } else {
                    let _ = write!(out, "\\U{:08x}", c as u32);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The message of a line in the text form (`time=… level=… msg=…`),
/// unquoted; `None` for any other line. For reading our own logs back
/// (the host agent's `ha.stderr.log`).
pub fn message_of(line: &str) -> Option<String> {
    if !line.starts_with("time=") || !line.contains(" level=") {
        return None;
    }
    let Some(at) = line.find(" msg=") else {
        return Some(String::new());
    };
    let value = &line[at + " msg=".len()..];
    let Some(quoted) = value.strip_prefix('"') else {
        return Some(value.split(' ').next().unwrap_or("").to_string());
    };
    let mut out = String::new();
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'a' => out.push('\x07'),
                'b' => out.push('\x08'),
                'f' => out.push('\x0c'),
                'v' => out.push('\x0b'),
                e @ ('x' | 'u' | 'U') => {
                    let n = match e {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let h: String = chars.by_ref().take(n).collect();
                    out.push(char::from_u32(u32::from_str_radix(&h, 16).ok()?)?);
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// A JSON string as Go's `encoding/json` writes it (HTML escaping on).
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    rfc3339(secs, crate::sys::utc_offset_secs(secs))
}

/// Go's `time.RFC3339` (`2006-01-02T15:04:05Z07:00`) of a Unix time in a
/// zone `offset` seconds east of UTC: `Z` for UTC itself.
pub fn rfc3339(unix_secs: i64, offset: i64) -> String {
    let local = unix_secs + offset;
    let (days, rem) = (local.div_euclid(86_400), local.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if offset == 0 {
        s.push('Z');
    } else {
        let sign = if offset < 0 { '-' } else { '+' };
        let o = offset.abs();
        let _ = write!(s, "{sign}{:02}:{:02}", o / 3600, o % 3600 / 60);
    }
    s
}

/// The proleptic Gregorian date of a day count from 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The `tracing` layer that writes every event it is given as a Lima log
/// line: the event's `message` is `msg`, its other fields follow.
pub struct LogrusLayer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogrusLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut v = Fields::default();
        event.record(&mut v);
        write(
            Level::from_tracing(event.metadata().level()),
            &v.message,
            &v.fields,
        );
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(String, String)>,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields
                .push((field.name().to_string(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let value = format!("{value:?}");
        if field.name() == "message" {
            self.message = value;
        } else {
            self.fields.push((field.name().to_string(), value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(level: Level, msg: &'a str, fields: &'a [(String, String)]) -> Entry<'a> {
        Entry {
            level,
            msg,
            fields,
            time: "2026-12-06T07:10:00Z",
            elapsed_secs: 3,
        }
    }

    #[test]
    fn text_lines_quote_only_when_logrus_does() {
        let r = |m| render(&entry(Level::Info, m, &[]), Format::Text, false);
        assert_eq!(
            r("READY"),
            "time=\"2026-12-06T07:10:00Z\" level=info msg=READY\n"
        );
        assert_eq!(
            r("a-b.c_d/e@f^g+h"),
            "time=\"2026-12-06T07:10:00Z\" level=info msg=a-b.c_d/e@f^g+h\n"
        );
        assert_eq!(
            r("instance \"x\" does not exist\nline 2\ttab \\"),
            "time=\"2026-12-06T07:10:00Z\" level=info msg=\"instance \\\"x\\\" does not exist\\nline 2\\ttab \\\\\"\n"
        );
        // No msg key for an empty message, as logrus.
        assert_eq!(r(""), "time=\"2026-12-06T07:10:00Z\" level=info\n");
        let w = render(&entry(Level::Warn, "x y", &[]), Format::Text, false);
        assert!(w.contains(" level=warning msg=\"x y\""), "{w}");
    }

    #[test]
    fn fields_follow_msg_sorted() {
        let f = [
            ("z".to_string(), "1".to_string()),
            ("a".to_string(), "two words".to_string()),
        ];
        let line = render(&entry(Level::Error, "boom", &f), Format::Text, false);
        assert_eq!(
            line,
            "time=\"2026-12-06T07:10:00Z\" level=error msg=boom a=\"two words\" z=1\n"
        );
        let json = render(&entry(Level::Error, "boom", &f), Format::Json, false);
        assert_eq!(
            json,
            "{\"a\":\"two words\",\"level\":\"error\",\"msg\":\"boom\",\"time\":\"2026-12-06T07:10:00Z\",\"z\":\"1\"}\n"
        );
    }

    #[test]
    fn json_escapes_as_go_does() {
        let line = render(
            &entry(Level::Fatal, "<a & b>\n\"q\" \u{1}\u{2028}", &[]),
            Format::Json,
            false,
        );
        assert_eq!(
            line,
            "{\"level\":\"fatal\",\"msg\":\"\\u003ca \\u0026 b\\u003e\\n\\\"q\\\" \\u0001\\u2028\",\"time\":\"2026-12-06T07:10:00Z\"}\n"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["msg"], "<a & b>\n\"q\" \u{1}\u{2028}");
    }

    #[test]
    fn the_terminal_form_is_short_coloured_and_padded() {
        let line = render(&entry(Level::Warn, "careful", &[]), Format::Text, true);
        assert_eq!(
            line,
            format!("\x1b[33mWARN\x1b[0m[0003] {:<44} \n", "careful")
        );
        let f = [("k".to_string(), "v v".to_string())];
        let line = render(&entry(Level::Info, "hi\n", &f), Format::Text, true);
        assert_eq!(
            line,
            format!(
                "\x1b[36mINFO\x1b[0m[0003] {:<44}  \x1b[36mk\x1b[0m=\"v v\"\n",
                "hi"
            )
        );
        let line = render(&entry(Level::Fatal, "x", &[]), Format::Text, true);
        assert!(line.starts_with("\x1b[31mFATA\x1b[0m[0003] x "), "{line:?}");
    }

    #[test]
    fn levels_parse_as_logrus_names_them() {
        assert_eq!(Level::parse("WARNING"), Ok(Level::Warn));
        assert_eq!(Level::parse("warn"), Ok(Level::Warn));
        assert_eq!(Level::parse("trace"), Ok(Level::Trace));
        let e = Level::parse("loud").unwrap_err();
        assert!(e.starts_with("not a valid logrus Level: \"loud\""), "{e}");
        assert!(Level::Error < Level::Info && Level::Trace > Level::Debug);
        assert!(Format::parse("xml")
            .unwrap_err()
            .starts_with("unsupported log-format: \"xml\""));
    }

    #[test]
    fn rfc3339_as_go_writes_it() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
        // 2024-02-29T12:34:56Z, in Tokyo and in New York.
        assert_eq!(
            rfc3339(1_709_210_096, 9 * 3600),
            "2024-02-29T21:34:56+09:00"
        );
        assert_eq!(
            rfc3339(1_709_210_096, -5 * 3600),
            "2024-02-29T07:34:56-05:00"
        );
        assert_eq!(
            rfc3339(1_709_210_096, 5 * 3600 + 1800),
            "2024-02-29T18:04:56+05:30"
        );
        assert_eq!(rfc3339(-1, 0), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn text_lines_read_back_to_their_message() {
        for msg in ["READY", "a \"b\"\n\tc \\ \u{1} \u{a0} é", ""] {
            let line = render(&entry(Level::Fatal, msg, &[]), Format::Text, false);
            assert_eq!(message_of(line.trim_end()).as_deref(), Some(msg), "{line}");
        }
        assert_eq!(message_of("[    0.0s] booting"), None);
    }

    #[test]
    fn go_quote_escapes_controls() {
        assert_eq!(go_quote("a\u{7f}b\u{1b}"), "\"a\\x7fb\\x1b\"");
        assert_eq!(go_quote("é ü"), "\"é ü\"");
        assert_eq!(go_quote("\u{a0}"), "\"\\u00a0\"");
    }
}
