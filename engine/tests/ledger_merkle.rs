//! The Merkle tree against RFC 6962 known answers (the certificate-
//! transparency reference test tree) and against a naive implementation
//! written straight from the RFC's recursive definitions.

use komptroller_engine::ledger::Sha256Digest;
use komptroller_engine::merkle::{
    MerkleBuilder, consistency_proof, empty_root, inclusion_proof, leaf_hash, node_hash, root,
    verify_consistency, verify_inclusion,
};
use proptest::prelude::*;

fn h(s: &str) -> Sha256Digest {
    s.parse().expect("hex digest")
}

/// The eight leaves of the CT reference tree.
fn ct_leaves() -> Vec<Sha256Digest> {
    [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
    .iter()
    .map(|x| leaf_hash(&hex::decode(x).expect("hex")))
    .collect()
}

const CT_ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

#[test]
fn roots_match_the_rfc6962_reference_tree() {
    let leaves = ct_leaves();
    assert_eq!(
        root(&[]),
        h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    );
    assert_eq!(empty_root(), root(&[]));
    for n in 1..=8 {
        assert_eq!(root(&leaves[..n]), h(CT_ROOTS[n - 1]), "root of {n} leaves");
    }
}

#[test]
fn inclusion_proofs_match_the_reference_paths() {
    let leaves = ct_leaves();
    let p0 = inclusion_proof(&leaves, 0).expect("in range");
    assert_eq!(
        p0,
        vec![
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ]
    );
    let p5 = inclusion_proof(&leaves, 5).expect("in range");
    assert_eq!(
        p5,
        vec![
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ]
    );
    let r8 = h(CT_ROOTS[7]);
    assert!(verify_inclusion(&leaves[0], 0, 8, &p0, &r8));
    assert!(verify_inclusion(&leaves[5], 5, 8, &p5, &r8));
    assert!(!verify_inclusion(&leaves[5], 4, 8, &p5, &r8));
    assert!(!verify_inclusion(&leaves[4], 5, 8, &p5, &r8));
    assert!(inclusion_proof(&leaves, 8).is_none());
}

#[test]
fn consistency_proofs_match_the_reference_proofs() {
    let leaves = ct_leaves();
    let cases: [(usize, usize, Vec<&str>); 4] = [
        (1, 1, vec![]),
        (
            1,
            8,
            vec![
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            vec![
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            vec![
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    for (m, n, want) in cases {
        let proof = consistency_proof(&leaves[..n], m as u64).expect("m <= n");
        let want: Vec<Sha256Digest> = want.into_iter().map(h).collect();
        assert_eq!(proof, want, "PROOF({m}, D[{n}])");
        assert!(verify_consistency(
            m as u64,
            n as u64,
            &h(CT_ROOTS[m - 1]),
            &h(CT_ROOTS[n - 1]),
            &proof
        ));
    }
}

/// RFC 6962 §2.1 MTH, written naively.
fn reference_root(d: &[Sha256Digest]) -> Sha256Digest {
    match d.len() {
        0 => empty_root(),
        1 => d[0],
        n => {
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            node_hash(&reference_root(&d[..k]), &reference_root(&d[k..]))
        }
    }
}

fn leaves(n: usize, salt: u8) -> Vec<Sha256Digest> {
    (0..n)
        .map(|i| leaf_hash(&[salt, (i % 251) as u8, (i / 251) as u8]))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn builder_and_root_equal_the_reference(n in 0usize..300, salt in any::<u8>()) {
        let l = leaves(n, salt);
        let mut b = MerkleBuilder::new();
        for x in &l { b.push(*x); }
        prop_assert_eq!(b.root(), reference_root(&l));
        prop_assert_eq!(root(&l), reference_root(&l));
        prop_assert_eq!(b.size(), n as u64);
    }

    #[test]
    fn every_inclusion_proof_verifies_and_any_change_breaks_it(
        n in 1usize..200, salt in any::<u8>(), pick in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(), bit in 0u8..8,
    ) {
        let l = leaves(n, salt);
        let r = root(&l);
        let i = pick.index(n);
        let proof = inclusion_proof(&l, i as u64).expect("in range");
        prop_assert!(verify_inclusion(&l[i], i as u64, n as u64, &proof, &r));
        // Wrong index, wrong size, wrong leaf, wrong root, altered path: all refused.
        if n > 1 {
            let j = (i + 1) % n;
            prop_assert!(!verify_inclusion(&l[i], j as u64, n as u64, &proof, &r));
            prop_assert!(!verify_inclusion(&l[j], i as u64, n as u64, &proof, &r));
        }
        // (A different tree size can share the path shape, e.g. leaf 0 of 65
        // and of 66 leaves; the size is bound by the signed report, not the proof.)
        prop_assert!(!verify_inclusion(&l[i], i as u64, i as u64, &proof, &r));
        let mut bad_root = r;
        bad_root.0[0] ^= 1;
        prop_assert!(!verify_inclusion(&l[i], i as u64, n as u64, &proof, &bad_root));
        if !proof.is_empty() {
            let mut p = proof.clone();
            let k = flip.index(p.len());
            p[k].0[(bit as usize * 3) % 32] ^= 1 << bit;
            prop_assert!(!verify_inclusion(&l[i], i as u64, n as u64, &p, &r));
            let mut shorter = proof.clone();
            shorter.pop();
            prop_assert!(!verify_inclusion(&l[i], i as u64, n as u64, &shorter, &r));
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_a_rewritten_prefix_does_not(
        n in 1usize..200, salt in any::<u8>(), pick in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let l = leaves(n, salt);
        let m = pick.index(n + 1);
        let proof = consistency_proof(&l, m as u64).expect("m <= n");
        let (rm, rn) = (root(&l[..m]), root(&l));
        prop_assert!(verify_consistency(m as u64, n as u64, &rm, &rn, &proof));
        if m > 0 && m < n {
            // A rewritten prefix: change one earlier leaf.
            let mut l2 = l.clone();
            let k = flip.index(m);
            l2[k].0[0] ^= 1;
            let rm2 = root(&l2[..m]);
            prop_assert!(!verify_consistency(m as u64, n as u64, &rm2, &rn, &proof));
            // A tampered proof.
            let mut p = proof.clone();
            let k = flip.index(p.len());
            p[k].0[31] ^= 0x80;
            prop_assert!(!verify_consistency(m as u64, n as u64, &rm, &rn, &p));
            // Wrong sizes.
            prop_assert!(!verify_consistency(m as u64 + 1, n as u64, &rm, &rn, &proof) || m + 1 == n);
        }
    }
}
