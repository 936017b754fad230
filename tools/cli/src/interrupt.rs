//! Ctrl-C, SIGTERM and SIGHUP during training: the first signal asks the run to stop after its
//! current step (it writes its checkpoint when `--checkpoint` is given, and the command exits
//! with status 130); a second one quits at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use edgepatch::train::Cancel;

/// The exit status of a run stopped by a signal (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

static SIGNALS: AtomicUsize = AtomicUsize::new(0);
static CANCEL: OnceLock<Cancel> = OnceLock::new();

/// The process's cancel flag, raised by the first signal; the handler is installed on the first
/// call. When it cannot be installed (another handler owns the signals), training runs without
/// one and says so in the log.
pub fn cancel() -> Cancel {
    CANCEL
        .get_or_init(|| {
            let cancel = Cancel::default();
            let raised = cancel.clone();
            let installed = ctrlc::set_handler(move || {
                if SIGNALS.fetch_add(1, Ordering::SeqCst) == 0 {
                    raised.cancel();
                    eprintln!(
                        "\nedgepatch: interrupted: training stops after its current step (and writes its checkpoint \
                         when --checkpoint is given); interrupt again to quit at once"
                    );
                } else {
                    std::process::exit(EXIT_INTERRUPTED.into());
                }
            });
            if let Err(e) = installed {
                log::warn!("Ctrl-C will not stop training cleanly: {e}");
            }
            cancel
        })
        .clone()
}

/// Whether a signal arrived.
pub fn interrupted() -> bool {
    SIGNALS.load(Ordering::SeqCst) > 0
}
