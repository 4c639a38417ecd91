//! Axis codes and reorientation by flips and permutations.
