//! Usage errors as Lima reports them: cobra's (and pflag's) wording, as
//! one `level=fatal` line through the log format, exit code 1 (clap's own
//! are exit 2 in clap's words). `--help` and `--version` print on stdout
//! and exit 0; `limactl` alone prints the help, as cobra does.
//!
//! | clap's error | our message (cobra's) |
//! | --- | --- |
//! | unknown `--foo` | `unknown flag: --foo` |
//! | unknown `-x` (in `-fx`) | `unknown shorthand flag: 'x' in -fx` |
//! | too few / too many arguments | `"limactl CMD" requires at least N arg(s), only received M.` and the rest of Lima's `WrapArgsError` (`See 'limactl CMD --help'.`, the usage line, the command's summary) |
//! | a bad flag value | `invalid argument "V" for "--flag" flag: REASON` |
//! | a flag without its value | `flag needs an argument: --flag` (`'f' in -f`) |
//!
//! Argument counts follow cobra's validators (`MinimumNArgs`,
//! `MaximumNArgs`, `ExactArgs`, `RangeArgs`, `NoArgs`), read from the
//! command's positional arguments; the count received comes from parsing
//! the line again with those arguments relaxed.
use std::ffi::OsString;
use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::CommandFactory;

use super::{msg, Cli};
use crate::logfmt;

/// Reports a failed parse of the command line and gives the exit code.
pub fn exit(e: clap::Error) -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => e.exit(),
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            // cobra prints a command's help when it has nothing to run.
            let mut cmd = Cli::command();
            print!("{}", cmd.render_help());
            ExitCode::SUCCESS
        }
        _ => {
            // Lima reports these before reading --log-format: text form.
            logfmt::init(logfmt::Config::default());
            msg::fatal(message(&e, &argv));
            ExitCode::from(1)
        }
    }
}

fn context_str(e: &clap::Error, kind: ContextKind) -> Option<String> {
    match e.get(kind)? {
        ContextValue::String(s) => Some(s.clone()),
        ContextValue::Strings(v) => v.first().cloned(),
        _ => None,
    }
}

/// cobra's wording for the error, as far as we can tell it apart.
fn message(e: &clap::Error, argv: &[OsString]) -> String {
    let argv: Vec<String> = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let invalid = context_str(e, ContextKind::InvalidArg);
    match (e.kind(), invalid.as_deref()) {
        (ErrorKind::UnknownArgument, Some(arg)) if arg.starts_with("--") => {
            let name = arg.split_once('=').map_or(arg, |(n, _)| n);
            format!("unknown flag: {name}")
        }
        (ErrorKind::UnknownArgument, Some(arg)) if arg.starts_with('-') && arg.len() > 1 => {
            let c = arg.chars().nth(1).unwrap_or('-');
            // The word it came in (`-fx`), as pflag names it.
            let word = argv
                .iter()
                .skip(1)
                .find(|w| w.starts_with('-') && !w.starts_with("--") && w[1..].contains(c))
                .cloned()
                .unwrap_or_else(|| arg.to_string());
            format!("unknown shorthand flag: '{c}' in {word}")
        }
        (ErrorKind::InvalidSubcommand, Some(name)) => {
            format!("unknown command \"{name}\" for \"limactl\"")
        }
        (
            ErrorKind::UnknownArgument
            | ErrorKind::MissingRequiredArgument
            | ErrorKind::WrongNumberOfValues
            | ErrorKind::TooManyValues
            | ErrorKind::TooFewValues,
            _,
        ) if invalid.as_deref().is_none_or(|a| !a.starts_with('-')) => {
            arg_count(&argv).unwrap_or_else(|| clap_words(e))
        }
        (ErrorKind::InvalidValue | ErrorKind::ValueValidation, Some(flag))
            if flag.starts_with('-') =>
        {
            let flag = flag.split([' ', '=', '[']).next().unwrap_or(flag);
            let value = context_str(e, ContextKind::InvalidValue).unwrap_or_default();
            if value.is_empty() && e.kind() == ErrorKind::InvalidValue {
                return needs_argument(flag, &argv);
            }
            let why = match (e.get(ContextKind::ValidValue), std::error::Error::source(e)) {
                (Some(ContextValue::Strings(valid)), _) if !valid.is_empty() => {
                    format!("not one of {}", valid.join(", "))
                }
                (_, Some(source)) => source.to_string(),
                _ => clap_words(e),
            };
            format!("invalid argument \"{value}\" for \"{flag}\" flag: {why}")
        }
        _ => clap_words(e),
    }
}

/// pflag's words for a flag given without its value: `--name` as typed,
/// or the short letter in the word it came in.
fn needs_argument(flag: &str, argv: &[String]) -> String {
    let long = flag.trim_start_matches('-');
    let typed_long = argv
        .iter()
        .any(|w| w.strip_prefix("--").is_some_and(|n| n == long));
    let mut root = Cli::command();
    root.build();
    let short = std::iter::once(&root)
        .chain(root.get_subcommands())
        .flat_map(|c| c.get_arguments())
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_short());
    match (typed_long, short) {
        (false, Some(c)) => {
            let word = argv
                .iter()
                .skip(1)
                .rev()
                .find(|w| w.starts_with('-') && !w.starts_with("--") && w.ends_with(c))
                .cloned()
                .unwrap_or_else(|| format!("-{c}"));
            format!("flag needs an argument: '{c}' in {word}")
        }
        _ => format!("flag needs an argument: --{long}"),
    }
}

/// clap's own message, without its `error: ` and `For more information`.
fn clap_words(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let text = text
        .split("\n\nFor more information")
        .next()
        .unwrap_or(&text);
    let text = text.trim().strip_prefix("error: ").unwrap_or(text.trim());
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Usage:"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The subcommand `argv` names: the first word that is not a global flag
/// or its value.
fn subcommand_name(cmd: &clap::Command, argv: &[String]) -> Option<String> {
    let mut words = argv.iter().skip(1);
    while let Some(w) = words.next() {
        if let Some(long) = w.strip_prefix("--") {
            let takes_value = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(long))
                .is_some_and(|a| a.get_action().takes_values());
            if takes_value {
                words.next();
            }
        } else if !w.starts_with('-') {
            return cmd.find_subcommand(w).map(|s| s.get_name().to_string());
        }
    }
    None
}

/// cobra's validator message for a wrong number of arguments, wrapped as
/// Lima's `WrapArgsError` does; `None` when the counts cannot be told.
fn arg_count(argv: &[String]) -> Option<String> {
    let mut root = Cli::command();
    root.build();
    let name = subcommand_name(&root, argv)?;
    let sc = root.find_subcommand_mut(&name)?;
    let positionals: Vec<clap::Arg> = sc.get_positionals().cloned().collect();
    let (mut min, mut max) = (0usize, 0usize);
    for p in &positionals {
        let range = p.get_num_args().unwrap_or_default();
        if p.is_required_set() {
            min += range.min_values();
        }
        max = max.saturating_add(range.max_values());
    }
    let received = received(&name, &positionals, argv)?;
    let path = sc
        .get_bin_name()
        .map(str::to_string)
        .unwrap_or_else(|| format!("limactl {name}"));
    let why = if max == 0 {
        let first = argv
            .iter()
            .skip_while(|w| **w != name)
            .skip(1)
            .find(|w| !w.starts_with('-'))?;
        return Some(format!("unknown command \"{first}\" for \"{path}\""));
    } else if min == max {
        format!("accepts {min} arg(s), received {received}")
    } else if max == usize::MAX {
        format!("requires at least {min} arg(s), only received {received}")
    } else if min == 0 {
        format!("accepts at most {max} arg(s), received {received}")
    } else {
        format!("accepts between {min} and {max} arg(s), received {received}")
    };
    let usage = sc.render_usage().to_string();
    let usage = usage.trim().strip_prefix("Usage:").unwrap_or(&usage).trim();
    let about = sc.get_about().map(|a| a.to_string()).unwrap_or_default();
    Some(format!(
        "\"{path}\" {why}.\nSee '{path} --help'.\n\nUsage:  {usage}\n\n{about}"
    ))
}

/// How many positional arguments `argv` gives subcommand `name`: parsed
/// again with them optional and the last taking any number.
fn received(name: &str, positionals: &[clap::Arg], argv: &[String]) -> Option<usize> {
    let ids: Vec<clap::Id> = positionals.iter().map(|p| p.get_id().clone()).collect();
    let last = ids.last().cloned();
    let root = Cli::command().mut_subcommand(name, |mut sc| {
        for id in &ids {
            let is_last = Some(id) == last.as_ref();
            sc = sc.mut_arg(id.clone(), |a| {
                let a = a
                    .required(false)
                    .value_parser(clap::builder::NonEmptyStringValueParser::new());
                if is_last {
                    a.num_args(0..).action(clap::ArgAction::Append)
                } else {
                    a
                }
            });
        }
        sc
    });
    let m = root.try_get_matches_from(argv).ok()?;
    let sm = m.subcommand_matches(name)?;
    Some(
        ids.iter()
            .map(|id| sm.get_raw(id.as_str()).map_or(0, |v| v.len()))
            .sum(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn words(args: &[&str]) -> String {
        let argv: Vec<OsString> = args.iter().map(OsString::from).collect();
        let e = match Cli::try_parse_from(&argv) {
            Ok(_) => panic!("{args:?} parsed"),
            Err(e) => e,
        };
        message(&e, &argv)
    }

    #[test]
    fn unknown_flags_in_pflag_words() {
        assert_eq!(words(&["limactl", "stop", "--foo"]), "unknown flag: --foo");
        assert_eq!(
            words(&["limactl", "--foo=1", "list"]),
            "unknown flag: --foo"
        );
        assert_eq!(
            words(&["limactl", "stop", "-x"]),
            "unknown shorthand flag: 'x' in -x"
        );
        assert_eq!(
            words(&["limactl", "stop", "-fx"]),
            "unknown shorthand flag: 'x' in -fx"
        );
    }

    #[test]
    fn argument_counts_in_cobra_words() {
        let w = words(&["limactl", "delete"]);
        assert!(
            w.starts_with(
                "\"limactl delete\" requires at least 1 arg(s), only received 0.\nSee 'limactl delete --help'.\n\nUsage:  limactl delete "
            ),
            "{w}"
        );
        assert!(w.ends_with("\n\nDelete instances"), "{w}");
        let w = words(&["limactl", "--log-level", "debug", "validate"]);
        assert!(
            w.starts_with("\"limactl validate\" requires at least 1 arg(s), only received 0."),
            "{w}"
        );
        let w = words(&["limactl", "show-ssh", "a", "b"]);
        assert!(
            w.starts_with("\"limactl show-ssh\" accepts 1 arg(s), received 2."),
            "{w}"
        );
        let w = words(&["limactl", "show-ssh"]);
        assert!(
            w.starts_with("\"limactl show-ssh\" accepts 1 arg(s), received 0."),
            "{w}"
        );
    }

    #[test]
    fn a_flag_without_its_value_in_pflag_words() {
        assert_eq!(
            words(&["limactl", "list", "--log-level"]),
            "flag needs an argument: --log-level"
        );
        assert_eq!(
            words(&["limactl", "show-ssh", "x", "-f"]),
            "flag needs an argument: 'f' in -f"
        );
        assert_eq!(
            words(&["limactl", "show-ssh", "x", "--format"]),
            "flag needs an argument: --format"
        );
    }

    #[test]
    fn a_flag_given_twice_is_not_an_error() {
        assert!(Cli::try_parse_from(["limactl", "-y", "-y", "list"]).is_ok());
        assert!(
            Cli::try_parse_from(["limactl", "--log-level=info", "list", "--log-level=debug"])
                .is_ok()
        );
    }

    #[test]
    fn a_bad_flag_value_names_the_flag_and_value() {
        let w = words(&["limactl", "--tty=maybe", "list"]);
        assert!(
            w == "invalid argument \"maybe\" for \"--tty\" flag: not one of true, false",
            "{w}"
        );
    }
}
