//! The command line: BSD's `tetris [-bps] [-k keys] [-l level]` plus the port's long options.
//!
//! clap parses; BSD's messages and exit codes are put on top: a bad level gives
//! `level must be from 1 to 9`, duplicate keys `duplicate command keys specified.`, an unknown
//! option or a missing value getopt's message and the usage line, and a wrong `-k` length or
//! an extra argument the usage line alone.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use clap::{Arg, ArgAction, value_parser};

pub use crate::rules::NO_KEY;
use crate::state::DEFAULT_KEYS;

/// BSD's usage line (current NetBSD) plus the way to the port's long options, printed for any
/// error that is not a bad level or keys.
pub const USAGE: &str = "usage: tetris [-bps] [-k keys] [-l level] [--help]";
/// What `--version` prints.
pub const VERSION_TEXT: &str = concat!("tetris (hotspare) ", env!("CARGO_PKG_VERSION"), "\n");
/// Lowest level.
pub const MIN_LEVEL: u32 = 1;
/// Highest level.
pub const MAX_LEVEL: u32 = 9;
/// Level when `-l` is not given.
pub const DEFAULT_LEVEL: u32 = 2;
/// Environment variable naming the high-score file when `--scores-file` is not given.
pub const SCORES_ENV: &str = "TETRIS_SCORES";

/// Everything the command line (and `TETRIS_SCORES`) asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// `-b`: black and white (`NO_COLOR` is applied by the screen, not here).
    pub black_and_white: bool,
    /// `-p`: show the next piece.
    pub preview: bool,
    /// `-s`: print the high scores and exit.
    pub show_scores: bool,
    /// `-k`: left, rotate, right, drop, pause, quit, down (6 keys: no down key, the 7th is
    /// [`NO_KEY`], as in bsdgames' six-key tetris).
    pub keys: [u8; 7],
    /// `-l`: 1..=9.
    pub level: u32,
    /// `--seed`: the piece generator's seed; `None` draws one from the OS.
    pub seed: Option<u64>,
    /// `--scores-file`, else `TETRIS_SCORES`, else `None` (the default path in the data dir).
    pub scores_file: Option<PathBuf>,
    /// `--headless`: run a script and print one JSON line.
    pub headless: bool,
    /// `--script`: the headless input (`None` or `-` = stdin).
    pub script: Option<PathBuf>,
    /// `--checkpoint-file`: write the checkpoint stream to this log.
    pub checkpoint_file: Option<PathBuf>,
    /// `--resume`: continue the game from the last complete checkpoint of this log.
    pub resume: Option<PathBuf>,
    /// `--stats`: write the checkpoint statistics here at the end.
    pub stats: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            black_and_white: false,
            preview: false,
            show_scores: false,
            keys: DEFAULT_KEYS,
            level: DEFAULT_LEVEL,
            seed: None,
            scores_file: None,
            headless: false,
            script: None,
            checkpoint_file: None,
            resume: None,
            stats: None,
        }
    }
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Run (play, headless or `-s`) with these options.
    Run(Options),
    /// `--help` or `--version`: print this text on stdout and exit 0.
    Help(String),
}

/// A command line BSD tetris would refuse; every one exits 1.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    /// Extra argument or wrong `-k` length.
    #[error("{USAGE}")]
    Usage,
    /// An option letter getopt does not know (carries the letter, escaped if not printable).
    #[error("invalid option -- '{0}'")]
    InvalidOption(String),
    /// A long option the port does not know (carries it as given, `--` included).
    #[error("unrecognized option '{0}'")]
    UnrecognizedOption(String),
    /// `-l` or `-k` given last on the line without its value (carries the letter).
    #[error("option requires an argument -- '{0}'")]
    MissingValue(String),
    /// A long option given last on the line without its value (carries it, `--` included).
    #[error("option '{0}' requires an argument")]
    MissingLongValue(String),
    /// A `-k` key the game could never tell apart: newline, return, NUL or a non-ASCII byte
    /// (the game reads bytes; a newline also ends lines of scripts and of the terminal).
    #[error("command keys must be ASCII characters other than newline and return, not {0:?}")]
    BadKey(String),
    /// `-l` not a number from 1 to 9; carries the value given.
    #[error("level must be from {MIN_LEVEL} to {MAX_LEVEL}")]
    BadLevel(String),
    /// Two commands share a key.
    #[error("duplicate command keys specified.")]
    DuplicateKeys,
    /// `--script` without `--headless`: the interactive game reads the terminal, not a script.
    #[error("--script needs --headless")]
    ScriptWithoutHeadless,
    /// `--resume` appends to the log it reads; another log cannot be asked for as well.
    #[error("--resume appends to the log it continues; it cannot be given with --checkpoint-file")]
    ResumeWithCheckpointFile,
    /// `--seed` not an unsigned 64-bit number; carries the value given.
    #[error("seed must be a number from 0 to 18446744073709551615, not {0:?}")]
    BadSeed(String),
}

impl OptionsError {
    /// What BSD prints on stderr (without the final newline): errx's `tetris: ` prefix, the
    /// bare usage line, or getopt's complaint followed by the usage line.
    pub fn stderr_line(&self) -> String {
        match self {
            OptionsError::Usage => self.to_string(),
            OptionsError::InvalidOption(_)
            | OptionsError::UnrecognizedOption(_)
            | OptionsError::MissingValue(_)
            | OptionsError::MissingLongValue(_) => format!("tetris: {self}\n{USAGE}"),
            _ => format!("tetris: {self}"),
        }
    }
}

const HELP_AFTER: &str = "\
Keys (default `jkl pqn`): left, rotate, right, drop (space), pause, quit, down; the arrow keys
work too. -k takes 7 keys, or 6 for a game without a down key (as bsdgames' tetris); all of
them must differ, and be ASCII characters other than newline and return.

The screen must be at least 40x23. On a narrow screen the board moves right of centre so
that the score and the next shape stay clear of its left wall.

--headless runs without a terminal: each byte of the script is one input (`.` = the fall
timer expired, newlines skipped, any other byte a key) and one JSON line describes the game
at the end. Without --seed the seed is drawn from the OS and reported in that line, so any
run can be repeated with --seed.

Every change of the game is checkpointed (hslib): to nowhere by default, to a log with
--checkpoint-file, to a spare process when the HS_* environment of a supervisor says so
(HS_ROLE=standalone|primary|spare, HS_TRANSPORT=null|file|unix|tcp, HS_SOCKET_DIR,
HS_SOCKET_NAME, HS_MODE=async|sync|lazy, HS_STRATEGY=copy|fork|cbw|adaptive, ...). A spare
draws nothing until its primary dies; then it takes over with the primary's last checkpoint.
--resume PATH continues the game from the last complete checkpoint of the log PATH, appending
to it; the game's seed, level and keys then come from the checkpoint; a game that has ended
is not resumed. A log grows by about 4 KiB per checkpoint until it passes
HS_LOG_MAX_BYTES (default 4 MiB), when it is compacted to its latest one. A headless game that
continues from a checkpoint passes over the inputs it had consumed when it reads a --script
FILE, and reads on when it reads stdin. Such a game first writes one line to the descriptor
$TETRIS_STATUS_FD names, if it is open: {\"resumed\":{\"checkpoint\":C,\"inputs\":N,\"epoch\":E}}
(a game on a terminal adds ,\"tty_bytes\":T: the terminal bytes its state accounts for).
$TETRIS_STATS_MS=MS adds a {\"stats\":{...}} line there at most every MS ms (see the man page).
--stats FILE writes at the end {\"checkpoints\":N,\"bytes\":N,\"stall_us\":{\"p50\":F,\"p99\":F,\"max\":F}},
the stall being the time the game spent inside each checkpoint. $TETRIS_LOG names a file for
the checkpoint library's log.

High scores live in $XDG_DATA_HOME/tetris-bsd/scores (else ~/.local/share/tetris-bsd/scores),
or in the file named by --scores-file or $TETRIS_SCORES, whose directory must exist.";

fn command() -> clap::Command {
    clap::Command::new("tetris")
        .about("BSD Tetris, ported faithfully to Rust")
        .override_usage(
            "tetris [-bps] [-k keys] [-l level] [--seed N] [--scores-file PATH]\n       \
             tetris --headless [--seed N] [-l level] [-k keys] [--script FILE]\n       \
             tetris ... [--checkpoint-file PATH | --resume PATH] [--stats FILE]",
        )
        .after_help(HELP_AFTER)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .args_override_self(true)
        .arg(
            Arg::new("b")
                .short('b')
                .action(ArgAction::SetTrue)
                .help("black and white: no colours"),
        )
        .arg(
            Arg::new("p")
                .short('p')
                .action(ArgAction::SetTrue)
                .help("show the next piece"),
        )
        .arg(
            Arg::new("s")
                .short('s')
                .action(ArgAction::SetTrue)
                .help("print the high scores and exit"),
        )
        .arg(
            Arg::new("keys")
                .short('k')
                .value_name("keys")
                .allow_hyphen_values(true)
                .value_parser(value_parser!(OsString))
                .help("command keys: left rotate right drop pause quit [down]"),
        )
        .arg(
            Arg::new("level")
                .short('l')
                .value_name("level")
                .allow_hyphen_values(true)
                .value_parser(value_parser!(OsString))
                .help("level 1 to 9 (default 2): the starting fall speed"),
        )
        .arg(
            Arg::new("seed")
                .long("seed")
                .allow_hyphen_values(true)
                .value_name("N")
                .value_parser(value_parser!(OsString))
                .help("seed the piece generator (default: from the OS)"),
        )
        .arg(
            Arg::new("scores-file")
                .long("scores-file")
                .allow_hyphen_values(true)
                .value_name("PATH")
                .value_parser(value_parser!(PathBuf))
                .help("high-score file (default: $TETRIS_SCORES, else the data directory)"),
        )
        .arg(
            Arg::new("headless")
                .long("headless")
                .action(ArgAction::SetTrue)
                .help("play a script without a terminal and print the result as JSON"),
        )
        .arg(
            Arg::new("script")
                .long("script")
                .allow_hyphen_values(true)
                .value_name("FILE")
                .value_parser(value_parser!(PathBuf))
                .help("headless input (default or `-`: stdin)"),
        )
        .arg(
            Arg::new("checkpoint-file")
                .long("checkpoint-file")
                .allow_hyphen_values(true)
                .value_name("PATH")
                .value_parser(value_parser!(PathBuf))
                .help("write every checkpoint to the log PATH (replaced)"),
        )
        .arg(
            Arg::new("resume")
                .long("resume")
                .allow_hyphen_values(true)
                .value_name("PATH")
                .value_parser(value_parser!(PathBuf))
                .help("continue the game of the checkpoint log PATH, appending to it"),
        )
        .arg(
            Arg::new("stats")
                .long("stats")
                .allow_hyphen_values(true)
                .value_name("FILE")
                .value_parser(value_parser!(PathBuf))
                .help("write checkpoint counts and stall times to FILE at the end (JSON)"),
        )
        .arg(
            Arg::new("version")
                .long("version")
                .action(ArgAction::SetTrue)
                .help("print the version"),
        )
        .arg(
            Arg::new("help")
                .long("help")
                .action(ArgAction::Help)
                .help("print this help"),
        )
}

/// Parses the level as BSD's bounds demand: a plain decimal number from 1 to 9.
fn parse_level(raw: &OsString) -> Result<u32, OptionsError> {
    let text = raw.to_string_lossy();
    text.parse::<u32>()
        .ok()
        .filter(|l| (MIN_LEVEL..=MAX_LEVEL).contains(l))
        .ok_or_else(|| OptionsError::BadLevel(text.into_owned()))
}

/// Refuses keys the game could never read as one key of their own.
fn check_key_bytes(raw: &[u8]) -> Result<(), OptionsError> {
    if raw
        .iter()
        .any(|&b| matches!(b, b'\n' | b'\r' | NO_KEY) || !b.is_ascii())
    {
        return Err(OptionsError::BadKey(escape(raw)));
    }
    Ok(())
}

/// `raw` with every byte that is not printable ASCII escaped (`\n`, `\xff`).
fn escape(raw: &[u8]) -> String {
    raw.iter()
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect()
}

/// Parses `-k`: 6 or 7 ASCII bytes (6: no down key, [`NO_KEY`] in its place), no key used
/// twice.
pub fn parse_keys(raw: &[u8]) -> Result<[u8; 7], OptionsError> {
    check_key_bytes(raw)?;
    let mut keys = [NO_KEY; 7];
    match raw.len() {
        6 | 7 => keys[..raw.len()].copy_from_slice(raw),
        _ => return Err(OptionsError::Usage),
    }
    for i in 0..raw.len() {
        if raw[i + 1..].contains(&raw[i]) {
            return Err(OptionsError::DuplicateKeys);
        }
    }
    Ok(keys)
}

/// Long options that take a value (the next argument unless given as `--name=value`).
const LONG_WITH_VALUE: [&str; 6] = [
    "seed",
    "scores-file",
    "script",
    "checkpoint-file",
    "resume",
    "stats",
];
/// Long options without a value.
const LONG_FLAGS: [&str; 3] = ["headless", "help", "version"];

/// BSD's `getopt("bk:l:ps")` loop, in argument order: `-k` keys and `-l` levels are checked
/// as they come, an unknown option or a missing value is getopt's error, and `-s` shows the
/// scores at once, before anything later on the line is looked at. Returns true when `-s` was
/// reached. Long options (the port's additions) are stepped over; the first non-option
/// argument ends the loop as in NetBSD's getopt.
fn getopt_pass(args: &[OsString]) -> Result<bool, OptionsError> {
    let mut i = 1;
    while let Some(arg) = args.get(i) {
        let bytes = arg.as_bytes();
        i += 1;
        if bytes == b"--" || bytes.first() != Some(&b'-') || bytes.len() == 1 {
            break;
        }
        if let Some(long) = bytes.strip_prefix(b"--") {
            let name = long.split(|&b| b == b'=').next().unwrap_or_default();
            let has_value = long.contains(&b'=');
            if LONG_WITH_VALUE.iter().any(|n| n.as_bytes() == name) {
                if !has_value {
                    if i >= args.len() {
                        return Err(OptionsError::MissingLongValue(escape(bytes)));
                    }
                    i += 1;
                }
            } else if !LONG_FLAGS.iter().any(|n| n.as_bytes() == name) {
                return Err(OptionsError::UnrecognizedOption(escape(bytes)));
            }
            continue;
        }
        for (at, &c) in bytes.iter().enumerate().skip(1) {
            match c {
                b'b' | b'p' => {}
                b's' => return Ok(true),
                b'k' | b'l' => {
                    let value = if at + 1 < bytes.len() {
                        OsString::from(std::ffi::OsStr::from_bytes(&bytes[at + 1..]))
                    } else {
                        let v = args
                            .get(i)
                            .cloned()
                            .ok_or_else(|| OptionsError::MissingValue(escape(&[c])))?;
                        i += 1;
                        v
                    };
                    if c == b'k' {
                        check_key_bytes(value.as_bytes())?;
                        if !matches!(value.len(), 6 | 7) {
                            return Err(OptionsError::Usage);
                        }
                    } else {
                        parse_level(&value)?;
                    }
                    break;
                }
                _ => return Err(OptionsError::InvalidOption(escape(&[c]))),
            }
        }
    }
    Ok(false)
}

/// The last `--scores-file` value anywhere on the line, for `-s` shown before full parsing.
fn scores_file_anywhere(args: &[OsString]) -> Option<PathBuf> {
    let mut found = None;
    let mut it = args.iter().skip(1);
    while let Some(arg) = it.next() {
        let bytes = arg.as_bytes();
        if bytes == b"--scores-file" {
            found = it.next().map(PathBuf::from);
        } else if let Some(v) = bytes.strip_prefix(b"--scores-file=") {
            found = Some(PathBuf::from(std::ffi::OsStr::from_bytes(v)));
        }
    }
    found
}

/// Parses `args` (program name first); `scores_env` is the value of `TETRIS_SCORES`.
///
/// The errors come in BSD's order: first whatever its getopt loop meets (so `-s -x` shows the
/// scores, `-x -s` is a usage error, `-l 0 -k abc` a level error), then extra arguments,
/// then duplicate keys.
pub fn parse_from<I, T>(args: I, scores_env: Option<OsString>) -> Result<Parsed, OptionsError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let env_file = || {
        scores_env
            .clone()
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if getopt_pass(&args)? {
        return Ok(Parsed::Run(Options {
            show_scores: true,
            scores_file: scores_file_anywhere(&args).or_else(env_file),
            ..Options::default()
        }));
    }
    let m = match command().try_get_matches_from(&args) {
        Ok(m) => m,
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {
            return Ok(Parsed::Help(e.render().to_string()));
        }
        Err(_) => return Err(OptionsError::Usage),
    };
    if m.get_flag("version") {
        return Ok(Parsed::Help(VERSION_TEXT.to_owned()));
    }
    let mut o = Options {
        black_and_white: m.get_flag("b"),
        preview: m.get_flag("p"),
        show_scores: m.get_flag("s"),
        headless: m.get_flag("headless"),
        script: m.get_one::<PathBuf>("script").cloned(),
        checkpoint_file: m.get_one::<PathBuf>("checkpoint-file").cloned(),
        resume: m.get_one::<PathBuf>("resume").cloned(),
        stats: m.get_one::<PathBuf>("stats").cloned(),
        ..Options::default()
    };
    if let Some(raw) = m.get_one::<OsString>("level") {
        o.level = parse_level(raw)?;
    }
    if let Some(raw) = m.get_one::<OsString>("keys") {
        o.keys = parse_keys(raw.as_bytes())?;
    }
    if let Some(raw) = m.get_one::<OsString>("seed") {
        let text = raw.to_string_lossy();
        o.seed = Some(
            text.parse::<u64>()
                .map_err(|_| OptionsError::BadSeed(text.into_owned()))?,
        );
    }
    if o.script.is_some() && !o.headless && !o.show_scores {
        return Err(OptionsError::ScriptWithoutHeadless);
    }
    if o.resume.is_some() && o.checkpoint_file.is_some() && !o.show_scores {
        return Err(OptionsError::ResumeWithCheckpointFile);
    }
    o.scores_file = m
        .get_one::<PathBuf>("scores-file")
        .cloned()
        .or_else(env_file);
    Ok(Parsed::Run(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Options, OptionsError> {
        let mut v = vec!["tetris"];
        v.extend_from_slice(args);
        match parse_from(v, None)? {
            Parsed::Run(o) => Ok(o),
            Parsed::Help(_) => panic!("unexpected help"),
        }
    }

    #[test]
    fn defaults_are_bsd_defaults() {
        let o = run(&[]).expect("no arguments parse");
        assert_eq!(o, Options::default());
        assert_eq!(o.level, 2);
        assert_eq!(&o.keys, b"jkl pqn");
    }

    #[test]
    fn bundled_flags_and_attached_values_parse_like_getopt() {
        let o = run(&["-bp", "-l5", "-kasdfgh"]).expect("parses");
        assert!(o.black_and_white && o.preview && !o.show_scores);
        assert_eq!(o.level, 5);
        assert_eq!(&o.keys, b"asdfgh\0");
    }

    #[test]
    fn six_keys_leave_no_down_key_and_seven_set_it() {
        assert_eq!(&run(&["-k", "asdfgh"]).expect("6 keys").keys, b"asdfgh\0");
        assert_eq!(&run(&["-k", "asdfghz"]).expect("7 keys").keys, b"asdfghz");
    }

    #[test]
    fn six_distinct_keys_may_use_n_as_bsdgames_accepts() {
        assert_eq!(&run(&["-k", "jkn pq"]).expect("6 keys").keys, b"jkn pq\0");
        assert_eq!(run(&["-k", "jkn pqn"]), Err(OptionsError::DuplicateKeys));
    }

    #[test]
    fn keys_with_a_newline_or_non_ascii_bytes_are_refused_by_name() {
        assert_eq!(
            run(&["-k", "jkl\npq"]),
            Err(OptionsError::BadKey("jkl\\npq".into()))
        );
        assert_eq!(
            run(&["-k", "jkl\rpq"]),
            Err(OptionsError::BadKey("jkl\\rpq".into()))
        );
        let raw = OsString::from(std::ffi::OsStr::from_bytes(b"jkl\xffpq"));
        let parsed = parse_from([OsString::from("tetris"), "-k".into(), raw], None);
        assert_eq!(parsed, Err(OptionsError::BadKey("jkl\\xffpq".into())));
        // A UTF-8 letter is two bytes, two keys the game would see: refused too.
        assert_eq!(
            run(&["-k", "jkl\u{e9}p"]),
            Err(OptionsError::BadKey("jkl\\xc3\\xa9p".into()))
        );
        assert_eq!(
            OptionsError::BadKey("jkl\\npq".into()).stderr_line(),
            "tetris: command keys must be ASCII characters other than newline and return, \
             not \"jkl\\\\npq\""
        );
    }

    #[test]
    fn level_must_be_a_number_from_1_to_9() {
        for bad in ["0", "10", "x", "3x", "-1", ""] {
            assert_eq!(
                run(&["-l", bad]),
                Err(OptionsError::BadLevel(bad.to_owned())),
                "{bad}"
            );
        }
        for good in 1..=9 {
            assert_eq!(run(&["-l", &good.to_string()]).expect("valid").level, good);
        }
    }

    #[test]
    fn usage_errors() {
        for args in [&["-k", "abc"][..], &["-k", "abcdefgh"], &["extra"]] {
            assert_eq!(run(args), Err(OptionsError::Usage), "{args:?}");
        }
    }

    #[test]
    fn getopt_errors_name_the_option_then_give_the_usage() {
        let invalid = |c: &str| Err(OptionsError::InvalidOption(c.into()));
        assert_eq!(run(&["-x"]), invalid("x"));
        assert_eq!(run(&["-h"]), invalid("h"));
        assert_eq!(run(&["-bpz"]), invalid("z"));
        assert_eq!(run(&["-l"]), Err(OptionsError::MissingValue("l".into())));
        assert_eq!(
            run(&["--bogus"]),
            Err(OptionsError::UnrecognizedOption("--bogus".into()))
        );
        assert_eq!(
            run(&["--resume"]),
            Err(OptionsError::MissingLongValue("--resume".into()))
        );
        assert_eq!(
            OptionsError::InvalidOption("x".into()).stderr_line(),
            "tetris: invalid option -- 'x'\nusage: tetris [-bps] [-k keys] [-l level] [--help]"
        );
        assert_eq!(
            OptionsError::MissingValue("l".into()).stderr_line(),
            "tetris: option requires an argument -- 'l'\n\
             usage: tetris [-bps] [-k keys] [-l level] [--help]"
        );
    }

    #[test]
    fn version_is_text_not_an_error() {
        let Ok(Parsed::Help(text)) = parse_from(["tetris", "--version"], None) else {
            panic!("no version")
        };
        assert_eq!(
            text,
            format!("tetris (hotspare) {}\n", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn errors_and_dash_s_come_in_getopt_order() {
        // -s shows the scores as soon as getopt reaches it.
        for args in [
            &["-s", "-x"][..],
            &["-s", "-l", "0"],
            &["-s", "extra"],
            &["-bs", "-k", "abc"],
            &["-k", "aabcdef", "-s"], // duplicates are only checked after the loop
            &["-l", "3", "-s"],
        ] {
            let o = run(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert!(o.show_scores, "{args:?}");
        }
        // Anything getopt meets before -s wins.
        assert_eq!(
            run(&["-x", "-s"]),
            Err(OptionsError::InvalidOption("x".into()))
        );
        assert_eq!(
            run(&["-l", "0", "-s"]),
            Err(OptionsError::BadLevel("0".into()))
        );
        assert_eq!(run(&["-k", "abc", "-s"]), Err(OptionsError::Usage));
        // Level and -k length in argument order, duplicates last, extra arguments before them.
        assert_eq!(
            run(&["-l", "0", "-k", "abc"]),
            Err(OptionsError::BadLevel("0".into()))
        );
        assert_eq!(run(&["-k", "abc", "-l", "0"]), Err(OptionsError::Usage));
        assert_eq!(
            run(&["-k", "aabcdef", "-l", "0"]),
            Err(OptionsError::BadLevel("0".into()))
        );
        assert_eq!(run(&["-k", "aabcdef", "extra"]), Err(OptionsError::Usage));
    }

    #[test]
    fn dash_s_early_still_finds_the_scores_file() {
        let o = run(&["-s", "-x", "--scores-file", "/a/b"]).expect("scores");
        assert_eq!(o.scores_file, Some(PathBuf::from("/a/b")));
        let o = run(&["-s", "--scores-file=/c"]).expect("scores");
        assert_eq!(o.scores_file, Some(PathBuf::from("/c")));
    }

    #[test]
    fn long_options_are_stepped_over_by_the_getopt_pass() {
        let o = run(&["--seed", "-5x", "--headless"]);
        assert_eq!(o, Err(OptionsError::BadSeed("-5x".into())));
        let o = run(&["--seed=7", "--script", "-", "--headless", "-l", "4"]).expect("parses");
        assert_eq!((o.seed, o.level), (Some(7), 4));
    }

    #[test]
    fn script_without_headless_is_an_error() {
        assert_eq!(
            run(&["--script", "x"]),
            Err(OptionsError::ScriptWithoutHeadless)
        );
        assert!(run(&["--script", "x", "--headless"]).is_ok());
    }

    #[test]
    fn checkpoint_options_parse_and_resume_excludes_another_log() {
        let o = run(&["--checkpoint-file", "/a", "--stats=/s", "--headless"]).expect("parses");
        assert_eq!(o.checkpoint_file, Some(PathBuf::from("/a")));
        assert_eq!(o.stats, Some(PathBuf::from("/s")));
        let o = run(&["--resume", "-l"]).expect("a path may start with a dash");
        assert_eq!(o.resume, Some(PathBuf::from("-l")));
        assert_eq!(
            run(&["--resume", "/a", "--checkpoint-file", "/b"]),
            Err(OptionsError::ResumeWithCheckpointFile)
        );
        assert_eq!(
            run(&["--resume"]),
            Err(OptionsError::MissingLongValue("--resume".into()))
        );
    }

    #[test]
    fn last_level_wins_like_getopt() {
        assert_eq!(run(&["-l", "3", "-l", "4"]).expect("parses").level, 4);
    }

    #[test]
    fn scores_file_option_beats_environment() {
        let env = Some(OsString::from("/env/scores"));
        let Ok(Parsed::Run(o)) = parse_from(["tetris"], env.clone()) else {
            panic!("parse failed")
        };
        assert_eq!(o.scores_file, Some(PathBuf::from("/env/scores")));
        let Ok(Parsed::Run(o)) = parse_from(["tetris", "--scores-file", "/opt/s"], env) else {
            panic!("parse failed")
        };
        assert_eq!(o.scores_file, Some(PathBuf::from("/opt/s")));
    }

    #[test]
    fn help_is_text_not_an_error() {
        let Ok(Parsed::Help(text)) = parse_from(["tetris", "--help"], None) else {
            panic!("no help")
        };
        assert!(text.contains("--headless"));
    }

    #[test]
    fn stderr_lines_match_bsd() {
        assert_eq!(
            OptionsError::Usage.stderr_line(),
            "usage: tetris [-bps] [-k keys] [-l level] [--help]"
        );
        assert_eq!(
            OptionsError::BadLevel("0".into()).stderr_line(),
            "tetris: level must be from 1 to 9"
        );
        assert_eq!(
            OptionsError::DuplicateKeys.stderr_line(),
            "tetris: duplicate command keys specified."
        );
    }
}
