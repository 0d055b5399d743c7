//! The high-score file: BSD's rules (NetBSD `scores.c`) in the port's own JSON format.
//!
//! One entry per (user, level); a better score replaces it, an equal one renews its time.
//! Entries are sorted by points x level, ties to the older entry; at most [`MAX_ENTRIES`] are
//! kept and [`MAX_PER_USER`] per user; entries older than [`EXPIRATION_SECS`] go unless they
//! are a level's best.
//!
//! Concurrency: the data file is replaced atomically (temp file in the same directory, then
//! `rename`), which gives it a new inode each time, so the lock cannot live on it. Every reader
//! and writer therefore locks the stable `<file>.lock` instead (`flock`: shared to show,
//! exclusive for the whole read-modify-write of a save), so concurrent savers never lose an
//! entry and readers never see a half-written table.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::options::{MAX_LEVEL, MIN_LEVEL, Options};

/// Most entries the table keeps (BSD `MAXHISCORES`).
pub const MAX_ENTRIES: usize = 80;
/// Most entries one user keeps, level bests aside (BSD `MAXSCORES`).
pub const MAX_PER_USER: usize = 9;
/// Age after which an entry is dropped unless it is a level's best (BSD `EXPIRATION`).
pub const EXPIRATION_SECS: i64 = 5 * 365 * 24 * 60 * 60;
/// Longest name kept, in characters (BSD `hs_name[20]` with its terminating NUL).
pub const MAX_NAME_CHARS: usize = 19;
/// Entries per page of the printed table (BSD shows 40 per screenful).
pub const PAGE: usize = 40;
/// BSD's table heading.
pub const TITLE: &str = "Rank  Score   Name     (points/level)";

/// The `format` field of the file, so a foreign JSON file is not mistaken for a table.
const FORMAT: &str = "tetris-bsd-scores";
/// Version of the file layout.
const VERSION: u32 = 1;

/// One high score.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Login name, at most [`MAX_NAME_CHARS`] characters.
    pub name: String,
    /// Points (the score is `points * level`).
    pub points: u32,
    /// Level, 1 to 9.
    pub level: u32,
    /// When it was set or last tied, seconds since the Unix epoch.
    pub time: i64,
}

impl Entry {
    /// The score BSD ranks by: points x level.
    pub fn score(&self) -> u64 {
        u64::from(self.points) * u64::from(self.level)
    }
}

/// The file as stored.
#[derive(Debug, Serialize, Deserialize)]
struct FileBody {
    format: String,
    version: u32,
    entries: Vec<Entry>,
}

/// What went wrong with the high-score file.
#[derive(Debug, thiserror::Error)]
pub enum ScoresError {
    /// No `--scores-file`, `TETRIS_SCORES`, `XDG_DATA_HOME` or home directory.
    #[error("no place for the high-score file: set TETRIS_SCORES, XDG_DATA_HOME or HOME")]
    NoPath,
    /// The directory of a file the user named does not exist (only the default data
    /// directory is ever created).
    #[error("cannot save to {}: there is no directory {}", path.display(), dir.display())]
    NoDirectory {
        /// The high-score file.
        path: PathBuf,
        /// Its missing directory.
        dir: PathBuf,
    },
    /// Creating the default data directory failed.
    #[error("cannot create directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Opening or creating the lock file failed.
    #[error("cannot open lock file {}: {source}", path.display())]
    OpenLock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// `flock` on the lock file failed.
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: Errno,
    },
    /// Reading the data file failed (other than its absence).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The data file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Writing or renaming the new table failed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file being written.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// How a game's score changed the player's entry for its level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// No entry for this user and level yet: one was added.
    New,
    /// Better than the old entry, whose score (points x level) this was.
    Bettered(u64),
    /// Equal to the old entry: its time was renewed.
    Tied,
    /// Worse than the old entry: nothing changed.
    Worse,
}

impl Recorded {
    /// BSD's message for this outcome (with its leading blank line), if it prints one.
    pub fn message(&self, level: u32) -> Option<String> {
        match self {
            Recorded::Bettered(old) => Some(format!(
                "\nYou bettered your old level {level} score of {old}!"
            )),
            Recorded::Tied => Some(format!("\nYou tied your old level {level} high score.")),
            Recorded::New | Recorded::Worse => None,
        }
    }
}

/// The result of saving one score.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Saved {
    /// What happened to the player's entry.
    pub recorded: Recorded,
    /// The table after the save, sorted.
    pub table: Vec<Entry>,
    /// Problems that cost nothing (e.g. a corrupt file that was replaced), for stderr.
    pub warnings: Vec<String>,
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `name` cut to at most [`MAX_NAME_CHARS`] characters (BSD cuts bytes; names are ASCII there).
pub fn cut_name(name: &str) -> String {
    name.chars().take(MAX_NAME_CHARS).collect()
}

/// The player's name: the login name of the real uid, else `$USER`/`$LOGNAME`, else BSD's
/// `  ???`; cut to [`MAX_NAME_CHARS`].
pub fn this_user() -> String {
    let from_passwd = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name);
    let name = from_passwd
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "  ???".to_owned());
    cut_name(&name)
}

/// The default file: `$XDG_DATA_HOME/tetris-bsd/scores`, else `~/.local/share/tetris-bsd/scores`.
pub fn default_path() -> Result<PathBuf, ScoresError> {
    let xdg = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let data = match xdg {
        Some(d) => d,
        None => home_dir().ok_or(ScoresError::NoPath)?.join(".local/share"),
    };
    Ok(data.join("tetris-bsd").join("scores"))
}

fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.dir)
        })
}

/// The file named by the options, else [`default_path`].
pub fn path_for(options: &Options) -> Result<PathBuf, ScoresError> {
    match &options.scores_file {
        Some(p) => Ok(p.clone()),
        None => default_path(),
    }
}

/// BSD's `cmpscores` order: higher points x level first, ties to the older entry.
pub fn sort(table: &mut [Entry]) {
    table.sort_by(|a, b| b.score().cmp(&a.score()).then(a.time.cmp(&b.time)));
}

/// Sorts and prunes (BSD `checkscores`): a level's best is always kept; any other entry goes
/// if it is older than [`EXPIRATION_SECS`] or its user already has [`MAX_PER_USER`] entries;
/// then the table is cut to [`MAX_ENTRIES`].
///
/// TETRIS-RULES.md decides where it and NetBSD differ: NetBSD also always keeps each user's
/// top entry and drops entries of names without an account; the rules keep only level bests
/// from expiry and say nothing about accounts, so neither is done here.
pub fn prune(table: &mut Vec<Entry>, now: i64) {
    sort(table);
    let mut level_found = [false; MAX_LEVEL as usize + 1];
    let mut per_user: Vec<(String, usize)> = Vec::new();
    table.retain(|e| {
        let lvl = usize::try_from(e.level)
            .unwrap_or(0)
            .min(MAX_LEVEL as usize);
        let count = match per_user.iter_mut().find(|(n, _)| *n == e.name) {
            Some((_, c)) => c,
            None => {
                per_user.push((e.name.clone(), 0));
                let last = per_user.len() - 1;
                &mut per_user[last].1
            }
        };
        let keep = !level_found[lvl]
            || (*count < MAX_PER_USER && e.time.saturating_add(EXPIRATION_SECS) >= now);
        if keep {
            *count += 1;
            level_found[lvl] = true;
        }
        keep
    });
    table.truncate(MAX_ENTRIES);
}

/// Records a game in `table` (BSD `savescore`): one entry per (user, level). Returns what
/// happened; the table is sorted and pruned when it changed.
pub fn record(table: &mut Vec<Entry>, name: &str, level: u32, points: u32, now: i64) -> Recorded {
    let recorded = match table
        .iter_mut()
        .find(|e| e.level == level && e.name == name)
    {
        Some(e) if points > e.points => {
            let old = e.score();
            e.points = points;
            e.time = now;
            Recorded::Bettered(old)
        }
        Some(e) if points == e.points => {
            e.time = now;
            Recorded::Tied
        }
        Some(_) => Recorded::Worse,
        None => {
            table.push(Entry {
                name: name.to_owned(),
                points,
                level,
                time: now,
            });
            Recorded::New
        }
    };
    if recorded != Recorded::Worse {
        prune(table, now);
    }
    recorded
}

/// Why a file's contents are not a table.
fn validate(body: FileBody) -> Result<Vec<Entry>, String> {
    if body.format != FORMAT {
        return Err(format!("format is {:?}, not {FORMAT:?}", body.format));
    }
    if body.version != VERSION {
        return Err(format!("version {} is not {VERSION}", body.version));
    }
    if body.entries.len() > MAX_ENTRIES {
        return Err(format!(
            "{} entries, more than {MAX_ENTRIES}",
            body.entries.len()
        ));
    }
    for e in &body.entries {
        if !(MIN_LEVEL..=MAX_LEVEL).contains(&e.level) {
            return Err(format!("entry for {:?} has level {}", e.name, e.level));
        }
        if e.name.is_empty() || e.name.chars().count() > MAX_NAME_CHARS {
            return Err(format!("entry name {:?} is empty or too long", e.name));
        }
    }
    let mut entries = body.entries;
    sort(&mut entries);
    Ok(entries)
}

/// Parses a file's bytes; `Err` says why they are not a valid table.
pub fn parse(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let body: FileBody = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    validate(body)
}

/// The file's bytes for `table`.
pub fn serialize(table: &[Entry]) -> Result<Vec<u8>, serde_json::Error> {
    let body = FileBody {
        format: FORMAT.to_owned(),
        version: VERSION,
        entries: table.to_vec(),
    };
    let mut bytes = serde_json::to_vec_pretty(&body)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// `<file>.lock`: the stable file every reader and writer locks.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// Opens (creating it if `create`) and flocks the lock file, retrying on EINTR.
fn lock(path: &Path, arg: FlockArg, create: bool) -> Result<Option<Flock<File>>, ScoresError> {
    let lpath = lock_path(path);
    let file = match OpenOptions::new()
        .read(true)
        .write(create)
        .create(create)
        .truncate(false)
        .open(&lpath)
    {
        Ok(f) => f,
        Err(e) if !create && e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ScoresError::OpenLock {
                path: lpath,
                source,
            });
        }
    };
    let mut file = file;
    loop {
        match Flock::lock(file, arg) {
            Ok(l) => return Ok(Some(l)),
            Err((f, Errno::EINTR)) => file = f,
            Err((_, source)) => {
                return Err(ScoresError::Lock {
                    path: lpath,
                    source,
                });
            }
        }
    }
}

/// Reads the table; a missing file is an empty table, a corrupt one an empty table plus a
/// warning.
fn read_table(path: &Path) -> Result<(Vec<Entry>, Option<String>), ScoresError> {
    match fs::read(path) {
        Ok(bytes) => match parse(&bytes) {
            Ok(t) => Ok((t, None)),
            Err(why) => Ok((
                Vec::new(),
                Some(format!(
                    "high-score file {} is corrupt ({why}); starting a fresh table",
                    path.display()
                )),
            )),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((Vec::new(), None)),
        Err(source) => Err(ScoresError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes `table` to `path` atomically: a temp file in the same directory, synced, renamed.
fn write_table(path: &Path, table: &[Entry]) -> Result<(), ScoresError> {
    // Unique per process and call, so even savers that bypass the lock never share a temp file.
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.{serial}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let werr = |source| ScoresError::Write {
        path: tmp.clone(),
        source,
    };
    let result = (|| {
        let bytes = serialize(table).map_err(|e| werr(io::Error::other(e)))?;
        let mut f = File::create(&tmp).map_err(werr)?;
        f.write_all(&bytes).map_err(werr)?;
        f.sync_all().map_err(werr)?;
        fs::rename(&tmp, path).map_err(|source| ScoresError::Write {
            path: path.to_owned(),
            source,
        })
    })();
    if result.is_err() {
        // Best effort: do not leave a stray temp file behind.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates the directory of the default high-score file ([`default_path`]) if missing: the
/// one directory the game makes on its own.
pub fn create_default_dir(path: &Path) -> Result<(), ScoresError> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => fs::create_dir_all(dir).map_err(|source| ScoresError::CreateDir {
            path: dir.to_owned(),
            source,
        }),
        None => Ok(()),
    }
}

/// Saves one game's score under an exclusive lock (read, record, write back). Creates the
/// file and its lock file, never a directory: a missing one is [`ScoresError::NoDirectory`].
pub fn save_score(
    path: &Path,
    name: &str,
    level: u32,
    points: u32,
    now: i64,
) -> Result<Saved, ScoresError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        return Err(ScoresError::NoDirectory {
            path: path.to_owned(),
            dir: dir.to_owned(),
        });
    }
    let _guard = lock(path, FlockArg::LockExclusive, true)?;
    let (mut table, warning) = read_table(path)?;
    let recorded = record(&mut table, name, level, points, now);
    // A corrupt file reads as an empty table, so the score is always New there and the
    // garbage is always replaced.
    if recorded != Recorded::Worse {
        write_table(path, &table)?;
    }
    Ok(Saved {
        recorded,
        table,
        warnings: warning.into_iter().collect(),
    })
}

/// Reads the table under a shared lock, for `-s`; the warning (if any) says it was corrupt.
pub fn load(path: &Path) -> Result<(Vec<Entry>, Option<String>), ScoresError> {
    let _guard = lock(path, FlockArg::LockShared, false)?;
    read_table(path)
}

/// BSD's `showscores` + `printem`: the heading, then pages of [`PAGE`] entries in two
/// columns, `*` marking each level's best. BSD waits for RETURN between pages; here pages
/// are separated by a blank line.
pub fn write_table_text(table: &[Entry], out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "\n\t\t\t    Tetris High Scores")?;
    let mut level_found = [false; MAX_LEVEL as usize + 1];
    let best: Vec<bool> = table
        .iter()
        .map(|e| {
            let lvl = usize::try_from(e.level)
                .unwrap_or(0)
                .min(MAX_LEVEL as usize);
            !std::mem::replace(&mut level_found[lvl], true)
        })
        .collect();
    for (page, chunk) in table.chunks(PAGE).enumerate() {
        if page > 0 {
            writeln!(out)?;
        }
        let offset = page * PAGE + 1;
        let n = chunk.len();
        writeln!(out, "{TITLE}   {}", if n > 1 { TITLE } else { "" })?;
        let nrows = n.div_ceil(2);
        for row in 0..nrows {
            for col in 0..2 {
                let item = col * nrows + row;
                let Some(e) = chunk.get(item) else {
                    writeln!(out)?;
                    continue;
                };
                let mark = if best[offset - 1 + item] { '*' } else { ' ' };
                let cell = format!(
                    "{:3}{} {:6}  {:<11} ({:6} on {})",
                    item + offset,
                    mark,
                    e.score(),
                    e.name,
                    e.points,
                    e.level
                );
                if col == 0 {
                    write!(out, "{cell:<40}")?;
                } else {
                    writeln!(out, "{cell}")?;
                }
            }
        }
    }
    Ok(())
}

/// `P point(s) x level L`, for messages about a game's score.
pub fn points_and_level(points: u32, level: u32) -> String {
    format!(
        "{points} point{} x level {level}",
        if points == 1 { "" } else { "s" }
    )
}

/// BSD's end-of-game line: `Your score:  P point(s)  x  level L  =  S`.
pub fn your_score_line(points: u32, level: u32) -> String {
    format!(
        "Your score:  {points} point{}  x  level {level}  =  {}",
        if points == 1 { "" } else { "s" },
        u64::from(points) * u64::from(level)
    )
}

/// Everything after an interactive game, with the terminal already restored: the score line,
/// the save (a bad file costs a warning on stderr, never the game), the bettered/tied message
/// and the table, all to `out`. A score that could not be saved is not ranked: the table is
/// then the file's as it stands, if it can be read and holds any entry, else none is shown.
/// Only the default file's directory is created when missing, never one the user named.
///
/// With `wait_for_return` (the player's terminal), BSD's pause comes between the score and the
/// table: [`SEE_SCORES_PROMPT`], then nothing until a newline or end of file. The score is saved
/// before the pause, so ^C there skips only the table.
pub fn finish_game(
    options: &Options,
    points: u32,
    out: &mut dyn Write,
    wait_for_return: Option<&mut dyn Read>,
) -> anyhow::Result<()> {
    let level = options.level;
    writeln!(out, "{}", your_score_line(points, level))?;
    let name = this_user();
    let when = now();
    let path = path_for(options).ok();
    let saved = path_for(options).and_then(|p| {
        if options.scores_file.is_none() {
            create_default_dir(&p)?;
        }
        save_score(&p, &name, level, points, when)
    });
    let table = match saved {
        Ok(s) => {
            for w in &s.warnings {
                eprintln!("tetris: warning: {w}");
            }
            if let Some(m) = s.recorded.message(level) {
                writeln!(out, "{m}")?;
            }
            s.table
        }
        Err(e) => {
            eprintln!("tetris: warning: your score was not saved: {e}");
            match path.and_then(|p| load(&p).ok()) {
                Some((table, _)) if !table.is_empty() => table,
                _ => {
                    out.flush()?;
                    return Ok(());
                }
            }
        }
    };
    if let Some(input) = wait_for_return {
        writeln!(out, "\n{SEE_SCORES_PROMPT}")?;
        out.flush()?;
        read_through_newline(input);
    }
    write_table_text(&table, out)?;
    out.flush()?;
    Ok(())
}

/// BSD's line between the score and the table when a player is at the terminal.
pub const SEE_SCORES_PROMPT: &str = "Hit RETURN to see high scores, ^C to skip.";

/// BSD's `while ((i = getchar()) != '\n') if (i == EOF) break;`: a read error counts as EOF.
fn read_through_newline(input: &mut dyn Read) {
    let mut byte = [0u8; 1];
    loop {
        match input.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => return,
            Ok(1) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(_) | Err(_) => return,
        }
    }
}

/// `tetris -s`: prints the table (a corrupt file gives a warning on stderr and no entries).
pub fn show_scores(options: &Options, out: &mut dyn Write) -> anyhow::Result<()> {
    let path = path_for(options)?;
    let (table, warning) = load(&path)?;
    if let Some(w) = warning {
        eprintln!("tetris: warning: {w}");
    }
    write_table_text(&table, out)?;
    Ok(())
}
