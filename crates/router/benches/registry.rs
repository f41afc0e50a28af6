//! The sharded, interned registry against one `RwLock<HashMap<String, Vec<ConnRef>>>` (the
//! obvious first version), for the push path (look up a user's connections) and for
//! connect/disconnect, alone and with a second thread churning.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use parking_lot::RwLock;
use reactor::ConnRef;
use router::Registry;

const USERS: u32 = 100_000;

fn conn(i: u32) -> ConnRef {
    ConnRef {
        reactor: (i % 2) as u16,
        index: i,
        generation: 1,
    }
}

#[derive(Default)]
struct Flat(RwLock<HashMap<String, Vec<ConnRef>>>);

impl Flat {
    fn add(&self, uid: &str, c: ConnRef) {
        self.0.write().entry(uid.to_owned()).or_default().push(c);
    }
    fn remove(&self, uid: &str, c: ConnRef) {
        let mut m = self.0.write();
        if let Some(v) = m.get_mut(uid) {
            v.retain(|x| *x != c);
            if v.is_empty() {
                m.remove(uid);
            }
        }
    }
    fn lookup(&self, uid: &str, out: &mut Vec<ConnRef>) -> bool {
        match self.0.read().get(uid) {
            Some(v) => {
                out.extend_from_slice(v);
                true
            }
            None => false,
        }
    }
}

trait Reg: Send + Sync + 'static {
    fn add(&self, uid: &str, c: ConnRef);
    fn remove(&self, uid: &str, c: ConnRef);
    fn lookup(&self, uid: &str, out: &mut Vec<ConnRef>) -> bool;
}
impl Reg for Registry {
    fn add(&self, uid: &str, c: ConnRef) {
        self.add_user(uid, c);
    }
    fn remove(&self, uid: &str, c: ConnRef) {
        self.remove_user(uid, c);
    }
    fn lookup(&self, uid: &str, out: &mut Vec<ConnRef>) -> bool {
        self.user_connections(uid, out)
    }
}
impl Reg for Flat {
    fn add(&self, uid: &str, c: ConnRef) {
        Flat::add(self, uid, c);
    }
    fn remove(&self, uid: &str, c: ConnRef) {
        Flat::remove(self, uid, c);
    }
    fn lookup(&self, uid: &str, out: &mut Vec<ConnRef>) -> bool {
        Flat::lookup(self, uid, out)
    }
}

fn filled<R: Reg + Default>(names: &[String]) -> Arc<R> {
    let r = Arc::new(R::default());
    for (i, n) in names.iter().enumerate() {
        r.add(n, conn(i as u32));
    }
    r
}

fn bench_pair<R: Reg + Default>(c: &mut Criterion, label: &str, names: &[String]) {
    let r = filled::<R>(names);
    c.bench_function(&format!("registry/lookup_1k/{label}"), |b| {
        let mut out = Vec::with_capacity(4);
        let mut i = 0usize;
        b.iter(|| {
            for _ in 0..1000 {
                out.clear();
                i = (i + 7919) % names.len();
                black_box(r.lookup(&names[i], &mut out));
            }
        });
    });
    c.bench_function(&format!("registry/connect_disconnect_1k/{label}"), |b| {
        let mut i = 0usize;
        b.iter(|| {
            for _ in 0..1000 {
                i = (i + 7919) % names.len();
                let extra = conn(USERS + i as u32);
                r.add(&names[i], extra);
                r.remove(&names[i], extra);
            }
        });
    });
    // Lookups while another thread connects and disconnects as fast as it can.
    c.bench_function(&format!("registry/lookup_1k_under_churn/{label}"), |b| {
        b.iter_custom(|iters| {
            let stop = Arc::new(AtomicBool::new(false));
            let churn = {
                let (r, stop, names) = (Arc::clone(&r), Arc::clone(&stop), names.to_vec());
                std::thread::spawn(move || {
                    let mut i = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        i = (i + 104_729) % names.len();
                        let extra = conn(2 * USERS + i as u32);
                        r.add(&names[i], extra);
                        r.remove(&names[i], extra);
                    }
                })
            };
            std::thread::sleep(Duration::from_millis(1));
            let mut out = Vec::with_capacity(4);
            let mut i = 0usize;
            let start = Instant::now();
            for _ in 0..iters {
                for _ in 0..1000 {
                    out.clear();
                    i = (i + 7919) % names.len();
                    black_box(r.lookup(&names[i], &mut out));
                }
            }
            let t = start.elapsed();
            stop.store(true, Ordering::Relaxed);
            churn.join().unwrap();
            t
        });
    });
}

fn registry(c: &mut Criterion) {
    let names: Vec<String> = (0..USERS).map(|i| format!("user-{i}")).collect();
    bench_pair::<Registry>(c, "sharded", &names);
    bench_pair::<Flat>(c, "single_rwlock", &names);
}

criterion_group!(benches, registry);
criterion_main!(benches);
