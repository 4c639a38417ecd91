//! The mtmed3d engine.
