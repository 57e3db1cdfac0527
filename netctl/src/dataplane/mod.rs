//! The two dataplanes a platform can run on: [`ebpf`] (the embedded object, its pins,
//! loading and attaching, typed readers of the pinned maps) and [`iptables`] (the
//! kube-proxy-style baseline: chains, rules, the compiled policy as filter chains), and
//! what the controller hands both: [`lb`], the desired frontends and the writer seam.

pub mod ebpf;
pub mod iptables;
pub mod lb;
