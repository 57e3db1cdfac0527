//! Network policy between identities: who each address is ([`identity`]), what the policy
//! says for a connection ([`model`], the reference semantics, written from the rules
//! directly), and the map entries the dataplane looks up ([`compile`]). Tests hold the two
//! against each other, and the kernel against both.

pub mod compile;
pub mod identity;
pub mod model;

#[cfg(test)]
mod tests;
