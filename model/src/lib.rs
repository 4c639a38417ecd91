//! The MTMed3D multi-task model in burn.
