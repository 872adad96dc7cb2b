//! The kernel data path (`relay: kernel`): ftpgate keeps the control channel and leaves
//! each data connection to the kernel, as OpenBSD's ftp-proxy leaves it to pf.
//!
//! ftpgate's table `inet ftpgate` (installed at start-up, replacing a stale one, removed
//! at exit) holds, per address family, three timed sets that ftpgate fills per transfer
//! once the control channel passed every address rule:
//! - `once`: the expected peer and the announced port, deleted by the first SYN that
//!   matches: one connection per announcement (like pf's `max-states 1`);
//! - `dnat`: expected peer . destination . announced port → the other end's address and
//!   port; a connection from anyone else, or after the timeout, matches nothing;
//! - `snat`: peer . other end . its port → the source that end must see (the address
//!   ftpgate's own relay would use), where the role needs one.
//!
//! The connection is marked (`kernel.mark`), so that the operator's forward chain accepts
//! it with one rule; its SYN, FIN and RST packets go to NFLOG, from which ftpgate learns
//! when it started and ended, and its exact byte counts (from TCP sequence numbers; the
//! conntrack byte counters only tell how many times the 32-bit sequence wrapped).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::config::KernelConfig;
use crate::plan::{ChannelId, DataEvent, DataPlan, DataStats, DialSource, Endpoint};
use crate::sys::conntrack::{Conntrack, Counter};
use crate::sys::nflog::{LoggedPacket, Nflog};
use crate::sys::nftables::{self, concat, Element, Field, Nftables, TABLE};

/// Why the kernel data path could not start.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// `nft` could not load ftpgate's table.
    #[error("relay: kernel cannot install its nftables table `inet {TABLE}` ({0}); it needs nftables and CAP_NET_ADMIN")]
    Table(String),
    /// The netlink sockets could not be opened.
    #[error(
        "relay: kernel cannot reach nf_tables and NFLOG over netlink: {0} (it needs CAP_NET_ADMIN)"
    )]
    Netlink(io::Error),
}

/// `ENOENT`: a table, set or element that does not exist.
const ENOENT: i32 = 2;

/// The ruleset of ftpgate's table for `cfg`, as `nft -f` reads it.
pub fn ruleset(cfg: &KernelConfig) -> String {
    let (mark, mask, group) = (cfg.mark, KernelConfig::MASK, cfg.log_group);
    // The operator's own bits of the mark stay as they were.
    let keep = !mask;
    let mut sets = String::new();
    let mut dnat = String::new();
    let mut snat = String::new();
    for (v, ip, addr) in [("4", "ip", "ipv4_addr"), ("6", "ip6", "ipv6_addr")] {
        sets += &format!(
            "\tset once{v} {{ type {addr} . inet_service; flags timeout; }}\n\
             \tmap dnat{v} {{ type {addr} . {addr} . inet_service : {addr} . inet_service; flags timeout; }}\n\
             \tmap snat{v} {{ type {addr} . {addr} . inet_service : {addr}; flags timeout; }}\n"
        );
        dnat += &format!(
            "\t\tmeta l4proto tcp {ip} saddr . tcp dport @once{v} {ip} saddr . {ip} daddr . tcp dport @dnat{v} \
             delete @once{v} {{ {ip} saddr . tcp dport }} ct mark set ct mark and {keep:#x} or {mark:#x} \
             dnat {ip} to {ip} saddr . {ip} daddr . tcp dport map @dnat{v}\n"
        );
        snat += &format!(
            "\t\tct mark and {mask:#x} == {mark:#x} meta l4proto tcp {ip} saddr . {ip} daddr . tcp dport @snat{v} \
             snat {ip} to {ip} saddr . {ip} daddr . tcp dport map @snat{v}\n"
        );
    }
    format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n{sets}\
         \tchain kernel_dnat {{\n\t\ttype nat hook prerouting priority dstnat - 10; policy accept;\n{dnat}\t}}\n\
         \tchain kernel_snat {{\n\t\ttype nat hook postrouting priority srcnat - 10; policy accept;\n{snat}\t}}\n\
         \tchain kernel_log {{\n\t\ttype filter hook forward priority filter - 10; policy accept;\n\
         \t\tct mark and {mask:#x} == {mark:#x} tcp flags & (syn | fin | rst) != 0 log group {group} snaplen 120 queue-threshold 1\n\t}}\n}}\n"
    )
}

/// Turns on conntrack's byte counters (`net.netfilter.nf_conntrack_acct`, per network
/// namespace), which resolve sequence wraps; without them kernel-path transfers are logged
/// with `bytes=unknown`.
fn enable_conntrack_accounting() {
    const ACCT: &str = "/proc/sys/net/netfilter/nf_conntrack_acct";
    if std::fs::read_to_string(ACCT).is_ok_and(|v| v.trim() == "1") {
        return;
    }
    if let Err(e) = std::fs::write(ACCT, "1") {
        tracing::warn!(error = %e, "cannot turn conntrack accounting on (sysctl net.netfilter.nf_conntrack_acct=1): kernel-path transfers log bytes=unknown");
    }
}

/// What one kernel-path channel forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The only source accepted.
    pub peer: IpAddr,
    /// The addresses the peer may connect to (with `port`).
    pub destinations: Vec<IpAddr>,
    /// The announced port.
    pub port: u16,
    /// Where the connection goes.
    pub target: SocketAddr,
    /// The source the target sees, when it must not be the peer's own address.
    pub snat: Option<IpAddr>,
    /// The peer is the client (passive mode); otherwise the server (active mode).
    pub peer_is_client: bool,
}

impl Mapping {
    /// The mapping that carries `plan` on the announced `port`, if the kernel can: one
    /// end accepts and the other is dialled (no mode conversion), every address of one
    /// family (no FTP64). The peer may connect to the accepting side's address or to
    /// `announced`, and with `via_server` (the transparent role, where an `EPSV` client
    /// connects to the server's own address) a passive client also to the server's.
    pub fn for_plan(
        plan: &DataPlan,
        port: u16,
        announced: IpAddr,
        via_server: bool,
    ) -> Option<Self> {
        let (accept, dial, peer_is_client) = match (&plan.client, &plan.server) {
            (Endpoint::Accept { on, peer }, Endpoint::Dial { to, from }) => {
                ((*on, *peer), (*to, *from), true)
            }
            (Endpoint::Dial { to, from }, Endpoint::Accept { on, peer }) => {
                ((*on, *peer), (*to, *from), false)
            }
            _ => return None,
        };
        let ((on, peer), (target, from)) = (accept, dial);
        let source = match from {
            DialSource::Bind(ip) | DialSource::Transparent(ip) => ip.to_canonical(),
        };
        let peer = peer.to_canonical();
        let via = (via_server && peer_is_client).then_some(target.ip());
        let mut destinations: Vec<IpAddr> = Vec::new();
        for d in [Some(on), Some(announced), via].into_iter().flatten() {
            let d = d.to_canonical();
            if !destinations.contains(&d) {
                destinations.push(d);
            }
        }
        let family = peer.is_ipv4();
        let same_family = [source, target.ip().to_canonical()]
            .iter()
            .chain(&destinations)
            .all(|a| a.is_ipv4() == family);
        same_family.then(|| Mapping {
            peer,
            destinations,
            port,
            target: SocketAddr::new(target.ip().to_canonical(), target.port()),
            // A dial from the peer's own address (the transparent role's active mode,
            // `client_source: server`) needs no source rewritten.
            snat: (source != peer).then_some(source),
            peer_is_client,
        })
    }

    fn elements(&self, timeout: Duration) -> Vec<Element> {
        let v = if self.peer.to_canonical().is_ipv4() {
            4
        } else {
            6
        };
        let (once, dnat, snat) = match v {
            4 => ("once4", "dnat4", "snat4"),
            _ => ("once6", "dnat6", "snat6"),
        };
        let timeout = Some(timeout);
        let peer = Field::Addr(self.peer);
        let target = [
            Field::Addr(self.target.ip()),
            Field::Port(self.target.port()),
        ];
        let mut out = vec![Element {
            set: once,
            key: concat(&[peer, Field::Port(self.port)]),
            data: None,
            timeout,
        }];
        for d in &self.destinations {
            out.push(Element {
                set: dnat,
                key: concat(&[peer, Field::Addr(*d), Field::Port(self.port)]),
                data: Some(concat(&target)),
                timeout,
            });
        }
        if let Some(source) = self.snat {
            out.push(Element {
                set: snat,
                key: concat(&[peer, target[0], target[1]]),
                data: Some(concat(&[Field::Addr(source)])),
                timeout,
            });
        }
        out
    }

    /// The flow as the forward hook sees it: peer → target.
    fn key(&self) -> FlowKey {
        FlowKey {
            peer: self.peer.to_canonical(),
            target: self.target.ip().to_canonical(),
            target_port: self.target.port(),
        }
    }
}

/// A flow as the forward hook sees it (after DNAT, before SNAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    peer: IpAddr,
    target: IpAddr,
    target_port: u16,
}

/// What ftpgate has seen of one expected flow. Directions: 0 peer → target, 1 back.
#[derive(Debug)]
struct Flow {
    id: ChannelId,
    events: mpsc::UnboundedSender<(ChannelId, DataEvent)>,
    peer_is_client: bool,
    /// Where the peer may have connected to (the original tuple's destination).
    origins: Vec<SocketAddr>,
    /// When the peer's SYN came, and from which port.
    started: Option<(Instant, u16)>,
    isn: [Option<u32>; 2],
    fin: [Option<u32>; 2],
}

/// What a logged packet did to its flow.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// The flow goes on.
    Going,
    /// Both sides closed: the flow is over; its bytes can be counted.
    Ended,
    /// A reset: the flow broke.
    Reset,
}

impl Flow {
    fn send(&self, event: DataEvent) {
        let _ = self.events.send((self.id, event));
    }

    /// A logged packet of this flow, in `dir`, between the peer's port `sport` and the
    /// target.
    fn on_packet(&mut self, p: &LoggedPacket, dir: usize, sport: u16) -> Step {
        if p.syn {
            if dir == 0 && self.started.is_none() {
                self.started = Some((Instant::now(), sport));
                self.send(DataEvent::Established);
            }
            if matches!(self.started, Some((_, s)) if s == sport) {
                self.isn[dir] = Some(p.seq);
            }
            return Step::Going;
        }
        if !matches!(self.started, Some((_, s)) if s == sport) {
            // No other connection than the one that started is this flow's.
            return Step::Going;
        }
        if p.rst {
            return Step::Reset;
        }
        if p.fin && self.fin[dir].is_none() {
            // The FIN's own sequence number follows the data it carries.
            self.fin[dir] = Some(p.seq.wrapping_add(p.payload));
            // The server's side ended: everything it sent is on its way to the client.
            let server_dir = usize::from(self.peer_is_client);
            if dir == server_dir {
                self.send(DataEvent::ServerToClientDone);
            }
        }
        if self.fin.iter().all(Option::is_some) {
            Step::Ended
        } else {
            Step::Going
        }
    }

    /// Bytes in each direction from the sequence numbers (exact, retransmissions aside);
    /// conntrack's counters (`counted`, original and reply direction) tell how often a
    /// sequence number wrapped past 4 GiB. Without them the bytes are unknown.
    fn stats(&self, counted: Option<(Counter, Counter)>) -> DataStats {
        // IP and TCP headers with timestamps, per packet.
        let header = if self.peer_v4() { 52 } else { 72 };
        let payload = |d: usize, c: Option<Counter>| -> Option<u64> {
            let c = c?;
            let seq_bytes = u64::from(self.fin[d]?.wrapping_sub(self.isn[d]?).wrapping_sub(1));
            const WRAP: u64 = 1 << 32;
            let estimate = c.bytes.saturating_sub(c.packets * header);
            let wraps = (estimate.saturating_sub(seq_bytes) + WRAP / 2) / WRAP;
            Some(seq_bytes + wraps * WRAP)
        };
        let (orig, reply) = counted.unzip();
        let (a, b) = (payload(0, orig), payload(1, reply));
        let seconds = self.started.map_or(0.0, |(t, _)| t.elapsed().as_secs_f64());
        let (to_server, to_client) = if self.peer_is_client { (a, b) } else { (b, a) };
        DataStats {
            to_server: to_server.unwrap_or_default(),
            to_client: to_client.unwrap_or_default(),
            seconds,
            counted: to_server.is_some() && to_client.is_some(),
        }
    }

    fn peer_v4(&self) -> bool {
        self.origins.first().is_some_and(SocketAddr::is_ipv4)
    }
}

/// ftpgate's table, its netlink socket, and the flows it expects.
#[derive(Debug)]
pub struct KernelPath {
    cfg: KernelConfig,
    nft: Nftables,
    flows: Mutex<HashMap<FlowKey, Flow>>,
}

/// One channel's mapping in the kernel; [`KernelPath::close`] removes it.
#[derive(Debug)]
pub struct KernelChannel {
    key: FlowKey,
    elements: Vec<Element>,
    watchdog: AbortHandle,
    /// When its elements expire by themselves.
    expires: Instant,
}

impl KernelPath {
    /// Installs ftpgate's table (replacing a stale one), turns conntrack accounting on,
    /// and starts reading NFLOG. Must run inside the tokio runtime.
    pub fn start(cfg: &KernelConfig) -> Result<Arc<Self>, KernelError> {
        nftables::load(&ruleset(cfg)).map_err(KernelError::Table)?;
        enable_conntrack_accounting();
        let nft = Nftables::open().map_err(KernelError::Netlink)?;
        let nflog = Nflog::bind(cfg.log_group).map_err(KernelError::Netlink)?;
        let mut conntrack = Conntrack::open().map_err(KernelError::Netlink)?;
        let path = Arc::new(Self {
            cfg: *cfg,
            nft,
            flows: Mutex::new(HashMap::new()),
        });
        let reader = Arc::downgrade(&path);
        std::thread::Builder::new()
            .name("ftpgate-nflog".into())
            .spawn(move || {
                let mut buf = Vec::new();
                loop {
                    let read = nflog.read(&mut buf);
                    let Some(path) = reader.upgrade() else {
                        return;
                    };
                    match read {
                        Ok(packets) => {
                            for p in &packets {
                                path.on_packet(p, &mut conntrack);
                            }
                        }
                        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                        Err(e) => tracing::warn!(error = %e, "NFLOG read failed; kernel-path flows may end unnoticed until their session does"),
                    }
                }
            })
            .map_err(KernelError::Netlink)?;
        tracing::info!(table = %format!("inet {TABLE}"), mark = %format!("{:#x}", cfg.mark), "kernel data path ready");
        Ok(path)
    }

    /// The settings it started with.
    pub fn config(&self) -> &KernelConfig {
        &self.cfg
    }

    /// Removes ftpgate's table (at exit).
    pub fn stop() {
        if let Err(e) = nftables::load(&format!("delete table inet {TABLE}\n")) {
            tracing::warn!(error = %e, "cannot remove ftpgate's nftables table");
        }
    }

    fn flows(&self) -> MutexGuard<'_, HashMap<FlowKey, Flow>> {
        self.flows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs `mapping` for channel `id` for `timeout`; its events go to `events`.
    pub fn open(
        self: &Arc<Self>,
        id: ChannelId,
        mapping: &Mapping,
        timeout: Duration,
        events: mpsc::UnboundedSender<(ChannelId, DataEvent)>,
    ) -> io::Result<KernelChannel> {
        let key = mapping.key();
        let elements = mapping.elements(timeout);
        let origins = mapping
            .destinations
            .iter()
            .map(|d| SocketAddr::new(*d, mapping.port))
            .collect();
        self.flows().insert(
            key,
            Flow {
                id,
                events,
                peer_is_client: mapping.peer_is_client,
                origins,
                started: None,
                isn: [None; 2],
                fin: [None; 2],
            },
        );
        if let Err(e) = self.add(&elements) {
            self.flows().remove(&key);
            return Err(e);
        }
        // Nobody came in time: the elements expire by themselves; the channel fails.
        let path = Arc::downgrade(self);
        let peer = mapping.peer;
        let watchdog = tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let Some(path) = path.upgrade() else { return };
            let mut flows = path.flows();
            if flows.get(&key).is_some_and(|f| f.started.is_none()) {
                if let Some(flow) = flows.remove(&key) {
                    flow.send(DataEvent::Failed(format!(
                        "no connection from {peer} within {timeout:?}"
                    )));
                }
            }
        })
        .abort_handle();
        Ok(KernelChannel {
            key,
            elements,
            watchdog,
            expires: Instant::now() + timeout,
        })
    }

    /// Adds `elements`; if ftpgate's table is gone (the ruleset was reloaded with
    /// `flush ruleset` under it), installs it again first.
    fn add(&self, elements: &[Element]) -> io::Result<()> {
        match self.nft.add(elements) {
            Err(e) if e.raw_os_error() == Some(ENOENT) => {
                tracing::warn!(
                    "ftpgate's nftables table inet {TABLE} is gone (was the ruleset flushed?); installing it again"
                );
                nftables::load(&ruleset(&self.cfg)).map_err(io::Error::other)?;
                self.nft.add(elements)
            }
            other => other,
        }
    }

    /// Removes a channel's mapping: no new connection is forwarded for it (a flow already
    /// under way continues on its conntrack entry); no more events come for it.
    pub fn close(&self, ch: KernelChannel) {
        ch.watchdog.abort();
        // A flow that is gone from the table has started (or its mapping expired): its
        // SYN consumed the one-shot guard.
        let flow = self.flows().remove(&ch.key);
        let started = !matches!(flow, Some(f) if f.started.is_none());
        if Instant::now() >= ch.expires {
            return;
        }
        let left: Vec<Element> = ch
            .elements
            .into_iter()
            .filter(|e| !(started && e.set.starts_with("once")))
            .collect();
        if let Err(e) = self.nft.delete(&left) {
            tracing::warn!(error = %e, "cannot remove a kernel-path mapping; it expires by itself");
        }
    }

    /// A logged packet: the flow it belongs to, if any, takes it; a flow that ended is
    /// counted (from its conntrack entry) and reported.
    fn on_packet(&self, p: &LoggedPacket, conntrack: &mut Conntrack) {
        let (src, dst) = (p.src.0.to_canonical(), p.dst.0.to_canonical());
        let forward = FlowKey {
            peer: src,
            target: dst,
            target_port: p.dst.1,
        };
        let backward = FlowKey {
            peer: dst,
            target: src,
            target_port: p.src.1,
        };
        let mut flows = self.flows();
        let (key, dir, sport) = if flows.contains_key(&forward) {
            (forward, 0, p.src.1)
        } else if flows.contains_key(&backward) {
            (backward, 1, p.dst.1)
        } else {
            return;
        };
        let Some(step) = flows.get_mut(&key).map(|f| f.on_packet(p, dir, sport)) else {
            return;
        };
        if step == Step::Going {
            return;
        }
        let Some(flow) = flows.remove(&key) else {
            return;
        };
        drop(flows);
        if step == Step::Reset {
            flow.send(DataEvent::Failed("the data connection was reset".into()));
            return;
        }
        let peer = SocketAddr::new(key.peer, sport);
        let counted = flow
            .origins
            .iter()
            .find_map(|origin| conntrack.counters(peer, *origin).ok().flatten());
        flow.send(DataEvent::Finished(flow.stats(counted)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(peer_is_client: bool) -> (Flow, mpsc::UnboundedReceiver<(ChannelId, DataEvent)>) {
        let (events, rx) = mpsc::unbounded_channel();
        let f = Flow {
            id: 3,
            events,
            peer_is_client,
            origins: vec!["203.0.113.1:40001".parse().unwrap()],
            started: None,
            isn: [None; 2],
            fin: [None; 2],
        };
        (f, rx)
    }

    fn packet(seq: u32, syn: bool, fin: bool) -> LoggedPacket {
        LoggedPacket {
            src: ("10.0.0.2".parse().unwrap(), 50000),
            dst: ("10.0.1.10".parse().unwrap(), 30001),
            seq,
            payload: 0,
            syn,
            fin,
            rst: false,
        }
    }

    fn counter(packets: u64, bytes: u64) -> Counter {
        Counter { packets, bytes }
    }

    #[test]
    fn a_download_is_counted_from_sequence_numbers() {
        // Passive: the client is the peer; the server sends 1,000,000 bytes.
        let (mut f, mut rx) = flow(true);
        assert_eq!(
            f.on_packet(&packet(100, true, false), 0, 50000),
            Step::Going
        );
        assert_eq!(rx.try_recv().unwrap().1, DataEvent::Established);
        f.on_packet(&packet(u32::MAX - 10, true, false), 1, 50000);
        // The server's FIN comes with its last 500 bytes; its sequence wrapped past 2^32
        // on the way.
        let last = (u32::MAX - 10).wrapping_add(1_000_001 - 500);
        let mut fin = packet(last, false, true);
        fin.payload = 500;
        assert_eq!(f.on_packet(&fin, 1, 50000), Step::Going);
        assert_eq!(rx.try_recv().unwrap().1, DataEvent::ServerToClientDone);
        // Another connection from the peer is none of this flow's business.
        assert_eq!(f.on_packet(&packet(5, false, true), 0, 50001), Step::Going);
        assert_eq!(
            f.on_packet(&packet(101, false, true), 0, 50000),
            Step::Ended
        );
        let s = f.stats(Some((counter(400, 21_000), counter(700, 1_036_400))));
        assert_eq!((s.to_server, s.to_client, s.counted), (0, 1_000_000, true));
    }

    #[test]
    fn a_transfer_past_4_gib_is_counted_with_the_wraps() {
        let (mut f, _rx) = flow(false);
        let total: u64 = 5 * (1 << 30) + 12_345;
        f.on_packet(&packet(7, true, false), 0, 1);
        f.on_packet(&packet(7, true, false), 1, 1);
        let fin = 7u32.wrapping_add(1).wrapping_add(total as u32);
        f.on_packet(&packet(fin, false, true), 0, 1);
        assert_eq!(f.on_packet(&packet(8, false, true), 1, 1), Step::Ended);
        // Headers and some retransmissions on top of the payload.
        let packets = total / 1448;
        let counted = counter(packets, total + packets * 52 + 50_000_000);
        let s = f.stats(Some((counted, counter(packets / 2, packets / 2 * 52))));
        // Active: the server is the peer, so peer -> target is toward the client.
        assert_eq!((s.to_client, s.to_server), (total, 0));
    }

    #[test]
    fn without_counters_the_bytes_are_unknown_and_a_reset_is_a_failure() {
        let (mut f, _rx) = flow(true);
        f.on_packet(&packet(1, true, false), 0, 9);
        f.on_packet(&packet(1, true, false), 1, 9);
        f.on_packet(&packet(11, false, true), 1, 9);
        f.on_packet(&packet(2, false, true), 0, 9);
        assert!(!f.stats(None).counted);
        let (mut f, _rx) = flow(true);
        f.on_packet(&packet(1, true, false), 0, 9);
        let mut rst = packet(5, false, false);
        rst.rst = true;
        assert_eq!(f.on_packet(&rst, 1, 9), Step::Reset);
    }

    #[test]
    fn the_ruleset_names_the_mark_the_group_and_both_families() {
        let text = ruleset(&KernelConfig {
            mark: 0x1234_0000,
            log_group: 77,
        });
        assert!(
            text.contains("ct mark set ct mark and 0xffff or 0x12340000"),
            "{text}"
        );
        assert!(text.contains("log group 77"));
        assert!(text.contains("@dnat4") && text.contains("@dnat6"));
        assert!(text.starts_with("table inet ftpgate\ndelete table inet ftpgate\n"));
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_passive_plan_maps_the_client_to_the_servers_port_from_ftpgates_server_side() {
        let plan = DataPlan {
            client: Endpoint::Accept {
                on: ip("10.0.0.1"),
                peer: ip("10.0.0.5"),
            },
            server: Endpoint::Dial {
                to: "198.51.100.7:30001".parse().unwrap(),
                from: DialSource::Bind(ip("203.0.113.1")),
            },
            client_tls: false,
            server_tls: false,
        };
        let m = Mapping::for_plan(&plan, 40001, ip("10.0.0.1"), true).unwrap();
        assert_eq!(m.peer, ip("10.0.0.5"));
        // EPSV clients of the transparent role connect to the server's own address.
        assert_eq!(m.destinations, [ip("10.0.0.1"), ip("198.51.100.7")]);
        assert_eq!(m.snat, Some(ip("203.0.113.1")));
        assert!(m.peer_is_client);
        let published = Mapping::for_plan(&plan, 40001, ip("10.0.0.1"), false).unwrap();
        assert_eq!(published.destinations, [ip("10.0.0.1")]);
    }

    #[test]
    fn an_active_plan_maps_the_server_to_the_clients_port() {
        let plan = DataPlan {
            client: Endpoint::Dial {
                to: "10.0.0.5:5001".parse().unwrap(),
                from: DialSource::Transparent(ip("198.51.100.7")),
            },
            server: Endpoint::Accept {
                on: ip("203.0.113.1"),
                peer: ip("198.51.100.7"),
            },
            client_tls: false,
            server_tls: false,
        };
        let m = Mapping::for_plan(&plan, 40002, ip("192.0.2.1"), true).unwrap();
        assert_eq!(m.destinations, [ip("203.0.113.1"), ip("192.0.2.1")]);
        assert_eq!(m.target, "10.0.0.5:5001".parse().unwrap());
        // The client sees the server's own address: nothing to rewrite.
        assert_eq!(m.snat, None);
        assert!(!m.peer_is_client);
    }

    #[test]
    fn conversions_and_ftp64_stay_in_userspace() {
        let accept = |on: &str, peer: &str| Endpoint::Accept {
            on: ip(on),
            peer: ip(peer),
        };
        let both_accept = DataPlan {
            client: accept("10.0.0.1", "10.0.0.5"),
            server: accept("203.0.113.1", "198.51.100.7"),
            client_tls: false,
            server_tls: false,
        };
        assert_eq!(
            Mapping::for_plan(&both_accept, 1, ip("10.0.0.1"), true),
            None
        );
        let ftp64 = DataPlan {
            client: accept("2001:db8::1", "2001:db8::5"),
            server: Endpoint::Dial {
                to: "198.51.100.7:30001".parse().unwrap(),
                from: DialSource::Bind(ip("203.0.113.1")),
            },
            client_tls: false,
            server_tls: false,
        };
        assert_eq!(Mapping::for_plan(&ftp64, 1, ip("2001:db8::1"), true), None);
    }

    #[test]
    fn a_mapping_has_one_guard_a_target_per_destination_and_its_source() {
        let m = Mapping {
            peer: "203.0.113.10".parse().unwrap(),
            destinations: vec!["203.0.113.1".parse().unwrap()],
            port: 40001,
            target: "10.0.1.10:30001".parse().unwrap(),
            snat: Some("10.0.1.1".parse().unwrap()),
            peer_is_client: true,
        };
        let e = m.elements(Duration::from_secs(30));
        let sets: Vec<&str> = e.iter().map(|e| e.set).collect();
        assert_eq!(sets, ["once4", "dnat4", "snat4"]);
        assert_eq!(
            e[1].data.as_deref(),
            Some(&[10, 0, 1, 10, 0x75, 0x31, 0, 0][..])
        );
    }
}
