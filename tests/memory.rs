//! The memory budget of one session (DESIGN.md §6.12): whatever its peers send, one
//! session's heap stays under a fixed ceiling with the default limits.
//!
//! The session is the sans-I/O core, so it is driven here directly, event by event, with
//! a counting allocator around it: what the session keeps after each event is the heap it
//! holds. Hostile streams come from both sides, by hand (the four memory attacks of issue
//! 11, scaled up) and at random (proptest). Events carry at most one read of the shell
//! (`CONTROL_READ` bytes), as in the real gateway.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use ftpgate::config::Limits;
use ftpgate::fuzzing::{lab_params, SERVER};
use ftpgate::plan::{ChannelId, DataEvent, DataStats, Ports};
use ftpgate::session::{Action, Event, Session, SessionLimits, SessionParams, UpstreamKind};
use proptest::prelude::*;

/// The ceiling: one session's heap, whatever its peers send.
const BUDGET: isize = 1024 * 1024;

/// The shell reads the control connections in chunks of this size.
const CONTROL_READ: usize = 4096;

thread_local! {
    /// Bytes allocated and not yet freed by this thread.
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is a
// thread-local `Cell` without a destructor, so counting never allocates or reenters.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|l| l.set(l.get() + layout.size() as isize));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE.try_with(|l| l.set(l.get() - layout.size() as isize));
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        let _ = LIVE.try_with(|l| l.set(l.get() + new as isize - layout.size() as isize));
        System.realloc(ptr, layout, new)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.with(Cell::get)
}

/// A session with the default limits, and the heap it holds.
struct Metered {
    session: Session,
    now: Instant,
    /// Heap the session holds beyond what it held when created.
    held: isize,
    /// The most it ever held.
    peak: isize,
}

impl Metered {
    fn new(upstream: UpstreamKind) -> Self {
        let params = SessionParams {
            limits: SessionLimits::from_config(&Limits::default()),
            ..lab_params(upstream)
        };
        let now = Instant::now();
        let mut session = Session::new(params, now);
        let _ = session.start();
        Self {
            session,
            now,
            held: 0,
            peak: 0,
        }
    }

    /// Feeds the event `make` builds (inside the measured window, since the session
    /// consumes it); what it returns is performed before measuring: writes are dropped,
    /// and every channel opens (ports from the pool's point of view are free).
    fn feed(&mut self, make: impl FnOnce() -> Event) {
        let before = live();
        let mut next = Some(make());
        while let Some(event) = next.take() {
            for action in self.session.handle(self.now, event) {
                if let Action::OpenChannel { id, plan } = action {
                    let ports = Ports {
                        client: plan.client.accepts().then_some(50000),
                        server: plan.server.accepts().then_some(50001),
                        kernel: false,
                    };
                    next = Some(Event::ChannelOpened {
                        id,
                        result: Ok(ports),
                    });
                }
            }
        }
        self.held += live() - before;
        self.peak = self.peak.max(self.held);
        assert!(
            self.held <= BUDGET,
            "the session holds {} bytes, over its budget of {BUDGET}",
            self.held
        );
    }

    /// Feeds bytes from one side in reads of at most [`CONTROL_READ`].
    fn stream(&mut self, client: bool, bytes: &[u8]) {
        for chunk in bytes.chunks(CONTROL_READ) {
            self.feed(|| {
                if client {
                    Event::ClientData(chunk.to_vec())
                } else {
                    Event::ServerData(chunk.to_vec())
                }
            });
        }
    }

    fn greeted(upstream: UpstreamKind) -> Self {
        let mut m = Self::new(upstream);
        if upstream == UpstreamKind::Fixed {
            m.feed(|| Event::UpstreamConnected(SERVER.parse().unwrap()));
            m.stream(false, b"220 hi\r\n");
        }
        m
    }

    fn is_closed(&self) -> bool {
        self.session.is_closed()
    }
}

/// Repeats `unit` until it makes `total` bytes (roughly).
fn flood(unit: &[u8], total: usize) -> Vec<u8> {
    unit.repeat(total / unit.len())
}

#[test]
fn a_multi_line_reply_that_never_ends() {
    let mut m = Metered::greeted(UpstreamKind::Fixed);
    m.stream(true, b"HELP\r\n");
    m.stream(false, b"214-\r\n");
    m.stream(false, &flood(b"214-a line of help text\r\n", 64 << 20));
    assert!(m.is_closed(), "the session ends at the bound");
    println!("never-ending reply: peak {} bytes", m.peak);
}

#[test]
fn replies_while_a_226_waits_for_its_data() {
    let mut m = Metered::greeted(UpstreamKind::Fixed);
    m.stream(true, b"PASV\r\n");
    m.stream(false, b"227 =192,0,2,10,19,137\r\n");
    m.stream(true, b"RETR f\r\n");
    m.feed(|| Event::Data(1, DataEvent::Established));
    m.stream(false, b"150 ok\r\n226 done\r\n");
    m.stream(
        false,
        &flood(b"200 chatter while the data is open\r\n", 32 << 20),
    );
    assert!(m.is_closed());
    println!("reply queue: peak {} bytes", m.peak);
}

#[test]
fn commands_answered_here_behind_an_outstanding_retr() {
    let mut m = Metered::greeted(UpstreamKind::Fixed);
    m.stream(true, b"RETR big\r\n");
    m.stream(true, &flood(b"PORT\r\n", 16 << 20));
    assert!(m.is_closed());
    println!("local replies: peak {} bytes", m.peak);
}

#[test]
fn commands_pipelined_to_a_server_that_never_answers() {
    let mut m = Metered::new(UpstreamKind::Explicit);
    m.stream(true, b"USER a@ftp.example.org\r\n");
    m.feed(|| Event::UpstreamConnected(SERVER.parse().unwrap()));
    m.stream(false, b"220 hi\r\n");
    m.stream(true, &flood(b"NOOP\r\n", 32 << 20));
    assert!(m.is_closed());
    println!("pipelining: peak {} bytes", m.peak);
}

#[test]
fn the_longest_lines_on_both_sides_fit() {
    // Not an attack that ends the session: long lines within the limits, on and on.
    let mut m = Metered::greeted(UpstreamKind::Fixed);
    let long_command = [&b"SITE "[..], &[b'x'; 2000], b"\r\n"].concat();
    let long_reply = [&b"200 "[..], &[b'y'; 60_000], b"\r\n"].concat();
    for _ in 0..50 {
        m.stream(true, &long_command);
        m.stream(false, &long_reply);
    }
    assert!(!m.is_closed());
    println!("long lines: peak {} bytes", m.peak);
}

/// One event of a hostile exchange.
#[derive(Debug, Clone)]
enum Step {
    Client(Vec<u8>),
    Server(Vec<u8>),
    Data(ChannelId, u8),
    Wait(u16),
}

fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Lines ftpgate answers itself, pipelined.
        (1usize..40_000).prop_map(|n| b"PORT\r\n".repeat(n)),
        (1usize..40_000).prop_map(|n| b"NOOP\r\n".repeat(n)),
        (1usize..50).prop_map(|n| b"PASV\r\nRETR f\r\n".repeat(n)),
        // Multi-line openers and long inner lines.
        (0usize..2000).prop_map(|n| [&b"211-"[..], &vec![b'z'; n], b"\r\n"].concat()),
        (1usize..500).prop_map(|n| b"211-\r\n".repeat(n)),
        (1usize..40_000).prop_map(|n| b"200 ok\r\n".repeat(n)),
        Just(b"150 here\r\n".to_vec()),
        Just(b"226 done\r\n".to_vec()),
        Just(b"227 Entering Passive Mode (192,0,2,10,19,137)\r\n".to_vec()),
        Just(b"229 Entering Extended Passive Mode (|||5000|)\r\n".to_vec()),
        // Unterminated data and arbitrary bytes.
        (0usize..3000).prop_map(|n| vec![b'A'; n]),
        proptest::collection::vec(any::<u8>(), 0..512),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        hostile_bytes().prop_map(Step::Client),
        hostile_bytes().prop_map(Step::Server),
        (1u64..6, 0u8..4).prop_map(|(id, e)| Step::Data(id, e)),
        any::<u16>().prop_map(Step::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    #[test]
    fn any_exchange_stays_within_the_budget(
        explicit: bool,
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let mut m = if explicit {
            let mut m = Metered::new(UpstreamKind::Explicit);
            m.stream(true, b"USER a@ftp.example.org\r\n");
            m.feed(|| Event::UpstreamConnected(SERVER.parse().unwrap()));
            m.stream(false, b"220 hi\r\n");
            m
        } else {
            Metered::greeted(UpstreamKind::Fixed)
        };
        for step in steps {
            match step {
                Step::Client(b) => m.stream(true, &b),
                Step::Server(b) => m.stream(false, &b),
                Step::Data(id, e) => m.feed(|| Event::Data(id, match e {
                    0 => DataEvent::Established,
                    1 => DataEvent::ServerToClientDone,
                    2 => DataEvent::Finished(DataStats { to_server: 1, to_client: 2, seconds: 0.1, counted: true }),
                    _ => DataEvent::Failed("gone".into()),
                })),
                Step::Wait(s) => {
                    m.now += Duration::from_secs(u64::from(s));
                    if m.session.poll_timeout().is_some_and(|t| t <= m.now) {
                        m.feed(|| Event::Timeout);
                    }
                }
            }
        }
    }
}

#[test]
fn the_counting_allocator_sees_what_a_session_holds() {
    // Without this the other tests could pass by measuring nothing.
    let mut m = Metered::greeted(UpstreamKind::Fixed);
    let before = m.held;
    m.stream(true, b"PASV\r\n");
    m.stream(false, b"227 =192,0,2,10,19,137\r\n");
    m.stream(true, b"RETR f\r\n");
    m.feed(|| Event::Data(1, DataEvent::Established));
    m.stream(false, b"150 ok\r\n226 done\r\n");
    m.stream(false, &[&b"200 "[..], &[b'q'; 50_000], b"\r\n"].concat());
    assert!(m.held - before > 50_000, "held {}", m.held - before);
    // Once the data is delivered the queue drains and the memory is given back.
    m.feed(|| Event::Data(1, DataEvent::ServerToClientDone));
    assert!(m.held - before < 10_000, "held {}", m.held - before);
}
