use super::*;

#[test]
fn small_case_builds() {
    let cfg = PhantomConfig {
        shape: [64, 64, 48],
        ..Default::default()
    };
    let c = generate_case(&cfg, 1, 0);
    assert_eq!(c.seg.shape(), &[64, 64, 48]);
}
