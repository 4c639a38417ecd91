//! Any bytes, as a `.nii` or `.nii.gz` file: the header parser and the whole decoder must
//! return an error or an image, never panic, and never allocate beyond the configured limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtmed3d_stages::io::nifti::{NiftiHeader, NonFinitePolicy, ReadOptions, read_nifti_bytes};
use mtmed3d_stages::spatial::orientation::{AxCodes, aff2axcodes, reorient};

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = NiftiHeader::parse(data) {
        // Everything a caller may do with a parsed header.
        let _ = header.affine();
        let _ = header.qform_affine();
        let _ = header.to_nifti1_bytes();
    }
    // 16 MiB keeps libFuzzer's RSS limit meaningful: a header may ask for more, and the
    // reader must refuse it rather than allocate it.
    let options = ReadOptions {
        non_finite: NonFinitePolicy::ReplaceWithZero,
        to_f32: data.last().is_some_and(|b| b & 1 == 1),
        max_data_bytes: 16 << 20,
    };
    if let Ok(image) = read_nifti_bytes(data, "fuzz.nii", &options) {
        let affine = image.affine();
        let _ = aff2axcodes(&affine);
        let f = image.to_f32();
        if let Ok(r) = reorient(f.view(), &affine, AxCodes::RAS) {
            assert_eq!(r.record.undo(r.array.view()).mapv(f32::to_bits), f.mapv(f32::to_bits));
        }
        let _ = image.into_u8_labels();
    }
});
