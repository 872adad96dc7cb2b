//! The host the rules are generated on: which interface holds an address, and the
//! network it is on (to find a side's interface when the configuration does not name it).

use std::net::IpAddr;

use ipnet::IpNet;

/// What the generator asks of the host.
pub trait Host {
    /// The interface that holds `ip`, and the network it is on there.
    fn interface_of(&self, ip: IpAddr) -> Option<(String, IpNet)>;
    /// Whether an interface of that name exists now.
    fn has_interface(&self, name: &str) -> bool;
}

/// The machine ftpgate runs on.
#[derive(Debug, Default)]
pub struct LocalHost;

impl Host for LocalHost {
    fn interface_of(&self, ip: IpAddr) -> Option<(String, IpNet)> {
        let ip = ip.to_canonical();
        if_addrs::get_if_addrs()
            .ok()?
            .into_iter()
            .find(|i| i.ip() == ip)
            .and_then(|i| {
                let net = match &i.addr {
                    if_addrs::IfAddr::V4(a) => {
                        IpNet::with_netmask(IpAddr::V4(a.ip), IpAddr::V4(a.netmask)).ok()?
                    }
                    if_addrs::IfAddr::V6(a) => {
                        IpNet::with_netmask(IpAddr::V6(a.ip), IpAddr::V6(a.netmask)).ok()?
                    }
                };
                Some((i.name, net.trunc()))
            })
    }

    fn has_interface(&self, name: &str) -> bool {
        std::path::Path::new("/sys/class/net").join(name).exists()
    }
}

/// A host described by a list (tests).
#[cfg(test)]
#[derive(Debug, Default)]
pub struct KnownHost(pub Vec<(IpAddr, String, IpNet)>);

#[cfg(test)]
impl Host for KnownHost {
    fn interface_of(&self, ip: IpAddr) -> Option<(String, IpNet)> {
        self.0
            .iter()
            .find(|(a, _, _)| *a == ip.to_canonical())
            .map(|(_, name, net)| (name.clone(), *net))
    }

    fn has_interface(&self, name: &str) -> bool {
        self.0.iter().any(|(_, n, _)| n == name)
    }
}
