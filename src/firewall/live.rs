//! The running ruleset, as `nft -j list ruleset` describes it: which base chains filter
//! the input and forward hooks (and whether they drop), and whether they already jump to
//! ftpgate's chain.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use super::FirewallError;

/// A chain, named the way nft names it: family, table, chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRef {
    /// `ip`, `ip6` or `inet`.
    pub family: String,
    /// The table.
    pub table: String,
    /// The chain.
    pub chain: String,
}

impl ChainRef {
    /// The family's name in nft syntax is also what matters for the rules it may hold:
    /// whether an IPv4 (`ip`) or IPv6 (`ip6`) rule fits into a chain of this table.
    pub fn takes(&self, ipv4: bool) -> bool {
        match self.family.as_str() {
            "ip" => ipv4,
            "ip6" => !ipv4,
            _ => true,
        }
    }
}

impl fmt::Display for ChainRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.family, self.table, self.chain)
    }
}

impl FromStr for ChainRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split_whitespace().collect();
        let [family, table, chain] = parts[..] else {
            return Err(format!(
                "expected \"FAMILY TABLE CHAIN\", such as \"inet filter input\" (got {s:?})"
            ));
        };
        if !matches!(family, "ip" | "ip6" | "inet") {
            return Err(format!("family {family:?}: expected ip, ip6 or inet"));
        }
        let name_ok = |n: &str| {
            n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        };
        if !name_ok(table) || !name_ok(chain) {
            return Err(format!(
                "{s:?}: table and chain names are letters, digits and _-."
            ));
        }
        Ok(Self {
            family: family.into(),
            table: table.into(),
            chain: chain.into(),
        })
    }
}

/// A base chain of the running ruleset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseChain {
    /// Where it is.
    pub chain: ChainRef,
    /// Its hook: `input`, `forward`, ….
    pub hook: String,
    /// Whether its policy is drop, or it ends in a rule that drops or rejects everything.
    pub drops: bool,
}

/// What ftpgate needs to know of the running ruleset.
#[derive(Debug, Clone, Default)]
pub struct LiveRuleset {
    /// Filter base chains.
    pub base_chains: Vec<BaseChain>,
    /// Rules that jump: (the chain they are in, their target).
    pub jumps: Vec<(ChainRef, String)>,
    /// Tables that exist.
    pub tables: Vec<(String, String)>,
    /// Chains with a rule that drops or rejects whatever reaches it (`counter drop`).
    pub catch_all_drops: Vec<ChainRef>,
}

/// Whether a rule's expressions drop or reject every packet that reaches it: nothing but
/// counters, logs and the verdict.
fn drops_everything(exprs: &[Value]) -> bool {
    let verdict = exprs
        .iter()
        .any(|e| e.get("drop").is_some() || e.get("reject").is_some());
    verdict
        && exprs.iter().all(|e| {
            ["drop", "reject", "counter", "log", "limit"]
                .iter()
                .any(|k| e.get(k).is_some())
        })
}

impl LiveRuleset {
    /// Reads `nft -j list ruleset` output.
    pub fn from_json(text: &str) -> Result<Self, FirewallError> {
        let doc: Value = serde_json::from_str(text)
            .map_err(|e| FirewallError::Ruleset(format!("not nft JSON: {e}")))?;
        let items = doc
            .get("nftables")
            .and_then(Value::as_array)
            .ok_or_else(|| FirewallError::Ruleset("no \"nftables\" array".into()))?;
        let text_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let chain_ref = |v: &Value, name_key: &str| -> Option<ChainRef> {
            Some(ChainRef {
                family: text_of(v, "family")?,
                table: text_of(v, "table")?,
                chain: text_of(v, name_key)?,
            })
        };
        let mut live = Self::default();
        for item in items {
            if let Some(t) = item.get("table") {
                if let (Some(f), Some(n)) = (text_of(t, "family"), text_of(t, "name")) {
                    live.tables.push((f, n));
                }
            }
            if let Some(c) = item.get("chain") {
                let filter = text_of(c, "type").as_deref() == Some("filter");
                if let (true, Some(hook), Some(chain)) =
                    (filter, text_of(c, "hook"), chain_ref(c, "name"))
                {
                    live.base_chains.push(BaseChain {
                        chain,
                        hook,
                        drops: text_of(c, "policy").as_deref() == Some("drop"),
                    });
                }
            }
            if let Some(r) = item.get("rule") {
                let Some(chain) = chain_ref(r, "chain") else {
                    continue;
                };
                let exprs = r.get("expr").and_then(Value::as_array);
                if exprs.is_some_and(|e| drops_everything(e)) {
                    live.catch_all_drops.push(chain.clone());
                }
                for e in exprs.into_iter().flatten() {
                    if let Some(target) = e
                        .get("jump")
                        .and_then(|j| j.get("target"))
                        .and_then(Value::as_str)
                    {
                        live.jumps.push((chain.clone(), target.to_owned()));
                    }
                }
            }
        }
        for b in &mut live.base_chains {
            b.drops |= live.catch_all_drops.contains(&b.chain);
        }
        Ok(live)
    }

    /// Reads the running ruleset with `nft -j list ruleset`.
    pub fn read() -> Result<Self, FirewallError> {
        let out = std::process::Command::new("nft")
            .args(["-j", "list", "ruleset"])
            .output()
            .map_err(|e| FirewallError::Ruleset(format!("cannot run nft: {e}")))?;
        if !out.status.success() {
            return Err(FirewallError::Ruleset(
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ));
        }
        Self::from_json(&String::from_utf8_lossy(&out.stdout))
    }

    /// The base chains at `hook` that drop: by policy, or with a last rule that drops
    /// everything.
    pub fn dropping(&self, hook: &str) -> Vec<ChainRef> {
        self.base_chains
            .iter()
            .filter(|b| b.hook == hook && b.drops)
            .map(|b| b.chain.clone())
            .collect()
    }

    /// Whether `chain` exists as a base chain.
    pub fn has_chain(&self, chain: &ChainRef) -> bool {
        self.base_chains.iter().any(|b| &b.chain == chain)
    }

    /// Whether `chain` already jumps to `target`.
    pub fn jumps_to(&self, chain: &ChainRef, target: &str) -> bool {
        self.jumps.iter().any(|(c, t)| c == chain && t == target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULESET: &str = r#"{"nftables": [
        {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"table": {"family": "inet", "name": "filter", "handle": 1}},
        {"chain": {"family": "inet", "table": "filter", "name": "input", "handle": 1,
                   "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}},
        {"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 2,
                   "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
        {"chain": {"family": "inet", "table": "filter", "name": "ftpgate_input", "handle": 3}},
        {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 4,
                  "expr": [{"jump": {"target": "ftpgate_input"}}]}},
        {"table": {"family": "ip", "name": "nat", "handle": 2}},
        {"table": {"family": "ip", "name": "fw", "handle": 3}},
        {"chain": {"family": "ip", "table": "fw", "name": "fwd", "handle": 1,
                   "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
        {"rule": {"family": "ip", "table": "fw", "chain": "fwd", "handle": 2,
                  "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lan0"}},
                           {"drop": null}]}},
        {"rule": {"family": "ip", "table": "fw", "chain": "fwd", "handle": 3,
                  "expr": [{"counter": {"packets": 0, "bytes": 0}},
                           {"reject": {"type": "icmp", "expr": "admin-prohibited"}}]}},
        {"chain": {"family": "ip", "table": "nat", "name": "post", "handle": 1,
                   "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}
    ]}"#;

    #[test]
    fn dropping_base_chains_and_existing_jumps_are_found() {
        let live = LiveRuleset::from_json(RULESET).unwrap();
        let input: ChainRef = "inet filter input".parse().unwrap();
        assert_eq!(live.dropping("input"), vec![input.clone()]);
        assert_eq!(
            live.dropping("forward"),
            vec!["ip fw fwd".parse().unwrap()],
            "inet filter forward accepts; ip fw fwd ends in a reject of everything"
        );
        assert!(live.jumps_to(&input, "ftpgate_input"));
        assert!(!live.jumps_to(&input, "ftpgate_forward"));
        assert_eq!(live.tables.len(), 3);
    }

    #[test]
    fn chain_names_are_checked() {
        assert!("inet filter".parse::<ChainRef>().is_err());
        assert!("arp filter input".parse::<ChainRef>().is_err());
        assert!("inet fil;ter input".parse::<ChainRef>().is_err());
        let c: ChainRef = "ip6 filter INPUT".parse().unwrap();
        assert!(c.takes(false) && !c.takes(true));
        assert!(LiveRuleset::from_json("{}").is_err());
    }
}
