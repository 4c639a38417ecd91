//! NIfTI-1 and NIfTI-2 reading and writing.
