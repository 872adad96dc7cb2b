//! The data channels of one session: their lifetime from the moment ftpgate asks the shell
//! to open one until it is reported over, exactly once.
//!
//! A channel is *opening* (the shell is binding its listeners), then *waiting* for its
//! peers, *established*, and *server-done* when everything the server sent reached the
//! client's socket. It is over when its connections ended and, if it serves a transfer,
//! the server answered that transfer: only then is it reported ([`ChannelEnd`]), `ok` if
//! both went well. A success reply for a transfer whose connections broke is rewritten to
//! `426` here. At most [`MAX_DATA_CHANNELS`] exist at once (rule `data_channels`).

use crate::ftp::command::TransferVerb;
use crate::ftp::replies::Response;
use crate::plan::{ChannelEnd, ChannelId, DataEvent, DataOpenError, DataStats, TransferRecord};

use super::gate::Outgoing;

/// Data channels of one session at once (rule `data_channels`): one transfer runs at a
/// time, and a finished one lingers only while its sockets close.
pub const MAX_DATA_CHANNELS: usize = 8;

/// How far a channel got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChannelState {
    /// The shell is opening it.
    Opening,
    /// Listener announced; waiting for the peer and the dial.
    Waiting,
    /// Relaying.
    Established,
    /// The server side has finished sending; the client side may still be open.
    ServerDone,
}

#[derive(Debug)]
pub(super) struct Channel {
    pub id: ChannelId,
    /// Active mode: the server connects to ftpgate, ftpgate dials the client.
    pub client_active: bool,
    pub state: ChannelState,
    /// The transfer command this channel serves, once the client sent it.
    pub transfer: Option<(TransferVerb, String)>,
    /// A channel for a client in passive mode converted to active toward the server: the
    /// server-side listener's port, announced with `PORT`/`EPRT` when the transfer starts.
    pub server_port: Option<u16>,
    /// The kernel joins its two ends (`relay: kernel`): no reply waits for it.
    kernel: bool,
    /// How its connections ended, once they have: what they moved, or why they broke.
    data: Option<Result<DataStats, String>>,
    /// The server's final reply to the transfer command once it came, or why none will.
    reply: Option<Result<u16, String>>,
}

impl Channel {
    /// Whether its connections are (or are about to be) open.
    pub fn live(&self) -> bool {
        self.data.is_none()
    }

    /// Whether its connections are only closing, so that it may report after the session
    /// ended: everything the server sent reached the client's side, or, on the kernel
    /// path, the server already answered its transfer with success (what it sent before
    /// is in the kernel's hands; its end is on its way).
    pub fn finishing(&self) -> bool {
        self.live()
            && (self.state == ChannelState::ServerDone
                || (self.kernel && matches!(self.reply, Some(Ok(200..=299)))))
    }

    /// Whether nothing more can happen to it.
    fn settled(&self) -> bool {
        self.data.is_some() && (self.transfer.is_none() || self.reply.is_some())
    }

    /// Why it failed, if it did.
    fn failure(&self) -> Option<String> {
        match (&self.data, &self.reply) {
            (Some(Err(why)), _) | (_, Some(Err(why))) => Some(why.clone()),
            (_, Some(Ok(code))) if !(200..300).contains(code) => {
                Some(format!("server replied {code}"))
            }
            (None, _) => Some("the session ended during the transfer".to_owned()),
            (Some(Ok(_)), None) if self.transfer.is_some() => {
                Some("the session ended before the server's reply".to_owned())
            }
            (Some(Ok(_)), _) => None,
        }
    }

    /// Its report.
    fn end(self) -> ChannelEnd {
        let failure = self.failure();
        let ok = failure.is_none();
        let stats = match &self.data {
            Some(Ok(stats)) if ok => Some(*stats),
            _ => None,
        };
        ChannelEnd {
            id: self.id,
            mode: if self.client_active {
                "active"
            } else {
                "passive"
            },
            ok,
            kernel: self.kernel,
            transfer: self.transfer.map(|(verb, argument)| TransferRecord {
                command: verb.name().to_owned(),
                argument,
                upload: verb.upload(),
                active: self.client_active,
                stats,
                failure,
            }),
        }
    }
}

/// The channels of one session.
#[derive(Debug)]
pub(super) struct Channels {
    list: Vec<Channel>,
    /// The newest channel nobody connected to yet: a newer `PASV`/`PORT` replaces it.
    prepared: Option<ChannelId>,
    next_id: ChannelId,
}

impl Channels {
    pub fn new() -> Self {
        Self {
            list: Vec::new(),
            prepared: None,
            next_id: 1,
        }
    }

    fn get(&self, id: ChannelId) -> Option<&Channel> {
        self.list.iter().find(|c| c.id == id)
    }

    pub fn get_mut(&mut self, id: ChannelId) -> Option<&mut Channel> {
        self.list.iter_mut().find(|c| c.id == id)
    }

    /// A new channel, being opened; it is the prepared one.
    pub fn open(&mut self, client_active: bool) -> Result<ChannelId, DataOpenError> {
        if self.list.len() >= MAX_DATA_CHANNELS {
            return Err(DataOpenError::TooMany {
                max: MAX_DATA_CHANNELS,
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.list.push(Channel {
            id,
            client_active,
            state: ChannelState::Opening,
            transfer: None,
            server_port: None,
            kernel: false,
            data: None,
            reply: None,
        });
        self.prepared = Some(id);
        Ok(id)
    }

    /// The shell opened channel `id` (its listeners, or its kernel mapping, wait for
    /// their peers).
    pub fn opened(&mut self, id: ChannelId, kernel: bool) {
        if let Some(ch) = self.get_mut(id) {
            ch.state = ChannelState::Waiting;
            ch.kernel = kernel;
        }
    }

    /// Forgets a channel that never served anything (it could not be opened, or the
    /// server refused the `PORT` announcing it); `true` if it was known.
    pub fn forget(&mut self, id: ChannelId) -> bool {
        if self.prepared == Some(id) {
            self.prepared = None;
        }
        let before = self.list.len();
        self.list.retain(|c| c.id != id);
        self.list.len() != before
    }

    /// Releases the prepared channel if nobody connected to it (a newer `PASV`/`PORT`,
    /// `ABOR`, `REIN`): it is not counted; returns it, for the shell to stop.
    pub fn release_prepared(&mut self) -> Option<ChannelId> {
        let id = self.prepared.take()?;
        let unused = self.get(id).is_some_and(|c| {
            c.live() && matches!(c.state, ChannelState::Opening | ChannelState::Waiting)
        });
        (unused && self.forget(id)).then_some(id)
    }

    /// The server-side port a passive client's channel keeps for a `PORT` to the server
    /// (`server_mode: active`), taken once the transfer starts.
    pub fn take_converted_port(&mut self) -> Option<(ChannelId, u16)> {
        let id = self.prepared?;
        let port = self.get_mut(id)?.server_port.take()?;
        Some((id, port))
    }

    /// A data event; `false` when the channel is unknown or already over.
    pub fn on_event(&mut self, id: ChannelId, ev: DataEvent) -> bool {
        let Some(ch) = self.list.iter_mut().find(|c| c.id == id && c.live()) else {
            return false;
        };
        match ev {
            DataEvent::Established => ch.state = ChannelState::Established,
            DataEvent::ServerToClientDone => ch.state = ChannelState::ServerDone,
            DataEvent::Finished(stats) => ch.data = Some(Ok(stats)),
            DataEvent::Failed(reason) => {
                tracing::info!(channel = id, %reason, "data channel failed");
                ch.data = Some(Err(reason));
            }
        }
        // A connected (or ended) channel is no longer one a new PASV/PORT may replace.
        let taken = ch.state != ChannelState::Waiting || !ch.live();
        if taken && self.prepared == Some(id) {
            self.prepared = None;
        }
        true
    }

    /// The newest channel without a transfer serves this one; returns its id.
    pub fn assign_transfer(&mut self, verb: TransferVerb, arg: &[u8]) -> Option<ChannelId> {
        let ch = self.list.iter_mut().rev().find(|c| c.transfer.is_none())?;
        // At most 512 characters of the argument go to the log.
        let argument = String::from_utf8_lossy(arg).chars().take(512).collect();
        ch.transfer = Some((verb, argument));
        let id = ch.id;
        // Claimed by its transfer: an ABOR (or a newer PASV) no longer takes it away,
        // even before its connection was reported.
        if self.prepared == Some(id) {
            self.prepared = None;
        }
        Some(id)
    }

    /// The server's final reply to channel `id`'s transfer. Returns whether the channel
    /// must be stopped (the server refused the transfer while its connections were open).
    pub fn record_reply(&mut self, id: ChannelId, code: u16) -> bool {
        let Some(ch) = self.get_mut(id) else {
            return false;
        };
        ch.reply = Some(Ok(code));
        if code >= 400 && ch.live() {
            ch.data = Some(Err(format!("server replied {code}")));
            return true;
        }
        false
    }

    /// No reply will come for channel `id`'s transfer, because `why`.
    pub fn lose_reply(&mut self, id: ChannelId, why: &str) {
        if let Some(ch) = self.get_mut(id) {
            ch.reply = Some(Err(why.to_owned()));
        }
    }

    /// The `426` a client gets instead of a success reply for a transfer whose data
    /// connection broke (DESIGN.md §5: a failed relay is never reported as success).
    pub fn broken_reply(&self, id: Option<ChannelId>, code: Option<u16>) -> Option<Response> {
        match (&self.get(id?)?.data, code) {
            (Some(Err(why)), Some(200..=299)) => Some(Response::transfer_aborted(why)),
            _ => None,
        }
    }

    /// Whether a reply must wait for its transfer's data channel. Never for a channel on
    /// the kernel path: there the client's and the server's TCP handshakes are one, so the
    /// server's `150` cannot overtake the connection to the client, and the kernel
    /// forwards the server's data ahead of nothing ftpgate sends (docs/kernel-path.md).
    pub fn gated(&self, out: &Outgoing) -> bool {
        let Some(ch) = out
            .channel
            .and_then(|id| self.get(id))
            .filter(|c| c.live() && !c.kernel)
        else {
            return false;
        };
        if matches!(out.code, Some(100..=199)) {
            // Active mode: the client's data connection must exist before its 150.
            return ch.client_active
                && matches!(ch.state, ChannelState::Opening | ChannelState::Waiting);
        }
        // The transfer's bytes reach the client before its completion reply.
        out.code.is_some_and(|c| c < 300) && ch.state != ChannelState::ServerDone
    }

    /// Channel `id`'s report, if it is over (it leaves the table).
    pub fn settle(&mut self, id: ChannelId) -> Option<ChannelEnd> {
        let pos = self.list.iter().position(|c| c.id == id && c.settled())?;
        if self.prepared == Some(id) {
            self.prepared = None;
        }
        Some(self.list.remove(pos).end())
    }

    /// Ends every channel `which` selects, as failed if it was still live; each comes
    /// with whether its connections were open (the shell must stop those).
    pub fn end(&mut self, which: impl Fn(&Channel) -> bool) -> Vec<(ChannelEnd, bool)> {
        let (ended, kept): (Vec<Channel>, Vec<Channel>) =
            std::mem::take(&mut self.list).into_iter().partition(which);
        self.list = kept;
        if self.prepared.is_some_and(|p| self.get(p).is_none()) {
            self.prepared = None;
        }
        ended
            .into_iter()
            .map(|ch| {
                let live = ch.live();
                (ch.end(), live)
            })
            .collect()
    }

    /// Whether any channel's connections are open.
    pub fn any_live(&self) -> bool {
        self.list.iter().any(Channel::live)
    }

    /// Whether a transfer is under way: a channel serves one whose reply has not come.
    pub fn transfer_under_way(&self) -> bool {
        self.list
            .iter()
            .any(|c| c.transfer.is_some() && c.reply.is_none())
    }

    /// Whether no channel is left to report.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> DataStats {
        DataStats {
            to_server: 0,
            to_client: 10,
            seconds: 0.1,
            counted: true,
        }
    }

    #[test]
    fn a_transfer_is_over_when_its_data_ended_and_the_server_answered() {
        let mut c = Channels::new();
        let id = c.open(false).unwrap();
        c.opened(id, false);
        assert_eq!(c.assign_transfer(TransferVerb::Retr, b"f"), Some(id));
        assert!(c.on_event(id, DataEvent::Established));
        assert!(c.on_event(id, DataEvent::Finished(stats())));
        assert_eq!(c.settle(id), None, "the server has not answered");
        assert!(!c.record_reply(id, 226));
        let end = c.settle(id).unwrap();
        assert!(end.ok);
        let record = end.transfer.unwrap();
        assert_eq!(
            (record.command.as_str(), record.stats),
            ("RETR", Some(stats()))
        );
        assert!(c.is_empty());
        assert!(!c.on_event(id, DataEvent::Established), "reported once");
    }

    #[test]
    fn a_broken_transfer_is_failed_and_its_success_reply_becomes_426() {
        let mut c = Channels::new();
        let id = c.open(false).unwrap();
        c.assign_transfer(TransferVerb::Stor, b"up");
        c.on_event(id, DataEvent::Failed("relay: reset".into()));
        let broken = c.broken_reply(Some(id), Some(226)).unwrap();
        assert_eq!(broken.code(), 426);
        assert_eq!(
            c.broken_reply(Some(id), Some(550)),
            None,
            "errors pass as they are"
        );
        c.record_reply(id, 226);
        let end = c.settle(id).unwrap();
        assert!(!end.ok);
        assert_eq!(
            end.transfer.unwrap().failure.as_deref(),
            Some("relay: reset")
        );
    }

    #[test]
    fn a_refused_transfer_stops_its_channel() {
        let mut c = Channels::new();
        let id = c.open(true).unwrap();
        c.assign_transfer(TransferVerb::Retr, b"missing");
        assert!(c.record_reply(id, 550), "the shell must stop it");
        let end = c.settle(id).unwrap();
        assert_eq!(
            end.transfer.unwrap().failure.as_deref(),
            Some("server replied 550")
        );
    }

    #[test]
    fn the_prepared_channel_is_replaced_only_while_unused() {
        let mut c = Channels::new();
        let first = c.open(false).unwrap();
        assert_eq!(c.release_prepared(), Some(first));
        let second = c.open(false).unwrap();
        c.on_event(second, DataEvent::Established);
        assert_eq!(c.release_prepared(), None, "connected channels stay");
        assert!(c.any_live());
    }

    #[test]
    fn a_session_has_at_most_its_share_of_channels() {
        let mut c = Channels::new();
        for _ in 0..MAX_DATA_CHANNELS {
            let id = c.open(false).unwrap();
            c.on_event(id, DataEvent::Established);
        }
        assert_eq!(
            c.open(false),
            Err(DataOpenError::TooMany {
                max: MAX_DATA_CHANNELS
            })
        );
        let ended = c.end(|_| true);
        assert_eq!(ended.len(), MAX_DATA_CHANNELS);
        assert!(ended
            .iter()
            .all(|(e, live)| *live && !e.ok && e.transfer.is_none()));
    }
}
