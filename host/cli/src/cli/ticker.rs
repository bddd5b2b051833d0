//! On a terminal, a step that has printed nothing for a while gets a line saying it is
//! still running and for how long (a long `pip install` or clone otherwise looks hung).
//! The line is rewritten in place and cleared before anything else is printed. Not on
//! a pipe or a file: logs stay exactly the lines the steps wrote.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Quiet this long before the line appears.
const QUIET: Duration = Duration::from_secs(3);

#[derive(Default)]
struct State {
    /// The running step and when it started.
    step: Option<(String, Instant)>,
    /// When something was last printed.
    last: Option<Instant>,
    /// Whether the line is on the screen.
    shown: bool,
}

static STATE: Mutex<State> = Mutex::new(State {
    step: None,
    last: None,
    shown: false,
});

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// The line to show at `now`, if any: only after [`QUIET`] without output.
fn line(step: &str, started: Instant, last: Instant, now: Instant) -> Option<String> {
    if now.duration_since(last) < QUIET {
        return None;
    }
    let secs = now.duration_since(started).as_secs();
    let dots = if super::marks().start == "▶" {
        "…"
    } else {
        "..."
    };
    Some(format!(
        "  {dots} {step} is running ({secs} s, no output for {} s)",
        now.duration_since(last).as_secs()
    ))
}

/// A step starts (call before printing its first line).
pub(crate) fn start(step: &str) {
    let now = Instant::now();
    {
        let mut s = state();
        s.step = Some((step.to_string(), now));
        s.last = Some(now);
    }
    ensure_thread();
}

/// The step ended (call before printing its last line).
pub(crate) fn stop() {
    let mut s = state();
    s.step = None;
    clear(&mut s);
}

/// Something is about to be printed: take the line off the screen first.
pub(crate) fn output() {
    let mut s = state();
    s.last = Some(Instant::now());
    clear(&mut s);
}

fn clear(s: &mut State) {
    if s.shown {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K");
        let _ = err.flush();
        s.shown = false;
    }
}

/// One thread per process redraws the line each half second, on a terminal only.
fn ensure_thread() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    if !std::io::stderr().is_terminal() {
        return;
    }
    STARTED.call_once(|| {
        std::thread::spawn(|| {
            loop {
                std::thread::sleep(Duration::from_millis(500));
                let mut s = state();
                let (Some((step, started)), Some(last)) = (s.step.clone(), s.last) else {
                    continue;
                };
                if let Some(text) = line(&step, started, last, Instant::now()) {
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "\r{text}\x1b[K");
                    let _ = err.flush();
                    s.shown = true;
                }
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_appears_after_a_quiet_while() {
        let t0 = Instant::now();
        assert_eq!(line("pip", t0, t0, t0 + Duration::from_secs(2)), None);
        let shown = line(
            "pip",
            t0,
            t0 + Duration::from_secs(1),
            t0 + Duration::from_secs(7),
        )
        .unwrap();
        assert!(
            shown.ends_with("pip is running (7 s, no output for 6 s)"),
            "{shown}"
        );
    }
}
