//! The event log: JSON lines of [`Event`]s, times in ms since the run's epoch (Unix ms
//! shared by every process of the run), written from any thread.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::check::Event;

pub(crate) struct EventLog {
    out: Mutex<BufWriter<File>>,
    epoch_ms: u64,
}

/// Now, in Unix ms.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl EventLog {
    pub(crate) fn create(path: &Path, epoch_ms: u64) -> std::io::Result<EventLog> {
        Ok(EventLog {
            out: Mutex::new(BufWriter::new(File::create(path)?)),
            epoch_ms,
        })
    }

    /// Ms since the epoch.
    pub(crate) fn now(&self) -> u64 {
        unix_ms().saturating_sub(self.epoch_ms)
    }

    pub(crate) fn write(&self, e: &Event) {
        let mut out = self
            .out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = serde_json::to_writer(&mut *out, e);
        let _ = out.write_all(b"\n");
    }

    pub(crate) fn flush(&self) -> std::io::Result<()> {
        self.out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .flush()
    }
}

/// Reads a log back; a line that does not parse (a process killed mid-write) is skipped.
pub(crate) fn read(path: &Path) -> std::io::Result<Vec<Event>> {
    let mut events = Vec::new();
    for line in BufReader::new(File::open(path)?).lines() {
        if let Ok(e) = serde_json::from_str(&line?) {
            events.push(e);
        }
    }
    Ok(events)
}
