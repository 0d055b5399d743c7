//! The high-score file: BSD's per-user/per-level rules, ordering, limits, the printed table,
//! corrupt files, and concurrent savers in separate processes.

use std::path::Path;
use std::process::Command;

use tetris::options::Options;
use tetris::scores::{
    self, EXPIRATION_SECS, Entry, MAX_ENTRIES, Recorded, finish_game, parse, prune, record,
    save_score, serialize, write_table_text,
};

const NOW: i64 = 1_800_000_000;

fn e(name: &str, points: u32, level: u32, time: i64) -> Entry {
    Entry {
        name: name.to_owned(),
        points,
        level,
        time,
    }
}

fn names(table: &[Entry]) -> Vec<(String, u32)> {
    table.iter().map(|x| (x.name.clone(), x.level)).collect()
}

#[test]
fn one_entry_per_user_and_level_better_replaces_equal_renews_worse_keeps() {
    let mut t = Vec::new();
    assert_eq!(record(&mut t, "ann", 2, 10, 100), Recorded::New);
    assert_eq!(
        record(&mut t, "ann", 3, 10, 100),
        Recorded::New,
        "other level"
    );
    assert_eq!(
        record(&mut t, "bob", 2, 10, 100),
        Recorded::New,
        "other user"
    );
    assert_eq!(t.len(), 3);
    // Better: the message carries the old score, points x level (10 x 2).
    assert_eq!(record(&mut t, "ann", 2, 15, 200), Recorded::Bettered(20));
    assert_eq!(
        Recorded::Bettered(20).message(2).as_deref(),
        Some("\nYou bettered your old level 2 score of 20!")
    );
    // Equal: renews the time.
    assert_eq!(record(&mut t, "ann", 2, 15, 300), Recorded::Tied);
    assert_eq!(
        Recorded::Tied.message(2).as_deref(),
        Some("\nYou tied your old level 2 high score.")
    );
    // Worse: nothing changes.
    assert_eq!(record(&mut t, "ann", 2, 5, 400), Recorded::Worse);
    assert_eq!(Recorded::Worse.message(2), None);
    assert_eq!(Recorded::New.message(2), None);
    let ann2: Vec<&Entry> = t
        .iter()
        .filter(|x| x.name == "ann" && x.level == 2)
        .collect();
    assert_eq!(ann2, vec![&e("ann", 15, 2, 300)]);
    assert_eq!(t.len(), 3);
}

#[test]
fn sorted_by_points_times_level_ties_to_the_older_entry() {
    let mut t = vec![
        e("a", 10, 1, 5),  // 10
        e("b", 5, 4, 9),   // 20, newer
        e("c", 10, 2, 7),  // 20, older
        e("d", 3, 9, 1),   // 27
        e("e", 100, 1, 2), // 100
    ];
    scores::sort(&mut t);
    let order: Vec<&str> = t.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(order, ["e", "d", "c", "b", "a"]);
}

#[test]
fn at_most_80_entries_keeping_the_best() {
    let mut t: Vec<Entry> = (0..100)
        .map(|i| e(&format!("u{i}"), i + 1, 1, NOW))
        .collect();
    prune(&mut t, NOW);
    assert_eq!(t.len(), MAX_ENTRIES);
    assert_eq!(t[0].points, 100);
    assert_eq!(t[79].points, 21, "the 20 lowest went");
}

#[test]
fn at_most_9_per_user_unless_a_level_best() {
    // `top` holds the best of levels 1-8, so none of x's level-1 entries is a level best.
    let mut t: Vec<Entry> = (1..=8).map(|l| e("top", 1000, l, NOW)).collect();
    for i in 0..12 {
        t.push(e("x", 10 + i, 1, NOW));
    }
    prune(&mut t, NOW);
    let xs: Vec<u32> = t
        .iter()
        .filter(|x| x.name == "x")
        .map(|x| x.points)
        .collect();
    // x keeps its 9 best entries: 21 down to 13.
    assert_eq!(xs, (13..=21).rev().collect::<Vec<u32>>());
    // A level best is kept beyond 9: x's only level-9 entry ranks below its nine others.
    t.push(e("x", 1, 9, NOW));
    prune(&mut t, NOW);
    assert_eq!(t.iter().filter(|x| x.name == "x").count(), 10);
    assert_eq!(t.last(), Some(&e("x", 1, 9, NOW)));
}

#[test]
fn old_entries_are_dropped_unless_a_level_best() {
    let old = NOW - EXPIRATION_SECS - 1;
    let edge = NOW - EXPIRATION_SECS;
    let mut t = vec![
        e("ancient", 999, 4, old), // level 4's best: kept
        e("stale", 10, 4, old),    // expired, not a best: dropped
        e("edge", 9, 4, edge),     // exactly 5 x 365 days: kept (BSD uses >=)
        e("fresh", 8, 4, NOW),
    ];
    prune(&mut t, NOW);
    assert_eq!(
        names(&t),
        [
            ("ancient".into(), 4),
            ("edge".into(), 4),
            ("fresh".into(), 4)
        ]
    );
}

#[test]
fn table_text_has_bsd_layout_two_columns_and_stars() {
    // Sorted: ann/2 (200), bob/1 (150), carol/2 (100, older), ann/5 (100, newer).
    // Rows are `%3d%c %6d  %-11s (%6d on %d)`, the left one padded to 40 columns; four
    // entries make two rows: items 1 and 3 on the first, 2 and 4 on the second.
    let mut t = vec![
        e("ann", 20, 5, 10),
        e("carol", 50, 2, 5),
        e("bob", 150, 1, 3),
        e("ann", 100, 2, 1),
    ];
    scores::sort(&mut t);
    let mut out = Vec::new();
    write_table_text(&t, &mut out).expect("write to a Vec");
    let want = "\n\t\t\t    Tetris High Scores\n\
        Rank  Score   Name     (points/level)   Rank  Score   Name     (points/level)\n  \
        1*    200  ann         (   100 on 2)    3     100  carol       (    50 on 2)\n  \
        2*    150  bob         (   150 on 1)    4*    100  ann         (    20 on 5)\n";
    assert_eq!(String::from_utf8_lossy(&out), want);
}

#[test]
fn table_text_with_odd_count_and_single_entry() {
    let t = vec![e("ann", 1, 1, 0), e("bob", 1, 1, 1), e("cy", 1, 1, 2)];
    let mut out = Vec::new();
    write_table_text(&t, &mut out).expect("write to a Vec");
    let text = String::from_utf8_lossy(&out).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    // Three entries: two rows; the second has only a left column, padded, then a newline.
    assert_eq!(lines.len(), 5);
    assert_eq!(
        lines[3],
        "  1*      1  ann         (     1 on 1)    3       1  cy          (     1 on 1)"
    );
    assert_eq!(lines[4], "  2       1  bob         (     1 on 1)  ");
    let mut out = Vec::new();
    write_table_text(&t[..1], &mut out).expect("write to a Vec");
    let text = String::from_utf8_lossy(&out).into_owned();
    assert_eq!(
        text.lines().nth(2),
        Some("Rank  Score   Name     (points/level)   ")
    );
}

#[test]
fn tables_longer_than_40_are_printed_in_pages_of_40() {
    // 41 entries: a first page of 40 (20 rows, ranks 1-20 left and 21-40 right), then a
    // blank line where BSD waits for RETURN, then a page with rank 41 alone.
    let t: Vec<Entry> = (0..41)
        .map(|i| e(&format!("u{i}"), 100 - i, 1, 0))
        .collect();
    let mut out = Vec::new();
    write_table_text(&t, &mut out).expect("write to a Vec");
    let text = String::from_utf8_lossy(&out).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2 + 1 + 20 + 1 + 1 + 1);
    assert!(lines[3].starts_with("  1*    100  u0 ") && lines[3].contains(" 21      80  u20 "));
    assert!(lines[22].starts_with(" 20      81  u19 ") && lines[22].contains(" 40      61  u39 "));
    assert_eq!(lines[23], "");
    assert_eq!(lines[24], "Rank  Score   Name     (points/level)   ");
    assert_eq!(lines[25], " 41      60  u40         (    60 on 1)  ");
}

#[test]
fn names_are_cut_to_19_characters() {
    assert_eq!(
        scores::cut_name("abcdefghijklmnopqrstuvwxyz"),
        "abcdefghijklmnopqrs"
    );
    assert_eq!(scores::cut_name("short"), "short");
    let name = format!("{}éèà", "a".repeat(17));
    assert_eq!(scores::cut_name(&name), format!("{}éè", "a".repeat(17)));
    let me = scores::this_user();
    assert!(!me.is_empty() && me.chars().count() <= 19);
}

#[test]
fn file_round_trips_and_rejects_garbage() {
    let t = vec![e("ann", 100, 2, 1), e("bob", 3, 9, 2)];
    assert_eq!(parse(&serialize(&t).expect("serialize")), Ok(t));
    assert_eq!(parse(b""), Ok(vec![]), "an empty file is an empty table");
    assert!(parse(b"\x00\x01garbage").is_err());
    assert!(parse(br#"{"format":"other","version":1,"entries":[]}"#).is_err());
    assert!(parse(br#"{"format":"tetris-bsd-scores","version":2,"entries":[]}"#).is_err());
    let bad_level =
        br#"{"format":"tetris-bsd-scores","version":1,"entries":[{"name":"a","points":1,"level":10,"time":0}]}"#;
    assert!(parse(bad_level).is_err());
}

#[test]
fn save_creates_no_directory_and_names_the_missing_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sub/dir/scores");
    let err = save_score(&path, "ann", 3, 7, NOW).expect_err("no directory");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot save to {}: there is no directory {}",
            path.display(),
            dir.path().join("sub/dir").display()
        )
    );
    assert!(!dir.path().join("sub").exists(), "a directory was created");
}

#[test]
fn the_default_files_directory_is_the_one_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("share/tetris-bsd/scores");
    scores::create_default_dir(&path).expect("create");
    assert!(dir.path().join("share/tetris-bsd").is_dir());
    save_score(&path, "ann", 3, 7, NOW).expect("save");
}

#[test]
fn save_creates_the_file_and_keeps_a_lock_file_beside_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("scores");
    let saved = save_score(&path, "ann", 3, 7, NOW).expect("save");
    assert_eq!(saved.recorded, Recorded::New);
    assert!(saved.warnings.is_empty());
    let on_disk = parse(&std::fs::read(&path).expect("file written")).expect("valid");
    assert_eq!(on_disk, vec![e("ann", 7, 3, NOW)]);
    assert!(scores::lock_path(&path).exists());
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
        .expect("read dir")
        .filter_map(Result::ok)
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn corrupt_file_gives_a_warning_and_a_fresh_table_with_the_score() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("scores");
    std::fs::write(&path, b"{ this is not a table").expect("write garbage");
    let saved = save_score(&path, "ann", 2, 10, NOW).expect("save despite corruption");
    assert_eq!(saved.warnings.len(), 1);
    assert!(
        saved.warnings[0].contains("corrupt"),
        "{:?}",
        saved.warnings
    );
    assert_eq!(saved.table, vec![e("ann", 10, 2, NOW)]);
    let on_disk = parse(&std::fs::read(&path).expect("read")).expect("now valid");
    assert_eq!(on_disk, vec![e("ann", 10, 2, NOW)]);
}

fn options_with(path: &Path, level: u32) -> Options {
    Options {
        level,
        scores_file: Some(path.to_owned()),
        ..Options::default()
    }
}

#[test]
fn finish_game_prints_score_messages_and_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("scores");
    let me = scores::this_user();
    let row = |points: u32, level: u32| {
        format!(
            "  1* {:6}  {:<11} ({:6} on {level})",
            points * level,
            me,
            points
        )
    };
    let mut out = Vec::new();
    finish_game(&options_with(&path, 2), 1, &mut out, None).expect("finish");
    let want = format!(
        "Your score:  1 point  x  level 2  =  2\n\n\t\t\t    Tetris High Scores\n\
         Rank  Score   Name     (points/level)   \n{}  \n",
        row(1, 2)
    );
    assert_eq!(String::from_utf8_lossy(&out), want);

    let mut out = Vec::new();
    finish_game(&options_with(&path, 2), 5, &mut out, None).expect("finish");
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(text.starts_with(
        "Your score:  5 points  x  level 2  =  10\n\nYou bettered your old level 2 score of 2!\n"
    ));

    let mut out = Vec::new();
    finish_game(&options_with(&path, 2), 5, &mut out, None).expect("finish");
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(
        text.contains("\nYou tied your old level 2 high score.\n"),
        "{text}"
    );
    assert!(text.ends_with(&format!("{}  \n", row(5, 2))), "{text}");
}

#[test]
fn an_unsaved_score_in_a_missing_directory_is_not_ranked_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nonexistent/dir/sc");
    let mut out = Vec::new();
    finish_game(&options_with(&path, 3), 4, &mut out, None).expect("the game is not lost");
    assert_eq!(
        String::from_utf8_lossy(&out),
        "Your score:  4 points  x  level 3  =  12\n",
        "no table ranks a score that was not saved"
    );
    assert!(!dir.path().join("nonexistent").exists());
}

#[test]
fn an_unsaved_score_is_left_out_of_the_table_shown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("scores");
    save_score(&path, "zed", 1, 50, NOW).expect("save");
    // The lock file replaced by a directory: the save cannot open it for writing, while a
    // reader still can.
    std::fs::remove_file(scores::lock_path(&path)).expect("remove lock");
    std::fs::create_dir(scores::lock_path(&path)).expect("lock dir");
    let mut out = Vec::new();
    finish_game(&options_with(&path, 3), 4, &mut out, None).expect("the game is not lost");
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(text.starts_with("Your score:  4 points  x  level 3  =  12\n"));
    assert!(text.contains("(    50 on 1)"), "the file's table: {text}");
    assert!(
        !text.contains("on 3)"),
        "the unsaved score is ranked: {text}"
    );
}

/// Helper run in child processes by `concurrent_processes_lose_no_entry` (ignored otherwise):
/// saves one score per level 1..=8 as user `$SCORES_CHILD_USER` into `$SCORES_CHILD_FILE`.
#[test]
#[ignore = "child process helper for concurrent_processes_lose_no_entry"]
fn child_saver() {
    let (Some(file), Some(user)) = (
        std::env::var_os("SCORES_CHILD_FILE"),
        std::env::var("SCORES_CHILD_USER").ok(),
    ) else {
        panic!("run only by concurrent_processes_lose_no_entry")
    };
    for level in 1..=8 {
        save_score(Path::new(&file), &user, level, 10 + level, NOW).expect("save");
    }
}

#[test]
fn concurrent_processes_lose_no_entry() {
    const PROCS: u32 = 8;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("scores");
    let exe = std::env::current_exe().expect("test binary");
    let children: Vec<_> = (0..PROCS)
        .map(|i| {
            Command::new(&exe)
                .args(["--exact", "child_saver", "--ignored", "--test-threads=1"])
                .env("SCORES_CHILD_FILE", &path)
                .env("SCORES_CHILD_USER", format!("user{i}"))
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("spawn child")
        })
        .collect();
    for mut c in children {
        assert!(c.wait().expect("wait child").success());
    }
    let table = parse(&std::fs::read(&path).expect("read")).expect("valid");
    // 8 users x 8 levels = 64 entries, within both limits: every one must be there.
    assert_eq!(table.len(), 64);
    for i in 0..PROCS {
        for level in 1..=8 {
            let user = format!("user{i}");
            assert!(
                table
                    .iter()
                    .any(|x| x.name == user && x.level == level && x.points == 10 + level),
                "missing {user} level {level}"
            );
        }
    }
}

#[test]
fn concurrent_threads_with_their_own_file_handles_lose_no_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("scores");
    std::thread::scope(|s| {
        for i in 0..8 {
            let path = &path;
            s.spawn(move || {
                for level in 1..=9 {
                    save_score(path, &format!("t{i}"), level, level, NOW).expect("save");
                }
            });
        }
    });
    let table = parse(&std::fs::read(&path).expect("read")).expect("valid");
    assert_eq!(table.len(), 72);
}

#[test]
fn show_scores_binary_warns_on_a_corrupt_file_and_still_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("scores");
    std::fs::write(&path, b"\xff\xfe not json").expect("write garbage");
    let out = Command::new(env!("CARGO_BIN_EXE_tetris"))
        .arg("-s")
        .env("TETRIS_SCORES", &path)
        .output()
        .expect("run tetris -s");
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("tetris: warning: ") && err.contains("corrupt"),
        "{err}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "\n\t\t\t    Tetris High Scores\n"
    );
}

#[test]
fn show_scores_binary_prints_a_saved_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("scores");
    save_score(&path, "ann", 4, 25, NOW).expect("save");
    let out = Command::new(env!("CARGO_BIN_EXE_tetris"))
        .args(["-s", "--scores-file"])
        .arg(&path)
        .output()
        .expect("run tetris -s");
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .ends_with("  1*    100  ann         (    25 on 4)  \n")
    );
}

#[test]
fn finish_game_at_a_terminal_saves_then_waits_for_return_before_the_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("scores");
    let mut out = Vec::new();
    // Bytes before the newline are swallowed by the wait, as BSD's getchar loop does.
    let mut typed: &[u8] = b"xy\nleft over";
    finish_game(&options_with(&path, 2), 3, &mut out, Some(&mut typed)).expect("finish");
    let text = String::from_utf8_lossy(&out).into_owned();
    let prompt = text
        .find(&format!("\n\n{}\n", scores::SEE_SCORES_PROMPT))
        .unwrap_or_else(|| panic!("no prompt after the score line: {text}"));
    let table = text.find("Tetris High Scores").expect("table printed");
    assert!(text.starts_with("Your score:  3 points  x  level 2  =  6\n"));
    assert!(prompt < table, "the prompt comes before the table: {text}");
    assert_eq!(typed, b"left over", "reading stops at the newline");
    // The score was saved before the wait.
    assert!(std::fs::read_to_string(&path).expect("saved").contains('3'));
}
