//! Policy routing for transparent sockets: packets with ftpgate's firewall mark (replies
//! to its transparent dials, connections TPROXY hands to it) are delivered to the host
//! itself. ftpgate installs the rule and the route at start and removes at exit what it
//! installed, so a reboot needs nothing by hand; it runs `ip` (iproute2) at those two
//! moments only. A rule that was already there (the operator's, or another instance's)
//! is used and left alone.

use std::process::Command;

/// The policy routing of one address family (`-4` or `-6`).
#[derive(Debug)]
struct Family {
    flag: &'static str,
    /// Whether ftpgate added the rule (and so removes it at exit).
    owned: bool,
}

/// The rule and route of each address family ftpgate needs.
#[derive(Debug)]
pub struct PolicyRoutes {
    mark: String,
    table: String,
    families: Vec<Family>,
}

/// Runs `ip ARGS`; its standard output, or why it failed.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The local default route of a family.
fn any(flag: &str) -> &'static str {
    if flag == "-4" {
        "0.0.0.0/0"
    } else {
        "::/0"
    }
}

impl PolicyRoutes {
    /// Makes sure `ip rule … fwmark MARK lookup TABLE` and a local default route in
    /// TABLE exist for each family (`-4`, `-6`).
    pub fn install(mark: u32, table: u32, flags: &[&'static str]) -> Result<Self, String> {
        let mut routes = Self {
            mark: mark.to_string(),
            table: table.to_string(),
            families: Vec::new(),
        };
        for &flag in flags {
            routes.add(flag)?;
        }
        Ok(routes)
    }

    /// Adds a family (a reload that needs one more); nothing if it is there.
    pub fn add(&mut self, flag: &'static str) -> Result<(), String> {
        if self.families.iter().any(|f| f.flag == flag) {
            return Ok(());
        }
        let (m, t) = (self.mark.as_str(), self.table.as_str());
        let present = !ip(&[flag, "rule", "show", "fwmark", m, "lookup", t])?
            .trim()
            .is_empty();
        if !present {
            ip(&[flag, "rule", "add", "fwmark", m, "lookup", t])?;
        }
        self.families.push(Family {
            flag,
            owned: !present,
        });
        ip(&[
            flag,
            "route",
            "replace",
            "local",
            any(flag),
            "dev",
            "lo",
            "table",
            t,
        ])?;
        Ok(())
    }

    /// The families it covers.
    pub fn covers(&self, flag: &str) -> bool {
        self.families.iter().any(|f| f.flag == flag)
    }

    /// Removes the rules and routes ftpgate added (at exit).
    pub fn remove(&self) {
        let (m, t) = (self.mark.as_str(), self.table.as_str());
        for f in self.families.iter().filter(|f| f.owned) {
            let removed = ip(&[f.flag, "rule", "del", "fwmark", m, "lookup", t]).and_then(|_| {
                ip(&[
                    f.flag,
                    "route",
                    "del",
                    "local",
                    any(f.flag),
                    "dev",
                    "lo",
                    "table",
                    t,
                ])
            });
            if let Err(e) = removed {
                tracing::warn!(error = %e, "cannot remove the policy routing");
            }
        }
    }
}
