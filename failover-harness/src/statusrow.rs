//! The status row: the last line of the user's terminal, below the game, in reverse video.

use crate::engine::View;

/// The key that axes the primary (not a Tetris key): Ctrl-X.
pub const AXE_KEY: u8 = 0x18;
/// How the axe key is written on the row.
pub const AXE_NAME: &str = "^X";

/// A duration in microseconds, short: `2.1us`, `140us`, `1.4ms`.
fn micros(us: f64) -> String {
    if us < 100.0 {
        format!("{us:.1}us")
    } else if us < 1000.0 {
        format!("{us:.0}us")
    } else {
        format!("{:.1}ms", us / 1000.0)
    }
}

/// One field of the row: its text in the wide and the short form, whether it is joined to
/// the field before it with a space (the stall's p99) rather than a bar, and its rank (the
/// fields of the highest rank are dropped first when the row does not fit).
struct Field {
    wide: String,
    short: String,
    joined: bool,
    rank: u8,
}

fn field(wide: String, short: String, rank: u8) -> Field {
    Field {
        wide,
        short,
        joined: false,
        rank,
    }
}

/// The fields in the order shown.
fn fields(view: &View) -> Vec<Field> {
    let s = &view.stats;
    let rto = view
        .last_rto_ms
        .map_or_else(String::new, |ms| format!(" ({ms:.1}ms)"));
    let syncing = if view.spare_synced { "" } else { " syncing" };
    let spare = match view.spare_pid {
        0 => "-".to_owned(),
        pid => format!("{pid}{syncing}"),
    };
    let state = if view.failing_over {
        "FAILING OVER"
    } else if view.axe_pending {
        "axe waits for the spare"
    } else {
        ""
    };
    let mut out = Vec::new();
    if !state.is_empty() {
        out.push(field(state.to_owned(), state.to_owned(), 0));
    }
    out.push(field(
        format!("{AXE_NAME} axe"),
        format!("{AXE_NAME} axe"),
        1,
    ));
    let failovers = format!("failovers {}{rto}", view.failovers);
    out.push(field(failovers.clone(), failovers, 2));
    out.push(field(
        format!("primary {}", view.primary_pid),
        format!("P {}", view.primary_pid),
        3,
    ));
    out.push(field(format!("spare {spare}"), format!("S {spare}"), 3));
    out.push(field(
        format!("epoch {}", view.epoch),
        format!("ep {}", view.epoch),
        4,
    ));
    if view.spare_deaths > 0 {
        out.push(field(
            format!("spare deaths {}", view.spare_deaths),
            format!("sd {}", view.spare_deaths),
            5,
        ));
    }
    out.push(field(
        format!("checkpoints {}", s.checkpoints),
        format!("ckpt {}", s.checkpoints),
        6,
    ));
    out.push(field(
        format!("lag {}", s.lag()),
        format!("lag {}", s.lag()),
        5,
    ));
    // The game's steady-state stall: a full checkpoint (a new spare's first, after a start
    // or a failover) is not a move, and the game leaves it out of both figures.
    let stall = format!("stall {}", micros(s.stall_last_us));
    out.push(field(stall.clone(), stall, 7));
    let p99 = format!("p99 {}", micros(s.stall_p99_us));
    out.push(Field {
        joined: true,
        ..field(p99.clone(), p99, 8)
    });
    out
}

/// The fields joined, wide (` a | b `) or short (`a|b`).
fn join(fields: &[Field], wide: bool) -> String {
    let mut line = String::new();
    for (i, f) in fields.iter().enumerate() {
        let sep = match (i, f.joined, wide) {
            (0, _, true) => " ",
            (0, _, false) => "",
            (_, true, _) => " ",
            (_, false, true) => " | ",
            (_, false, false) => "|",
        };
        line.push_str(sep);
        line.push_str(if wide { &f.wide } else { &f.short });
    }
    line
}

/// The row's text for `view`, fitted to `cols - 1` characters (the last cell stays
/// unwritten, so no terminal ever wraps or scrolls) and padded to them. Wide terminals get
/// words; narrower ones the short form, and when even that does not fit, the least
/// important fields go first: the stall's p99, the stall, the checkpoints, the lag and
/// the spare deaths, the epoch, the pids; the axe key and the failovers stay longest.
pub fn text(view: &View, cols: u16) -> String {
    let width = usize::from(cols.saturating_sub(1));
    let mut fields = fields(view);
    let wide = join(&fields, true);
    let line = if wide.chars().count() <= width {
        wide
    } else {
        loop {
            let line = join(&fields, false);
            if line.chars().count() <= width || fields.len() <= 1 {
                break line;
            }
            let worst = fields.iter().map(|f| f.rank).max().unwrap_or(0);
            // The last of the worst rank: of two equals, the one further right goes.
            if let Some(i) = fields.iter().rposition(|f| f.rank == worst) {
                fields.remove(i);
            }
        }
    };
    let mut out: String = line.chars().take(width).collect();
    let len = out.chars().count();
    out.extend(std::iter::repeat_n(' ', width - len));
    out
}

/// The bytes that draw the row on row `rows` (1-based) and put the cursor and attributes back.
pub fn draw(view: &View, rows: u16, cols: u16) -> Vec<u8> {
    draw_text(&text(view, cols), rows, cols)
}

/// The bytes that draw `line` as the status row on row `rows` (1-based), cut to `cols - 1`
/// characters and padded to them, and put the cursor and attributes back (the cluster
/// client's row has other fields than [`text`]'s).
pub fn draw_text(line: &str, rows: u16, cols: u16) -> Vec<u8> {
    let width = usize::from(cols.saturating_sub(1));
    let mut out: String = line.chars().take(width).collect();
    let len = out.chars().count();
    out.extend(std::iter::repeat_n(' ', width - len));
    format!("\x1b7\x1b[{rows};1H\x1b[0;7m{out}\x1b[0m\x1b8").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Stats;

    #[test]
    fn the_row_shows_pids_epoch_checkpoints_stalls_lag_failovers_and_the_axe_key() {
        let view = View {
            primary_pid: 101,
            spare_pid: 202,
            spare_synced: true,
            epoch: 3,
            failovers: 2,
            stats: Stats {
                checkpoints: 77,
                stall_last_us: 2.25,
                stall_p99_us: 1400.0,
                last_written: 77,
                acked: 76,
                ..Stats::default()
            },
            last_rto_ms: Some(1.25),
            failing_over: false,
            axe_pending: false,
            spare_deaths: 0,
        };
        let wide = text(&view, 200);
        assert_eq!(wide.chars().count(), 199);
        assert_eq!(
            wide.trim_end(),
            " ^X axe | failovers 2 (1.2ms) | primary 101 | spare 202 | epoch 3 | checkpoints 77 \
             | lag 1 | stall 2.2us p99 1.4ms"
        );
        let narrow = text(&view, 80);
        assert_eq!(narrow.chars().count(), 79);
        assert_eq!(
            narrow.trim_end(),
            "^X axe|failovers 2 (1.2ms)|P 101|S 202|ep 3|ckpt 77|lag 1|stall 2.2us p99 1.4ms"
        );
        let unsynced = View {
            spare_synced: false,
            axe_pending: true,
            ..view
        };
        let t = text(&unsynced, 80);
        assert!(t.starts_with("axe waits for the spare|^X axe|"), "{t}");
        assert!(t.contains("|S 202 syncing|"), "{t}");
        assert!(text(&unsynced, 250).contains("spare 202 syncing"));
        assert_eq!(text(&view, 20).chars().count(), 19);
        let d = String::from_utf8(draw(&view, 24, 80)).unwrap();
        assert!(d.starts_with("\x1b7\x1b[24;1H\x1b[0;7m^X axe") && d.ends_with("\x1b[0m\x1b8"));
    }

    #[test]
    fn after_failovers_the_row_fits_80_columns_dropping_the_least_important_fields_first() {
        let view = View {
            primary_pid: 4_194_301,
            spare_pid: 4_194_302,
            spare_synced: true,
            epoch: 13,
            failovers: 12,
            spare_deaths: 3,
            stats: Stats {
                checkpoints: 123_456,
                stall_last_us: 2.25,
                stall_p99_us: 7.9,
                last_written: 9,
                acked: 7,
                ..Stats::default()
            },
            last_rto_ms: Some(12.25),
            failing_over: false,
            axe_pending: false,
        };
        let row = text(&view, 80);
        assert_eq!(row.chars().count(), 79);
        // Nothing cut in the middle: the fields kept are whole, p99 and stall dropped first.
        assert_eq!(
            row.trim_end(),
            "^X axe|failovers 12 (12.2ms)|P 4194301|S 4194302|ep 13|sd 3|ckpt 123456|lag 2"
        );
        let wider = text(&view, 100);
        assert!(wider.contains("|lag 2|stall 2.2us p99 7.9us"), "{wider}");
        let narrow = text(
            &View {
                failing_over: true,
                ..view
            },
            44,
        );
        assert_eq!(
            narrow.trim_end(),
            "FAILING OVER|^X axe|failovers 12 (12.2ms)"
        );
    }

    #[test]
    fn the_readme_example_row_fits_80_columns() {
        let readme = include_str!("../../README.md");
        let row = readme
            .lines()
            .find(|l| l.starts_with("^X axe|"))
            .unwrap_or_default();
        assert!(!row.is_empty(), "README shows a status row");
        assert!(
            row.chars().count() <= 79,
            "{} chars: {row}",
            row.chars().count()
        );
    }
}
