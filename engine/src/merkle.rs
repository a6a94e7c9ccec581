//! A Merkle tree over ledger entry hashes, exactly as Certificate
//! Transparency defines it (RFC 6962 §2.1, restated in RFC 9162 §2.1), so
//! existing transparency-log tooling and auditors' own code can check our
//! proofs:
//!
//! - leaf hash `= SHA-256(0x00 ‖ d)`, interior node `= SHA-256(0x01 ‖ left ‖ right)`
//!   (the prefixes keep a leaf from ever being passed off as a node);
//! - the root of `n` leaves splits at the largest power of two below `n`;
//!   the root of the empty tree is `SHA-256("")`.
//!
//! The leaf data `d` of ledger entry `seq` is the 32 raw bytes of its
//! `hash`, and its leaf index is its `seq`. Inclusion proofs show one entry
//! is in a signed root; consistency proofs show that a later report's tree
//! extends an earlier one's without rewriting or removing anything.

use sha2::{Digest, Sha256};

use crate::digest::Sha256Digest;

/// `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Sha256Digest {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    Sha256Digest(h.finalize().into())
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Sha256Digest, right: &Sha256Digest) -> Sha256Digest {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left.0);
    h.update(right.0);
    Sha256Digest(h.finalize().into())
}

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Sha256Digest {
    Sha256Digest::of(b"")
}

/// The leaf hash of a ledger entry whose `hash` is `entry_hash`.
pub fn entry_leaf(entry_hash: &Sha256Digest) -> Sha256Digest {
    leaf_hash(&entry_hash.0)
}

/// Builds a root incrementally in O(log n) memory: push leaf hashes in order.
#[derive(Clone, Debug, Default)]
pub struct MerkleBuilder {
    /// Roots of perfect subtrees, (height, hash), heights strictly decreasing.
    stack: Vec<(u32, Sha256Digest)>,
    size: u64,
}

impl MerkleBuilder {
    pub fn new() -> MerkleBuilder {
        MerkleBuilder::default()
    }

    /// Adds the next leaf hash (already `leaf_hash`ed).
    pub fn push(&mut self, leaf: Sha256Digest) {
        let mut node = (0u32, leaf);
        while let Some(&(height, left)) = self.stack.last() {
            if height != node.0 {
                break;
            }
            self.stack.pop();
            node = (height + 1, node_hash(&left, &node.1));
        }
        self.stack.push(node);
        self.size += 1;
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root of the leaves pushed so far.
    pub fn root(&self) -> Sha256Digest {
        let mut iter = self.stack.iter().rev();
        let Some(&(_, mut acc)) = iter.next() else {
            return empty_root();
        };
        for (_, left) in iter {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

/// The largest power of two strictly below `n` (n ≥ 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// The root (RFC 6962 MTH) of `leaves`, which are leaf hashes.
pub fn root(leaves: &[Sha256Digest]) -> Sha256Digest {
    let mut b = MerkleBuilder::new();
    for l in leaves {
        b.push(*l);
    }
    b.root()
}

/// The audit path (RFC 6962 PATH) for leaf `index` in the tree of `leaves`.
/// `None` when `index` is out of range.
pub fn inclusion_proof(leaves: &[Sha256Digest], index: u64) -> Option<Vec<Sha256Digest>> {
    let index = usize::try_from(index).ok()?;
    if index >= leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    path(index, leaves, &mut proof);
    Some(proof)
}

fn path(m: usize, d: &[Sha256Digest], out: &mut Vec<Sha256Digest>) {
    let n = d.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, &d[..k], out);
        out.push(root(&d[k..]));
    } else {
        path(m - k, &d[k..], out);
        out.push(root(&d[..k]));
    }
}

/// The consistency proof (RFC 6962 PROOF) that the tree of the first `first`
/// leaves is a prefix of the tree of all `leaves`. `None` when `first` exceeds
/// the tree size. Empty when `first` is 0 or equals the size.
pub fn consistency_proof(leaves: &[Sha256Digest], first: u64) -> Option<Vec<Sha256Digest>> {
    let m = usize::try_from(first).ok()?;
    if m > leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    if m > 0 && m < leaves.len() {
        subproof(m, leaves, true, &mut proof);
    }
    Some(proof)
}

fn subproof(m: usize, d: &[Sha256Digest], complete: bool, out: &mut Vec<Sha256Digest>) {
    let n = d.len();
    if m == n {
        if !complete {
            out.push(root(d));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &d[..k], complete, out);
        out.push(root(&d[k..]));
    } else {
        subproof(m - k, &d[k..], false, out);
        out.push(root(&d[..k]));
    }
}

/// Checks an inclusion proof (RFC 9162 §2.1.3.2): that `leaf` (a leaf hash) is
/// at `index` in the tree of `size` leaves with root `root`.
pub fn verify_inclusion(
    leaf: &Sha256Digest,
    index: u64,
    size: u64,
    proof: &[Sha256Digest],
    root: &Sha256Digest,
) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *root
}

/// Checks a consistency proof (RFC 9162 §2.1.4.2): that the tree of `first`
/// leaves with root `first_root` is a prefix of the tree of `second` leaves
/// with root `second_root`. The empty tree is consistent with every tree.
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Sha256Digest,
    second_root: &Sha256Digest,
    proof: &[Sha256Digest],
) -> bool {
    if first > second {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if first == 0 {
        return proof.is_empty() && *first_root == empty_root();
    }
    if proof.is_empty() {
        return false;
    }
    let mut path: Vec<Sha256Digest> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let (mut fnode, mut snode) = (first - 1, second - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    fr == *first_root && sr == *second_root && snode == 0
}
