//! The reactor's provided buffer ring: the kernel picks a free buffer for each receive
//! completion, so a connection owns no read buffer while it is idle. A buffer is given
//! back as soon as its bytes are handed to the session (which copies what it keeps).

use std::alloc::{self, Layout};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

/// The ring's memory alignment the kernel requires (a page).
const RING_ALIGN: usize = 4096;

pub(super) struct BufRing {
    /// `entries` descriptors, page-aligned, shared with the kernel.
    ring: *mut BufRingEntry,
    layout: Layout,
    entries: u16,
    /// Our copy of the tail: the next descriptor slot we fill.
    tail: u16,
    buf_size: usize,
    /// The buffers, back to back. Zeroed by the allocator's fresh pages, so memory is
    /// only backed once the kernel writes a buffer.
    memory: Vec<u8>,
    group: u16,
}

// SAFETY: the ring pointer is owned memory (allocated in `new`, freed in `Drop`) touched
// only by the reactor thread that owns this value and by the kernel; moving the value to
// that thread before it starts moves the ownership along.
unsafe impl Send for BufRing {}

impl std::fmt::Debug for BufRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufRing")
            .field("entries", &self.entries)
            .field("buf_size", &self.buf_size)
            .finish_non_exhaustive()
    }
}

impl BufRing {
    /// Registers `entries` (a power of two, at most 32 768) buffers of `buf_size` bytes as
    /// buffer group `group` of the ring behind `submitter`, all of them free.
    pub(super) fn new(
        submitter: &Submitter<'_>,
        entries: u16,
        buf_size: usize,
        group: u16,
    ) -> io::Result<BufRing> {
        if !entries.is_power_of_two() || entries > 32_768 || buf_size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "io_uring buffer ring: entries must be a power of two up to 32768, size > 0",
            ));
        }
        let bytes = usize::from(entries) * std::mem::size_of::<BufRingEntry>();
        let layout = Layout::from_size_align(bytes, RING_ALIGN)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size (entries >= 1).
        let ring = unsafe { alloc::alloc_zeroed(layout) }.cast::<BufRingEntry>();
        if ring.is_null() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let mut this = BufRing {
            ring,
            layout,
            entries,
            tail: 0,
            buf_size,
            memory: vec![0; usize::from(entries) * buf_size],
            group,
        };
        // SAFETY: `ring` points to `entries` zeroed, page-aligned descriptors that live
        // until `Drop`, which runs after the io_uring instance is gone (the driver
        // declares its ring before this buffer ring, so the ring is dropped first).
        unsafe { submitter.register_buf_ring_with_flags(ring as u64, entries, group, 0)? };
        for bid in 0..entries {
            this.put(bid);
        }
        this.publish();
        Ok(this)
    }

    /// The buffer group's ID, for receive requests.
    pub(super) fn group(&self) -> u16 {
        self.group
    }

    /// The first `len` bytes the kernel wrote into buffer `bid`.
    pub(super) fn data(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * self.buf_size;
        let len = len.min(self.buf_size);
        self.memory.get(start..start + len).unwrap_or_default()
    }

    /// Gives buffer `bid` back to the kernel.
    pub(super) fn recycle(&mut self, bid: u16) {
        if bid < self.entries {
            self.put(bid);
            self.publish();
        }
    }

    fn put(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (self.entries - 1));
        let addr = self.memory.as_ptr() as u64 + (usize::from(bid) * self.buf_size) as u64;
        // SAFETY: `slot` < `entries`, within the ring allocated in `new`; the kernel only
        // reads descriptors between its head and the published tail, and this slot lies
        // past the published tail until `publish`.
        let entry = unsafe { &mut *self.ring.add(slot) };
        entry.set_addr(addr);
        entry.set_len(self.buf_size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail lives in the first descriptor of the ring allocated in `new`,
        // a u16 the kernel reads with acquire semantics; it is 2-byte aligned.
        let tail = unsafe { &*BufRingEntry::tail(self.ring).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the io_uring instance that used it
        // was dropped before (field order in the driver), so the kernel holds no reference.
        unsafe { alloc::dealloc(self.ring.cast::<u8>(), self.layout) };
    }
}
