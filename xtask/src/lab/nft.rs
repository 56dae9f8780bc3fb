//! nftables rule sets of the lab's routers, as text for `nft -f -`.
//!
//! Every router behaves like a home router:
//!
//! * `input` (packets addressed to the router itself): on the WAN interface only
//!   established/related packets pass; `ct state new` is dropped. Dropped packets never
//!   get their conntrack entry confirmed, so an unsolicited packet from `B:q` to the
//!   router's `W:p` leaves no entry behind that would later clash with a mapping
//!   `host → B:q` on `W:p` (which would make an endpoint-independent NAT pick another
//!   port, and hole punching look impossible when it is not).
//! * `forward`: inbound only established/related; outbound everything from the LAN
//!   (except UDP for [`Nat::UdpBlock`]).
//! * `postrouting`: source NAT out of the WAN interface, with the mapping behaviour of
//!   the router's [`Nat`] kind.

use super::plan::Nat;

/// Name of the nftables table the lab creates in each router namespace.
pub(crate) const TABLE: &str = "kithlab";

/// Switches for the rule set; the defaults are what the lab normally uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RuleOptions {
    /// Drop unsolicited (`ct state new`) packets addressed to the router on its WAN side.
    /// Off only to demonstrate the conntrack clash it prevents.
    pub(crate) input_drop: bool,
}

impl Default for RuleOptions {
    fn default() -> Self {
        RuleOptions { input_drop: true }
    }
}

/// The `masquerade` statement of a NAT kind.
pub(crate) fn masquerade(nat: Nat) -> &'static str {
    match nat {
        // Linux keeps the source port when the tuple is free: one mapping for all
        // destinations (endpoint-independent mapping).
        Nat::Eim | Nat::UdpBlock => "masquerade",
        // A fresh random port for every new conntrack entry (endpoint-dependent).
        Nat::Edm => "masquerade random,fully-random",
    }
}

/// The full rule set of a router of kind `nat` with interfaces `wan` and `lan`.
pub(crate) fn ruleset(nat: Nat, opts: RuleOptions) -> String {
    let mut input = vec![r#"iifname "wan" ct state established,related accept"#];
    if opts.input_drop {
        input.push(r#"iifname "wan" ct state new drop"#);
        input.push(r#"iifname "wan" ct state invalid drop"#);
    }
    let mut forward = vec![
        "ct state established,related accept",
        "ct state invalid drop",
    ];
    if nat == Nat::UdpBlock {
        forward.push(r#"iifname "lan" oifname "wan" meta l4proto udp drop"#);
    }
    forward.push(r#"iifname "lan" oifname "wan" accept"#);
    let rules = |rules: &[&str]| {
        rules
            .iter()
            .map(|r| format!("\t\t{r}\n"))
            .collect::<String>()
    };
    format!(
        "table ip {TABLE} {{\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         {input}\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy drop;\n\
         {forward}\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\toifname \"wan\" {masq}\n\
         \t}}\n\
         }}\n",
        input = rules(&input),
        forward = rules(&forward),
        masq = masquerade(nat),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<&str> {
        s.lines().map(str::trim).collect()
    }

    #[test]
    fn eim_router() {
        let r = ruleset(Nat::Eim, RuleOptions::default());
        let l = lines(&r);
        assert_eq!(l[0], "table ip kithlab {");
        assert!(l.contains(&r#"iifname "wan" ct state new drop"#));
        assert!(l.contains(&r#"oifname "wan" masquerade"#));
        assert!(l.contains(&"type filter hook forward priority filter; policy drop;"));
        assert!(!r.contains("random"));
        assert!(!r.contains("udp"));
        assert_eq!(r.matches('{').count(), r.matches('}').count());
    }

    #[test]
    fn edm_router_randomises_ports() {
        let r = ruleset(Nat::Edm, RuleOptions::default());
        assert!(lines(&r).contains(&r#"oifname "wan" masquerade random,fully-random"#));
    }

    #[test]
    fn udpblock_drops_outbound_udp_before_accepting_lan_traffic() {
        let r = ruleset(Nat::UdpBlock, RuleOptions::default());
        let drop = r.find("meta l4proto udp drop").expect("udp drop rule");
        let accept = r.find(r#"iifname "lan" oifname "wan" accept"#).unwrap();
        assert!(drop < accept);
    }

    #[test]
    fn input_drop_can_be_switched_off() {
        let r = ruleset(Nat::Eim, RuleOptions { input_drop: false });
        assert!(!r.contains("ct state new drop"));
        assert!(r.contains(r#"iifname "wan" ct state established,related accept"#));
    }
}
