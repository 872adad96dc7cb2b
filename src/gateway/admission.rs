//! Admission: session counts shared by all gateways, for `max_sessions` and
//! `max_sessions_per_client` (clients grouped per address for IPv4 and per /64 for IPv6 by
//! default, rule 13).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::IpNet;

use crate::config::Limits;
use crate::rules::Rule;

/// Session counts of the whole process.
#[derive(Debug, Default)]
pub(super) struct Admission {
    state: Mutex<AdmissionState>,
}

#[derive(Debug, Default)]
struct AdmissionState {
    total: usize,
    /// Sessions per client group (an address, or an IPv6 /64 by default).
    per_client: HashMap<IpNet, usize>,
}

/// Holds one admitted session's place; gives it back on drop.
#[derive(Debug)]
pub(super) struct AdmissionTicket {
    admission: Arc<Admission>,
    client: IpNet,
}

impl Admission {
    fn lock(&self) -> MutexGuard<'_, AdmissionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a session of `client`, or the limit that refuses it.
    pub fn admit(
        self: &Arc<Self>,
        client: IpAddr,
        limits: &Limits,
    ) -> Result<AdmissionTicket, Rule> {
        let mut st = self.lock();
        if st.total >= limits.max_sessions {
            return Err(Rule::MaxSessions);
        }
        let client = limits.client_group(client);
        let mine = st.per_client.entry(client).or_insert(0);
        if *mine >= limits.max_sessions_per_client {
            return Err(Rule::MaxSessionsPerClient);
        }
        *mine += 1;
        st.total += 1;
        Ok(AdmissionTicket {
            admission: Arc::clone(self),
            client,
        })
    }

    /// Sessions open now.
    pub fn active(&self) -> usize {
        self.lock().total
    }
}

impl Drop for AdmissionTicket {
    fn drop(&mut self) {
        let mut st = self.admission.lock();
        st.total -= 1;
        if let Some(n) = st.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                st.per_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_per_prefix() {
        // Rule max_sessions_per_client with client_prefix_v6: a host owns its whole /64.
        let limits = Limits {
            max_sessions_per_client: 64,
            ..Limits::default()
        };
        let admission = Arc::new(Admission::default());
        let mut tickets = Vec::new();
        let mut refused = 0;
        for i in 0..200u16 {
            let ip = IpAddr::from([0x2001, 0xdb8, 0, 7, i, 0, 0, 1]);
            match admission.admit(ip, &limits) {
                Ok(t) => tickets.push(t),
                Err(rule) => {
                    assert_eq!(rule, Rule::MaxSessionsPerClient);
                    refused += 1;
                }
            }
        }
        assert_eq!((tickets.len(), refused), (64, 136));
        // Another /64 is another client; IPv4 clients count per address.
        let other = admission.admit("2001:db8:0:8::1".parse().unwrap(), &limits);
        let v4 = admission.admit("192.0.2.1".parse().unwrap(), &limits);
        assert!(other.is_ok() && v4.is_ok());
        // Places come back when sessions end.
        tickets.clear();
        assert_eq!(admission.active(), 2);
        assert!(admission
            .admit("2001:db8:0:7::99".parse().unwrap(), &limits)
            .is_ok());
    }
}
