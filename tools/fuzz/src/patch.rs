//! The patch file decoder's target: seeds in f32 and f16, format versions 1 and 2, small and
//! large; mutations that also rewrite the length and header fields and, half the time, fix the
//! CRC so that inputs reach the postcard decoder and the checks behind it. Every accepted input
//! must re-encode to a file that decodes to the same patch.

use edgepatch::patch::file::{self, ValueType, PREFIX_LEN};
use edgepatch::patch::{Patch, PatchTensor, Role};
use edgepatch_format::RawPatch;

use crate::{blank_numbers, mutate_bytes, Rng};

fn seed_patch(tensors: usize, len: usize, classes: usize, rng: &mut Rng) -> Patch {
    let mut values = |n: usize| (0..n).map(|_| (rng.next_u64() % 2001) as f32 / 1000.0 - 1.0).collect::<Vec<f32>>();
    let mut t: Vec<PatchTensor> = (0..tensors)
        .map(|i| PatchTensor {
            node: i as u32 * 3 + 1,
            role: if i % 2 == 0 { Role::Scale } else { Role::Bias },
            shape: vec![len as u32],
            values: values(len),
        })
        .collect();
    t.push(PatchTensor {
        node: 200,
        role: Role::Weights,
        shape: vec![classes as u32, 4, 1],
        values: values(classes * 4),
    });
    Patch {
        kinds: "sb+dw+logits".parse().expect("valid kinds"),
        fingerprint: "0123456789abcdef".into(),
        resolution: 96,
        labels: (0..classes).map(|i| format!("class {i} ✓")).collect(),
        tensors: t,
    }
}

pub fn seeds(rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (tensors, len, classes) in [(0, 0, 1), (2, 3, 2), (6, 17, 5), (40, 130, 12)] {
        let p = seed_patch(tensors, len, classes, rng);
        for vt in [ValueType::F32, ValueType::F16] {
            out.push(file::to_bytes_as(&p, vt).expect("a valid seed"));
        }
    }
    let mut v1 = out[2].clone();
    v1[8] = 1;
    fix_crc(&mut v1);
    out.push(v1);
    out
}

fn fix_crc(b: &mut [u8]) {
    if b.len() >= PREFIX_LEN {
        let crc = crc32fast::hash(&[&b[..36], &b[PREFIX_LEN..]].concat());
        b[36..40].copy_from_slice(&crc.to_le_bytes());
    }
}

pub fn mutate(input: &[u8], corpus: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = b.len();
        if rng.below(9) == 6 && len >= PREFIX_LEN {
            // A header field rewritten: lengths, resolution, kinds, value type, version.
            let (field, width) = [(24, 4), (28, 8), (20, 4), (10, 1), (11, 1), (8, 2)][rng.below(6)];
            let v: u64 = match rng.below(4) {
                0 => rng.next_u64(),
                1 => rng.next_u64() % 4096,
                2 => u64::MAX,
                _ => (len - PREFIX_LEN) as u64 + rng.below(5) as u64,
            };
            b[field..field + width].copy_from_slice(&v.to_le_bytes()[..width]);
        } else if rng.below(4) == 0 && len > PREFIX_LEN {
            let i = PREFIX_LEN + rng.below(len - PREFIX_LEN);
            b[i] = b[i].wrapping_add(1 + rng.below(3) as u8);
        } else {
            mutate_bytes(&mut b, corpus, rng);
        }
    }
    if rng.below(2) == 0 {
        fix_crc(&mut b);
    }
    b
}

/// The outcome with every word holding a digit blanked, so that inputs differing only in numbers
/// count once.
fn outcome(r: &Result<RawPatch, edgepatch_format::FormatError>, full: &Result<Patch, edgepatch::Error>) -> String {
    let text = match (r, full) {
        (Ok(_), Ok(_)) => "accepted".to_string(),
        (Err(e), _) => format!("format: {e}"),
        (Ok(_), Err(e)) => format!("meaning: {e}"),
    };
    blank_numbers(&text)
}

/// Decodes `input` both ways and checks that an accepted file re-encodes to itself.
pub fn execute(input: &[u8]) -> String {
    let raw = edgepatch_format::decode(input);
    let full = file::from_bytes_typed(input);
    if let Ok((p, vt)) = &full {
        let again = file::to_bytes_as(p, *vt).expect("an accepted patch encodes");
        assert_eq!(file::from_bytes_typed(&again).expect("a re-encoded patch decodes"), (p.clone(), *vt));
    }
    assert!(full.is_err() || raw.is_ok(), "the runtime accepted what the codec refused");
    outcome(&raw, &full.map(|x| x.0))
}
