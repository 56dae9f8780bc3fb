//! Audits that the built lab stays inside its fences: only documentation-range IPv4
//! addresses (plus loopback), no IPv6 address at all, every gateway a documentation
//! address, and no new interface in the root namespace. Read-only.

use std::net::Ipv4Addr;

use super::plan::ALLOWED;
use super::sys::Cmd;
use super::topology::Lab;

/// Interface names in the root namespace (`ip -o link show`, read-only).
pub(crate) fn root_links() -> Result<Vec<String>, String> {
    let out = Cmd::new("ip", ["-o", "link", "show"]).run()?;
    Ok(link_names(&out))
}

fn link_names(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect()
}

/// Addresses in `ip -o addr` output that are neither loopback IPv4 nor inside a
/// documentation range; every IPv6 address counts (IPv6 is off in the lab).
fn foreign_addresses(out: &str) -> Vec<String> {
    let mut bad = vec![];
    for line in out.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        for (i, word) in w.iter().enumerate() {
            let Some(addr) = w.get(i + 1).and_then(|a| a.split('/').next()) else {
                continue;
            };
            match *word {
                "inet" => match addr.parse::<Ipv4Addr>() {
                    Ok(ip) if ip.is_loopback() || ALLOWED.iter().any(|r| r.contains(ip)) => {}
                    _ => bad.push(addr.to_owned()),
                },
                "inet6" => bad.push(addr.to_owned()),
                _ => {}
            }
        }
    }
    bad
}

/// Gateways (`via X`) in `ip route` output that are not documentation addresses.
fn foreign_gateways(out: &str) -> Vec<String> {
    let mut bad = vec![];
    for line in out.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        for pair in w.windows(2) {
            if pair[0] == "via" {
                let ok = pair[1]
                    .parse::<Ipv4Addr>()
                    .is_ok_and(|ip| ALLOWED.iter().any(|r| r.contains(ip)));
                if !ok {
                    bad.push(pair[1].to_owned());
                }
            }
        }
    }
    bad
}

/// Every violation found in the running lab; `root_before` is [`root_links`] from
/// before the lab was built.
pub(crate) fn audit(lab: &Lab, root_before: &[String]) -> Result<Vec<String>, String> {
    let mut bad = vec![];
    for node in &lab.plan.nodes {
        let ns = lab.ns(&node.name);
        let addrs = Cmd::new("ip", ["-n", ns.as_str(), "-o", "addr", "show"]).run()?;
        for a in foreign_addresses(&addrs) {
            bad.push(format!(
                "{}: address {a} outside the documentation ranges",
                node.name
            ));
        }
        for family in ["-4", "-6"] {
            let routes = Cmd::new("ip", ["-n", ns.as_str(), family, "route", "show"]).run()?;
            for g in foreign_gateways(&routes) {
                bad.push(format!("{}: gateway {g} outside the lab", node.name));
            }
        }
    }
    for l in root_links()? {
        if !root_before.contains(&l) {
            bad.push(format!("root namespace: new interface {l}"));
        }
    }
    Ok(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_output() {
        let addrs = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n\
                     2: eth0    inet 192.0.2.2/29 scope global eth0\\       valid_lft forever\n\
                     3: wan    inet 10.0.0.1/24 scope global wan\n\
                     3: wan    inet6 fe80::1/64 scope link\n";
        assert_eq!(foreign_addresses(addrs), vec!["10.0.0.1", "fe80::1"]);
        let routes = "default via 192.0.2.1 dev eth0\n192.0.2.0/29 dev eth0 proto kernel\n\
                      default via 172.17.0.1 dev eth0\n";
        assert_eq!(foreign_gateways(routes), vec!["172.17.0.1"]);
        let links = "1: lo: <LOOPBACK,UP> mtu 65536\n2: eth0@if5: <BROADCAST> mtu 1500\n";
        assert_eq!(link_names(links), vec!["lo", "eth0"]);
    }
}
