//! Synthetic BraTS-like cases.
