//! Decode of small masked client text frames and encode of server frames, with
//! tungstenite (the most used Rust WebSocket library) doing the same work in the same run.
//! `cargo bench -p protocol --bench frames`

#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

use std::hint::black_box;
use std::io::{Cursor, Read, Write};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use protocol::frame::{client_message, server_frame, FrameBuilder};
use protocol::{Decoder, DecoderConfig, Message, OpCode};

const FRAMES: usize = 1000;

fn small_text_frames() -> (Vec<u8>, Vec<String>) {
    let mut wire = Vec::new();
    let mut texts = Vec::new();
    for i in 0..FRAMES {
        let len = 20 + (i * 37) % 100; // 20..120 bytes
        let text: String = format!(
            "{{\"type\":\"send\",\"to\":[\"u{i}\"],\"data\":\"{}\"}}",
            "x".repeat(len)
        )
        .chars()
        .take(len.max(30))
        .collect();
        wire.extend_from_slice(&client_message(
            OpCode::Text,
            text.as_bytes(),
            [1, 2, 3, (i % 251) as u8],
        ));
        texts.push(text);
    }
    (wire, texts)
}

/// A read/write stream over a fixed buffer, for tungstenite.
struct Replay {
    input: Cursor<Vec<u8>>,
}

impl Read for Replay {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.input.read(buf)? {
            0 => Err(std::io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }
}

impl Write for Replay {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn decode(c: &mut Criterion) {
    let (wire, _) = small_text_frames();
    let mut group = c.benchmark_group("decode_small_text");
    group.throughput(Throughput::Elements(FRAMES as u64));
    let cfg = DecoderConfig::server();
    group.bench_function("pushgate", |b| {
        b.iter_batched(
            || BytesMut::from(&wire[..]),
            |mut buf| {
                let mut dec = Decoder::new();
                let mut n = 0;
                while let Ok(Some(m)) = dec.decode(&mut buf, &cfg, None) {
                    if let Message::Text(t) = m {
                        n += t.len();
                    }
                }
                black_box(n)
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.bench_function("tungstenite", |b| {
        b.iter_batched(
            || Replay {
                input: Cursor::new(wire.clone()),
            },
            |stream| {
                let mut ws = tungstenite::WebSocket::from_raw_socket(
                    stream,
                    tungstenite::protocol::Role::Server,
                    None,
                );
                let mut n = 0;
                while let Ok(m) = ws.read() {
                    if let tungstenite::Message::Text(t) = m {
                        n += t.len();
                    }
                }
                black_box(n)
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let payload = br#"{"type":"msg","from":"svc","data":{"text":"hello there, this is a push"}}"#;
    let mut group = c.benchmark_group("encode_server_text_76B");
    group.throughput(Throughput::Elements(1));
    group.bench_function("pushgate_server_frame", |b| {
        b.iter(|| black_box(server_frame(OpCode::Text, black_box(payload))))
    });
    group.bench_function("pushgate_frame_builder", |b| {
        b.iter(|| {
            let mut f = FrameBuilder::with_capacity(payload.len());
            f.extend_from_slice(black_box(payload));
            black_box(f.finish(OpCode::Text, false))
        })
    });
    group.bench_function("tungstenite", |b| {
        b.iter(|| {
            let frame = tungstenite::protocol::frame::Frame::message(
                black_box(&payload[..]).to_vec(),
                tungstenite::protocol::frame::coding::OpCode::Data(
                    tungstenite::protocol::frame::coding::Data::Text,
                ),
                true,
            );
            let mut out = Vec::with_capacity(frame.len());
            frame.format(&mut out).ok();
            black_box(out)
        })
    });
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
