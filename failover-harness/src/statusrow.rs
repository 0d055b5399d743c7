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

/// The row's text for `view`, cut or padded to `cols - 1` characters (the last cell stays
/// unwritten, so no terminal ever wraps or scrolls). Wide terminals get words, narrow ones
/// (80 columns) the short form with the axe key and the failovers first.
pub fn text(view: &View, cols: u16) -> String {
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
    let stall = format!(
        "stall {} p99 {}",
        micros(s.stall_last_us),
        micros(s.stall_p99_us)
    );
    let long = format!(
        " {AXE_NAME} axe | failovers {}{rto} | primary {} | spare {spare} | epoch {} | \
         checkpoints {} | {stall} | lag {}{}{state}",
        view.failovers,
        view.primary_pid,
        view.epoch,
        s.checkpoints,
        s.lag(),
        if state.is_empty() { "" } else { " | " },
    );
    let width = usize::from(cols.saturating_sub(1));
    let line = if long.chars().count() <= width {
        long
    } else {
        format!(
            "{}{AXE_NAME} axe|failovers {}{rto}|P {}|S {spare}|ep {}|ckpt {}|{stall}|lag {}",
            if state.is_empty() {
                String::new()
            } else {
                format!("{state}|")
            },
            view.failovers,
            view.primary_pid,
            view.epoch,
            s.checkpoints,
            s.lag(),
        )
    };
    let mut out: String = line.chars().take(width).collect();
    let len = out.chars().count();
    out.extend(std::iter::repeat_n(' ', width - len));
    out
}

/// The bytes that draw the row on row `rows` (1-based) and put the cursor and attributes back.
pub fn draw(view: &View, rows: u16, cols: u16) -> Vec<u8> {
    format!(
        "\x1b7\x1b[{rows};1H\x1b[0;7m{}\x1b[0m\x1b8",
        text(view, cols)
    )
    .into_bytes()
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
        };
        let wide = text(&view, 200);
        assert_eq!(wide.chars().count(), 199);
        assert_eq!(
            wide.trim_end(),
            " ^X axe | failovers 2 (1.2ms) | primary 101 | spare 202 | epoch 3 | checkpoints 77 \
             | stall 2.2us p99 1.4ms | lag 1"
        );
        let narrow = text(&view, 80);
        assert_eq!(narrow.chars().count(), 79);
        assert_eq!(
            narrow.trim_end(),
            "^X axe|failovers 2 (1.2ms)|P 101|S 202|ep 3|ckpt 77|stall 2.2us p99 1.4ms|lag 1"
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
}
