//! The ordered reply gate: what keeps the control channel in order, and bounded.
//!
//! - *Outstanding commands*: every command sent to the server awaits its final reply, in
//!   order; a reply is matched to the command at the head, so a `227` counts only as the
//!   answer to an outstanding `PASV` (rule 3).
//! - *Local replies*: a reply ftpgate writes itself waits behind the server replies to
//!   earlier commands, so pipelined clients get their answers in order.
//! - *Replies to the client*: a transfer's `150` waits until its active-mode connection to
//!   the client exists, its `226` until the last byte reached the client; a `227` waits for
//!   the port of the channel being opened; everything behind a waiting reply waits too.
//! - *Held client lines*: while ftpgate waits for something of its own (a login connecting,
//!   a command it sent on its own, a channel being opened), client lines wait, so that the
//!   order of commands never changes.
//!
//! Each queue has a bound (DESIGN.md §6.12); overflowing one is an [`Overflow`], which
//! ends the session.

use std::collections::VecDeque;
use std::net::SocketAddr;

use crate::plan::ChannelId;
use crate::rules::Rule;

/// Replies ftpgate wrote itself that wait behind outstanding server replies (rule
/// `local_replies`).
pub const MAX_LOCAL_REPLIES: usize = 64;

/// Replies waiting for the client behind a gated one, such as a `226` that waits for its
/// data (rule `reply_queue`); their bytes together are bounded by
/// [`REPLY_QUEUE_REPLIES`] times the largest reply.
pub const MAX_QUEUED_REPLIES: usize = 64;

/// The reply queue holds at most this many maximum-size replies' worth of bytes.
pub const REPLY_QUEUE_REPLIES: usize = 4;

/// Client lines held while ftpgate waits (rule `held_lines`).
pub const MAX_HELD_LINES: usize = 64;

/// Client lines held while an explicit-proxy login is still connecting upstream.
pub const MAX_LOGIN_LINES: usize = 8;

/// What a command sent to the server is, for the reply that answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Awaiting {
    /// `PASV` (`sent_ext: false`) or `EPSV` sent to the server; `then` says whose it is.
    Passive { sent_ext: bool, then: PassiveUse },
    /// `PORT` (`sent_ext: false`) or `EPRT` sent to the server for channel `id`, whose
    /// server-side listener has `port`; `converted` when ftpgate sent it on its own for a
    /// client in passive mode (`server_mode: active`).
    Active {
        id: ChannelId,
        port: u16,
        sent_ext: bool,
        converted: bool,
    },
    /// A transfer command (RETR, STOR, LIST, …) served by this channel, if any.
    Transfer(Option<ChannelId>),
    /// `AUTH` forwarded under `tls: passthrough`.
    Auth,
    /// `QUIT`: the server may close instead of answering.
    Quit,
    /// `FEAT`: under `tls: terminate` its `211` gains ftpgate's TLS features.
    Feat,
    /// Anything else.
    Other,
}

/// Who a `PASV`/`EPSV` sent to the server is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PassiveUse {
    /// The client's own `PASV` (`ext: false`) or `EPSV`.
    Client { ext: bool },
    /// ftpgate's, for a client in active mode (`server_mode: passive`) that asked to be
    /// connected to at `target`.
    Convert { target: SocketAddr },
}

/// An outstanding command, or a local reply in its place among them.
#[derive(Debug)]
pub(super) enum Pending {
    Server(Awaiting),
    Local(Vec<u8>),
}

/// A reply on its way to the client.
#[derive(Debug)]
pub(super) struct Outgoing {
    /// Its code (`None` for a line that is not a reply).
    pub code: Option<u16>,
    /// Its bytes, or `None` while they wait for the ports of a channel being opened.
    pub bytes: Option<Vec<u8>>,
    /// The data channel of the transfer it answers, for the gate.
    pub channel: Option<ChannelId>,
}

impl Outgoing {
    /// A reply with its bytes; `channel` is the transfer's it answers, if any.
    pub fn ready(code: Option<u16>, bytes: Vec<u8>, channel: Option<ChannelId>) -> Self {
        Self {
            code,
            bytes: Some(bytes),
            channel,
        }
    }

    /// A reply that waits for the ports of channel `id`, being opened ([`ReplyGate::fill`]).
    pub fn awaiting_ports(id: ChannelId) -> Self {
        Self {
            code: None,
            bytes: None,
            channel: Some(id),
        }
    }

    /// Whether it still waits for its bytes (it is not a transfer's reply then: its
    /// channel is the one being opened for it).
    pub fn awaits_ports(&self) -> bool {
        self.bytes.is_none()
    }
}

/// A bound of the gate that was exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Overflow {
    /// The rule.
    pub rule: Rule,
    /// Its bound.
    pub max: usize,
    /// What there were too many of, for the `421`.
    pub what: &'static str,
}

/// The queues of the control channel, in order and bounded.
#[derive(Debug)]
pub(super) struct ReplyGate {
    pending: VecDeque<Pending>,
    outq: VecDeque<Outgoing>,
    outq_bytes: usize,
    held: VecDeque<Vec<u8>>,
    holding: bool,
    max_pipelined: usize,
    max_queue_bytes: usize,
}

impl ReplyGate {
    /// A gate for a session that may pipeline `max_pipelined` commands and gets replies of
    /// at most `max_reply_bytes`.
    pub fn new(max_pipelined: usize, max_reply_bytes: usize) -> Self {
        Self {
            pending: VecDeque::new(),
            outq: VecDeque::new(),
            outq_bytes: 0,
            held: VecDeque::new(),
            holding: false,
            max_pipelined,
            max_queue_bytes: REPLY_QUEUE_REPLIES * max_reply_bytes,
        }
    }

    // ---- outstanding commands ---------------------------------------------------------

    /// A command went to the server; its reply will be matched to `awaiting`.
    pub fn expect(&mut self, awaiting: Awaiting) -> Result<(), Overflow> {
        let waiting = self
            .pending
            .iter()
            .filter(|p| matches!(p, Pending::Server(_)))
            .count();
        if waiting >= self.max_pipelined {
            return Err(Overflow {
                rule: Rule::PipelinedCommands,
                max: self.max_pipelined,
                what: "commands awaiting replies",
            });
        }
        self.pending.push_back(Pending::Server(awaiting));
        Ok(())
    }

    /// A command sent again in place of the one just answered (the `EPSV`/`EPRT`
    /// fallback): its reply comes first.
    pub fn expect_first(&mut self, awaiting: Awaiting) {
        self.pending.push_front(Pending::Server(awaiting));
    }

    /// The command a preliminary reply belongs to: the one at the head.
    pub fn head(&self) -> Option<Awaiting> {
        match self.pending.front() {
            Some(Pending::Server(a)) => Some(*a),
            _ => None,
        }
    }

    /// The command a final reply answers (the head), taken off the queue.
    pub fn answered(&mut self) -> Option<Awaiting> {
        match self.pending.front() {
            Some(Pending::Server(_)) => match self.pending.pop_front() {
                Some(Pending::Server(a)) => Some(a),
                _ => None,
            },
            // Locals at the head are drained as soon as they get there.
            _ => None,
        }
    }

    /// Whether any command awaits a reply that `wanted` selects.
    pub fn awaits(&self, wanted: impl Fn(&Awaiting) -> bool) -> bool {
        self.pending
            .iter()
            .any(|p| matches!(p, Pending::Server(a) if wanted(a)))
    }

    /// Everything outstanding, taken (the server is gone).
    pub fn take_pending(&mut self) -> VecDeque<Pending> {
        std::mem::take(&mut self.pending)
    }

    // ---- local replies ----------------------------------------------------------------

    /// A reply ftpgate writes itself: `Some(bytes)` to queue for the client now, when no
    /// server reply is outstanding; otherwise it waits in its place.
    pub fn local(&mut self, bytes: Vec<u8>) -> Result<Option<Vec<u8>>, Overflow> {
        if self.pending.is_empty() {
            return Ok(Some(bytes));
        }
        let waiting = self
            .pending
            .iter()
            .filter(|p| matches!(p, Pending::Local(_)))
            .count();
        if waiting >= MAX_LOCAL_REPLIES {
            return Err(Overflow {
                rule: Rule::LocalReplies,
                max: MAX_LOCAL_REPLIES,
                what: "commands answered while a reply is outstanding",
            });
        }
        self.pending.push_back(Pending::Local(bytes));
        Ok(None)
    }

    /// The local replies whose turn has come (they reached the head), in order.
    pub fn due_locals(&mut self) -> Vec<Vec<u8>> {
        let mut due = Vec::new();
        while let Some(Pending::Local(_)) = self.pending.front() {
            if let Some(Pending::Local(bytes)) = self.pending.pop_front() {
                due.push(bytes);
            }
        }
        due
    }

    // ---- replies to the client --------------------------------------------------------

    /// Queues a reply for the client, behind any that wait.
    pub fn enqueue(&mut self, out: Outgoing) -> Result<(), Overflow> {
        let len = out.bytes.as_ref().map_or(0, Vec::len);
        if self.outq.len() >= MAX_QUEUED_REPLIES || self.outq_bytes + len > self.max_queue_bytes {
            return Err(Overflow {
                rule: Rule::ReplyQueue,
                max: MAX_QUEUED_REPLIES,
                what: "server replies while a reply waits for its data",
            });
        }
        self.outq_bytes += len;
        self.outq.push_back(out);
        Ok(())
    }

    /// The reply waiting for channel `id`'s ports gets its bytes; it answers no transfer.
    pub fn fill(&mut self, id: ChannelId, code: u16, bytes: Vec<u8>) {
        if let Some(out) = self
            .outq
            .iter_mut()
            .find(|o| o.awaits_ports() && o.channel == Some(id))
        {
            self.outq_bytes += bytes.len();
            *out = Outgoing::ready(Some(code), bytes, None);
        }
    }

    /// The head reply, if it may go: it has its bytes and `gated` does not hold it.
    pub fn next_ready(&mut self, gated: impl Fn(&Outgoing) -> bool) -> Option<Outgoing> {
        let head = self.outq.front()?;
        if head.awaits_ports() || gated(head) {
            return None;
        }
        let out = self.outq.pop_front()?;
        self.outq_bytes -= out.bytes.as_ref().map_or(0, Vec::len);
        Some(out)
    }

    /// Every reply still queued (the session closes), in order.
    pub fn drain(&mut self) -> Vec<Outgoing> {
        self.outq_bytes = 0;
        self.outq.drain(..).collect()
    }

    /// Whether no reply waits for the client.
    pub fn is_drained(&self) -> bool {
        self.outq.is_empty()
    }

    // ---- held client lines ------------------------------------------------------------

    /// Client lines wait from now on.
    pub fn hold(&mut self) {
        self.holding = true;
    }

    /// Client lines may go on (the caller processes the held ones).
    pub fn unhold(&mut self) {
        self.holding = false;
    }

    /// Whether client lines wait.
    pub fn holding(&self) -> bool {
        self.holding
    }

    /// A client line waits, behind at most `max - 1` others.
    pub fn hold_line(&mut self, line: Vec<u8>, max: usize) -> Result<(), Overflow> {
        if self.held.len() >= max {
            return Err(Overflow {
                rule: Rule::HeldLines,
                max,
                what: if max == MAX_LOGIN_LINES {
                    "commands before the login completed"
                } else {
                    "commands sent without waiting"
                },
            });
        }
        self.held.push_back(line);
        Ok(())
    }

    /// Holds from now on, `line` first (a transfer command that waits for its channel).
    pub fn hold_first(&mut self, line: Vec<u8>) {
        self.held.push_front(line);
        self.holding = true;
    }

    /// The next held line.
    pub fn next_held(&mut self) -> Option<Vec<u8>> {
        self.held.pop_front()
    }

    /// Forgets everything (the session closed).
    pub fn clear(&mut self) {
        self.pending.clear();
        self.held.clear();
        self.holding = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> ReplyGate {
        ReplyGate::new(2, 100)
    }

    fn out(code: u16, bytes: &[u8], channel: Option<ChannelId>) -> Outgoing {
        Outgoing::ready(Some(code), bytes.to_vec(), channel)
    }

    #[test]
    fn replies_are_matched_to_commands_in_order_with_locals_in_their_place() {
        let mut g = gate();
        assert_eq!(g.local(b"now".to_vec()), Ok(Some(b"now".to_vec())));
        g.expect(Awaiting::Other).unwrap();
        assert_eq!(g.local(b"later".to_vec()), Ok(None));
        g.expect(Awaiting::Transfer(Some(1))).unwrap();
        assert_eq!(g.answered(), Some(Awaiting::Other));
        assert_eq!(g.due_locals(), vec![b"later".to_vec()]);
        assert_eq!(g.head(), Some(Awaiting::Transfer(Some(1))));
        assert_eq!(g.answered(), Some(Awaiting::Transfer(Some(1))));
        assert_eq!(g.answered(), None);
    }

    #[test]
    fn every_queue_is_bounded() {
        let mut g = gate();
        g.expect(Awaiting::Other).unwrap();
        g.expect(Awaiting::Other).unwrap();
        assert_eq!(
            g.expect(Awaiting::Other).unwrap_err().rule,
            Rule::PipelinedCommands
        );
        for _ in 0..MAX_LOCAL_REPLIES {
            g.local(b"x".to_vec()).unwrap();
        }
        assert_eq!(g.local(b"x".to_vec()).unwrap_err().rule, Rule::LocalReplies);
        // 4 x 100 bytes of queue.
        for _ in 0..4 {
            g.enqueue(out(200, &[b'a'; 100], None)).unwrap();
        }
        assert_eq!(
            g.enqueue(out(200, b"b", None)).unwrap_err().rule,
            Rule::ReplyQueue
        );
        for _ in 0..3 {
            g.hold_line(b"NOOP\r\n".to_vec(), 3).unwrap();
        }
        let full = g.hold_line(b"NOOP\r\n".to_vec(), 3).unwrap_err();
        assert_eq!((full.rule, full.max), (Rule::HeldLines, 3));
    }

    #[test]
    fn a_gated_head_holds_everything_behind_it() {
        let mut g = gate();
        g.enqueue(out(226, b"226 done", Some(7))).unwrap();
        g.enqueue(out(200, b"200 next", None)).unwrap();
        assert!(g.next_ready(|o| o.channel == Some(7)).is_none());
        assert_eq!(g.next_ready(|_| false).unwrap().bytes.unwrap(), b"226 done");
        assert_eq!(g.next_ready(|_| false).unwrap().bytes.unwrap(), b"200 next");
        assert!(g.is_drained());
    }

    #[test]
    fn a_reply_waiting_for_its_channel_goes_once_filled() {
        let mut g = gate();
        g.enqueue(Outgoing::awaiting_ports(3)).unwrap();
        g.enqueue(out(200, b"200 after", None)).unwrap();
        assert!(g.next_ready(|_| false).is_none(), "not filled yet");
        g.fill(3, 227, b"227 (..)".to_vec());
        let first = g.next_ready(|_| false).unwrap();
        assert_eq!(
            (first.code, first.bytes.unwrap()),
            (Some(227), b"227 (..)".to_vec())
        );
        assert!(g.next_ready(|_| false).is_some());
    }
}
