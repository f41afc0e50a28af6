//! `floor`: what one `send()` of a small frame on a loopback TCP socket costs this
//! machine, the floor under any gateway's CPU per delivered message. One thread sends N
//! frames, one `write` each, round robin over K connections (K > 1 touches socket state
//! the way a fan-out does, cold); another thread reads them all back through epoll. Each
//! thread's CPU time comes from `/proc/thread-self`, so neither includes the other.
//!
//! On loopback the sender's `write` also runs the receiving side of TCP (the segment is
//! queued on the peer socket and the reader woken inside the same call), so the sender's
//! figure is the whole kernel path up to the receive queue; the reader adds the copy out
//! and its wake-ups.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mio::{Events, Interest, Poll, Token};

use crate::{adapter, procfs};

/// Arguments of the `floor` scenario.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Frames to send.
    #[arg(long, default_value_t = 200_000)]
    sends: u64,
    /// Frame size in bytes (a pushed message with its WebSocket header is about 60).
    #[arg(long, default_value_t = 60)]
    size: usize,
    /// Connections the frames are spread over, round robin.
    #[arg(long, default_value_t = 1)]
    sockets: usize,
    /// Stop sending after this many seconds even if not all frames went.
    #[arg(long, default_value_t = 20.0)]
    max_secs: f64,
}

/// CPU time of the calling thread: (user, system, on-CPU total), microseconds. The total
/// comes from `schedstat` (nanosecond accounting) where the kernel has it, else user +
/// system (10 ms ticks).
fn thread_cpu() -> (u64, u64, u64) {
    let (user, sys) = procfs::stat_user_sys_micros("/proc/thread-self/stat").unwrap_or((0, 0));
    let total = std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(user + sys, |ns| ns / 1000);
    (user, sys, total)
}

/// The reader's side: CPU and how many reads it took.
#[derive(Debug, Clone, Copy)]
struct ReadSide {
    cpu_us: u64,
    bytes: u64,
    reads: u64,
}

pub(crate) fn run(args: &Args, fd_limit: u64) -> anyhow::Result<()> {
    let k = args.sockets.max(1);
    adapter::check_fds(2 * k, fd_limit)?;
    let size = args.size.max(2);
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback listener")?;
    let addr: SocketAddr = listener.local_addr()?;
    let mut senders = Vec::with_capacity(k);
    let mut readers = Vec::with_capacity(k);
    for _ in 0..k {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let (r, _) = listener.accept()?;
        r.set_nonblocking(true)?;
        senders.push(s);
        readers.push(mio::net::TcpStream::from_std(r));
    }
    // Bytes the reader must see before it stops; set once the sender knows.
    let expected = Arc::new(AtomicU64::new(u64::MAX));
    let deadline = Instant::now() + Duration::from_secs_f64(args.max_secs + 10.0);
    let reader = {
        let expected = Arc::clone(&expected);
        std::thread::spawn(move || read_all(readers, &expected, deadline))
    };

    // A server text frame: 0x81, length, payload.
    let mut frame = vec![b'x'; size];
    frame[0] = 0x81;
    frame[1] = u8::try_from(size - 2).unwrap_or(125).min(125);
    let stop_at = Instant::now() + Duration::from_secs_f64(args.max_secs);
    let (u0, s0, t0) = thread_cpu();
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < args.sends {
        // Checking the clock every 1024 sends keeps it out of the figure.
        if sent % 1024 == 0 && Instant::now() > stop_at {
            break;
        }
        senders[(sent % k as u64) as usize]
            .write_all(&frame)
            .context("send on loopback")?;
        sent += 1;
    }
    let wall = start.elapsed();
    let (u1, s1, t1) = thread_cpu();
    expected.store(sent * size as u64, Ordering::Release);
    let read = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    if read.bytes < sent * size as u64 {
        bail!(
            "the reader saw {} of {} bytes",
            read.bytes,
            sent * size as u64
        );
    }

    let per = |us: u64| us as f64 / sent.max(1) as f64;
    let send_cpu = per(t1.saturating_sub(t0));
    let send_user = per(u1.saturating_sub(u0));
    let send_sys = per(s1.saturating_sub(s0));
    let send_wall = wall.as_secs_f64() * 1e6 / sent.max(1) as f64;
    let read_cpu = per(read.cpu_us);
    println!(
        "floor: {sent} sends of {size} B over {k} loopback connection(s) in {:.2}s; {:.1} frames per read",
        wall.as_secs_f64(),
        sent as f64 / read.reads.max(1) as f64
    );
    println!(
        "per send: sender {send_cpu:.3} µs CPU ({send_user:.3} user, {send_sys:.3} system; {send_wall:.3} µs wall), reader {read_cpu:.3} µs CPU, both {:.3} µs",
        send_cpu + read_cpu
    );
    let json = serde_json::json!({
        "scenario": "floor",
        "client_fd_limit": fd_limit,
        "sends": sent,
        "size": size,
        "sockets": k,
        "frames_per_read": sent as f64 / read.reads.max(1) as f64,
        "sender_cpu_us_per_send": send_cpu,
        "sender_user_us_per_send": send_user,
        "sender_sys_us_per_send": send_sys,
        "sender_wall_us_per_send": send_wall,
        "reader_cpu_us_per_send": read_cpu,
        "total_cpu_us_per_send": send_cpu + read_cpu,
    });
    println!("{json}");
    Ok(())
}

/// Reads every connection until `expected` bytes arrived in all or `deadline` passes.
fn read_all(
    mut conns: Vec<mio::net::TcpStream>,
    expected: &AtomicU64,
    deadline: Instant,
) -> anyhow::Result<ReadSide> {
    let mut poll = Poll::new()?;
    for (i, c) in conns.iter_mut().enumerate() {
        poll.registry().register(c, Token(i), Interest::READABLE)?;
    }
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let (_, _, t0) = thread_cpu();
    let (mut bytes, mut reads) = (0u64, 0u64);
    while bytes < expected.load(Ordering::Acquire) && Instant::now() < deadline {
        poll.poll(&mut events, Some(Duration::from_millis(10)))?;
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            loop {
                match c.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        bytes += n as u64;
                        reads += 1;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    let (_, _, t1) = thread_cpu();
    Ok(ReadSide {
        cpu_us: t1.saturating_sub(t0),
        bytes,
        reads,
    })
}
