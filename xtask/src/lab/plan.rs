//! The lab's address plan: which namespaces exist, how veth pairs link them, and which
//! addresses they get. Pure data, no side effects, so it is unit-tested without root.
//!
//! Every address comes from the IPv4 documentation ranges (RFC 5737):
//!
//! | range              | use                                                   |
//! |--------------------|-------------------------------------------------------|
//! | `203.0.113.0/26`   | the "internet": one bridge, public hosts and NAT WANs  |
//! | `198.51.100.0/30`s | carrier-grade NAT inside links (carrier ↔ home router) |
//! | `192.0.2.0/29`s    | home LANs (router ↔ host), one /29 per home            |
//!
//! IPv6 is switched off in every lab namespace, so no link-local address exists either.

use std::fmt;
use std::net::Ipv4Addr;

/// Prefix of every namespace the lab creates: `kithlab-<id>-<node>`.
pub(crate) const NS_PREFIX: &str = "kithlab-";

/// The documentation ranges, the only ranges lab addresses may come from.
pub(crate) const ALLOWED: [Subnet; 3] = [
    Subnet::new(192, 0, 2, 0, 24),
    Subnet::new(198, 51, 100, 0, 24),
    Subnet::new(203, 0, 113, 0, 24),
];

/// The internet segment: a bridge in the `inet` namespace.
pub(crate) const INTERNET: Subnet = Subnet::new(203, 0, 113, 0, 26);
/// Home LANs are /29s carved out of this range, one per home.
const HOME_LANS: Subnet = Subnet::new(192, 0, 2, 0, 24);
/// Carrier-to-home links are /30s carved out of this range.
const CARRIER_LINKS: Subnet = Subnet::new(198, 51, 100, 0, 24);
/// Public hosts get `INTERNET.host(PUBLIC_BASE + k)`.
const PUBLIC_BASE: u32 = 2;
/// Internet-facing routers get `INTERNET.host(ROUTER_BASE + i)`.
const ROUTER_BASE: u32 = 16;
/// Bounds that keep every address inside its subnet.
const MAX_PUBLICS: usize = ROUTER_BASE as usize - PUBLIC_BASE as usize;
const MAX_HOMES: usize = 32;
/// Longest home name; keeps `p-<name>-r` within the 15-byte interface-name limit.
const MAX_HOME_NAME: usize = 10;

/// Name of the bridge in the internet namespace.
pub(crate) const BRIDGE: &str = "br0";
/// Name of the internet namespace's node.
pub(crate) const INTERNET_NODE: &str = "inet";

/// An IPv4 subnet, `base/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Subnet {
    /// Network address.
    pub(crate) base: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub(crate) prefix: u8,
}

impl Subnet {
    /// `a.b.c.d/prefix`.
    pub(crate) const fn new(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Self {
        Subnet {
            base: Ipv4Addr::new(a, b, c, d),
            prefix,
        }
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// Number of addresses in the subnet, network and broadcast included.
    pub(crate) fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// Whether `ip` lies inside this subnet.
    pub(crate) fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.base) & self.mask()
    }

    /// Whether `ip` is a usable host address (neither network nor broadcast address).
    pub(crate) fn is_host(&self, ip: Ipv4Addr) -> bool {
        let offset = u64::from(u32::from(ip).wrapping_sub(u32::from(self.base)));
        self.contains(ip) && offset != 0 && offset != self.size() - 1
    }

    /// Whether the two subnets share any address.
    pub(crate) fn overlaps(&self, other: &Subnet) -> bool {
        self.contains(other.base) || other.contains(self.base)
    }

    /// Whether this subnet lies entirely inside `outer`.
    pub(crate) fn within(&self, outer: &Subnet) -> bool {
        self.prefix >= outer.prefix && outer.contains(self.base)
    }

    /// The `n`-th address of the subnet (`n = 1` is the first host address).
    fn host(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + n)
    }

    /// The `index`-th sub-subnet of length `prefix`.
    fn split(&self, prefix: u8, index: u32) -> Subnet {
        let step = 1u32 << (32 - u32::from(prefix));
        Subnet {
            base: Ipv4Addr::from(u32::from(self.base) + step * index),
            prefix,
        }
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// The nftables behaviour of a router (see `nft.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nat {
    /// `masquerade`: Linux keeps the source port, one mapping for all destinations.
    Eim,
    /// `masquerade random,fully-random`: a new random port per destination.
    Edm,
    /// `masquerade` plus a forward rule that drops all outbound UDP.
    UdpBlock,
}

/// What kind of home network a home is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HomeKind {
    /// One endpoint-independent-mapping NAT.
    Eim,
    /// One endpoint-dependent-mapping NAT.
    Edm,
    /// A carrier-grade NAT in front of a home NAT, both endpoint-independent.
    Cgnat,
    /// A NAT router whose firewall drops all outbound UDP.
    UdpBlock,
}

impl HomeKind {
    /// Short lowercase name, as used in node names, tables and figures.
    pub(crate) fn name(self) -> &'static str {
        match self {
            HomeKind::Eim => "eim",
            HomeKind::Edm => "edm",
            HomeKind::Cgnat => "cgnat",
            HomeKind::UdpBlock => "udpblock",
        }
    }
}

/// What a namespace is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The internet segment: holds the bridge, has no address.
    Internet,
    /// A host with a public address on the internet segment.
    Public,
    /// A router with nftables rules.
    Router(Nat),
    /// A host behind a router.
    Host,
}

/// An addressed interface of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Iface {
    /// Interface name inside the node's namespace.
    pub(crate) name: String,
    /// Its address.
    pub(crate) addr: Ipv4Addr,
    /// The subnet the address lives in (gives the prefix length).
    pub(crate) subnet: Subnet,
}

/// One namespace of the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    /// Short name, unique within the lab, e.g. `eim-r`.
    pub(crate) name: String,
    /// What it does.
    pub(crate) role: Role,
    /// Addressed interfaces.
    pub(crate) ifaces: Vec<Iface>,
    /// Default gateway, always a lab address on a connected subnet.
    pub(crate) gateway: Option<Ipv4Addr>,
}

/// A veth pair between two nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    /// Node of the first end (where the pair is created).
    pub(crate) a: String,
    /// Interface name of the first end.
    pub(crate) a_if: String,
    /// Node of the second end.
    pub(crate) b: String,
    /// Interface name of the second end.
    pub(crate) b_if: String,
    /// The first end is a port of the internet bridge; this is an access link and
    /// carries the configured delay in both directions.
    pub(crate) access: bool,
}

/// A home network: its host and the router(s) in front of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Home {
    /// Home name, e.g. `eim`.
    pub(crate) name: String,
    /// Its kind.
    pub(crate) kind: HomeKind,
    /// The host node behind the NAT(s).
    pub(crate) host: String,
    /// The home router node (LAN side faces the host).
    pub(crate) router: String,
    /// The node whose WAN address is on the internet (the carrier router for `cgnat`,
    /// the home router otherwise): the address the internet should observe.
    pub(crate) edge: String,
}

/// The complete lab layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// All namespaces, the internet first.
    pub(crate) nodes: Vec<Node>,
    /// All veth pairs.
    pub(crate) links: Vec<Link>,
    /// Public host node names (`pub1`, `pub2`, …).
    pub(crate) publics: Vec<String>,
    /// Home networks.
    pub(crate) homes: Vec<Home>,
}

impl Plan {
    /// The standard lab: two public hosts, one home of each kind and a second
    /// endpoint-dependent home (endpoint-dependent × endpoint-dependent must stay relayed).
    pub(crate) fn standard() -> Plan {
        let homes = [
            ("eim", HomeKind::Eim),
            ("edm", HomeKind::Edm),
            ("cgnat", HomeKind::Cgnat),
            ("udpblock", HomeKind::UdpBlock),
            ("edm2", HomeKind::Edm),
        ];
        Plan::new(2, &homes).expect("the standard plan is valid")
    }

    /// A lab with `publics` public hosts and the given homes (name, kind).
    pub(crate) fn new(publics: usize, homes: &[(&str, HomeKind)]) -> Result<Plan, String> {
        if publics > MAX_PUBLICS {
            return Err(format!("at most {MAX_PUBLICS} public hosts"));
        }
        if homes.len() > MAX_HOMES {
            return Err(format!("at most {MAX_HOMES} homes"));
        }
        let mut plan = Plan {
            nodes: vec![Node {
                name: INTERNET_NODE.into(),
                role: Role::Internet,
                ifaces: vec![],
                gateway: None,
            }],
            links: vec![],
            publics: vec![],
            homes: vec![],
        };
        for k in 0..publics {
            let name = format!("pub{}", k + 1);
            plan.attach_to_internet(&name, "eth0");
            plan.nodes.push(Node {
                name: name.clone(),
                role: Role::Public,
                ifaces: vec![iface("eth0", INTERNET, PUBLIC_BASE + k as u32)],
                gateway: None,
            });
            plan.publics.push(name);
        }
        for (i, &(home, kind)) in homes.iter().enumerate() {
            plan.add_home(i as u32, home, kind)?;
        }
        Ok(plan)
    }

    /// Links `node` to the internet bridge (an access link).
    fn attach_to_internet(&mut self, node: &str, node_if: &str) {
        self.link(INTERNET_NODE, &format!("p-{node}"), node, node_if);
    }

    fn link(&mut self, a: &str, a_if: &str, b: &str, b_if: &str) {
        self.links.push(Link {
            a: a.into(),
            a_if: a_if.into(),
            b: b.into(),
            b_if: b_if.into(),
            access: a == INTERNET_NODE,
        });
    }

    fn add_home(&mut self, i: u32, name: &str, kind: HomeKind) -> Result<(), String> {
        let valid = !name.is_empty()
            && name.len() <= MAX_HOME_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !valid || self.node(&format!("{name}-h")).is_some() || name == INTERNET_NODE {
            return Err(format!(
                "bad or duplicate home name {name:?} (1–{MAX_HOME_NAME} of [a-z0-9])"
            ));
        }
        let host = format!("{name}-h");
        let router = format!("{name}-r");
        let lan = HOME_LANS.split(29, i);
        let wan_ip = ROUTER_BASE + i;
        let nat = match kind {
            HomeKind::Eim | HomeKind::Cgnat => Nat::Eim,
            HomeKind::Edm => Nat::Edm,
            HomeKind::UdpBlock => Nat::UdpBlock,
        };
        let edge = if kind == HomeKind::Cgnat {
            // Carrier router on the internet; the home router's WAN is a carrier /30.
            let carrier = format!("{name}-c");
            let inside = CARRIER_LINKS.split(30, i);
            self.attach_to_internet(&carrier, "wan");
            self.link(&carrier, "lan", &router, "wan");
            self.nodes.push(Node {
                name: carrier.clone(),
                role: Role::Router(Nat::Eim),
                ifaces: vec![iface("wan", INTERNET, wan_ip), iface("lan", inside, 1)],
                gateway: None,
            });
            self.nodes.push(Node {
                name: router.clone(),
                role: Role::Router(nat),
                ifaces: vec![iface("wan", inside, 2), iface("lan", lan, 1)],
                gateway: Some(inside.host(1)),
            });
            carrier
        } else {
            self.attach_to_internet(&router, "wan");
            self.nodes.push(Node {
                name: router.clone(),
                role: Role::Router(nat),
                ifaces: vec![iface("wan", INTERNET, wan_ip), iface("lan", lan, 1)],
                gateway: None,
            });
            router.clone()
        };
        self.link(&router, "lan", &host, "eth0");
        self.nodes.push(Node {
            name: host.clone(),
            role: Role::Host,
            ifaces: vec![iface("eth0", lan, 2)],
            gateway: Some(lan.host(1)),
        });
        self.homes.push(Home {
            name: name.into(),
            kind,
            host,
            router,
            edge,
        });
        Ok(())
    }

    /// The node called `name`.
    pub(crate) fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The address of `node`'s interface `iface`.
    pub(crate) fn addr(&self, node: &str, iface: &str) -> Option<Ipv4Addr> {
        self.node(node)?
            .ifaces
            .iter()
            .find(|i| i.name == iface)
            .map(|i| i.addr)
    }

    /// The address a node has on the internet segment or its LAN: the address of its
    /// first interface (`eth0` for hosts, `wan` for routers).
    pub(crate) fn primary_addr(&self, node: &str) -> Option<Ipv4Addr> {
        self.node(node)?.ifaces.first().map(|i| i.addr)
    }

    /// Checks the invariants the lab relies on: every address is a host address in a
    /// documentation range, no address is used twice, and different subnets do not
    /// overlap. Run before anything is created.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let ifaces: Vec<(&str, &Iface)> = self
            .nodes
            .iter()
            .flat_map(|n| n.ifaces.iter().map(move |i| (n.name.as_str(), i)))
            .collect();
        for (x, (node, i)) in ifaces.iter().enumerate() {
            let documented = ALLOWED.iter().any(|r| i.subnet.within(r));
            if !documented || !i.subnet.is_host(i.addr) {
                return Err(format!(
                    "{node} {}: {} is not a host address of a documentation subnet ({})",
                    i.name, i.addr, i.subnet
                ));
            }
            for (other, j) in &ifaces[x + 1..] {
                if i.addr == j.addr || (i.subnet != j.subnet && i.subnet.overlaps(&j.subnet)) {
                    return Err(format!("{node} {} clashes with {other} {}", i.addr, j.addr));
                }
            }
        }
        Ok(())
    }

    /// Namespace name of `node` in the lab run `id`.
    pub(crate) fn namespace(id: &str, node: &str) -> String {
        format!("{NS_PREFIX}{id}-{node}")
    }

    /// Human-readable listing of every node, interface and route.
    pub(crate) fn describe(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let role = match n.role {
                Role::Internet => "internet (bridge br0, no address)".to_string(),
                Role::Public => "public host".to_string(),
                Role::Router(nat) => format!("router ({nat:?})"),
                Role::Host => "host".to_string(),
            };
            out.push_str(&format!("{:<12} {role}\n", n.name));
            for i in &n.ifaces {
                out.push_str(&format!(
                    "{:<12}   {:<5} {}/{}  (subnet {})\n",
                    "", i.name, i.addr, i.subnet.prefix, i.subnet
                ));
            }
            if let Some(gw) = n.gateway {
                out.push_str(&format!("{:<12}   default via {gw}\n", ""));
            }
        }
        out
    }
}

fn iface(name: &str, subnet: Subnet, n: u32) -> Iface {
    Iface {
        name: name.into(),
        addr: subnet.host(n),
        subnet,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(ip: Ipv4Addr) -> bool {
        ALLOWED.iter().any(|r| r.contains(ip))
    }

    #[test]
    fn every_address_is_a_documentation_host_address() {
        let plan = Plan::standard();
        for n in &plan.nodes {
            for i in &n.ifaces {
                assert!(allowed(i.addr), "{} {} {}", n.name, i.name, i.addr);
                assert!(ALLOWED.iter().any(|r| i.subnet.within(r)), "{}", i.subnet);
                assert!(
                    i.subnet.is_host(i.addr),
                    "{} not a host of {}",
                    i.addr,
                    i.subnet
                );
                assert!(i.subnet.prefix >= 24, "{} is too large", i.subnet);
            }
            if let Some(gw) = n.gateway {
                assert!(allowed(gw));
                // The gateway is on a connected subnet and belongs to another lab node.
                assert!(n.ifaces.iter().any(|i| i.subnet.contains(gw)));
                let owner = plan
                    .nodes
                    .iter()
                    .find(|o| o.ifaces.iter().any(|i| i.addr == gw));
                assert!(owner.is_some_and(|o| o.name != n.name), "{gw}");
            }
        }
    }

    #[test]
    fn addresses_are_unique_and_subnets_do_not_overlap() {
        let plan = Plan::standard();
        plan.validate().unwrap();
        let mut broken = plan.clone();
        broken.nodes[1].ifaces[0].addr = Ipv4Addr::new(10, 0, 0, 1);
        assert!(broken.validate().is_err());
        let ifaces: Vec<&Iface> = plan.nodes.iter().flat_map(|n| &n.ifaces).collect();
        for (x, a) in ifaces.iter().enumerate() {
            for b in &ifaces[x + 1..] {
                assert_ne!(a.addr, b.addr);
                // Two interfaces share a subnet only if it is the very same one.
                assert!(a.subnet == b.subnet || !a.subnet.overlaps(&b.subnet));
            }
        }
    }

    #[test]
    fn links_join_lab_nodes_and_names_fit() {
        let plan = Plan::standard();
        let mut ends = vec![];
        for l in &plan.links {
            assert!(plan.node(&l.a).is_some() && plan.node(&l.b).is_some());
            assert_ne!(l.a, l.b);
            for (node, name) in [(&l.a, &l.a_if), (&l.b, &l.b_if)] {
                assert!(name.len() <= 15, "{name}");
                assert!(!ends.contains(&(node, name)), "{node} {name} twice");
                ends.push((node, name));
            }
            assert_eq!(l.access, l.a == INTERNET_NODE);
        }
        // Every addressed interface is the end of exactly one link.
        for n in &plan.nodes {
            for i in &n.ifaces {
                assert!(ends.contains(&(&n.name, &i.name)), "{} {}", n.name, i.name);
            }
        }
    }

    #[test]
    fn the_standard_plan_is_as_documented() {
        let plan = Plan::standard();
        let a = |n: &str, i: &str| plan.addr(n, i).unwrap().to_string();
        assert_eq!(a("pub1", "eth0"), "203.0.113.2");
        assert_eq!(a("pub2", "eth0"), "203.0.113.3");
        assert_eq!(a("eim-r", "wan"), "203.0.113.16");
        assert_eq!(a("eim-h", "eth0"), "192.0.2.2");
        assert_eq!(a("edm-r", "wan"), "203.0.113.17");
        assert_eq!(a("edm-h", "eth0"), "192.0.2.10");
        assert_eq!(a("cgnat-c", "wan"), "203.0.113.18");
        assert_eq!(a("cgnat-c", "lan"), "198.51.100.9");
        assert_eq!(a("cgnat-r", "wan"), "198.51.100.10");
        assert_eq!(a("cgnat-h", "eth0"), "192.0.2.18");
        assert_eq!(a("udpblock-r", "wan"), "203.0.113.19");
        assert_eq!(a("udpblock-h", "eth0"), "192.0.2.26");
        assert_eq!(a("edm2-r", "wan"), "203.0.113.20");
        assert_eq!(a("edm2-h", "eth0"), "192.0.2.34");
        assert_eq!(plan.nodes.len(), 14);
        let cg = plan
            .homes
            .iter()
            .find(|h| h.kind == HomeKind::Cgnat)
            .unwrap();
        assert_eq!(cg.edge, "cgnat-c");
        assert_eq!(Plan::namespace("main", "eim-h"), "kithlab-main-eim-h");
    }

    #[test]
    fn bounds_are_enforced() {
        assert!(Plan::new(MAX_PUBLICS + 1, &[]).is_err());
        assert!(Plan::new(1, &[("Bad", HomeKind::Eim)]).is_err());
        assert!(Plan::new(1, &[("a", HomeKind::Eim), ("a", HomeKind::Edm)]).is_err());
        assert!(Plan::new(1, &[("waytoolongname", HomeKind::Eim)]).is_err());
        let many: Vec<(String, HomeKind)> = (0..MAX_HOMES)
            .map(|i| (format!("h{i}"), HomeKind::Cgnat))
            .collect();
        let many: Vec<(&str, HomeKind)> = many.iter().map(|(n, k)| (n.as_str(), *k)).collect();
        let plan = Plan::new(MAX_PUBLICS, &many).unwrap();
        plan.validate().unwrap();
        for n in &plan.nodes {
            for i in &n.ifaces {
                assert!(allowed(i.addr) && i.subnet.is_host(i.addr), "{}", i.addr);
            }
        }
    }

    #[test]
    fn subnet_arithmetic() {
        let s = Subnet::new(192, 0, 2, 8, 29);
        assert!(s.contains(Ipv4Addr::new(192, 0, 2, 15)));
        assert!(!s.contains(Ipv4Addr::new(192, 0, 2, 16)));
        assert!(!s.is_host(Ipv4Addr::new(192, 0, 2, 8)));
        assert!(!s.is_host(Ipv4Addr::new(192, 0, 2, 15)));
        assert!(s.is_host(Ipv4Addr::new(192, 0, 2, 9)));
        assert!(s.overlaps(&Subnet::new(192, 0, 2, 0, 24)));
        assert!(!s.overlaps(&Subnet::new(192, 0, 2, 16, 29)));
        assert_eq!(s.to_string(), "192.0.2.8/29");
    }
}
